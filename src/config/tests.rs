//! Config parsing and validation, with the error naming the field.

use super::*;

const GOOD: &str = r#"
server:
  address: "127.0.0.1:8443"
telemetry:
  admin_address: "127.0.0.1:9090"
routes:
  - id: api
    host: api.example.com
    path: "/api/*"
    backend_group: api-servers
  - id: web
    path: /
    backend_group: web
backend_groups:
  - id: api-servers
    strategy: least_connections
    backends:
      - url: "http://127.0.0.1:8001"
        weight: 100
      - url: "h2c://127.0.0.1:8002"
    health_check: {interval: 10s, timeout: 5s, path: /health}
    passive: {max_failures: 5, observation_window: 60s}
    connection_pool: {max_idle_connections: 10, max_connections_per_host: 5, idle_timeout: 90s}
  - id: web
    backends: [{url: "http://127.0.0.1:8003"}]
"#;

fn errors_of(yaml: &str) -> Vec<FieldError> {
    parse("test.yaml", yaml).unwrap().validate().unwrap_err()
}

fn fields(errors: &[FieldError]) -> Vec<&str> {
    errors.iter().map(|e| e.field.as_str()).collect()
}

#[test]
fn the_spec_example_parses_and_compiles() {
    let config = parse("test.yaml", GOOD).unwrap();
    let listen = config.validate().unwrap();
    assert_eq!(listen.address.port(), 8443);
    assert_eq!(listen.alt_svc_port, 8443);
    let g = &config.backend_groups[0];
    assert_eq!(g.strategy, Strategy::LeastConnections);
    assert_eq!(g.backends[1].weight, 1, "weight defaults to 1");
    assert_eq!(g.connection_pool.max_connections_per_host, 5);
    let table = config.compile(&EndpointRegistry::default(), CertSet::default(), 1).unwrap();
    assert_eq!(table.route_count(), 2);
    assert_eq!(table.lookup(Some("api.example.com"), "/api/v1").unwrap().id, "api");
    assert_eq!(table.lookup(Some("api.example.com"), "/apix").unwrap().id, "web");
    assert_eq!(table.lookup(Some("other"), "/api").unwrap().id, "web");
}

#[test]
fn unknown_fields_are_rejected_by_name() {
    let err =
        parse("test.yaml", &GOOD.replace("strategy: least_connections", "stratgy: least_connections")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("test.yaml") && msg.contains("stratgy"), "{msg}");
}

#[test]
fn bad_values_name_their_field() {
    let yaml = GOOD
        .replace("\"http://127.0.0.1:8001\"", "\"ftp://x\"")
        .replace("backend_group: web", "backend_group: nope")
        .replace("host: api.example.com", "host: \"bad host\"")
        .replace("\"127.0.0.1:8443\"", "\"nowhere\"");
    let errors = errors_of(&yaml);
    assert_eq!(
        fields(&errors),
        vec!["server.address", "backend_groups[0].backends[0].url", "routes[0].host", "routes[1].backend_group"],
        "{errors:?}"
    );
}

#[test]
fn bad_durations_are_parse_errors_with_the_value() {
    let err = parse("test.yaml", &GOOD.replace("interval: 10s", "interval: 10 parsecs")).unwrap_err();
    assert!(err.to_string().contains("10 parsecs"), "{err}");
}

#[test]
fn duplicates_and_conflicts_are_reported() {
    let yaml = GOOD
        .replace("id: web\n    path: /", "id: api\n    path: /")
        .replace("- id: web\n    backends", "- id: api-servers\n    backends");
    let errors = errors_of(&yaml);
    let f = fields(&errors);
    assert!(f.contains(&"backend_groups[1].id"), "{errors:?}");
    assert!(f.contains(&"routes[1].id"), "{errors:?}");

    let yaml = GOOD.replace("path: /\n", "path: /api/*\n    host: api.example.com\n");
    let errors = errors_of(&yaml);
    assert_eq!(fields(&errors), vec!["routes[1].path"], "{errors:?}");
    assert!(errors[0].message.contains("\"api\""));
}

#[test]
fn cert_and_key_go_together() {
    let yaml = GOOD.replace("address: \"127.0.0.1:8443\"", "address: \"127.0.0.1:8443\"\n  cert_file: a.pem");
    assert_eq!(fields(&errors_of(&yaml)), vec!["server.key_file"]);
}

#[test]
fn empty_groups_and_zero_limits_are_refused() {
    let yaml = GOOD.replace("backends: [{url: \"http://127.0.0.1:8003\"}]", "backends: []");
    assert_eq!(fields(&errors_of(&yaml)), vec!["backend_groups[1].backends"]);
    let yaml = GOOD.replace("max_connections_per_host: 5", "max_connections_per_host: 0");
    assert_eq!(fields(&errors_of(&yaml)), vec!["backend_groups[0].connection_pool.max_connections_per_host"]);
}

#[test]
fn a_missing_ca_bundle_is_a_compile_error_on_the_tls_field() {
    let yaml = GOOD.replace(
        "backends: [{url: \"http://127.0.0.1:8003\"}]",
        "backends: [{url: \"https://127.0.0.1:8003\"}]\n    tls: {ca_file: /nonexistent/ca.pem}",
    );
    let config = parse("test.yaml", &yaml).unwrap();
    config.validate().unwrap();
    let errors = config.compile(&EndpointRegistry::default(), CertSet::default(), 1).unwrap_err();
    assert_eq!(fields(&errors), vec!["backend_groups[1].tls"]);
}

#[test]
fn groups_follow_the_rules_the_backend_group_resource_follows() {
    let yaml = GOOD
        .replace("interval: 10s", "interval: 50ms")
        .replace("weight: 100", "weight: 2000000")
        .replace("passive: {max_failures: 5, observation_window: 60s}", "passive: {max_failures: 5, cooldown: 0s}");
    let errors = errors_of(&yaml);
    assert_eq!(
        fields(&errors),
        vec![
            "backend_groups[0].backends[0].weight",
            "backend_groups[0].health_check.interval",
            "backend_groups[0].passive.cooldown"
        ],
        "{errors:?}"
    );
    assert_eq!(errors[1].message, "must be at least 100ms");
}

const FILTERED: &str = r#"
server:
  address: "127.0.0.1:8443"
routes:
  - id: canary
    path: /api
    match:
      headers: [{name: X-Canary, value: "yes"}]
    backend_refs: [{name: a, weight: 90}, {name: b, weight: 10}]
    filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {set: [{name: x-env, value: canary}]}
      - type: URLRewrite
        urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
      - type: RequestMirror
        requestMirror: {backendRef: {name: b}, percent: 10}
    timeouts: {request: 10s, backendRequest: 2s}
  - id: api
    path: /api
    backend_group: a
  - id: old
    path: /old
    filters:
      - type: RequestRedirect
        requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}
  - id: ids
    path: "/ids/[0-9]+"
    path_type: RegularExpression
    backend_group: b
backend_groups:
  - id: a
    backends: [{url: "http://127.0.0.1:8001"}]
  - id: b
    backends: [{url: "http://127.0.0.1:8002"}]
"#;

#[test]
fn matches_filters_weights_and_timeouts_compile_from_yaml() {
    let config = parse("test.yaml", FILTERED).unwrap();
    config.validate().unwrap();
    let table = config.compile(&EndpointRegistry::default(), CertSet::default(), 1).unwrap();
    assert_eq!(table.route_count(), 4, "two entries share /api");
    let headers = {
        let mut h = http::HeaderMap::new();
        h.insert("x-canary", http::HeaderValue::from_static("yes"));
        h
    };
    let view = routes::RequestView { headers: &headers, ..routes::RequestView::get(None, "/api/x") };
    let canary = table.route_for(&view).unwrap();
    assert_eq!(canary.id, "canary");
    assert_eq!(canary.filters.len(), 3);
    assert_eq!(canary.timeouts.backend_request, Some(std::time::Duration::from_secs(2)));
    assert_eq!(canary.backends.weights().map(|(_, w)| w).collect::<Vec<_>>(), [90, 10]);
    assert_eq!(table.lookup(None, "/api/x").unwrap().id, "api", "no header: the plain entry");
    assert_eq!(table.lookup(None, "/old").unwrap().id, "old", "a redirect needs no backend");
    assert_eq!(table.lookup(None, "/ids/42").unwrap().id, "ids");
    assert!(table.lookup(None, "/ids/x").is_none());
}

#[test]
fn bad_matches_and_filters_name_their_field() {
    let yaml = FILTERED
        .replace("name: X-Canary", "name: \"X Canary\"")
        .replace("replacePrefixMatch: /v2", "replacePrefixMatch: v2")
        .replace("backendRef: {name: b}", "backendRef: {name: nope}")
        .replace("backendRequest: 2s", "backendRequest: 20s")
        .replace("{name: b, weight: 10}", "{name: c, weight: 10}")
        .replace("statusCode: 301", "statusCode: 304")
        .replace("/ids/[0-9]+", "/ids/[0-9+");
    let errors = errors_of(&yaml);
    assert_eq!(
        fields(&errors),
        vec![
            "routes[0].match.headers[0].name",
            "routes[0].filters[1].urlRewrite.path.replacePrefixMatch",
            "routes[0].filters[2].requestMirror.backendRef.name",
            "routes[0].timeouts.backendRequest",
            "routes[0].backend_refs[1].name",
            "routes[2].filters[0].requestRedirect.statusCode",
            "routes[3].path",
        ],
        "{errors:?}"
    );
    let both = FILTERED.replace("    backend_group: a\n", "    backend_group: a\n    backend_refs: [{name: b}]\n");
    assert_eq!(fields(&errors_of(&both)), vec!["routes[1].backend_refs"]);
    let neither = FILTERED.replace("    backend_group: b\n", "");
    assert_eq!(fields(&errors_of(&neither)), vec!["routes[3].backend_group"]);
}

#[test]
fn the_plaintext_listener_and_proxy_protocol_are_off_unless_asked_for() {
    let listen = parse("test.yaml", GOOD).unwrap().validate().unwrap();
    assert_eq!((listen.http_address, listen.proxy_protocol), (None, false));
    let on = GOOD.replace(
        "  address: \"127.0.0.1:8443\"\n",
        "  address: \"127.0.0.1:8443\"\n  http_listen: \"127.0.0.1:8080\"\n  proxy_protocol: true\n",
    );
    let listen = parse("test.yaml", &on).unwrap().validate().unwrap();
    assert_eq!(listen.http_address, Some("127.0.0.1:8080".parse().unwrap()));
    assert!(listen.proxy_protocol);
    let bad =
        GOOD.replace("  address: \"127.0.0.1:8443\"\n", "  address: \"127.0.0.1:8443\"\n  http_listen: \":80\"\n");
    assert_eq!(fields(&errors_of(&bad)), vec!["server.http_listen"]);
    let same = GOOD.replace(
        "  address: \"127.0.0.1:8443\"\n",
        "  address: \"127.0.0.1:8443\"\n  http_listen: \"127.0.0.1:8443\"\n",
    );
    let errors = errors_of(&same);
    assert_eq!(fields(&errors), vec!["server.http_listen"]);
    assert!(errors[0].message.contains("server.address"), "{errors:?}");
}
