//! GRPCRoute translation and status with the Gateway API builders: method matches as
//! paths, h2c backends, ReferenceGrants naming GRPCRoute, listener kinds, and the spec's
//! HTTPRoute/GRPCRoute hostname conflict.

use super::*;
use crate::kube::gateway::api::GRPCRoute;

fn grpc_route(ns: &str, name: &str, age: i64, spec: Value) -> Arc<GRPCRoute> {
    obj(Some(ns), name, age, "GRPCRoute", spec)
}

/// A GRPCRoute on `hosts` with one rule of `matches` to Service `svc` port 80.
fn simple_grpc(ns: &str, name: &str, age: i64, hosts: &[&str], matches: Value, svc: &str) -> Arc<GRPCRoute> {
    grpc_route(
        ns,
        name,
        age,
        json!({
            "parentRefs": [{"name": "gw", "namespace": "infra"}],
            "hostnames": hosts,
            "rules": [{"matches": matches, "backendRefs": [{"name": svc, "port": 80}]}],
        }),
    )
}

const A_WEB_H2C: &str = "h2c://10.1.0.1:8080";

#[test]
fn a_grpcroute_routes_its_methods_to_h2c_endpoints_whatever_the_appprotocol() {
    let mut w = gw_world();
    let exact = json!([{"method": {"service": "echo.Echo", "method": "Say"}},
                       {"method": {"service": "grpc.health.v1.Health"}}]);
    w.gateway.grpc_routes = vec![simple_grpc("a", "echo", 50, &["grpc.example.com"], exact, "web")];
    // The same Service through an HTTPRoute keeps its appProtocol (unset: HTTP/1.1).
    w.gateway.routes = vec![simple_route("a", "shop", 60, &["shop.example.com"], "/", "web")];
    let t = run(&w);
    assert_eq!(endpoints_for(&t, "grpc.example.com", "/echo.Echo/Say"), Some(vec![A_WEB_H2C.to_string()]));
    assert_eq!(endpoints_for(&t, "grpc.example.com", "/echo.Echo/Other"), None, "exact method");
    assert_eq!(
        endpoints_for(&t, "grpc.example.com", "/grpc.health.v1.Health/Watch"),
        Some(vec![A_WEB_H2C.to_string()]),
        "every method of a service"
    );
    assert_eq!(endpoints_for(&t, "grpc.example.com", "/grpc.health.v1.HealthX/Check"), None);
    assert_eq!(endpoints_for(&t, "shop.example.com", "/"), Some(vec![A_WEB.to_string()]));
    let conditions = route_parent(&t.gateway, "echo");
    assert_eq!(cond(&conditions, "Accepted"), pair("True", "Accepted"));
    assert_eq!(cond(&conditions, "ResolvedRefs"), pair("True", "ResolvedRefs"));
    let status = gateway_status(&t.gateway, 0, &[], &Default::default());
    let kinds: Vec<&str> = status.listeners[0].supported_kinds.iter().map(|k| k.kind.as_str()).collect();
    assert_eq!(kinds, ["HTTPRoute", "GRPCRoute"]);
    assert_eq!(status.listeners[0].attached_routes, 2);
}

#[test]
fn a_method_of_any_service_and_header_matches_are_served_as_regex_paths_and_header_matches() {
    let mut w = gw_world();
    let matches = json!([{"method": {"method": "Say"}},
                         {"method": {"service": "echo.Echo"}, "headers": [{"name": "x-version", "value": "2"}]}]);
    w.gateway.grpc_routes = vec![simple_grpc("a", "echo", 50, &["grpc.example.com"], matches, "web")];
    let t = run(&w);
    assert_eq!(cond(&route_parent(&t.gateway, "echo"), "Accepted"), pair("True", "Accepted"));
    // `Say` of any service: one path segment, then the method.
    for (path, routed) in
        [("/echo.Echo/Say", true), ("/other.Svc/Say", true), ("/a/b/Say", false), ("/x/SayMore", false)]
    {
        let found = endpoints_for(&t, "grpc.example.com", path);
        assert_eq!(found.is_some(), routed, "{path}: {found:?}");
    }
    // The service match carries its header match: only calls with x-version: 2.
    assert_eq!(endpoints_for(&t, "grpc.example.com", "/echo.Echo/Other"), None, "no x-version header");
    let mut headers = http::HeaderMap::new();
    headers.insert("x-version", http::HeaderValue::from_static("2"));
    let view = crate::routes::RequestView {
        host: Some("grpc.example.com"),
        path_and_query: "/echo.Echo/Other",
        method: &http::Method::POST,
        headers: &headers,
        listener: crate::routes::Listener::Tls,
    };
    assert!(t.table.route_for(&view).is_some(), "x-version: 2 is routed");
}

#[test]
fn filters_a_grpcroute_may_not_use_are_refused_by_name() {
    let mut w = gw_world();
    w.gateway.grpc_routes = vec![grpc_route(
        "a",
        "echo",
        50,
        json!({"parentRefs": [{"name": "gw", "namespace": "infra"}], "hostnames": ["grpc.example.com"],
               "rules": [{"filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "x.example.com"}}],
                          "backendRefs": [{"name": "web", "port": 80}]}]}),
    )];
    let t = run(&w);
    let conditions = route_parent(&t.gateway, "echo");
    assert_eq!(cond(&conditions, "Accepted"), pair("False", "UnsupportedValue"));
    let message = &conditions.iter().find(|c| c.type_ == "Accepted").unwrap().message;
    assert!(message.contains("URLRewrite (not a GRPCRoute filter)"), "{message}");
    assert_eq!(endpoints_for(&t, "grpc.example.com", "/a.B/C"), None);
}

#[test]
fn a_cross_namespace_grpc_backend_needs_a_grant_from_grpcroute() {
    let mut w = gw_world();
    let route = |svc_ns: &str| {
        grpc_route(
            "a",
            "echo",
            50,
            json!({"parentRefs": [{"name": "gw", "namespace": "infra"}], "hostnames": ["grpc.example.com"],
                   "rules": [{"backendRefs": [{"name": "web", "namespace": svc_ns, "port": 80}]}]}),
        )
    };
    w.gateway.grpc_routes = vec![route("b")];
    // A grant for HTTPRoutes does not admit a GRPCRoute.
    w.gateway.grants = vec![grant("b", "HTTPRoute", "a", "Service")];
    let t = run(&w);
    assert_eq!(cond(&route_parent(&t.gateway, "echo"), "ResolvedRefs"), pair("False", "RefNotPermitted"));
    w.gateway.grants = vec![grant("b", "GRPCRoute", "a", "Service")];
    let t = run(&w);
    assert_eq!(cond(&route_parent(&t.gateway, "echo"), "ResolvedRefs"), pair("True", "ResolvedRefs"));
    assert_eq!(endpoints_for(&t, "grpc.example.com", "/any.Service/Call"), Some(vec!["h2c://10.2.0.1:8080".into()]));
}

#[test]
fn listeners_that_list_only_httproute_do_not_take_grpcroutes() {
    let mut w = gw_world();
    let mut l = https("https", PORT, None, json!({"name": "cert"}));
    l["allowedRoutes"] = json!({"namespaces": {"from": "All"}, "kinds": [{"kind": "HTTPRoute"}]});
    w.gateway.gateways = vec![gw("infra", "gw", json!([l]))];
    w.gateway.grpc_routes = vec![simple_grpc("a", "echo", 50, &["grpc.example.com"], json!([]), "web")];
    let t = run(&w);
    assert_eq!(cond(&route_parent(&t.gateway, "echo"), "Accepted"), pair("False", "NotAllowedByListeners"));
    assert_eq!(endpoints_for(&t, "grpc.example.com", "/"), None);
}

#[test]
fn an_httproute_and_a_grpcroute_sharing_a_hostname_on_a_listener_leave_only_the_older() {
    let mut w = gw_world();
    w.gateway.routes = vec![
        simple_route("a", "web-old", 70, &["shop.example.com"], "/", "web"),
        simple_route("a", "web-new", 50, &["other.example.com"], "/", "web"),
    ];
    w.gateway.grpc_routes = vec![
        simple_grpc("a", "grpc-new", 60, &["*.example.com"], json!([]), "web"),
        simple_grpc("a", "grpc-old", 80, &["other.example.com"], json!([]), "web"),
    ];
    let t = run(&w);
    // Ages in seconds: grpc-old (80) is the oldest, so web-new (50) loses
    // other.example.com to it; web-old (70) keeps shop.example.com, which grpc-new (60)
    // shares through its wildcard.
    assert_eq!(cond(&route_parent(&t.gateway, "grpc-old"), "Accepted"), pair("True", "Accepted"));
    assert_eq!(cond(&route_parent(&t.gateway, "web-old"), "Accepted"), pair("True", "Accepted"));
    for loser in ["web-new", "grpc-new"] {
        let conditions = route_parent(&t.gateway, loser);
        assert_eq!(cond(&conditions, "Accepted"), pair("False", "NotAllowedByListeners"), "{loser}");
    }
    let message = &route_parent(&t.gateway, "web-new").into_iter().find(|c| c.type_ == "Accepted").unwrap().message;
    assert!(message.contains("GRPCRoute a/grpc-old"), "{message}");
    assert_eq!(endpoints_for(&t, "other.example.com", "/x.Y/Z"), Some(vec![A_WEB_H2C.to_string()]));
    assert_eq!(endpoints_for(&t, "shop.example.com", "/"), Some(vec![A_WEB.to_string()]));
    let status = gateway_status(&t.gateway, 0, &[], &Default::default());
    assert_eq!(status.listeners[0].attached_routes, 2, "the refused ones are not attached");
}
