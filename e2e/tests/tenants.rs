//! Two namespaces as two tenants against the real API server (issue 13): one controller
//! watching every namespace, with a class of its own so other tests' objects are not its.
//! Tenant A owns `shop.tenants.example`; tenant B tries to take its paths, its certificate
//! and its unrouted paths, to use another class's BackendGroup, and to reach internal
//! addresses. Each attempt is refused, B is told why (Events, BackendGroup status), and
//! A's traffic is unchanged. With `--host-ownership=none` the single-tenant behaviour
//! returns.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use quic_ingress::client::TrustOptions;
use quic_ingress::kube::crd::BackendGroup;
use quic_ingress_e2e::controller::{ControllerOptions, GetError, install_crd};
use quic_ingress_e2e::namespace::unique_name;
use quic_ingress_e2e::objects::{backend_group, endpoint_slice, ingress, service, tls_secret};
use quic_ingress_e2e::process::{free_tcp_port, log_path};
use quic_ingress_e2e::{Backend, Controller, ControllerRbac, TestEnv, TestHost, TestNamespace, eventually};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(20);
const SHOP: &str = "shop.tenants.example";

/// Two tenant namespaces, the controller's RBAC, and the controller (dropped first).
struct Tenants {
    controller: Controller,
    _rbac: ControllerRbac,
    a: TestNamespace,
    b: TestNamespace,
    class: String,
}

/// Starts the tenants' controller with `args`; backends `a-web` and `b-web` in the test host
/// behind Service `web` of each namespace.
async fn tenants(prefix: &str, args: &[&str], host: &TestHost, a_web: &Backend, b_web: &Backend) -> Result<Tenants> {
    let env = TestEnv::shared().await?;
    let a = TestNamespace::new(env, &format!("{prefix}-a")).await?;
    let b = TestNamespace::new(env, &format!("{prefix}-b")).await?;
    install_crd(env).await?;
    let rbac = ControllerRbac::grant(env, &a).await?;
    let class = unique_name("quic-tenants");
    let mut opts = ControllerOptions::new(a.name());
    opts.watch_namespace = false;
    opts.allow_loopback_backends = false;
    opts.extra_args = ["--ingress-class", class.as_str()].iter().chain(args).map(|s| s.to_string()).collect();
    let controller = Controller::start_with(env, opts).await?;
    for (ns, backend) in [(&a, a_web), (&b, b_web)] {
        ns.create(&service("web").port("http", 80).build()).await?;
        ns.apply(&slice_to("web", host, backend.port())).await?;
    }
    Ok(Tenants { controller, _rbac: rbac, a, b, class })
}

impl Tenants {
    async fn finish(self) -> Result<()> {
        let Tenants { controller, _rbac, a, b, .. } = self;
        drop(controller);
        drop(_rbac);
        a.cleanup().await?;
        b.cleanup().await
    }
}

fn slice_to(service: &str, host: &TestHost, port: u16) -> EndpointSlice {
    endpoint_slice(service).name(&format!("{service}-1")).address(host.ip()).port("http", i32::from(port)).build()
}

/// Waits for a Warning Event `reason` on `kind` `name` in `ns`; returns its note.
async fn wait_for_warning(ns: &TestNamespace, kind: &str, name: &str, reason: &str) -> Result<String> {
    eventually(&format!("a Warning {reason} on {kind} {}/{name}", ns.name()), TIMEOUT, || async {
        let events = ns.api::<Event>().list(&ListParams::default()).await?.items;
        let seen: Vec<(String, String)> = events
            .iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
            })
            .map(|e| (e.reason.clone().unwrap_or_default(), e.note.clone().unwrap_or_default()))
            .collect();
        let warning = events.iter().find(|e| {
            e.reason.as_deref() == Some(reason)
                && e.type_.as_deref() == Some("Warning")
                && e.regarding.as_ref().is_some_and(|r| r.name.as_deref() == Some(name))
        });
        match warning {
            Some(e) => Ok(Some(e.note.clone().unwrap_or_default())),
            None => Err(anyhow!("events on it so far: {seen:?}")),
        }
    })
    .await
}

fn trusting(stem: &str, ca_pem: &str) -> Result<TrustOptions> {
    let path: PathBuf = log_path(stem)?.with_extension("pem");
    std::fs::write(&path, ca_pem)?;
    Ok(TrustOptions { insecure: false, ca_file: Some(path) })
}

/// `(status, backend)` of `GET https://host/path`.
async fn answer(c: &Controller, host: &str, path: &str) -> Result<(u16, Option<String>)> {
    let reply = c.get(host, path).await?;
    Ok((reply.status, reply.backend().map(str::to_string)))
}

#[tokio::test]
async fn tenants_cannot_take_each_others_hosts_certificates_or_internal_addresses() -> Result<()> {
    let host = TestHost::shared().await?;
    let a_web = Backend::start_in(host, "a-web").await?;
    let b_web = Backend::start_in(host, "b-web").await?;
    let t = tenants("tenants", &[], host, &a_web, &b_web).await?;
    let (a, b, c, class) = (&t.a, &t.b, &t.controller, t.class.as_str());

    // Tenant A: SHOP/app, with its certificate.
    let (a_ca, a_cert, a_key) = quic_ingress_e2e::objects::ca_and_cert(SHOP)?;
    let (b_ca, b_cert, b_key) = quic_ingress_e2e::objects::ca_and_cert(SHOP)?;
    let (trust_a, trust_b) = (trusting("tenants-a-ca", &a_ca)?, trusting("tenants-b-ca", &b_ca)?);
    a.apply(&tls_secret("shop-tls", &a_cert, &a_key).build()).await?;
    a.create(&ingress("shop").class(class).rule(SHOP, "/app", "Prefix", "web", 80).tls(&[SHOP], "shop-tls").build())
        .await?;
    c.wait_for_backend(SHOP, "/app", "a-web", TIMEOUT).await?;
    let served = c.get_with(SHOP, "/app", &trust_a).await.map_err(|e| anyhow!("A's certificate: {e}"))?;
    ensure!(served.backend() == Some("a-web"));

    // Tenant B, later: a longer prefix and an Exact path under A's host, A's host in its
    // tls.hosts with a certificate of its own, a host-less rule and a default backend.
    b.apply(&tls_secret("steal-tls", &b_cert, &b_key).build()).await?;
    b.create(
        &ingress("hijack")
            .class(class)
            .rule(SHOP, "/app/login", "Prefix", "web", 80)
            .rule(SHOP, "/app/cart", "Exact", "web", 80)
            .rule("b.tenants.example", "/", "Prefix", "web", 80)
            .tls(&[SHOP, "b.tenants.example"], "steal-tls")
            .build(),
    )
    .await?;
    b.create(&ingress("catch-all").class(class).rule("", "/", "Prefix", "web", 80).default_backend("web", 80).build())
        .await?;

    // B is told why, naming the owner.
    let note = wait_for_warning(b, "Ingress", "hijack", "HostOwnedByOtherNamespace").await?;
    ensure!(note.contains(SHOP) && note.contains(&format!("namespace {}", a.name())), "{note}");
    let note = wait_for_warning(b, "Ingress", "hijack", "TLSHostNotRouted").await?;
    ensure!(note.contains(SHOP), "{note}");
    let note = wait_for_warning(b, "Ingress", "catch-all", "CatchAllNotAllowed").await?;
    ensure!(note.contains("quic-ingress.dev/catch-all-namespaces"), "{note}");
    // B's own host is served, so B's objects have been translated.
    c.wait_for_backend("b.tenants.example", "/", "b-web", TIMEOUT).await?;

    // A's traffic is unchanged: every path under A's prefix still reaches A; A's unrouted
    // paths are not caught by B's catch-alls.
    for path in ["/app", "/app/login", "/app/login/x", "/app/cart"] {
        assert_eq!(answer(c, SHOP, path).await?, (200, Some("a-web".into())), "{SHOP}{path}");
    }
    for path in ["/", "/other"] {
        assert_eq!(answer(c, SHOP, path).await?.0, 404, "B's catch-all took {SHOP}{path}");
    }
    // A's certificate is still the one served for A's host; B's is not.
    let again = c.get_with(SHOP, "/app", &trust_a).await.map_err(|e| anyhow!("A's certificate replaced: {e}"))?;
    ensure!(again.backend() == Some("a-web"));
    match c.get_with(SHOP, "/app", &trust_b).await {
        Err(GetError::Connect(_)) => {}
        other => bail!("B's certificate is served for A's host: {other:?}"),
    }

    // BackendGroups: another class's group is ignored (a later group of ours is served,
    // so both have been seen); static URLs at internal addresses are refused in status.
    let other = json!({
        "ingressClassName": "someone-else",
        "backends": [{"url": b_web.url()}],
        "routes": [{"host": "other-class.tenants.example", "path": "/"}],
    });
    b.create(&backend_group("other-class", other)?).await?;
    let dead_port = free_tcp_port()?;
    let ours = json!({
        "ingressClassName": class,
        "backends": [{"url": b_web.url()}, {"url": format!("http://{}:{dead_port}", host.ip())}],
        "healthCheck": {"interval": "1s", "timeout": "500ms", "healthyThreshold": 1, "unhealthyThreshold": 1, "path": "/health"},
        "routes": [{"host": "bg.tenants.example", "path": "/"}],
    });
    b.create(&backend_group("ours", ours)?).await?;
    let internal = json!({
        "ingressClassName": class,
        "backends": [{"url": "http://127.0.0.1:9090"}, {"url": "http://169.254.169.254:80"}],
        "routes": [{"host": "internal.tenants.example", "path": "/"}],
    });
    b.create(&backend_group("internal", internal)?).await?;
    c.wait_for_backend("bg.tenants.example", "/", "b-web", TIMEOUT).await?;
    assert_eq!(c.get("other-class.tenants.example", "/").await?.status, 404, "another class's group was routed");

    let groups = b.api::<BackendGroup>();
    let ready = eventually("Ready=False on BackendGroup internal", TIMEOUT, || async {
        let status = groups.get("internal").await?.status;
        let ready = status.and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"));
        match ready {
            Some(r) if r.status == "False" => Ok(Some(r)),
            other => Err(anyhow!("Ready so far: {other:?}")),
        }
    })
    .await?;
    assert_eq!(ready.reason, "BackendAddressNotAllowed", "{ready:?}");
    for wanted in
        ["spec.backends[0].url: 127.0.0.1 is loopback", "spec.backends[1].url: 169.254.169.254 is a cloud metadata"]
    {
        ensure!(ready.message.contains(wanted), "{wanted:?} not in {:?}", ready.message);
    }
    assert_eq!(c.get("internal.tenants.example", "/").await?.status, 404);
    wait_for_warning(b, "BackendGroup", "internal", "BackendAddressNotAllowed").await?;

    // Probe errors reach status as their kind only.
    let last_error = eventually("the dead backend's lastError", TIMEOUT, || async {
        let status = groups.get("ours").await?.status.context("no status yet")?;
        let dead = status.backends.into_iter().find(|s| s.address.ends_with(&format!(":{dead_port}")));
        Ok(dead.and_then(|d| d.last_error))
    })
    .await?;
    assert_eq!(last_error, "connection refused");
    ensure!(groups.get("other-class").await?.status.is_none(), "status written for another class's group");

    t.finish().await
}

#[tokio::test]
async fn with_host_ownership_none_tenants_share_hosts_as_before() -> Result<()> {
    let host = TestHost::shared().await?;
    let a_web = Backend::start_in(host, "a-web-none").await?;
    let b_web = Backend::start_in(host, "b-web-none").await?;
    let t = tenants("tenants-none", &["--host-ownership", "none"], host, &a_web, &b_web).await?;
    let (a, b, c, class) = (&t.a, &t.b, &t.controller, t.class.as_str());

    a.create(&ingress("shop").class(class).rule(SHOP, "/app", "Prefix", "web", 80).build()).await?;
    c.wait_for_backend(SHOP, "/app", "a-web-none", TIMEOUT).await?;
    b.create(
        &ingress("share").class(class).rule(SHOP, "/app/login", "Prefix", "web", 80).default_backend("web", 80).build(),
    )
    .await?;
    c.wait_for_backend(SHOP, "/app/login", "b-web-none", TIMEOUT).await?;
    assert_eq!(answer(c, SHOP, "/app").await?, (200, Some("a-web-none".into())));
    assert_eq!(answer(c, SHOP, "/other").await?, (200, Some("b-web-none".into())), "B's default backend");
    t.finish().await
}
