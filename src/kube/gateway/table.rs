//! The one place a Gateway API rule becomes route-table entries: [`to_table`] maps a model
//! rule on one hostname to what `RouteTableBuilder::add_route` takes today (a host, an
//! Exact or Prefix path, one Service as the group), and names every feature the rule
//! needs that the table cannot express yet, so the rule is refused in status instead of
//! served differently from what it asks. When the table learns header, query and method
//! matches, regular expressions, multi-label wildcards, weighted backends, filters and
//! timeouts, this function is where they get connected.

use super::model::{Backend, PathMatch, Protocol, RuleImage};
use crate::routes::{HostRule, PathRule, PathType, RuleError};

/// A feature a rule needs that the route table cannot express yet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unsupported {
    HeaderMatch,
    QueryParamMatch,
    MethodMatch,
    RegularExpressionPath(String),
    /// A Gateway-style `*.suffix` that covers more than one label.
    MultiLabelWildcardHost(String),
    Filter(String),
    BackendFilter(String),
    /// More than one backendRef with a weight above 0.
    WeightedBackends(usize),
    /// No backendRef with a weight above 0: the spec answers every request with 500.
    NoBackends,
    RequestTimeout,
    BackendRequestTimeout,
    InvalidPath(String),
    /// Routes of a plaintext HTTP listener: the table has no listener scope, so they would
    /// be served on the TLS listener as well.
    HttpListenerScope,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HeaderMatch => f.write_str("header matches"),
            Self::QueryParamMatch => f.write_str("query parameter matches"),
            Self::MethodMatch => f.write_str("method matches"),
            Self::RegularExpressionPath(p) => write!(f, "RegularExpression path {p:?}"),
            Self::MultiLabelWildcardHost(h) => {
                write!(f, "wildcard hostname {h} (Gateway wildcards match several labels)")
            }
            Self::Filter(t) => write!(f, "filter {t}"),
            Self::BackendFilter(t) => write!(f, "backendRef filter {t}"),
            Self::WeightedBackends(n) => write!(f, "traffic split over {n} weighted backendRefs"),
            Self::NoBackends => f.write_str("a rule without a backendRef of weight above 0 (answered 500)"),
            Self::RequestTimeout => f.write_str("timeouts.request"),
            Self::BackendRequestTimeout => f.write_str("timeouts.backendRequest"),
            Self::InvalidPath(e) => write!(f, "path: {e}"),
            Self::HttpListenerScope => f.write_str("routes scoped to a plaintext HTTP listener"),
        }
    }
}

/// What a rule's traffic goes to in today's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableBackend {
    Service {
        namespace: String,
        name: String,
        port: i32,
    },
    /// An unresolved backendRef: routed to a group with no endpoints (503), so that its
    /// requests reach no other route. The spec says 500: that needs a fixed answer, a
    /// data-plane feature.
    Unresolved,
}

/// One `add_route` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableEntry {
    pub host: Option<HostRule>,
    pub path: PathRule,
    pub backend: TableBackend,
}

/// The entries for `rule` served on a `protocol` listener for `host` (`None`: any host),
/// or every feature that stops it (all of them, so the status message is complete).
pub fn to_table(protocol: Protocol, host: Option<&str>, rule: &RuleImage) -> Result<Vec<TableEntry>, Vec<Unsupported>> {
    let mut missing = Vec::new();
    if protocol == Protocol::Http {
        missing.push(Unsupported::HttpListenerScope);
    }
    let host_rule = match host {
        None => None,
        Some(h) if h.starts_with("*.") => {
            // Our table's `*.suffix` matches exactly one label: serving this host with it
            // would drop the deeper names the route asks for.
            missing.push(Unsupported::MultiLabelWildcardHost(h.to_string()));
            None
        }
        Some(h) => match HostRule::parse(h) {
            Ok(r) => Some(r),
            Err(e) => {
                missing.push(Unsupported::InvalidPath(e.to_string()));
                None
            }
        },
    };
    let mut paths = Vec::new();
    for m in &rule.matches {
        if !m.headers.is_empty() {
            missing.push(Unsupported::HeaderMatch);
        }
        if !m.query_params.is_empty() {
            missing.push(Unsupported::QueryParamMatch);
        }
        if m.method.is_some() {
            missing.push(Unsupported::MethodMatch);
        }
        let path = match &m.path {
            PathMatch::Exact(p) => PathRule::new(p, PathType::Exact),
            PathMatch::Prefix(p) => PathRule::new(p, PathType::Prefix),
            PathMatch::RegularExpression(p) => {
                missing.push(Unsupported::RegularExpressionPath(p.clone()));
                continue;
            }
        };
        match path {
            Ok(p) => paths.push(p),
            Err(
                e @ (RuleError::PathNotAbsolute(_)
                | RuleError::BadPathChars(_)
                | RuleError::BadHost(_)
                | RuleError::BadRegex(_)),
            ) => missing.push(Unsupported::InvalidPath(e.to_string())),
        }
    }
    for f in &rule.filters {
        missing.push(Unsupported::Filter(f.type_name().to_string()));
    }
    if rule.timeouts.request.is_some() {
        missing.push(Unsupported::RequestTimeout);
    }
    if rule.timeouts.backend_request.is_some() {
        missing.push(Unsupported::BackendRequestTimeout);
    }
    let weighted: Vec<_> = rule.backends.iter().filter(|b| b.weight > 0).collect();
    let backend = match weighted.as_slice() {
        [] => {
            missing.push(Unsupported::NoBackends);
            None
        }
        [one] => {
            for f in &one.filters {
                missing.push(Unsupported::BackendFilter(f.type_name().to_string()));
            }
            Some(match &one.target {
                Backend::Service { namespace, name, port } => {
                    TableBackend::Service { namespace: namespace.clone(), name: name.clone(), port: *port }
                }
                Backend::Invalid { .. } => TableBackend::Unresolved,
            })
        }
        many => {
            missing.push(Unsupported::WeightedBackends(many.len()));
            None
        }
    };
    match backend {
        Some(backend) if missing.is_empty() => Ok(paths
            .into_iter()
            .map(|path| TableEntry { host: host_rule.clone(), path, backend: backend.clone() })
            .collect()),
        _ => {
            missing.sort();
            missing.dedup();
            Err(missing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::gateway::model::{Filter, RouteMatch, Timeouts, ValueMatch, WeightedBackend};

    fn svc(name: &str, weight: u32) -> WeightedBackend {
        WeightedBackend {
            weight,
            target: Backend::Service { namespace: "shop".into(), name: name.into(), port: 80 },
            filters: vec![],
        }
    }

    fn prefix(p: &str) -> RouteMatch {
        RouteMatch { path: PathMatch::Prefix(p.into()), headers: vec![], query_params: vec![], method: None }
    }

    fn rule(matches: Vec<RouteMatch>, backends: Vec<WeightedBackend>) -> RuleImage {
        RuleImage { name: None, matches, filters: vec![], backends, timeouts: Timeouts::default() }
    }

    #[test]
    fn exact_and_prefix_paths_on_an_exact_host_map_to_one_entry_each() {
        let mut exact = prefix("/");
        exact.path = PathMatch::Exact("/login".into());
        let entries = to_table(
            Protocol::Https,
            Some("shop.example.com"),
            &rule(vec![prefix("/api"), exact], vec![svc("api", 1)]),
        )
        .unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].host, Some(HostRule::Exact("shop.example.com".into())));
        assert_eq!(entries[0].path, PathRule::new("/api", PathType::Prefix).unwrap());
        assert_eq!(entries[1].path, PathRule::new("/login", PathType::Exact).unwrap());
        assert_eq!(
            entries[0].backend,
            TableBackend::Service { namespace: "shop".into(), name: "api".into(), port: 80 }
        );
        // A zero-weight second backend takes no traffic, so one group serves the rule.
        assert!(to_table(Protocol::Https, None, &rule(vec![prefix("/")], vec![svc("a", 5), svc("b", 0)])).is_ok());
    }

    #[test]
    fn every_missing_feature_is_named_and_nothing_is_approximated() {
        let mut m = prefix("/");
        m.headers = vec![ValueMatch { name: "x".into(), value: "1".into(), regex: false }];
        m.method = Some("GET".into());
        let mut r = rule(
            vec![m, RouteMatch { path: PathMatch::RegularExpression("/a.*".into()), ..prefix("/") }],
            vec![svc("a", 1), svc("b", 1)],
        );
        r.filters = vec![Filter::Invalid("RequestHeaderModifier".into())];
        r.timeouts.request = Some(std::time::Duration::from_secs(1));
        let missing = to_table(Protocol::Https, Some("*.example.com"), &r).unwrap_err();
        assert_eq!(
            missing,
            vec![
                Unsupported::HeaderMatch,
                Unsupported::MethodMatch,
                Unsupported::RegularExpressionPath("/a.*".into()),
                Unsupported::MultiLabelWildcardHost("*.example.com".into()),
                Unsupported::Filter("RequestHeaderModifier".into()),
                Unsupported::WeightedBackends(2),
                Unsupported::RequestTimeout,
            ]
        );
        assert_eq!(
            to_table(Protocol::Https, None, &rule(vec![prefix("/")], vec![])).unwrap_err(),
            vec![Unsupported::NoBackends]
        );
        // Until the table knows listeners, an HTTP listener's routes would leak onto TLS.
        let plain = to_table(Protocol::Http, Some("a.example.com"), &rule(vec![prefix("/")], vec![svc("a", 1)]));
        assert_eq!(plain.unwrap_err(), vec![Unsupported::HttpListenerScope]);
    }

    #[test]
    fn an_unresolved_backend_still_claims_its_paths() {
        let mut r = rule(vec![prefix("/")], vec![svc("gone", 1)]);
        r.backends[0].target = Backend::Invalid { reason: "BackendNotFound", message: "gone".into() };
        let entries = to_table(Protocol::Https, Some("a.example.com"), &r).unwrap();
        assert_eq!(entries[0].backend, TableBackend::Unresolved);
    }
}
