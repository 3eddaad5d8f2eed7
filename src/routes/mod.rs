//! The route table: one immutable snapshot of everything that decides where a request
//! goes (hosts, paths, backend groups with their endpoints, certificates by SNI). Both
//! sources, the standalone YAML and Kubernetes, compile into it; the data plane reads it
//! through one `ArcSwap` load per request.
//!
//! # What a route can express (the API every source maps onto)
//! A source adds [`RouteEntry`] values to a [`RouteTableBuilder`]:
//! - `host`: [`HostRule::parse`] (Ingress: `*.` is one label) or
//!   [`HostRule::parse_gateway`] (Gateway API: `*.` is any number of labels, not the apex);
//! - `path`: [`PathRule::new`] with Exact, Prefix (whole segments) or RegularExpression;
//! - `matcher`: a [`RequestMatch`] (method, header and query matches, Exact or
//!   RegularExpression), or none;
//! - `scope`: the listeners it serves ([`ListenerScope`], both by default);
//! - `scoped`: the *port scope* it belongs to (e.g. one Gateway with an address of its own):
//!   `None` (the default) serves it on the default listeners; `Some(name)` only on the
//!   ports the table gives that scope ([`RouteTableBuilder::add_scoped_port`]), which see
//!   no other routes. The data plane opens and closes those ports as tables name them;
//!   a port scope has its own precedence and conflicts, apart from the default listeners';
//! - `tie_break`: the [`TieBreak`] among entries equal in every other respect (Gateway
//!   API: creation time, `namespace/name`, rule and match index);
//! - `backends`: [`WeightedBackends`], one group or a weighted split (an unresolved
//!   reference keeps its weight and answers 500);
//! - `filters`: [`Filter`] values in order, request and response side;
//! - `timeouts`: [`RouteTimeouts`] (`request` in total, `backend_request` per attempt).
//!
//! One Gateway API rule becomes one entry per (hostname, match), all with the same
//! backends and filters (each entry keeps its own path, which a `ReplacePrefixMatch`
//! needs); `tie_break` is `{created: route creation time, name: "ns/name", index:
//! rule << 16 | match}`, and a Gateway's HTTP and HTTPS listeners give `ListenerScope::Plain`
//! and `ListenerScope::Tls`. Filters can be built directly (`HeaderModifier::new().with_set`,
//! `Redirect::new().with_scheme`, `Rewrite`, `Mirror::new(group, percent)`, `Cors::new`) or
//! from Gateway-spelled [`spec`] values with [`spec::compile`], which also checks the
//! Gateway API rules across filters (each kind once except mirrors; not both a redirect and
//! a rewrite; `ReplacePrefixMatch` only on a Prefix path). Precedence among entries is documented in `index`. Entries equal in host,
//! path, match and (overlapping) listener conflict: the first one added keeps the place,
//! so a source adds in its own precedence order.
//!
//! Standalone YAML and BackendGroup routes describe matches, filters and timeouts with
//! the shared serde types of [`spec`], whose names mirror Gateway API's.

mod backends;
mod certs;
mod filter;
mod index;
mod matching;
mod normalize;
mod pattern;
mod request_match;
pub mod spec;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

pub use backends::WeightedBackends;
pub use certs::CertSet;
pub use filter::{
    Cors, DEFAULT_CORS_MAX_AGE, Filter, FilterError, HeaderModifier, MAX_MIRRORS_IN_FLIGHT, Mirror, MirrorPermit,
    PathModifier, Redirect, RequestParts, Rewrite, replace_prefix,
};
pub use index::{Candidate, HostIndex};
pub use matching::{HostRule, PathRule, PathType, RuleError, normalize_request_host, wildcard_suffix};
pub use normalize::{PathError, normalize_path, normalize_path_and_query};
pub use pattern::{MAX_PATTERN_LEN, Pattern, PatternError, REGEX_SIZE_LIMIT};
pub use request_match::{
    HeaderMatch, Listener, ListenerScope, MatchError, QueryMatch, RequestMatch, RequestView, TieBreak, ValueMatch,
};

use crate::upstream::BackendGroup;

/// A matched route: its id (for logs and metrics), the filters its requests pass through
/// in order, the backends that serve it, and the path rule it matched by.
#[derive(Debug)]
pub struct Route {
    pub id: String,
    pub filters: Box<[Filter]>,
    /// The group serving the route when it has one; with a weighted split, the first
    /// resolved group (whose per-group limits the request obeys before a group is drawn).
    /// A route with no resolved group has an empty one here and answers 500.
    pub group: Arc<BackendGroup>,
    pub backends: WeightedBackends,
    pub path: PathRule,
    /// Shared by the routes without timeouts of their own (every Ingress route).
    pub timeouts: Arc<RouteTimeouts>,
    /// Whether any filter works on the response (so the response phase can skip the rest).
    pub response_filters: bool,
}

/// Gateway API `HTTPRouteTimeouts`. `None` keeps the group's own timeouts; a zero
/// duration means no limit (Gateway API: "0s" disables the timeout).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteTimeouts {
    /// From the route phase until the response headers, across every attempt.
    pub request: Option<Duration>,
    /// Per attempt, until the response headers (instead of the group's `response_headers`).
    pub backend_request: Option<Duration>,
}

static NO_ROUTE_TIMEOUTS: std::sync::LazyLock<Arc<RouteTimeouts>> = std::sync::LazyLock::new(Default::default);

/// One route as a source declares it; see the module documentation.
#[derive(Debug)]
pub struct RouteEntry {
    pub id: String,
    pub host: Option<HostRule>,
    pub path: PathRule,
    pub matcher: Option<RequestMatch>,
    pub scope: ListenerScope,
    /// The port scope the entry is served in; `None`: the default listeners.
    pub scoped: Option<String>,
    pub tie_break: TieBreak,
    pub backends: WeightedBackends,
    pub filters: Vec<Filter>,
    pub timeouts: RouteTimeouts,
}

impl RouteEntry {
    /// Every request for `host` and `path` to `group`, on every listener, no filters.
    pub fn new(id: &str, host: Option<HostRule>, path: PathRule, group: Arc<BackendGroup>) -> Self {
        Self::split(id, host, path, WeightedBackends::single(group))
    }

    /// As `new`, to weighted backends.
    pub fn split(id: &str, host: Option<HostRule>, path: PathRule, backends: WeightedBackends) -> Self {
        Self {
            id: id.to_string(),
            host,
            path,
            matcher: None,
            scope: ListenerScope::Both,
            scoped: None,
            tie_break: TieBreak::default(),
            backends,
            filters: Vec::new(),
            timeouts: RouteTimeouts::default(),
        }
    }
}

/// One route as it was declared, for `/debug/routes`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteInfo {
    pub id: String,
    pub host: Option<String>,
    pub path: String,
    pub backend_group: String,
    /// The port scope it is served in, when not the default listeners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scoped: Option<String>,
}

impl RouteInfo {
    fn of(host: Option<&HostRule>, matcher: Option<&RequestMatch>, route: &Route, scoped: Option<&String>) -> Self {
        let backends = &route.backends;
        let backend_group = match (backends.weights().count(), backends.weights().next()) {
            // Almost every route: one group, named as it is.
            (1, Some((Some(g), _))) => g.id.clone(),
            _ => backends
                .weights()
                .map(|(g, w)| match g {
                    Some(g) => format!("{}={w}", g.id),
                    None => format!("(unresolved)={w}"),
                })
                .collect::<Vec<_>>()
                .join(","),
        };
        Self {
            id: route.id.clone(),
            host: host.map(ToString::to_string),
            path: path_text(&route.path, matcher),
            backend_group,
            scoped: scoped.cloned(),
        }
    }
}

/// A path rule and its match as `/debug/routes` shows them.
fn path_text(path: &PathRule, matcher: Option<&RequestMatch>) -> String {
    match matcher {
        Some(m) => format!("{path} {}", describe(m)),
        None => path.to_string(),
    }
}

/// A port whose requests see only the routes of one port scope (a Gateway with an address
/// of its own): the data plane listens on it while a published table names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScopedPort {
    pub scope: String,
    /// TLS (HTTPS over TCP, HTTP/3 over UDP on the same port) or plaintext HTTP over TCP.
    pub tls: bool,
    /// The port advertised in `Alt-Svc` (the one clients reach, e.g. a Service port that
    /// maps to this one); this port itself when `None`.
    pub alt_svc_port: Option<u16>,
}

/// A scoped port another scope (or the same scope, as the other kind) already has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("port {port} is already scoped to {existing:?}")]
pub struct PortTaken {
    pub port: u16,
    pub existing: String,
}

/// The immutable snapshot the data plane serves from.
#[derive(Debug)]
pub struct RouteTable {
    /// Increases with every table published.
    pub generation: u64,
    index: HostIndex<Arc<Route>>,
    /// The routes of each port scope, by scope name.
    scoped: HashMap<String, HostIndex<Arc<Route>>>,
    scoped_ports: BTreeMap<u16, ScopedPort>,
    /// The groups the routes use, and the pinned ones; shared with the table it was
    /// updated from while they are the same.
    groups: Arc<BTreeMap<String, Arc<BackendGroup>>>,
    /// Groups kept whether a route uses them or not (a BackendGroup object's, for its
    /// health checks and status; every group of a standalone config).
    pinned: BTreeSet<String>,
    pub certs: CertSet,
    /// The certificates of each port scope: a Gateway with an address of its own answers
    /// with its own listeners' certificates only, never another Gateway's for the same name.
    scoped_certs: HashMap<String, CertSet>,
    /// What a scoped port without certificates of its own answers with: the default only.
    unscoped_default: CertSet,
}

impl RouteTable {
    /// A table with no routes: every request gets 404.
    pub fn empty(certs: CertSet) -> Self {
        RouteTableBuilder::new(certs).build(0)
    }

    /// The certificates served on a listener of port scope `scope` (`None`: a default
    /// listener): the scope's own, else only the default certificate.
    pub fn certs_for(&self, scope: Option<&str>) -> &CertSet {
        match scope {
            None => &self.certs,
            Some(s) => self.scoped_certs.get(s).unwrap_or(&self.unscoped_default),
        }
    }

    /// The route for a request that came in on `port` when that port is scoped (`None`:
    /// a default listener). A scoped port this table does not name routes nothing: its
    /// scope is gone, and its listener is closing.
    pub fn route_on(&self, port: Option<u16>, req: &RequestView<'_>) -> Option<&Arc<Route>> {
        match port {
            None => self.index.lookup_request(req),
            Some(p) => {
                let scope = self.scoped_ports.get(&p)?;
                self.scoped.get(&scope.scope)?.lookup_request(req)
            }
        }
    }

    /// The scoped ports the data plane is to listen on.
    pub fn scoped_ports(&self) -> &BTreeMap<u16, ScopedPort> {
        &self.scoped_ports
    }

    /// The route for a request's raw host (`Host`/`:authority`) and path (query allowed),
    /// seen as a GET without headers on a TLS listener.
    pub fn lookup(&self, host: Option<&str>, path_and_query: &str) -> Option<&Arc<Route>> {
        self.index.lookup(host, path_and_query)
    }

    /// The route for a request: host, path, method, headers, query and listener.
    pub fn route_for(&self, req: &RequestView<'_>) -> Option<&Arc<Route>> {
        self.index.lookup_request(req)
    }

    pub fn groups(&self) -> impl Iterator<Item = &Arc<BackendGroup>> {
        self.groups.values()
    }

    pub fn group(&self, id: &str) -> Option<&Arc<BackendGroup>> {
        self.groups.get(id)
    }

    /// Every route as declared, by port scope, host, path and id. Made from the index
    /// when asked (for `/debug/routes`), not kept: at 10,000 Ingresses a copy of these
    /// strings beside each route was 2.9 MB of the table (heaptrack).
    pub fn routes(&self) -> Vec<RouteInfo> {
        let scoped = self.scoped.iter().map(|(name, index)| (Some(name), index));
        let mut routes: Vec<RouteInfo> = std::iter::once((None, &self.index))
            .chain(scoped)
            .flat_map(|(scope, index)| {
                index
                    .entries()
                    .map(move |(host, c)| RouteInfo::of(host.as_ref(), c.matcher.as_deref(), &c.target, scope))
            })
            .collect();
        routes.sort_unstable_by(|a, b| (&a.scoped, &a.host, &a.path, &a.id).cmp(&(&b.scoped, &b.host, &b.path, &b.id)));
        routes
    }

    /// The suffixes of the default listeners' wildcard host rules (either kind).
    pub fn wildcard_hosts(&self) -> impl Iterator<Item = &str> + '_ {
        self.index.wildcard_suffixes()
    }

    /// The ids of the routes of exact host `host` on the default listeners.
    pub fn route_ids_of_host(&self, host: &str) -> impl Iterator<Item = &str> + '_ {
        self.index.targets_of(host).map(|r| r.id.as_str())
    }

    /// The ids of the groups the routes of exact host `host` use.
    pub fn groups_of_host(&self, host: &str) -> BTreeSet<String> {
        self.index.targets_of(host).flat_map(|r| r.group_ids()).map(str::to_string).collect()
    }

    /// This table with the routes of the exact hosts `replaced` taken out and `with`'s
    /// put in, as generation `generation`. `with` routes exact hosts only, all of them in
    /// `replaced`, on the default listeners: it is the translation of every object claiming
    /// those hosts. Groups `with` uses are added; the groups in `maybe_unused` (what the
    /// replaced routes used) stay only if a route or a pin still holds them. With
    /// `certs`, the certificates of the replaced hosts are `with`'s too (the objects
    /// translated are the only ones with certificates for them). Everything else (scoped
    /// ports, the default certificate) is this table's.
    pub fn spliced(
        &self,
        generation: u64,
        replaced: &BTreeSet<String>,
        with: RouteTable,
        maybe_unused: BTreeSet<String>,
        certs: bool,
    ) -> RouteTable {
        // A group the replaced routes used that the routes put in use too stays; only the
        // rest need a look at every route (a deleted Ingress, not a rewritten one).
        let mut gone: BTreeSet<String> = maybe_unused.into_iter().filter(|id| !self.pinned.contains(id)).collect();
        for id in with.index.targets().flat_map(|r| r.group_ids()) {
            gone.remove(id);
        }
        let index = self.index.spliced(replaced.iter().map(String::as_str), with.index);
        let mut groups = self.groups.clone();
        let known = |(id, g): (&String, &Arc<BackendGroup>)| self.groups.get(id).is_some_and(|k| Arc::ptr_eq(k, g));
        if !with.groups.iter().all(known) {
            Arc::make_mut(&mut groups).extend(Arc::unwrap_or_clone(with.groups));
        }
        if !gone.is_empty() {
            let all = std::iter::once(&index).chain(self.scoped.values()).flat_map(HostIndex::targets);
            for id in all.flat_map(|r| r.group_ids()) {
                if gone.remove(id) && gone.is_empty() {
                    break;
                }
            }
            if !gone.is_empty() {
                let groups = Arc::make_mut(&mut groups);
                for id in &gone {
                    groups.remove(id);
                }
            }
        }
        RouteTable {
            generation,
            index,
            scoped: self.scoped.clone(),
            scoped_ports: self.scoped_ports.clone(),
            groups,
            pinned: self.pinned.clone(),
            certs: match certs {
                true => self.certs.spliced(replaced, with.certs),
                false => self.certs.clone(),
            },
            scoped_certs: self.scoped_certs.clone(),
            unscoped_default: self.unscoped_default.clone(),
        }
    }

    pub fn route_count(&self) -> usize {
        self.index.len() + self.scoped.values().map(HostIndex::len).sum::<usize>()
    }

    /// What `/debug/routes` shows: the routes as declared, each group's endpoints with
    /// their weight, health and load, and the certificates' hosts.
    pub fn debug_view(&self) -> serde_json::Value {
        let groups: Vec<_> = self
            .groups()
            .map(|g| {
                serde_json::json!({
                    "id": g.id,
                    "strategy": g.strategy,
                    "endpoints": g.members().map(|(e, w)| serde_json::json!({
                        "url": e.url.to_string(), "weight": w, "healthy": e.is_healthy(), "in_flight": e.in_flight(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({
            "generation": self.generation,
            "routes": self.routes(),
            "scoped_ports": self.scoped_ports,
            "backend_groups": groups,
            "certificates": self.certs.hosts().collect::<Vec<_>>(),
        })
    }
}

/// A route whose host and path another route already claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host {host:?} path {path} is already routed by {existing:?}")]
pub struct RouteConflict {
    pub host: Option<String>,
    pub path: String,
    pub existing: String,
}

/// A match as `/debug/routes` shows it.
fn describe(m: &RequestMatch) -> String {
    let (method, headers, query) = m.rank();
    let mut parts = Vec::new();
    if method {
        parts.push(format!("method={}", m.method().map_or("", |m| m.as_str())));
    }
    if headers > 0 {
        parts.push(format!("headers={headers}"));
    }
    if query > 0 {
        parts.push(format!("query={query}"));
    }
    format!("[{}]", parts.join(" "))
}

/// The ids of the groups some route of `index` or of a port scope uses.
fn used_groups<'a>(
    index: &'a HostIndex<Arc<Route>>,
    scoped: &'a HashMap<String, HostIndex<Arc<Route>>>,
) -> HashSet<&'a str> {
    std::iter::once(index).chain(scoped.values()).flat_map(HostIndex::targets).flat_map(|r| r.group_ids()).collect()
}

impl Route {
    /// The ids of the groups this route sends requests (or mirrored copies) to.
    fn group_ids(&self) -> impl Iterator<Item = &str> + '_ {
        let mirrors = self.filters.iter().filter_map(|f| match f {
            Filter::Mirror(m) => Some(m.group.id.as_str()),
            _ => None,
        });
        std::iter::once(self.group.id.as_str())
            .chain(self.backends.weights().filter_map(|(g, _)| g.map(|g| g.id.as_str())))
            .chain(mirrors)
    }
}

/// Collects groups and routes, then freezes them into a `RouteTable`.
#[derive(Default)]
pub struct RouteTableBuilder {
    index: HostIndex<Arc<Route>>,
    scoped: HashMap<String, HostIndex<Arc<Route>>>,
    scoped_ports: BTreeMap<u16, ScopedPort>,
    groups: BTreeMap<String, Arc<BackendGroup>>,
    pinned: BTreeSet<String>,
    certs: CertSet,
    scoped_certs: HashMap<String, CertSet>,
    /// The default certificate the builder started with (the controller's), before any
    /// Gateway's catch-all listener replaced it: where a scope's certificates start from.
    unscoped_default: CertSet,
}

impl RouteTableBuilder {
    pub fn new(certs: CertSet) -> Self {
        Self { unscoped_default: certs.default_only(), certs, ..Self::default() }
    }

    pub fn certs_mut(&mut self) -> &mut CertSet {
        &mut self.certs
    }

    /// The certificates of port scope `scope`, starting with the builder's first default.
    pub fn scoped_certs_mut(&mut self, scope: &str) -> &mut CertSet {
        let start = &self.unscoped_default;
        self.scoped_certs.entry(scope.to_string()).or_insert_with(|| start.clone())
    }

    /// Adds a pinned group; a later group with the same id replaces the earlier one.
    pub fn add_group(&mut self, group: BackendGroup) -> Arc<BackendGroup> {
        let group = Arc::new(group);
        self.insert_group(group.clone());
        group
    }

    /// Adds a pinned group already shared elsewhere: the table keeps it, routed or not.
    pub fn insert_group(&mut self, group: Arc<BackendGroup>) {
        self.pinned.insert(group.id.clone());
        self.groups.insert(group.id.clone(), group);
    }

    /// Adds a group for routes: the table keeps it only if one of its routes uses it (a
    /// route that lost a conflict leaves no group behind).
    pub fn use_group(&mut self, group: Arc<BackendGroup>) {
        self.groups.insert(group.id.clone(), group);
    }

    /// A group added earlier, by id.
    pub fn group(&self, id: &str) -> Option<Arc<BackendGroup>> {
        self.groups.get(id).cloned()
    }

    /// Gives `port` to a port scope: requests on it see only the scope's routes.
    pub fn add_scoped_port(&mut self, port: u16, scoped: ScopedPort) -> Result<(), PortTaken> {
        if let Some(existing) = self.scoped_ports.get(&port) {
            return Err(PortTaken { port, existing: existing.scope.clone() });
        }
        self.scoped.entry(scoped.scope.clone()).or_default();
        self.scoped_ports.insert(port, scoped);
        Ok(())
    }

    /// Adds a route to `group`. The first route to claim a host and path keeps it.
    pub fn add_route(
        &mut self,
        id: &str,
        host: Option<&HostRule>,
        path: PathRule,
        group: Arc<BackendGroup>,
    ) -> Result<(), RouteConflict> {
        self.add_entry(RouteEntry::new(id, host.cloned(), path, group))
    }

    /// Adds an entry. The first entry to claim a host, path and match on a listener keeps it.
    pub fn add_entry(&mut self, entry: RouteEntry) -> Result<(), RouteConflict> {
        let RouteEntry { id, host, path, matcher, scope, scoped, tie_break, backends, filters, timeouts } = entry;
        let group = match backends.first() {
            Some(g) => g.clone(),
            // Nothing resolved: every request gets 500 before this group is asked.
            None => Arc::new(BackendGroup::new(
                id.clone(),
                crate::upstream::Strategy::RoundRobin,
                Default::default(),
                vec![],
            )),
        };
        let response_filters = filters.iter().any(|f| matches!(f, Filter::ResponseHeaders(_) | Filter::Cors(_)));
        let timeouts = crate::upstream::shared_or_new(timeouts, &NO_ROUTE_TIMEOUTS);
        let filters = filters.into_boxed_slice();
        let route = Arc::new(Route { id, filters, group, backends, path: path.clone(), timeouts, response_filters });
        let candidate = Candidate { matcher: matcher.map(Box::new), scope, tie_break, target: route };
        let index = match scoped {
            None => &mut self.index,
            Some(name) => self.scoped.entry(name).or_default(),
        };
        // The entry holding the place has the same path rule and match as this one.
        index.insert_candidate(host.as_ref(), path, candidate).map_err(|existing| RouteConflict {
            host: host.as_ref().map(ToString::to_string),
            path: path_text(&existing.target.path, existing.matcher.as_deref()),
            existing: existing.target.id.clone(),
        })
    }

    pub fn build(mut self, generation: u64) -> RouteTable {
        let used = used_groups(&self.index, &self.scoped);
        let pinned = &self.pinned;
        self.groups.retain(|id, _| pinned.contains(id) || used.contains(id.as_str()));
        RouteTable {
            generation,
            index: self.index,
            scoped: self.scoped,
            scoped_ports: self.scoped_ports,
            groups: Arc::new(self.groups),
            pinned: self.pinned,
            certs: self.certs,
            scoped_certs: self.scoped_certs,
            unscoped_default: self.unscoped_default,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Strategy;

    fn group(id: &str) -> Arc<BackendGroup> {
        Arc::new(BackendGroup::new(id.into(), Strategy::RoundRobin, Default::default(), vec![]))
    }

    /// A catch-all for `/` to a group of its own id, in port scope `scoped`.
    fn catch_all(id: &str, scoped: Option<&str>) -> RouteEntry {
        let path = PathRule::new("/", PathType::Prefix).unwrap();
        RouteEntry { scoped: scoped.map(str::to_string), ..RouteEntry::new(id, None, path, group(id)) }
    }

    fn port(scope: &str, tls: bool) -> ScopedPort {
        ScopedPort { scope: scope.into(), tls, alt_svc_port: None }
    }

    fn routed_to(table: &RouteTable, on: Option<u16>) -> Option<String> {
        table.route_on(on, &RequestView::get(Some("any.example"), "/x")).map(|r| r.id.clone())
    }

    #[test]
    fn a_scoped_port_sees_only_its_scopes_routes_and_the_default_listeners_none_of_them() {
        let mut b = RouteTableBuilder::default();
        b.add_scoped_port(20000, port("gw-a", true)).unwrap();
        b.add_scoped_port(20001, port("gw-a", false)).unwrap();
        b.add_scoped_port(20002, port("gw-b", true)).unwrap();
        b.add_entry(catch_all("default", None)).unwrap();
        // The same host and path in two scopes and the default: no conflict between them.
        b.add_entry(catch_all("a", Some("gw-a"))).unwrap();
        b.add_entry(catch_all("b", Some("gw-b"))).unwrap();
        let conflict = b.add_entry(catch_all("a2", Some("gw-a"))).unwrap_err();
        assert_eq!(conflict.existing, "a", "within one scope, the first entry keeps its place");
        let table = b.build(1);
        assert_eq!(routed_to(&table, None).as_deref(), Some("default"));
        assert_eq!(routed_to(&table, Some(20000)).as_deref(), Some("a"));
        assert_eq!(routed_to(&table, Some(20001)).as_deref(), Some("a"), "both ports of a scope");
        assert_eq!(routed_to(&table, Some(20002)).as_deref(), Some("b"));
        assert_eq!(routed_to(&table, Some(20003)), None, "a port no scope has (any more) routes nothing");
        assert_eq!(table.route_count(), 3);
        assert_eq!(table.scoped_ports().keys().copied().collect::<Vec<_>>(), [20000, 20001, 20002]);
    }

    #[test]
    fn a_scoped_port_is_given_once() {
        let mut b = RouteTableBuilder::default();
        b.add_scoped_port(20000, port("gw-a", true)).unwrap();
        let taken = b.add_scoped_port(20000, port("gw-b", false)).unwrap_err();
        assert_eq!(taken, PortTaken { port: 20000, existing: "gw-a".into() });
        let table = b.build(1);
        assert_eq!(table.scoped_ports()[&20000], port("gw-a", true), "the first keeps it");
        assert_eq!(routed_to(&table, Some(20000)), None, "a scope without routes routes nothing");
    }
}
