//! The one place a Gateway API rule becomes route-table entries: [`to_table`] maps a model
//! rule on one hostname to a [`TableRule`]: its entries (host, path and match, one per
//! `matches[]` item), the listener scope, the weighted backends, and the filters in the
//! Gateway-spelled form the data plane compiles (`routes::spec`). What the data plane
//! cannot serve (ExtensionRef filters, per-backendRef filters) is named, so the rule is
//! refused in status instead of being served differently from what it asks.

use std::time::Duration;

use super::api;
use super::grpc::BackendProtocol;
use super::model::{Backend, Filter, PathMatch, Protocol, RouteMatch, RuleImage, ValueMatch};
use crate::routes::spec::{
    BackendRefSpec, CorsSpec, FilterSpec, FilterType, HeaderModifierSpec, HeaderSpec, MatchSpec, MatchType, MirrorSpec,
    PathModifierSpec, PathModifierType, RedirectSpec, RewriteSpec, ValueMatchSpec,
};
use crate::routes::{HostRule, ListenerScope, PathRule, PathType, RouteTimeouts};

/// A feature a rule needs that the data plane cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unsupported {
    /// A filter of a type we do not implement (ExtensionRef, or unknown).
    Filter(String),
    /// Filters on one backendRef (Gateway API extended: only for that backend's share).
    BackendFilter(String),
    /// A value the data plane refuses (a bad path, host, status code, ...).
    Invalid(String),
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Filter(t) => write!(f, "filter {t}"),
            Self::BackendFilter(t) => write!(f, "backendRef filter {t}"),
            Self::Invalid(e) => f.write_str(e),
        }
    }
}

/// What a share of a rule's traffic goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableBackend {
    Service {
        namespace: String,
        name: String,
        port: i32,
        /// h2c for GRPCRoute backends, else the Service port's `appProtocol`.
        protocol: BackendProtocol,
    },
    /// An unresolved backendRef: its share of requests is answered 500, as the spec says.
    Unresolved,
}

/// One entry: a host, a path and what else the request must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableEntry {
    pub host: Option<HostRule>,
    pub path: PathRule,
    pub matcher: MatchSpec,
    /// Position of the match in its rule (for the Gateway API tie-break).
    pub match_index: usize,
}

/// A rule on one hostname of one listener, ready for the route table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableRule {
    pub scope: ListenerScope,
    pub entries: Vec<TableEntry>,
    /// Backends with a weight above 0; none means every request is answered 500.
    pub backends: Vec<(TableBackend, u32)>,
    /// Filters in order; a mirror's `backendRef.name` is an index into `mirrors`.
    pub filters: Vec<FilterSpec>,
    pub mirrors: Vec<TableBackend>,
    pub timeouts: RouteTimeouts,
}

/// The table form of `rule` served on a `protocol` listener for `host` (`None`: any host),
/// or every feature that stops it (all of them, so the status message is complete).
/// `http_over_h3` also serves plaintext listeners' routes on the TLS listeners (the
/// conformance suite's HTTP/3 run; see `--gateway-http-over-h3`).
pub fn to_table(
    protocol: Protocol,
    host: Option<&str>,
    rule: &RuleImage,
    http_over_h3: bool,
) -> Result<TableRule, Vec<Unsupported>> {
    let mut missing = Vec::new();
    let scope = match protocol {
        Protocol::Https => ListenerScope::Tls,
        Protocol::Http if http_over_h3 => ListenerScope::Both,
        Protocol::Http => ListenerScope::Plain,
    };
    let host_rule = match host.map(HostRule::parse_gateway).transpose() {
        Ok(h) => h,
        Err(e) => {
            missing.push(Unsupported::Invalid(format!("hostname: {e}")));
            None
        }
    };
    // A rule without matches matches every path (the API server defaults one, but a
    // rule read from an older object may have none).
    let every_path =
        [RouteMatch { path: PathMatch::Prefix("/".into()), headers: vec![], query_params: vec![], method: None }];
    let matches = if rule.matches.is_empty() { &every_path[..] } else { &rule.matches[..] };
    let mut entries = Vec::new();
    for (match_index, m) in matches.iter().enumerate() {
        let path = match &m.path {
            PathMatch::Exact(p) => PathRule::new(p, PathType::Exact),
            PathMatch::Prefix(p) => PathRule::new(p, PathType::Prefix),
            PathMatch::RegularExpression(p) => PathRule::new(p, PathType::RegularExpression),
        };
        match path {
            Ok(path) => entries.push(TableEntry { host: host_rule.clone(), path, matcher: match_spec(m), match_index }),
            Err(e) => missing.push(Unsupported::Invalid(format!("path: {e}"))),
        }
    }
    let mut mirrors = Vec::new();
    let mut filters = Vec::new();
    for f in &rule.filters {
        match filter_spec(f, &mut mirrors) {
            Ok(spec) => filters.push(spec),
            Err(u) => missing.push(u),
        }
    }
    let mut backends = Vec::new();
    for b in rule.backends.iter().filter(|b| b.weight > 0) {
        missing.extend(b.filters.iter().map(|f| Unsupported::BackendFilter(f.type_name().to_string())));
        backends.push((table_backend(&b.target), b.weight));
    }
    // Gateway API: a zero duration is no limit, which is what `None` means to us.
    let limit = |d: Option<Duration>| d.filter(|d| !d.is_zero());
    let timeouts =
        RouteTimeouts { request: limit(rule.timeouts.request), backend_request: limit(rule.timeouts.backend_request) };
    if missing.is_empty() {
        Ok(TableRule { scope, entries, backends, filters, mirrors, timeouts })
    } else {
        missing.sort();
        missing.dedup();
        Err(missing)
    }
}

fn table_backend(target: &Backend) -> TableBackend {
    match target {
        Backend::Service { namespace, name, port, protocol } => {
            TableBackend::Service { namespace: namespace.clone(), name: name.clone(), port: *port, protocol: *protocol }
        }
        Backend::Invalid { .. } => TableBackend::Unresolved,
    }
}

fn match_spec(m: &RouteMatch) -> MatchSpec {
    let values = |v: &[ValueMatch]| {
        v.iter()
            .map(|v| ValueMatchSpec {
                kind: if v.regex { MatchType::RegularExpression } else { MatchType::Exact },
                name: v.name.clone(),
                value: v.value.clone(),
            })
            .collect()
    };
    MatchSpec { method: m.method.clone(), headers: values(&m.headers), query_params: values(&m.query_params) }
}

/// The data plane's spelling of one route filter; mirrors' targets go to `mirrors`.
fn filter_spec(f: &Filter, mirrors: &mut Vec<TableBackend>) -> Result<FilterSpec, Unsupported> {
    let empty = |kind| FilterSpec {
        kind,
        request_header_modifier: None,
        response_header_modifier: None,
        request_redirect: None,
        url_rewrite: None,
        request_mirror: None,
        cors: None,
    };
    Ok(match f {
        Filter::RequestHeaderModifier(h) => {
            FilterSpec { request_header_modifier: Some(header_modifier(h)), ..empty(FilterType::RequestHeaderModifier) }
        }
        Filter::ResponseHeaderModifier(h) => FilterSpec {
            response_header_modifier: Some(header_modifier(h)),
            ..empty(FilterType::ResponseHeaderModifier)
        },
        Filter::RequestRedirect(r) => {
            let status_code =
                r.status_code.map(|c| u16::try_from(c).map_err(|_| invalid("statusCode", c))).transpose()?;
            let port = r.port.map(|p| u32::try_from(p).map_err(|_| invalid("port", p))).transpose()?;
            let path = r.path.as_ref().map(path_modifier).transpose()?;
            FilterSpec {
                request_redirect: Some(RedirectSpec {
                    scheme: r.scheme.clone(),
                    hostname: r.hostname.clone(),
                    path,
                    port,
                    status_code,
                }),
                ..empty(FilterType::RequestRedirect)
            }
        }
        Filter::UrlRewrite(r) => FilterSpec {
            url_rewrite: Some(RewriteSpec {
                hostname: r.hostname.clone(),
                path: r.path.as_ref().map(path_modifier).transpose()?,
            }),
            ..empty(FilterType::UrlRewrite)
        },
        Filter::RequestMirror { backend, percent } => {
            mirrors.push(table_backend(backend));
            // Whole percents: a fraction like 1/3 is rounded (33).
            let percent = percent.map(|p| p.clamp(0.0, 100.0).round() as u32);
            FilterSpec {
                request_mirror: Some(MirrorSpec {
                    backend_ref: BackendRefSpec { name: (mirrors.len() - 1).to_string() },
                    percent,
                }),
                ..empty(FilterType::RequestMirror)
            }
        }
        Filter::Cors(c) => FilterSpec {
            cors: Some(CorsSpec {
                allow_origins: c.allow_origins.clone(),
                allow_methods: c.allow_methods.clone(),
                allow_headers: c.allow_headers.clone(),
                expose_headers: c.expose_headers.clone(),
                max_age: c.max_age.map(|a| u32::try_from(a).map_err(|_| invalid("maxAge", a))).transpose()?,
                allow_credentials: c.allow_credentials,
            }),
            ..empty(FilterType::Cors)
        },
        Filter::ExtensionRef(_) | Filter::Invalid(_) => return Err(Unsupported::Filter(f.type_name().to_string())),
    })
}

fn invalid(field: &str, value: i32) -> Unsupported {
    Unsupported::Invalid(format!("{field} {value} is out of range"))
}

fn header_modifier(h: &api::HeaderModifier) -> HeaderModifierSpec {
    let headers = |v: &[api::HeaderValue]| {
        v.iter().map(|h| HeaderSpec { name: h.name.clone(), value: h.value.clone() }).collect()
    };
    HeaderModifierSpec { set: headers(&h.set), add: headers(&h.add), remove: h.remove.clone() }
}

fn path_modifier(p: &api::PathModifier) -> Result<PathModifierSpec, Unsupported> {
    let kind = match p.type_.as_str() {
        "ReplaceFullPath" => PathModifierType::ReplaceFullPath,
        "ReplacePrefixMatch" => PathModifierType::ReplacePrefixMatch,
        other => return Err(Unsupported::Invalid(format!("path modifier type {other:?}"))),
    };
    Ok(PathModifierSpec {
        kind,
        replace_full_path: p.replace_full_path.clone(),
        replace_prefix_match: p.replace_prefix_match.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::gateway::model::{Timeouts, WeightedBackend};

    fn svc(name: &str, weight: u32) -> WeightedBackend {
        WeightedBackend {
            weight,
            target: Backend::Service {
                namespace: "shop".into(),
                name: name.into(),
                port: 80,
                protocol: BackendProtocol::AppProtocol,
            },
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
    fn each_match_is_an_entry_on_the_listeners_scope() {
        let mut exact = prefix("/");
        exact.path = PathMatch::Exact("/login".into());
        exact.method = Some("POST".into());
        exact.headers = vec![ValueMatch { name: "x-v".into(), value: "2".into(), regex: false }];
        let r = rule(vec![prefix("/api"), exact], vec![svc("api", 1), svc("old", 0)]);
        let t = to_table(Protocol::Https, Some("shop.example.com"), &r, false).unwrap();
        assert_eq!(t.scope, ListenerScope::Tls);
        assert_eq!(t.entries.len(), 2);
        assert_eq!(t.entries[0].host, Some(HostRule::Exact("shop.example.com".into())));
        assert_eq!(t.entries[0].path, PathRule::new("/api", PathType::Prefix).unwrap());
        assert_eq!(t.entries[1].path, PathRule::new("/login", PathType::Exact).unwrap());
        assert_eq!(t.entries[1].matcher.method.as_deref(), Some("POST"));
        assert_eq!(t.entries[1].matcher.headers[0].name, "x-v");
        assert_eq!(t.entries[1].match_index, 1);
        // A zero-weight backend takes no traffic.
        assert_eq!(
            t.backends,
            vec![(
                TableBackend::Service {
                    namespace: "shop".into(),
                    name: "api".into(),
                    port: 80,
                    protocol: BackendProtocol::AppProtocol
                },
                1
            )]
        );
        let plain = to_table(Protocol::Http, None, &r, false).unwrap();
        assert_eq!(plain.scope, ListenerScope::Plain);
        assert_eq!(to_table(Protocol::Http, None, &r, true).unwrap().scope, ListenerScope::Both);
    }

    #[test]
    fn gateway_wildcards_regex_paths_splits_and_timeouts_are_carried() {
        let r = RuleImage {
            timeouts: Timeouts { request: Some(Duration::from_secs(2)), backend_request: Some(Duration::ZERO) },
            ..rule(
                vec![RouteMatch { path: PathMatch::RegularExpression("/v[0-9]+/.*".into()), ..prefix("/") }],
                vec![svc("a", 3), svc("b", 1)],
            )
        };
        let t = to_table(Protocol::Https, Some("*.example.com"), &r, false).unwrap();
        assert_eq!(t.entries[0].host, Some(HostRule::parse_gateway("*.example.com").unwrap()));
        assert_eq!(
            t.entries[0].path.to_string(),
            PathRule::new("/v[0-9]+/.*", PathType::RegularExpression).unwrap().to_string()
        );
        assert_eq!(t.backends.len(), 2);
        assert_eq!(t.timeouts, RouteTimeouts { request: Some(Duration::from_secs(2)), backend_request: None });
    }

    #[test]
    fn filters_keep_their_order_and_mirrors_name_their_targets() {
        let mut r = rule(vec![prefix("/")], vec![svc("a", 1)]);
        r.filters = vec![
            Filter::RequestHeaderModifier(api::HeaderModifier {
                set: vec![api::HeaderValue { name: "x-a".into(), value: "1".into() }],
                ..Default::default()
            }),
            Filter::RequestMirror {
                backend: Backend::Service {
                    namespace: "shop".into(),
                    name: "shadow".into(),
                    port: 8080,
                    protocol: BackendProtocol::AppProtocol,
                },
                percent: Some(33.4),
            },
        ];
        let t = to_table(Protocol::Https, None, &r, false).unwrap();
        assert_eq!(t.filters[0].kind, FilterType::RequestHeaderModifier);
        let mirror = t.filters[1].request_mirror.as_ref().unwrap();
        assert_eq!((mirror.backend_ref.name.as_str(), mirror.percent), ("0", Some(33)));
        assert_eq!(
            t.mirrors,
            vec![TableBackend::Service {
                namespace: "shop".into(),
                name: "shadow".into(),
                port: 8080,
                protocol: BackendProtocol::AppProtocol
            }]
        );
    }

    #[test]
    fn what_the_data_plane_cannot_serve_is_named() {
        let mut r = rule(vec![prefix("/")], vec![svc("a", 1)]);
        r.filters = vec![Filter::ExtensionRef(Default::default())];
        r.backends[0].filters = vec![Filter::Invalid("RequestHeaderModifier".into())];
        assert_eq!(
            to_table(Protocol::Https, Some("a.example.com"), &r, false).unwrap_err(),
            vec![
                Unsupported::Filter("ExtensionRef".into()),
                Unsupported::BackendFilter("RequestHeaderModifier".into())
            ]
        );
        let bad = rule(vec![prefix("no-slash")], vec![svc("a", 1)]);
        assert!(matches!(&to_table(Protocol::Https, None, &bad, false).unwrap_err()[..], [Unsupported::Invalid(_)]));
    }

    #[test]
    fn no_backends_and_unresolved_ones_still_claim_their_paths() {
        let t = to_table(Protocol::Https, None, &rule(vec![prefix("/")], vec![]), false).unwrap();
        assert!(t.backends.is_empty() && t.entries.len() == 1);
        let mut r = rule(vec![prefix("/")], vec![svc("gone", 1)]);
        r.backends[0].target = Backend::Invalid { reason: "BackendNotFound", message: "gone".into() };
        assert_eq!(to_table(Protocol::Https, None, &r, false).unwrap().backends, vec![(TableBackend::Unresolved, 1)]);
    }
}
