//! Matches, filters and timeouts as the configuration sources write them: one set of serde
//! types, named as Gateway API names them (camelCase: `queryParams`, `requestHeaderModifier`,
//! `replacePrefixMatch`, `backendRequest`), shared by the standalone YAML's routes and the
//! BackendGroup resource's `spec.routes`, and compiled here into the route values
//! ([`RequestMatch`], [`Filter`], [`RouteTimeouts`]) with every error naming its field.
//!
//! The bounds are Gateway API's (16 header or query matches, 16 filters, 64 CORS entries,
//! names up to 256 bytes, values up to 4096), stated in the schema too so the API server
//! refuses most bad BackendGroups at `kubectl apply`.

use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::RouteTimeouts;
use super::filter::{Cors, Filter, FilterError, HeaderModifier, Mirror, PathModifier, Redirect, Rewrite};
use super::matching::PathRule;
use super::request_match::{MatchError, RequestMatch, RouteTimeoutsError, ValueMatch};
use crate::upstream::BackendGroup;

/// Most header (or query) matches of one match, as in Gateway API.
pub const MAX_MATCHES: usize = 16;
/// Most filters of one route, as in Gateway API.
pub const MAX_FILTERS: usize = 16;
/// Most entries of one header modifier list.
pub const MAX_HEADER_CHANGES: usize = 16;
/// Most entries of one CORS list.
pub const MAX_CORS_ENTRIES: usize = 64;
/// Longest header or query-parameter name.
pub const MAX_NAME_LEN: usize = 256;
/// Longest header or query-parameter value (a pattern is bounded by `MAX_PATTERN_LEN`).
pub const MAX_VALUE_LEN: usize = 4096;

/// How a value is compared (Gateway API `HeaderMatchType` / `QueryParamMatchType`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum MatchType {
    #[default]
    Exact,
    RegularExpression,
}

/// A header or query-parameter match (Gateway API `HTTPHeaderMatch`, `HTTPQueryParamMatch`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatchSpec {
    #[serde(default, rename = "type")]
    pub kind: MatchType,
    #[schemars(length(min = 1, max = MAX_NAME_LEN))]
    pub name: String,
    #[schemars(length(max = MAX_VALUE_LEN))]
    pub value: String,
}

/// What a request must carry beyond its host and path (Gateway API `HTTPRouteMatch`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchSpec {
    /// An HTTP method (GET, POST, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub method: Option<String>,
    /// Header matches; names are case-insensitive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_MATCHES))]
    pub headers: Vec<ValueMatchSpec>,
    /// Query-parameter matches; names are case-sensitive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_MATCHES))]
    pub query_params: Vec<ValueMatchSpec>,
}

/// The kind of a filter (Gateway API `HTTPRouteFilterType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FilterType {
    RequestHeaderModifier,
    ResponseHeaderModifier,
    RequestRedirect,
    #[serde(rename = "URLRewrite")]
    UrlRewrite,
    RequestMirror,
    #[serde(rename = "CORS")]
    Cors,
}

/// A header to set or add.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderSpec {
    #[schemars(length(min = 1, max = MAX_NAME_LEN))]
    pub name: String,
    #[schemars(length(max = MAX_VALUE_LEN))]
    pub value: String,
}

/// Gateway API `HTTPHeaderFilter`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderModifierSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_HEADER_CHANGES))]
    pub set: Vec<HeaderSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_HEADER_CHANGES))]
    pub add: Vec<HeaderSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_HEADER_CHANGES))]
    pub remove: Vec<String>,
}

/// Gateway API `HTTPPathModifierType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PathModifierType {
    ReplaceFullPath,
    ReplacePrefixMatch,
}

/// Gateway API `HTTPPathModifier`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModifierSpec {
    #[serde(rename = "type")]
    pub kind: PathModifierType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub replace_full_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub replace_prefix_match: Option<String>,
}

/// Gateway API `HTTPRequestRedirectFilter`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectSpec {
    /// http or https; the request's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifierSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u32>,
    /// 301, 302 (default), 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 301, max = 308))]
    pub status_code: Option<u16>,
}

/// Gateway API `HTTPURLRewriteFilter`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewriteSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifierSpec>,
}

/// The group a mirror sends copies to: a backend group id (YAML) or a BackendGroup name
/// in the same namespace (BackendGroup routes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendRefSpec {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Gateway API `HTTPRequestMirrorFilter` (`percent`; `fraction` is not offered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorSpec {
    pub backend_ref: BackendRefSpec,
    /// Share of requests mirrored (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub percent: Option<u32>,
}

/// Gateway API `HTTPCORSFilter`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsSpec {
    /// `*`, or `scheme://host[:port]` where the host may start with `*` (any labels).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CORS_ENTRIES))]
    pub allow_origins: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CORS_ENTRIES))]
    pub allow_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CORS_ENTRIES))]
    pub allow_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CORS_ENTRIES))]
    pub expose_headers: Vec<String>,
    /// Seconds a preflight may be cached (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub max_age: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
}

/// One filter (Gateway API `HTTPRouteFilter`): `type` names the field that configures it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterSpec {
    #[serde(rename = "type")]
    pub kind: FilterType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifierSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifierSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RedirectSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "urlRewrite")]
    pub url_rewrite: Option<RewriteSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<MirrorSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsSpec>,
}

/// Gateway API `HTTPRouteTimeouts`: GEP-2257 durations (`10s`, `500ms`, `1h30m`); `0s`
/// means no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutsSpec {
    /// The whole request, across retries, until the response headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub request: Option<String>,
    /// One attempt at a backend, until its response headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub backend_request: Option<String>,
}

/// A problem with one field, named relative to the route (`match.headers[0].name`,
/// `filters[1].requestRedirect.statusCode`); each source puts its own path in front.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RouteSpecError {
    pub field: String,
    pub message: String,
}

/// The compiled options of one route.
#[derive(Debug, Default)]
pub struct RouteOptions {
    pub matcher: Option<RequestMatch>,
    pub filters: Vec<Filter>,
    pub timeouts: RouteTimeouts,
}

/// Compiles a route's match, filters and timeouts, reporting every problem. `path` is the
/// route's path rule (a prefix replacement needs a Prefix one); `resolve` finds the group a
/// mirror names (`None`: unknown, an error).
pub fn compile(
    matcher: Option<&MatchSpec>,
    filters: &[FilterSpec],
    timeouts: Option<&TimeoutsSpec>,
    path: &PathRule,
    resolve: &mut dyn FnMut(&str) -> Option<Arc<BackendGroup>>,
) -> Result<RouteOptions, Vec<RouteSpecError>> {
    let mut errors = Vec::new();
    let matcher = match matcher.map(compile_match).transpose() {
        Ok(m) => m.filter(|m| !m.is_empty()),
        Err(e) => {
            errors.extend(e);
            None
        }
    };
    let filters = compile_filters(filters, path, resolve).unwrap_or_else(|e| {
        errors.extend(e);
        Vec::new()
    });
    let timeouts = match timeouts.map(compile_timeouts).transpose() {
        Ok(t) => t.unwrap_or_default(),
        Err(e) => {
            errors.push(e);
            RouteTimeouts::default()
        }
    };
    if errors.is_empty() { Ok(RouteOptions { matcher, filters, timeouts }) } else { Err(errors) }
}

fn error(field: impl Into<String>, message: impl ToString) -> RouteSpecError {
    RouteSpecError { field: field.into(), message: message.to_string() }
}

/// Compiles a match; fields are named under `match`.
pub fn compile_match(spec: &MatchSpec) -> Result<RequestMatch, Vec<RouteSpecError>> {
    let mut errors = Vec::new();
    let mut m = RequestMatch::new();
    if let Some(method) = &spec.method {
        match m.clone().with_method(method) {
            Ok(with) => m = with,
            Err(e) => errors.push(error("match.method", e)),
        }
    }
    for (list, field, is_header) in [(&spec.headers, "headers", true), (&spec.query_params, "queryParams", false)] {
        if list.len() > MAX_MATCHES {
            errors.push(error(format!("match.{field}"), format!("at most {MAX_MATCHES} entries are allowed")));
            continue;
        }
        for (i, v) in list.iter().enumerate() {
            let at = format!("match.{field}[{i}]");
            if v.name.is_empty() || v.name.len() > MAX_NAME_LEN {
                errors.push(error(format!("{at}.name"), format!("must be 1 to {MAX_NAME_LEN} bytes")));
                continue;
            }
            if v.value.len() > MAX_VALUE_LEN {
                errors.push(error(format!("{at}.value"), format!("must be at most {MAX_VALUE_LEN} bytes")));
                continue;
            }
            let value = match v.kind {
                MatchType::Exact => Ok(ValueMatch::exact(&v.value)),
                MatchType::RegularExpression => ValueMatch::regex(&v.value),
            };
            let added = value.and_then(|value| {
                if is_header { m.clone().with_header(&v.name, value) } else { m.clone().with_query(&v.name, value) }
            });
            match added {
                Ok(with) => m = with,
                Err(e @ MatchError::BadRegex(_)) => errors.push(error(format!("{at}.value"), e)),
                Err(e) => errors.push(error(format!("{at}.name"), e)),
            }
        }
    }
    if errors.is_empty() { Ok(m) } else { Err(errors) }
}

/// Compiles the filters; fields are named under `filters[i]`.
pub fn compile_filters(
    specs: &[FilterSpec],
    path: &PathRule,
    resolve: &mut dyn FnMut(&str) -> Option<Arc<BackendGroup>>,
) -> Result<Vec<Filter>, Vec<RouteSpecError>> {
    let mut errors = Vec::new();
    if specs.len() > MAX_FILTERS {
        return Err(vec![error("filters", format!("at most {MAX_FILTERS} filters are allowed"))]);
    }
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for (i, f) in specs.iter().enumerate() {
        let at = format!("filters[{i}]");
        // Gateway API: each kind at most once per rule, except mirrors.
        if f.kind != FilterType::RequestMirror && seen.contains(&f.kind) {
            errors.push(error(format!("{at}.type"), format!("{:?} appears more than once", f.kind)));
            continue;
        }
        seen.push(f.kind);
        match compile_filter(f, &at, path, resolve) {
            Ok(filter) => out.push(filter),
            Err(e) => errors.push(e),
        }
    }
    if seen.contains(&FilterType::RequestRedirect) && seen.contains(&FilterType::UrlRewrite) {
        errors.push(error("filters", "RequestRedirect and URLRewrite cannot be used together"));
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// The field a filter's `type` asks for, or an error naming it.
fn required<'a, T>(value: &'a Option<T>, at: &str, field: &str) -> Result<&'a T, RouteSpecError> {
    value.as_ref().ok_or_else(|| error(format!("{at}.{field}"), "required by the filter's type"))
}

fn compile_filter(
    f: &FilterSpec,
    at: &str,
    path: &PathRule,
    resolve: &mut dyn FnMut(&str) -> Option<Arc<BackendGroup>>,
) -> Result<Filter, RouteSpecError> {
    let others = [
        (f.request_header_modifier.is_some(), FilterType::RequestHeaderModifier),
        (f.response_header_modifier.is_some(), FilterType::ResponseHeaderModifier),
        (f.request_redirect.is_some(), FilterType::RequestRedirect),
        (f.url_rewrite.is_some(), FilterType::UrlRewrite),
        (f.request_mirror.is_some(), FilterType::RequestMirror),
        (f.cors.is_some(), FilterType::Cors),
    ];
    if let Some((_, kind)) = others.iter().find(|(set, kind)| *set && *kind != f.kind) {
        return Err(error(format!("{at}.type"), format!("is {:?} but the filter configures {kind:?}", f.kind)));
    }
    let fe = |field: &str, e: FilterError| error(format!("{at}.{field}"), e);
    Ok(match f.kind {
        FilterType::RequestHeaderModifier => {
            let m = required(&f.request_header_modifier, at, "requestHeaderModifier")?;
            Filter::RequestHeaders(header_modifier(m, &format!("{at}.requestHeaderModifier"))?)
        }
        FilterType::ResponseHeaderModifier => {
            let m = required(&f.response_header_modifier, at, "responseHeaderModifier")?;
            Filter::ResponseHeaders(header_modifier(m, &format!("{at}.responseHeaderModifier"))?)
        }
        FilterType::RequestRedirect => {
            let r = required(&f.request_redirect, at, "requestRedirect")?;
            let mut redirect = Redirect::new();
            if let Some(s) = &r.scheme {
                redirect = redirect.with_scheme(s).map_err(|e| fe("requestRedirect.scheme", e))?;
            }
            if let Some(h) = &r.hostname {
                redirect = redirect.with_hostname(h).map_err(|e| fe("requestRedirect.hostname", e))?;
            }
            if let Some(p) = r.port {
                redirect = redirect.with_port(p).map_err(|e| fe("requestRedirect.port", e))?;
            }
            if let Some(code) = r.status_code {
                redirect = redirect.with_status(code).map_err(|e| fe("requestRedirect.statusCode", e))?;
            }
            if let Some(p) = &r.path {
                redirect = redirect.with_path(path_modifier(p, path, &format!("{at}.requestRedirect.path"))?);
            }
            Filter::Redirect(redirect)
        }
        FilterType::UrlRewrite => {
            let r = required(&f.url_rewrite, at, "urlRewrite")?;
            let mut rewrite = Rewrite::new();
            if let Some(h) = &r.hostname {
                rewrite = rewrite.with_hostname(h).map_err(|e| fe("urlRewrite.hostname", e))?;
            }
            if let Some(p) = &r.path {
                rewrite = rewrite.with_path(path_modifier(p, path, &format!("{at}.urlRewrite.path"))?);
            }
            Filter::Rewrite(rewrite)
        }
        FilterType::RequestMirror => {
            let m = required(&f.request_mirror, at, "requestMirror")?;
            let name = &m.backend_ref.name;
            let group = resolve(name).ok_or_else(|| {
                error(format!("{at}.requestMirror.backendRef.name"), format!("unknown backend group {name:?}"))
            })?;
            let mirror = Mirror::new(group, m.percent.unwrap_or(100)).map_err(|e| fe("requestMirror.percent", e))?;
            Filter::Mirror(Arc::new(mirror))
        }
        FilterType::Cors => {
            let c = required(&f.cors, at, "cors")?;
            let cors = Cors::new(
                &c.allow_origins,
                &c.allow_methods,
                &c.allow_headers,
                &c.expose_headers,
                c.max_age,
                c.allow_credentials.unwrap_or(false),
            )
            .map_err(|e| {
                let field = match &e {
                    FilterError::BadOrigin(_) => "cors.allowOrigins",
                    FilterError::BadMethod(_) => "cors.allowMethods",
                    _ => "cors",
                };
                fe(field, e)
            })?;
            Filter::Cors(Arc::new(cors))
        }
    })
}

fn header_modifier(spec: &HeaderModifierSpec, at: &str) -> Result<HeaderModifier, RouteSpecError> {
    let mut m = HeaderModifier::new();
    for (list, name) in [(&spec.set, "set"), (&spec.add, "add")] {
        if list.len() > MAX_HEADER_CHANGES {
            return Err(error(format!("{at}.{name}"), format!("at most {MAX_HEADER_CHANGES} entries are allowed")));
        }
    }
    if spec.remove.len() > MAX_HEADER_CHANGES {
        return Err(error(format!("{at}.remove"), format!("at most {MAX_HEADER_CHANGES} entries are allowed")));
    }
    for (i, h) in spec.set.iter().enumerate() {
        m = m.with_set(&h.name, &h.value).map_err(|e| error(format!("{at}.set[{i}]"), e))?;
    }
    for (i, h) in spec.add.iter().enumerate() {
        m = m.with_add(&h.name, &h.value).map_err(|e| error(format!("{at}.add[{i}]"), e))?;
    }
    for (i, h) in spec.remove.iter().enumerate() {
        m = m.with_remove(h).map_err(|e| error(format!("{at}.remove[{i}]"), e))?;
    }
    Ok(m)
}

fn path_modifier(spec: &PathModifierSpec, path: &PathRule, at: &str) -> Result<PathModifier, RouteSpecError> {
    match spec.kind {
        PathModifierType::ReplaceFullPath => {
            let p = required(&spec.replace_full_path, at, "replaceFullPath")?;
            PathModifier::full(p).map_err(|e| error(format!("{at}.replaceFullPath"), e))
        }
        PathModifierType::ReplacePrefixMatch => {
            let p = required(&spec.replace_prefix_match, at, "replacePrefixMatch")?;
            if path.prefix().is_none() {
                return Err(error(format!("{at}.replacePrefixMatch"), FilterError::PrefixWithoutPrefixMatch));
            }
            PathModifier::prefix(p).map_err(|e| error(format!("{at}.replacePrefixMatch"), e))
        }
    }
}

/// Compiles timeouts; fields are named under `timeouts`.
pub fn compile_timeouts(spec: &TimeoutsSpec) -> Result<RouteTimeouts, RouteSpecError> {
    let parse = |value: &Option<String>, field: &str| {
        value
            .as_deref()
            .map(|v| parse_gateway_duration(v).map_err(|e| error(format!("timeouts.{field}"), e)))
            .transpose()
    };
    let request = parse(&spec.request, "request")?;
    let backend_request = parse(&spec.backend_request, "backendRequest")?;
    if let (Some(r), Some(b)) = (request, backend_request)
        && !r.is_zero()
        && (b.is_zero() || b > r)
    {
        return Err(error("timeouts.backendRequest", RouteTimeoutsError::BackendLongerThanRequest));
    }
    Ok(RouteTimeouts { request, backend_request })
}

/// A GEP-2257 duration: 1 to 4 groups of up to 5 digits and a unit (`h`, `m`, `s`, `ms`).
pub fn parse_gateway_duration(text: &str) -> Result<Duration, RouteTimeoutsError> {
    let bad = || RouteTimeoutsError::BadDuration(text.to_string());
    let mut rest = text;
    let mut total = Duration::ZERO;
    let mut groups = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        total += unit * u32::try_from(n).map_err(|_| bad())?;
        groups += 1;
        if groups > 4 {
            return Err(bad());
        }
    }
    if groups == 0 { Err(bad()) } else { Ok(total) }
}

/// The mirror targets a route names, so a source can resolve them before compiling.
pub fn mirror_targets(filters: &[FilterSpec]) -> impl Iterator<Item = &str> {
    filters.iter().filter_map(|f| f.request_mirror.as_ref()).map(|m| m.backend_ref.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::PathType;

    fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
        serde_saphyr::from_str(text).unwrap()
    }

    fn prefix() -> PathRule {
        PathRule::new("/api", PathType::Prefix).unwrap()
    }

    fn fields(errors: Vec<RouteSpecError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn gateway_api_spelling_parses_and_compiles() {
        let m: MatchSpec = yaml(
            "method: GET\nheaders: [{name: X-Version, value: v2}, {type: RegularExpression, name: x-user, value: 'a.*'}]\nqueryParams: [{name: debug, value: '1'}]\n",
        );
        assert_eq!(compile_match(&m).unwrap().rank(), (true, 2, 1));
        let f: Vec<FilterSpec> = yaml(
            r#"
- type: RequestHeaderModifier
  requestHeaderModifier: {set: [{name: x-a, value: "1"}], add: [{name: x-b, value: "2"}], remove: [x-c]}
- type: ResponseHeaderModifier
  responseHeaderModifier: {add: [{name: x-served-by, value: proxy}]}
- type: URLRewrite
  urlRewrite: {hostname: internal.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
- type: CORS
  cors: {allowOrigins: ["https://*.example.com"], allowMethods: [GET], maxAge: 60, allowCredentials: true}
"#,
        );
        let filters = compile_filters(&f, &prefix(), &mut |_| None).unwrap();
        assert_eq!(filters.len(), 4);
        let t: TimeoutsSpec = yaml("request: 10s\nbackendRequest: 2s500ms\n");
        let t = compile_timeouts(&t).unwrap();
        assert_eq!((t.request, t.backend_request), (Some(Duration::from_secs(10)), Some(Duration::from_millis(2500))));
    }

    #[test]
    fn errors_name_the_field_in_gateway_api_spelling() {
        let m: MatchSpec = yaml(
            "method: 'G T'\nheaders: [{name: 'bad name', value: x}]\nqueryParams: [{type: RegularExpression, name: q, value: '('}]\n",
        );
        assert_eq!(
            fields(compile_match(&m).unwrap_err()),
            ["match.method", "match.headers[0].name", "match.queryParams[0].value"]
        );
        let f: Vec<FilterSpec> = yaml(
            r#"
- type: RequestRedirect
  requestRedirect: {statusCode: 200}
- type: URLRewrite
  urlRewrite: {path: {type: ReplacePrefixMatch}}
- type: RequestMirror
  requestMirror: {backendRef: {name: nowhere}}
- type: CORS
  requestRedirect: {}
- type: RequestHeaderModifier
  requestHeaderModifier: {set: [{name: host, value: x}]}
"#,
        );
        let errors = compile_filters(&f, &prefix(), &mut |_| None).unwrap_err();
        assert_eq!(
            fields(errors),
            [
                "filters[0].requestRedirect.statusCode",
                "filters[1].urlRewrite.path.replacePrefixMatch",
                "filters[2].requestMirror.backendRef.name",
                "filters[3].type",
                "filters[4].requestHeaderModifier.set[0]",
                "filters",
            ]
        );
    }

    #[test]
    fn prefix_replacement_needs_a_prefix_route() {
        let f: Vec<FilterSpec> =
            yaml("- type: URLRewrite\n  urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /x}}\n");
        let exact = PathRule::new("/api", PathType::Exact).unwrap();
        let err = compile_filters(&f, &exact, &mut |_| None).unwrap_err();
        assert_eq!(
            err[0].to_string(),
            "filters[0].urlRewrite.path.replacePrefixMatch: ReplacePrefixMatch needs a PathPrefix match"
        );
        assert!(compile_filters(&f, &prefix(), &mut |_| None).is_ok());
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        assert!(serde_saphyr::from_str::<MatchSpec>("methd: GET\n").is_err());
        assert!(serde_saphyr::from_str::<FilterSpec>("type: Teleport\n").is_err());
    }

    #[test]
    fn gateway_durations() {
        assert_eq!(parse_gateway_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_gateway_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_gateway_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "10", "1.5s", "123456s", "1h1m1s1ms1h", "-1s", "1d"] {
            assert!(parse_gateway_duration(bad).is_err(), "{bad}");
        }
        let t = TimeoutsSpec { request: Some("1s".into()), backend_request: Some("2s".into()) };
        assert_eq!(compile_timeouts(&t).unwrap_err().field, "timeouts.backendRequest");
        let t = TimeoutsSpec { request: Some("0s".into()), backend_request: Some("2s".into()) };
        assert!(compile_timeouts(&t).is_ok(), "no request limit: any backend limit");
    }
}
