//! In-process tests of the pipeline's phases: scripted backends behind `Endpoint::send`
//! and tokio's paused clock, so retries, failover, the budget, timeouts and the 0-RTT rule
//! are checked without sockets or waiting.

use std::time::Duration;

use http::{Method, Request, Response};
use http_body_util::BodyExt;

use super::{ConnInfo, Downstream, handle};
use crate::body::{ProxyBody, empty, full};
use crate::proxy::test_support::{Act, Scripted, shared, table, table_with};
use crate::routes::{CertSet, RouteTable};
use crate::upstream::{PassiveCheck, Timeouts};

fn request(method: Method, body: ProxyBody) -> Request<ProxyBody> {
    Request::builder().method(method).uri("https://shop.example/cart").body(body).unwrap()
}

fn conn(early_data: bool) -> ConnInfo {
    ConnInfo { client: "198.51.100.7:50000".parse().unwrap(), protocol: Downstream::H3, early_data }
}

async fn body_text(resp: Response<ProxyBody>) -> String {
    String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned()
}

// === Retries and failover ===

#[tokio::test(start_paused = true)]
async fn a_get_answered_503_is_served_by_the_next_endpoint() {
    let (a, b) = (Scripted::new("a", &[Act::Status(503)]), Scripted::new("b", &[Act::Status(200)]));
    let (tables, _) = table(&[a.clone(), b.clone()], Timeouts::default());
    let resp = handle(&tables, request(Method::GET, empty()), conn(false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body_text(resp).await, "from b");
    assert_eq!((a.calls(), b.calls()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_post_answered_503_is_not_sent_again() {
    let (a, b) = (Scripted::new("a", &[Act::Status(503)]), Scripted::new("b", &[Act::Status(200)]));
    let (tables, _) = table(&[a.clone(), b.clone()], Timeouts::default());
    let resp = handle(&tables, request(Method::POST, full("order")), conn(false)).await;
    assert_eq!(resp.status(), 503, "the backend's own answer");
    assert_eq!(body_text(resp).await, "from a");
    assert_eq!(b.calls(), 0, "a POST may have run: never replayed");
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_fails_over_whatever_the_method() {
    let (a, b) = (Scripted::new("a", &[Act::Refuse]), Scripted::new("b", &[Act::Status(201)]));
    let (tables, _) = table(&[a.clone(), b.clone()], Timeouts::default());
    let resp = handle(&tables, request(Method::POST, full("order")), conn(false)).await;
    assert_eq!(resp.status(), 201);
    assert_eq!((a.calls(), b.calls()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_body_the_backend_read_is_never_replayed() {
    let (a, b) = (Scripted::new("a", &[Act::ReadThenBreak]), Scripted::new("b", &[Act::Status(200)]));
    let (tables, _) = table(&[a.clone(), b.clone()], Timeouts::default());
    let resp = handle(&tables, request(Method::PUT, full("document")), conn(false)).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(b.calls(), 0, "the PUT's body was streamed to a: it is gone");
}

#[tokio::test(start_paused = true)]
async fn an_idempotent_request_whose_connection_broke_goes_elsewhere() {
    let (a, b) = (Scripted::new("a", &[Act::ReadThenBreak]), Scripted::new("b", &[Act::Status(200)]));
    let (tables, _) = table(&[a.clone(), b.clone()], Timeouts::default());
    let resp = handle(&tables, request(Method::GET, empty()), conn(false)).await;
    assert_eq!(resp.status(), 200, "an empty body is never read, so it can be sent again");
    assert_eq!(b.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn at_most_three_attempts_then_the_last_failure_answers() {
    let backends: Vec<_> =
        ["a", "b", "c", "d"].into_iter().map(|n| Scripted::new(n, &[Act::Refuse])).collect::<Vec<_>>();
    let (tables, _) = table(&backends, Timeouts::default());
    let resp = handle(&tables, request(Method::GET, empty()), conn(false)).await;
    assert_eq!(resp.status(), 502);
    let calls: usize = backends.iter().map(|b| b.calls()).sum();
    assert_eq!(calls, 3);
    assert!(backends.iter().all(|b| b.calls() <= 1), "each endpoint is tried once");
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_stops_retries_when_spent() {
    // Every request fails at its first endpoint; the budget starts with 10 retries and
    // earns 0.2 per request, so retries stop long before every request has had one.
    let (a, b) = (Scripted::new("a", &[Act::Refuse]), Scripted::new("b", &[Act::Refuse]));
    let (tables, _) = table(&[a.clone(), b.clone()], Timeouts::default());
    let requests = 40;
    for _ in 0..requests {
        assert_eq!(handle(&tables, request(Method::GET, empty()), conn(false)).await.status(), 502);
    }
    let retries = a.calls() + b.calls() - requests;
    // 10 at the start plus 0.2 for each of the 40 requests.
    assert_eq!(retries, 18, "a: {}, b: {}", a.calls(), b.calls());
}

#[tokio::test(start_paused = true)]
async fn failures_reported_by_attempts_eject_the_endpoint() {
    let (a, b) = (Scripted::new("a", &[Act::Refuse]), Scripted::new("b", &[Act::Status(200)]));
    let passive = PassiveCheck { max_failures: 2, ..PassiveCheck::default() };
    let (tables, endpoints) = table_with(&[a.clone(), b.clone()], Timeouts::default(), Some(passive));
    for _ in 0..6 {
        assert_eq!(handle(&tables, request(Method::GET, empty()), conn(false)).await.status(), 200);
    }
    assert_eq!(a.calls(), 2, "ejected after its second failure; b served everything since");
    assert!(!endpoints[0].is_healthy() && endpoints[1].is_healthy());
}

// === Timeouts ===

#[tokio::test(start_paused = true)]
async fn a_backend_that_never_answers_gets_504_at_the_deadline_and_no_retry() {
    let (a, b) = (Scripted::new("a", &[Act::Stall]), Scripted::new("b", &[Act::Status(200)]));
    let timeouts = Timeouts { response_headers: Duration::from_secs(2), ..Timeouts::default() };
    let (tables, _) = table(&[a.clone(), b.clone()], timeouts);
    let started = tokio::time::Instant::now();
    let resp = handle(&tables, request(Method::GET, empty()), conn(false)).await;
    assert_eq!(resp.status(), 504);
    assert_eq!(started.elapsed(), Duration::from_secs(2), "exactly the response-headers timeout");
    assert_eq!(b.calls(), 0, "the request may be running at a: not sent twice");
}

#[tokio::test(start_paused = true)]
async fn a_full_endpoint_sends_the_request_to_one_with_room() {
    let (a, b) = (Scripted::new("a", &[Act::Status(200)]), Scripted::new("b", &[Act::Status(200)]));
    let timeouts = Timeouts { pool_wait: Duration::from_millis(50), ..Timeouts::default() };
    let (tables, endpoints) = table(&[a.clone(), b.clone()], timeouts);
    // Take every slot of a (1024 by default) so its next request must wait, then give up.
    let mut held = Vec::new();
    while let Ok(Some(slot)) = tokio::time::timeout(Duration::ZERO, endpoints[0].acquire(&Timeouts::default())).await {
        held.push(slot);
    }
    let resp = handle(&tables, request(Method::POST, full("x")), conn(false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!((a.calls(), b.calls()), (0, 1));
}

// === Route and 0-RTT ===

#[tokio::test(start_paused = true)]
async fn no_route_is_404_and_no_healthy_backend_is_503_with_retry_after() {
    let empty_table = shared(RouteTable::empty(CertSet::default()));
    let resp = handle(&empty_table, request(Method::GET, empty()), conn(false)).await;
    assert_eq!(resp.status(), 404);

    let a = Scripted::new("a", &[Act::Status(200)]);
    let (tables, endpoints) = table(std::slice::from_ref(&a), Timeouts::default());
    endpoints[0].set_healthy(false);
    let resp = handle(&tables, request(Method::GET, empty()), conn(false)).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "5");
    assert_eq!(a.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn early_data_forwards_safe_methods_marked_and_answers_others_425() {
    let a = Scripted::new("a", &[Act::Status(200)]);
    let (tables, _) = table(std::slice::from_ref(&a), Timeouts::default());
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        let resp = handle(&tables, request(method.clone(), full("x")), conn(true)).await;
        assert_eq!(resp.status(), 425, "{method}");
    }
    assert_eq!(a.calls(), 0, "no unsafe early request reaches the backend");
    for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
        assert_eq!(handle(&tables, request(method.clone(), empty()), conn(true)).await.status(), 200, "{method}");
    }
    {
        let seen = a.seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|r| r.headers()["early-data"] == "1"));
    }
    handle(&tables, request(Method::POST, full("x")), conn(false)).await;
    assert!(!a.seen.lock().unwrap()[3].headers().contains_key("early-data"), "after the handshake: no marker");
}

#[tokio::test(start_paused = true)]
async fn the_backend_gets_the_clients_authority_and_forwarding_headers_and_the_client_an_id() {
    let a = Scripted::new("a", &[Act::Status(200)]);
    let (tables, _) = table(std::slice::from_ref(&a), Timeouts::default());
    let resp = handle(&tables, request(Method::GET, empty()), conn(false)).await;
    let id = resp.headers()["x-request-id"].clone();
    let seen = a.seen.lock().unwrap();
    let req = &seen[0];
    assert_eq!(req.headers()["host"], "shop.example");
    assert_eq!(req.headers()["x-forwarded-for"], "198.51.100.7");
    assert_eq!(req.headers()["x-request-id"], id, "the same id both ways");
    assert_eq!(req.uri().path(), "/cart");
}
