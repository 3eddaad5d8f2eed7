//! Gateway API translation and status, tested with object builders: listeners, references
//! and grants, attachment, the table mapping, precedence with Ingresses, and status.

use serde_json::{Value, json};

use super::*;
use crate::kube::gateway::addresses::scope_name;
use crate::kube::gateway::api::{Gateway, GatewayClass, HTTPRoute, ReferenceGrant};
use crate::kube::gateway::model::GATEWAY_CONTROLLER_NAME;
use crate::kube::gateway::status::{SUPPORTED_FEATURES, class_status, comparable, gateway_status, route_parents};
use crate::kube::gateway::{GatewayTranslation, ServedPorts};

const PORT: u16 = 443;

pub(super) fn obj<T: serde::de::DeserializeOwned>(
    ns: Option<&str>,
    name: &str,
    age: i64,
    kind: &str,
    spec: Value,
) -> Arc<T> {
    let mut m = serde_json::to_value(meta(ns.unwrap_or(""), name, age)).unwrap();
    if ns.is_none() {
        m.as_object_mut().unwrap().remove("namespace");
    }
    let v = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": kind, "metadata": m, "spec": spec});
    Arc::new(serde_json::from_value(v).unwrap())
}

pub(super) fn class(name: &str, controller: &str) -> Arc<GatewayClass> {
    obj(None, name, 1000, "GatewayClass", json!({"controllerName": controller}))
}

pub(super) fn gw(ns: &str, name: &str, listeners: Value) -> Arc<Gateway> {
    obj(Some(ns), name, 900, "Gateway", json!({"gatewayClassName": "quic", "listeners": listeners}))
}

pub(super) fn https(name: &str, port: u16, hostname: Option<&str>, cert: Value) -> Value {
    let mut l = json!({"name": name, "port": port, "protocol": "HTTPS", "tls": {"certificateRefs": [cert]}});
    if let Some(h) = hostname {
        l["hostname"] = json!(h);
    }
    l
}

pub(super) fn route(ns: &str, name: &str, age: i64, spec: Value) -> Arc<HTTPRoute> {
    obj(Some(ns), name, age, "HTTPRoute", spec)
}

/// A route of one PathPrefix rule on `hosts` to Service `svc` port 80.
fn simple_route(ns: &str, name: &str, age: i64, hosts: &[&str], path: &str, svc: &str) -> Arc<HTTPRoute> {
    route(
        ns,
        name,
        age,
        json!({
            "parentRefs": [{"name": "gw", "namespace": "infra"}],
            "hostnames": hosts,
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": path}}],
                       "backendRefs": [{"name": svc, "port": 80}]}],
        }),
    )
}

fn grant(ns: &str, from_kind: &str, from_ns: &str, to_kind: &str) -> Arc<ReferenceGrant> {
    obj(
        Some(ns),
        "grant",
        100,
        "ReferenceGrant",
        json!({"from": [{"group": "gateway.networking.k8s.io", "kind": from_kind, "namespace": from_ns}],
               "to": [{"group": "", "kind": to_kind}]}),
    )
}

pub(super) fn gw_settings() -> Settings {
    let mut s = Settings::new("quic");
    s.gateway_ports = ServedPorts { https: Some(PORT), http: None };
    s
}

/// Namespaces `a` and `b` with Services `web` (see `tenants_world`), our class `quic`, and
/// Gateway `infra/gw` with an HTTPS listener for every host admitting every namespace.
fn gw_world() -> World {
    let mut w = tenants_world();
    w.secrets = vec![tls_secret("infra", "cert", "shop.example.com")];
    w.gateway.classes = vec![class("quic", GATEWAY_CONTROLLER_NAME), class("other", "example.com/other")];
    let mut l = https("https", PORT, None, json!({"name": "cert"}));
    l["allowedRoutes"] = json!({"namespaces": {"from": "All"}});
    w.gateway.gateways = vec![gw("infra", "gw", json!([l]))];
    w
}

fn run(w: &World) -> Translation {
    run_with(w, &gw_settings())
}

fn route_parent(t: &GatewayTranslation, name: &str) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let i = t.model.routes.iter().position(|r| r.key.name == name).expect("route in model");
    route_parents(&t.model.routes[i], &t.outcomes[i], &Default::default()).remove(0).conditions
}

fn cond(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition], t: &str) -> (String, String) {
    let c = conditions.iter().find(|c| c.type_ == t).unwrap_or_else(|| panic!("no {t} in {conditions:?}"));
    (c.status.clone(), c.reason.clone())
}

fn pair(s: &str, r: &str) -> (String, String) {
    (s.to_string(), r.to_string())
}

#[test]
fn only_our_classes_are_accepted_and_list_the_features_we_serve() {
    let t = run(&gw_world());
    assert_eq!(t.gateway.model.classes.len(), 1, "the other controller's class is not ours");
    let status = class_status(&t.gateway.model.classes[0].key, None, &[]);
    assert_eq!(cond(&status.conditions, "Accepted"), pair("True", "Accepted"));
    assert_eq!(status.conditions[0].observed_generation, Some(1));
    let names: Vec<&str> = status.supported_features.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, SUPPORTED_FEATURES);
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "the spec wants them sorted");
}

#[test]
fn an_httproute_on_an_https_listener_is_routed_with_the_listeners_certificate() {
    let mut w = gw_world();
    w.gateway.routes = vec![simple_route("a", "shop", 50, &["shop.example.com"], "/app", "web")];
    let t = run(&w);
    assert_eq!(endpoints_for(&t, "shop.example.com", "/app/x"), Some(vec![A_WEB.to_string()]));
    assert_eq!(endpoints_for(&t, "shop.example.com", "/application"), None, "element-wise prefix");
    assert_eq!(endpoints_for(&t, "other.example.com", "/app"), None);
    assert!(t.table.certs.hosts().any(|h| h == "shop.example.com"), "the listener's certificate serves the host");
    let conditions = route_parent(&t.gateway, "shop");
    assert_eq!(cond(&conditions, "Accepted"), pair("True", "Accepted"));
    assert_eq!(cond(&conditions, "ResolvedRefs"), pair("True", "ResolvedRefs"));
    let status = gateway_status(&t.gateway, 0, &["192.0.2.10".into()], &Default::default());
    assert_eq!(status.listeners[0].attached_routes, 1);
    assert_eq!(cond(&status.listeners[0].conditions, "Programmed"), pair("True", "Programmed"));
    assert_eq!(cond(&status.conditions, "Accepted"), pair("True", "Accepted"));
    assert_eq!(status.addresses[0].type_.as_deref(), Some("IPAddress"));
}

#[test]
fn listeners_are_programmed_only_on_the_ports_and_protocols_we_serve() {
    let mut w = gw_world();
    let cert = json!({"name": "cert"});
    w.gateway.gateways = vec![gw(
        "infra",
        "gw",
        json!([
            https("ok", PORT, Some("a.example.com"), cert.clone()),
            https("wrong-port", 8443, Some("b.example.com"), cert.clone()),
            {"name": "plain", "port": 80, "protocol": "HTTP"},
            {"name": "tcp", "port": 9000, "protocol": "TCP"},
            https("no-secret", PORT, Some("c.example.com"), json!({"name": "missing"})),
            https("dup", PORT, Some("a.example.com"), cert),
        ]),
    )];
    let t = run(&w);
    let status = gateway_status(&t.gateway, 0, &[], &Default::default());
    let l = |name: &str, t: &str| {
        let ls = status.listeners.iter().find(|l| l.name == name).unwrap();
        cond(&ls.conditions, t)
    };
    assert_eq!(l("ok", "Conflicted"), pair("True", "HostnameConflict"), "same port and hostname as dup");
    assert_eq!(l("ok", "Programmed"), pair("False", "Invalid"));
    assert_eq!(l("wrong-port", "Accepted"), pair("False", "PortUnavailable"));
    assert_eq!(l("plain", "Accepted"), pair("False", "PortUnavailable"), "no plaintext listener on this branch");
    assert_eq!(l("plain", "Conflicted"), pair("False", "NoConflicts"));
    assert_eq!(l("tcp", "Accepted"), pair("False", "UnsupportedProtocol"));
    assert_eq!(l("no-secret", "ResolvedRefs"), pair("False", "InvalidCertificateRef"));
    assert_eq!(l("no-secret", "Programmed"), pair("False", "Invalid"));
    assert_eq!(cond(&status.conditions, "Accepted"), pair("True", "ListenersNotValid"));
    assert_eq!(cond(&status.conditions, "Programmed"), pair("False", "Invalid"), "no listener is programmed");
}

#[test]
fn a_certificate_in_another_namespace_needs_a_reference_grant() {
    let mut w = gw_world();
    w.secrets = vec![tls_secret("certs", "shared", "shop.example.com")];
    let mut l = https("https", PORT, None, json!({"name": "shared", "namespace": "certs"}));
    l["allowedRoutes"] = json!({"namespaces": {"from": "All"}});
    w.gateway.gateways = vec![gw("infra", "gw", json!([l]))];
    w.gateway.routes = vec![simple_route("a", "shop", 50, &["shop.example.com"], "/", "web")];
    let t = run(&w);
    let listener = &t.gateway.model.gateways[0].listeners[0];
    assert_eq!(listener.resolved.as_ref().unwrap_err().0, "RefNotPermitted");
    assert_eq!(endpoints_for(&t, "shop.example.com", "/"), None, "an unprogrammed listener routes nothing");
    // A grant for HTTPRoutes does not do; one for Gateways of infra does.
    w.gateway.grants = vec![grant("certs", "HTTPRoute", "infra", "Secret")];
    assert!(run(&w).gateway.model.gateways[0].listeners[0].resolved.is_err());
    w.gateway.grants = vec![grant("certs", "Gateway", "infra", "Secret")];
    let t = run(&w);
    assert!(t.gateway.model.gateways[0].listeners[0].resolved.is_ok());
    assert_eq!(endpoints_for(&t, "shop.example.com", "/"), Some(vec![A_WEB.to_string()]));
}

#[test]
fn attachment_follows_section_names_allowed_routes_and_hostnames() {
    let mut w = gw_world();
    let mut same = https("same", PORT, Some("*.example.com"), json!({"name": "cert"}));
    same["allowedRoutes"] = json!({"namespaces": {"from": "Same"}});
    let mut selected = https("selected", PORT, Some("*.example.org"), json!({"name": "cert"}));
    selected["allowedRoutes"] = json!({"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "a"}}}});
    w.gateway.gateways = vec![gw("infra", "gw", json!([same, selected]))];
    let labelled = |name: &str, team: &str| {
        let mut n = k8s_openapi::api::core::v1::Namespace::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some([("team".to_string(), team.to_string())].into());
        Arc::new(n)
    };
    w.gateway.namespaces = vec![labelled("a", "a"), labelled("b", "b")];
    let on = |ns: &str, name: &str, section: &str, host: &str| {
        route(
            ns,
            name,
            50,
            json!({"parentRefs": [{"name": "gw", "namespace": "infra", "sectionName": section}], "hostnames": [host],
                   "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}),
        )
    };
    w.gateway.routes = vec![
        on("a", "not-same", "same", "x.example.com"),
        on("a", "selected", "selected", "x.example.org"),
        on("b", "not-selected", "selected", "x.example.org"),
        on("a", "no-such-section", "nope", "x.example.org"),
        on("a", "wrong-host", "selected", "x.example.com"),
    ];
    let t = run(&w);
    let accepted = |name: &str| cond(&route_parent(&t.gateway, name), "Accepted");
    assert_eq!(accepted("not-same"), pair("False", "NotAllowedByListeners"));
    assert_eq!(accepted("selected"), pair("True", "Accepted"));
    assert_eq!(accepted("not-selected"), pair("False", "NotAllowedByListeners"));
    assert_eq!(accepted("no-such-section"), pair("False", "NoMatchingParent"));
    assert_eq!(accepted("wrong-host"), pair("False", "NoMatchingListenerHostname"));
    assert_eq!(endpoints_for(&t, "x.example.org", "/"), Some(vec![A_WEB.to_string()]));
    let status = gateway_status(&t.gateway, 0, &[], &Default::default());
    assert_eq!(status.listeners[1].attached_routes, 1, "only the selected route attaches");
}

#[test]
fn matches_splits_and_filters_are_served_and_what_cannot_be_is_refused_by_name() {
    let mut w = gw_world();
    w.gateway.routes = vec![route(
        "a",
        "mixed",
        50,
        json!({
            "parentRefs": [{"name": "gw", "namespace": "infra"}],
            "hostnames": ["shop.example.com"],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/ok"}}], "backendRefs": [{"name": "web", "port": 80}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/h"}, "headers": [{"name": "x", "value": "1"}]}],
                 "backendRefs": [{"name": "web", "port": 80}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/split"}}],
                 "backendRefs": [{"name": "web", "port": 80, "weight": 90}, {"name": "web", "port": 80, "weight": 10}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/f"}}],
                 "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "a", "value": "b"}]}}],
                 "backendRefs": [{"name": "web", "port": 80}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/ext"}}],
                 "filters": [{"type": "ExtensionRef", "extensionRef": {"group": "x.example", "kind": "Thing", "name": "t"}}],
                 "backendRefs": [{"name": "web", "port": 80}]},
                {"matches": [{"path": {"type": "RegularExpression", "value": "/re(("}}],
                 "backendRefs": [{"name": "web", "port": 80}]},
            ],
        }),
    )];
    let t = run(&w);
    for path in ["/ok", "/split", "/f"] {
        assert_eq!(endpoints_for(&t, "shop.example.com", path), Some(vec![A_WEB.to_string()]), "{path}");
    }
    // The header match is served, to requests that carry the header only.
    assert_eq!(endpoints_for(&t, "shop.example.com", "/h"), None, "no x: 1 header");
    let mut headers = http::HeaderMap::new();
    headers.insert("x", http::HeaderValue::from_static("1"));
    let view = crate::routes::RequestView {
        host: Some("shop.example.com"),
        path_and_query: "/h",
        method: &http::Method::GET,
        headers: &headers,
        listener: crate::routes::Listener::Tls,
    };
    assert!(t.table.route_for(&view).is_some(), "x: 1 is routed");
    let filtered = t.table.lookup(Some("shop.example.com"), "/f").unwrap();
    assert_eq!(filtered.filters.len(), 1, "the header modifier is compiled into the route");
    for path in ["/ext", "/re"] {
        assert_eq!(endpoints_for(&t, "shop.example.com", path), None, "{path} must not be served approximately");
    }
    let conditions = route_parent(&t.gateway, "mixed");
    assert_eq!(cond(&conditions, "Accepted"), pair("True", "Accepted"));
    let partial = conditions.iter().find(|c| c.type_ == "PartiallyInvalid").expect("PartiallyInvalid");
    assert!(partial.message.starts_with("Dropped Rule(s): Rule 4: needs filter ExtensionRef"), "{}", partial.message);
    assert!(partial.message.contains("Rule 5: "), "{}", partial.message);
}

#[test]
fn unresolved_backend_refs_are_resolved_refs_false_and_answered_by_no_one_else() {
    let mut w = gw_world();
    w.gateway.routes = vec![route(
        "a",
        "refs",
        50,
        json!({
            "parentRefs": [{"name": "gw", "namespace": "infra"}],
            "hostnames": ["shop.example.com"],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/gone"}}], "backendRefs": [{"name": "gone", "port": 80}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/theirs"}}],
                 "backendRefs": [{"name": "web", "namespace": "b", "port": 80}]},
                {"backendRefs": [{"name": "web", "port": 80}]},
            ],
        }),
    )];
    let t = run(&w);
    let conditions = route_parent(&t.gateway, "refs");
    assert_eq!(cond(&conditions, "ResolvedRefs"), pair("False", "BackendNotFound"));
    let message = &conditions.iter().find(|c| c.type_ == "ResolvedRefs").unwrap().message;
    assert!(message.contains("Service a/gone not found"), "{message}");
    assert!(message.contains("no ReferenceGrant"), "{message}");
    // Both claim their paths with no group (answered 500), not the catch-all rule's backend.
    assert_eq!(endpoints_for(&t, "shop.example.com", "/gone/x"), Some(vec![]));
    assert_eq!(endpoints_for(&t, "shop.example.com", "/theirs"), Some(vec![]));
    assert_eq!(endpoints_for(&t, "shop.example.com", "/else"), Some(vec![A_WEB.to_string()]));
    // With a grant in b, the cross-namespace Service resolves.
    w.gateway.grants = vec![grant("b", "HTTPRoute", "a", "Service")];
    let t = run(&w);
    assert_eq!(endpoints_for(&t, "shop.example.com", "/theirs"), Some(vec![B_WEB.to_string()]));
}

#[test]
fn between_an_ingress_and_an_httproute_the_oldest_wins_a_host_and_path() {
    let ingress_at = |age| {
        ingress("a", "ing").age(age).rule(Some("shop.example.com"), "/", "Prefix", svc_backend("web", 80)).build()
    };
    let mut w = gw_world();
    w.services.push(service("a", "other", &[("http", 80)]));
    w.slices.push(slice("a", "other-1", "other", "IPv4", &[("http", 8080)], &[("10.1.0.9", true)]));
    w.gateway.routes = vec![simple_route("a", "rt", 300, &["shop.example.com"], "/", "other")];

    // The route is older: it keeps "/".
    w.ingresses = vec![ingress_at(100)];
    let t = run(&w);
    assert_eq!(endpoints_for(&t, "shop.example.com", "/"), Some(vec!["http://10.1.0.9:8080".to_string()]));
    assert!(t.problems.iter().any(|p| p.kind == "Ingress" && p.reason == "RouteConflict"), "{:?}", t.problems);

    // The Ingress is older: it keeps "/", and the route says why its rule is not served.
    w.ingresses = vec![ingress_at(500)];
    let t = run(&w);
    assert_eq!(endpoints_for(&t, "shop.example.com", "/"), Some(vec![A_WEB.to_string()]));
    assert_eq!(cond(&route_parent(&t.gateway, "rt"), "Accepted"), pair("False", "RouteConflict"));

    // Another namespace's route cannot take a host an older Ingress claims (ownership).
    w.gateway.routes = vec![simple_route("b", "hijack", 10, &["shop.example.com"], "/login", "web")];
    let t = run(&w);
    assert_eq!(endpoints_for(&t, "shop.example.com", "/login"), Some(vec![A_WEB.to_string()]));
    assert_eq!(cond(&route_parent(&t.gateway, "hijack"), "Accepted"), pair("False", HOST_OWNED));
    assert!(t.problems.iter().any(|p| p.kind == "HTTPRoute" && p.reason == HOST_OWNED));
}

#[test]
fn status_comparison_ignores_condition_times_only() {
    let mut w = gw_world();
    w.gateway.routes = vec![simple_route("a", "shop", 50, &["shop.example.com"], "/", "web")];
    let t = run(&w);
    let a = gateway_status(&t.gateway, 0, &[], &Default::default());
    let mut b = a.clone();
    b.conditions[0].last_transition_time =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    assert_eq!(comparable(&a), comparable(&b));
    b.conditions[0].message = "changed".into();
    assert_ne!(comparable(&a), comparable(&b));
    let c = gateway_status(&t.gateway, 0, &["192.0.2.1".into()], &Default::default());
    assert_ne!(comparable(&a), comparable(&c));
    // A transition time is kept while the status stays.
    let again = gateway_status(&t.gateway, 0, &[], &a);
    assert_eq!(again.conditions[0].last_transition_time, a.conditions[0].last_transition_time);
}

#[test]
fn http_listener_routes_are_served_on_the_plaintext_listener_only() {
    let mut w = gw_world();
    let mut plain = json!({"name": "http", "port": 80, "protocol": "HTTP"});
    plain["allowedRoutes"] = json!({"namespaces": {"from": "All"}});
    w.gateway.gateways = vec![gw("infra", "gw", json!([plain]))];
    w.gateway.routes = vec![simple_route("a", "shop", 50, &["shop.example.com"], "/", "web")];
    let mut settings = gw_settings();
    settings.gateway_ports.http = Some(80);
    let on = |t: &Translation, listener| {
        let headers = http::HeaderMap::new();
        let view = crate::routes::RequestView {
            host: Some("shop.example.com"),
            path_and_query: "/",
            method: &http::Method::GET,
            headers: &headers,
            listener,
        };
        t.table.route_for(&view).is_some()
    };
    let t = run_with(&w, &settings);
    let status = gateway_status(&t.gateway, 0, &[], &Default::default());
    assert_eq!(cond(&status.listeners[0].conditions, "Programmed"), pair("True", "Programmed"));
    assert_eq!(cond(&route_parent(&t.gateway, "shop"), "Accepted"), pair("True", "Accepted"));
    assert!(on(&t, crate::routes::Listener::Plain), "served on the plaintext listener");
    assert!(!on(&t, crate::routes::Listener::Tls), "not on the TLS listeners");
    // --gateway-http-over-h3 (the conformance suite's HTTP/3 run): on both.
    settings.gateway_http_over_h3 = true;
    let t = run_with(&w, &settings);
    assert!(on(&t, crate::routes::Listener::Plain) && on(&t, crate::routes::Listener::Tls));
}

#[test]
fn with_per_gateway_addresses_each_gateway_serves_its_own_routes_on_its_own_ports() {
    let mut w = gw_world();
    let mut plain = json!({"name": "http", "port": 80, "protocol": "HTTP"});
    plain["allowedRoutes"] = json!({"namespaces": {"from": "All"}});
    w.gateway.gateways = vec![gw("infra", "one", json!([plain.clone()])), gw("infra", "two", json!([plain]))];
    let to = |ns: &str, name: &str, age: i64, gateway: &str| {
        route(
            ns,
            name,
            age,
            json!({"parentRefs": [{"name": gateway, "namespace": "infra"}],
                   "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}),
        )
    };
    // The same host-less `/` on both Gateways; r1 is the older (ages count back).
    w.gateway.routes = vec![to("a", "r1", 50, "one"), to("b", "r2", 40, "two")];
    let mut settings = gw_settings();
    settings.gateway_ports.http = Some(80);
    settings.host_ownership = HostOwnership::None;
    let routed = |t: &Translation, port: Option<u16>, listener| {
        let headers = http::HeaderMap::new();
        let view = crate::routes::RequestView {
            host: Some("any.example"),
            path_and_query: "/",
            method: &http::Method::GET,
            headers: &headers,
            listener,
        };
        t.table.route_on(port, &view).map(|r| r.id.clone())
    };
    let plain_listener = crate::routes::Listener::Plain;

    // Shared listeners (the default): the older route wins, the other is refused.
    let t = run_with(&w, &settings);
    assert!(t.table.scoped_ports().is_empty() && t.gateway.ports.is_empty());
    assert_eq!(routed(&t, None, plain_listener).as_deref(), Some("httproute:a/r1"));
    assert_eq!(cond(&route_parent(&t.gateway, "r2"), "Accepted"), pair("False", "RouteConflict"));

    settings.gateway_port_range = Some(crate::kube::gateway::addresses::PortRange::DEFAULT);
    let t = run_with(&w, &settings);
    let ports = &t.gateway.ports;
    assert_eq!(ports.len(), 2, "{ports:?}");
    let (one, two) = (ports[&0], ports[&1]);
    assert_ne!(one, two);
    assert_eq!(t.table.scoped_ports().len(), 4, "TLS and plaintext for each");
    assert_eq!(t.table.scoped_ports()[&one.tls].alt_svc_port, Some(PORT), "Alt-Svc names the listener port");
    assert_eq!(routed(&t, Some(one.plain), plain_listener).as_deref(), Some("httproute:a/r1"));
    assert_eq!(routed(&t, Some(two.plain), plain_listener).as_deref(), Some("httproute:b/r2"));
    assert_eq!(routed(&t, Some(one.tls), crate::routes::Listener::Tls), None, "an HTTP listener's route is plaintext");
    assert_eq!(routed(&t, None, plain_listener).as_deref(), Some("httproute:a/r1"), "the shared listener as before");
    for r in ["r1", "r2"] {
        assert_eq!(cond(&route_parent(&t.gateway, r), "Accepted"), pair("True", "Accepted"), "{r}");
    }
    // --gateway-http-over-h3: the HTTP listener's routes on the Gateway's TLS port too.
    settings.gateway_http_over_h3 = true;
    let t = run_with(&w, &settings);
    let one = t.gateway.ports[&0];
    assert_eq!(routed(&t, Some(one.tls), crate::routes::Listener::Tls).as_deref(), Some("httproute:a/r1"));
}

#[test]
fn with_per_gateway_addresses_each_gateway_answers_with_its_own_certificate_for_a_shared_name() {
    let mut w = gw_world();
    w.secrets =
        vec![tls_secret("infra", "cert-one", "shop.example.com"), tls_secret("infra", "cert-two", "shop.example.com")];
    let listener = |cert: &str| {
        let mut l = https("https", PORT, Some("shop.example.com"), json!({"name": cert}));
        l["allowedRoutes"] = json!({"namespaces": {"from": "All"}});
        l
    };
    w.gateway.gateways =
        vec![gw("infra", "one", json!([listener("cert-one")])), gw("infra", "two", json!([listener("cert-two")]))];
    let to = |ns: &str, name: &str, age: i64, gateway: &str| {
        route(
            ns,
            name,
            age,
            json!({"parentRefs": [{"name": gateway, "namespace": "infra"}], "hostnames": ["shop.example.com"],
                   "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}),
        )
    };
    w.gateway.routes = vec![to("a", "r1", 50, "one"), to("b", "r2", 40, "two")];
    let mut settings = gw_settings();
    settings.host_ownership = HostOwnership::None;
    settings.gateway_port_range = Some(crate::kube::gateway::addresses::PortRange::DEFAULT);
    let t = run_with(&w, &settings);
    assert_eq!(t.gateway.ports.len(), 2);
    let served =
        |scope: Option<&str>, sni: &str| t.table.certs_for(scope).resolve(Some(sni)).map(|k| k.cert[0].clone());
    let (one, two) = (scope_name("infra", "one"), scope_name("infra", "two"));
    let on_one = served(Some(&one), "shop.example.com").expect("Gateway one's certificate");
    let on_two = served(Some(&two), "shop.example.com").expect("Gateway two's certificate");
    assert_ne!(on_one, on_two, "each Gateway's own address answers with its own listener's certificate");
    assert_eq!(served(None, "shop.example.com"), Some(on_one.clone()), "the shared listeners: the older Gateway's");
    // A name none of a Gateway's listeners accepts gets the controller's default there, not
    // another Gateway's certificate.
    assert_eq!(served(Some(&two), "other.example.com"), served(None, "other.example.com"));
    assert_eq!(served(Some("no-such-scope"), "shop.example.com"), served(None, "unknown.example"));
}

#[path = "translate_grpc_tests.rs"]
mod grpc;

#[test]
fn an_https_listener_answers_the_names_it_accepts_with_its_certificate() {
    let mut w = gw_world();
    let mut plain = https("https", PORT, None, json!({"name": "cert"}));
    plain["allowedRoutes"] = json!({"namespaces": {"from": "All"}});
    let named = https("named", PORT, Some("*.wildcard.org"), json!({"name": "cert"}));
    w.gateway.gateways = vec![gw("infra", "gw", json!([plain, named]))];
    // No route at all: an unrouted host on the listener still gets its certificate (and 404).
    let t = run(&w);
    assert!(t.table.certs.resolve(Some("a.wildcard.org")).is_some(), "the listener's hostname");
    assert!(
        t.table.certs.resolve(Some("unknown.example")).is_none(),
        "a hostname-less listener does not replace the default certificate for every tenant"
    );
    let mut single_tenant = gw_settings();
    single_tenant.host_ownership = crate::kube::ownership::HostOwnership::None;
    let t = run_with(&w, &single_tenant);
    assert!(t.table.certs.resolve(Some("unknown.example")).is_some(), "with host ownership off it does");
}

#[path = "translate_backend_tls_tests.rs"]
mod backend_tls;

#[test]
fn a_redirect_on_an_http_listener_keeps_http_when_reached_over_quic() {
    let mut w = gw_world();
    let mut plain = json!({"name": "http", "port": 80, "protocol": "HTTP"});
    plain["allowedRoutes"] = json!({"namespaces": {"from": "All"}});
    w.gateway.gateways = vec![gw("infra", "gw", json!([plain]))];
    w.gateway.routes = vec![route(
        "a",
        "moved",
        50,
        json!({
            "parentRefs": [{"name": "gw", "namespace": "infra"}],
            "hostnames": ["shop.example.com"],
            "rules": [{"filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "new.example.com"}}]}],
        }),
    )];
    let mut settings = gw_settings();
    settings.gateway_ports.http = Some(80);
    settings.gateway_http_over_h3 = true;
    let t = run_with(&w, &settings);
    let headers = http::HeaderMap::new();
    let view = crate::routes::RequestView {
        host: Some("shop.example.com"),
        path_and_query: "/p",
        method: &http::Method::GET,
        headers: &headers,
        listener: crate::routes::Listener::Tls,
    };
    let route = t.table.route_for(&view).expect("served on the TLS listener too");
    let Some(crate::routes::Filter::Redirect(r)) = route.filters.first() else { panic!("{:?}", route.filters) };
    let over_quic = crate::routes::RequestParts {
        tls: true,
        authority: Some("shop.example.com"),
        path: "/p",
        query: None,
        matched_prefix: None,
    };
    assert_eq!(r.location(&over_quic), "http://new.example.com/p", "the HTTP listener's scheme and port");
}

/// Two installations in one cluster, as the cluster tests run them side by side: one
/// serving port 443 with the default controllerName, one serving port 8443.
fn two_installations_world() -> World {
    let mut w = gw_world();
    w.gateway.classes.push(class("edge", "example.com/edge"));
    let edge_gw = obj(
        Some("infra"),
        "edge-gw",
        900,
        "Gateway",
        json!({"gatewayClassName": "edge", "listeners": [https("https", 8443, None, json!({"name": "cert"}))]}),
    );
    w.gateway.gateways.push(edge_gw);
    let mut edge_route = (*simple_route("infra", "edge-shop", 50, &["edge.example.com"], "/", "web")).clone();
    edge_route.spec.parent_refs[0].name = "edge-gw".into();
    w.gateway.routes = vec![simple_route("a", "shop", 50, &["shop.example.com"], "/", "web"), Arc::new(edge_route)];
    w
}

#[test]
fn an_installation_takes_only_the_classes_of_its_controller_name_and_keeps_to_its_status_entries() {
    let w = two_installations_world();
    let edge_port = ServedPorts { https: Some(8443), http: None };
    // One controllerName for both (the default): the installation on 8443 takes the other's
    // Gateway too, finds its listener on a port it does not serve, and refuses the other's
    // route; its leader would write that over the other's Accepted=True (the entries share
    // a controllerName), which the cluster tests saw as a passing NotAllowedByListeners.
    let same_name = Settings { gateway_ports: edge_port, ..gw_settings() };
    let t = run_with(&w, &same_name);
    assert_eq!(cond(&route_parent(&t.gateway, "shop"), "Accepted"), pair("False", "NotAllowedByListeners"));

    // With a name of its own, each takes only its classes, Gateways and routes.
    let edge =
        Settings { gateway_ports: edge_port, gateway_controller_name: "example.com/edge".into(), ..gw_settings() };
    let t = run_with(&w, &edge);
    let names = |t: &Translation| -> (Vec<String>, Vec<String>) {
        let m = &t.gateway.model;
        (m.gateways.iter().map(|g| g.key.name.clone()).collect(), m.routes.iter().map(|r| r.key.name.clone()).collect())
    };
    assert_eq!(names(&t), (vec!["edge-gw".to_string()], vec!["edge-shop".to_string()]));
    assert_eq!(cond(&route_parent(&t.gateway, "edge-shop"), "Accepted"), pair("True", "Accepted"));
    assert!(endpoints_for(&t, "edge.example.com", "/").is_some(), "routed (to no endpoints: infra has no Service)");
    assert_eq!(endpoints_for(&t, "shop.example.com", "/"), None, "the other installation's route");
    let i = t.gateway.model.routes.iter().position(|r| r.key.name == "edge-shop").unwrap();
    let entry = route_parents(&t.gateway.model.routes[i], &t.gateway.outcomes[i], &Default::default()).remove(0);
    assert_eq!(entry.controller_name, "example.com/edge", "its status entry carries its own name");

    let t = run(&w);
    assert_eq!(names(&t), (vec!["gw".to_string()], vec!["shop".to_string()]));
    assert_eq!(cond(&route_parent(&t.gateway, "shop"), "Accepted"), pair("True", "Accepted"));
    let i = t.gateway.model.routes.iter().position(|r| r.key.name == "shop").unwrap();
    let entry = route_parents(&t.gateway.model.routes[i], &t.gateway.outcomes[i], &Default::default()).remove(0);
    assert_eq!(entry.controller_name, GATEWAY_CONTROLLER_NAME);
}
