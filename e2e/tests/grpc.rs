//! Cluster test of GRPCRoute (issue 14): a real API server with the standard-channel
//! CRDs, the controller with the rules of `deploy/rbac.yaml`, the Gateway API suite's own
//! gRPC echo server as the backend (its Service says nothing of HTTP/2: the route type
//! makes it h2c), and unary gRPC calls made by hand over HTTP/3 and HTTP/2. The echoed
//! answer and `grpc-status: 0` in the trailers arrive through both; a method no rule
//! matches is 404 (which gRPC clients read as UNIMPLEMENTED); `te: trailers` reaches the
//! backend; status says Accepted and ResolvedRefs with observedGeneration; and an
//! HTTPRoute for the same hostname on the listener is refused, as the spec says.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use http::Version;
use kube::api::{Api, DeleteParams, PostParams};
use quic_ingress::client::{H3Connector, RequestBody, TrustOptions, request_tcp};
use quic_ingress::kube::gateway::api::{GRPCRoute, Gateway, GatewayClass, HTTPRoute};
use quic_ingress_e2e::controller::install_crd;
use quic_ingress_e2e::gateway::{gateway, gateway_class, grpc_route, http_route, https_listener, summary};
use quic_ingress_e2e::grpc::{ECHO_SERVICE, GrpcEcho, Reply, call, echoed, frame, reply};
use quic_ingress_e2e::namespace::unique_name;
use quic_ingress_e2e::objects::{ca_and_cert, endpoint_slice, service, tls_secret};
use quic_ingress_e2e::process::log_path;
use quic_ingress_e2e::{Backend, Controller, ControllerRbac, TestEnv, TestHost, TestNamespace, eventually};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(20);
const HOST: &str = "grpc.example.com";

fn write_temp(name: &str, contents: &str) -> Result<PathBuf> {
    let path = log_path(name)?.with_extension("pem");
    std::fs::write(&path, contents)?;
    Ok(path)
}

fn is(status: &str, reason: &str, generation: Option<i64>) -> Option<(String, String, Option<i64>)> {
    Some((status.to_string(), reason.to_string(), generation))
}

/// One unary call with an empty request message, over HTTP/3 or HTTP/2 (TLS over TCP).
async fn unary(c: &Controller, trust: &TrustOptions, version: Version, service: &str, method: &str) -> Result<Reply> {
    let req = call(HOST, service, method)?;
    let body = RequestBody::Bytes(frame(b""));
    let fut = async {
        let resp = if version == Version::HTTP_3 {
            let client = H3Connector::new(trust, false, false)?.connect(c.addr(), HOST).await?;
            client.request(req, body).await?
        } else {
            request_tcp(c.addr(), HOST, trust, Version::HTTP_2, req, body).await?
        };
        reply(resp).await
    };
    tokio::time::timeout(Duration::from_secs(5), fut).await.context("gRPC call timed out")?
}

/// A POST shaped like a gRPC call to the demo backend (HTTP/2 only), which echoes the
/// request headers it received as JSON.
async fn headers_seen(c: &Controller, trust: &TrustOptions, version: Version) -> Result<serde_json::Value> {
    let req = call(HOST, "demo.Headers", "Show")?;
    let body = RequestBody::Bytes(frame(b""));
    let resp = if version == Version::HTTP_3 {
        H3Connector::new(trust, false, false)?.connect(c.addr(), HOST).await?.request(req, body).await?
    } else {
        request_tcp(c.addr(), HOST, trust, Version::HTTP_2, req, body).await?
    };
    anyhow::ensure!(resp.status == 200, "the demo backend answered {}", resp.status);
    Ok(serde_json::from_slice(&resp.bytes().await?)?)
}

#[tokio::test]
async fn a_grpcroute_serves_grpc_from_http3_and_http2_clients_to_an_h2c_backend() -> Result<()> {
    let env = TestEnv::shared().await?;
    let host = TestHost::shared().await?;
    let echo = GrpcEcho::start(host, 21000, "grpc-echo-v1").await?;
    let h2 = Backend::start_in_with(host, "grpc-h2-demo", "h2").await?;
    install_crd(env).await?;
    let ns = TestNamespace::new(env, "grpc").await?;
    let rbac = ControllerRbac::grant(env, &ns).await?;
    let c = Controller::start(env, ns.name()).await?;
    let class_name = unique_name("quic-grpc");
    let classes = Api::<GatewayClass>::all(env.client()?);
    classes.create(&PostParams::default(), &gateway_class(&class_name)?).await?;

    let (ca, cert, key) = ca_and_cert(HOST)?;
    let trust = TrustOptions { insecure: false, ca_file: Some(write_temp("grpc-ca", &ca)?) };
    // No appProtocol: a GRPCRoute's backends are h2c whatever the port says.
    ns.create(&service("echo").port("grpc", 8080).build()).await?;
    ns.apply(
        &endpoint_slice("echo").name("echo-1").address(host.ip()).port("grpc", i32::from(echo.addr.port())).build(),
    )
    .await?;
    ns.create(&service("demo").port("http", 80).build()).await?;
    ns.apply(&endpoint_slice("demo").name("demo-1").address(host.ip()).port("http", i32::from(h2.port())).build())
        .await?;
    ns.apply(&tls_secret("grpc-tls", &cert, &key).build()).await?;
    let port = c.addr().port();
    ns.create(&gateway("gw", &class_name, json!([https_listener("https", port, Some(HOST), "grpc-tls")]))?).await?;
    let route = grpc_route(
        "echo",
        json!({
            "parentRefs": [{"name": "gw"}],
            "hostnames": [HOST],
            "rules": [
                {"matches": [{"method": {"service": ECHO_SERVICE, "method": "Echo"}}],
                 "backendRefs": [{"name": "echo", "port": 8080}]},
                {"matches": [{"method": {"service": "demo.Headers"}}],
                 "backendRefs": [{"name": "demo", "port": 80}]},
            ],
        }),
    )?;
    ns.create(&route).await?;

    // HTTP/3: the echoed answer, and grpc-status 0 in the trailers.
    let r = eventually("the GRPCRoute to be served over HTTP/3", TIMEOUT, || async {
        let r = unary(&c, &trust, Version::HTTP_3, ECHO_SERVICE, "Echo").await?;
        if r.http_status == 200 && r.grpc_status.as_deref() == Some("0") {
            return Ok(Some(r));
        }
        Err(anyhow!("answered {r:?}"))
    })
    .await?;
    for (version, r) in
        [(Version::HTTP_3, r), (Version::HTTP_2, unary(&c, &trust, Version::HTTP_2, ECHO_SERVICE, "Echo").await?)]
    {
        assert_eq!((r.http_status, r.version), (200, version), "{r:?}");
        assert_eq!(r.grpc_status.as_deref(), Some("0"), "{version:?}: {r:?}");
        assert!(r.status_in_trailers, "{version:?}: grpc-status arrives in trailers: {r:?}");
        assert_eq!(r.messages.len(), 1, "{version:?}: {r:?}");
        let e = echoed(&r.messages[0])?;
        assert_eq!(e.method, format!("/{ECHO_SERVICE}/Echo"), "{version:?}");
        assert_eq!(e.pod, "grpc-echo-v1", "{version:?}");
        assert!(e.authority.starts_with(HOST), "{version:?}: authority {:?}", e.authority);

        // A method no rule matches: 404, which gRPC clients read as UNIMPLEMENTED.
        let miss = unary(&c, &trust, version, ECHO_SERVICE, "EchoTwo").await?;
        assert_eq!(miss.http_status, 404, "{version:?}: {miss:?}");
        assert_ne!(miss.grpc_status.as_deref(), Some("0"), "{version:?}: {miss:?}");

        // `te: trailers` and the gRPC content type reach the backend, over HTTP/2.
        let seen = headers_seen(&c, &trust, version).await?;
        assert_eq!(seen["version"], "HTTP/2.0", "{version:?}: {seen}");
        assert_eq!(seen["headers"]["te"], "trailers", "{version:?}: {seen}");
        assert_eq!(seen["headers"]["content-type"], "application/grpc", "{version:?}: {seen}");
    }

    // Status: the route Accepted with its references resolved, for its generation; the
    // listener lists GRPCRoute among its kinds and counts the route.
    let routes = ns.api::<GRPCRoute>();
    let r = eventually("the GRPCRoute to be Accepted", TIMEOUT, || async {
        let r = routes.get("echo").await?;
        let parent = r.status.as_ref().and_then(|s| s.parents.first());
        let g = r.metadata.generation;
        match parent {
            Some(p) if summary(&p.conditions, "Accepted") == is("True", "Accepted", g) => Ok(Some(r)),
            _ => Err(anyhow!("status so far: {}", serde_json::to_string(&r.status)?)),
        }
    })
    .await?;
    let parent = &r.status.as_ref().context("status")?.parents[0];
    assert_eq!(summary(&parent.conditions, "ResolvedRefs"), is("True", "ResolvedRefs", r.metadata.generation));
    assert_eq!(parent.controller_name, "quic-ingress.dev/gateway-controller");
    let gateways = ns.api::<Gateway>();
    let gw = eventually("the listener to count the GRPCRoute", TIMEOUT, || async {
        let gw = gateways.get("gw").await?;
        let listener = gw.status.as_ref().and_then(|s| s.listeners.first());
        match listener {
            Some(l) if l.attached_routes == 1 => Ok(Some(gw)),
            _ => Err(anyhow!("status so far: {}", serde_json::to_string(&gw.status)?)),
        }
    })
    .await?;
    let kinds: Vec<String> =
        gw.status.context("status")?.listeners[0].supported_kinds.iter().map(|k| k.kind.clone()).collect();
    assert_eq!(kinds, ["HTTPRoute", "GRPCRoute"]);

    // An HTTPRoute for the same hostname on the listener: the older GRPCRoute keeps it.
    ns.create(&http_route(
        "web",
        json!({"parentRefs": [{"name": "gw"}], "hostnames": [HOST],
               "rules": [{"backendRefs": [{"name": "demo", "port": 80}]}]}),
    )?)
    .await?;
    let http_routes = ns.api::<HTTPRoute>();
    eventually("the HTTPRoute to be refused", TIMEOUT, || async {
        let r = http_routes.get("web").await?;
        let accepted =
            r.status.as_ref().and_then(|s| s.parents.first()).and_then(|p| summary(&p.conditions, "Accepted"));
        if accepted == is("False", "NotAllowedByListeners", r.metadata.generation) {
            return Ok(Some(()));
        }
        Err(anyhow!("status so far: {}", serde_json::to_string(&r.status)?))
    })
    .await?;
    let still = unary(&c, &trust, Version::HTTP_2, ECHO_SERVICE, "Echo").await?;
    assert_eq!(still.grpc_status.as_deref(), Some("0"), "{still:?}");
    let plain = request_tcp(
        c.addr(),
        HOST,
        &trust,
        Version::HTTP_2,
        http::Request::get(format!("https://{HOST}/")).body(())?,
        RequestBody::Empty,
    )
    .await?;
    assert_eq!(plain.status, 404, "the refused HTTPRoute serves nothing");

    drop(c);
    drop(rbac);
    classes.delete(&class_name, &DeleteParams::default()).await?;
    ns.cleanup().await
}
