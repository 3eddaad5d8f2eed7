//! Passive health against hostile clients and dying backends: 500s a client provokes eject
//! nothing, and a group that loses all but one endpoint keeps serving from that one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use common::*;
use quic_ingress::client::RequestBody;

fn group_yaml(backends: &[&Backend], passive: &str) -> String {
    let mut s =
        String::from("routes:\n  - {id: r, path: /, backend_group: g}\nbackend_groups:\n  - id: g\n    backends:\n");
    for b in backends {
        s += &format!("      - url: \"{}\"\n", b.url("http"));
    }
    s + &format!("    passive: {passive}\n")
}

async fn endpoints_healthy(proxy: &Proxy) -> Vec<bool> {
    let Some((_, body)) = http_get(proxy.admin, "/debug/routes").await else { return vec![] };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["backend_groups"][0]["endpoints"]
        .as_array()
        .map(|eps| eps.iter().map(|e| e["healthy"].as_bool().unwrap_or(false)).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_client_provoking_500s_ejects_nothing() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let proxy = Proxy::start(&group_yaml(&[&a, &b], "{max_failures: 2, cooldown: 30s}")).await;
    let c = proxy.h3().await;
    for _ in 0..40 {
        assert_eq!(h3_get(&c, "localhost", "/x?status=500").await.status, 500, "the backends' own 500s");
    }
    assert_eq!(endpoints_healthy(&proxy).await, [true, true]);
    let (_, text) = http_get(proxy.admin, "/metrics").await.expect("scrape");
    let ejected: Vec<_> =
        text.lines().filter(|l| l.starts_with("quic_ingress_passive_ejections_total{") && !l.ends_with(" 0")).collect();
    assert!(ejected.is_empty(), "{ejected:?}");
    let mut names = std::collections::HashSet::new();
    for _ in 0..6 {
        names.insert(h3_get(&c, "localhost", "/").await.backend());
    }
    assert_eq!(names.len(), 2, "both still serve: {names:?}");
    proxy.proc.assert_rss_under(96, "40 provoked 500s");
}

#[tokio::test]
async fn killing_all_but_one_endpoint_keeps_traffic_flowing() {
    let (a, b, c, d) =
        (Backend::start("a").await, Backend::start("b").await, Backend::start("c").await, Backend::start("d").await);
    let proxy = Proxy::start(&group_yaml(&[&a, &b, &c, &d], "{max_failures: 1, cooldown: 60s}")).await;
    let client = proxy.h3().await;
    drop((a, b, c));
    // A POST is never retried after it may have run, but a refused connection sent
    // nothing, so it goes to another endpoint: every request must reach d.
    let mut served = 0;
    for i in 0..60 {
        let req = http::Request::post(format!("https://localhost/p{i}")).body(()).unwrap();
        let answer = h3_send(&client, req, RequestBody::Empty).await;
        assert_ne!(answer.status, 503, "request {i}: the group must not run out of endpoints");
        if answer.status == 200 {
            assert_eq!(answer.backend(), "d");
            served += 1;
        }
    }
    let healthy = endpoints_healthy(&proxy).await;
    assert_eq!(healthy, [false, false, false, true], "refused connections eject past the cap");
    assert!(served >= 57, "{served} of 60 served: only the first requests may meet three dead endpoints");
    proxy.proc.assert_rss_under(96, "three of four endpoints killed");
}

#[tokio::test]
async fn client_provoked_gateway_errors_eject_at_most_half_and_the_group_keeps_serving() {
    // `?status=503` makes every backend answer 503: what a client triggering an overload
    // path can do. Passive checks stop at half of the group and the rest stays in panic.
    let backends =
        [Backend::start("a").await, Backend::start("b").await, Backend::start("c").await, Backend::start("d").await];
    let refs: Vec<&Backend> = backends.iter().collect();
    let proxy = Proxy::start(&group_yaml(&refs, "{max_failures: 1, cooldown: 60s}")).await;
    let client = proxy.h3().await;
    for i in 0..20 {
        let req = http::Request::post(format!("https://localhost/p{i}?status=503")).body(()).unwrap();
        assert_eq!(h3_send(&client, req, RequestBody::Empty).await.status, 503);
    }
    let healthy = endpoints_healthy(&proxy).await;
    assert_eq!(healthy.iter().filter(|h| !**h).count(), 2, "at most half of four are ejected: {healthy:?}");
    let panics = metric(proxy.admin, "quic_ingress_backend_group_panic_requests_total{group=\"g\"}").await;
    assert!(panics > 0.0, "the group went into panic mode");
    // Normal requests are served: the attack turned no request into "no healthy backend".
    for _ in 0..8 {
        assert_eq!(h3_get(&client, "localhost", "/ok").await.status, 200);
    }
}
