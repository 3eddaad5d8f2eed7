//! The standalone data plane over loopback with real backends and real clients: routing,
//! balancing, error statuses, streaming, concurrency on one connection, Alt-Svc, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use quic_ingress::client::RequestBody;

fn group(id: &str, strategy: &str, backends: &[(&Backend, u32)], extra: &str) -> String {
    let mut s = format!("  - id: {id}\n    strategy: {strategy}\n    backends:\n");
    for (b, w) in backends {
        s += &format!("      - url: \"{}\"\n        weight: {w}\n", b.url("http"));
    }
    s + extra
}

/// A config with one catch-all route to group `g`, given as YAML.
fn one_route(group_yaml: &str) -> String {
    format!("routes:\n  - {{id: r, path: /, backend_group: g}}\nbackend_groups:\n{group_yaml}")
}

fn tally(names: impl IntoIterator<Item = String>) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for n in names {
        *m.entry(n).or_default() += 1;
    }
    m
}

#[tokio::test]
async fn routes_by_host_and_path_with_ingress_semantics() {
    let (api, admin, web, wild) = (
        Backend::start("api").await,
        Backend::start("admin").await,
        Backend::start("web").await,
        Backend::start("wild").await,
    );
    let config = format!(
        "routes:
  - {{id: api, host: api.example.com, path: /api, path_type: Prefix, backend_group: api}}
  - {{id: admin, host: api.example.com, path: /api/admin, path_type: Exact, backend_group: admin}}
  - {{id: wild, host: \"*.example.com\", path: /, backend_group: wild}}
  - {{id: web, path: /, backend_group: web}}
backend_groups:
{}{}{}{}",
        group("api", "round_robin", &[(&api, 1)], ""),
        group("admin", "round_robin", &[(&admin, 1)], ""),
        group("web", "round_robin", &[(&web, 1)], ""),
        group("wild", "round_robin", &[(&wild, 1)], ""),
    );
    let proxy = Proxy::start(&config).await;
    let c = proxy.h3().await;
    for (host, path, want) in [
        ("api.example.com", "/api", "api"),
        ("API.EXAMPLE.COM", "/api/v1/users?x=1", "api"),
        ("api.example.com", "/api/admin", "admin"),
        ("api.example.com", "/api/admin/", "api"),
        ("api.example.com", "/apix", "wild"),
        ("foo.example.com", "/anything", "wild"),
        ("a.b.example.com", "/", "web"),
        ("other.org", "/api", "web"),
    ] {
        let a = h3_get(&c, host, path).await;
        assert_eq!(a.status, 200, "{host}{path}");
        assert_eq!(a.backend(), want, "{host}{path}");
        let j = a.json();
        assert_eq!(j["path"], path.split('?').next().unwrap(), "path is passed unchanged");
        assert_eq!(j["host"].as_str().unwrap().to_ascii_lowercase(), host.to_ascii_lowercase(), "Host is kept");
    }

    // The same through a third-party HTTP/3 client (aioquic).
    let url = format!("https://api.example.com:{}/api/x", proxy.addr.port());
    let lines = aioquic(&url, &["--connect-to", &proxy.addr.to_string(), "--count", "3"]);
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(l["status"], 200, "{l}");
        assert_eq!(l["http_version"], "HTTP/3");
        assert_eq!(l["headers"]["x-backend"], "api", "{l}");
    }
}

#[tokio::test]
async fn no_route_is_404() {
    let b = Backend::start("only").await;
    let config = format!(
        "routes:\n  - {{id: r, host: a.example.com, path: /x, backend_group: g}}\nbackend_groups:\n{}",
        group("g", "round_robin", &[(&b, 1)], "")
    );
    let proxy = Proxy::start(&config).await;
    let c = proxy.h3().await;
    let a = h3_get(&c, "a.example.com", "/y").await;
    assert_eq!(a.status, 404);
    assert!(String::from_utf8_lossy(&a.body).contains("no route"));
    assert_eq!(h3_get(&c, "b.example.com", "/x").await.status, 404);
    assert!(a.headers.contains_key("x-request-id"), "even errors carry a request id");
}

#[tokio::test]
async fn round_robin_respects_weights_over_both_clients() {
    let (a, b, c3) = (Backend::start("a").await, Backend::start("b").await, Backend::start("c").await);
    let config = one_route(&group("g", "round_robin", &[(&a, 300), (&b, 100), (&c3, 100)], ""));
    let proxy = Proxy::start(&config).await;
    let client = proxy.h3().await;
    let mut names = Vec::new();
    for _ in 0..500 {
        names.push(h3_get(&client, "localhost", "/rr").await.backend());
    }
    // Smooth weighted round robin is exact over whole cycles (5 requests per cycle).
    let t = tally(names);
    assert_eq!((t["a"], t["b"], t["c"]), (300, 100, 100), "{t:?}");

    // aioquic, 100 requests, 8 at a time on one connection: still exact over 20 cycles,
    // since every request takes the next slot of the shared schedule.
    let lines = aioquic(&proxy.https_url("/rr"), &["--count", "100", "--concurrency", "8"]);
    let t = tally(lines.iter().map(|l| l["headers"]["x-backend"].as_str().unwrap_or("").to_string()));
    assert_eq!((t["a"], t["b"], t["c"]), (60, 20, 20), "{t:?}");
}

#[tokio::test]
async fn random_follows_weights_within_tolerance() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let config = one_route(&group("g", "random", &[(&a, 1), (&b, 3)], ""));
    let proxy = Proxy::start(&config).await;
    let client = proxy.h3().await;
    let n = 1000;
    let mut names = Vec::new();
    for _ in 0..n {
        names.push(h3_get(&client, "localhost", "/").await.backend());
    }
    let t = tally(names);
    let share = t["b"] as f64 / n as f64;
    // Binomial(1000, 0.75): sd ≈ 0.0137, so ±0.06 is beyond 4 sd.
    assert!((share - 0.75).abs() < 0.06, "weight-3 backend got {share:.3} of requests: {t:?}");
}

/// Waits until the proxy reports exactly one request in flight; returns that endpoint's URL.
async fn busy_endpoint(proxy: &Proxy) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if let Some((_, body)) = http_get(proxy.admin, "/debug/routes").await {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let eps = v["backend_groups"][0]["endpoints"].as_array().cloned().unwrap_or_default();
            if let Some(e) = eps.iter().find(|e| e["in_flight"] == 1) {
                return e["url"].as_str().unwrap_or("").to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no request became in flight within 5s");
}

#[tokio::test]
async fn least_connections_avoids_the_busy_backend() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let config = one_route(&group("g", "least_connections", &[(&a, 1), (&b, 1)], ""));
    let proxy = Proxy::start(&config).await;
    let client = proxy.h3().await;
    // Hold one slow request on one backend; every fast request must go to the other. The
    // slow one outlasts any loaded machine and is cancelled at the end, not waited for.
    let slow_client = client.clone();
    let slow = tokio::spawn(async move { h3_get(&slow_client, "localhost", "/slow?delay_ms=120000").await });
    let busy = busy_endpoint(&proxy).await;
    let idle_name = if busy.ends_with(&format!(":{}", a.addr.port())) { "b" } else { "a" };
    for _ in 0..20 {
        assert_eq!(h3_get(&client, "localhost", "/fast").await.backend(), idle_name);
    }
    assert_eq!(busy_endpoint(&proxy).await, busy, "the slow request ended early");
    slow.abort();
}

#[tokio::test]
async fn backend_down_is_502_and_hang_is_504() {
    let live = Backend::start("live").await;
    let dead_port = free_port(); // nothing listens here
    let config = format!(
        "routes:
  - {{id: dead, path: /dead, backend_group: dead}}
  - {{id: slow, path: /slow, backend_group: slow}}
backend_groups:
  - id: dead
    backends: [{{url: \"http://127.0.0.1:{dead_port}\"}}]
{}",
        group("slow", "round_robin", &[(&live, 1)], "    timeouts: {response_headers: 500ms}\n")
    );
    let proxy = Proxy::start(&config).await;
    let c = proxy.h3().await;
    let a = h3_get(&c, "localhost", "/dead").await;
    assert_eq!(a.status, 502, "{}", String::from_utf8_lossy(&a.body));
    let a = h3_get(&c, "localhost", "/slow?delay_ms=5000").await;
    assert_eq!(a.status, 504);
    // The connection is still fine afterwards.
    assert_eq!(h3_get(&c, "localhost", "/slow").await.status, 200);
}

#[tokio::test]
async fn connection_cap_answers_503_with_retry_after() {
    let b = Backend::start("one").await;
    let config = one_route(&group(
        "g",
        "round_robin",
        &[(&b, 1)],
        "    connection_pool: {max_connections_per_host: 1}\n    timeouts: {pool_wait: 200ms}\n",
    ));
    let proxy = Proxy::start(&config).await;
    let c = proxy.h3().await;
    let c2 = c.clone();
    let slow = tokio::spawn(async move { h3_get(&c2, "localhost", "/?delay_ms=3000").await });
    wait_until("slot taken", Duration::from_secs(5), || async {
        http_get(proxy.admin, "/debug/routes").await.is_some_and(|(_, b)| b.contains("\"in_flight\":1"))
    })
    .await;
    let a = h3_get(&c, "localhost", "/").await;
    assert_eq!(a.status, 503);
    assert!(a.headers.contains_key("retry-after"));
    assert_eq!(slow.await.unwrap().status, 200);
}

#[tokio::test]
async fn a_slow_request_does_not_delay_a_fast_one_on_the_same_connection() {
    let b = Backend::start("one").await;
    let config = one_route(&group("g", "round_robin", &[(&b, 1)], ""));
    let proxy = Proxy::start(&config).await;
    let client = proxy.h3().await;
    let c2 = client.clone();
    // Long enough for any loaded machine; cancelled at the end rather than waited for.
    let mut slow = tokio::spawn(async move { h3_get(&c2, "localhost", "/slow?delay_ms=60000").await });
    // Ten fast requests on the same connection all complete while the slow one is pending.
    for _ in 0..10 {
        let fast = h3_get(&client, "localhost", "/fast").await;
        assert_eq!(fast.status, 200);
        assert!(
            futures::poll!(&mut slow).is_pending(),
            "the slow request finished first: requests are serialised on the connection"
        );
    }
    slow.abort();
}

#[tokio::test]
async fn a_client_that_changes_address_keeps_its_connection() {
    let b = Backend::start("one").await;
    let config = one_route(&group("g", "round_robin", &[(&b, 1)], ""));
    let proxy = Proxy::start(&config).await;
    let client = proxy.h3().await;
    assert_eq!(h3_get(&client, "localhost", "/before").await.status, 200);
    client.rebind().expect("rebind");
    assert_eq!(h3_get(&client, "localhost", "/after").await.status, 200, "the same connection, from a new port");
    let (_, metrics) = http_get(proxy.admin, "/metrics").await.unwrap();
    assert!(metrics.contains("quic_ingress_quic_path_migrations_total 1"), "{metrics}");
    assert!(metrics.contains("quic_ingress_quic_connections_open 1"), "still one connection");
    assert!(metrics.contains("quic_ingress_quic_handshakes_total{outcome=\"ok\"} 1"), "no second handshake");
    assert!(metrics.contains(&format!("quic_ingress_upstream_connections{{backend=\"{}\"}} 1", b.addr)), "{metrics}");
}

const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn hundred_mib_up_and_down_stream_with_bounded_memory() {
    let b = Backend::start("bulk").await;
    let config = one_route(&group("g", "round_robin", &[(&b, 1)], ""));
    let proxy = Proxy::start(&config).await;
    let client = proxy.h3().await;

    // Download: 100 MiB generated by the backend, read chunk by chunk.
    let mut resp = client
        .request(
            http::Request::get(format!("https://localhost/dl?bytes={}", 100 * MIB)).body(()).unwrap(),
            RequestBody::Empty,
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let mut got = 0u64;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        got += chunk.len() as u64;
    }
    assert_eq!(got, 100 * MIB);

    // Upload: 100 MiB generated as it is sent; the backend counts what arrives.
    let chunk = Bytes::from(vec![7u8; 256 * 1024]);
    let chunks = futures::stream::iter((0..400).map(move |_| chunk.clone()));
    let req =
        http::Request::post("https://localhost/ul").header("content-length", (100 * MIB).to_string()).body(()).unwrap();
    let resp = client.request(req, RequestBody::Stream(Box::pin(chunks))).await.unwrap();
    assert_eq!(resp.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["body_bytes"], 100 * MIB);

    // Had either body been buffered, the proxy would have held 100 MiB at once.
    let peak = proxy.proc.peak_rss_kib();
    assert!(peak < 80 * 1024, "proxy peak RSS {peak} KiB: bodies are being buffered");
}

#[tokio::test]
async fn a_client_cannot_pose_as_another_address() {
    let b = Backend::start("one").await;
    let proxy = Proxy::start(&one_route(&group("g", "round_robin", &[(&b, 1)], ""))).await;
    let c = proxy.h3().await;
    let req = http::Request::get("https://shop.example.com/who")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-real-ip", "203.0.113.9")
        .header("forwarded", "for=203.0.113.9")
        .body(())
        .unwrap();
    let a = h3_send(&c, req, RequestBody::Empty).await;
    let h = &a.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "an untrusted client's claim is replaced: {h}");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["forwarded"], "for=127.0.0.1;host=\"shop.example.com\";proto=https");
    let log = std::fs::read_to_string(&proxy.log).unwrap();
    let line = log.lines().find(|l| l.contains("\"/who\"")).expect("an access line");
    assert!(line.contains("\"client_ip\":\"127.0.0.1\""), "{line}");

    // Behind a trusted proxy the client is the hop before it, in headers and the log alike.
    let trusting = Proxy::start_with(
        &one_route(&group("g", "round_robin", &[(&b, 1)], "")),
        "  trusted_proxies: [\"127.0.0.0/8\"]\n",
    )
    .await;
    let req = http::Request::get("https://shop.example.com/who-behind")
        .header("x-forwarded-for", "6.6.6.6, 203.0.113.9")
        .body(())
        .unwrap();
    let a = h3_send(&trusting.h3().await, req, RequestBody::Empty).await;
    let h = &a.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "6.6.6.6, 203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-real-ip"], "203.0.113.9", "the first untrusted hop from the right");
    let log = std::fs::read_to_string(&trusting.log).unwrap();
    let line = log.lines().find(|l| l.contains("\"/who-behind\"")).expect("an access line");
    assert!(line.contains("\"client_ip\":\"203.0.113.9\"") && line.contains("\"peer_ip\":\"127.0.0.1\""), "{line}");
}

#[tokio::test]
async fn headers_are_rewritten_as_a_proxy_should() {
    let b = Backend::start("one").await;
    let config = one_route(&group("g", "round_robin", &[(&b, 1)], ""));
    // The test client stands for a load balancer in front, so what it says is believed.
    let proxy = Proxy::start_with(&config, "  trusted_proxies: [\"127.0.0.1\"]\n").await;
    let c = proxy.h3().await;
    let req = http::Request::get("https://shop.example.com/h")
        .header("x-request-id", "req-123")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "http")
        .header("keep-alive", "timeout=5")
        .header("x-custom", "kept")
        .body(())
        .unwrap();
    let a = h3_send(&c, req, RequestBody::Empty).await;
    assert_eq!(a.headers["x-request-id"], "req-123", "a client's request id is passed back");
    let h = &a.json()["headers"];
    assert_eq!(h["x-request-id"], "req-123");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "shop.example.com");
    assert_eq!(h["host"], "shop.example.com");
    assert_eq!(h["x-custom"], "kept");
    assert!(h.get("keep-alive").is_none(), "hop-by-hop header forwarded: {h}");
    assert!(h.get("transfer-encoding").is_none(), "a GET must not become chunked: {h}");

    let a = h3_get(&c, "shop.example.com", "/h").await;
    let id = a.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a request id is created");
    assert_eq!(a.json()["headers"]["x-request-id"], id.as_str());
}

#[tokio::test]
async fn tcp_listener_serves_http1_and_http2_with_alt_svc() {
    let b = Backend::start("one").await;
    let config = one_route(&group("g", "round_robin", &[(&b, 1)], ""));
    let proxy = Proxy::start_with(&config, "  alt_svc_port: 443\n").await;
    for (flag, version) in [("--http2", "HTTP/2"), ("--http1.1", "HTTP/1.1")] {
        let out = std::process::Command::new("curl")
            .args(["-sk", "-D", "-", "-o", "/dev/null", flag, &proxy.https_url("/curl")])
            .output()
            .expect("curl");
        let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        assert!(head.starts_with(&format!("{} 200", version.to_ascii_lowercase())), "{head}");
        assert!(head.contains("alt-svc: h3=\":443\"; ma=86400"), "{head}");
    }
}

#[tokio::test]
async fn alt_svc_defaults_to_the_listen_port_and_h2c_backends_work() {
    let b = Backend::start_with("h2", "h2").await;
    let config = catch_all(&b.url("h2c"));
    let proxy = Proxy::start(&config).await;
    let out = std::process::Command::new("curl")
        .args(["-sk", "-D", "-", "--http2", &proxy.https_url("/x")])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(text.contains(&format!("alt-svc: h3=\":{}\"", proxy.addr.port())), "{text}");
    assert!(text.contains("\"version\":\"http/2.0\""), "backend spoke HTTP/2: {text}");
    let c = proxy.h3().await;
    let a = h3_get(&c, "localhost", "/x").await;
    assert_eq!(a.json()["version"], "HTTP/2.0");
    assert_eq!(a.json()["host"], "localhost", ":authority carries the client's host");
}

#[tokio::test]
async fn https_backends_with_a_ca_bundle() {
    // A second proxy is a real HTTPS backend (ALPN h2) with its own certificate.
    let dir = TempDir::new("https-backend");
    let cert = rcgen::generate_simple_self_signed(vec!["backend.internal".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let origin = Backend::start("origin").await;
    let inner = Proxy::start_with(
        &one_route(&group("g", "round_robin", &[(&origin, 1)], "")),
        &format!(
            "  cert_file: {}\n  key_file: {}\n  trusted_proxies: [\"127.0.0.1\"]\n",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        ),
    )
    .await;
    let outer = Proxy::start(&format!(
        "routes:
  - {{id: r, path: /, backend_group: tls}}
backend_groups:
  - id: tls
    backends: [{{url: \"https://127.0.0.1:{}\"}}]
    tls: {{ca_file: {}, server_name: backend.internal}}
",
        inner.addr.port(),
        dir.join("cert.pem").display()
    ))
    .await;
    let c = outer.h3().await;
    let a = h3_get(&c, "localhost", "/through-tls").await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.backend(), "origin");
    assert_eq!(a.json()["headers"]["x-forwarded-for"], "127.0.0.1, 127.0.0.1", "both proxies appended");

    // Without the CA bundle the backend's certificate is not trusted: 502.
    let untrusted = Proxy::start(&format!(
        "routes:\n  - {{id: r, path: /, backend_group: tls}}\nbackend_groups:\n  - id: tls\n    backends: [{{url: \"https://127.0.0.1:{}\"}}]\n",
        inner.addr.port()
    ))
    .await;
    let a = h3_get(&untrusted.h3().await, "localhost", "/").await;
    assert_eq!(a.status, 502);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let b = Backend::start("one").await;
    let config = format!(
        "routes:\n  - {{id: r, path: /, backend_group: g}}\nbackend_groups:\n{}",
        group("g", "round_robin", &[(&b, 1)], "")
    );
    let mut proxy = Proxy::start(&config).await;
    let c = proxy.h3().await;
    let c2 = c.clone();
    let in_flight = tokio::spawn(async move { h3_get(&c2, "localhost", "/?delay_ms=1500").await });
    wait_until("request in flight", Duration::from_secs(5), || async {
        http_get(proxy.admin, "/debug/routes").await.is_some_and(|(_, b)| b.contains("\"in_flight\":1"))
    })
    .await;
    proxy.proc.signal(15);
    let a = in_flight.await.unwrap();
    assert_eq!(a.status, 200, "the in-flight request completes during the drain");
    let status = proxy.proc.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
    // Nothing accepts connections any more.
    let trust = quic_ingress::client::TrustOptions { insecure: true, ca_file: None };
    let again = tokio::time::timeout(
        Duration::from_secs(3),
        quic_ingress::client::H3Client::connect(proxy.addr, "localhost", &trust),
    )
    .await;
    assert!(!matches!(again, Ok(Ok(_))), "a new connection was accepted after shutdown");
}

#[tokio::test]
async fn head_requests_get_headers_only_over_http1_and_h2c_backends() {
    let (one, two) = (Backend::start("h1").await, Backend::start_with("h2", "h2").await);
    for (backend, scheme) in [(&one, "http"), (&two, "h2c")] {
        let proxy = Proxy::start(&catch_all(&backend.url(scheme))).await;
        let c = proxy.h3().await;
        let req = http::Request::head("https://localhost/x").body(()).unwrap();
        let a = h3_send(&c, req, RequestBody::Empty).await;
        assert_eq!((a.status, a.body.len()), (200, 0), "{scheme}");
        let get = h3_get(&c, "localhost", "/x").await;
        let length = |a: &Answer| a.headers.get("content-length").and_then(|v| v.to_str().ok()).map(str::to_string);
        assert!(length(&a).is_some() && length(&get).is_some(), "{scheme}: HEAD keeps the length of a GET");
    }
}

#[tokio::test]
async fn websocket_upgrades_over_tcp_are_spliced_to_the_backend() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Backend::start("ws").await;
    let proxy = Proxy::start(&catch_all(&b.url("http"))).await;
    let mut tls = quic_ingress::tls::insecure_client_config().unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    stream
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    // The response head, byte by byte up to the blank line (the tunnel follows it).
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(Duration::from_secs(5), stream.read_u8()).await.expect("101 in time").unwrap();
        head.push(byte);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket") && head.contains("connection: upgrade"), "{head}");
    assert!(head.contains("x-backend: ws"), "{head}");
    // Bytes both ways through the tunnel: the demo backend echoes them.
    for message in [&b"hello"[..], &[0u8, 1, 2, 255][..], &[b'x'; 100_000][..]] {
        stream.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed)).await.expect("echo").unwrap();
        assert_eq!(echoed, message);
    }
}

/// Request trailers from an HTTP/3 client reach an HTTP/2 backend (gRPC's framing allows
/// them; proxies that drop them break such clients silently), with and without a
/// `content-length`, and a body-less GET still goes up without a body.
#[tokio::test]
async fn request_trailers_from_http3_clients_reach_h2_backends() {
    let b = Backend::start_with("h2", "h2").await;
    let proxy = Proxy::start(&catch_all(&b.url("h2c"))).await;
    let c = proxy.h3().await;
    let trailers = || {
        let mut t = http::HeaderMap::new();
        t.insert("x-checksum", http::HeaderValue::from_static("abc123"));
        t
    };
    for content_length in [None, Some(5)] {
        let mut req = http::Request::post("https://shop.example.com/upload");
        if let Some(n) = content_length {
            req = req.header("content-length", n);
        }
        let body = RequestBody::WithTrailers(Bytes::from_static(b"hello"), trailers());
        let a = h3_send(&c, req.body(()).unwrap(), body).await;
        assert_eq!(a.status, 200);
        let seen = a.json();
        assert_eq!(seen["body_bytes"], 5, "{content_length:?}: {seen}");
        assert_eq!(seen["trailers"]["x-checksum"], "abc123", "{content_length:?}: trailers lost: {seen}");
    }
    let req = http::Request::get("https://shop.example.com/").body(()).unwrap();
    let body = RequestBody::WithTrailers(Bytes::new(), trailers());
    let seen = h3_send(&c, req, body).await.json();
    assert_eq!(seen["trailers"]["x-checksum"], "abc123", "trailers without data: {seen}");
    let seen = h3_get(&c, "shop.example.com", "/").await.json();
    assert_eq!(seen["trailers"], serde_json::json!({}));
    assert_eq!(seen["body_bytes"], 0);
}
