//! OpenTelemetry traces received by a real OTLP receiver (Jaeger): the spans of a proxied
//! request, their parent/child relations, and the `traceparent` the backend saw.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Jaeger all-in-one (built by `make test`), with OTLP/HTTP and the query API on free ports.
struct Jaeger {
    otlp: std::net::SocketAddr,
    query: std::net::SocketAddr,
    _proc: Proc,
}

impl Jaeger {
    async fn start() -> Self {
        let bin = std::env::var("QUIC_INGRESS_JAEGER").unwrap_or_else(|_| "jaeger".into());
        let otlp: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let grpc: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let query: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let child = Command::new(&bin)
            .arg(format!("--set=receivers.otlp.protocols.http.endpoint={otlp}"))
            .arg(format!("--set=receivers.otlp.protocols.grpc.endpoint={grpc}"))
            .arg(format!("--set=extensions.jaeger_query.http.endpoint={query}"))
            .arg(format!("--set=extensions.jaeger_query.grpc.endpoint=127.0.0.1:{}", free_port()))
            .arg(format!("--set=extensions.healthcheckv2.http.endpoint=127.0.0.1:{}", free_port()))
            .arg("--set=service.telemetry.metrics.level=none")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(log_path("jaeger")).unwrap()))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (run `make test` to build it): {e}"));
        let jaeger = Self { otlp, query, _proc: Proc { child, name: "jaeger".into() } };
        wait_until("jaeger query API and OTLP receiver", Duration::from_secs(60), || async {
            http_get(query, "/api/services").await.is_some_and(|(s, _)| s == 200)
                && tokio::net::TcpStream::connect(otlp).await.is_ok()
        })
        .await;
        jaeger
    }

    /// The spans of `trace_id` once at least `count` have arrived (or all there are after
    /// 30 s; the assertions that follow say what is missing).
    async fn trace_of_at_least(&self, trace_id: &str, count: usize) -> HashMap<String, (String, Option<String>)> {
        let mut spans = HashMap::new();
        for _ in 0..300 {
            spans = self.trace(trace_id).await;
            if spans.len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        spans
    }

    /// The spans of `trace_id`: span id → (operation, parent span id).
    async fn trace(&self, trace_id: &str) -> HashMap<String, (String, Option<String>)> {
        self.spans(&format!("/api/traces/{trace_id}")).await
    }

    /// The spans of the first trace a query returns.
    async fn spans(&self, query: &str) -> HashMap<String, (String, Option<String>)> {
        let Some((200, body)) = http_get(self.query, query).await else {
            return HashMap::new();
        };
        let json = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(0)];
        let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        let mut spans = HashMap::new();
        for s in v["data"][0]["spans"].as_array().into_iter().flatten() {
            let parent = s["references"]
                .as_array()
                .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
                .and_then(|r| r["spanID"].as_str())
                .map(str::to_string);
            spans.insert(
                s["spanID"].as_str().unwrap_or("").to_string(),
                (s["operationName"].as_str().unwrap_or("").to_string(), parent),
            );
        }
        spans
    }
}

#[tokio::test]
async fn a_proxied_request_is_traced_end_to_end() {
    let jaeger = Jaeger::start().await;
    let b = Backend::start("traced").await;
    // The test client stands for a trusted proxy in front: only such a peer's trace is
    // continued (an untrusted client's traceparent never decides sampling).
    let proxy = Proxy::start_full(
        &catch_all(&b.url("http")),
        "  trusted_proxies: [\"127.0.0.1\"]\n",
        &format!("  tracing: {{endpoint: \"http://{}\", sampling_ratio: 1.0}}\n", jaeger.otlp),
    )
    .await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let c = proxy.h3().await;
    let req = http::Request::get("https://localhost/traced")
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .body(())
        .unwrap();
    let a = h3_send(&c, req, quic_ingress::client::RequestBody::Empty).await;
    assert_eq!(a.status, 200);
    let seen = a.json()["headers"]["traceparent"].as_str().expect("the backend got a traceparent").to_string();
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts[1], trace_id, "the backend continues the client's trace");
    assert_ne!(parts[2], client_span, "the proxy's own span is the backend's parent");

    let spans = jaeger.trace_of_at_least(trace_id, 5).await;
    let by_name: HashMap<&str, (&String, &Option<String>)> =
        spans.iter().map(|(id, (name, parent))| (name.as_str(), (id, parent))).collect();
    let (request_id, request_parent) =
        by_name.get("http_request").unwrap_or_else(|| panic!("no http_request span: {spans:?}"));
    assert_eq!(request_parent.as_deref(), Some(client_span), "http_request continues the client's span");
    for child in ["route_match", "load_balance", "backend_request", "response_send"] {
        let (_, parent) = by_name.get(child).unwrap_or_else(|| panic!("no {child} span: {spans:?}"));
        assert_eq!(parent.as_deref(), Some(request_id.as_str()), "{child} is a child of http_request");
    }
    assert_eq!(by_name["backend_request"].0, parts[2], "the backend's parent is the backend_request span");

    // Without a client trace, the connection is the root: quic_connection → http3_parse and
    // http_request. Its span ends when the connection closes.
    let c2 = proxy.h3().await;
    assert_eq!(h3_get(&c2, "localhost", "/untraced").await.status, 200);
    drop(c2);
    drop(c);
    let mut spans = HashMap::new();
    for _ in 0..300 {
        spans = jaeger.spans("/api/traces?service=quic-ingress&operation=quic_connection&limit=1").await;
        if spans.values().any(|(n, _)| n == "http3_parse") && spans.values().any(|(n, _)| n == "response_send") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let root = spans
        .iter()
        .find(|(_, (n, _))| n == "quic_connection")
        .map(|(id, _)| id.clone())
        .expect("a quic_connection span");
    for child in ["http3_parse", "http_request"] {
        assert!(
            spans.values().any(|(n, p)| n == child && p.as_deref() == Some(root.as_str())),
            "{child} is a child of quic_connection: {spans:?}"
        );
    }

    // Over TCP (HTTP/2) the same spans, response_send lasting while hyper writes the body.
    let tcp_trace = "0af7651916cd43dd8448eb211c80319c";
    let req = http::Request::get("https://localhost/over-tcp")
        .header("traceparent", format!("00-{tcp_trace}-{client_span}-01"))
        .body(())
        .unwrap();
    let trust = quic_ingress::client::TrustOptions { insecure: true, ca_file: None };
    let resp = quic_ingress::client::request_tcp(
        proxy.addr,
        "localhost",
        &trust,
        http::Version::HTTP_2,
        req,
        quic_ingress::client::RequestBody::Empty,
    )
    .await
    .expect("HTTP/2 request");
    assert_eq!(resp.status, 200);
    resp.bytes().await.expect("body");
    let spans = jaeger.trace_of_at_least(tcp_trace, 5).await;
    let request = spans.iter().find(|(_, (n, _))| n == "http_request").map(|(id, _)| id.clone());
    let request = request.unwrap_or_else(|| panic!("no http_request span over TCP: {spans:?}"));
    for child in ["route_match", "load_balance", "backend_request", "response_send"] {
        assert!(
            spans.values().any(|(n, p)| n == child && p.as_deref() == Some(request.as_str())),
            "{child} is a child of http_request over TCP: {spans:?}"
        );
    }
}

#[tokio::test]
async fn an_untrusted_clients_traceparent_never_forces_sampling() {
    let b = Backend::start("untrusted-trace").await;
    // No trusted proxies, and nothing sampled of our own accord (so nothing is exported: the
    // endpoint need not answer).
    let proxy = Proxy::start_telemetry(
        &catch_all(&b.url("http")),
        "  tracing: {endpoint: \"http://127.0.0.1:9\", sampling_ratio: 0.0}\n",
    )
    .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let req = http::Request::get("https://localhost/forced")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .body(())
        .unwrap();
    let a = h3_send(&proxy.h3().await, req, quic_ingress::client::RequestBody::Empty).await;
    assert_eq!(a.status, 200);
    let seen = a.json()["headers"]["traceparent"].as_str().map(str::to_string).unwrap_or_default();
    assert!(!seen.contains(trace_id), "the client's trace was continued: {seen}");
    assert!(seen.is_empty() || seen.ends_with("-00"), "a trace of ours, not sampled: {seen}");
}
