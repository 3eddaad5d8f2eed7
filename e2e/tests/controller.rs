//! Cluster tests of `quic-ingress controller` (issue 4): a real kube-apiserver, the
//! controller as a process running as the unprivileged `controller` identity with only the
//! rules of `deploy/rbac.yaml`, demo backends in the test host's network namespace (for
//! EndpointSlices) or on 127.0.0.1 (static BackendGroup backends), and HTTP/3 requests
//! through the project's own client.
//!
//! Every test has its own namespace, controller (`--namespace`, so its watches and leader
//! Lease stay there) and backends, so tests run in parallel.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use quic_ingress::client::TrustOptions;
use quic_ingress::kube::crd::BackendGroup;
use quic_ingress_e2e::controller::{ControllerOptions, GetError, install_crd, kubectl};
use quic_ingress_e2e::namespace::unique_name;
use quic_ingress_e2e::objects::{backend_group, endpoint_slice, ingress, ingress_class, service, tls_secret};
use quic_ingress_e2e::process::{log_path, repo_root};
use quic_ingress_e2e::{Backend, Controller, ControllerRbac, TestEnv, TestHost, TestNamespace, eventually};
use serde_json::json;

/// For conditions that need the controller to see a change (debounce 100 ms) or the API
/// server to store one; generous for a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(20);

/// A test's namespace, RBAC and running controller. Fields drop in order: the controller
/// is killed before its bindings and namespace go.
struct Setup {
    controller: Controller,
    _rbac: ControllerRbac,
    ns: TestNamespace,
    env: &'static TestEnv,
}

async fn setup(prefix: &str) -> Result<Setup> {
    let env = TestEnv::shared().await?;
    let ns = TestNamespace::new(env, prefix).await?;
    install_crd(env).await?;
    let rbac = ControllerRbac::grant(env, &ns).await?;
    let controller = Controller::start(env, ns.name()).await?;
    Ok(Setup { controller, _rbac: rbac, ns, env })
}

impl Setup {
    async fn finish(self) -> Result<()> {
        let Setup { controller, _rbac, ns, .. } = self;
        drop(controller);
        drop(_rbac);
        ns.cleanup().await
    }
}

/// Events (events.k8s.io) about `kind`/`name` in the namespace, as (type, reason, note).
async fn events_for(ns: &TestNamespace, kind: &str, name: &str) -> Result<Vec<(String, String, String)>> {
    let events = ns.api::<Event>().list(&ListParams::default()).await?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        })
        .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect())
}

async fn wait_for_event(ns: &TestNamespace, kind: &str, name: &str, reason: &str) -> Result<(String, String)> {
    eventually(&format!("an Event {reason} on {kind} {name}"), TIMEOUT, || async {
        let events = events_for(ns, kind, name).await?;
        if let Some((type_, _, note)) = events.iter().find(|(_, r, _)| r == reason) {
            return Ok(Some((type_.clone(), note.clone())));
        }
        Err(anyhow!("events so far: {events:?}"))
    })
    .await
}

fn slice_to(service: &str, name: &str, ip: std::net::IpAddr, port: u16) -> EndpointSlice {
    endpoint_slice(service).name(name).address(ip).port("http", i32::from(port)).build()
}

#[tokio::test]
async fn routes_through_services_and_endpoint_slices() -> Result<()> {
    let host = TestHost::shared().await?;
    let a = Backend::start_in(host, "a").await?;
    let b = Backend::start_in(host, "b").await?;
    let s = setup("routing").await?;
    let (ns, c) = (&s.ns, &s.controller);

    ns.create(&service("web").port("http", 80).build()).await?;
    ns.apply(&slice_to("web", "web-1", host.ip(), a.port())).await?;
    ns.create(&ingress("shop").class("quic").rule("shop.example.com", "/", "Prefix", "web", 80).build()).await?;

    let reply = c.wait_for_backend("shop.example.com", "/x?q=1", "a", TIMEOUT).await?;
    let echo = reply.json()?;
    assert_eq!(echo["path"], "/x", "{echo}");
    assert_eq!(echo["host"], "shop.example.com", "{echo}");
    // Routed by host: another host has no route.
    assert_eq!(c.get("elsewhere.example.com", "/x").await?.status, 404);

    // The slice now points at b: traffic moves, all of it.
    ns.apply(&slice_to("web", "web-1", host.ip(), b.port())).await?;
    c.wait_for_backend("shop.example.com", "/x", "b", TIMEOUT).await?;
    let seen = c.tally("shop.example.com", "/x", 10).await?;
    assert_eq!(seen, BTreeMap::from([("b".to_string(), 10)]));

    // A second slice of the same Service adds a; round robin alternates.
    ns.apply(&slice_to("web", "web-2", host.ip(), a.port())).await?;
    eventually("both slices to be served", TIMEOUT, || async {
        let seen = c.tally("shop.example.com", "/x", 6).await?;
        Ok((seen.get("a").copied().unwrap_or(0) >= 2 && seen.get("b").copied().unwrap_or(0) >= 2).then_some(()))
    })
    .await?;
    // Round robin alternates; a table rebuild (e.g. after the leader writes status)
    // restarts the rotation, hence the slack.
    let seen = c.tally("shop.example.com", "/x", 20).await?;
    let (na, nb) = (seen.get("a").copied().unwrap_or(0), seen.get("b").copied().unwrap_or(0));
    assert!(na + nb == 20 && (8..=12).contains(&na), "{seen:?}");

    // No ready endpoint at all: 503 with Retry-After.
    let not_ready = |name: &str, port: u16| {
        endpoint_slice("web").name(name).address(host.ip()).ready(false).port("http", i32::from(port)).build()
    };
    ns.apply(&not_ready("web-1", b.port())).await?;
    ns.apply(&not_ready("web-2", a.port())).await?;
    let reply = c.wait_for_status("shop.example.com", "/x", 503, TIMEOUT).await?;
    assert!(reply.headers.contains_key("retry-after"), "503 without Retry-After: {:?}", reply.headers);

    // The Ingress is gone: 404.
    ns.delete::<Ingress>("shop").await?;
    c.wait_for_status("shop.example.com", "/x", 404, TIMEOUT).await?;
    s.finish().await
}

#[tokio::test]
async fn port_names_default_backend_path_types_and_foreign_classes() -> Result<()> {
    let host = TestHost::shared().await?;
    let api = Backend::start_in(host, "api").await?;
    let exact = Backend::start_in(host, "exact").await?;
    let fallback = Backend::start_in(host, "fallback").await?;
    let s = setup("paths").await?;
    let (ns, c) = (&s.ns, &s.controller);

    // Port by name: Service port "web" (8080) → EndpointSlice port "web" (the backend's).
    ns.create(&service("api").port("web", 8080).build()).await?;
    ns.apply(&endpoint_slice("api").address(host.ip()).port("web", i32::from(api.port())).build()).await?;
    for (svc, backend) in [("exact", &exact), ("fallback", &fallback)] {
        ns.create(&service(svc).port("http", 80).build()).await?;
        ns.apply(&slice_to(svc, &format!("{svc}-1"), host.ip(), backend.port())).await?;
    }
    ns.create(
        &ingress("shop")
            .class("quic")
            .rule("shop.example.com", "/api", "Prefix", "api", "web")
            .rule("shop.example.com", "/exact", "Exact", "exact", 80)
            .rule("*.wild.example.com", "/", "Prefix", "api", "web")
            .default_backend("fallback", 80)
            .build(),
    )
    .await?;
    // Another controller's Ingress: must be ignored, neither routed nor given a status.
    ns.create(&ingress("theirs").class("nginx").rule("nginx.example.com", "/", "Prefix", "exact", 80).build()).await?;

    c.wait_for_backend("shop.example.com", "/api", "api", TIMEOUT).await?;
    let cases = [
        ("shop.example.com", "/api", "api"),
        ("shop.example.com", "/api/", "api"),
        ("shop.example.com", "/api/v1/items", "api"),
        ("shop.example.com", "/apiv2", "fallback"), // Prefix matches whole segments
        ("shop.example.com", "/exact", "exact"),
        ("shop.example.com", "/exact/", "fallback"), // Exact is byte for byte
        ("shop.example.com", "/exact/more", "fallback"),
        ("shop.example.com", "/", "fallback"),
        ("other.example.com", "/api", "fallback"), // the default backend takes any host
        ("a.wild.example.com", "/", "api"),
        ("A.Wild.Example.com", "/", "api"),        // hosts compare case-insensitively
        ("a.b.wild.example.com", "/", "fallback"), // a wildcard is one label
        ("wild.example.com", "/", "fallback"),
        ("nginx.example.com", "/", "fallback"), // not the nginx Ingress's backend
    ];
    let mut wrong = Vec::new();
    for (h, path, want) in cases {
        let reply = c.get(h, path).await?;
        if reply.status != 200 || reply.backend() != Some(want) {
            wrong.push(format!("{h}{path}: want {want}, got {} from {:?}", reply.status, reply.backend()));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    let routes = c.debug_routes().await?;
    let ids: Vec<&str> = routes["routes"].as_array().into_iter().flatten().filter_map(|r| r["id"].as_str()).collect();
    assert!(ids.iter().all(|id| !id.contains("theirs")), "the nginx Ingress was routed: {ids:?}");

    // Status: ours gets the published address, theirs is left alone.
    let ingresses = ns.api::<Ingress>();
    eventually("the quic Ingress's status", TIMEOUT, || async {
        Ok(lb_ip(&ingresses.get("shop").await?).is_some().then_some(()))
    })
    .await?;
    assert_eq!(lb_ip(&ingresses.get("theirs").await?), None);
    s.finish().await
}

#[tokio::test]
async fn legacy_annotation_and_default_ingress_class() -> Result<()> {
    let host = TestHost::shared().await?;
    let web = Backend::start_in(host, "web").await?;
    let env = TestEnv::shared().await?;
    let ns = TestNamespace::new(env, "classes").await?;
    install_crd(env).await?;
    let rbac = ControllerRbac::grant(env, &ns).await?;
    // A class of this test's own: IngressClasses are cluster-wide, and a default one
    // must not capture other tests' Ingresses.
    let class = unique_name("quic-e2e");
    let mut opts = ControllerOptions::new(ns.name());
    opts.extra_args = vec!["--ingress-class".into(), class.clone()];
    let c = Controller::start_with(env, opts).await?;

    ns.create(&service("web").port("http", 80).build()).await?;
    ns.apply(&slice_to("web", "web-1", host.ip(), web.port())).await?;
    // No class at all, while no default class exists (the API server's admission would
    // otherwise fill in the default class at creation).
    ns.create(&ingress("classless").rule("classless.example.com", "/", "Prefix", "web", 80).build()).await?;
    ns.create(
        &ingress("annotated")
            .annotation("kubernetes.io/ingress.class", &class)
            .rule("annotated.example.com", "/", "Prefix", "web", 80)
            .build(),
    )
    .await?;
    ns.create(
        &ingress("annotated-other")
            .annotation("kubernetes.io/ingress.class", "nginx")
            .rule("other.example.com", "/", "Prefix", "web", 80)
            .build(),
    )
    .await?;
    c.wait_for_backend("annotated.example.com", "/", "web", TIMEOUT).await?;
    assert_eq!(
        c.get("classless.example.com", "/").await?.status,
        404,
        "classless Ingress served without a default class"
    );
    assert_eq!(c.get("other.example.com", "/").await?.status, 404, "another class's annotation was served");

    // Our class becomes the cluster default: the classless Ingress is ours now.
    let classes = Api::<IngressClass>::all(env.client()?);
    classes
        .create(&PostParams::default(), &ingress_class(&class, "quic-ingress.dev/controller").default_class().build())
        .await?;
    let served = c.wait_for_backend("classless.example.com", "/", "web", TIMEOUT).await;
    let other = c.get("other.example.com", "/").await.map(|r| r.status);
    classes.delete(&class, &Default::default()).await?;
    served?;
    assert_eq!(other?, 404, "another class's annotation was served");

    drop(c);
    drop(rbac);
    ns.cleanup().await
}

fn lb_ip(ing: &Ingress) -> Option<String> {
    ing.status.as_ref()?.load_balancer.as_ref()?.ingress.as_ref()?.first()?.ip.clone()
}

#[tokio::test]
async fn backend_groups_by_resource_and_by_own_routes() -> Result<()> {
    // Static backends may be on loopback: they are URLs, not EndpointSlice addresses.
    let w1 = Backend::start_local("w1").await?;
    let w2 = Backend::start_local("w2").await?;
    let solo = Backend::start_local("solo").await?;
    let host = TestHost::shared().await?;
    let h2 = Backend::start_in_with(host, "h2", "h2").await?;
    let s = setup("groups").await?;
    let (ns, c, env) = (&s.ns, &s.controller, s.env);

    ns.create(&backend_group(
        "weighted",
        json!({
            "strategy": "round_robin",
            "backends": [{"url": w1.url(), "weight": 3}, {"url": w2.url(), "weight": 1}],
            "ingressClassName": "quic",
            "routes": [{"host": "bg.example.com", "path": "/", "pathType": "Prefix"}],
        }),
    )?)
    .await?;
    ns.create(&backend_group("solo", json!({"strategy": "least_connections", "backends": [{"url": solo.url()}]}))?)
        .await?;
    ns.create(
        &ingress("by-resource")
            .class("quic")
            .resource_rule("res.example.com", "/", "Prefix", "quic-ingress.dev", "BackendGroup", "solo")
            .build(),
    )
    .await?;

    // Endpoints from a Service's EndpointSlices, spoken to over HTTP/2 cleartext.
    ns.create(&service("h2svc").port("http", 8080).build()).await?;
    ns.apply(&slice_to("h2svc", "h2svc-1", host.ip(), h2.port())).await?;
    ns.create(&backend_group(
        "via-service",
        json!({
            "service": {"name": "h2svc", "port": 8080},
            "protocol": "h2",
            "ingressClassName": "quic",
            "routes": [{"host": "h2.example.com", "path": "/", "pathType": "Prefix"}],
        }),
    )?)
    .await?;

    // A BackendGroup's own routes, with weights 3:1 (smooth weighted round robin, so any
    // 40 consecutive requests split exactly 30/10 while the table stays the same; a
    // rebuild restarts the rotation, hence the slack).
    eventually("bg.example.com to be routed", TIMEOUT, || async {
        Ok((c.get("bg.example.com", "/").await?.status == 200).then_some(()))
    })
    .await?;
    let seen = c.tally("bg.example.com", "/", 40).await?;
    let (n1, n2) = (seen.get("w1").copied().unwrap_or(0), seen.get("w2").copied().unwrap_or(0));
    assert_eq!(n1 + n2, 40, "{seen:?}");
    assert!((28..=32).contains(&n1), "weights 3:1 should give about 30/10: {seen:?}");

    // Through an Ingress's backend.resource.
    c.wait_for_backend("res.example.com", "/anything", "solo", TIMEOUT).await?;
    let reply = c.wait_for_backend("h2.example.com", "/", "h2", TIMEOUT).await?;
    assert_eq!(reply.json()?["version"], "HTTP/2.0", "{}", reply.text());

    // kubectl get bg: the printer columns, filled from the status the leader writes.
    let table = eventually("kubectl get bg to show healthy counts", TIMEOUT, || async {
        let mut cmd = env.kubectl();
        cmd.args(["get", "bg", "-n", ns.name()]);
        let out = kubectl(cmd).await?;
        let row = |name: &str| out.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or("");
        let ok = row("weighted").contains("2/2") && row("solo").contains("1/1") && row("via-service").contains("1/1");
        if ok { Ok(Some(out)) } else { Err(anyhow!("not yet:\n{out}")) }
    })
    .await?;
    let header: Vec<&str> = table.lines().next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, ["NAME", "STRATEGY", "HEALTHY", "READY", "AGE"], "{table}");
    let row = |name: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    };
    assert_eq!(row("weighted")[1..4], ["round_robin", "2/2", "True"], "{table}");
    assert_eq!(row("solo")[1..4], ["least_connections", "1/1", "True"], "{table}");
    assert_eq!(row("via-service")[1..4], ["round_robin", "1/1", "True"], "{table}");

    // A spec change is acknowledged in status: observedGeneration follows generation.
    let groups = ns.api::<BackendGroup>();
    groups.patch("solo", &PatchParams::default(), &Patch::Merge(json!({"spec": {"strategy": "random"}}))).await?;
    let status = eventually("status to observe the new generation", TIMEOUT, || async {
        let bg = groups.get("solo").await?;
        let status = bg.status.ok_or_else(|| anyhow!("no status"))?;
        if bg.metadata.generation == Some(2) && status.observed_generation == Some(2) {
            Ok(Some(status))
        } else {
            Err(anyhow!("generation {:?}, observed {:?}", bg.metadata.generation, status.observed_generation))
        }
    })
    .await?;
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").context("no Ready condition")?;
    assert_eq!((ready.status.as_str(), ready.observed_generation), ("True", Some(2)), "{ready:?}");
    s.finish().await
}

fn write_temp(stem: &str, contents: &str) -> Result<PathBuf> {
    let path = log_path(stem)?.with_extension("pem");
    std::fs::write(&path, contents)?;
    Ok(path)
}

#[tokio::test]
async fn tls_certificates_are_chosen_by_sni() -> Result<()> {
    let host = TestHost::shared().await?;
    let web = Backend::start_in(host, "tls-web").await?;
    let s = setup("tls").await?;
    let (ns, c) = (&s.ns, &s.controller);

    let (ca1, cert1, key1) = quic_ingress_e2e::objects::ca_and_cert("secure.example.com")?;
    let trust1 = TrustOptions { insecure: false, ca_file: Some(write_temp("ca1", &ca1)?) };
    ns.create(&service("web").port("http", 80).build()).await?;
    ns.apply(&slice_to("web", "web-1", host.ip(), web.port())).await?;
    ns.apply(&tls_secret("secure-tls", &cert1, &key1).build()).await?;
    ns.create(
        &ingress("secure")
            .class("quic")
            .rule("secure.example.com", "/", "Prefix", "web", 80)
            .rule("other.example.com", "/", "Prefix", "web", 80)
            .tls(&["secure.example.com"], "secure-tls")
            .build(),
    )
    .await?;

    // SNI secure.example.com: the Secret's certificate, which verifies against its CA.
    let reply = eventually("secure.example.com to verify against the Secret's CA", TIMEOUT, || async {
        Ok(Some(c.get_with("secure.example.com", "/", &trust1).await?))
    })
    .await?;
    assert_eq!((reply.status, reply.backend()), (200, Some("tls-web")));

    // Another SNI: the default (self-signed) certificate, so the same CA refuses it ...
    match c.get_with("other.example.com", "/", &trust1).await {
        Err(GetError::Connect(e)) => {
            let msg = e.to_string().to_lowercase();
            assert!(msg.contains("certificate") || msg.contains("unknown") || msg.contains("tls"), "{e}");
        }
        other => bail!("other.example.com verified against the Secret's CA: {other:?}"),
    }
    // ... while the host itself is served.
    let insecure = TrustOptions { insecure: true, ca_file: None };
    assert_eq!(c.get_with("other.example.com", "/", &insecure).await?.status, 200);

    // A new certificate in the Secret is served without a restart.
    let (ca2, cert2, key2) = quic_ingress_e2e::objects::ca_and_cert("secure.example.com")?;
    let trust2 = TrustOptions { insecure: false, ca_file: Some(write_temp("ca2", &ca2)?) };
    ns.apply(&tls_secret("secure-tls", &cert2, &key2).build()).await?;
    eventually("the renewed certificate to be served", TIMEOUT, || async {
        Ok(Some(c.get_with("secure.example.com", "/", &trust2).await?))
    })
    .await?;
    assert!(
        matches!(c.get_with("secure.example.com", "/", &trust1).await, Err(GetError::Connect(_))),
        "the old certificate is still served"
    );
    s.finish().await
}

#[tokio::test]
async fn backend_health_shows_in_kubectl_describe() -> Result<()> {
    let h1 = Backend::start_local("h1").await?;
    let mut h2 = Backend::start_local("h2").await?;
    let s = setup("health").await?;
    let (ns, c, env) = (&s.ns, &s.controller, s.env);

    ns.create(&backend_group(
        "checked",
        json!({
            "backends": [{"url": h1.url()}, {"url": h2.url()}],
            "healthCheck": {"interval": "1s", "timeout": "500ms", "healthyThreshold": 1, "unhealthyThreshold": 2, "path": "/health"},
            "ingressClassName": "quic",
            "routes": [{"host": "health.example.com", "path": "/"}],
        }),
    )?)
    .await?;
    ns.create(
        &ingress("checked")
            .class("quic")
            .resource_rule("ing.health.example.com", "/", "Prefix", "quic-ingress.dev", "BackendGroup", "checked")
            .build(),
    )
    .await?;
    let describe = || async {
        let mut cmd = env.kubectl();
        cmd.args(["describe", "bg", "checked", "-n", ns.name()]);
        kubectl(cmd).await
    };
    let h2_addr = h2.addr().to_string();
    eventually("describe to show 2/2 healthy", TIMEOUT, || async {
        let out = describe().await?;
        let ok = out.contains("2/2")
            && quic_ingress_e2e::node::described_backend_health(&out, &h2_addr).as_deref() == Some("true");
        if ok { Ok(Some(())) } else { Err(anyhow!("not yet:\n{out}")) }
    })
    .await?;

    // The Ingress reports the published address.
    let ingresses = ns.api::<Ingress>();
    let ip = eventually("status.loadBalancer of the Ingress", TIMEOUT, || async {
        Ok(lb_ip(&ingresses.get("checked").await?))
    })
    .await?;
    assert_eq!(ip, "192.0.2.10");
    // An Ingress that moves to another class loses the address we published.
    ns.create(
        &ingress("leaving")
            .class("quic")
            .resource_rule("leaving.example.com", "/", "Prefix", "quic-ingress.dev", "BackendGroup", "checked")
            .build(),
    )
    .await?;
    eventually("the leaving Ingress to get our address", TIMEOUT, || async {
        Ok(lb_ip(&ingresses.get("leaving").await?).filter(|ip| ip == "192.0.2.10"))
    })
    .await?;
    let to_other = json!({"spec": {"ingressClassName": "someone-else"}});
    ingresses.patch("leaving", &PatchParams::default(), &Patch::Merge(&to_other)).await?;
    eventually("the address to be withdrawn from an Ingress of another class", TIMEOUT, || async {
        Ok(lb_ip(&ingresses.get("leaving").await?).is_none().then_some(()))
    })
    .await?;

    // h2 dies: two failed checks (1 s apart) mark it unhealthy.
    h2.stop();
    let out = eventually("describe to show h2 unhealthy", TIMEOUT, || async {
        let out = describe().await?;
        let ok = out.contains("1/2")
            && quic_ingress_e2e::node::described_backend_health(&out, &h2_addr).as_deref() == Some("false")
            && out.contains("BackendUnhealthy");
        if ok { Ok(Some(out)) } else { Err(anyhow!("not yet:\n{out}")) }
    })
    .await?;
    assert_eq!(
        quic_ingress_e2e::node::described_backend_health(&out, &h1.addr().to_string()).as_deref(),
        Some("true"),
        "{out}"
    );
    // Traffic avoids it.
    let seen = c.tally("health.example.com", "/", 10).await?;
    assert_eq!(seen, BTreeMap::from([("h1".to_string(), 10)]), "{out}");

    // Back on the same port: healthy again, with an Event saying so.
    h2.restart().await?;
    let out = eventually("describe to show h2 healthy again", TIMEOUT, || async {
        let out = describe().await?;
        let ok = out.contains("2/2")
            && quic_ingress_e2e::node::described_backend_health(&out, &h2_addr).as_deref() == Some("true")
            && out.contains("BackendHealthy");
        if ok { Ok(Some(out)) } else { Err(anyhow!("not yet:\n{out}")) }
    })
    .await?;
    assert!(out.contains("BackendUnhealthy"), "the earlier Event is gone:\n{out}");
    let (type_, note) = wait_for_event(ns, "BackendGroup", "checked", "BackendUnhealthy").await?;
    assert_eq!(type_, "Warning");
    assert!(note.contains(&h2_addr), "{note}");
    eventually("h2 to take traffic again", TIMEOUT, || async {
        Ok(c.tally("health.example.com", "/", 4).await?.contains_key("h2").then_some(()))
    })
    .await?;
    s.finish().await
}

#[tokio::test]
async fn invalid_objects_are_skipped_with_events() -> Result<()> {
    let host = TestHost::shared().await?;
    let web = Backend::start_in(host, "good").await?;
    let first = Backend::start_in(host, "first").await?;
    let second = Backend::start_in(host, "second").await?;
    let s = setup("invalid").await?;
    let (ns, c) = (&s.ns, &s.controller);

    for (svc, backend) in [("web", &web), ("first", &first), ("second", &second)] {
        ns.create(&service(svc).port("http", 80).build()).await?;
        ns.apply(&slice_to(svc, &format!("{svc}-1"), host.ip(), backend.port())).await?;
    }
    ns.create(&ingress("broken").class("quic").rule("broken.example.com", "/", "Prefix", "missing", 80).build())
        .await?;
    ns.create(&ingress("good").class("quic").rule("good.example.com", "/", "Prefix", "web", 80).build()).await?;

    c.wait_for_backend("good.example.com", "/", "good", TIMEOUT).await?;
    assert_eq!(c.get("broken.example.com", "/").await?.status, 404);
    let (type_, note) = wait_for_event(ns, "Ingress", "broken", "ServiceNotFound").await?;
    assert_eq!(type_, "Warning");
    assert!(note.contains("missing"), "{note}");

    // Two Ingresses claim dup.example.com/: the older one keeps it. The newer one sorts
    // first by name, so only its age can make it lose; creation timestamps have second
    // resolution, so it is created in a later second than the older one.
    let older = ns
        .create(&ingress("z-older").class("quic").rule("dup.example.com", "/", "Prefix", "first", 80).build())
        .await?;
    let created = older.metadata.creation_timestamp.context("no creationTimestamp")?.0;
    eventually("the clock to pass the older Ingress's second", Duration::from_secs(3), || async {
        let now = k8s_openapi::jiff::Timestamp::now();
        Ok((now.as_second() > created.as_second()).then_some(()))
    })
    .await?;
    ns.create(&ingress("a-newer").class("quic").rule("dup.example.com", "/", "Prefix", "second", 80).build()).await?;
    let (type_, note) = wait_for_event(ns, "Ingress", "a-newer", "RouteConflict").await?;
    assert_eq!(type_, "Warning");
    assert!(note.contains("z-older"), "{note}");
    let seen = c.tally("dup.example.com", "/", 5).await?;
    assert_eq!(seen, BTreeMap::from([("first".to_string(), 5)]));
    assert!(
        events_for(ns, "Ingress", "z-older").await?.iter().all(|(_, reason, _)| reason != "RouteConflict"),
        "the older Ingress got a RouteConflict"
    );

    // A BackendGroup the controller cannot build, and an Ingress naming one that does not
    // exist: Events, and a Ready=False condition on the first.
    // (The schema admits the range's shape; only the controller sees it is backwards.)
    let backwards = json!({"service": {"name": "web", "port": 80}, "healthCheck": {"expectedStatus": "399-200"}});
    ns.create(&backend_group("unbuildable", backwards)?).await?;
    ns.create(
        &ingress("to-nowhere")
            .class("quic")
            .resource_rule("nowhere.example.com", "/", "Prefix", "quic-ingress.dev", "BackendGroup", "absent")
            .build(),
    )
    .await?;
    let (type_, _) = wait_for_event(ns, "BackendGroup", "unbuildable", "InvalidBackendGroup").await?;
    assert_eq!(type_, "Warning");
    let (type_, note) = wait_for_event(ns, "Ingress", "to-nowhere", "BackendGroupNotFound").await?;
    assert_eq!(type_, "Warning");
    assert!(note.contains("absent"), "{note}");
    let groups = ns.api::<BackendGroup>();
    let ready = eventually("Ready=False on the unbuildable BackendGroup", TIMEOUT, || async {
        let status = groups.get("unbuildable").await?.status.ok_or_else(|| anyhow!("no status"))?;
        Ok(status.conditions.into_iter().find(|c| c.type_ == "Ready"))
    })
    .await?;
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "InvalidBackendGroup"), "{ready:?}");

    // A TLS Secret that holds no certificate: a Warning, and the host is still served
    // (with the default certificate).
    ns.apply(&tls_secret("bad-tls", "not a certificate", "not a key").build()).await?;
    ns.create(
        &ingress("bad-tls")
            .class("quic")
            .rule("tlsbad.example.com", "/", "Prefix", "web", 80)
            .tls(&["tlsbad.example.com"], "bad-tls")
            .build(),
    )
    .await?;
    let (type_, note) = wait_for_event(ns, "Ingress", "bad-tls", "InvalidTLSSecret").await?;
    assert_eq!(type_, "Warning");
    assert!(note.contains("bad-tls"), "{note}");
    c.wait_for_backend("tlsbad.example.com", "/", "good", TIMEOUT).await?;

    // Everything else kept working throughout.
    c.wait_for_backend("good.example.com", "/", "good", TIMEOUT).await?;
    assert_eq!(c.get("broken.example.com", "/").await?.status, 404);
    s.finish().await
}

/// `reportingInstance` of the Events with `reason` on Ingress `name`.
async fn reporters(ns: &TestNamespace, name: &str, reason: &str) -> Result<Vec<String>> {
    let events = ns.api::<Event>().list(&ListParams::default()).await?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter(|e| e.regarding.as_ref().is_some_and(|r| r.name.as_deref() == Some(name)))
        .map(|e| e.reporting_instance.unwrap_or_default())
        .collect())
}

#[tokio::test]
async fn only_the_leader_writes_and_a_follower_takes_over() -> Result<()> {
    let host = TestHost::shared().await?;
    let web = Backend::start_in(host, "web").await?;
    let env = TestEnv::shared().await?;
    let ns = TestNamespace::new(env, "leader").await?;
    install_crd(env).await?;
    let rbac = ControllerRbac::grant(env, &ns).await?;
    let mut replicas =
        vec![Some(Controller::start(env, ns.name()).await?), Some(Controller::start(env, ns.name()).await?)];

    ns.create(&service("web").port("http", 80).build()).await?;
    ns.apply(&slice_to("web", "web-1", host.ip(), web.port())).await?;
    ns.create(&ingress("shop").class("quic").rule("shop.example.com", "/", "Prefix", "web", 80).build()).await?;
    ns.create(&ingress("broken-1").class("quic").rule("b1.example.com", "/", "Prefix", "missing", 80).build()).await?;
    // Every replica serves; one holds the Lease (identity <hostname>-<pid>).
    for c in replicas.iter().flatten() {
        c.wait_for_backend("shop.example.com", "/", "web", TIMEOUT).await?;
    }
    let leases = ns.api::<Lease>();
    let holder_now = || async { Ok(leases.get_opt("quic-ingress-quic").await?.and_then(|l| l.spec?.holder_identity)) };
    let holder = eventually("a leader", TIMEOUT, holder_now).await?;
    let is = |c: &Controller, holder: &str| holder.ends_with(&format!("-{}", c.pid()));
    let leader = replicas
        .iter()
        .position(|c| c.as_ref().is_some_and(|c| is(c, &holder)))
        .with_context(|| format!("the Lease holder {holder} is neither replica"))?;

    // Only the leader reports: one Event, from it.
    wait_for_event(&ns, "Ingress", "broken-1", "ServiceNotFound").await?;
    assert_eq!(
        reporters(&ns, "broken-1", "ServiceNotFound").await?,
        std::slice::from_ref(&holder),
        "not only the leader"
    );

    // The leader dies (SIGKILL: the Lease is not released). The follower takes the Lease
    // once it expires (15 s) and reports from then on; it served throughout.
    replicas[leader] = None;
    let follower = replicas[1 - leader].as_ref().context("no follower")?;
    assert_eq!(follower.get("shop.example.com", "/").await?.status, 200);
    let died = Instant::now();
    let new_holder = eventually("the follower to take the Lease", Duration::from_secs(45), || async {
        Ok(holder_now().await?.filter(|h| *h != holder))
    })
    .await?;
    println!("the follower took the Lease {:.1?} after the leader died", died.elapsed());
    assert!(is(follower, &new_holder), "{new_holder} is not the follower");
    // Another missing Service: a second Ingress naming the *same* one gets no Event (see
    // every_ingress_naming_a_missing_service_gets_an_event).
    ns.create(&ingress("broken-2").class("quic").rule("b2.example.com", "/", "Prefix", "missing-2", 80).build())
        .await?;
    wait_for_event(&ns, "Ingress", "broken-2", "ServiceNotFound").await?;
    assert_eq!(reporters(&ns, "broken-2", "ServiceNotFound").await?, [new_holder]);
    assert_eq!(follower.get("shop.example.com", "/").await?.status, 200);

    drop(replicas);
    drop(rbac);
    ns.cleanup().await
}

/// Each Ingress that names a missing Service is told so, not only the first.
#[tokio::test]
async fn every_ingress_naming_a_missing_service_gets_an_event() -> Result<()> {
    let s = setup("missing-svc").await?;
    let ns = &s.ns;
    for name in ["first", "second"] {
        let h = format!("{name}.example.com");
        ns.create(&ingress(name).class("quic").rule(&h, "/", "Prefix", "missing", 80).build()).await?;
    }
    wait_for_event(ns, "Ingress", "first", "ServiceNotFound").await?;
    wait_for_event(ns, "Ingress", "second", "ServiceNotFound").await?;
    s.finish().await
}

fn median_and_max(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    (samples[samples.len() / 2], samples[samples.len() - 1])
}

/// Not a speed assertion: figures for the record, printed and written to
/// `target/e2e-figures.txt`.
#[tokio::test]
async fn figures_apply_to_first_request_and_memory() -> Result<()> {
    const SAMPLES: usize = 20;
    const BULK: usize = 1000;
    let host = TestHost::shared().await?;
    let web = Backend::start_in(host, "figures").await?;
    let s = setup("figures").await?;
    let (ns, c) = (&s.ns, &s.controller);
    ns.create(&service("web").port("http", 80).build()).await?;
    ns.apply(&slice_to("web", "web-1", host.ip(), web.port())).await?;
    // One connection for every host, so no handshake is measured.
    let probe = "probe.example.com";
    assert_eq!(c.get_via(probe, probe, "/").await?.status, 404);

    // Create an Ingress, then poll every 10 ms until it routes.
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        let h = format!("m{i}.example.com");
        let started = Instant::now();
        ns.create(&ingress(&format!("m{i}")).class("quic").rule(&h, "/", "Prefix", "web", 80).build()).await?;
        loop {
            let reply = c.get_via(probe, &h, "/").await?;
            if reply.status == 200 {
                break;
            }
            ensure!(reply.status == 404, "unexpected {}: {}", reply.status, reply.text());
            ensure!(started.elapsed() < TIMEOUT, "{h} not routed after {TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        samples.push(started.elapsed());
    }
    let (median, worst) = median_and_max(&mut samples);

    // Memory with 1,000 more Ingresses.
    let rss_before = c.rss_kib()?;
    let started = Instant::now();
    futures::stream::iter(0..BULK)
        .map(|i| {
            let h = format!("bulk{i}.example.com");
            let ing = ingress(&format!("bulk{i}")).class("quic").rule(&h, "/", "Prefix", "web", 80).build();
            async move { ns.create(&ing).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let created_in = started.elapsed();
    let want = BULK + SAMPLES;
    eventually("/debug/routes to list every route", Duration::from_secs(120), || async {
        let routes = c.debug_routes().await?;
        let n = routes["routes"].as_array().map(Vec::len).unwrap_or(0);
        if n >= want { Ok(Some(())) } else { Err(anyhow!("{n} of {want} routes")) }
    })
    .await?;
    let loaded_in = started.elapsed();
    c.wait_for_backend(&format!("bulk{}.example.com", BULK - 1), "/", "figures", TIMEOUT).await?;
    let rss_after = c.rss_kib()?;

    let figures = format!(
        "quic-ingress e2e figures ({} UTC)\n\
         apply -> first routed request ({SAMPLES} samples, polling every 10 ms): median {:.0} ms, worst {:.0} ms\n\
         controller RSS: {} MiB with {SAMPLES} Ingresses, {} MiB with {want} Ingresses\n\
         {BULK} Ingresses created in {:.1} s (16 at a time), all routed after {:.1} s\n",
        k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M:%S"),
        median.as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0,
        rss_before / 1024,
        rss_after / 1024,
        created_in.as_secs_f64(),
        loaded_in.as_secs_f64(),
    );
    println!("{figures}");
    let out = repo_root().join("target");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("e2e-figures.txt"), &figures)?;
    let count = ns.api::<Ingress>().list(&ListParams::default()).await?.items.len();
    assert_eq!(count, want);
    s.finish().await
}

/// A metric's value from a controller's `/metrics` (0 when absent).
async fn metric(c: &Controller, series: &str) -> Result<f64> {
    let (_, body) = quic_ingress_e2e::controller::admin_get(c.admin_addr(), "/metrics").await?;
    let text = String::from_utf8_lossy(&body);
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

#[tokio::test]
async fn replicas_sharing_a_ticket_key_secret_resume_each_others_sessions() -> Result<()> {
    let env = TestEnv::shared().await?;
    let ns = TestNamespace::new(env, "tickets").await?;
    install_crd(env).await?;
    let rbac = ControllerRbac::grant(env, &ns).await?;
    let mut opts = ControllerOptions::new(ns.name());
    opts.extra_args = vec!["--ticket-key-secret".into(), format!("{}/ticket-keys", ns.name())];
    // Both replicas start before the Secret exists and pick the keys up from their watch.
    let a = Controller::start_with(env, opts.clone()).await?;
    let b = Controller::start_with(env, opts).await?;
    let mut key = vec![0u8; 48];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)?;
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta { name: Some("ticket-keys".into()), ..Default::default() },
        data: Some([("ticket.key".to_string(), k8s_openapi::ByteString(key))].into_iter().collect()),
        ..Default::default()
    };
    ns.create(&secret).await?;
    for c in [&a, &b] {
        eventually("the replica to load the ticket keys", TIMEOUT, || async {
            Ok(std::fs::read_to_string(c.log_path())?.contains("session-ticket keys loaded").then_some(()))
        })
        .await?;
    }

    // One client session cache: a full handshake at A, then a new connection to B.
    let trust = TrustOptions { insecure: true, ca_file: None };
    let connector = quic_ingress::client::H3Connector::new(&trust, false, false)?;
    let req = || http::Request::get("/").body(()).map_err(anyhow::Error::from);
    let at_a = connector.connect(a.addr(), "localhost").await?;
    let status = at_a.request(req()?, quic_ingress::client::RequestBody::Empty).await?.status;
    ensure!(status == 404, "no Ingress yet: {status}");
    let at_b = connector.connect(b.addr(), "localhost").await?;
    at_b.request(req()?, quic_ingress::client::RequestBody::Empty).await?;

    let resumed = "quic_ingress_tls_resumptions_total{outcome=\"resumed\"}";
    let unknown = "quic_ingress_tls_resumptions_total{outcome=\"unknown_ticket\"}";
    ensure!(metric(&b, resumed).await? == 1.0, "B did not resume A's session\n{}", b.log_tail(20));
    ensure!(metric(&b, unknown).await? == 0.0);
    ensure!(metric(&a, resumed).await? == 0.0, "the first connection was a full handshake");

    drop((a, b));
    drop(rbac);
    ns.cleanup().await
}

#[tokio::test]
async fn http3_backends_are_trusted_through_a_ca_secret() -> Result<()> {
    // The HTTP/3 origin: a second quic-ingress in standalone mode, with a certificate for
    // origin.internal, in front of a demo backend.
    let demo = Backend::start_local("behind-h3").await?;
    let dir = quic_ingress_e2e::process::log_dir()?.join(unique_name("h3-origin"));
    std::fs::create_dir_all(&dir)?;
    let cert = rcgen::generate_simple_self_signed(vec!["origin.internal".to_string()])?;
    std::fs::write(dir.join("cert.pem"), cert.cert.pem())?;
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem())?;
    let origin_port = quic_ingress_e2e::process::free_udp_tcp_port()?;
    let origin_addr = format!("127.0.0.1:{origin_port}");
    let admin = format!("127.0.0.1:{}", quic_ingress_e2e::process::free_tcp_port_besides(&[origin_port])?);
    std::fs::write(
        dir.join("origin.yaml"),
        format!(
            "server: {{address: \"{origin_addr}\", cert_file: cert.pem, key_file: key.pem, trusted_proxies: [\"127.0.0.1\"]}}\ntelemetry: {{admin_address: \"{admin}\"}}\nroutes: [{{id: r, path: /, backend_group: g}}]\nbackend_groups: [{{id: g, backends: [{{url: \"{}\"}}]}}]\n",
            demo.url()
        ),
    )?;
    let mut cmd = std::process::Command::new(quic_ingress_e2e::process::quic_ingress_bin()?);
    cmd.arg("serve").arg("--config").arg(dir.join("origin.yaml"));
    let _origin = quic_ingress_e2e::process::TestProcess::spawn("h3 origin", cmd, log_path("h3-origin")?)?;
    let admin = admin.parse()?;
    eventually("the HTTP/3 origin to be ready", TIMEOUT, || async {
        Ok(quic_ingress_e2e::controller::admin_get(admin, "/readyz").await.ok().filter(|(s, _)| *s == 200).map(|_| ()))
    })
    .await?;

    let s = setup("h3-upstream").await?;
    let (ns, c) = (&s.ns, &s.controller);
    // The CA bundle as cert-manager leaves it: ca.crt in a kubernetes.io/tls Secret.
    let pem = cert.cert.pem();
    ns.create(&tls_secret("origin-ca", &pem, cert.signing_key.serialize_pem()).data("ca.crt", &pem).build()).await?;
    let origin_url = format!("h3://{origin_addr}");
    ns.create(&backend_group(
        "over-h3",
        json!({
            "backends": [{"url": origin_url}],
            "tls": {"caSecret": "origin-ca", "serverName": "origin.internal"},
            "ingressClassName": "quic",
            "routes": [{"host": "h3up.example.com", "path": "/", "pathType": "Prefix"}],
        }),
    )?)
    .await?;
    let reply = c.wait_for_backend("h3up.example.com", "/through", "behind-h3", TIMEOUT).await?;
    let seen = reply.json()?;
    ensure!(seen["headers"]["x-forwarded-for"] == "127.0.0.1, 127.0.0.1", "both hops appended: {seen}");

    // Without the CA the origin's certificate is not trusted: 502.
    ns.create(&backend_group(
        "untrusted-h3",
        json!({
            "backends": [{"url": origin_url}],
            "ingressClassName": "quic",
            "routes": [{"host": "untrusted.example.com", "path": "/", "pathType": "Prefix"}],
        }),
    )?)
    .await?;
    eventually("the untrusted origin to answer 502", TIMEOUT, || async {
        let reply = c.get("untrusted.example.com", "/").await?;
        Ok((reply.status == 502).then_some(()))
    })
    .await?;
    s.finish().await
}

#[tokio::test]
async fn two_classes_publishing_one_address_leave_each_others_ingresses_alone() -> Result<()> {
    let env = TestEnv::shared().await?;
    let ns = TestNamespace::new(env, "two-classes").await?;
    install_crd(env).await?;
    let rbac = ControllerRbac::grant(env, &ns).await?;
    // Both publish 192.0.2.10, as two releases on the same nodes publish the node address.
    let ours = Controller::start(env, ns.name()).await?;
    let mut opts = ControllerOptions::new(ns.name());
    opts.extra_args = vec!["--ingress-class".into(), "quic-other".into()];
    let other = Controller::start_with(env, opts).await?;
    let ingresses = ns.api::<Ingress>();
    let addressed = |name: &'static str| {
        let ingresses = ingresses.clone();
        async move {
            eventually(&format!("Ingress {name} to show the address"), TIMEOUT, || async {
                let ing = ingresses.get(name).await?;
                Ok((lb_ip(&ing).as_deref() == Some("192.0.2.10")).then(|| ing.metadata.resource_version.clone()))
            })
            .await
        }
    };
    ns.create(&ingress("mine").class("quic").rule("mine.example.com", "/", "Prefix", "web", 80).build()).await?;
    let version = addressed("mine").await?;
    // Each Ingress of the other class is a build of the other replica, with "mine" among
    // the Ingresses it does not serve; the second one's address means the status pass
    // after the first build is over.
    for name in ["theirs", "theirs-2"] {
        ns.create(
            &ingress(name).class("quic-other").rule(&format!("{name}.example.com"), "/", "Prefix", "web", 80).build(),
        )
        .await?;
        addressed(name).await?;
    }
    let now = ingresses.get("mine").await?;
    assert_eq!(lb_ip(&now).as_deref(), Some("192.0.2.10"));
    assert_eq!(now.metadata.resource_version, version, "the other class's replica rewrote our Ingress's status");
    drop((ours, other));
    drop(rbac);
    ns.cleanup().await
}
