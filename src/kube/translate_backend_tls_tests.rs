//! BackendTLSPolicy, tested with object builders: a Service port dialled over TLS with the
//! policy's CA and hostname, invalid CA references and kinds (5xx and the spec's reasons),
//! sectionName precedence, conflicts (the oldest wins) and the ancestors in status.

use k8s_openapi::api::core::v1::ConfigMap;

use super::*;
use crate::kube::gateway::api::BackendTLSPolicy;
use crate::kube::gateway::backend_tls::BackendTls;
use crate::kube::gateway::status::policy_ancestors;

fn ca_pem() -> String {
    rcgen::generate_simple_self_signed(vec!["ca.example".to_string()]).unwrap().cert.pem()
}

fn config_map(ns: &str, name: &str, data: &[(&str, &str)]) -> Arc<ConfigMap> {
    Arc::new(ConfigMap {
        metadata: meta(ns, name, 100),
        data: Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        ..Default::default()
    })
}

/// A policy on Service `svc` (port `section` if given) trusting ConfigMap `cm`'s CA.
fn policy(
    ns: &str,
    name: &str,
    age: i64,
    svc: &str,
    section: Option<&str>,
    validation: Value,
) -> Arc<BackendTLSPolicy> {
    let mut target = json!({"group": "", "kind": "Service", "name": svc});
    if let Some(s) = section {
        target["sectionName"] = json!(s);
    }
    obj(Some(ns), name, age, "BackendTLSPolicy", json!({"targetRefs": [target], "validation": validation}))
}

fn ca_ref(name: &str) -> Value {
    json!({"caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": name}], "hostname": "web.internal"})
}

/// `gw_world` with a route from namespace `a` to Service `a/web` port 80 for
/// shop.example.com, and the CA ConfigMap `a/ca`.
fn btls_world() -> World {
    let mut w = gw_world();
    w.gateway.routes = vec![simple_route("a", "shop", 50, &["shop.example.com"], "/", "web")];
    w.gateway.config_maps = vec![config_map("a", "ca", &[("ca.crt", &ca_pem())])];
    w
}

fn policy_conditions(t: &Translation, name: &str) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let p = t.gateway.model.policies.images.iter().find(|p| p.key.name == name).expect("policy in model");
    let ancestors = policy_ancestors(p, &t.gateway.model.gateways, &Default::default());
    assert_eq!(ancestors.len(), 1, "one ancestor, the route's Gateway: {ancestors:?}");
    assert_eq!(ancestors[0].ancestor_ref.name, "gw");
    assert_eq!(ancestors[0].ancestor_ref.namespace.as_deref(), Some("infra"));
    assert_eq!(ancestors[0].ancestor_ref.kind.as_deref(), Some("Gateway"));
    assert_eq!(ancestors[0].controller_name, GATEWAY_CONTROLLER_NAME);
    ancestors[0].conditions.clone()
}

fn web_tls(t: &Translation) -> Option<&BackendTls> {
    t.gateway.model.backend_tls.get(&("a".to_string(), "web".to_string(), 80))
}

#[test]
fn a_service_with_a_valid_policy_is_dialled_over_tls_with_its_ca_and_hostname() {
    let plain = run(&btls_world());
    assert_eq!(endpoints_for(&plain, "shop.example.com", "/"), Some(vec![A_WEB.to_string()]));
    let mut w = btls_world();
    w.gateway.backend_tls_policies = vec![policy("a", "web-tls", 10, "web", None, ca_ref("ca"))];
    let t = run(&w);
    assert_eq!(endpoints_for(&t, "shop.example.com", "/"), Some(vec!["https://10.1.0.1:8080".to_string()]));
    let Some(BackendTls::Verify { tls, h3, policy }) = web_tls(&t) else { panic!("{:?}", web_tls(&t)) };
    assert_eq!(tls.server_name.as_deref(), Some("web.internal"), "the hostname is the SNI and the name checked");
    assert!(!tls.insecure_skip_verify);
    let (_, pem) = tls.ca_pem.as_ref().expect("the ConfigMap's CA");
    assert!(String::from_utf8_lossy(pem).contains("BEGIN CERTIFICATE"));
    assert!(!h3);
    assert_eq!(policy, "a/web-tls");
    let conditions = policy_conditions(&t, "web-tls");
    assert_eq!(cond(&conditions, "Accepted"), pair("True", "Accepted"));
    assert_eq!(cond(&conditions, "ResolvedRefs"), pair("True", "ResolvedRefs"));
    assert_eq!(conditions[0].observed_generation, Some(1));
    // The route's own references still resolve.
    assert_eq!(cond(&route_parent(&t.gateway, "shop"), "ResolvedRefs"), pair("True", "ResolvedRefs"));
}

#[test]
fn well_known_system_roots_and_h3_app_protocol_are_honoured() {
    let mut w = btls_world();
    let mut svc = (*w.services[0]).clone();
    svc.ports[0].app_protocol = Some("quic-ingress.dev/h3".into());
    w.services[0] = Arc::new(svc);
    let system = json!({"wellKnownCACertificates": "System", "hostname": "web.internal"});
    w.gateway.backend_tls_policies = vec![policy("a", "web-tls", 10, "web", None, system)];
    let t = run(&w);
    let Some(BackendTls::Verify { tls, h3, .. }) = web_tls(&t) else { panic!("{:?}", web_tls(&t)) };
    assert!(tls.ca_pem.is_none() && tls.ca_file.is_none(), "the system roots");
    assert!(h3, "appProtocol asks for HTTP/3");
    assert_eq!(endpoints_for(&t, "shop.example.com", "/"), Some(vec!["h3://10.1.0.1:8080".to_string()]));
    // An unknown well-known set is refused with the spec's reason.
    let other = json!({"wellKnownCACertificates": "Mine", "hostname": "web.internal"});
    w.gateway.backend_tls_policies = vec![policy("a", "web-tls", 10, "web", None, other)];
    let t = run(&w);
    assert_eq!(cond(&policy_conditions(&t, "web-tls"), "Accepted"), pair("False", "Invalid"));
    assert_eq!(web_tls(&t), Some(&BackendTls::Refused));
}

#[test]
fn invalid_ca_references_refuse_the_policy_and_fail_its_requests() {
    let cases: [(&str, Value, &str); 4] = [
        ("missing", ca_ref("nope"), "InvalidCACertificateRef"),
        ("no ca.crt", ca_ref("empty"), "InvalidCACertificateRef"),
        ("not PEM", ca_ref("junk"), "InvalidCACertificateRef"),
        (
            "wrong kind",
            json!({"caCertificateRefs": [{"group": "invalid.io", "kind": "InvalidKind", "name": "ca"}], "hostname": "x"}),
            "InvalidKind",
        ),
    ];
    for (what, validation, reason) in cases {
        let mut w = btls_world();
        w.gateway.config_maps.push(config_map("a", "empty", &[]));
        w.gateway.config_maps.push(config_map("a", "junk", &[("ca.crt", "not a certificate")]));
        w.gateway.backend_tls_policies = vec![policy("a", "web-tls", 10, "web", None, validation)];
        let t = run(&w);
        let conditions = policy_conditions(&t, "web-tls");
        assert_eq!(cond(&conditions, "Accepted"), pair("False", "NoValidCACertificate"), "{what}");
        assert_eq!(cond(&conditions, "ResolvedRefs"), pair("False", reason), "{what}");
        assert_eq!(web_tls(&t), Some(&BackendTls::Refused), "{what}");
        // The route claims its path with no group: its requests are answered 500.
        assert_eq!(endpoints_for(&t, "shop.example.com", "/"), Some(vec![]), "{what}");
    }
    // A ConfigMap of another namespace is not one of the policy's (references are local).
    let mut w = btls_world();
    w.gateway.config_maps = vec![config_map("b", "ca", &[("ca.crt", &ca_pem())])];
    w.gateway.backend_tls_policies = vec![policy("a", "web-tls", 10, "web", None, ca_ref("ca"))];
    assert_eq!(web_tls(&run(&w)), Some(&BackendTls::Refused));
}

#[test]
fn a_port_named_by_section_name_takes_precedence_and_the_oldest_policy_wins_a_target() {
    let mut w = btls_world();
    let host =
        |h: &str| json!({"caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}], "hostname": h});
    w.gateway.backend_tls_policies = vec![
        policy("a", "whole-new", 5, "web", None, host("new.internal")),
        policy("a", "whole-old", 20, "web", None, host("old.internal")),
        policy("a", "port", 1, "web", Some("http"), host("port.internal")),
        policy("a", "other-port", 1, "web", Some("admin"), host("admin.internal")),
    ];
    let t = run(&w);
    let Some(BackendTls::Verify { tls, .. }) = web_tls(&t) else { panic!() };
    assert_eq!(tls.server_name.as_deref(), Some("port.internal"), "the policy naming the port");
    assert_eq!(cond(&policy_conditions(&t, "whole-old"), "Accepted"), pair("True", "Accepted"));
    let conflicted = policy_conditions(&t, "whole-new");
    assert_eq!(cond(&conflicted, "Accepted"), pair("False", "Conflicted"));
    let message = &conflicted.iter().find(|c| c.type_ == "Accepted").unwrap().message;
    assert!(message.contains("a/whole-old"), "{message}");
    let p = t.gateway.model.policies.images.iter().find(|p| p.key.name == "other-port").unwrap();
    assert!(p.ancestors.is_empty(), "no route reaches port admin: no ancestor");
    // Without the port's policy the oldest whole-Service policy applies.
    w.gateway.backend_tls_policies.retain(|p| p.metadata.name.as_deref() != Some("port"));
    let t = run(&w);
    let Some(BackendTls::Verify { tls, .. }) = web_tls(&t) else { panic!() };
    assert_eq!(tls.server_name.as_deref(), Some("old.internal"));
}

#[test]
fn policy_status_keeps_condition_times_so_an_unchanged_policy_is_not_rewritten() {
    let mut w = btls_world();
    w.gateway.backend_tls_policies = vec![policy("a", "web-tls", 10, "web", None, ca_ref("ca"))];
    let t = run(&w);
    let p = &t.gateway.model.policies.images[0];
    let first = policy_ancestors(p, &t.gateway.model.gateways, &Default::default());
    let previous = crate::kube::gateway::api::PolicyStatus { ancestors: first.clone() };
    let again = policy_ancestors(p, &t.gateway.model.gateways, &previous);
    assert_eq!(first[0].conditions[0].last_transition_time, again[0].conditions[0].last_transition_time);
    assert_eq!(comparable(&first), comparable(&again), "no change, no write");
}

#[test]
fn subject_alt_names_replace_the_hostname_as_the_names_checked() {
    let mut w = btls_world();
    let mut v = ca_ref("ca");
    v["subjectAltNames"] = json!([
        {"type": "Hostname", "hostname": "Web.Example.com"},
        {"type": "URI", "uri": "spiffe://cluster/ns/a/sa/web"},
    ]);
    w.gateway.backend_tls_policies = vec![policy("a", "web-tls", 10, "web", None, v.clone())];
    let t = run(&w);
    let Some(BackendTls::Verify { tls, .. }) = web_tls(&t) else { panic!("{:?}", web_tls(&t)) };
    use crate::upstream::san::SubjectAltName;
    assert_eq!(
        tls.subject_alt_names,
        vec![SubjectAltName::Dns("web.example.com".into()), SubjectAltName::Uri("spiffe://cluster/ns/a/sa/web".into())]
    );
    assert_eq!(tls.server_name.as_deref(), Some("web.internal"), "still the SNI");
    // An entry without its value (the API server refuses it; an older one may have it).
    v["subjectAltNames"] = json!([{"type": "URI"}]);
    w.gateway.backend_tls_policies = vec![policy("a", "web-tls", 10, "web", None, v)];
    let t = run(&w);
    assert_eq!(cond(&policy_conditions(&t, "web-tls"), "Accepted"), pair("False", "Invalid"));
    assert_eq!(web_tls(&t), Some(&BackendTls::Refused));
}
