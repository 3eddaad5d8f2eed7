//! Incremental route table updates. Most changes in a large cluster are a few Ingresses
//! added, changed or deleted. When nothing but Ingresses changed, and every changed one
//! routes only exact hosts that no unchanged object claims (no default backend, Service
//! backends only, TLS for its own hosts only), its routes and certificates depend on
//! nothing but itself and the Services and Secrets it names. Those Ingresses are then translated alone, and their hosts spliced
//! into the previous table: the work grows with the change, not with the cluster. Any
//! other change is a full build, which an update must equal (`delta_tests`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::ownership::{Claim, HostOwnership};
use super::status::Feed;
use super::translate::{LastGoodCerts, Problem, Settings, is_ours, translate_part};
use super::world::{SERVICE_NAME_LABEL, World};
use crate::routes::{HostRule, RouteTable, wildcard_suffix};
use crate::upstream::EndpointRegistry;

/// Past this many changed Ingresses (or a quarter of them all), a full build is as cheap.
const MAX_CHANGED: usize = 2_000;

/// Which hosts the objects of the last build claim.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HostClaims {
    /// Exact hosts of Ingress rules, with how many rules claim each.
    ingress: HashMap<String, u32>,
    /// Exact hosts other objects claim (BackendGroup routes, HTTPRoutes, GRPCRoutes).
    others: HashSet<String>,
    /// Suffixes of every wildcard host claimed or routed: the exact hosts one label under
    /// one share its ownership (and its certificate).
    wildcards: HashSet<String>,
}

impl HostClaims {
    /// The hosts of `claims` (every object's, before ownership is decided).
    pub fn of(claims: &[Claim]) -> Self {
        let mut c = Self::default();
        for claim in claims {
            match &claim.host {
                HostRule::Exact(h) if claim.order.3 == "Ingress" => *c.ingress.entry(h.clone()).or_default() += 1,
                HostRule::Exact(h) => {
                    c.others.insert(h.clone());
                }
                HostRule::Wildcard(s) | HostRule::Suffix(s) => {
                    c.wildcards.insert(s.clone());
                }
            }
        }
        c
    }

    /// Adds wildcard suffixes a table routes (a Gateway's `*.` hostname claims nothing).
    pub fn add_wildcards<'a>(&mut self, suffixes: impl Iterator<Item = &'a str>) {
        for s in suffixes {
            if !self.wildcards.contains(s) {
                self.wildcards.insert(s.to_string());
            }
        }
    }

    fn count(&mut self, hosts: &[String], add: bool) {
        for h in hosts {
            match self.ingress.get_mut(h.as_str()) {
                Some(n) if add => *n += 1,
                Some(n) => {
                    *n -= 1;
                    if *n == 0 {
                        self.ingress.remove(h.as_str());
                    }
                }
                None if add => {
                    self.ingress.insert(h.clone(), 1);
                }
                None => {}
            }
        }
    }
}

/// What the last build read and made: where the next one starts from.
pub struct Previous {
    pub world: World,
    pub table: Arc<RouteTable>,
    pub feed: Arc<Feed>,
    pub claims: HostClaims,
    /// Made by the first update that needs it.
    pub by_name: OnceLock<Arc<ByName>>,
}

/// A table updated from the previous one.
pub struct Update {
    pub table: RouteTable,
    pub feed: Feed,
    pub claims: HostClaims,
    pub by_name: Arc<ByName>,
    /// How many Ingress versions were taken out or put in.
    pub changed: usize,
}

/// The hosts of one Ingress version whose routes depend on nothing but itself and the
/// Services and Secrets it names.
#[derive(Default)]
struct OwnHosts {
    /// The exact host of each rule.
    hosts: Vec<String>,
    /// Whether it has a TLS section (every host of which is one of `hosts`).
    tls: bool,
}

/// `ing`'s own hosts; `None` sends the change to a full build.
fn own_hosts(ing: &Ingress) -> Option<OwnHosts> {
    let Some(spec) = &ing.spec else { return Some(OwnHosts::default()) };
    if spec.default_backend.is_some() {
        return None;
    }
    let mut hosts = Vec::new();
    for rule in spec.rules.iter().flatten() {
        let HostRule::Exact(host) = HostRule::parse(rule.host.as_deref()?).ok()? else { return None };
        if rule.http.iter().flat_map(|h| &h.paths).any(|p| p.backend.service.is_none()) {
            return None;
        }
        hosts.push(host);
    }
    let tls = spec.tls.iter().flatten().collect::<Vec<_>>();
    for t in &tls {
        // No hosts: the rules' hosts.
        for h in t.hosts.iter().flatten() {
            let HostRule::Exact(h) = HostRule::parse(h).ok()? else { return None };
            if !hosts.contains(&h) {
                return None;
            }
        }
    }
    Some(OwnHosts { hosts, tls: !tls.is_empty() })
}

/// Objects by address: both worlds hold them, so an address is not reused meanwhile.
type PtrSet = HashSet<*const Ingress, std::hash::BuildHasherDefault<AddressHasher>>;

/// Addresses are unique and already spread: a multiply is hash enough (SipHash was half
/// of an update at 10,000 Ingresses).
#[derive(Default)]
struct AddressHasher(u64);

impl std::hash::Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }
}

fn same<K>(a: &[Arc<K>], b: &[Arc<K>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
}

/// Whether every kind but Ingress holds the very same objects (a store hands out the same
/// `Arc` for an object until it changes, in the same order until the store changes).
fn same_but_ingresses(a: &World, b: &World) -> bool {
    let (ga, gb) = (&a.gateway, &b.gateway);
    same(&a.classes, &b.classes)
        && same(&a.services, &b.services)
        && same(&a.slices, &b.slices)
        && same(&a.secrets, &b.secrets)
        && same(&a.groups, &b.groups)
        && same(&ga.classes, &gb.classes)
        && same(&ga.gateways, &gb.gateways)
        && same(&ga.routes, &gb.routes)
        && same(&ga.grpc_routes, &gb.grpc_routes)
        && same(&ga.grants, &gb.grants)
        && same(&ga.namespaces, &gb.namespaces)
        && same(&ga.backend_tls_policies, &gb.backend_tls_policies)
        && same(&ga.config_maps, &gb.config_maps)
}

fn key(ing: &Ingress) -> (String, String) {
    (ing.namespace().unwrap_or_default(), ing.name_any())
}

/// One side of the change: Ingress versions of ours, with their hosts.
#[derive(Default)]
struct Side {
    ours: Vec<Arc<Ingress>>,
    hosts: Vec<String>,
    /// Whether one of them has a TLS section.
    tls: bool,
}

impl Side {
    /// `None` when one of `versions` of ours depends on more than itself.
    fn of(versions: &[Arc<Ingress>], world: &World, class: &str) -> Option<Self> {
        let mut side = Self::default();
        for ing in versions.iter().filter(|i| is_ours(i, &world.classes, class)) {
            let own = own_hosts(ing)?;
            side.hosts.extend(own.hosts);
            side.tls |= own.tls;
            side.ours.push(ing.clone());
        }
        Some(side)
    }
}

/// `world` as an update of `prev`, or `None` when it takes a full build (`prev` is then
/// as it was; after an update, its claims are the update's).
pub fn update(
    prev: &mut Previous,
    world: &World,
    settings: &Settings,
    registry: &EndpointRegistry,
    last_good: &mut LastGoodCerts,
    generation: u64,
) -> Option<Update> {
    if !same_but_ingresses(&prev.world, world) {
        return None;
    }
    let before: PtrSet = prev.world.ingresses.iter().map(Arc::as_ptr).collect();
    let after: PtrSet = world.ingresses.iter().map(Arc::as_ptr).collect();
    let removed: Vec<Arc<Ingress>> =
        prev.world.ingresses.iter().filter(|i| !after.contains(&Arc::as_ptr(i))).cloned().collect();
    let added: Vec<Arc<Ingress>> =
        world.ingresses.iter().filter(|i| !before.contains(&Arc::as_ptr(i))).cloned().collect();
    let changed = removed.len() + added.len();
    if changed > MAX_CHANGED.min(world.ingresses.len() / 4 + 1) {
        return None;
    }
    let class = settings.ingress_class.as_str();
    let (gone, new) = (Side::of(&removed, &prev.world, class)?, Side::of(&added, world, class)?);
    // Certificates for the hosts: in namespace mode only an Ingress routing a host serves
    // one for it, but a Gateway listener can too, and without ownership any Ingress can.
    let certs = gone.tls || new.tls;
    if certs && (settings.host_ownership == HostOwnership::None || !world.gateway.gateways.is_empty()) {
        return None;
    }

    // Every host the change touches must be the changed Ingresses' alone: no unchanged
    // Ingress, no other kind, no wildcard over it, no route of anyone else in the table.
    let mut gone_count: HashMap<&str, u32> = HashMap::new();
    for h in &gone.hosts {
        *gone_count.entry(h).or_default() += 1;
    }
    let gone_ids: HashSet<String> =
        gone.ours.iter().map(|i| format!("{}/{}", i.namespace().unwrap_or_default(), i.name_any())).collect();
    let replaced: BTreeSet<String> = gone.hosts.iter().chain(&new.hosts).cloned().collect();
    for h in &replaced {
        let claimed = prev.claims.ingress.get(h.as_str()).copied().unwrap_or(0);
        if claimed > gone_count.get(h.as_str()).copied().unwrap_or(0)
            || prev.claims.others.contains(h)
            || wildcard_suffix(h).is_some_and(|s| prev.claims.wildcards.contains(s))
            || prev.table.route_ids_of_host(h).any(|id| !gone_ids.contains(id))
        {
            return None;
        }
    }

    let by_name = prev.by_name.get_or_init(|| Arc::new(ByName::of(world))).clone();
    let part = part_world(&new.ours, world, &by_name);
    let t = translate_part(&part, settings, registry, last_good, generation);
    let maybe_unused = gone.hosts.iter().flat_map(|h| prev.table.groups_of_host(h)).collect();
    let table = prev.table.spliced(generation, &replaced, t.table, maybe_unused, certs);

    let changed_keys: HashSet<(String, String)> = removed.iter().chain(&added).map(|i| key(i)).collect();
    let is_changed = |k: &(String, String)| changed_keys.contains(k);
    let mut problems: Vec<Problem> = prev
        .feed
        .problems
        .iter()
        .filter(|p| p.kind != "Ingress" || !changed_keys.contains(&(p.namespace.clone(), p.name.clone())))
        .cloned()
        .chain(t.problems)
        .collect();
    problems.sort();
    problems.dedup();
    let mut served: Vec<(String, String)> = prev.feed.served.iter().filter(|k| !is_changed(k)).cloned().collect();
    let mut unserved: Vec<(String, String)> = prev.feed.unserved.iter().filter(|k| !is_changed(k)).cloned().collect();
    for ing in &added {
        if is_ours(ing, &world.classes, class) { served.push(key(ing)) } else { unserved.push(key(ing)) }
    }
    let feed = Feed {
        problems,
        groups: prev.feed.groups.clone(),
        served,
        unserved,
        invalid_groups: prev.feed.invalid_groups.clone(),
        gateway: prev.feed.gateway.clone(),
    };
    // The previous build's claims are not needed again: the next build starts from these.
    let mut claims = std::mem::take(&mut prev.claims);
    claims.count(&gone.hosts, false);
    claims.count(&new.hosts, true);
    Some(Update { table, feed, claims, by_name, changed })
}

/// The world's Services, EndpointSlices and Secrets by `(namespace, name)` (a slice by its
/// Service's), where an update finds what its Ingresses name. Made at the first update
/// after a full build and kept by the updates that follow, which all see the same objects
/// of these kinds.
#[derive(Default)]
pub struct ByName {
    services: HashMap<(String, String), Arc<Service>>,
    slices: HashMap<(String, String), Vec<Arc<EndpointSlice>>>,
    secrets: HashMap<(String, String), Arc<Secret>>,
}

impl ByName {
    fn of(world: &World) -> Self {
        let key = |m: &ObjectMeta, name: Option<&String>| {
            (m.namespace.clone().unwrap_or_default(), name.cloned().unwrap_or_default())
        };
        let mut by = Self::default();
        for s in &world.services {
            by.services.insert(key(&s.metadata, s.metadata.name.as_ref()), s.clone());
        }
        for s in &world.slices {
            if let Some(svc) = s.labels().get(SERVICE_NAME_LABEL) {
                by.slices.entry(key(&s.metadata, Some(svc))).or_default().push(s.clone());
            }
        }
        for s in &world.secrets {
            by.secrets.insert(key(&s.metadata, s.metadata.name.as_ref()), s.clone());
        }
        by
    }
}

/// The Ingresses `ours` with the classes, Services, EndpointSlices and Secrets they read.
fn part_world(ours: &[Arc<Ingress>], world: &World, by_name: &ByName) -> World {
    let mut part = World { ingresses: ours.to_vec(), classes: world.classes.clone(), ..World::default() };
    let (mut services, mut secrets) = (BTreeSet::new(), BTreeSet::new());
    for ing in ours {
        let ns = ing.namespace().unwrap_or_default();
        let rules = ing.spec.iter().flat_map(|s| s.rules.iter().flatten());
        for svc in rules.flat_map(|r| r.http.iter().flat_map(|h| &h.paths)).filter_map(|p| p.backend.service.as_ref()) {
            services.insert((ns.clone(), svc.name.clone()));
        }
        for name in ing.spec.iter().flat_map(|s| s.tls.iter().flatten()).filter_map(|t| t.secret_name.clone()) {
            secrets.insert((ns.clone(), name));
        }
    }
    for key in &services {
        part.services.extend(by_name.services.get(key).cloned());
        part.slices.extend(by_name.slices.get(key).into_iter().flatten().cloned());
    }
    for key in &secrets {
        part.secrets.extend(by_name.secrets.get(key).cloned());
    }
    part
}
