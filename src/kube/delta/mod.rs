//! Incremental route table updates. Most changes in a large cluster are a few routes
//! added, changed or deleted: Ingresses (`ingresses`) or HTTPRoutes (`http_routes`). When
//! nothing but objects of one of those kinds changed, and every changed one routes only
//! exact hosts that no unchanged object claims, its routes and certificates depend on
//! nothing but itself and what it names (Services, Secrets, its Gateways). Those objects
//! are then translated alone, and their hosts spliced into the previous table: the work
//! grows with the change, not with the cluster. Any other change is a full build, which an
//! update must equal (`delta_tests`).

mod http_routes;
mod ingresses;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use k8s_openapi::api::core::v1::Secret;

use super::gateway::api::Gateway;
use super::ownership::Claim;
use super::records::{Identity, ServiceRecord, SliceRecord};
use super::status::Feed;
use super::translate::{LastGoodCerts, Problem, Settings};
use super::world::World;
use crate::routes::{HostRule, RouteTable, wildcard_suffix};
use crate::upstream::EndpointRegistry;

/// Past this many changed objects (or a quarter of those of their kind), a full build is
/// as cheap.
const MAX_CHANGED: usize = 2_000;

/// Which hosts the objects of the last build claim.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HostClaims {
    /// Exact hosts of Ingress rules, with how many rules claim each.
    ingress: HashMap<String, u32>,
    /// Exact hosts HTTPRoutes are served on, with how many routes claim each.
    http_routes: HashMap<String, u32>,
    /// Exact hosts other objects claim (BackendGroup routes, GRPCRoutes).
    others: HashSet<String>,
    /// Suffixes of every wildcard host claimed or routed: the exact hosts one label under
    /// one share its ownership (and its certificate).
    wildcards: HashSet<String>,
}

/// The kinds an update can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ingress,
    HttpRoute,
}

impl HostClaims {
    /// The hosts of `claims` (every object's, before ownership is decided).
    pub fn of(claims: &[Claim]) -> Self {
        let mut c = Self::default();
        for claim in claims {
            match &claim.host {
                HostRule::Exact(h) if claim.order.3 == "Ingress" => *c.ingress.entry(h.clone()).or_default() += 1,
                HostRule::Exact(h) if claim.order.3 == "HTTPRoute" => *c.http_routes.entry(h.clone()).or_default() += 1,
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

    fn counts(&mut self, kind: Kind) -> &mut HashMap<String, u32> {
        match kind {
            Kind::Ingress => &mut self.ingress,
            Kind::HttpRoute => &mut self.http_routes,
        }
    }

    /// Counts `hosts` (one per claim) in or out of `kind`'s claims.
    fn count(&mut self, kind: Kind, hosts: &[String], add: bool) {
        let counts = self.counts(kind);
        for h in hosts {
            match counts.get_mut(h.as_str()) {
                Some(n) if add => *n += 1,
                Some(n) => {
                    *n -= 1;
                    if *n == 0 {
                        counts.remove(h.as_str());
                    }
                }
                None if add => {
                    counts.insert(h.clone(), 1);
                }
                None => {}
            }
        }
    }

    /// Adds the claims of kind `kind` in `part` (a part of the world's).
    fn add(&mut self, kind: Kind, part: &HostClaims) {
        let from = match kind {
            Kind::Ingress => &part.ingress,
            Kind::HttpRoute => &part.http_routes,
        };
        let counts = self.counts(kind);
        for (host, n) in from {
            *counts.entry(host.clone()).or_default() += n;
        }
    }

    /// Whether every host in `hosts` is claimed only by the objects of `kind` going away
    /// (`gone`: one host per claim of theirs): no other object of any kind, and no wildcard
    /// over it.
    fn only_by(&self, kind: Kind, hosts: &BTreeSet<String>, gone: &[String]) -> bool {
        let mut gone_count: HashMap<&str, u32> = HashMap::new();
        for h in gone {
            *gone_count.entry(h).or_default() += 1;
        }
        let (own, rival) = match kind {
            Kind::Ingress => (&self.ingress, &self.http_routes),
            Kind::HttpRoute => (&self.http_routes, &self.ingress),
        };
        hosts.iter().all(|h| {
            own.get(h.as_str()).copied().unwrap_or(0) <= gone_count.get(h.as_str()).copied().unwrap_or(0)
                && !rival.contains_key(h.as_str())
                && !self.others.contains(h)
                && !wildcard_suffix(h).is_some_and(|s| self.wildcards.contains(s))
        })
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
    /// How many object versions were taken out or put in.
    pub changed: usize,
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
    let context = Context { settings, registry, generation };
    match changed_kind(&prev.world, world)? {
        Kind::Ingress => ingresses::update(prev, world, &context, last_good),
        Kind::HttpRoute => http_routes::update(prev, world, &context, last_good),
    }
}

/// What every update is made with.
struct Context<'a> {
    settings: &'a Settings,
    registry: &'a EndpointRegistry,
    generation: u64,
}

/// Objects by address: both worlds hold them, so an address is not reused meanwhile.
type PtrSet<K> = HashSet<*const K, std::hash::BuildHasherDefault<AddressHasher>>;

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

/// Object versions taken out and put in.
type Changes<K> = (Vec<Arc<K>>, Vec<Arc<K>>);

/// The objects of `before` not in `after` (removed, or replaced by a new version) and
/// those of `after` not in `before`; `None` past what an update is worth.
fn changes<K>(before: &[Arc<K>], after: &[Arc<K>]) -> Option<Changes<K>> {
    let before_set: PtrSet<K> = before.iter().map(Arc::as_ptr).collect();
    let after_set: PtrSet<K> = after.iter().map(Arc::as_ptr).collect();
    let removed: Vec<Arc<K>> = before.iter().filter(|i| !after_set.contains(&Arc::as_ptr(i))).cloned().collect();
    let added: Vec<Arc<K>> = after.iter().filter(|i| !before_set.contains(&Arc::as_ptr(i))).cloned().collect();
    (removed.len() + added.len() <= MAX_CHANGED.min(after.len() / 4 + 1)).then_some((removed, added))
}

fn same<K>(a: &[Arc<K>], b: &[Arc<K>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
}

/// Whether two lists hold the same Gateways but for their status. Our status writes (the
/// attached routes per listener, after every route change) make new objects with the same
/// spec and generation, and a translation reads nothing else of a Gateway.
fn same_gateways(a: &[Arc<Gateway>], b: &[Arc<Gateway>]) -> bool {
    let same_spec = |x: &Gateway, y: &Gateway| {
        let (m, n) = (&x.metadata, &y.metadata);
        m.uid.is_some()
            && m.uid == n.uid
            && m.generation == n.generation
            && m.creation_timestamp == n.creation_timestamp
            && x.spec == y.spec
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y) || same_spec(x, y))
}

/// The one kind of the two an update can change that changed, when every other kind holds
/// the very same objects (a store hands out the same `Arc` for an object until it changes,
/// in the same order until the store changes); `None` when more changed.
fn changed_kind(a: &World, b: &World) -> Option<Kind> {
    let (ga, gb) = (&a.gateway, &b.gateway);
    let rest = same(&a.classes, &b.classes)
        && same(&a.services, &b.services)
        && same(&a.slices, &b.slices)
        && same(&a.secrets, &b.secrets)
        && same(&a.groups, &b.groups)
        && same(&ga.classes, &gb.classes)
        && same_gateways(&ga.gateways, &gb.gateways)
        && same(&ga.grpc_routes, &gb.grpc_routes)
        && same(&ga.grants, &gb.grants)
        && same(&ga.namespaces, &gb.namespaces)
        && same(&ga.backend_tls_policies, &gb.backend_tls_policies)
        && same(&ga.config_maps, &gb.config_maps);
    match (rest, same(&a.ingresses, &b.ingresses), same(&ga.routes, &gb.routes)) {
        (true, _, true) => Some(Kind::Ingress),
        (true, true, false) => Some(Kind::HttpRoute),
        _ => None,
    }
}

/// `(namespace, name)`, the name as `name_any` gives it.
fn names_of(obj: &impl Identity) -> (String, String) {
    let (namespace, name) = obj.names();
    (namespace.to_string(), name.to_string())
}

/// `problems` without those of the `kind` objects `changed`, with `new` ones added.
fn patched_problems(
    problems: &[Problem],
    kind: &str,
    changed: &HashSet<(String, String)>,
    new: Vec<Problem>,
) -> Vec<Problem> {
    let mut out: Vec<Problem> = problems
        .iter()
        .filter(|p| p.kind != kind || !changed.contains(&(p.namespace.clone(), p.name.clone())))
        .cloned()
        .chain(new)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The world's Services, EndpointSlices and Secrets by `(namespace, name)` (a slice by its
/// Service's), where an update finds what its objects name. Made at the first update
/// after a full build and kept by the updates that follow, which all see the same objects
/// of these kinds.
pub struct ByName {
    services: NameIndex<Arc<ServiceRecord>>,
    /// Each Service's slices (never an empty list).
    slices: NameIndex<Vec<Arc<SliceRecord>>>,
    secrets: NameIndex<Arc<Secret>>,
}

impl ByName {
    fn of(world: &World) -> Self {
        let mut by = Self {
            services: NameIndex::new(|s| (s.meta.namespace(), s.meta.name())),
            slices: NameIndex::new(|s| s.first().map_or(("", ""), |s| (s.meta.namespace(), &*s.service))),
            secrets: NameIndex::new(|s| {
                (s.metadata.namespace.as_deref().unwrap_or(""), s.metadata.name.as_deref().unwrap_or(""))
            }),
        };
        for s in &world.services {
            by.services.insert(s.clone());
        }
        for s in world.slices.iter().filter(|s| !s.service.is_empty()) {
            match by.slices.get_mut((s.meta.namespace(), &*s.service)) {
                Some(slices) => slices.push(s.clone()),
                None => by.slices.insert(vec![s.clone()]),
            }
        }
        for s in &world.secrets {
            by.secrets.insert(s.clone());
        }
        by
    }

    /// Adds to `part` the Services `services` (with their slices) and the Secrets `secrets`.
    fn add_to(&self, part: &mut World, services: &BTreeSet<(String, String)>, secrets: &BTreeSet<(String, String)>) {
        for (ns, name) in services {
            part.services.extend(self.services.get((ns.as_str(), name.as_str())).cloned());
            part.slices.extend(self.slices.get((ns.as_str(), name.as_str())).into_iter().flatten().cloned());
        }
        for (ns, name) in secrets {
            part.secrets.extend(self.secrets.get((ns.as_str(), name.as_str())).cloned());
        }
    }
}

/// Values found by the `(namespace, name)` inside them, with no copy of the names as a
/// key: at 10,000 Services with their slices, keys of copied names were most of what
/// [`ByName`] held (2.9 MB).
struct NameIndex<T> {
    hasher: std::hash::RandomState,
    table: hashbrown::HashTable<T>,
    names: fn(&T) -> (&str, &str),
}

impl<T> NameIndex<T> {
    fn new(names: fn(&T) -> (&str, &str)) -> Self {
        Self { hasher: Default::default(), table: Default::default(), names }
    }

    fn hash(&self, key: (&str, &str)) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, key)
    }

    /// Adds `value`, in place of one of the same names.
    fn insert(&mut self, value: T) {
        let names = self.names;
        let hash = self.hash(names(&value));
        match self.table.find_mut(hash, |v| names(v) == names(&value)) {
            Some(slot) => *slot = value,
            None => {
                let hasher = &self.hasher;
                self.table.insert_unique(hash, value, |v| std::hash::BuildHasher::hash_one(hasher, names(v)));
            }
        }
    }

    fn get(&self, key: (&str, &str)) -> Option<&T> {
        let names = self.names;
        self.table.find(self.hash(key), |v| names(v) == key)
    }

    fn get_mut(&mut self, key: (&str, &str)) -> Option<&mut T> {
        let (names, hash) = (self.names, self.hash(key));
        self.table.find_mut(hash, |v| names(v) == key)
    }
}

/// The index of `world`, made once after a full build.
fn by_name(prev: &Previous, world: &World) -> Arc<ByName> {
    prev.by_name.get_or_init(|| Arc::new(ByName::of(world))).clone()
}
