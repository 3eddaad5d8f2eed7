//! Telemetry as operators consume it: a real Prometheus scrapes `/metrics` and its query
//! API returns the counts of known traffic; access logs are JSON lines with the fields of
//! SPEC.md.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A Prometheus server scraping `target` every second.
struct Prometheus {
    addr: std::net::SocketAddr,
    _proc: Proc,
    dir: std::path::PathBuf,
}

impl Prometheus {
    async fn start(target: std::net::SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!("qi-prom-{}-{}", std::process::id(), target.port()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: quic-ingress\n    static_configs: [{{targets: [\"{target}\"]}}]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("prometheus.log")).unwrap()))
            .spawn()
            .expect("prometheus (installed by `make test`)");
        let prom = Self { addr, _proc: Proc { child, name: "prometheus".into() }, dir };
        wait_until("prometheus ready", Duration::from_secs(30), || async {
            http_get(addr, "/-/ready").await.is_some_and(|(s, _)| s == 200)
        })
        .await;
        prom
    }

    /// The single value of an instant query, if there is one.
    async fn value(&self, promql: &str) -> Option<f64> {
        let encoded: String = promql
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let (_, body) = http_get(self.addr, &format!("/api/v1/query?query={encoded}")).await?;
        // http_get does not undo chunked encoding; take the JSON object in the body.
        let json = &body[body.find('{')?..=body.rfind('}')?];
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn prometheus_scrapes_request_counts_that_match_the_traffic() {
    let b = Backend::start("metrics").await;
    let proxy = Proxy::start(&format!(
        "routes:\n  - {{id: shop, host: shop.example.com, path: /, backend_group: g}}\nbackend_groups:\n  - id: g\n    backends: [{{url: \"{}\"}}]\n",
        b.url("http")
    ))
    .await;
    let c = proxy.h3().await;
    for _ in 0..25 {
        assert_eq!(h3_get(&c, "shop.example.com", "/ok").await.status, 200);
    }
    for _ in 0..5 {
        assert_eq!(h3_get(&c, "nowhere.example.com", "/missing").await.status, 404);
    }
    let prom = Prometheus::start(proxy.admin).await;
    let backend = b.addr.to_string();
    let ok = format!(
        "sum(quic_ingress_http_requests_total{{route=\"shop\",status=\"200\",method=\"GET\",backend=\"{backend}\"}})"
    );
    let mut seen = None;
    for _ in 0..150 {
        seen = prom.value(&ok).await;
        if seen == Some(25.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, Some(25.0), "Prometheus saw {seen:?} successful requests");
    assert_eq!(prom.value("sum(quic_ingress_http_requests_total{status=\"404\"})").await, Some(5.0));
    assert_eq!(prom.value("quic_ingress_http_request_duration_seconds_count{route=\"shop\"}").await, Some(25.0));
    assert_eq!(prom.value(&format!("quic_ingress_backend_healthy{{backend=\"{backend}\"}}")).await, Some(1.0));
    assert_eq!(prom.value("quic_ingress_quic_connections_open").await, Some(1.0), "our one HTTP/3 connection");
    assert_eq!(prom.value("quic_ingress_route_table_routes").await, Some(1.0));
    assert!(prom.value("sum(quic_ingress_quic_handshakes_total{outcome=\"ok\"})").await.unwrap_or(0.0) >= 1.0);
    // Bounded cardinality: no raw path or client address in any label.
    let (_, text) = http_get(proxy.admin, "/metrics").await.unwrap();
    assert!(!text.contains("/missing") && !text.contains("/ok"), "a raw path became a label");
}

#[tokio::test]
async fn prometheus_sees_0rtt_accepted_and_early_requests_by_outcome() {
    let b = Backend::start("early").await;
    let proxy = Proxy::start(&catch_all(&b.url("http"))).await;
    // A slow path, so requests sent with the first flight are read before the handshake ends.
    let relay = common::DelayRelay::start(proxy.addr, Duration::from_millis(40)).await;
    let trust = quic_ingress::client::TrustOptions { insecure: true, ca_file: None };
    let connector = quic_ingress::client::H3Connector::new(&trust, false, true).expect("connector");
    let first = connector.connect(relay.addr, "localhost").await.expect("connect");
    assert_eq!(h3_get(&first, "localhost", "/").await.status, 200);
    let (early, accepted) = connector.connect_early(relay.addr, "localhost").await.expect("connect");
    assert!(accepted.is_some(), "the first connection left a session ticket");
    let post = http::Request::post("https://localhost/").body(()).expect("request");
    let (get, post) = tokio::join!(
        h3_get(&early, "localhost", "/"),
        common::h3_send(&early, post, quic_ingress::client::RequestBody::Bytes("x".into()))
    );
    assert_eq!((get.status, post.status), (200, 425));

    let prom = Prometheus::start(proxy.admin).await;
    let accepted = "quic_ingress_quic_zero_rtt_total{outcome=\"accepted\"}";
    let mut seen = None;
    for _ in 0..150 {
        seen = prom.value(accepted).await;
        if seen.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, Some(1.0));
    assert_eq!(prom.value("quic_ingress_quic_zero_rtt_total{outcome=\"rejected\"}").await, Some(0.0));
    assert_eq!(prom.value("quic_ingress_early_data_requests_total{outcome=\"forwarded\"}").await, Some(1.0));
    assert_eq!(prom.value("quic_ingress_early_data_requests_total{outcome=\"too_early\"}").await, Some(1.0));
    assert_eq!(prom.value("quic_ingress_tls_resumptions_total{outcome=\"resumed\"}").await, Some(1.0));
}

#[tokio::test]
async fn pool_connections_show_active_while_a_request_runs_then_idle() {
    let b = Backend::start("pool").await;
    let proxy = Proxy::start(&catch_all(&b.url("http"))).await;
    let c = proxy.h3().await;
    let slow = tokio::spawn(async move { h3_get(&c, "localhost", "/slow?delay_ms=1500").await.status });
    let series =
        |state: &str| format!("quic_ingress_upstream_pool_connections{{backend=\"{}\",state=\"{state}\"}}", b.addr);
    let (active, idle) = (series("active"), series("idle"));
    wait_until("the slow request to hold a pooled connection", Duration::from_secs(10), || async {
        metric(proxy.admin, &active).await == 1.0 && metric(proxy.admin, &idle).await == 0.0
    })
    .await;
    assert_eq!(slow.await.expect("request task"), 200);
    wait_until("the connection to return to the pool idle", Duration::from_secs(10), || async {
        metric(proxy.admin, &active).await == 0.0 && metric(proxy.admin, &idle).await == 1.0
    })
    .await;
}

#[tokio::test]
async fn access_logs_are_json_with_the_spec_fields() {
    let b = Backend::start("logs").await;
    let proxy = Proxy::start(&catch_all(&b.url("http"))).await;
    let c = proxy.h3().await;
    let req =
        http::Request::post("https://localhost/logged?q=1").header("x-request-id", "log-test-1").body(()).unwrap();
    assert_eq!(h3_send(&c, req, quic_ingress::client::RequestBody::Empty).await.status, 200);
    let mut line = None;
    for _ in 0..100 {
        let text = std::fs::read_to_string(&proxy.log).unwrap_or_default();
        line = text.lines().find(|l| l.contains("log-test-1")).map(str::to_string);
        if line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = line.expect("an access log line for the request");
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(v["level"], "INFO");
    assert!(v["timestamp"].as_str().is_some_and(|t| t.starts_with("20")));
    assert_eq!(v["message"], "request");
    assert_eq!(v["request_id"], "log-test-1");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/logged", "the path without its query");
    assert_eq!(v["backend"], b.addr.to_string());
    assert_eq!(v["status"], 200);
    assert!(v["duration_ms"].as_f64().is_some_and(|d| d > 0.0));
    assert_eq!(v["client_ip"], "127.0.0.1");
    assert_eq!(v["early_data"], false, "a request after a full handshake");
}
