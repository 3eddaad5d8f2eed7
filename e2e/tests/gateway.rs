//! Cluster tests of the Gateway API (issue 14, the controller half): the standard-channel
//! CRDs of `sigs.k8s.io/gateway-api` applied to a real API server, the controller process
//! with the rules of `deploy/rbac.yaml`, and real HTTP/3 and HTTP/2 clients. A
//! GatewayClass is Accepted with its features; a Gateway's HTTPS listener serves an
//! HTTPRoute's PathPrefix and Exact rules over HTTP/3 (0-RTT by the usual rules) and
//! HTTP/2 with the listener's certificate; status conditions carry observedGeneration; an
//! invalid backendRef is ResolvedRefs=False; a cross-namespace certificateRef works only
//! with a ReferenceGrant; a Gateway route and an Ingress for one host: the oldest wins.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use http::Version;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, PostParams};
use quic_ingress::client::{H3Connector, RequestBody, TrustOptions, request_tcp};
use quic_ingress::kube::gateway::api::{Gateway, GatewayClass, HTTPRoute};
use quic_ingress::kube::gateway::status::SUPPORTED_FEATURES;
use quic_ingress_e2e::controller::{ControllerOptions, install_crd};
use quic_ingress_e2e::gateway::{gateway, gateway_class_of, http_route, https_listener, reference_grant, summary};
use quic_ingress_e2e::namespace::unique_name;
use quic_ingress_e2e::objects::{ca_and_cert, endpoint_slice, ingress, service, tls_secret};
use quic_ingress_e2e::process::log_path;
use quic_ingress_e2e::relay::DelayRelay;
use quic_ingress_e2e::{Backend, Controller, ControllerRbac, TestEnv, TestHost, TestNamespace, eventually};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(20);

fn write_temp(name: &str, contents: &str) -> Result<PathBuf> {
    let path = log_path(name)?.with_extension("pem");
    std::fs::write(&path, contents)?;
    Ok(path)
}

/// A cluster-scoped GatewayClass of this test, deleted on drop.
struct Class {
    name: String,
    api: Api<GatewayClass>,
}

impl Class {
    async fn create(env: &TestEnv) -> Result<Class> {
        Self::create_of(env, quic_ingress::kube::gateway::GATEWAY_CONTROLLER_NAME).await
    }

    /// A class of the controller started with `--gateway-controller-name CONTROLLER`.
    async fn create_of(env: &TestEnv, controller: &str) -> Result<Class> {
        let name = unique_name("quic-gw");
        let api = Api::<GatewayClass>::all(env.client()?);
        api.create(&PostParams::default(), &gateway_class_of(&name, controller)?).await?;
        Ok(Class { name, api })
    }

    async fn delete(self) -> Result<()> {
        self.api.delete(&self.name, &DeleteParams::default()).await?;
        Ok(())
    }
}

async fn wait_gateway<F>(ns: &TestNamespace, name: &str, what: &str, ok: F) -> Result<Gateway>
where
    F: Fn(&Gateway) -> bool,
{
    let api = ns.api::<Gateway>();
    eventually(what, TIMEOUT, || async {
        let gw = api.get(name).await?;
        if ok(&gw) {
            return Ok(Some(gw));
        }
        Err(anyhow!("status so far: {}", serde_json::to_string(&gw.status)?))
    })
    .await
}

async fn wait_route<F>(ns: &TestNamespace, name: &str, what: &str, ok: F) -> Result<HTTPRoute>
where
    F: Fn(&HTTPRoute) -> bool,
{
    let api = ns.api::<HTTPRoute>();
    eventually(what, TIMEOUT, || async {
        let r = api.get(name).await?;
        if ok(&r) {
            return Ok(Some(r));
        }
        Err(anyhow!("status so far: {}", serde_json::to_string(&r.status)?))
    })
    .await
}

/// `(status, reason, observedGeneration)` of our first parent's condition `type_`.
fn parent_condition(r: &HTTPRoute, type_: &str) -> Option<(String, String, Option<i64>)> {
    let parent = r.status.as_ref()?.parents.first()?;
    summary(&parent.conditions, type_)
}

fn listener_condition(gw: &Gateway, type_: &str) -> Option<(String, String, Option<i64>)> {
    summary(&gw.status.as_ref()?.listeners.first()?.conditions, type_)
}

fn is(status: &str, reason: &str, generation: Option<i64>) -> Option<(String, String, Option<i64>)> {
    Some((status.to_string(), reason.to_string(), generation))
}

/// One GET over HTTP/2 (TLS over TCP) verifying the server against `trust`.
async fn get_h2(c: &Controller, host: &str, path: &str, trust: &TrustOptions) -> Result<(u16, Version, String)> {
    let req = http::Request::get(format!("https://{host}{path}")).body(())?;
    let fut = async {
        let resp = request_tcp(c.addr(), host, trust, Version::HTTP_2, req, RequestBody::Empty).await?;
        let (status, version) = (resp.status.as_u16(), resp.version);
        let body = resp.bytes().await?;
        Ok::<_, anyhow::Error>((status, version, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), fut).await.context("HTTP/2 request timed out")?
}

#[tokio::test]
async fn an_https_listener_serves_an_httproute_over_http3_and_http2_with_status() -> Result<()> {
    let env = TestEnv::shared().await?;
    let host = TestHost::shared().await?;
    let web = Backend::start_in(host, "gw-web").await?;
    install_crd(env).await?;
    let ns = TestNamespace::new(env, "gateway").await?;
    let rbac = ControllerRbac::grant(env, &ns).await?;
    let c = Controller::start(env, ns.name()).await?;
    let class = Class::create(env).await?;

    // The class is ours: Accepted, with the features we serve.
    let classes = Api::<GatewayClass>::all(env.client()?);
    let accepted = eventually("the GatewayClass to be Accepted", TIMEOUT, || async {
        let gc = classes.get(&class.name).await?;
        let status = gc.status.clone().unwrap_or_default();
        if summary(&status.conditions, "Accepted") == is("True", "Accepted", gc.metadata.generation) {
            return Ok(Some(status));
        }
        Err(anyhow!("status so far: {status:?}"))
    })
    .await?;
    let features: Vec<&str> = accepted.supported_features.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(features, SUPPORTED_FEATURES);

    let hostname = "gw.example.com";
    let (ca, cert, key) = ca_and_cert(hostname)?;
    let trust = TrustOptions { insecure: false, ca_file: Some(write_temp("gw-ca", &ca)?) };
    ns.create(&service("web").port("http", 80).build()).await?;
    ns.apply(&endpoint_slice("web").name("web-1").address(host.ip()).port("http", i32::from(web.port())).build())
        .await?;
    ns.apply(&tls_secret("gw-tls", &cert, &key).build()).await?;
    let port = c.addr().port();
    ns.create(&gateway("gw", &class.name, json!([https_listener("https", port, Some(hostname), "gw-tls")]))?).await?;
    let route = http_route(
        "web",
        json!({
            "parentRefs": [{"name": "gw"}],
            "hostnames": [hostname],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/app"}}],
                 "backendRefs": [{"name": "web", "port": 80}]},
                {"matches": [{"path": {"type": "Exact", "value": "/exact"}}],
                 "backendRefs": [{"name": "web", "port": 80}]},
            ],
        }),
    )?;
    let started = Instant::now();
    ns.create(&route).await?;

    // HTTP/3 with the listener's certificate (verified against its CA).
    let reply = eventually("the route to be served over HTTP/3", TIMEOUT, || async {
        let r = c.get_with(hostname, "/app/x", &trust).await.map_err(|e| anyhow!("{e}"))?;
        if r.status == 200 {
            return Ok(Some(r));
        }
        Err(anyhow!("answered {}: {}", r.status, r.text()))
    })
    .await?;
    let served_after = started.elapsed();
    assert_eq!(reply.backend(), Some("gw-web"));
    assert_eq!(reply.json()?["path"], "/app/x");
    assert_eq!(c.get_with(hostname, "/exact", &trust).await.map_err(|e| anyhow!("{e}"))?.status, 200);
    assert_eq!(c.get_with(hostname, "/exact/more", &trust).await.map_err(|e| anyhow!("{e}"))?.status, 404);
    assert_eq!(c.get_with(hostname, "/application", &trust).await.map_err(|e| anyhow!("{e}"))?.status, 404);

    // HTTP/2 over TCP on the same port, with Alt-Svc advertising HTTP/3.
    let (status, version, body) = get_h2(&c, hostname, "/app/h2", &trust).await?;
    assert_eq!((status, version), (200, Version::HTTP_2), "{body}");
    let req = http::Request::get(format!("https://{hostname}/app/h2")).body(())?;
    let resp = request_tcp(c.addr(), hostname, &trust, Version::HTTP_2, req, RequestBody::Empty).await?;
    let alt_svc = resp.headers.get("alt-svc").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(alt_svc.contains(&format!("h3=\":{port}\"")), "Alt-Svc: {alt_svc:?}");

    // 0-RTT on a resumed connection: GET is forwarded (Early-Data: 1), POST gets 425.
    // Through a relay adding 40 ms each way, so both leave with the first flight and are
    // read before the handshake can complete.
    let relay = DelayRelay::start(c.addr(), Duration::from_millis(40)).await?;
    let connector = H3Connector::new(&trust, false, true)?;
    let mut early = None;
    for _ in 0..5 {
        let (client, accepted) = connector.connect_early(relay.addr, hostname).await?;
        if accepted.is_some() {
            early = Some(client);
            break;
        }
        // A full handshake: one request so a session ticket arrives.
        let req = http::Request::get(format!("https://{hostname}/app/ticket")).body(())?;
        let _ = client.request(req, RequestBody::Empty).await?.bytes().await?;
    }
    let early = early.context("no session ticket after 5 connections")?;
    let get = http::Request::get(format!("https://{hostname}/app/early")).body(())?;
    let post = http::Request::post(format!("https://{hostname}/app/early")).body(())?;
    let (get, post) =
        tokio::join!(early.request(get, RequestBody::Empty), early.request(post, RequestBody::Bytes("order=1".into())));
    let (get, post) = (get?, post?);
    let post_status = post.status.as_u16();
    let echo: serde_json::Value = serde_json::from_slice(&get.bytes().await?)?;
    assert_eq!(post_status, 425, "POST in early data");
    drop(relay);
    assert_eq!(echo["headers"]["early-data"], "1", "the backend is told the GET was early data: {echo}");

    // Status: the Gateway and the route, with the generation they describe.
    let gw = wait_gateway(&ns, "gw", "the Gateway to be Programmed", |gw| {
        let g = gw.metadata.generation;
        let s = gw.status.clone().unwrap_or_default();
        summary(&s.conditions, "Programmed") == is("True", "Programmed", g)
            && s.listeners.first().is_some_and(|l| l.attached_routes == 1)
    })
    .await?;
    let g = gw.metadata.generation;
    let status = gw.status.clone().unwrap_or_default();
    assert_eq!(summary(&status.conditions, "Accepted"), is("True", "Accepted", g));
    assert_eq!(status.addresses.iter().map(|a| a.value.as_str()).collect::<Vec<_>>(), vec!["192.0.2.10"]);
    assert_eq!(status.addresses[0].type_.as_deref(), Some("IPAddress"));
    for (t, reason) in [("Accepted", "Accepted"), ("ResolvedRefs", "ResolvedRefs"), ("Programmed", "Programmed")] {
        assert_eq!(listener_condition(&gw, t), is("True", reason, g), "{t}");
    }
    assert_eq!(listener_condition(&gw, "Conflicted"), is("False", "NoConflicts", g));
    assert_eq!(status.listeners[0].supported_kinds[0].kind, "HTTPRoute");
    let r = wait_route(&ns, "web", "the route to be Accepted", |r| {
        parent_condition(r, "Accepted") == is("True", "Accepted", r.metadata.generation)
    })
    .await?;
    assert_eq!(parent_condition(&r, "ResolvedRefs"), is("True", "ResolvedRefs", r.metadata.generation));
    let parent = &r.status.as_ref().context("status")?.parents[0];
    assert_eq!(parent.controller_name, "quic-ingress.dev/gateway-controller");
    assert_eq!(parent.parent_ref.name, "gw");

    // An invalid backendRef: ResolvedRefs=False BackendNotFound for the new generation, and
    // its path answers 500, as the spec says.
    let mut changed = route.clone();
    let mut rules = changed.spec.rules.clone();
    rules.push(serde_json::from_value(json!({
        "matches": [{"path": {"type": "PathPrefix", "value": "/missing"}}],
        "backendRefs": [{"name": "nope", "port": 80}],
    }))?);
    changed.spec.rules = rules;
    let applied = ns.apply(&changed).await?;
    let generation = applied.metadata.generation;
    // Both conditions of the new generation, waited for together: one CI run saw a status
    // pass in between report Accepted=False (NotAllowedByListeners) for a moment.
    let r = wait_route(&ns, "web", "ResolvedRefs=False for the missing Service, still Accepted", |r| {
        parent_condition(r, "ResolvedRefs") == is("False", "BackendNotFound", generation)
            && parent_condition(r, "Accepted") == is("True", "Accepted", generation)
    })
    .await?;
    assert_eq!(parent_condition(&r, "Accepted"), is("True", "Accepted", generation));
    let missing = c.wait_for_status(hostname, "/missing", 500, TIMEOUT).await?;
    assert_eq!(missing.status, 500);
    assert_eq!(c.get_with(hostname, "/app/still", &trust).await.map_err(|e| anyhow!("{e}"))?.status, 200);

    // A header match is served as a match: a request without the header is not routed.
    let mut matched = changed.clone();
    matched.metadata.name = Some("headers".into());
    matched.spec.rules = vec![serde_json::from_value(json!({
        "matches": [{"path": {"type": "PathPrefix", "value": "/hdr"}, "headers": [{"name": "x-canary", "value": "1"}]}],
        "backendRefs": [{"name": "web", "port": 80}],
    }))?];
    ns.create(&matched).await?;
    wait_route(&ns, "headers", "Accepted=True", |r| {
        parent_condition(r, "Accepted").is_some_and(|(s, reason, _)| s == "True" && reason == "Accepted")
    })
    .await?;
    assert_eq!(c.get_with(hostname, "/hdr", &trust).await.map_err(|e| anyhow!("{e}"))?.status, 404);

    // A rule that needs a feature the data plane lacks is refused by name, not approximated.
    let mut unsupported = changed.clone();
    unsupported.metadata.name = Some("extension".into());
    unsupported.spec.rules = vec![serde_json::from_value(json!({
        "matches": [{"path": {"type": "PathPrefix", "value": "/ext"}}],
        "filters": [{"type": "ExtensionRef", "extensionRef": {"group": "x.example", "kind": "Thing", "name": "t"}}],
        "backendRefs": [{"name": "web", "port": 80}],
    }))?];
    ns.create(&unsupported).await?;
    let r = wait_route(&ns, "extension", "Accepted=False UnsupportedValue", |r| {
        parent_condition(r, "Accepted").is_some_and(|(s, reason, _)| s == "False" && reason == "UnsupportedValue")
    })
    .await?;
    let message = r.status.as_ref().map(|s| s.parents[0].conditions[0].message.clone()).unwrap_or_default();
    assert!(message.contains("filter ExtensionRef"), "{message}");
    assert_eq!(c.get_with(hostname, "/ext", &trust).await.map_err(|e| anyhow!("{e}"))?.status, 404);

    // At rest: the leader's status writes (and the objects they change) wake no rebuild.
    // Two status passes (every 2 s) fit in the window.
    // At rest starts once the last change's rebuild is in: the count holds for 1 s (at
    // most 10 s of waiting); a periodic rebuild would still show in the 5 s after.
    let rebuilds = "quic_ingress_route_table_rebuilds_total";
    let mut before = c.metric(rebuilds).await?;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = c.metric(rebuilds).await?;
        if now == before {
            break;
        }
        before = now;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(c.metric(rebuilds).await?, before, "idle Gateway API objects rebuilt the table");

    println!("gateway: an HTTPRoute served {served_after:.1?} after it was created");
    drop(c);
    drop(rbac);
    class.delete().await?;
    ns.cleanup().await
}

#[tokio::test]
async fn cross_namespace_certificates_need_a_grant_and_the_oldest_of_ingress_and_route_wins() -> Result<()> {
    let env = TestEnv::shared().await?;
    let host = TestHost::shared().await?;
    let (a, b) = (Backend::start_in(host, "by-ingress").await?, Backend::start_in(host, "by-route").await?);
    install_crd(env).await?;
    let ns = TestNamespace::new(env, "gw-app").await?;
    let certs = TestNamespace::new(env, "gw-certs").await?;
    let rbac = ControllerRbac::grant(env, &ns).await?;
    // This controller watches every namespace, beside the other tests' controllers: with
    // the same controllerName it would take their Gateways too (refusing their listeners,
    // whose port it does not serve) and write that over their routes' status. A name of
    // its own keeps the two installations apart.
    let controller_name = format!("e2e.quic-ingress.dev/{}", ns.name());
    let opts = ControllerOptions {
        watch_namespace: false,
        extra_args: vec!["--gateway-controller-name".into(), controller_name.clone()],
        ..ControllerOptions::new(ns.name())
    };
    let c = Controller::start_with(env, opts).await?;
    let class = Class::create_of(env, &controller_name).await?;

    let hostname = format!("{}.example.com", ns.name());
    let (ca, cert, key) = ca_and_cert(&hostname)?;
    let trust = TrustOptions { insecure: false, ca_file: Some(write_temp("gw-x-ca", &ca)?) };
    certs.apply(&tls_secret("shared-tls", &cert, &key).build()).await?;
    for (svc, backend) in [("web-a", &a), ("web-b", &b)] {
        ns.create(&service(svc).port("http", 80).build()).await?;
        ns.apply(&endpoint_slice(svc).name(svc).address(host.ip()).port("http", i32::from(backend.port())).build())
            .await?;
    }

    // The Ingress comes first: it owns the host and its path. (Creation times have 1 s
    // resolution and ties go by namespace/name: its name sorts first too.)
    ns.create(&ingress("a-older").class("quic").rule(&hostname, "/", "Prefix", "web-a", 80).build()).await?;
    c.wait_for_backend(&hostname, "/", "by-ingress", TIMEOUT).await?;

    // The certificate lives in another namespace: refused without a ReferenceGrant.
    let secret_ref = format!("{}/shared-tls", certs.name());
    let port = c.addr().port();
    let mut listener = https_listener("https", port, None, &secret_ref);
    listener["allowedRoutes"] = json!({"namespaces": {"from": "All"}});
    ns.create(&gateway("gw", &class.name, json!([listener]))?).await?;
    let gw = wait_gateway(&ns, "gw", "ResolvedRefs=False RefNotPermitted", |gw| {
        listener_condition(gw, "ResolvedRefs").is_some_and(|(s, r, _)| s == "False" && r == "RefNotPermitted")
    })
    .await?;
    assert_eq!(listener_condition(&gw, "Programmed").map(|(s, r, _)| (s, r)), Some(("False".into(), "Invalid".into())));
    ns.create(&http_route(
        "newer",
        json!({
            "parentRefs": [{"name": "gw", "sectionName": "https"}],
            "hostnames": [hostname],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [{"name": "web-b", "port": 80}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/only-route"}}], "backendRefs": [{"name": "web-b", "port": 80}]},
            ],
        }),
    )?)
    .await?;

    // The grant: the listener resolves and is programmed.
    certs.create(&reference_grant("gateways-may-read", "Gateway", ns.name(), "Secret")?).await?;
    wait_gateway(&ns, "gw", "the listener to be Programmed after the grant", |gw| {
        listener_condition(gw, "Programmed").is_some_and(|(s, _, _)| s == "True")
            && listener_condition(gw, "ResolvedRefs").is_some_and(|(s, _, _)| s == "True")
    })
    .await?;

    // Oldest wins: "/" stays the Ingress's, the route's own path is served (with the
    // Ingress's lack of TLS the listener's certificate serves the host), and its status
    // names the dropped rule.
    let only = eventually("the route's own path to be served", TIMEOUT, || async {
        let r = c.get_with(&hostname, "/only-route/x", &trust).await.map_err(|e| anyhow!("{e}"))?;
        if r.status == 200 {
            return Ok(Some(r));
        }
        Err(anyhow!("answered {}: {}", r.status, r.text()))
    })
    .await?;
    assert_eq!(only.backend(), Some("by-route"));
    assert_eq!(c.get(&hostname, "/").await?.backend(), Some("by-ingress"));
    let r = wait_route(&ns, "newer", "PartiallyInvalid for the rule the Ingress holds", |r| {
        parent_condition(r, "PartiallyInvalid").is_some_and(|(s, _, _)| s == "True")
    })
    .await?;
    assert_eq!(parent_condition(&r, "Accepted"), is("True", "Accepted", r.metadata.generation));
    let message = r.status.as_ref().map(|s| s.parents[0].conditions[2].message.clone()).unwrap_or_default();
    assert!(message.starts_with("Dropped Rule(s): Rule 0:") && message.contains("a-older"), "{message}");

    // The Ingress goes: the route takes "/".
    ns.delete::<Ingress>("a-older").await?;
    c.wait_for_backend(&hostname, "/", "by-route", TIMEOUT).await?;
    wait_route(&ns, "newer", "PartiallyInvalid gone", |r| parent_condition(r, "PartiallyInvalid").is_none()).await?;

    // An HTTPRoute of another namespace cannot take the host (ownership, as for Ingress).
    let other = TestNamespace::new(env, "gw-other").await?;
    ns.create(&reference_grant("x", "HTTPRoute", other.name(), "Service")?).await?;
    other
        .create(&http_route(
            "hijack",
            json!({
                "parentRefs": [{"name": "gw", "namespace": ns.name()}],
                "hostnames": [hostname],
                "rules": [{"matches": [{"path": {"type": "Exact", "value": "/login"}}],
                           "backendRefs": [{"name": "web-b", "namespace": ns.name(), "port": 80}]}],
            }),
        )?)
        .await?;
    let r = wait_route(&other, "hijack", "the hijack refused", |r| {
        parent_condition(r, "Accepted")
            .is_some_and(|(s, reason, _)| s == "False" && reason == "HostOwnedByOtherNamespace")
    })
    .await?;
    ensure!(parent_condition(&r, "ResolvedRefs").is_some_and(|(s, _, _)| s == "True"), "{:?}", r.status);

    drop(c);
    drop(rbac);
    class.delete().await?;
    other.cleanup().await?;
    certs.cleanup().await?;
    ns.cleanup().await
}
