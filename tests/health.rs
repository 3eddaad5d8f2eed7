//! Health checking, failover and zero-downtime reloads with real backends that die, come
//! back and get reconfigured under a steady, bounded load.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::sync::Mutex;

/// Counts answers by backend and failures from a bounded request loop.
#[derive(Default, Debug)]
struct Tally {
    by_backend: HashMap<String, usize>,
    failures: Vec<String>,
}

/// `workers` loops of GETs over one HTTP/3 connection each, until `stop` or `max` requests.
fn load(
    client: quic_ingress::client::H3Client,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Tally> {
    tokio::spawn(async move {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (client, stop, tally) = (client.clone(), stop.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                // Bounded in count and time, whatever the test does.
                let deadline = Instant::now() + Duration::from_secs(60);
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let req = http::Request::get("https://localhost/load").body(()).unwrap();
                    let result = client.request(req, quic_ingress::client::RequestBody::Empty).await;
                    let mut t = tally.lock().await;
                    match result {
                        Ok(resp) if resp.status == 200 => {
                            let b =
                                resp.headers.get("x-backend").and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
                            let _ = resp.bytes().await;
                            *t.by_backend.entry(b).or_default() += 1;
                        }
                        Ok(resp) => t.failures.push(format!("status {}", resp.status)),
                        Err(e) => t.failures.push(e.to_string()),
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(tally).unwrap().into_inner()
    })
}

fn groups_yaml(backends: &[&Backend], extra: &str) -> String {
    let mut s =
        String::from("routes:\n  - {id: r, path: /, backend_group: g}\nbackend_groups:\n  - id: g\n    backends:\n");
    for b in backends {
        s += &format!("      - url: \"{}\"\n", b.url("http"));
    }
    s + extra
}

/// The endpoints of the first group as (url, healthy), from /debug/routes.
async fn endpoint_health(proxy: &Proxy) -> Vec<(String, bool)> {
    let Some((_, body)) = http_get(proxy.admin, "/debug/routes").await else { return vec![] };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["backend_groups"][0]["endpoints"]
        .as_array()
        .map(|eps| {
            eps.iter()
                .map(|e| (e["url"].as_str().unwrap_or("").to_string(), e["healthy"].as_bool().unwrap_or(false)))
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_health(proxy: &Proxy, backend: &Backend, healthy: bool) -> Duration {
    let start = Instant::now();
    let port = format!(":{}", backend.addr.port());
    wait_until(&format!("{} healthy={healthy}", backend.name), Duration::from_secs(20), || async {
        endpoint_health(proxy).await.iter().any(|(u, h)| u.ends_with(&port) && *h == healthy)
    })
    .await;
    start.elapsed()
}

#[tokio::test]
async fn killing_and_restarting_a_backend_under_load_fails_no_request() {
    let (a, b, mut c) = (Backend::start("a").await, Backend::start("b").await, Backend::start("c").await);
    let config = groups_yaml(&[&a, &b, &c], "    passive: {max_failures: 2, observation_window: 10s, cooldown: 1s}\n");
    let proxy = Proxy::start(&config).await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(proxy.h3().await, 4, stop.clone());

    wait_until("traffic on every backend", Duration::from_secs(10), || async {
        endpoint_health(&proxy).await.len() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // let load build up on all three
    let port = c.addr.port();
    drop(c.proc); // SIGKILL
    let ejected_after =
        wait_health(&proxy, &Backend { addr: c.addr, name: "c".into(), proc: dummy_proc() }, false).await;
    eprintln!("backend death to ejection (passive, 2 failures): {ejected_after:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    c = Backend::start_on("c", "http1", port).await;
    wait_health(&proxy, &c, true).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let tally = running.await.unwrap();

    let total: usize = tally.by_backend.values().sum();
    assert!(
        tally.failures.is_empty(),
        "{} of {} requests failed: {:?}",
        tally.failures.len(),
        total,
        &tally.failures[..tally.failures.len().min(5)]
    );
    assert!(total > 200, "the load was too light to mean anything: {tally:?}");
    assert!(tally.by_backend.get("c").copied().unwrap_or(0) > 0, "c served before and after: {tally:?}");
}

/// A stand-in process for a backend that was killed (its `Proc` is gone).
fn dummy_proc() -> Proc {
    Proc { child: std::process::Command::new("true").spawn().unwrap(), name: "gone".into() }
}

#[tokio::test]
async fn active_checks_eject_a_dead_backend_and_bring_it_back() {
    let (a, mut b) = (Backend::start("a").await, Backend::start("b").await);
    let config = groups_yaml(
        &[&a, &b],
        "    health_check: {interval: 200ms, timeout: 200ms, healthy_threshold: 1, unhealthy_threshold: 2, path: /health}\n    passive: {enabled: false}\n",
    );
    let proxy = Proxy::start(&config).await;
    let client = proxy.h3().await;
    let port = b.addr.port();
    let killed_at = Instant::now();
    drop(b.proc);
    let gone = Backend { addr: ([127, 0, 0, 1], port).into(), name: "b".into(), proc: dummy_proc() };
    wait_health(&proxy, &gone, false).await;
    eprintln!("backend death to ejection (active, 200ms x2): {:?}", killed_at.elapsed());
    for _ in 0..30 {
        let a = h3_get(&client, "localhost", "/").await;
        assert_eq!((a.status, a.backend().as_str()), (200, "a"), "an unhealthy backend gets no traffic");
    }
    b = Backend::start_on("b", "http1", port).await;
    wait_health(&proxy, &b, true).await;
    let mut seen_b = false;
    for _ in 0..10 {
        seen_b |= h3_get(&client, "localhost", "/").await.backend() == "b";
    }
    assert!(seen_b, "a recovered backend receives traffic again");
}

#[tokio::test]
async fn a_backend_answering_500s_is_ejected_by_passive_checks() {
    // A second proxy in front of a dead port answers 502 for "bad": a real server that
    // returns 5xx on every request.
    let good = Backend::start("good").await;
    let bad_inner = Proxy::start(&format!(
        "routes:\n  - {{id: r, path: /, backend_group: g}}\nbackend_groups:\n  - id: g\n    backends: [{{url: \"http://127.0.0.1:{}\"}}]\n    passive: {{enabled: false}}\n",
        free_port()
    ))
    .await;
    let config = format!(
        "routes:\n  - {{id: r, path: /, backend_group: g}}\nbackend_groups:\n  - id: g\n    backends:\n      - url: \"{}\"\n      - url: \"https://127.0.0.1:{}\"\n    tls: {{insecure_skip_verify: true}}\n    passive: {{max_failures: 3, observation_window: 30s, cooldown: 30s}}\n",
        good.url("http"),
        bad_inner.addr.port()
    );
    let proxy = Proxy::start(&config).await;
    let client = proxy.h3().await;
    // POST is not idempotent, so 5xx answers reach the client until the ejection.
    let mut five_hundreds = 0;
    for _ in 0..40 {
        let req = http::Request::post("https://localhost/p").body(()).unwrap();
        let a = h3_send(&client, req, quic_ingress::client::RequestBody::Empty).await;
        if a.status >= 500 {
            five_hundreds += 1;
        }
    }
    assert_eq!(five_hundreds, 3, "exactly max_failures 5xx answers before the ejection");
    // GETs are retried on 502 instead, so they never fail.
    for _ in 0..20 {
        assert_eq!(h3_get(&client, "localhost", "/g").await.status, 200);
    }
}

#[tokio::test]
async fn fifty_reloads_under_load_fail_nothing_and_only_valid_configs_serve() {
    let (a, b, never) = (Backend::start("a").await, Backend::start("b").await, Backend::start("never").await);
    let proxy = Proxy::start(&groups_yaml(&[&a], "")).await;
    let header = std::fs::read_to_string(&proxy.config_path).unwrap();
    let header = header.split("routes:").next().unwrap().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(proxy.h3().await, 3, stop.clone());

    let mut last_valid = "a";
    for i in 0..50 {
        let body = match i % 5 {
            // Invalid configs that would send traffic to "never" if they were accepted.
            1 => groups_yaml(&[&never], "    stratgy: random\n"),
            3 => groups_yaml(&[&never], "").replace("backend_group: g", "backend_group: missing"),
            _ => {
                last_valid = if i % 2 == 0 { "b" } else { "a" };
                groups_yaml(&[if last_valid == "a" { &a } else { &b }], "")
            }
        };
        std::fs::write(&proxy.config_path, format!("{header}{body}")).unwrap();
        proxy.proc.signal(1); // SIGHUP
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let want_port = format!(":{}", if last_valid == "a" { a.addr.port() } else { b.addr.port() });
    wait_until("the last valid config serving", Duration::from_secs(10), || async {
        endpoint_health(&proxy).await.iter().any(|(u, _)| u.ends_with(&want_port))
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let tally = running.await.unwrap();
    assert!(
        tally.failures.is_empty(),
        "failed requests during reloads: {:?}",
        &tally.failures[..tally.failures.len().min(5)]
    );
    assert_eq!(tally.by_backend.get("never"), None, "an invalid config served traffic: {tally:?}");
    assert!(tally.by_backend.contains_key("a") && tally.by_backend.contains_key("b"), "{tally:?}");
}
