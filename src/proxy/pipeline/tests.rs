//! In-process tests of the pipeline's phases: scripted backends behind `Endpoint::send`
//! and tokio's paused clock, so retries, failover, the budget, timeouts and the 0-RTT rule
//! are checked without sockets or waiting.

use std::time::Duration;

use http::{Method, Request, Response};
use http_body_util::BodyExt;

use super::{ConnInfo, Downstream, handle};
use crate::body::{ProxyBody, empty, full};
use std::sync::Arc;

use super::Shared;
use crate::proxy::test_support::{Act, Scripted, shared, spec, table, table_with};
use crate::routes::{CertSet, PathRule, PathType, RouteTable, RouteTableBuilder};
use crate::upstream::{BackendGroup, Endpoint, PassiveCheck, Strategy, StubTransport, Timeouts};

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

// === Matches, weighted backends, filters and timeouts ===

use crate::routes::{
    Cors, Filter, HeaderModifier, ListenerScope, Mirror, PathModifier, Redirect, RequestMatch, Rewrite, RouteEntry,
    RouteTimeouts, ValueMatch, WeightedBackends,
};

/// Test builder: a group `id` of one scripted backend on its own port.
fn group_of(builder: &mut RouteTableBuilder, id: &str, backend: &Arc<Scripted>, port: u16) -> Arc<BackendGroup> {
    let ep = Endpoint::stub(&spec(port), backend.clone() as Arc<dyn StubTransport>);
    builder.add_group(BackendGroup::new(id.into(), Strategy::RoundRobin, Timeouts::default(), vec![(ep, 1)]))
}

/// Test builder: a catch-all entry to `group` with `filters`.
fn catch_all(group: Arc<BackendGroup>, filters: Vec<Filter>) -> RouteEntry {
    RouteEntry { filters, ..RouteEntry::new("r", None, PathRule::new("/", PathType::Prefix).unwrap(), group) }
}

/// A table of one entry to one backend.
fn one_entry(backend: &Arc<Scripted>, entry: impl FnOnce(Arc<BackendGroup>) -> RouteEntry) -> Shared {
    let mut builder = RouteTableBuilder::new(CertSet::default());
    let group = group_of(&mut builder, "g", backend, 8200);
    builder.add_entry(entry(group)).unwrap();
    shared(builder.build(1))
}

fn get_with(path: &str, headers: &[(&str, &str)]) -> Request<ProxyBody> {
    let mut req = Request::builder().uri(format!("https://shop.example{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(empty()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn header_matches_and_methods_pick_among_entries_of_one_path() {
    let (plain, canary, writes) = (
        Scripted::new("plain", &[Act::Status(200)]),
        Scripted::new("canary", &[Act::Status(200)]),
        Scripted::new("writes", &[Act::Status(200)]),
    );
    let mut builder = RouteTableBuilder::new(CertSet::default());
    let path = || PathRule::new("/", PathType::Prefix).unwrap();
    let g = group_of(&mut builder, "plain", &plain, 8210);
    builder.add_entry(RouteEntry::new("plain", None, path(), g)).unwrap();
    let g = group_of(&mut builder, "canary", &canary, 8211);
    let m = RequestMatch::new().with_header("X-Canary", ValueMatch::regex("yes|true").unwrap()).unwrap();
    builder.add_entry(RouteEntry { matcher: Some(m), ..RouteEntry::new("canary", None, path(), g) }).unwrap();
    let g = group_of(&mut builder, "writes", &writes, 8212);
    let m = RequestMatch::new().with_method("POST").unwrap();
    builder.add_entry(RouteEntry { matcher: Some(m), ..RouteEntry::new("writes", None, path(), g) }).unwrap();
    let tables = shared(builder.build(1));

    assert_eq!(body_text(handle(&tables, get_with("/x", &[]), conn(false)).await).await, "from plain");
    assert_eq!(
        body_text(handle(&tables, get_with("/x", &[("x-canary", "true")]), conn(false)).await).await,
        "from canary"
    );
    assert_eq!(
        body_text(handle(&tables, get_with("/x", &[("x-canary", "nope")]), conn(false)).await).await,
        "from plain"
    );
    let post = handle(&tables, request(Method::POST, full("x")), conn(false)).await;
    assert_eq!(body_text(post).await, "from writes");
}

#[tokio::test(start_paused = true)]
async fn weighted_backends_split_requests_and_unresolved_shares_get_500() {
    let (a, b) = (Scripted::new("a", &[Act::Status(200)]), Scripted::new("b", &[Act::Status(200)]));
    let mut builder = RouteTableBuilder::new(CertSet::default());
    let (ga, gb) = (group_of(&mut builder, "a", &a, 8220), group_of(&mut builder, "b", &b, 8221));
    let split = WeightedBackends::new(vec![(Some(ga.clone()), 3), (Some(gb), 1), (Some(ga.clone()), 0)]);
    builder
        .add_entry(RouteEntry::split("split", None, PathRule::new("/split", PathType::Prefix).unwrap(), split))
        .unwrap();
    let broken = WeightedBackends::new(vec![(Some(ga), 1), (None, 1)]);
    builder
        .add_entry(RouteEntry::split("half", None, PathRule::new("/half", PathType::Prefix).unwrap(), broken))
        .unwrap();
    let none = WeightedBackends::new(vec![]);
    builder
        .add_entry(RouteEntry::split("none", None, PathRule::new("/none", PathType::Prefix).unwrap(), none))
        .unwrap();
    let tables = shared(builder.build(1));

    for _ in 0..400 {
        assert_eq!(handle(&tables, get("/split"), conn(false)).await.status(), 200);
    }
    assert_eq!(a.calls() + b.calls(), 400);
    assert!((270..330).contains(&a.calls()), "3:1 split, a got {}", a.calls());

    let before = a.calls();
    let mut errors = 0;
    for _ in 0..200 {
        if handle(&tables, get("/half"), conn(false)).await.status() == 500 {
            errors += 1;
        }
    }
    assert!((70..130).contains(&errors), "the unresolved half answers 500: {errors}");
    assert_eq!(a.calls() - before + errors, 200);
    assert_eq!(handle(&tables, get("/none"), conn(false)).await.status(), 500);
}

#[tokio::test(start_paused = true)]
async fn header_modifiers_change_what_the_backend_and_the_client_see() {
    let a = Scripted::new("a", &[Act::Status(200)]);
    let request_side = HeaderModifier::new()
        .with_set("x-env", "prod")
        .unwrap()
        .with_add("x-tag", "proxy")
        .unwrap()
        .with_remove("x-secret")
        .unwrap();
    let response_side = HeaderModifier::new().with_set("x-served-by", "quic-ingress").unwrap();
    let tables = one_entry(&a, |g| {
        catch_all(g, vec![Filter::RequestHeaders(request_side), Filter::ResponseHeaders(response_side)])
    });
    let resp =
        handle(&tables, get_with("/", &[("x-env", "dev"), ("x-tag", "client"), ("x-secret", "s")]), conn(false)).await;
    assert_eq!(resp.headers()["x-served-by"], "quic-ingress");
    let seen = a.seen.lock().unwrap();
    let h = seen[0].headers();
    assert_eq!(h["x-env"], "prod");
    assert_eq!(h.get_all("x-tag").iter().collect::<Vec<_>>(), ["client", "proxy"]);
    assert!(!h.contains_key("x-secret"));
}

#[tokio::test(start_paused = true)]
async fn a_redirect_answers_without_a_backend() {
    let a = Scripted::new("a", &[Act::Status(200)]);
    let redirect = Redirect::new()
        .with_scheme("https")
        .unwrap()
        .with_hostname("new.example")
        .unwrap()
        .with_status(301)
        .unwrap()
        .with_path(PathModifier::prefix("/v2").unwrap());
    let tables = one_entry(&a, |g| RouteEntry {
        filters: vec![Filter::Redirect(redirect)],
        ..RouteEntry::new("r", None, PathRule::new("/v1", PathType::Prefix).unwrap(), g)
    });
    let resp = handle(&tables, get("/v1/items?page=2"), conn(false)).await;
    assert_eq!(resp.status(), 301);
    assert_eq!(resp.headers()["location"], "https://new.example/v2/items?page=2");
    assert_eq!(a.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_rewrite_changes_the_path_and_host_the_backend_sees() {
    let a = Scripted::new("a", &[Act::Status(200)]);
    let rewrite =
        Rewrite::new().with_hostname("internal.example").unwrap().with_path(PathModifier::prefix("/").unwrap());
    let tables = one_entry(&a, |g| RouteEntry {
        filters: vec![Filter::Rewrite(rewrite)],
        ..RouteEntry::new("r", None, PathRule::new("/shop/", PathType::Prefix).unwrap(), g)
    });
    assert_eq!(handle(&tables, get("/shop/cart?x=1"), conn(false)).await.status(), 200);
    assert_eq!(handle(&tables, get("/shop"), conn(false)).await.status(), 200);
    let seen = a.seen.lock().unwrap();
    assert_eq!(seen[0].uri().path_and_query().unwrap().as_str(), "/cart?x=1");
    assert_eq!(seen[1].uri().path(), "/");
    assert_eq!(seen[0].headers()["host"], "internal.example");
    assert_eq!(seen[0].headers()["x-forwarded-host"], "shop.example", "the client's host is kept there");
}

#[tokio::test(start_paused = true)]
async fn cors_preflights_are_answered_here_and_responses_get_the_headers() {
    let a = Scripted::new("a", &[Act::Status(200)]);
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cors = Cors::new(&s(&["https://*.shop.example"]), &s(&["GET", "POST"]), &s(&["x-token"]), &[], Some(60), false)
        .unwrap();
    let tables = one_entry(&a, |g| catch_all(g, vec![Filter::Cors(Arc::new(cors))]));
    let preflight = Request::builder()
        .method(Method::OPTIONS)
        .uri("https://api.example/cart")
        .header("origin", "https://www.shop.example")
        .header("access-control-request-method", "POST")
        .body(empty())
        .unwrap();
    let resp = handle(&tables, preflight, conn(false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://www.shop.example");
    assert_eq!(resp.headers()["access-control-allow-methods"], "GET, POST");
    assert_eq!(resp.headers()["access-control-max-age"], "60");
    assert_eq!(a.calls(), 0, "a preflight never reaches the backend");

    let resp = handle(&tables, get_with("/cart", &[("origin", "https://www.shop.example")]), conn(false)).await;
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://www.shop.example");
    let resp = handle(&tables, get_with("/cart", &[("origin", "https://evil.example")]), conn(false)).await;
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test(start_paused = true)]
async fn mirrors_get_a_copy_of_bodiless_requests_and_the_client_does_not_wait() {
    let (a, shadow) = (Scripted::new("a", &[Act::Status(200)]), Scripted::new("shadow", &[Act::Stall]));
    let mut builder = RouteTableBuilder::new(CertSet::default());
    let g = group_of(&mut builder, "a", &a, 8230);
    let m = group_of(&mut builder, "shadow", &shadow, 8231);
    builder.add_entry(catch_all(g, vec![Filter::Mirror(Arc::new(Mirror::new(m, 100).unwrap()))])).unwrap();
    let tables = shared(builder.build(1));
    let started = tokio::time::Instant::now();
    assert_eq!(handle(&tables, get("/items"), conn(false)).await.status(), 200);
    assert_eq!(started.elapsed(), Duration::ZERO, "the mirror never answers, and nobody waits for it");
    assert_eq!(handle(&tables, request(Method::POST, full("order")), conn(false)).await.status(), 200);
    // The copy runs on its own task: let it reach the backend.
    for _ in 0..100 {
        if shadow.calls() > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(shadow.calls(), 1, "the GET is mirrored, the POST with a body is not");
    assert_eq!(shadow.seen.lock().unwrap()[0].uri().path(), "/items");
    assert_eq!(a.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn route_timeouts_bound_each_attempt_and_the_whole_request() {
    let a = Scripted::new("a", &[Act::Stall]);
    let tables = one_entry(&a, |g| RouteEntry {
        timeouts: RouteTimeouts { backend_request: Some(Duration::from_secs(1)), request: None },
        ..catch_all(g, vec![])
    });
    let started = tokio::time::Instant::now();
    assert_eq!(handle(&tables, get("/"), conn(false)).await.status(), 504);
    assert_eq!(started.elapsed(), Duration::from_secs(1), "the route's per-attempt timeout, not the group's 60 s");

    let b = Scripted::new("b", &[Act::Slow(5000)]);
    let tables = one_entry(&b, |g| RouteEntry {
        timeouts: RouteTimeouts { request: Some(Duration::from_secs(2)), backend_request: None },
        ..catch_all(g, vec![])
    });
    let started = tokio::time::Instant::now();
    assert_eq!(handle(&tables, get("/"), conn(false)).await.status(), 504);
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn listener_scopes_split_the_tls_and_plaintext_listeners() {
    let (https, http) = (Scripted::new("https", &[Act::Status(200)]), Scripted::new("http", &[Act::Status(200)]));
    let mut builder = RouteTableBuilder::new(CertSet::default());
    let g = group_of(&mut builder, "https", &https, 8240);
    builder.add_entry(RouteEntry { scope: ListenerScope::Tls, ..catch_all(g, vec![]) }).unwrap();
    let g = group_of(&mut builder, "http", &http, 8241);
    let to_https = Redirect::new().with_scheme("https").unwrap().with_status(301).unwrap();
    let entry = RouteEntry { scope: ListenerScope::Plain, ..catch_all(g, vec![Filter::Redirect(to_https)]) };
    builder.add_entry(entry).unwrap();
    let tables = shared(builder.build(1));
    let plain = ConnInfo { protocol: Downstream::Cleartext, ..conn(false) };

    assert_eq!(body_text(handle(&tables, get("/x"), conn(false)).await).await, "from https");
    let resp = handle(&tables, get_with("/x?y=1", &[]), plain).await;
    assert_eq!(resp.status(), 301);
    assert_eq!(resp.headers()["location"], "https://shop.example/x?y=1", "the HTTP listener's own route");
    assert_eq!(https.calls() + http.calls(), 1);
    // A route for the HTTP listener only is not served over TLS.
    let a = Scripted::new("a", &[Act::Status(200)]);
    let tables = one_entry(&a, |g| RouteEntry { scope: ListenerScope::Plain, ..catch_all(g, vec![]) });
    assert_eq!(handle(&tables, get("/"), conn(false)).await.status(), 404);
    assert_eq!(handle(&tables, get("/"), plain).await.status(), 200);
}
