//! In-process tests of the pipeline's phases: scripted backends behind `Endpoint::send`
//! and tokio's paused clock, so retries, failover, the budget, timeouts and the 0-RTT rule
//! are checked without sockets or waiting.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::FutureExt;
use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::{ConnInfo, Downstream, Shared, handle};
use crate::body::{ProxyBody, empty, full};
use crate::routes::{PathRule, PathType, RouteTable, RouteTableBuilder};
use crate::telemetry::metrics::Metrics;
use crate::tls::CertSet;
use crate::upstream::{
    BackendGroup, BackendUrl, Endpoint, EndpointSpec, PassiveCheck, PoolSettings, SendError, Strategy, StubTransport,
    Timeouts, UpstreamBody, UpstreamTls,
};

// === Scripted backends ===

/// What a scripted backend does with one request.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// Answers with this status (and body "from NAME").
    Status(u16),
    /// Fails to connect: nothing reached it.
    Refuse,
    /// Reads the whole request body, then breaks the connection.
    ReadThenBreak,
    /// Never answers.
    Stall,
}

/// A backend that plays its script in order (the last act repeats), and records what it got.
struct Scripted {
    name: &'static str,
    script: Mutex<VecDeque<Act>>,
    seen: Mutex<Vec<Request<()>>>,
}

impl Scripted {
    fn new(name: &'static str, script: &[Act]) -> Arc<Self> {
        Arc::new(Self { name, script: Mutex::new(script.iter().copied().collect()), seen: Mutex::default() })
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn next_act(&self) -> Act {
        let mut script = self.script.lock().unwrap();
        if script.len() > 1 { script.pop_front().unwrap() } else { *script.front().unwrap() }
    }
}

impl StubTransport for Scripted {
    fn send(&self, req: Request<ProxyBody>) -> BoxFuture<'static, Result<Response<UpstreamBody>, SendError>> {
        let act = self.next_act();
        let (parts, body) = req.into_parts();
        self.seen.lock().unwrap().push(Request::from_parts(parts, ()));
        let name = self.name;
        async move {
            match act {
                Act::Status(code) => {
                    let mut resp = Response::new(UpstreamBody::Stub(full(format!("from {name}"))));
                    *resp.status_mut() = StatusCode::from_u16(code).unwrap();
                    Ok(resp)
                }
                Act::Refuse => Err(SendError::NotSent("connection refused".into())),
                Act::ReadThenBreak => {
                    // As hyper does: a body that is already at its end is never polled.
                    if !http_body::Body::is_end_stream(&body) {
                        let _ = body.collect().await;
                    }
                    Err(SendError::Broken("connection reset".into()))
                }
                Act::Stall => futures::future::pending().await,
            }
        }
        .boxed()
    }
}

// === Builders ===

fn spec(port: u16) -> EndpointSpec {
    EndpointSpec {
        url: BackendUrl::parse(&format!("http://192.0.2.1:{port}")).unwrap(),
        pool: PoolSettings::default(),
        connect_timeout: Duration::from_secs(1),
        tls: UpstreamTls::default(),
    }
}

/// A table with one catch-all route to a round-robin group of `backends`, in order,
/// without passive health checks (so failures never eject).
fn table(backends: &[Arc<Scripted>], timeouts: Timeouts) -> (Shared, Vec<Arc<Endpoint>>) {
    table_with(backends, timeouts, None)
}

fn table_with(
    backends: &[Arc<Scripted>],
    timeouts: Timeouts,
    passive: Option<PassiveCheck>,
) -> (Shared, Vec<Arc<Endpoint>>) {
    let endpoints: Vec<Arc<Endpoint>> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| Endpoint::stub(&spec(8000 + i as u16), b.clone() as Arc<dyn StubTransport>))
        .collect();
    let members = endpoints.iter().map(|e| (e.clone(), 1)).collect();
    let mut builder = RouteTableBuilder::new(CertSet::default());
    let group =
        builder.add_group(BackendGroup::new("g".into(), Strategy::RoundRobin, timeouts, members).with_passive(passive));
    builder.add_route("r", None, PathRule::new("/", PathType::Prefix).unwrap(), group).unwrap();
    (shared(builder.build(1)), endpoints)
}

fn shared(table: RouteTable) -> Shared {
    Shared { tables: Arc::new(ArcSwap::from_pointee(table)), metrics: Arc::new(Metrics::new().unwrap()) }
}

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

// === Path normalisation ===

/// `/public` served by `public`, `/admin` by `admin`.
fn two_routes(public: &Arc<Scripted>, admin: &Arc<Scripted>) -> Shared {
    let mut builder = RouteTableBuilder::new(CertSet::default());
    for (i, (id, backend)) in [("public", public), ("admin", admin)].into_iter().enumerate() {
        let ep = Endpoint::stub(&spec(8100 + i as u16), backend.clone() as Arc<dyn StubTransport>);
        let group =
            builder.add_group(BackendGroup::new(id.into(), Strategy::RoundRobin, Timeouts::default(), vec![(ep, 1)]));
        builder.add_route(id, None, PathRule::new(&format!("/{id}"), PathType::Prefix).unwrap(), group).unwrap();
    }
    shared(builder.build(1))
}

fn get(path_and_query: &str) -> Request<ProxyBody> {
    Request::builder().uri(format!("https://shop.example{path_and_query}")).body(empty()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn traversals_are_routed_by_the_path_the_backend_gets() {
    let (public, admin) = (Scripted::new("public", &[Act::Status(200)]), Scripted::new("admin", &[Act::Status(200)]));
    let tables = two_routes(&public, &admin);
    for (path, want) in [
        ("/public/../admin", "admin"),
        ("/public/%2e%2e/admin", "admin"),
        ("/public/./%2E%2E/admin/x?q=/../", "admin"),
        ("//admin", "admin"),
        ("/public//x", "public"),
        ("/%70ublic/a", "public"),
    ] {
        let resp = handle(&tables, get(path), conn(false)).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(body_text(resp).await, format!("from {want}"), "{path}");
    }
    let sent: Vec<String> =
        admin.seen.lock().unwrap().iter().map(|r| r.uri().path_and_query().unwrap().to_string()).collect();
    assert_eq!(sent, ["/admin", "/admin", "/admin/x?q=/../", "/admin"], "the backend gets the normalised path");
    let sent: Vec<String> = public.seen.lock().unwrap().iter().map(|r| r.uri().path().to_string()).collect();
    assert_eq!(sent, ["/public/x", "/public/a"]);
}

#[tokio::test(start_paused = true)]
async fn paths_that_cannot_be_normalised_safely_get_400_and_reach_no_backend() {
    let (public, admin) = (Scripted::new("public", &[Act::Status(200)]), Scripted::new("admin", &[Act::Status(200)]));
    let tables = two_routes(&public, &admin);
    for path in ["/public/..%2fadmin", "/public/..%5Cadmin", "/public/%zz", "/public/%2"] {
        assert_eq!(handle(&tables, get(path), conn(false)).await.status(), 400, "{path}");
    }
    assert_eq!(public.calls() + admin.calls(), 0);
}

// === Passive health ===

#[tokio::test(start_paused = true)]
async fn a_backend_answering_500s_is_never_ejected_but_503s_are() {
    let (a, b) = (Scripted::new("a", &[Act::Status(500)]), Scripted::new("b", &[Act::Status(200)]));
    let passive = PassiveCheck { max_failures: 2, ..PassiveCheck::default() };
    let (tables, endpoints) = table_with(&[a.clone(), b.clone()], Timeouts::default(), Some(passive.clone()));
    for _ in 0..20 {
        handle(&tables, request(Method::GET, empty()), conn(false)).await;
    }
    assert_eq!(a.calls(), 10, "a client-provoked 500 says the backend is alive");
    assert!(endpoints[0].is_healthy());

    let (c, d) = (Scripted::new("c", &[Act::Status(504)]), Scripted::new("d", &[Act::Status(200)]));
    let (tables, endpoints) = table_with(&[c.clone(), d.clone()], Timeouts::default(), Some(passive));
    for _ in 0..20 {
        handle(&tables, request(Method::POST, full("x")), conn(false)).await;
    }
    assert_eq!(c.calls(), 2, "504s eject");
    assert!(!endpoints[0].is_healthy());
}

#[tokio::test(start_paused = true)]
async fn a_group_whose_endpoints_all_fail_stays_in_rotation_in_panic_mode() {
    let backends: Vec<_> = ["a", "b", "c", "d"].into_iter().map(|n| Scripted::new(n, &[Act::Status(503)])).collect();
    let passive = PassiveCheck { max_failures: 1, ..PassiveCheck::default() };
    let (tables, endpoints) = table_with(&backends, Timeouts::default(), Some(passive));
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(handle(&tables, request(Method::POST, full("x")), conn(false)).await.status().as_u16());
    }
    assert_eq!(endpoints.iter().filter(|e| !e.is_healthy()).count(), 2, "at most half are ejected");
    assert!(statuses.iter().all(|&s| s == 503), "the backends' own answers, never 'no healthy backend'");
    assert!(backends.iter().all(|b| b.calls() > 0));
    let text = tables.metrics.render();
    assert!(text.contains("quic_ingress_backend_group_panic_requests_total{group=\"g\"}"), "{text}");
}

// === Upgrades ===

#[tokio::test(start_paused = true)]
async fn an_h2c_upgrade_is_served_as_a_plain_request_and_websocket_is_passed_on() {
    let a = Scripted::new("a", &[Act::Status(200)]);
    let (tables, _) = table(std::slice::from_ref(&a), Timeouts::default());
    let ask = |upgrade: &str| {
        Request::builder()
            .uri("/chat")
            .header("host", "shop.example")
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("upgrade", upgrade)
            .header("http2-settings", "AAMAAABkAAQAAP__")
            .body(empty())
            .unwrap()
    };
    assert_eq!(handle(&tables, ask("h2c"), conn(false)).await.status(), 200);
    assert_eq!(handle(&tables, ask("websocket"), conn(false)).await.status(), 200);
    let seen = a.seen.lock().unwrap();
    for name in ["upgrade", "connection", "http2-settings"] {
        assert!(!seen[0].headers().contains_key(name), "h2c: {name} must not reach the backend");
    }
    assert_eq!(seen[1].headers()["upgrade"], "websocket");
    assert_eq!(seen[1].headers()["connection"], "upgrade");
}
