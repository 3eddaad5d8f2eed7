//! Incremental updates against full builds: every update a sequence of random Ingress
//! changes allows must give what a full build of the same world gives.

use super::*;
use crate::kube::controller::{Built, build};
use crate::kube::delta::Previous;

/// A deterministic sequence (xorshift), so a failure replays.
struct Draw(u64);

impl Draw {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

const NAMESPACES: [&str; 3] = ["a", "b", "c"];
/// Hosts of other objects (a BackendGroup route, under a wildcard, a TLS Ingress).
const TAKEN: [&str; 3] = ["bg.example.com", "x.wild.example.com", "tls.example.com"];
/// Hosts the changing Ingresses draw from: mostly hosts of their own, some contested.
const OWN_HOSTS: usize = 150;

fn host(n: usize) -> String {
    match n {
        n if n < OWN_HOSTS => format!("h{n}.{}", if n % 2 == 0 { "example.com" } else { "other.net" }),
        n => TAKEN[(n - OWN_HOSTS) % TAKEN.len()].to_string(),
    }
}

fn every_host() -> impl Iterator<Item = String> {
    (0..OWN_HOSTS + TAKEN.len()).map(host)
}
const PATHS: [&str; 3] = ["/", "/api", "/api/v2"];
/// `missing` is a Service that does not exist.
const SERVICES: [&str; 3] = ["web", "api", "missing"];

/// Versions for the memo of Service groups, as the API server gives them.
fn versioned<K: SetVersion>(mut obj: K, n: usize) -> K {
    obj.set_version(&|ns, name| format!("uid-{ns}-{name}"), &n.to_string());
    obj
}

/// Services, slices and the objects no change touches: a wildcard, a TLS host, a default
/// backend, a BackendGroup route and an Ingress of another class.
fn base_world() -> World {
    let mut world = World { classes: vec![quic_class(&[])], ..World::default() };
    for (i, ns) in NAMESPACES.iter().enumerate() {
        for (j, name) in ["web", "api"].iter().enumerate() {
            let svc = Arc::unwrap_or_clone(service(ns, name, &[("http", 80)]));
            world.services.push(Arc::new(versioned(svc, 1)));
            let ip = format!("10.{i}.{j}.1");
            let s =
                Arc::unwrap_or_clone(slice(ns, &format!("{name}-1"), name, "IPv4", &[("http", 8080)], &[(&ip, true)]));
            world.slices.push(Arc::new(versioned(s, 1)));
        }
    }
    world.secrets =
        NAMESPACES.iter().flat_map(|ns| ["tls", "tls-2"].map(|n| tls_secret(ns, n, &format!("{n}.{ns}")))).collect();
    world.ingresses = vec![
        ingress("a", "wild").age(1000).rule(Some("*.wild.example.com"), "/", "Prefix", svc_backend("web", 80)).build(),
        ingress("a", "secure")
            .age(1000)
            .rule(Some("tls.example.com"), "/", "Prefix", svc_backend("web", 80))
            .tls(&["tls.example.com"], "tls")
            .build(),
        ingress("b", "foreign")
            .age(1000)
            .class(Some("other"))
            .rule(Some("h0.example.com"), "/", "Prefix", svc_backend("web", 80))
            .build(),
    ];
    world.groups = vec![backend_group(
        "c",
        "static",
        BackendGroupSpec {
            backends: vec![StaticBackend { url: "http://127.0.0.1:8001".into(), weight: 1 }],
            routes: vec![BackendGroupRoute {
                host: Some("bg.example.com".into()),
                path: "/".into(),
                path_type: PathType::Prefix,
                ..Default::default()
            }],
            ..Default::default()
        },
    )];
    world
}

/// A new version of Ingress `ns/name`: one or two rules, now and then something that
/// takes a full build (a default backend, a TLS section, another class).
fn random_ingress(d: &mut Draw, ns: &str, name: &str) -> Arc<IngressRecord> {
    let mut b = ingress(ns, name).age(d.below(50) as i64);
    let first = host(d.below(OWN_HOSTS + TAKEN.len()));
    for i in 0..=d.below(2) {
        let h = if i == 0 { first.clone() } else { host(d.below(OWN_HOSTS + TAKEN.len())) };
        b = b.rule(Some(&h), d.pick(&PATHS), d.pick(&["Prefix", "Exact"]), svc_backend(d.pick(&SERVICES), 80));
    }
    match d.below(12) {
        0 => b = b.default_backend(svc_backend("web", 80)),
        1 => b = b.tls(&["h0.example.com"], "tls"),
        2 => b = b.class(Some("other")),
        3 => b = b.tls(&[&first], d.pick(&["tls", "tls-2"])),
        4 => b = b.tls(&[], "tls"),
        5 => b = b.tls(&[&first], "missing"),
        _ => {}
    }
    b.build()
}

/// What a table and its feed show, in an order that does not depend on how they were made.
fn observed(b: &Built) -> serde_json::Value {
    let mut view = b.table.debug_view();
    view["generation"] = serde_json::Value::Null;
    let mut certs: Vec<String> = b.table.certs.hosts().collect();
    certs.sort_unstable();
    view["certificates"] = serde_json::json!(certs);
    let mut routes: Vec<String> = b.table.routes().iter().map(|r| format!("{r:?}")).collect();
    routes.sort();
    view["routes"] = serde_json::json!(routes);
    let looked_up: Vec<String> = every_host()
        .chain(["nothing.example.com".to_string()])
        .flat_map(|h| ["/", "/api", "/api/v2/x", "/other"].map(|p| (h.clone(), p)))
        .map(|(h, p)| format!("{h}{p} -> {:?}", b.table.lookup(Some(&h), p).map(|r| (&r.id, &r.group.id))))
        .collect();
    view["lookups"] = serde_json::json!(looked_up);
    // Which certificate each host gets, as the hash of its leaf.
    let served_certs: Vec<String> = every_host()
        .map(|h| {
            let leaf = b.table.certs.resolve(Some(&h)).and_then(|k| k.cert.first().map(|c| c.as_ref().to_vec()));
            let mut hasher = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&leaf, &mut hasher);
            format!("{h}: {:x}", std::hash::Hasher::finish(&hasher))
        })
        .collect();
    view["served_certs"] = serde_json::json!(served_certs);
    let sorted = |v: &[(String, String)]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    view["served"] = serde_json::json!(sorted(&b.feed.served));
    view["unserved"] = serde_json::json!(sorted(&b.feed.unserved));
    view["problems"] = serde_json::json!(b.feed.problems.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>());
    view
}

fn previous(b: Built) -> (Previous, LastGoodCerts) {
    b.into_previous()
}

#[test]
fn updates_equal_full_builds_over_random_ingress_changes() {
    let settings = tenant_settings();
    let registry = EndpointRegistry::default();
    let mut d = Draw(0x9e37_79b9_7f4a_7c15);
    let mut world = base_world();
    let first = build(world.clone(), &settings, &registry, LastGoodCerts::default(), None, 1);
    let (mut prev, mut last_good) = previous(first);
    let (mut updates, mut full) = (0, 0);
    let names: Vec<String> = (0..12).map(|i| format!("i{i}")).collect();
    for step in 0..400u64 {
        // One to three changes: a new version of an Ingress (created if it was not
        // there), or its deletion.
        for _ in 0..=d.below(3) {
            let (ns, name) = (d.pick(&NAMESPACES).to_string(), names[d.below(names.len())].clone());
            let at = world.ingresses.iter().position(|i| i.meta.namespace() == ns && i.meta.name() == name);
            match (at, d.below(4)) {
                (Some(at), 0) => {
                    world.ingresses.remove(at);
                }
                (Some(at), _) => world.ingresses[at] = random_ingress(&mut d, &ns, &name),
                (None, _) => world.ingresses.push(random_ingress(&mut d, &ns, &name)),
            }
        }
        let generation = step + 2;
        let expected = build(world.clone(), &settings, &registry, LastGoodCerts::default(), None, generation);
        let got = build(world.clone(), &settings, &registry, last_good, Some(&mut prev), generation);
        match got.incremental {
            Some(_) => updates += 1,
            None => full += 1,
        }
        assert_eq!(
            observed(&got),
            observed(&expected),
            "step {step} ({:?}): the table or feed differs from a full build",
            got.incremental
        );
        assert_eq!(got.claims, expected.claims, "step {step}: host claims differ");
        assert_eq!(got.table.generation, generation);
        (prev, last_good) = previous(got);
    }
    eprintln!("{updates} updates, {full} full builds");
    assert!(updates >= 50 && full >= 50, "both ways were exercised: {updates} updates, {full} full builds");
}

#[test]
fn a_change_to_anything_but_ingresses_takes_a_full_build() {
    let settings = tenant_settings();
    let registry = EndpointRegistry::default();
    let mut world = base_world();
    let (mut prev, last_good) = previous(build(world.clone(), &settings, &registry, LastGoodCerts::default(), None, 1));
    world.services.pop();
    world
        .ingresses
        .push(ingress("a", "new").rule(Some("h0.example.com"), "/", "Prefix", svc_backend("web", 80)).build());
    let got = build(world.clone(), &settings, &registry, last_good, Some(&mut prev), 2);
    assert_eq!(got.incremental, None, "a Service went: every group may differ");
    let (mut prev, last_good) = previous(got);
    world
        .ingresses
        .push(ingress("a", "newer").rule(Some("h1.example.com"), "/", "Prefix", svc_backend("web", 80)).build());
    let got = build(world, &settings, &registry, last_good, Some(&mut prev), 3);
    assert_eq!(got.incremental, Some(1), "one new Ingress with a host of its own is an update");
    assert!(got.table.lookup(Some("h1.example.com"), "/").is_some());
    assert!(got.table.lookup(Some("h0.example.com"), "/").is_some(), "the other routes stay");
}

// === HTTPRoutes ===

use super::gateway::{class as gateway_class, gw, gw_settings, https, route};
use crate::kube::gateway::api::HTTPRoute;
use crate::kube::gateway::model::GATEWAY_CONTROLLER_NAME;
use crate::kube::gateway::status::{comparable, gateway_status, route_parents};

/// Two Gateways: `infra/gw` (an HTTPS listener for every host, and one for
/// `*.example.com` admitting namespace `a` only) and `infra/edge` (an HTTPS listener for
/// `h1.other.net`); no route changes them.
fn route_world() -> World {
    let mut world = base_world();
    world.secrets.push(tls_secret("infra", "cert", "gw.example.com"));
    world.secrets.push(tls_secret("infra", "edge", "edge.example.com"));
    world.gateway.classes = vec![gateway_class("quic", GATEWAY_CONTROLLER_NAME)];
    let mut every = https("https", 443, None, serde_json::json!({"name": "cert"}));
    every["allowedRoutes"] = serde_json::json!({"namespaces": {"from": "All"}});
    let own = https("own", 443, Some("*.example.com"), serde_json::json!({"name": "cert"}));
    let mut edge = https("edge", 443, Some("h1.other.net"), serde_json::json!({"name": "edge"}));
    edge["allowedRoutes"] = serde_json::json!({"namespaces": {"from": "All"}});
    let gateways = [gw("infra", "gw", serde_json::json!([every, own])), gw("infra", "edge", serde_json::json!([edge]))];
    world.gateway.gateways = gateways.into_iter().map(|g| Arc::new(versioned(Arc::unwrap_or_clone(g), 1))).collect();
    world
}

/// A new version of HTTPRoute `ns/name`: hostnames of its own or contested (an Ingress's,
/// a wildcard, none), one of the Gateways or a missing one, a Service or a missing one.
fn random_route(d: &mut Draw, ns: &str, name: &str) -> Arc<HTTPRoute> {
    // Mostly hosts of their own (one in six of another object's).
    let mut hostnames: Vec<String> = (0..=d.below(2))
        .map(|_| if d.below(6) == 0 { host(OWN_HOSTS + d.below(TAKEN.len())) } else { host(d.below(OWN_HOSTS)) })
        .collect();
    match d.below(14) {
        0 => hostnames.clear(),
        1 => hostnames.push("*.example.com".into()),
        _ => {}
    }
    let parent = d.pick(&["gw", "gw", "edge", "nowhere"]);
    let mut spec = serde_json::json!({
        "parentRefs": [{"name": parent, "namespace": "infra"}],
        "hostnames": hostnames,
        "rules": [{"matches": [{"path": {"type": d.pick(&["PathPrefix", "Exact"]), "value": d.pick(&PATHS)}}],
                   "backendRefs": [{"name": d.pick(&SERVICES), "port": 80}]}],
    });
    if d.below(6) == 0 {
        spec["parentRefs"].as_array_mut().unwrap().push(serde_json::json!({"name": "edge", "namespace": "infra"}));
    }
    route(ns, name, d.below(50) as i64, spec)
}

/// What status is written from: every Gateway's and every route's entries.
fn statuses(b: &Built) -> serde_json::Value {
    let t = &b.feed.gateway;
    let gateways: Vec<_> =
        (0..t.model.gateways.len()).map(|g| gateway_status(t, g, &[], &Default::default())).collect();
    let routes: Vec<_> = t
        .model
        .routes
        .iter()
        .zip(&t.outcomes)
        .map(|(r, o)| (r.key.namespace.clone(), r.key.name.clone(), route_parents(r, o, &Default::default())))
        .collect();
    // Without transition times, which are the time of the call.
    comparable(&serde_json::json!({"gateways": gateways, "routes": routes}))
}

#[test]
fn updates_equal_full_builds_over_random_http_route_changes() {
    let mut settings = tenant_settings();
    settings.gateway_ports = gw_settings().gateway_ports;
    let registry = EndpointRegistry::default();
    let mut d = Draw(0x2545_f491_4f6c_dd1d);
    let mut world = route_world();
    let (mut prev, mut last_good) =
        previous(build(world.clone(), &settings, &registry, LastGoodCerts::default(), None, 1));
    let (mut updates, mut full) = (0, 0);
    let names: Vec<String> = (0..8).map(|i| format!("r{i}")).collect();
    let mut after_status_writes = 0;
    for step in 0..400u64 {
        for _ in 0..=d.below(3) {
            let (ns, name) = (d.pick(&NAMESPACES).to_string(), names[d.below(names.len())].clone());
            let routes = &mut world.gateway.routes;
            let at = routes.iter().position(|r| r.namespace().as_deref() == Some(ns.as_str()) && r.name_any() == name);
            match (at, d.below(4)) {
                (Some(at), 0) => {
                    routes.remove(at);
                }
                (Some(at), _) => routes[at] = random_route(&mut d, &ns, &name),
                (None, _) => routes.push(random_route(&mut d, &ns, &name)),
            }
        }
        // Now and then a status write on a Gateway: a new object, the same spec and generation.
        let status_written = d.below(8) == 0;
        if status_written {
            let g = &mut world.gateway.gateways[d.below(2)];
            let mut written = Arc::unwrap_or_clone(g.clone());
            written.status = Some(Default::default());
            *g = Arc::new(written);
        }
        let generation = step + 2;
        let expected = build(world.clone(), &settings, &registry, LastGoodCerts::default(), None, generation);
        let got = build(world.clone(), &settings, &registry, last_good, Some(&mut prev), generation);
        match got.incremental {
            Some(_) => updates += 1,
            None => full += 1,
        }
        after_status_writes += usize::from(status_written && got.incremental.is_some());
        assert_eq!(
            observed(&got),
            observed(&expected),
            "step {step} ({:?}): the table or feed differs",
            got.incremental
        );
        assert_eq!(statuses(&got), statuses(&expected), "step {step} ({:?}): status differs", got.incremental);
        assert_eq!(got.claims, expected.claims, "step {step}: host claims differ");
        (prev, last_good) = previous(got);
    }
    eprintln!("{updates} updates ({after_status_writes} after a Gateway status write), {full} full builds");
    assert!(updates >= 50 && full >= 50, "both ways were exercised: {updates} updates, {full} full builds");
    assert!(after_status_writes >= 5, "a Gateway's status write is no change to its routes");
}
