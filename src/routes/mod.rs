//! The route table: one immutable snapshot of everything that decides where a request
//! goes (hosts, paths, backend groups with their endpoints, certificates by SNI). Both
//! sources, the standalone YAML and Kubernetes, compile into it; the data plane reads it
//! through one `ArcSwap` load per request.

mod certs;
mod filter;
mod index;
mod matching;
mod normalize;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use certs::CertSet;
pub use filter::Filter;
pub use index::HostIndex;
pub use matching::{HostRule, PathRule, PathType, RuleError, normalize_request_host, wildcard_suffix};
pub use normalize::{PathError, normalize_path, normalize_path_and_query};

use crate::upstream::BackendGroup;

/// A matched route: its id (for logs and metrics), the filters its requests pass through
/// in order, and the group that serves it.
#[derive(Debug)]
pub struct Route {
    pub id: String,
    pub filters: Vec<Filter>,
    pub group: Arc<BackendGroup>,
}

/// One route as it was declared, kept for `/debug/routes`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteInfo {
    pub id: String,
    pub host: Option<String>,
    pub path: String,
    pub backend_group: String,
}

/// The immutable snapshot the data plane serves from.
#[derive(Debug)]
pub struct RouteTable {
    /// Increases with every table published.
    pub generation: u64,
    index: HostIndex<Arc<Route>>,
    groups: BTreeMap<String, Arc<BackendGroup>>,
    routes: Vec<RouteInfo>,
    pub certs: CertSet,
}

impl RouteTable {
    /// A table with no routes: every request gets 404.
    pub fn empty(certs: CertSet) -> Self {
        Self { generation: 0, index: HostIndex::default(), groups: BTreeMap::new(), routes: Vec::new(), certs }
    }

    /// The route for a request's raw host (`Host`/`:authority`) and path (query allowed).
    pub fn lookup(&self, host: Option<&str>, path_and_query: &str) -> Option<&Arc<Route>> {
        self.index.lookup(host, path_and_query)
    }

    pub fn groups(&self) -> impl Iterator<Item = &Arc<BackendGroup>> {
        self.groups.values()
    }

    pub fn group(&self, id: &str) -> Option<&Arc<BackendGroup>> {
        self.groups.get(id)
    }

    pub fn routes(&self) -> &[RouteInfo] {
        &self.routes
    }

    pub fn route_count(&self) -> usize {
        self.index.len()
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

/// Collects groups and routes, then freezes them into a `RouteTable`.
#[derive(Default)]
pub struct RouteTableBuilder {
    index: HostIndex<Arc<Route>>,
    groups: BTreeMap<String, Arc<BackendGroup>>,
    routes: Vec<RouteInfo>,
    certs: CertSet,
}

impl RouteTableBuilder {
    pub fn new(certs: CertSet) -> Self {
        Self { certs, ..Self::default() }
    }

    pub fn certs_mut(&mut self) -> &mut CertSet {
        &mut self.certs
    }

    /// Adds a group; a later group with the same id replaces the earlier one.
    pub fn add_group(&mut self, group: BackendGroup) -> Arc<BackendGroup> {
        let group = Arc::new(group);
        self.insert_group(group.clone());
        group
    }

    /// Adds a group already shared elsewhere.
    pub fn insert_group(&mut self, group: Arc<BackendGroup>) {
        self.groups.insert(group.id.clone(), group);
    }

    /// A group added earlier, by id.
    pub fn group(&self, id: &str) -> Option<Arc<BackendGroup>> {
        self.groups.get(id).cloned()
    }

    /// Adds a route to `group`. The first route to claim a host and path keeps it.
    pub fn add_route(
        &mut self,
        id: &str,
        host: Option<&HostRule>,
        path: PathRule,
        group: Arc<BackendGroup>,
    ) -> Result<(), RouteConflict> {
        let info = RouteInfo {
            id: id.to_string(),
            host: host.map(ToString::to_string),
            path: path.to_string(),
            backend_group: group.id.clone(),
        };
        let route = Arc::new(Route { id: id.to_string(), filters: Vec::new(), group });
        match self.index.insert(host, path, route) {
            Ok(()) => {
                self.routes.push(info);
                Ok(())
            }
            Err(existing) => Err(RouteConflict { host: info.host, path: info.path, existing: existing.id.clone() }),
        }
    }

    pub fn build(self, generation: u64) -> RouteTable {
        RouteTable { generation, index: self.index, groups: self.groups, routes: self.routes, certs: self.certs }
    }
}
