//! Translation: watched objects → `RouteTable`. A pure function of the `World` (plus the
//! last good certificate of each Secret), so every rule is unit-tested with object
//! builders. Invalid or dangling objects become `Problem`s and are skipped; the rest of the
//! table is built as usual.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::IngressClass;
use kube::ResourceExt;
use rustls::sign::CertifiedKey;

use super::crd::BackendGroup as BackendGroupCr;
use super::endpoints::{PortRef, app_protocol_scheme, ready_addresses, service_port};
use super::gateway::{GatewayTranslation, ServedPorts};
use super::ownership::{Claim, Grants, HostOwnership, Owners};
use super::policy::BackendPolicy;
use super::records::{BackendPort, Identity, IngressBackendRecord, IngressRecord, ServiceRecord, SliceRecord};
use super::world::{Indexed, World};
use crate::routes::CertSet;
use crate::routes::{self, HostRule, PathRule, PathType, RouteEntry, RouteTable, RouteTableBuilder, wildcard_suffix};
use crate::upstream::{BackendGroup, BackendUrl, EndpointRegistry, GroupSpec, Members, UpstreamTls};

pub const CONTROLLER_NAME: &str = "quic-ingress.dev/controller";
const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// Controller settings that shape translation.
#[derive(Clone)]
pub struct Settings {
    /// `--ingress-class`.
    pub ingress_class: String,
    /// Served to clients whose SNI matches no Ingress TLS host.
    pub default_cert: Option<Arc<CertifiedKey>>,
    /// `--host-ownership`.
    pub host_ownership: HostOwnership,
    /// `--namespace` (empty: every namespace). A controller watching exactly one
    /// namespace serves one tenant, whose catch-alls can take no one else's traffic;
    /// several namespaces are several tenants, and their catch-alls need the admin's grant.
    pub watch_namespaces: BTreeSet<String>,
    /// Where static BackendGroup URLs may point.
    pub backend_policy: BackendPolicy,
    /// The ports this process serves, for Gateway listeners.
    pub gateway_ports: ServedPorts,
    /// `--gateway-http-over-h3`: routes of Gateway HTTP listeners are served on the TLS
    /// listeners too (HTTP/3 has no plaintext form; the conformance suite's HTTP/3 run).
    pub gateway_http_over_h3: bool,
    /// `--gateway-controller-name`: the `spec.controllerName` of the GatewayClasses served.
    pub gateway_controller_name: String,
    /// `--gateway-addresses per-gateway`: each Gateway's routes are also served on data-plane
    /// ports of its own, from this range (`None`: every Gateway shares the listeners).
    pub gateway_port_range: Option<super::gateway::addresses::PortRange>,
}

impl Settings {
    /// The defaults of `quic-ingress controller` for `class`.
    pub fn new(class: &str) -> Self {
        Settings {
            ingress_class: class.to_string(),
            default_cert: None,
            host_ownership: HostOwnership::default(),
            watch_namespaces: BTreeSet::new(),
            backend_policy: BackendPolicy::default(),
            gateway_ports: ServedPorts::default(),
            gateway_http_over_h3: false,
            gateway_controller_name: super::gateway::GATEWAY_CONTROLLER_NAME.to_string(),
            gateway_port_range: None,
        }
    }
}

impl Settings {
    /// Whether this controller watches `namespace` alone, so it serves that one tenant.
    pub fn serves_one_tenant(&self, namespace: &str) -> bool {
        self.watch_namespaces.len() == 1 && self.watch_namespaces.contains(namespace)
    }
}

/// Problem reasons (Event reasons, condition reasons) of the tenancy rules.
pub const HOST_OWNED: &str = "HostOwnedByOtherNamespace";
pub const CATCH_ALL_REFUSED: &str = "CatchAllNotAllowed";
pub const ADDRESS_REFUSED: &str = "BackendAddressNotAllowed";
pub const INVALID_GROUP: &str = "InvalidBackendGroup";

/// An object that was skipped, in whole or in part, and why (becomes an Event and a log).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Problem {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// The object's uid, so `kubectl describe` finds its Events.
    pub uid: Option<String>,
    pub reason: &'static str,
    pub message: String,
}

/// The result of one translation.
pub struct Translation {
    pub table: RouteTable,
    pub problems: Vec<Problem>,
    /// Ingresses this controller serves, `(namespace, name)`, for status.
    pub served_ingresses: Vec<(String, String)>,
    /// BackendGroup objects → the compiled group, for status.
    pub groups: Vec<GroupStatusSource>,
    /// BackendGroup objects that could not be built, for status.
    pub refused_groups: Vec<RefusedGroup>,
    /// The Gateway API model and what became of each route, for status.
    pub gateway: GatewayTranslation,
    /// Who claims which host, for the next build to tell whether it can be incremental.
    pub claims: super::delta::HostClaims,
}

/// What the status writer needs for one BackendGroup object.
#[derive(Clone)]
pub struct GroupStatusSource {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub group: Arc<BackendGroup>,
    /// Whether the object declares routes of its own (then it gets an `Accepted` condition).
    pub has_routes: bool,
    /// Why some of its routes are not served: `(reason, message)`, oldest problem first.
    pub route_problems: Vec<(&'static str, String)>,
}

/// A BackendGroup object that could not be built at all, for its `Ready=False` status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedGroup {
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    /// `InvalidBackendGroup` or `BackendAddressNotAllowed`.
    pub reason: &'static str,
    pub message: String,
}

/// What one build leaves to the next: the last certificate each Secret produced, so a
/// Secret turning invalid keeps serving its previous certificate; and each Service group
/// with the versions of the objects it was compiled from, so an unchanged Service is not
/// compiled again (at thousands of Services that is much of a build).
#[derive(Default)]
pub struct LastGoodCerts {
    certs: HashMap<(String, String), GoodCert>,
    groups: GroupMemo,
}

/// The last certificate a TLS Secret `(namespace, name)` gave, with the uid and
/// resourceVersion it was read from: the same version is not parsed again (a key and its
/// chain take tens of microseconds, on every build, for every TLS Ingress).
struct GoodCert {
    version: Option<(String, String)>,
    key: Arc<CertifiedKey>,
}

/// The uid and resourceVersion of a Service and of each of its EndpointSlices, as a count
/// and a sum of hashes: a group compiled from the same versions is the same group. Objects
/// without versions (built by hand, in tests) are never remembered. A sum of 64-bit hashes
/// instead of the strings: one per Service kept 270 bytes of copies at 10,000 Services; two
/// different version sets would have to collide in 64 bits (as change detection's
/// fingerprints would) for a stale group to be reused. The sum does not depend on the
/// order the slices come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GroupInputs {
    objects: usize,
    versions: u64,
}

type ServiceAndSlices<'a> = (&'a ServiceRecord, &'a [&'a SliceRecord]);

impl GroupInputs {
    fn of((service, slices): ServiceAndSlices<'_>) -> Option<Self> {
        let metas = std::iter::once(&service.meta).chain(slices.iter().map(|s| &s.meta));
        let mut versions = 0u64;
        for m in metas {
            let mut h = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&m.version()?, &mut h);
            versions = versions.wrapping_add(std::hash::Hasher::finish(&h));
        }
        Some(GroupInputs { objects: 1 + slices.len(), versions })
    }

    /// Whether `objects` are at these versions; asked of every Service on every build, so
    /// it allocates nothing.
    fn matches(&self, objects: ServiceAndSlices<'_>) -> bool {
        Self::of(objects) == Some(*self)
    }
}

/// Service groups by id, each with the build that last used it: a build reuses what the
/// previous one made from the same inputs, and what no build used is forgotten. Found by
/// the group's own id (a table, not a map): a key copied beside every group was 56 bytes
/// of each at 10,000 Services.
#[derive(Default)]
struct GroupMemo {
    hasher: std::hash::RandomState,
    groups: hashbrown::HashTable<MemoGroup>,
    build: u64,
}

struct MemoGroup {
    inputs: GroupInputs,
    group: Arc<BackendGroup>,
    used: u64,
}

impl GroupMemo {
    fn reuse(&mut self, id: &str, objects: ServiceAndSlices<'_>) -> Option<Arc<BackendGroup>> {
        let hash = self.hash(id);
        let memo = self.groups.find_mut(hash, |m| m.group.id == id).filter(|m| m.inputs.matches(objects))?;
        memo.used = self.build;
        Some(memo.group.clone())
    }

    /// Remembers `group`, found again by its id, in place of an older group of that id.
    fn keep(&mut self, inputs: GroupInputs, group: &Arc<BackendGroup>) {
        let memo = MemoGroup { inputs, group: group.clone(), used: self.build };
        let hash = self.hash(&group.id);
        let hasher = &self.hasher;
        let rehash = |m: &MemoGroup| std::hash::BuildHasher::hash_one(hasher, m.group.id.as_str());
        match self.groups.entry(hash, |m| m.group.id == group.id, rehash) {
            hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = memo,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(memo);
            }
        }
    }

    fn hash(&self, id: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, id)
    }

    /// Forgets the groups no route of this build used.
    fn finish(&mut self) {
        let build = self.build;
        self.groups.retain(|m| m.used == build);
        self.build += 1;
    }
}

/// Whether `ingress` belongs to this controller.
pub fn is_ours(ingress: &IngressRecord, classes: &[Arc<IngressClass>], class: &str) -> bool {
    let spec_class = ingress.spec.as_ref().and_then(|s| s.class_name.as_deref());
    class_is_ours(spec_class.or_else(|| ingress.annotation(LEGACY_CLASS_ANNOTATION)), classes, class)
}

/// Whether an object of class `named` (`None`: no class given) is this controller's.
fn class_is_ours(named: Option<&str>, classes: &[Arc<IngressClass>], class: &str) -> bool {
    match named {
        Some(name) => name == class,
        // No class at all: ours only when our class is the cluster default.
        None => our_class(classes, class)
            .is_some_and(|c| c.annotations().get(DEFAULT_CLASS_ANNOTATION).map(String::as_str) == Some("true")),
    }
}

/// Our IngressClass object, where the admin's grants are written.
fn our_class<'a>(classes: &'a [Arc<IngressClass>], class: &str) -> Option<&'a IngressClass> {
    classes
        .iter()
        .find(|c| {
            c.name_any() == class && c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER_NAME)
        })
        .map(AsRef::as_ref)
}

/// Whether this controller serves the routes of BackendGroup `bg`: its
/// `spec.ingressClassName`, or the default class when it names none (as for Ingress).
pub fn bg_routes_are_ours(bg: &BackendGroupCr, classes: &[Arc<IngressClass>], class: &str) -> bool {
    class_is_ours(bg.spec.ingress_class_name.as_deref(), classes, class)
}

/// Whether BackendGroup `bg` names another class: then it is not ours to build, route,
/// reference or write status for.
fn bg_of_other_class(bg: &BackendGroupCr, class: &str) -> bool {
    bg.spec.ingress_class_name.as_deref().is_some_and(|c| c != class)
}

/// Builds the route table from `world`.
pub fn translate(
    world: &World,
    settings: &Settings,
    registry: &EndpointRegistry,
    last_good: &mut LastGoodCerts,
    generation: u64,
) -> Translation {
    translate_in(world, settings, registry, last_good, generation, true)
}

/// Translates `part`, a few objects of the world (with the Services they read): what the
/// previous builds remembered of the rest (certificates, Service groups) is kept.
pub(super) fn translate_part(
    part: &World,
    settings: &Settings,
    registry: &EndpointRegistry,
    last_good: &mut LastGoodCerts,
    generation: u64,
) -> Translation {
    translate_in(part, settings, registry, last_good, generation, false)
}

fn translate_in(
    world: &World,
    settings: &Settings,
    registry: &EndpointRegistry,
    last_good: &mut LastGoodCerts,
    generation: u64,
    whole: bool,
) -> Translation {
    let idx = world.index();
    let class = settings.ingress_class.as_str();
    let grants = Grants::from_class(our_class(&world.classes, class));

    // Oldest first: the first object to claim a host and path keeps it.
    let mut ingresses: Vec<&IngressRecord> =
        world.ingresses.iter().map(AsRef::as_ref).filter(|i| is_ours(i, &world.classes, class)).collect();
    // Keys borrowed, not cloned: a sort compares each object about log2(n) times.
    ingresses.sort_by(|a, b| precedence(*a).cmp(&precedence(*b)));
    let mut bg_objects: Vec<&BackendGroupCr> =
        world.groups.iter().map(AsRef::as_ref).filter(|g| !bg_of_other_class(g, class)).collect();
    bg_objects.sort_by(|a, b| precedence(*a).cmp(&precedence(*b)));
    let routed_bgs: Vec<&BackendGroupCr> =
        bg_objects.iter().copied().filter(|g| bg_routes_are_ours(g, &world.classes, class)).collect();

    let mut gw = gateway_routes::GatewayState::new(world, &idx, settings);
    let mut all_claims = claims(&ingresses, &routed_bgs);
    all_claims.extend(gw.claims());
    let mut host_claims = super::delta::HostClaims::of(&all_claims);
    let owners = match settings.host_ownership {
        HostOwnership::Namespace => Some(Owners::decide(all_claims, &grants)),
        HostOwnership::None => None,
    };
    let LastGoodCerts { certs: last_good_certs, groups: memo } = last_good;
    let mut t = Translator {
        idx: &idx,
        memo,
        registry,
        settings,
        grants: &grants,
        owners: owners.as_ref(),
        builder: RouteTableBuilder::new(settings.default_cert.clone().map(CertSet::with_default).unwrap_or_default()),
        problems: Vec::new(),
        groups_by_id: HashMap::new(),
        service_failures: HashMap::new(),
        refused_groups: Vec::new(),
        accepted_hosts: HashMap::new(),
        cert_claims: HashMap::new(),
        group_route_problems: HashMap::new(),
    };

    // Ingresses and HTTPRoutes oldest first, so the older object keeps a host and path
    // whichever API declares it (README "Gateway API": precedence).
    let mut next_route = 0;
    for ing in &ingresses {
        let order = precedence(*ing);
        while next_route < gw.route_count() && gw.order(next_route) < order {
            t.gateway_route(&mut gw, next_route);
            next_route += 1;
        }
        t.ingress_rules(ing);
    }
    for i in next_route..gw.route_count() {
        t.gateway_route(&mut gw, i);
    }
    t.gateway_scoped_ports(&gw);
    for bg in &routed_bgs {
        t.backend_group_routes(bg);
    }
    // Default backends last, so explicit rules of any Ingress win.
    for ing in &ingresses {
        t.ingress_default_backend(ing);
    }
    for ing in &ingresses {
        t.ingress_tls(ing, last_good_certs);
    }
    // A deleted Secret's key is not kept: its memory, and what a Secret re-created under
    // the same name (invalid) would otherwise serve, go with it. (A part of the world
    // holds no Secrets: it keeps them all.)
    if whole {
        last_good_certs.retain(|(ns, name), _| idx.secrets.contains_key(&(ns.as_str(), name.as_str())));
    }
    t.gateway_certs(&gw);

    // Every BackendGroup object of ours (or of no class) gets a compiled group for status,
    // routed or not.
    let groups = bg_objects
        .iter()
        .filter_map(|bg| {
            let group = t.group_for_resource(bg)?;
            let key = (bg.namespace().unwrap_or_default(), bg.name_any());
            Some(GroupStatusSource {
                has_routes: !bg.spec.routes.is_empty() && routed_bgs.iter().any(|r| std::ptr::eq(*r, *bg)),
                route_problems: t.group_route_problems.remove(&key).unwrap_or_default(),
                namespace: key.0,
                name: key.1,
                uid: bg.metadata.uid.clone(),
                generation: bg.metadata.generation,
                group,
            })
        })
        .collect();
    let served_ingresses =
        ingresses.iter().map(|i| (i.meta.namespace().to_string(), i.meta.name().to_string())).collect();
    // A part of the world uses few groups: what the rest of it uses stays remembered.
    if whole {
        t.memo.finish();
    }
    let mut problems = t.problems;
    problems.sort();
    problems.dedup();
    let mut refused_groups = t.refused_groups;
    refused_groups.dedup();
    let table = t.builder.build(generation);
    host_claims.add_wildcards(table.wildcard_hosts());
    Translation { table, problems, served_ingresses, groups, refused_groups, gateway: gw.finish(), claims: host_claims }
}

/// Which of two objects keeps a contested host and path: the older, then by namespace and
/// name (`name_any`), so every replica decides the same.
fn precedence(obj: &impl Identity) -> (Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>, &str, &str) {
    let (namespace, name) = obj.names();
    (obj.created(), namespace, name)
}

/// Every host an object of ours declares, for ownership.
fn claims(ingresses: &[&IngressRecord], groups: &[&BackendGroupCr]) -> Vec<Claim> {
    let mut claims = Vec::new();
    for ing in ingresses {
        for host in ing.spec.iter().flat_map(|s| s.rules.iter()).filter_map(|r| r.host.as_deref()) {
            if let Ok(rule) = HostRule::parse(host) {
                claims.push(Claim::new("Ingress", *ing, rule));
            }
        }
    }
    for bg in groups {
        for host in bg.spec.routes.iter().filter_map(|r| r.host.as_deref()) {
            if let Ok(rule) = HostRule::parse(host) {
                claims.push(Claim::new("BackendGroup", *bg, rule));
            }
        }
    }
    claims
}

struct Translator<'a> {
    idx: &'a Indexed<'a>,
    /// Service groups carried over from the previous build.
    memo: &'a mut GroupMemo,
    registry: &'a EndpointRegistry,
    settings: &'a Settings,
    grants: &'a Grants,
    /// `None` with `--host-ownership=none`.
    owners: Option<&'a Owners>,
    builder: RouteTableBuilder,
    problems: Vec<Problem>,
    /// Groups compiled so far by id; `None` records a group that could not be built.
    groups_by_id: HashMap<String, Option<Arc<BackendGroup>>>,
    /// Why a Service group could not be built, so every Ingress naming it is told.
    service_failures: HashMap<String, (&'static str, String)>,
    refused_groups: Vec<RefusedGroup>,
    /// Hosts each Ingress `(namespace, name)` may route (its namespace owns or shares them):
    /// the only hosts its TLS Secrets are served for.
    accepted_hosts: HashMap<(String, String), BTreeSet<HostRule>>,
    /// Which Secret `(namespace, name)` a host's certificate came from: the oldest claim keeps it.
    cert_claims: HashMap<HostRule, (String, String)>,
    /// Route problems of BackendGroup objects, for their `Accepted` condition.
    group_route_problems: HashMap<(String, String), Vec<(&'static str, String)>>,
}

impl Translator<'_> {
    fn problem(&mut self, kind: &'static str, obj: &impl Identity, reason: &'static str, message: String) {
        let (namespace, name) = obj.names();
        self.problems.push(Problem {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: obj.uid().map(str::to_string),
            reason,
            message,
        });
    }

    /// Whether `obj`'s namespace may route `host`; tells the object why not.
    fn host_allowed(&mut self, kind: &'static str, obj: &impl Identity, host: Option<&HostRule>) -> bool {
        let Some(host) = host else { return self.catch_all_allowed(kind, obj, "a rule without a host") };
        let (ns, name) = obj.names();
        let Some(owner) = self.owners.and_then(|o| o.refusal(kind, ns, name, host)) else { return true };
        let message = format!(
            "host {host} belongs to namespace {owner} (its oldest claim); rules for it from namespace {ns} are refused"
        );
        self.refuse(kind, obj, HOST_OWNED, message);
        false
    }

    /// Host-less rules, default backends and host-less BackendGroup routes serve every
    /// host's unrouted paths, so in namespace mode only the namespaces the admin lists
    /// (or the one namespace a controller watches) may declare them.
    fn catch_all_allowed(&mut self, kind: &'static str, obj: &impl Identity, what: &str) -> bool {
        let ns = obj.names().0;
        if self.owners.is_none() || self.settings.serves_one_tenant(ns) || self.grants.catch_all(ns) {
            return true;
        }
        let message = format!(
            "{what} would catch other namespaces' hosts; only namespaces listed in the IngressClass annotation {} may declare one",
            super::ownership::CATCH_ALL_ANNOTATION
        );
        self.refuse(kind, obj, CATCH_ALL_REFUSED, message);
        false
    }

    /// A problem that also goes into a BackendGroup's `Accepted` condition.
    fn refuse(&mut self, kind: &'static str, obj: &impl Identity, reason: &'static str, message: String) {
        if kind == "BackendGroup" {
            let (ns, name) = obj.names();
            let key = (ns.to_string(), name.to_string());
            let list = self.group_route_problems.entry(key).or_default();
            if !list.iter().any(|(r, m)| *r == reason && *m == message) {
                list.push((reason, message.clone()));
            }
        }
        self.problem(kind, obj, reason, message);
    }

    fn ingress_rules(&mut self, ing: &IngressRecord) {
        let Some(spec) = &ing.spec else { return };
        let ns = ing.meta.namespace().to_string();
        let id = format!("{ns}/{}", ing.meta.name());
        let has_tls = !spec.tls.is_empty();
        for rule in &spec.rules {
            let host = match rule.host.as_deref().map(HostRule::parse).transpose() {
                Ok(h) => h,
                Err(e) => {
                    self.problem("Ingress", ing, "InvalidHost", e.to_string());
                    continue;
                }
            };
            if !self.host_allowed("Ingress", ing, host.as_ref()) {
                continue;
            }
            // Only TLS sections read them (`ingress_tls`).
            if let Some(h) = host.as_ref().filter(|_| has_tls) {
                self.accepted_hosts.entry((ns.clone(), ing.meta.name().to_string())).or_default().insert(h.clone());
            }
            for p in &rule.paths {
                // ImplementationSpecific is treated as Prefix.
                let path_type = if p.exact { PathType::Exact } else { PathType::Prefix };
                let path = match PathRule::new(p.path.as_deref().unwrap_or("/"), path_type) {
                    Ok(path) => path,
                    Err(e) => {
                        self.problem("Ingress", ing, "InvalidPath", e.to_string());
                        continue;
                    }
                };
                let Some(group) = self.ingress_backend(ing, &p.backend) else { continue };
                if let Err(conflict) = self.builder.add_route(&id, host.as_ref(), path, group) {
                    self.problem("Ingress", ing, "RouteConflict", format!("{conflict} (the oldest object wins)"));
                }
            }
        }
    }

    fn ingress_default_backend(&mut self, ing: &IngressRecord) {
        let Some(backend) = ing.spec.as_ref().and_then(|s| s.default_backend.as_ref()) else { return };
        if !self.catch_all_allowed("Ingress", ing, "a default backend") {
            return;
        }
        let Some(group) = self.ingress_backend(ing, backend) else { return };
        let id = format!("{}/{}#default", ing.meta.namespace(), ing.meta.name());
        let root = PathRule::Prefix(String::new());
        if let Err(conflict) = self.builder.add_route(&id, None, root, group) {
            self.problem("Ingress", ing, "DefaultBackendConflict", format!("{conflict} (the oldest object wins)"));
        }
    }

    fn backend_group_routes(&mut self, bg: &BackendGroupCr) {
        if bg.spec.routes.is_empty() {
            return;
        }
        let Some(group) = self.group_for_resource(bg) else { return };
        let id = format!("{}/{}", bg.namespace().unwrap_or_default(), bg.name_any());
        for (index, r) in bg.spec.routes.iter().enumerate() {
            let host = match r.host.as_deref().map(HostRule::parse).transpose() {
                Ok(h) => h,
                Err(e) => {
                    self.refuse("BackendGroup", bg, "InvalidHost", e.to_string());
                    continue;
                }
            };
            if !self.host_allowed("BackendGroup", bg, host.as_ref()) {
                continue;
            }
            let path = match PathRule::new(&r.path, r.path_type.into()) {
                Ok(p) => p,
                Err(e) => {
                    self.refuse("BackendGroup", bg, "InvalidPath", e.to_string());
                    continue;
                }
            };
            let options = match self.backend_group_route_options(bg, index, r, &path) {
                Ok(o) => o,
                Err(message) => {
                    self.refuse("BackendGroup", bg, "InvalidRoute", message);
                    continue;
                }
            };
            let entry = RouteEntry {
                matcher: options.matcher,
                filters: options.filters,
                timeouts: options.timeouts,
                ..RouteEntry::new(&id, host, path, group.clone())
            };
            if let Err(conflict) = self.builder.add_entry(entry) {
                self.refuse("BackendGroup", bg, "RouteConflict", format!("{conflict} (the oldest object wins)"));
            }
        }
    }

    /// A BackendGroup route's match, filters and timeouts; a mirror names a BackendGroup
    /// of the same namespace. Errors name the field under `spec.routes[i]`.
    fn backend_group_route_options(
        &mut self,
        bg: &BackendGroupCr,
        index: usize,
        r: &crate::kube::crd::BackendGroupRoute,
        path: &PathRule,
    ) -> Result<routes::spec::RouteOptions, String> {
        let ns = bg.namespace().unwrap_or_default();
        let mut mirrors = std::collections::HashMap::new();
        for name in routes::spec::mirror_targets(&r.filters) {
            let other = self.idx.groups.get(&(ns.as_str(), name)).copied();
            let group = other.filter(|o| !bg_of_other_class(o, &self.settings.ingress_class));
            let group = group.and_then(|o| self.group_for_resource(o));
            mirrors.insert(name.to_string(), group);
        }
        let mut resolve = |name: &str| mirrors.get(name).cloned().flatten();
        routes::spec::compile(r.matches.as_ref(), &r.filters, r.timeouts.as_ref(), path, &mut resolve)
            .map_err(|errors| join(errors.into_iter().map(|e| format!("spec.routes[{index}].{e}")).collect::<Vec<_>>()))
    }

    /// The group an Ingress backend points at, compiled once per translation.
    fn ingress_backend(&mut self, ing: &IngressRecord, backend: &IngressBackendRecord) -> Option<Arc<BackendGroup>> {
        let ns = ing.meta.namespace().to_string();
        if let IngressBackendRecord::Service { name, port } = backend {
            let port = match port {
                Some(BackendPort::Number(n)) => PortRef::Number(*n),
                Some(BackendPort::Name(p)) => PortRef::Name(p.to_string()),
                None => {
                    self.problem("Ingress", ing, "InvalidBackend", format!("service {name} has no port"));
                    return None;
                }
            };
            return self.service_group(ing, &ns, name, &port);
        }
        if let IngressBackendRecord::Resource { api_group, kind, name } = backend {
            if api_group.as_deref() != Some("quic-ingress.dev") || &**kind != "BackendGroup" {
                self.problem(
                    "Ingress",
                    ing,
                    "UnsupportedBackend",
                    format!("resource backend {kind}/{name} is not a quic-ingress.dev BackendGroup"),
                );
                return None;
            }
            let Some(bg) = self.idx.groups.get(&(ns.as_str(), &**name)).copied() else {
                self.problem("Ingress", ing, "BackendGroupNotFound", format!("BackendGroup {ns}/{name} not found"));
                return None;
            };
            if bg_of_other_class(bg, &self.settings.ingress_class) {
                self.problem(
                    "Ingress",
                    ing,
                    "BackendGroupOfOtherClass",
                    format!(
                        "BackendGroup {ns}/{name} belongs to IngressClass {}",
                        bg.spec.ingress_class_name.as_deref().unwrap_or_default()
                    ),
                );
                return None;
            }
            return self.group_for_resource(bg);
        }
        self.problem("Ingress", ing, "InvalidBackend", "a backend needs a service or a resource".into());
        None
    }

    /// A plain Service backend: round robin over its ready endpoints.
    fn service_group(
        &mut self,
        ing: &IngressRecord,
        ns: &str,
        name: &str,
        port: &PortRef,
    ) -> Option<Arc<BackendGroup>> {
        match self.service_group_of(ns, name, port) {
            Ok(group) => Some(group),
            Err((reason, message)) => {
                self.problem("Ingress", ing, reason, message);
                None
            }
        }
    }

    /// The group of a Service port, compiled once per translation whoever names it.
    fn service_group_of(
        &mut self,
        ns: &str,
        name: &str,
        port: &PortRef,
    ) -> Result<Arc<BackendGroup>, (&'static str, String)> {
        self.service_group_with(ns, name, port, None)
    }

    /// The group of a Service port; `scheme` overrides the port's `appProtocol` (and then
    /// names a group of its own).
    fn service_group_with(
        &mut self,
        ns: &str,
        name: &str,
        port: &PortRef,
        scheme: Option<&str>,
    ) -> Result<Arc<BackendGroup>, (&'static str, String)> {
        let id = match scheme {
            None => format!("service:{ns}/{name}:{port}"),
            Some(s) => format!("service:{ns}/{name}:{port}:{s}"),
        };
        if let Some(known) = self.known_group(&id) {
            return known;
        }
        let objects = self
            .idx
            .services
            .get(&(ns, name))
            .map(|svc| (*svc, self.idx.slices.get(&(ns, name)).map(Vec::as_slice).unwrap_or(&[])));
        if let Some(group) = objects.and_then(|o| self.memo.reuse(&id, o)) {
            self.builder.use_group(group.clone());
            self.groups_by_id.insert(id, Some(group.clone()));
            return Ok(group);
        }
        let inputs = objects.and_then(GroupInputs::of);
        // The defaults of the shared model: round robin, passive checks only.
        let built = match self.service_endpoints(ns, name, port, scheme) {
            Ok(urls) => GroupSpec::new(id.clone(), Members::Discovered(urls))
                .compile(self.registry)
                .map(Arc::new)
                .map_err(|errors| ("InvalidBackend", join(errors))),
            Err(e) => Err(("ServiceNotFound", e)),
        };
        if let (Ok(g), Some(inputs)) = (&built, inputs) {
            self.memo.keep(inputs, g);
        }
        self.record_group(id, built)
    }

    /// What this build already made of Service group `id`: the group, or why it failed.
    pub(super) fn known_group(&self, id: &str) -> Option<Result<Arc<BackendGroup>, (&'static str, String)>> {
        if let Some(failure) = self.service_failures.get(id) {
            return Some(Err(failure.clone()));
        }
        self.groups_by_id.get(id).cloned().flatten().map(Ok)
    }

    /// Keeps a Service group (or its failure) for the rest of this build, and returns it.
    pub(super) fn record_group(
        &mut self,
        id: String,
        built: Result<Arc<BackendGroup>, (&'static str, String)>,
    ) -> Result<Arc<BackendGroup>, (&'static str, String)> {
        match &built {
            Ok(g) => {
                self.builder.use_group(g.clone());
                self.groups_by_id.insert(id, Some(g.clone()));
            }
            Err(failure) => {
                self.service_failures.insert(id.clone(), failure.clone());
                self.groups_by_id.insert(id, None);
            }
        }
        built
    }

    /// Backend URLs for a Service port; `scheme` overrides the port's `appProtocol`.
    fn service_endpoints(
        &self,
        ns: &str,
        name: &str,
        port: &PortRef,
        scheme: Option<&str>,
    ) -> Result<Vec<BackendUrl>, String> {
        let service = self.idx.services.get(&(ns, name)).ok_or_else(|| format!("service {ns}/{name} not found"))?;
        let sp = service_port(service, port).ok_or_else(|| format!("service {ns}/{name} has no port {port}"))?;
        let slices = self.idx.slices.get(&(ns, name)).map(Vec::as_slice).unwrap_or(&[]);
        let scheme = scheme.unwrap_or_else(|| app_protocol_scheme(sp));
        ready_addresses(slices, sp)
            .into_iter()
            .map(|addr| BackendUrl::parse(&format!("{scheme}://{addr}")).map_err(|e| e.to_string()))
            .collect()
    }

    /// The group of a BackendGroup object, compiled once per translation.
    fn group_for_resource(&mut self, bg: &BackendGroupCr) -> Option<Arc<BackendGroup>> {
        let ns = bg.namespace().unwrap_or_default();
        let id = format!("backendgroup:{ns}/{}", bg.name_any());
        if let Some(existing) = self.groups_by_id.get(&id) {
            return existing.clone();
        }
        let group = match self.build_resource_group(bg, &ns, &id) {
            Ok(g) => Some(g),
            Err((reason, message)) => {
                self.problem("BackendGroup", bg, reason, message.clone());
                self.refused_groups.push(RefusedGroup {
                    namespace: ns.clone(),
                    name: bg.name_any(),
                    generation: bg.metadata.generation,
                    reason,
                    message,
                });
                None
            }
        };
        if let Some(g) = &group {
            self.builder.insert_group(g.clone());
        }
        self.groups_by_id.insert(id, group.clone());
        group
    }

    fn build_resource_group(
        &self,
        bg: &BackendGroupCr,
        ns: &str,
        id: &str,
    ) -> Result<Arc<BackendGroup>, (&'static str, String)> {
        let spec = &bg.spec;
        let invalid = |message: String| (INVALID_GROUP, message);
        // Before anything else: a refused address must not be dialled, not even by probes.
        let refused: Vec<String> = spec
            .backends
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let url = BackendUrl::parse(&b.url).ok()?;
                let why = self.settings.backend_policy.check_host(&url.host).err()?;
                Some(format!("spec.backends[{i}].url: {why}; not allowed as a backend (see --allow-backend-cidr)"))
            })
            .collect();
        if !refused.is_empty() {
            return Err((ADDRESS_REFUSED, refused.join("; ")));
        }
        let tls = match &spec.tls {
            Some(t) => self.upstream_tls(t, ns).map_err(invalid)?,
            None => UpstreamTls::default(),
        };
        let members = match (&spec.service, spec.listed_members()) {
            (Some(svc), None) => Members::Discovered(
                self.service_endpoints(ns, &svc.name, &PortRef::Number(svc.port), Some(spec.protocol.scheme()))
                    .map_err(invalid)?,
            ),
            (None, Some(listed)) => listed,
            _ => return Err(invalid("set exactly one of spec.service or spec.backends".into())),
        };
        spec.compile(id.to_string(), members, tls, self.registry).map(Arc::new).map_err(|e| invalid(join(e)))
    }

    /// A group's upstream TLS settings, with the CA bundle read from its Secret.
    fn upstream_tls(&self, spec: &super::crd::UpstreamTlsSpec, ns: &str) -> Result<UpstreamTls, String> {
        let ca_pem = match &spec.ca_secret {
            None => None,
            Some(name) => {
                let secret = self
                    .idx
                    .secrets
                    .get(&(ns, name.as_str()))
                    .ok_or_else(|| format!("spec.tls.caSecret: no kubernetes.io/tls Secret {ns}/{name}"))?;
                let ca = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get("ca.crt"))
                    .ok_or_else(|| format!("spec.tls.caSecret: Secret {ns}/{name} has no ca.crt"))?;
                Some((format!("Secret {ns}/{name} ca.crt"), ca.0.clone()))
            }
        };
        Ok(UpstreamTls {
            ca_file: None,
            ca_pem,
            server_name: spec.server_name.clone(),
            insecure_skip_verify: spec.insecure_skip_verify,
            subject_alt_names: Vec::new(),
        })
    }

    fn ingress_tls(&mut self, ing: &IngressRecord, last_good: &mut HashMap<(String, String), GoodCert>) {
        if ing.spec.as_ref().is_none_or(|s| s.tls.is_empty()) {
            return;
        }
        let ns = ing.meta.namespace().to_string();
        let rule_hosts: Vec<String> = ing
            .spec
            .iter()
            .flat_map(|s| s.rules.iter())
            .filter_map(|r| r.host.as_deref().map(str::to_string))
            .collect();
        let accepted = self.accepted_hosts.get(&(ns.clone(), ing.meta.name().to_string())).cloned().unwrap_or_default();
        for tls in ing.spec.iter().flat_map(|s| s.tls.iter()) {
            let Some(secret_name) = tls.secret_name.as_deref() else { continue };
            let cache_key = (ns.clone(), secret_name.to_string());
            let key = match self
                .idx
                .secrets
                .get(&(ns.as_str(), secret_name))
                .map(|s| secret_cert_memo(last_good, &cache_key, s))
            {
                Some(Ok(key)) => Some(key),
                Some(Err(e)) => {
                    let kept = last_good.get(&cache_key).map(|good| good.key.clone());
                    let note = if kept.is_some() { "; serving its last good certificate" } else { "" };
                    self.problem("Ingress", ing, "InvalidTLSSecret", format!("secret {ns}/{secret_name}: {e}{note}"));
                    kept
                }
                None => {
                    self.problem("Ingress", ing, "TLSSecretNotFound", format!("secret {ns}/{secret_name} not found"));
                    None
                }
            };
            let Some(key) = key else { continue };
            let hosts = match tls.hosts.is_empty() {
                true => rule_hosts.clone(),
                false => tls.hosts.iter().map(|h| h.to_string()).collect(),
            };
            for host in hosts {
                let rule = match HostRule::parse(&host) {
                    Ok(rule) => rule,
                    Err(e) => {
                        self.problem("Ingress", ing, "InvalidHost", e.to_string());
                        continue;
                    }
                };
                // In namespace mode a certificate is served only for a host this very
                // Ingress routes (and so its namespace owns), exactly or by its wildcard.
                if self.owners.is_some() && !covers(&accepted, &rule) {
                    let message = format!(
                        "tls host {rule} is not a host this Ingress routes; secret {ns}/{secret_name} is not served for it"
                    );
                    self.problem("Ingress", ing, "TLSHostNotRouted", message);
                    continue;
                }
                match self.cert_claims.get(&rule) {
                    None => {
                        self.cert_claims.insert(rule.clone(), cache_key.clone());
                        self.builder.certs_mut().insert(&rule, key.clone());
                    }
                    Some(holder) if *holder == cache_key => {}
                    Some((hns, hname)) => {
                        let message = format!(
                            "the certificate for {rule} comes from secret {hns}/{hname} of an older Ingress; secret {ns}/{secret_name} is not served for it"
                        );
                        self.problem("Ingress", ing, "TLSHostConflict", message);
                    }
                }
            }
        }
    }
}

/// Whether routing `accepted` hosts covers `host`: the same rule, or an exact host one
/// label under an accepted wildcard.
fn covers(accepted: &BTreeSet<HostRule>, host: &HostRule) -> bool {
    accepted.contains(host)
        || matches!(host, HostRule::Exact(h) if wildcard_suffix(h).is_some_and(|s| accepted.contains(&HostRule::Wildcard(s.to_string()))))
}

/// Secret `key`'s certificate, parsed only when its version is not the one last parsed;
/// a good one is remembered (an invalid one leaves the last good in place).
fn secret_cert_memo(
    last_good: &mut HashMap<(String, String), GoodCert>,
    key: &(String, String),
    secret: &k8s_openapi::api::core::v1::Secret,
) -> Result<Arc<CertifiedKey>, String> {
    let m = &secret.metadata;
    let version = m.uid.as_deref().zip(m.resource_version.as_deref());
    if let Some(good) = last_good
        .get(key)
        .filter(|g| version.is_some() && g.version.as_ref().map(|(u, r)| (u.as_str(), r.as_str())) == version)
    {
        return Ok(good.key.clone());
    }
    let parsed = secret_cert(secret)?;
    let version = version.map(|(u, r)| (u.to_string(), r.to_string()));
    last_good.insert(key.clone(), GoodCert { version, key: parsed.clone() });
    Ok(parsed)
}

pub(crate) fn secret_cert(secret: &k8s_openapi::api::core::v1::Secret) -> Result<Arc<CertifiedKey>, String> {
    if secret.type_.as_deref() != Some("kubernetes.io/tls") {
        return Err(format!("type is {:?}, not kubernetes.io/tls", secret.type_.as_deref().unwrap_or("")));
    }
    let data = secret.data.as_ref().ok_or("no data")?;
    let crt = data.get("tls.crt").ok_or("no tls.crt")?;
    let key = data.get("tls.key").ok_or("no tls.key")?;
    crate::tls::certified_key_from_pem(&crt.0, &key.0).map_err(|e| e.to_string())
}

/// Every problem of a group in one message (one status condition, one Event), each
/// naming its field.
fn join<E: std::fmt::Display>(errors: Vec<E>) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

#[path = "translate_gateway.rs"]
mod gateway_routes;

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
