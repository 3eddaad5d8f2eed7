//! Translation rules, tested with object builders.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, Service, ServicePort, ServiceSpec, TypedLocalObjectReference};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressClass, IngressClassSpec, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::*;
use crate::kube::crd::{BackendGroupRoute, BackendGroupSpec, BackendProtocol, PathType, StaticBackend, Strategy};
use crate::kube::records::{IngressRecord, ServiceRecord, SetVersion, SliceRecord};
use crate::kube::world::SERVICE_NAME_LABEL;

fn meta(ns: &str, name: &str, age_secs: i64) -> ObjectMeta {
    let ts = k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 - age_secs).unwrap();
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        creation_timestamp: Some(Time(ts)),
        generation: Some(1),
        ..Default::default()
    }
}

fn svc_backend(name: &str, port: i32) -> IngressBackend {
    IngressBackend {
        service: Some(IngressServiceBackend {
            name: name.into(),
            port: Some(ServiceBackendPort { number: Some(port), name: None }),
        }),
        resource: None,
    }
}

fn svc_backend_named(name: &str, port: &str) -> IngressBackend {
    IngressBackend {
        service: Some(IngressServiceBackend {
            name: name.into(),
            port: Some(ServiceBackendPort { number: None, name: Some(port.into()) }),
        }),
        resource: None,
    }
}

fn bg_backend(name: &str) -> IngressBackend {
    IngressBackend {
        service: None,
        resource: Some(TypedLocalObjectReference {
            api_group: Some("quic-ingress.dev".into()),
            kind: "BackendGroup".into(),
            name: name.into(),
        }),
    }
}

/// Ingress builder.
struct IngressB(Ingress);

fn ingress(ns: &str, name: &str) -> IngressB {
    IngressB(Ingress {
        metadata: meta(ns, name, 100),
        spec: Some(IngressSpec { ingress_class_name: Some("quic".into()), ..Default::default() }),
        status: None,
    })
}

impl IngressB {
    fn age(mut self, secs: i64) -> Self {
        let (ns, name) = (self.0.metadata.namespace.clone().unwrap(), self.0.metadata.name.clone().unwrap());
        self.0.metadata = meta(&ns, &name, secs);
        self
    }
    fn class(mut self, class: Option<&str>) -> Self {
        self.0.spec.as_mut().unwrap().ingress_class_name = class.map(Into::into);
        self
    }
    fn annotation(mut self, k: &str, v: &str) -> Self {
        self.0.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(k.into(), v.into());
        self
    }
    fn rule(mut self, host: Option<&str>, path: &str, path_type: &str, backend: IngressBackend) -> Self {
        let rules = self.0.spec.as_mut().unwrap().rules.get_or_insert_with(Vec::new);
        rules.push(IngressRule {
            host: host.map(Into::into),
            http: Some(HTTPIngressRuleValue {
                paths: vec![HTTPIngressPath { path: Some(path.into()), path_type: path_type.into(), backend }],
            }),
        });
        self
    }
    fn default_backend(mut self, backend: IngressBackend) -> Self {
        self.0.spec.as_mut().unwrap().default_backend = Some(backend);
        self
    }
    fn tls(mut self, hosts: &[&str], secret: &str) -> Self {
        let tls = self.0.spec.as_mut().unwrap().tls.get_or_insert_with(Vec::new);
        tls.push(IngressTLS {
            hosts: Some(hosts.iter().map(|h| h.to_string()).collect()),
            secret_name: Some(secret.into()),
        });
        self
    }
    /// The record the watch keeps of the Ingress.
    fn build(self) -> Arc<IngressRecord> {
        Arc::new(IngressRecord::from(self.0))
    }
}

fn service(ns: &str, name: &str, ports: &[(&str, i32)]) -> Arc<ServiceRecord> {
    Arc::new(ServiceRecord::from(Service {
        metadata: meta(ns, name, 100),
        spec: Some(ServiceSpec {
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| ServicePort { name: Some(n.to_string()), port: *p, ..Default::default() })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }))
}

/// An EndpointSlice for `svc` with `(address, ready)` endpoints on named target ports.
fn slice(
    ns: &str,
    name: &str,
    svc: &str,
    family: &str,
    ports: &[(&str, i32)],
    eps: &[(&str, bool)],
) -> Arc<SliceRecord> {
    let mut m = meta(ns, name, 100);
    m.labels = Some([(SERVICE_NAME_LABEL.to_string(), svc.to_string())].into());
    Arc::new(SliceRecord::from(EndpointSlice {
        metadata: m,
        address_type: family.into(),
        ports: Some(
            ports
                .iter()
                .map(|(n, p)| EndpointPort { name: Some(n.to_string()), port: Some(*p), ..Default::default() })
                .collect(),
        ),
        endpoints: eps
            .iter()
            .map(|(a, ready)| Endpoint {
                addresses: vec![a.to_string()],
                conditions: Some(EndpointConditions { ready: Some(*ready), ..Default::default() }),
                ..Default::default()
            })
            .collect(),
    }))
}

fn tls_secret(ns: &str, name: &str, host: &str) -> Arc<Secret> {
    let g = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    Arc::new(Secret {
        metadata: meta(ns, name, 100),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt".to_string(), ByteString(g.cert.pem().into_bytes())),
                ("tls.key".to_string(), ByteString(g.signing_key.serialize_pem().into_bytes())),
            ]
            .into(),
        ),
        ..Default::default()
    })
}

/// A BackendGroup of class `quic` (as `ingress()` builds Ingresses of class `quic`).
fn backend_group(ns: &str, name: &str, mut spec: BackendGroupSpec) -> Arc<BackendGroupCr> {
    spec.ingress_class_name.get_or_insert_with(|| "quic".into());
    classless_group(ns, name, spec)
}

/// A BackendGroup as `spec` has it: without `ingressClassName` unless `spec` names one.
fn classless_group(ns: &str, name: &str, spec: BackendGroupSpec) -> Arc<BackendGroupCr> {
    let mut bg = BackendGroupCr::new(name, spec);
    bg.metadata = meta(ns, name, 50);
    Arc::new(bg)
}

/// The rules' own tests run as a controller watching namespace `shop` (so its host-less
/// rules are its own business), with static test backends on loopback allowed.
fn settings() -> Settings {
    let loopback = ["127.0.0.0/8".parse().unwrap()];
    Settings {
        watch_namespaces: ["shop".to_string()].into(),
        backend_policy: crate::kube::policy::BackendPolicy::new(&[], &[], &loopback),
        ..Settings::new("quic")
    }
}

fn run(world: &World) -> Translation {
    translate(world, &settings(), &EndpointRegistry::default(), &mut LastGoodCerts::default(), 1)
}

/// Endpoint addresses a request would be balanced over, sorted.
fn endpoints_for(t: &Translation, host: &str, path: &str) -> Option<Vec<String>> {
    let route = t.table.lookup(Some(host), path)?;
    let mut v: Vec<String> = route.group.members().map(|(e, _)| e.url.to_string()).collect();
    v.sort();
    Some(v)
}

fn shop_world() -> World {
    World {
        services: vec![service("shop", "api", &[("http", 80), ("admin", 9000)])],
        slices: vec![
            slice(
                "shop",
                "api-a",
                "api",
                "IPv4",
                &[("http", 8080), ("admin", 9090)],
                &[("10.0.0.1", true), ("10.0.0.2", false)],
            ),
            slice("shop", "api-b", "api", "IPv4", &[("http", 8080), ("admin", 9090)], &[("10.0.0.3", true)]),
            slice("shop", "api-v6", "api", "IPv6", &[("http", 8080)], &[("fd00::1", true)]),
        ],
        ..World::default()
    }
}

#[test]
fn service_port_by_number_resolves_ready_endpoints_across_slices() {
    let mut world = shop_world();
    world.ingresses =
        vec![ingress("shop", "web").rule(Some("shop.example.com"), "/", "Prefix", svc_backend("api", 80)).build()];
    let t = run(&world);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    assert_eq!(
        endpoints_for(&t, "shop.example.com", "/x").unwrap(),
        vec!["http://10.0.0.1:8080", "http://10.0.0.3:8080", "http://[fd00::1]:8080"],
        "only ready addresses, all slices merged, IPv6 bracketed"
    );
    assert_eq!(t.served_ingresses, vec![("shop".to_string(), "web".to_string())]);
}

#[test]
fn service_port_by_name_uses_the_slice_port_of_that_name() {
    let mut world = shop_world();
    world.ingresses =
        vec![ingress("shop", "admin").rule(None, "/admin", "Prefix", svc_backend_named("api", "admin")).build()];
    let t = run(&world);
    assert_eq!(endpoints_for(&t, "any", "/admin").unwrap(), vec!["http://10.0.0.1:9090", "http://10.0.0.3:9090"]);
}

#[test]
fn path_types_follow_ingress_semantics() {
    let mut world = shop_world();
    world.ingresses = vec![
        ingress("shop", "paths")
            .rule(Some("a.com"), "/exact", "Exact", svc_backend("api", 80))
            .rule(Some("a.com"), "/prefix/", "Prefix", svc_backend("api", 80))
            .rule(Some("a.com"), "/impl", "ImplementationSpecific", svc_backend("api", 80))
            .build(),
    ];
    let t = run(&world);
    assert!(t.table.lookup(Some("a.com"), "/exact").is_some());
    assert!(t.table.lookup(Some("a.com"), "/exact/").is_none());
    assert!(t.table.lookup(Some("a.com"), "/prefix").is_some());
    assert!(t.table.lookup(Some("a.com"), "/prefixes").is_none());
    assert!(t.table.lookup(Some("a.com"), "/impl/x").is_some());
}

#[test]
fn ingress_class_selection() {
    let mut world = shop_world();
    let rule = |b: IngressB, host: &str| b.rule(Some(host), "/", "Prefix", svc_backend("api", 80));
    world.ingresses = vec![
        rule(ingress("shop", "mine"), "mine.com").build(),
        rule(ingress("shop", "nginx").class(Some("nginx")), "nginx.com").build(),
        rule(ingress("shop", "legacy").class(None).annotation("kubernetes.io/ingress.class", "quic"), "legacy.com")
            .build(),
        rule(ingress("shop", "classless").class(None), "classless.com").build(),
    ];
    let t = run(&world);
    assert!(t.table.lookup(Some("mine.com"), "/").is_some());
    assert!(t.table.lookup(Some("nginx.com"), "/").is_none(), "another controller's class");
    assert!(t.table.lookup(Some("legacy.com"), "/").is_some(), "the legacy annotation");
    assert!(t.table.lookup(Some("classless.com"), "/").is_none(), "no class and no default class");

    let mut class = IngressClass {
        metadata: meta("", "quic", 100),
        spec: Some(IngressClassSpec { controller: Some(CONTROLLER_NAME.into()), parameters: None }),
    };
    class.metadata.annotations =
        Some([("ingressclass.kubernetes.io/is-default-class".to_string(), "true".to_string())].into());
    world.classes = vec![Arc::new(class)];
    let t = run(&world);
    assert!(t.table.lookup(Some("classless.com"), "/").is_some(), "our class is the default");
    assert!(t.table.lookup(Some("nginx.com"), "/").is_none());
}

#[test]
fn default_backend_catches_what_no_rule_matches() {
    let mut world = shop_world();
    world.services.push(service("shop", "fallback", &[("http", 80)]));
    world.slices.push(slice("shop", "fb", "fallback", "IPv4", &[("http", 7000)], &[("10.0.9.9", true)]));
    world.ingresses = vec![
        ingress("shop", "web")
            .rule(Some("shop.example.com"), "/api", "Prefix", svc_backend("api", 80))
            .default_backend(svc_backend("fallback", 80))
            .build(),
    ];
    let t = run(&world);
    assert_eq!(endpoints_for(&t, "shop.example.com", "/api/1").unwrap().len(), 3);
    assert_eq!(endpoints_for(&t, "shop.example.com", "/other").unwrap(), vec!["http://10.0.9.9:7000"]);
    assert_eq!(endpoints_for(&t, "elsewhere.org", "/").unwrap(), vec!["http://10.0.9.9:7000"]);
}

#[test]
fn conflicts_go_to_the_oldest_ingress_and_are_reported() {
    let mut world = shop_world();
    world.services.push(service("shop", "other", &[("http", 80)]));
    world.slices.push(slice("shop", "o", "other", "IPv4", &[("http", 7000)], &[("10.0.5.5", true)]));
    world.ingresses = vec![
        ingress("shop", "newer").age(10).rule(Some("a.com"), "/", "Prefix", svc_backend("other", 80)).build(),
        ingress("shop", "older").age(500).rule(Some("a.com"), "/", "Prefix", svc_backend("api", 80)).build(),
    ];
    let t = run(&world);
    assert_eq!(endpoints_for(&t, "a.com", "/").unwrap().len(), 3, "the older Ingress keeps the route");
    assert_eq!(t.problems.len(), 1);
    assert_eq!((t.problems[0].name.as_str(), t.problems[0].reason), ("newer", "RouteConflict"));
}

#[test]
fn dangling_backends_are_reported_and_the_rest_still_routes() {
    let mut world = shop_world();
    world.ingresses = vec![
        ingress("shop", "broken")
            .rule(Some("b.com"), "/", "Prefix", svc_backend("missing", 80))
            .rule(Some("c.com"), "/", "Prefix", svc_backend("api", 12345))
            .rule(Some("d.com"), "/", "Prefix", bg_backend("nope"))
            .rule(Some("ok.com"), "/", "Prefix", svc_backend("api", 80))
            .build(),
    ];
    let t = run(&world);
    let reasons: Vec<_> = t.problems.iter().map(|p| p.reason).collect();
    assert_eq!(reasons.len(), 3, "{:?}", t.problems);
    assert!(reasons.contains(&"ServiceNotFound") && reasons.contains(&"BackendGroupNotFound"));
    assert!(t.problems.iter().any(|p| p.message.contains("has no port 12345")));
    assert!(t.table.lookup(Some("b.com"), "/").is_none());
    assert!(t.table.lookup(Some("ok.com"), "/").is_some());
}

#[test]
fn every_ingress_naming_a_missing_service_is_told() {
    let mut world = shop_world();
    world.ingresses = vec![
        ingress("shop", "one").rule(Some("one.com"), "/", "Prefix", svc_backend("missing", 80)).build(),
        ingress("shop", "two").rule(Some("two.com"), "/", "Prefix", svc_backend("missing", 80)).build(),
    ];
    let t = run(&world);
    let named: Vec<_> = t.problems.iter().filter(|p| p.reason == "ServiceNotFound").map(|p| p.name.as_str()).collect();
    assert_eq!(named, vec!["one", "two"]);
}

#[test]
fn backend_groups_by_resource_and_by_their_own_routes() {
    let mut world = shop_world();
    world.groups = vec![
        backend_group(
            "shop",
            "static",
            BackendGroupSpec {
                strategy: Strategy::LeastConnections,
                backends: vec![
                    StaticBackend { url: "http://127.0.0.1:8001".into(), weight: 3 },
                    StaticBackend { url: "h2c://127.0.0.1:8002".into(), weight: 1 },
                ],
                routes: vec![BackendGroupRoute {
                    host: Some("bg.example.com".into()),
                    path: "/v1".into(),
                    path_type: PathType::Prefix,
                    ..Default::default()
                }],
                ..Default::default()
            },
        ),
        backend_group(
            "shop",
            "from-service",
            BackendGroupSpec {
                service: Some(crate::kube::crd::ServiceRef { name: "api".into(), port: 80 }),
                protocol: BackendProtocol::H2,
                ..Default::default()
            },
        ),
    ];
    world.ingresses =
        vec![ingress("shop", "web").rule(Some("x.com"), "/", "Prefix", bg_backend("from-service")).build()];
    let t = run(&world);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let r = t.table.lookup(Some("bg.example.com"), "/v1/users").unwrap();
    assert_eq!(r.group.strategy, crate::upstream::Strategy::LeastConnections);
    assert_eq!(r.group.members().map(|(_, w)| w).collect::<Vec<_>>(), vec![3, 1]);
    assert_eq!(endpoints_for(&t, "x.com", "/").unwrap()[0], "h2c://10.0.0.1:8080", "spec.protocol sets the scheme");
    assert_eq!(t.groups.len(), 2, "every BackendGroup object gets status");
}

#[test]
fn protocol_h3_dials_service_endpoints_over_http3() {
    let mut world = shop_world();
    world.groups = vec![backend_group(
        "shop",
        "quic",
        BackendGroupSpec {
            service: Some(crate::kube::crd::ServiceRef { name: "api".into(), port: 80 }),
            protocol: BackendProtocol::H3,
            ..Default::default()
        },
    )];
    world.ingresses = vec![ingress("shop", "web").rule(Some("x.com"), "/", "Prefix", bg_backend("quic")).build()];
    let t = run(&world);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    assert_eq!(endpoints_for(&t, "x.com", "/").unwrap()[0], "h3://10.0.0.1:8080");
}

#[test]
fn invalid_backend_group_is_reported() {
    let mut world = shop_world();
    world.groups = vec![backend_group(
        "shop",
        "bad",
        BackendGroupSpec {
            backends: vec![StaticBackend { url: "ftp://x:1".into(), weight: 1 }],
            routes: vec![BackendGroupRoute {
                host: None,
                path: "/bad".into(),
                path_type: PathType::Prefix,
                ..Default::default()
            }],
            ..Default::default()
        },
    )];
    let t = run(&world);
    assert_eq!(t.problems.len(), 1);
    assert!(t.problems[0].message.contains("spec.backends[0].url"), "{:?}", t.problems);
    assert!(t.table.lookup(None, "/bad").is_none());
}

#[test]
fn tls_secrets_are_chosen_by_sni_and_the_last_good_one_survives() {
    let mut world = shop_world();
    world.secrets = vec![tls_secret("shop", "shop-tls", "shop.example.com")];
    world.ingresses = vec![
        ingress("shop", "web")
            .rule(Some("shop.example.com"), "/", "Prefix", svc_backend("api", 80))
            .tls(&["shop.example.com"], "shop-tls")
            .build(),
    ];
    let registry = EndpointRegistry::default();
    let mut last_good = LastGoodCerts::default();
    let t = translate(&world, &settings(), &registry, &mut last_good, 1);
    let served = t.table.certs.resolve(Some("shop.example.com")).expect("certificate for the host");
    assert!(t.table.certs.resolve(Some("other.com")).is_none(), "no default certificate configured");

    // The Secret turns invalid: the previous certificate keeps serving, and it is reported.
    let mut broken = (*world.secrets[0]).clone();
    broken.data.as_mut().unwrap().insert("tls.key".into(), ByteString(b"garbage".to_vec()));
    world.secrets = vec![Arc::new(broken)];
    let t = translate(&world, &settings(), &registry, &mut last_good, 2);
    assert!(Arc::ptr_eq(&t.table.certs.resolve(Some("shop.example.com")).unwrap(), &served));
    assert_eq!(t.problems[0].reason, "InvalidTLSSecret");

    // A missing Secret is reported too, and its last good key is forgotten.
    let broken = world.secrets.clone();
    world.secrets.clear();
    let t = translate(&world, &settings(), &registry, &mut last_good, 3);
    assert_eq!(t.problems[0].reason, "TLSSecretNotFound");
    assert!(t.table.certs.resolve(Some("shop.example.com")).is_none());
    assert!(last_good.certs.is_empty(), "a deleted Secret's key stays in memory");

    // Re-created invalid under the same name: the deleted Secret's key is not served.
    world.secrets = broken;
    let t = translate(&world, &settings(), &registry, &mut last_good, 4);
    assert_eq!(t.problems[0].reason, "InvalidTLSSecret");
    assert!(!t.problems[0].message.contains("last good"), "{}", t.problems[0].message);
    assert!(t.table.certs.resolve(Some("shop.example.com")).is_none());
}

#[test]
fn endpoint_state_survives_retranslation() {
    let mut world = shop_world();
    world.ingresses = vec![ingress("shop", "web").rule(None, "/", "Prefix", svc_backend("api", 80)).build()];
    let registry = EndpointRegistry::default();
    let first = translate(&world, &settings(), &registry, &mut LastGoodCerts::default(), 1);
    let ep = first.table.lookup(None, "/").unwrap().group.members().next().unwrap().0.clone();
    ep.set_healthy(false);
    let second = translate(&world, &settings(), &registry, &mut LastGoodCerts::default(), 2);
    let again = second.table.lookup(None, "/").unwrap().group.members().next().unwrap().0.clone();
    assert!(Arc::ptr_eq(&ep, &again));
    assert!(!again.is_healthy());
}

#[test]
fn upstream_tls_trusts_the_ca_of_a_secret_and_names_a_missing_one() {
    let mut world = shop_world();
    let mut ca = (*tls_secret("shop", "backend-ca", "api.internal")).clone();
    let pem = ca.data.as_ref().unwrap()["tls.crt"].clone();
    ca.data.as_mut().unwrap().insert("ca.crt".into(), pem);
    world.secrets = vec![Arc::new(ca)];
    let spec = |secret: &str| BackendGroupSpec {
        backends: vec![StaticBackend { url: "h3://10.0.0.9:443".into(), weight: 1 }],
        routes: vec![BackendGroupRoute {
            host: Some("q.example.com".into()),
            path: "/".into(),
            path_type: PathType::Prefix,
            ..Default::default()
        }],
        tls: Some(crate::kube::crd::UpstreamTlsSpec {
            ca_secret: Some(secret.into()),
            server_name: Some("api.internal".into()),
            insecure_skip_verify: false,
        }),
        ..Default::default()
    };
    world.groups = vec![backend_group("shop", "quic", spec("backend-ca"))];
    let t = run(&world);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    assert_eq!(endpoints_for(&t, "q.example.com", "/").unwrap(), vec!["h3://10.0.0.9:443"]);

    world.groups = vec![backend_group("shop", "quic", spec("nowhere"))];
    let t = run(&world);
    assert_eq!(t.problems[0].reason, "InvalidBackendGroup");
    assert!(t.problems[0].message.contains("spec.tls.caSecret"), "{}", t.problems[0].message);
}

fn static_group(spec: BackendGroupSpec) -> BackendGroupSpec {
    BackendGroupSpec { backends: vec![StaticBackend { url: "http://127.0.0.1:8001".into(), weight: 1 }], ..spec }
}

#[test]
fn zero_intervals_and_thresholds_are_refused_by_field_not_clamped() {
    let mut world = shop_world();
    let spec = static_group(BackendGroupSpec {
        health_check: Some(crate::kube::crd::HealthCheckSpec {
            interval: Some("0s".into()),
            healthy_threshold: Some(0),
            ..Default::default()
        }),
        ..Default::default()
    });
    world.groups = vec![backend_group("shop", "hot", spec)];
    let t = run(&world);
    assert_eq!(t.problems.len(), 1, "{:?}", t.problems);
    assert_eq!(t.problems[0].reason, "InvalidBackendGroup");
    assert_eq!(
        t.problems[0].message,
        "spec.healthCheck.interval: must be at least 100ms; spec.healthCheck.healthyThreshold: must be between 1 and 100"
    );
    assert!(t.groups.is_empty(), "an invalid group is not compiled");
}

#[test]
fn unreadable_durations_name_their_field() {
    let mut world = shop_world();
    let spec = static_group(BackendGroupSpec {
        timeouts: Some(crate::kube::crd::TimeoutsSpec { response_headers: Some("soon".into()), ..Default::default() }),
        ..Default::default()
    });
    world.groups = vec![backend_group("shop", "bad", spec)];
    let t = run(&world);
    assert!(t.problems[0].message.starts_with("spec.timeouts.responseHeaders: invalid duration"), "{:?}", t.problems);
}

#[test]
fn timeouts_and_passive_settings_of_a_backend_group_reach_the_group() {
    use std::time::Duration;
    let mut world = shop_world();
    let spec = static_group(BackendGroupSpec {
        timeouts: Some(crate::kube::crd::TimeoutsSpec {
            connect: Some("300ms".into()),
            response_headers: Some("2s".into()),
            pool_wait: Some("50ms".into()),
            idle: Some("1m".into()),
        }),
        passive_health_check: Some(crate::kube::crd::PassiveHealthCheckSpec {
            max_failures: Some(3),
            cooldown: Some("2s".into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let off = static_group(BackendGroupSpec {
        passive_health_check: Some(crate::kube::crd::PassiveHealthCheckSpec {
            enabled: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    });
    world.groups = vec![backend_group("shop", "tuned", spec), backend_group("shop", "off", off)];
    let t = run(&world);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let group = |name: &str| t.groups.iter().find(|g| g.name == name).map(|g| g.group.clone()).unwrap();
    let tuned = group("tuned");
    assert_eq!(
        *tuned.timeouts,
        crate::upstream::Timeouts {
            connect: Duration::from_millis(300),
            response_headers: Duration::from_secs(2),
            pool_wait: Duration::from_millis(50),
            idle: Duration::from_secs(60),
        }
    );
    assert_eq!(
        tuned.passive.as_deref(),
        Some(&crate::upstream::PassiveCheck {
            max_failures: 3,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(2)
        })
    );
    assert_eq!(group("off").passive, None, "passiveHealthCheck.enabled: false turns passive checks off");
}

// === Tenancy: host ownership, catch-alls, certificates, classes, backend addresses ===

/// Two tenants: namespaces `a` and `b`, each with a Service `web` (a: 10.1.0.1, b: 10.2.0.1).
fn tenants_world() -> World {
    World {
        services: vec![service("a", "web", &[("http", 80)]), service("b", "web", &[("http", 80)])],
        slices: vec![
            slice("a", "web-1", "web", "IPv4", &[("http", 8080)], &[("10.1.0.1", true)]),
            slice("b", "web-1", "web", "IPv4", &[("http", 8080)], &[("10.2.0.1", true)]),
        ],
        ..World::default()
    }
}

/// A multi-namespace controller with the defaults of `quic-ingress controller`.
fn tenant_settings() -> Settings {
    Settings::new("quic")
}

fn run_with(world: &World, settings: &Settings) -> Translation {
    translate(world, settings, &EndpointRegistry::default(), &mut LastGoodCerts::default(), 1)
}

fn reasons_of<'a>(t: &'a Translation, ns: &str, name: &str) -> Vec<&'a Problem> {
    t.problems.iter().filter(|p| p.namespace == ns && p.name == name).collect()
}

/// Our IngressClass `quic` with annotations.
fn quic_class(annotations: &[(&str, &str)]) -> Arc<IngressClass> {
    let mut class = IngressClass {
        metadata: meta("", "quic", 100),
        spec: Some(IngressClassSpec { controller: Some(CONTROLLER_NAME.into()), parameters: None }),
    };
    class.metadata.namespace = None;
    class.metadata.annotations = Some(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    Arc::new(class)
}

const A_WEB: &str = "http://10.1.0.1:8080";
const B_WEB: &str = "http://10.2.0.1:8080";

fn hijack_world() -> World {
    let mut world = tenants_world();
    world.ingresses = vec![
        ingress("b", "login")
            .age(10)
            .rule(Some("shop.example.com"), "/login", "Prefix", svc_backend("web", 80))
            .rule(Some("shop.example.com"), "/cart", "Exact", svc_backend("web", 80))
            .rule(Some("b.example.com"), "/", "Prefix", svc_backend("web", 80))
            .build(),
        ingress("a", "shop").age(500).rule(Some("shop.example.com"), "/", "Prefix", svc_backend("web", 80)).build(),
    ];
    world
}

#[test]
fn another_namespace_cannot_take_paths_of_an_owned_host() {
    let t = run_with(&hijack_world(), &tenant_settings());
    for path in ["/login", "/login/x", "/cart", "/"] {
        assert_eq!(endpoints_for(&t, "shop.example.com", path).unwrap(), vec![A_WEB], "{path}");
    }
    assert_eq!(endpoints_for(&t, "b.example.com", "/").unwrap(), vec![B_WEB], "b's own host still routes");
    let refused = reasons_of(&t, "b", "login");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].reason, HOST_OWNED);
    assert!(refused[0].message.contains("host shop.example.com belongs to namespace a"), "{}", refused[0].message);
    assert!(reasons_of(&t, "a", "shop").is_empty());
}

#[test]
fn the_oldest_claim_owns_the_host_not_the_first_seen() {
    let mut world = hijack_world();
    world.ingresses.reverse();
    let t = run_with(&world, &tenant_settings());
    assert_eq!(endpoints_for(&t, "shop.example.com", "/login").unwrap(), vec![A_WEB]);

    // b's Ingress is the older one now: b owns the host and a is refused.
    world.ingresses[1] = ingress("b", "login")
        .age(900)
        .rule(Some("shop.example.com"), "/login", "Prefix", svc_backend("web", 80))
        .build();
    let t = run_with(&world, &tenant_settings());
    assert_eq!(endpoints_for(&t, "shop.example.com", "/login").unwrap(), vec![B_WEB]);
    assert!(endpoints_for(&t, "shop.example.com", "/").is_none(), "a's rule for b's host is refused");
    assert_eq!(reasons_of(&t, "a", "shop")[0].reason, HOST_OWNED);
}

#[test]
fn namespaces_the_admin_lists_on_the_class_share_hosts() {
    let mut world = hijack_world();
    world.classes = vec![quic_class(&[(crate::kube::ownership::SHARED_HOSTS_ANNOTATION, "a,b")])];
    let t = run_with(&world, &tenant_settings());
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    assert_eq!(endpoints_for(&t, "shop.example.com", "/login").unwrap(), vec![B_WEB]);
    assert_eq!(endpoints_for(&t, "shop.example.com", "/").unwrap(), vec![A_WEB]);

    // The annotation on another controller's class grants nothing.
    let mut foreign = (*quic_class(&[(crate::kube::ownership::SHARED_HOSTS_ANNOTATION, "a,b")])).clone();
    foreign.spec.as_mut().unwrap().controller = Some("example.com/other".into());
    world.classes = vec![Arc::new(foreign)];
    let t = run_with(&world, &tenant_settings());
    assert_eq!(endpoints_for(&t, "shop.example.com", "/login").unwrap(), vec![A_WEB]);
}

#[test]
fn a_wildcard_owner_blocks_other_namespaces_under_it() {
    let mut world = tenants_world();
    world.ingresses = vec![
        ingress("a", "wild").age(500).rule(Some("*.example.com"), "/", "Prefix", svc_backend("web", 80)).build(),
        ingress("b", "shop").age(10).rule(Some("shop.example.com"), "/", "Prefix", svc_backend("web", 80)).build(),
    ];
    let t = run_with(&world, &tenant_settings());
    assert_eq!(endpoints_for(&t, "shop.example.com", "/").unwrap(), vec![A_WEB]);
    assert!(reasons_of(&t, "b", "shop")[0].message.contains("belongs to namespace a"));
}

#[test]
fn catch_alls_are_served_only_from_namespaces_the_admin_lists() {
    let mut world = tenants_world();
    world.groups = vec![backend_group(
        "b",
        "any",
        BackendGroupSpec {
            backends: vec![StaticBackend { url: "http://192.0.2.7:80".into(), weight: 1 }],
            routes: vec![BackendGroupRoute {
                host: None,
                path: "/bg".into(),
                path_type: PathType::Prefix,
                ..Default::default()
            }],
            ..Default::default()
        },
    )];
    world.ingresses = vec![
        ingress("a", "shop").age(500).rule(Some("shop.example.com"), "/app", "Prefix", svc_backend("web", 80)).build(),
        ingress("b", "catch")
            .age(10)
            .rule(None, "/any", "Prefix", svc_backend("web", 80))
            .default_backend(svc_backend("web", 80))
            .build(),
    ];
    let t = run_with(&world, &tenant_settings());
    assert_eq!(endpoints_for(&t, "shop.example.com", "/app").unwrap(), vec![A_WEB]);
    for path in ["/", "/any", "/other", "/bg/x"] {
        assert!(endpoints_for(&t, "shop.example.com", path).is_none(), "b caught a's unrouted {path}");
    }
    let ing: Vec<_> = reasons_of(&t, "b", "catch").iter().map(|p| p.reason).collect();
    assert_eq!(ing, vec![CATCH_ALL_REFUSED, CATCH_ALL_REFUSED], "the host-less rule and the default backend");
    assert_eq!(reasons_of(&t, "b", "any")[0].reason, CATCH_ALL_REFUSED);
    let status = t.groups.iter().find(|g| g.name == "any").unwrap();
    assert_eq!(status.route_problems[0].0, CATCH_ALL_REFUSED, "the BackendGroup's Accepted condition says why");

    // Listed on the class: served.
    world.classes = vec![quic_class(&[(crate::kube::ownership::CATCH_ALL_ANNOTATION, "b")])];
    let t = run_with(&world, &tenant_settings());
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    assert_eq!(endpoints_for(&t, "shop.example.com", "/other").unwrap(), vec![B_WEB]);
    assert_eq!(endpoints_for(&t, "shop.example.com", "/bg").unwrap(), vec!["http://192.0.2.7:80"]);

    // A controller watching only `b` serves one tenant: its catch-alls are its own.
    world.classes.clear();
    let t = run_with(&world, &Settings { watch_namespaces: ["b".to_string()].into(), ..tenant_settings() });
    assert!(reasons_of(&t, "b", "catch").is_empty(), "{:?}", t.problems);

    // Watching several namespaces is serving several tenants: the grant is needed again.
    let several = Settings { watch_namespaces: ["b".to_string(), "shop".to_string()].into(), ..tenant_settings() };
    let t = run_with(&world, &several);
    assert!(!reasons_of(&t, "b", "catch").is_empty(), "{:?}", t.problems);
}

fn cert_der(t: &Translation, host: &str) -> Vec<u8> {
    t.table.certs.resolve(Some(host)).expect("a certificate").cert[0].as_ref().to_vec()
}

fn secret_der(secret: &Secret) -> Vec<u8> {
    let pem = &secret.data.as_ref().unwrap()["tls.crt"].0;
    let key = crate::tls::certified_key_from_pem(pem, &secret.data.as_ref().unwrap()["tls.key"].0).unwrap();
    key.cert[0].as_ref().to_vec()
}

#[test]
fn certificates_only_for_hosts_the_ingress_routes_and_the_oldest_claim_wins() {
    let mut world = tenants_world();
    let (a_tls, b_tls) = (tls_secret("a", "tls", "shop.example.com"), tls_secret("b", "tls", "shop.example.com"));
    world.secrets = vec![a_tls.clone(), b_tls.clone()];
    world.ingresses = vec![
        ingress("a", "shop")
            .age(500)
            .rule(Some("shop.example.com"), "/", "Prefix", svc_backend("web", 80))
            .tls(&["shop.example.com"], "tls")
            .build(),
        // Newer, from another namespace: lists a's host only in tls.hosts.
        ingress("b", "steal")
            .age(10)
            .rule(Some("b.example.com"), "/", "Prefix", svc_backend("web", 80))
            .tls(&["shop.example.com", "b.example.com"], "tls")
            .build(),
    ];
    let t = run_with(&world, &tenant_settings());
    assert_eq!(cert_der(&t, "shop.example.com"), secret_der(&a_tls), "a keeps its certificate");
    assert_eq!(cert_der(&t, "b.example.com"), secret_der(&b_tls), "b's own host gets b's");
    let p = reasons_of(&t, "b", "steal");
    assert_eq!(p[0].reason, "TLSHostNotRouted", "{p:?}");

    // Within one namespace (or with no ownership) the oldest Ingress's Secret wins.
    let a_new = tls_secret("a", "newer-tls", "shop.example.com");
    world.secrets.push(a_new);
    world.ingresses[1] = ingress("a", "newer")
        .age(10)
        .rule(Some("shop.example.com"), "/new", "Prefix", svc_backend("web", 80))
        .tls(&["shop.example.com"], "newer-tls")
        .build();
    for settings in [tenant_settings(), Settings { host_ownership: HostOwnership::None, ..tenant_settings() }] {
        let t = run_with(&world, &settings);
        assert_eq!(cert_der(&t, "shop.example.com"), secret_der(&a_tls));
        assert_eq!(reasons_of(&t, "a", "newer")[0].reason, "TLSHostConflict");
    }
}

#[test]
fn backend_groups_obey_the_ingress_class() {
    let mut world = tenants_world();
    let spec = |class: Option<&str>, host: &str| BackendGroupSpec {
        ingress_class_name: class.map(Into::into),
        backends: vec![StaticBackend { url: "http://192.0.2.7:80".into(), weight: 1 }],
        routes: vec![BackendGroupRoute {
            host: Some(host.into()),
            path: "/".into(),
            path_type: PathType::Prefix,
            ..Default::default()
        }],
        ..Default::default()
    };
    world.groups = vec![
        classless_group("a", "other", spec(Some("internal"), "other.example.com")),
        classless_group("a", "none", spec(None, "none.example.com")),
        classless_group("a", "ours", spec(Some("quic"), "ours.example.com")),
    ];
    world.ingresses = vec![
        ingress("a", "refs")
            .rule(Some("ref-other.example.com"), "/", "Prefix", bg_backend("other"))
            .rule(Some("ref-none.example.com"), "/", "Prefix", bg_backend("none"))
            .build(),
    ];
    let t = run_with(&world, &tenant_settings());
    assert!(t.table.lookup(Some("other.example.com"), "/").is_none(), "another class's group is ignored");
    assert!(t.table.lookup(Some("ref-other.example.com"), "/").is_none());
    assert_eq!(reasons_of(&t, "a", "refs")[0].reason, "BackendGroupOfOtherClass");
    assert!(t.table.lookup(Some("none.example.com"), "/").is_none(), "no class and no default class");
    assert!(t.table.lookup(Some("ref-none.example.com"), "/").is_some(), "our Ingress may use a classless group");
    assert!(t.table.lookup(Some("ours.example.com"), "/").is_some());
    let mut with_status: Vec<_> = t.groups.iter().map(|g| g.name.as_str()).collect();
    with_status.sort();
    assert_eq!(with_status, vec!["none", "ours"], "no status for another class's group");

    world.classes = vec![quic_class(&[("ingressclass.kubernetes.io/is-default-class", "true")])];
    let t = run_with(&world, &tenant_settings());
    assert!(t.table.lookup(Some("none.example.com"), "/").is_some(), "our class is the default");
}

#[test]
fn static_backends_at_internal_addresses_are_refused_naming_the_field() {
    let mut world = tenants_world();
    world.groups = vec![
        backend_group(
            "b",
            "sneaky",
            BackendGroupSpec {
                backends: vec![
                    StaticBackend { url: "http://192.0.2.7:80".into(), weight: 1 },
                    StaticBackend { url: "http://127.0.0.1:9090".into(), weight: 1 },
                    StaticBackend { url: "http://169.254.169.254:80".into(), weight: 1 },
                ],
                routes: vec![BackendGroupRoute {
                    host: Some("b.example.com".into()),
                    path: "/".into(),
                    path_type: PathType::Prefix,
                    ..Default::default()
                }],
                ..Default::default()
            },
        ),
        // A Service reference is always allowed, whatever its endpoints' range.
        backend_group(
            "b",
            "svc",
            BackendGroupSpec {
                service: Some(crate::kube::crd::ServiceRef { name: "web".into(), port: 80 }),
                routes: vec![BackendGroupRoute {
                    host: Some("svc.example.com".into()),
                    path: "/".into(),
                    path_type: PathType::Prefix,
                    ..Default::default()
                }],
                ..Default::default()
            },
        ),
    ];
    let policy = crate::kube::policy::BackendPolicy::new(&[], &["10.2.0.0/16".parse().unwrap()], &[]);
    let t = run_with(&world, &Settings { backend_policy: policy, ..tenant_settings() });
    assert!(t.table.lookup(Some("b.example.com"), "/").is_none(), "the group is not built at all");
    assert_eq!(endpoints_for(&t, "svc.example.com", "/").unwrap(), vec![B_WEB]);
    let refused = &t.refused_groups;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!((refused[0].name.as_str(), refused[0].reason), ("sneaky", ADDRESS_REFUSED));
    let m = &refused[0].message;
    assert!(m.contains("spec.backends[1].url: 127.0.0.1 is loopback"), "{m}");
    assert!(m.contains("spec.backends[2].url: 169.254.169.254 is a cloud metadata address"), "{m}");
    assert!(!m.contains("spec.backends[0]"), "{m}");
    assert!(t.groups.iter().all(|g| g.name != "sneaky"));
}

#[test]
fn host_ownership_none_is_the_single_tenant_behaviour() {
    let mut world = hijack_world();
    world.ingresses.push(ingress("b", "catch").age(5).default_backend(svc_backend("web", 80)).build());
    let t = run_with(&world, &Settings { host_ownership: HostOwnership::None, ..tenant_settings() });
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    assert_eq!(endpoints_for(&t, "shop.example.com", "/login").unwrap(), vec![B_WEB]);
    assert_eq!(endpoints_for(&t, "shop.example.com", "/").unwrap(), vec![A_WEB]);
    assert_eq!(endpoints_for(&t, "elsewhere.example.com", "/").unwrap(), vec![B_WEB]);
}

#[test]
fn backend_group_routes_carry_matches_filters_and_mirrors_of_their_namespace() {
    let mut world = shop_world();
    let route: BackendGroupRoute = serde_json::from_value(serde_json::json!({
        "host": "bg.example.com",
        "path": "/v1",
        "match": {"headers": [{"name": "x-canary", "value": "yes"}]},
        "filters": [
            {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x-via", "value": "bg"}]}},
            {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "shadow"}}}
        ],
        "timeouts": {"backendRequest": "3s"}
    }))
    .unwrap();
    let bad: BackendGroupRoute = serde_json::from_value(serde_json::json!({
        "host": "bg.example.com", "path": "/v2",
        "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "missing"}}}]
    }))
    .unwrap();
    let static_spec = |routes| BackendGroupSpec {
        backends: vec![StaticBackend { url: "http://192.0.2.10:8001".into(), weight: 1 }],
        routes,
        ..Default::default()
    };
    world.groups = vec![
        backend_group("shop", "canary", static_spec(vec![route, bad])),
        backend_group("shop", "shadow", static_spec(vec![])),
    ];
    let t = run(&world);
    let mut headers = http::HeaderMap::new();
    headers.insert("x-canary", http::HeaderValue::from_static("yes"));
    let view = crate::routes::RequestView {
        headers: &headers,
        ..crate::routes::RequestView::get(Some("bg.example.com"), "/v1/a")
    };
    let r = t.table.route_for(&view).unwrap();
    assert_eq!(r.filters.len(), 2);
    assert_eq!(r.timeouts.backend_request, Some(std::time::Duration::from_secs(3)));
    assert!(t.table.lookup(Some("bg.example.com"), "/v1/a").is_none(), "the header is required");
    assert_eq!(t.problems.len(), 1, "{:?}", t.problems);
    assert_eq!(t.problems[0].reason, "InvalidRoute");
    assert!(
        t.problems[0].message.contains("spec.routes[1].filters[0].requestMirror.backendRef.name"),
        "{:?}",
        t.problems
    );
}

#[path = "translate_gateway_tests.rs"]
mod gateway;

/// Sets the uid and resourceVersion the API server would give `obj`.
fn versioned<K: SetVersion + Clone>(obj: &Arc<K>, rv: &str) -> Arc<K> {
    let mut o = (**obj).clone();
    o.set_version(&|_, name| format!("uid-{name}"), rv);
    Arc::new(o)
}

#[test]
fn an_unchanged_service_keeps_its_group_across_builds_and_a_changed_slice_gets_a_new_one() {
    let mut world = shop_world();
    world.services = world.services.iter().map(|s| versioned(s, "1")).collect();
    world.slices = world.slices.iter().map(|s| versioned(s, "1")).collect();
    world.ingresses =
        vec![ingress("shop", "web").rule(Some("shop.example.com"), "/", "Prefix", svc_backend("api", 80)).build()];
    let (registry, mut memory) = (EndpointRegistry::default(), LastGoodCerts::default());
    let group = |t: &Translation| t.table.lookup(Some("shop.example.com"), "/").map(|r| r.group.clone()).unwrap();
    let first = translate(&world, &settings(), &registry, &mut memory, 1);
    let second = translate(&world, &settings(), &registry, &mut memory, 2);
    assert!(Arc::ptr_eq(&group(&first), &group(&second)), "the same versions: the same group");

    // A pod became ready: the slice has a new resourceVersion.
    world.slices[1] = versioned(
        &slice(
            "shop",
            "api-b",
            "api",
            "IPv4",
            &[("http", 8080), ("admin", 9090)],
            &[("10.0.0.3", true), ("10.0.0.4", true)],
        ),
        "2",
    );
    let third = translate(&world, &settings(), &registry, &mut memory, 3);
    assert!(!Arc::ptr_eq(&group(&second), &group(&third)));
    assert_eq!(
        endpoints_for(&third, "shop.example.com", "/").unwrap(),
        vec!["http://10.0.0.1:8080", "http://10.0.0.3:8080", "http://10.0.0.4:8080", "http://[fd00::1]:8080"]
    );
    // Objects without versions (as in the other tests) are compiled every time.
    let mut plain = shop_world();
    plain.ingresses = world.ingresses.clone();
    let a = translate(&plain, &settings(), &registry, &mut memory, 4);
    let b = translate(&plain, &settings(), &registry, &mut memory, 5);
    assert!(!Arc::ptr_eq(&group(&a), &group(&b)));
}

#[test]
fn a_tls_secret_is_parsed_again_only_when_its_version_changes() {
    let mut world = shop_world();
    world.secrets = vec![versioned(&tls_secret("shop", "shop-tls", "shop.example.com"), "1")];
    world.ingresses = vec![
        ingress("shop", "web")
            .rule(Some("shop.example.com"), "/", "Prefix", svc_backend("api", 80))
            .tls(&["shop.example.com"], "shop-tls")
            .build(),
    ];
    let (registry, mut memory) = (EndpointRegistry::default(), LastGoodCerts::default());
    let cert = |t: &Translation| t.table.certs.resolve(Some("shop.example.com")).expect("a certificate");
    let first = translate(&world, &settings(), &registry, &mut memory, 1);
    let second = translate(&world, &settings(), &registry, &mut memory, 2);
    assert!(Arc::ptr_eq(&cert(&first), &cert(&second)), "the same version is not parsed again");

    // Rotated: the Secret's new version is read at the next build.
    world.secrets = vec![versioned(&tls_secret("shop", "shop-tls", "shop.example.com"), "2")];
    let third = translate(&world, &settings(), &registry, &mut memory, 3);
    assert!(!Arc::ptr_eq(&cert(&second), &cert(&third)), "a new version is parsed");
    assert!(third.problems.is_empty(), "{:?}", third.problems);
}

#[path = "delta_tests.rs"]
mod delta;

#[test]
fn group_inputs_match_the_same_versions_in_any_slice_order_and_nothing_else() {
    let svc = versioned(&service("shop", "api", &[("http", 80)]), "1");
    let a = versioned(&slice("shop", "api-a", "api", "IPv4", &[("http", 8080)], &[("10.0.0.1", true)]), "1");
    let b = versioned(&slice("shop", "api-b", "api", "IPv4", &[("http", 8080)], &[("10.0.0.2", true)]), "1");
    let inputs = GroupInputs::of((&*svc, &[&*a, &*b])).unwrap();
    assert!(inputs.matches((&*svc, &[&*b, &*a])), "slices come in store order");
    assert!(!inputs.matches((&*svc, &[&*a])), "a slice went");
    let b2 = versioned(&b, "2");
    assert!(!inputs.matches((&*svc, &[&*a, &*b2])), "a slice changed");
    assert!(!inputs.matches((&*versioned(&svc, "2"), &[&*a, &*b])), "the Service changed");
    let unversioned = service("shop", "api", &[("http", 80)]);
    assert_eq!(GroupInputs::of((&*unversioned, &[])), None, "objects built by hand are never remembered");
}
