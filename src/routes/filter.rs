//! Route filters: request and response changes compiled into a route when the table is
//! built and applied in order by the request pipeline's filter phase (request side) and
//! response phase (response side). A filter is data decided at build time (parsed header
//! names and values, a compiled pattern, precomputed header values), never parsed per
//! request. Gateway API filters, standalone routes and BackendGroup routes all compile to
//! these values, so each behaviour is written once.
//!
//! The behaviours are Gateway API v1.6's (`HTTPRouteFilter`):
//! - [`HeaderModifier`]: `set` replaces, `add` appends, `remove` deletes, in that order;
//!   names are case-insensitive. Request and response side.
//! - [`Redirect`]: the `Location` a request is sent to (scheme, hostname, port, path);
//!   see [`Redirect::location`] for the port rules.
//! - [`Rewrite`]: the hostname and path the backend sees.
//! - [`Mirror`]: a copy of each request (headers only) to another group, response dropped.
//! - [`Cors`]: preflight answered by the proxy, CORS headers added to actual responses.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use crate::upstream::BackendGroup;

/// One filter of a route.
#[derive(Debug, Clone)]
pub enum Filter {
    /// Changes the request's headers before it is sent upstream.
    RequestHeaders(HeaderModifier),
    /// Changes the response's headers before they reach the client.
    ResponseHeaders(HeaderModifier),
    /// Answers with a redirect; no backend is asked.
    Redirect(Redirect),
    /// Changes the hostname and path the backend sees.
    Rewrite(Rewrite),
    /// Sends a copy of the request to another group.
    Mirror(Arc<Mirror>),
    /// Cross-origin resource sharing.
    Cors(Arc<Cors>),
}

/// Why a filter was refused while compiling a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("header name {0:?} is not a valid HTTP header name")]
    BadHeaderName(String),
    #[error("value of header {0:?} is not a valid HTTP header value")]
    BadHeaderValue(String),
    #[error(
        "header {0:?} cannot be changed by a header modifier (it is the proxy's to set; use a URL rewrite's hostname for Host)"
    )]
    ReservedHeader(String),
    #[error("header {0:?} is named twice")]
    DuplicateHeader(String),
    #[error("status code {0} is not a redirect status (301, 302, 303, 307 or 308)")]
    BadRedirectStatus(u16),
    #[error("scheme {0:?} must be http or https")]
    BadScheme(String),
    #[error("hostname {0:?} is not a valid host name")]
    BadHostname(String),
    #[error("port must be between 1 and 65535")]
    BadPort,
    #[error("path {0:?} must start with '/' and hold no space, control character, '?' or '#'")]
    BadPath(String),
    #[error("ReplacePrefixMatch needs a PathPrefix match")]
    PrefixWithoutPrefixMatch,
    #[error("origin {0:?} must be * or scheme://host[:port] (http or https; a * only as the first host label)")]
    BadOrigin(String),
    #[error("method {0:?} is not a valid HTTP method")]
    BadMethod(String),
    #[error("percent must be between 0 and 100")]
    BadPercent,
}

// === impl HeaderModifier ===

/// Gateway API `HTTPHeaderFilter`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

/// Headers the proxy owns on the request side: connection management, and `Host`,
/// which the proxy sets from the request's authority (a rewrite's hostname changes it).
fn reserved(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host" | "connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "te" | "trailer" | "content-length"
    )
}

fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), FilterError> {
    let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| FilterError::BadHeaderName(name.into()))?;
    if reserved(&n) {
        return Err(FilterError::ReservedHeader(name.into()));
    }
    let v = HeaderValue::from_str(value).map_err(|_| FilterError::BadHeaderValue(name.into()))?;
    Ok((n, v))
}

impl HeaderModifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// The header is replaced (or created) with `value`.
    pub fn with_set(mut self, name: &str, value: &str) -> Result<Self, FilterError> {
        let (n, v) = header(name, value)?;
        if self.set.iter().any(|(m, _)| *m == n) {
            return Err(FilterError::DuplicateHeader(name.into()));
        }
        self.set.push((n, v));
        Ok(self)
    }

    /// `value` is appended to the header's values.
    pub fn with_add(mut self, name: &str, value: &str) -> Result<Self, FilterError> {
        let (n, v) = header(name, value)?;
        if self.add.iter().any(|(m, _)| *m == n) {
            return Err(FilterError::DuplicateHeader(name.into()));
        }
        self.add.push((n, v));
        Ok(self)
    }

    /// The header is removed.
    pub fn with_remove(mut self, name: &str) -> Result<Self, FilterError> {
        let (n, _) = header(name, "")?;
        if self.remove.contains(&n) {
            return Err(FilterError::DuplicateHeader(name.into()));
        }
        self.remove.push(n);
        Ok(self)
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            headers.remove(n);
        }
    }
}

// === impl PathModifier ===

/// Gateway API `HTTPPathModifier`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathModifier {
    /// The whole path becomes this.
    ReplaceFullPath(String),
    /// The matched prefix becomes this (the route must match by Prefix).
    ReplacePrefixMatch(String),
}

/// A path a request may be sent with: absolute, and only characters a request target may
/// carry (no space, control character, `?` or `#`), so the rewritten URI always builds.
fn path_checked(path: &str, may_be_empty: bool) -> Result<String, FilterError> {
    if may_be_empty && path.is_empty() {
        return Ok(String::new());
    }
    let ok = path.starts_with('/')
        && http::uri::PathAndQuery::try_from(path).is_ok()
        && !path.bytes().any(|b| b.is_ascii_control() || matches!(b, b' ' | b'?' | b'#'));
    if ok { Ok(path.to_string()) } else { Err(FilterError::BadPath(path.into())) }
}

impl PathModifier {
    pub fn full(path: &str) -> Result<Self, FilterError> {
        Ok(Self::ReplaceFullPath(path_checked(path, false)?))
    }

    /// An empty replacement is allowed (the prefix is removed).
    pub fn prefix(replacement: &str) -> Result<Self, FilterError> {
        Ok(Self::ReplacePrefixMatch(path_checked(replacement, true)?))
    }

    /// The new path for `path`, which matched the route's `prefix` (stored without a
    /// trailing slash, `` for `/`). `None` for a prefix replacement on a route that did
    /// not match by prefix (refused at build time, so not expected).
    pub fn apply(&self, path: &str, prefix: Option<&str>) -> Option<String> {
        match self {
            Self::ReplaceFullPath(p) => Some(p.clone()),
            Self::ReplacePrefixMatch(replacement) => Some(replace_prefix(path, prefix?, replacement)),
        }
    }
}

/// Gateway API's prefix replacement, whole segments: the matched prefix (no trailing
/// slash) is cut off, the replacement without its trailing slash put in its place.
/// `/foo/bar` with prefix `/foo` and `/xyz` gives `/xyz/bar`; `/foo/` gives `/xyz/`;
/// an empty or `/` replacement leaves `/bar` or `/`.
pub fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let head = replacement.trim_end_matches('/');
    let mut out = String::with_capacity(head.len() + rest.len() + 1);
    out.push_str(head);
    out.push_str(rest);
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    out
}

// === impl Redirect ===

/// Gateway API `HTTPRequestRedirectFilter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    scheme: Option<&'static str>,
    hostname: Option<String>,
    port: Option<u16>,
    /// The port of the listener the route is served on, when the source knows it (a
    /// Gateway listener's `port`): what Gateway API means by "the listener port".
    listener_port: Option<u16>,
    /// The scheme of the listener the route is served on, when the source knows it (a
    /// Gateway listener's protocol); see [`Redirect::with_listener_tls`].
    listener_scheme: Option<&'static str>,
    path: Option<PathModifier>,
    status: StatusCode,
}

/// What a redirect or rewrite needs to know of the request.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// The request came in over TLS (its scheme is https).
    pub tls: bool,
    /// The raw authority (`Host`/`:authority`), port included.
    pub authority: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The route's prefix when it matched by Prefix.
    pub matched_prefix: Option<&'a str>,
}

impl Redirect {
    /// A 302 to the same place; set what changes with the `with_*` methods.
    pub fn new() -> Self {
        Self {
            scheme: None,
            hostname: None,
            port: None,
            listener_port: None,
            listener_scheme: None,
            path: None,
            status: StatusCode::FOUND,
        }
    }

    pub fn with_scheme(mut self, scheme: &str) -> Result<Self, FilterError> {
        self.scheme = Some(match scheme {
            "http" => "http",
            "https" => "https",
            _ => return Err(FilterError::BadScheme(scheme.into())),
        });
        Ok(self)
    }

    pub fn with_hostname(mut self, hostname: &str) -> Result<Self, FilterError> {
        self.hostname = Some(hostname_checked(hostname)?);
        Ok(self)
    }

    pub fn with_port(mut self, port: u32) -> Result<Self, FilterError> {
        self.port = Some(u16::try_from(port).ok().filter(|p| *p > 0).ok_or(FilterError::BadPort)?);
        Ok(self)
    }

    pub fn with_path(mut self, path: PathModifier) -> Self {
        self.path = Some(path);
        self
    }

    /// The port of the listener this route is served on (a Gateway listener's `port`),
    /// used when the filter names neither a port nor a scheme. Without it the port of the
    /// request's authority stands for the listener's, which is wrong only for a client
    /// that names no port while connecting to a non-default one.
    pub fn with_listener_port(mut self, port: u16) -> Self {
        self.listener_port = Some(port).filter(|p| *p > 0);
        self
    }

    /// Whether the listener this route is served on is a TLS one (a Gateway listener's
    /// protocol): its scheme is the redirect's when the filter names none. Without it the
    /// request's scheme stands for the listener's, which differs only when a listener's
    /// routes are also served on another (`--gateway-http-over-h3`: an HTTP listener's
    /// routes reached over QUIC, whose redirects still go to `http`).
    pub fn with_listener_tls(mut self, tls: bool) -> Self {
        self.listener_scheme = Some(if tls { "https" } else { "http" });
        self
    }

    pub fn with_status(mut self, status: u16) -> Result<Self, FilterError> {
        if !matches!(status, 301 | 302 | 303 | 307 | 308) {
            return Err(FilterError::BadRedirectStatus(status));
        }
        self.status = StatusCode::from_u16(status).map_err(|_| FilterError::BadRedirectStatus(status))?;
        Ok(self)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn path_modifier(&self) -> Option<&PathModifier> {
        self.path.as_ref()
    }

    /// The `Location` for a request. Gateway API's port rules: the filter's port if set;
    /// else the well-known port of the filter's scheme if it sets one; else the listener's
    /// port: the one compiled in (`with_listener_port`), or the port of the request's
    /// authority (the default port of its scheme when it names none). A port that is the
    /// default for the scheme is left out.
    pub fn location(&self, req: &RequestParts<'_>) -> String {
        let connection_scheme = if req.tls { "https" } else { "http" };
        let request_scheme = self.listener_scheme.unwrap_or(connection_scheme);
        let scheme = self.scheme.unwrap_or(request_scheme);
        let (req_host, req_port) = split_authority(req.authority.unwrap_or(""));
        // The authority's port stands for the listener's only when the request came in
        // over that listener's protocol (an HTTP listener's route reached over QUIC names
        // the TLS port).
        let req_port = req_port.filter(|_| request_scheme == connection_scheme);
        let host = self.hostname.as_deref().unwrap_or(req_host);
        let port = self.port.unwrap_or_else(|| match self.scheme {
            Some(s) => default_port(s),
            None => self.listener_port.or(req_port).unwrap_or_else(|| default_port(request_scheme)),
        });
        let path = self.path.as_ref().and_then(|m| m.apply(req.path, req.matched_prefix));
        let path = path.as_deref().unwrap_or(req.path);
        let mut out = format!("{scheme}://{host}");
        if port != default_port(scheme) {
            out.push_str(&format!(":{port}"));
        }
        out.push_str(path);
        if let Some(q) = req.query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

impl Default for Redirect {
    fn default() -> Self {
        Self::new()
    }
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

/// `host[:port]` or `[v6]:port` → host (brackets kept) and port.
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    let port_at = match authority.rfind(':') {
        Some(i)
            if !authority[i..].contains(']') && (authority.starts_with('[') || authority.matches(':').count() == 1) =>
        {
            i
        }
        _ => return (authority, None),
    };
    (&authority[..port_at], authority[port_at + 1..].parse().ok())
}

fn hostname_checked(hostname: &str) -> Result<String, FilterError> {
    match super::HostRule::parse(hostname) {
        Ok(super::HostRule::Exact(h)) => Ok(h),
        _ => Err(FilterError::BadHostname(hostname.into())),
    }
}

// === impl Rewrite ===

/// Gateway API `HTTPURLRewriteFilter`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    hostname: Option<String>,
    path: Option<PathModifier>,
}

impl Rewrite {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_hostname(mut self, hostname: &str) -> Result<Self, FilterError> {
        self.hostname = Some(hostname_checked(hostname)?);
        Ok(self)
    }

    pub fn with_path(mut self, path: PathModifier) -> Self {
        self.path = Some(path);
        self
    }

    /// The host the backend sees instead of the client's (`Host`/`:authority`).
    pub fn hostname(&self) -> Option<&str> {
        self.hostname.as_deref()
    }

    pub fn path_modifier(&self) -> Option<&PathModifier> {
        self.path.as_ref()
    }

    /// The new `path?query` for a request, if the path changes.
    pub fn path_and_query(&self, req: &RequestParts<'_>) -> Option<String> {
        let mut path = self.path.as_ref()?.apply(req.path, req.matched_prefix)?;
        if let Some(q) = req.query {
            path.push('?');
            path.push_str(q);
        }
        Some(path)
    }
}

// === impl Mirror ===

/// Most mirrored requests one mirror filter keeps in flight; past it copies are dropped
/// (counted), so a slow mirror never holds more than this of the proxy.
pub const MAX_MIRRORS_IN_FLIGHT: usize = 64;

/// Gateway API `HTTPRequestMirrorFilter`: a copy of the request's head (method, path,
/// headers; never the body) goes to `group`, its response is dropped, and the client's
/// request does not wait for it. Requests with a body are not mirrored (a copy would need
/// the body buffered or held back), nor are copies past [`MAX_MIRRORS_IN_FLIGHT`].
#[derive(Debug)]
pub struct Mirror {
    pub group: Arc<BackendGroup>,
    /// Share of requests mirrored, 0 to 100.
    percent: u32,
    draws: AtomicU64,
    in_flight: Arc<AtomicUsize>,
}

/// One mirrored request in flight; dropping it frees its place.
#[derive(Debug)]
pub struct MirrorPermit(Arc<AtomicUsize>);

impl Drop for MirrorPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Mirror {
    pub fn new(group: Arc<BackendGroup>, percent: u32) -> Result<Self, FilterError> {
        if percent > 100 {
            return Err(FilterError::BadPercent);
        }
        Ok(Self { group, percent, draws: AtomicU64::new(0), in_flight: Arc::default() })
    }

    /// Whether this request is one of the share mirrored (spread evenly: every
    /// `100/percent`-th request in the long run).
    pub fn chosen(&self) -> bool {
        match self.percent {
            100 => true,
            0 => false,
            p => {
                let n = self.draws.fetch_add(1, Ordering::Relaxed);
                (n * u64::from(p)) % 100 < u64::from(p)
            }
        }
    }

    /// A place for one more mirrored request, if fewer than the cap are in flight.
    pub fn try_start(&self) -> Option<MirrorPermit> {
        let taken = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let permit = MirrorPermit(self.in_flight.clone());
        (taken < MAX_MIRRORS_IN_FLIGHT).then_some(permit)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

// === impl Cors ===

/// One `allowOrigins` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// `*`: every origin.
    Any,
    /// `scheme://host:port`, host lower-case, a leading `*` matching any labels to its left.
    Pattern { scheme: String, host: HostPattern, port: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` kept as `.example.com`: the origin's host must end with it.
    Suffix(String),
}

/// `scheme://host[:port]` of an origin (the request's `Origin`, or a configured one).
fn parse_origin(origin: &str) -> Option<(&str, &str, u16)> {
    let (scheme, rest) = origin.split_once("://")?;
    if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains(['/', '?', '#']) {
        return None;
    }
    let (host, port) = split_authority(rest);
    let port = match port {
        Some(p) => p,
        None if host.len() == rest.len() => default_port(scheme),
        None => return None,
    };
    (!host.is_empty()).then_some((scheme, host, port))
}

impl Origin {
    fn parse(origin: &str) -> Result<Self, FilterError> {
        if origin == "*" {
            return Ok(Self::Any);
        }
        let bad = || FilterError::BadOrigin(origin.into());
        let (scheme, host, port) = parse_origin(origin).ok_or_else(bad)?;
        let host = host.to_ascii_lowercase();
        let host = match host.strip_prefix('*') {
            Some(rest) if !rest.contains('*') => HostPattern::Suffix(rest.to_string()),
            Some(_) => return Err(bad()),
            None if host.contains('*') => return Err(bad()),
            None => HostPattern::Exact(host),
        };
        Ok(Self::Pattern { scheme: scheme.into(), host, port })
    }

    fn matches(&self, origin: &str) -> bool {
        let Self::Pattern { scheme, host, port } = self else { return true };
        let Some((s, h, p)) = parse_origin(origin) else { return false };
        if s != scheme || p != *port {
            return false;
        }
        match host {
            HostPattern::Exact(e) => h.eq_ignore_ascii_case(e),
            HostPattern::Suffix(suffix) => h.len() > suffix.len() && h.to_ascii_lowercase().ends_with(suffix.as_str()),
        }
    }
}

/// Gateway API `HTTPCORSFilter`. Header values are joined once, when the table is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    origins: Vec<Origin>,
    credentials: bool,
    any_method: bool,
    allow_methods: Option<HeaderValue>,
    any_header: bool,
    allow_headers: Option<HeaderValue>,
    any_expose: bool,
    expose_headers: Option<HeaderValue>,
    max_age: HeaderValue,
}

/// Gateway API's default `maxAge`, seconds.
pub const DEFAULT_CORS_MAX_AGE: u32 = 5;

const ALLOW_ORIGIN: HeaderName = http::header::ACCESS_CONTROL_ALLOW_ORIGIN;
const ALLOW_CREDENTIALS: HeaderName = http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS;

fn joined(items: &[String]) -> Result<Option<HeaderValue>, FilterError> {
    if items.is_empty() {
        return Ok(None);
    }
    let text = items.join(", ");
    HeaderValue::from_str(&text).map(Some).map_err(|_| FilterError::BadHeaderValue(text))
}

impl Cors {
    pub fn new(
        allow_origins: &[String],
        allow_methods: &[String],
        allow_headers: &[String],
        expose_headers: &[String],
        max_age: Option<u32>,
        allow_credentials: bool,
    ) -> Result<Self, FilterError> {
        let origins = allow_origins.iter().map(|o| Origin::parse(o)).collect::<Result<Vec<_>, _>>()?;
        for m in allow_methods.iter().filter(|m| *m != "*") {
            Method::from_bytes(m.as_bytes()).map_err(|_| FilterError::BadMethod(m.clone()))?;
        }
        for h in allow_headers.iter().chain(expose_headers).filter(|h| *h != "*") {
            HeaderName::from_bytes(h.as_bytes()).map_err(|_| FilterError::BadHeaderName(h.clone()))?;
        }
        let any = |list: &[String]| list.iter().any(|x| x == "*");
        Ok(Self {
            origins,
            credentials: allow_credentials,
            any_method: any(allow_methods),
            allow_methods: joined(allow_methods)?,
            any_header: any(allow_headers),
            allow_headers: joined(allow_headers)?,
            any_expose: any(expose_headers),
            expose_headers: joined(expose_headers)?,
            max_age: HeaderValue::from(max_age.unwrap_or(DEFAULT_CORS_MAX_AGE)),
        })
    }

    /// Whether `origin` (the request's `Origin`) is allowed.
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        origin.to_str().is_ok_and(|o| self.origins.iter().any(|p| p.matches(o)))
    }

    /// Whether a request is a CORS preflight: OPTIONS with `Origin` and
    /// `Access-Control-Request-Method`.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(http::header::ORIGIN)
            && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The headers of the proxy's answer to a preflight from an allowed `origin`.
    /// Wildcards echo what the request asked for (always allowed, and required with
    /// credentials); an absent request header leaves its wildcard answer out.
    pub fn preflight_headers(&self, origin: &HeaderValue, request: &HeaderMap) -> HeaderMap {
        let mut out = HeaderMap::new();
        out.insert(ALLOW_ORIGIN, origin.clone());
        out.insert(http::header::VARY, HeaderValue::from_static("origin"));
        if self.credentials {
            out.insert(ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        let asked_method = request.get(http::header::ACCESS_CONTROL_REQUEST_METHOD);
        let methods = if self.any_method { asked_method.cloned() } else { self.allow_methods.clone() };
        if let Some(v) = methods {
            out.insert(http::header::ACCESS_CONTROL_ALLOW_METHODS, v);
        }
        let asked_headers = request.get(http::header::ACCESS_CONTROL_REQUEST_HEADERS);
        let headers = if self.any_header { asked_headers.cloned() } else { self.allow_headers.clone() };
        if let Some(v) = headers {
            out.insert(http::header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        out.insert(http::header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        // Gateway API's CORS filter sends the exposed names on the preflight too.
        if let Some(v) = self.exposed() {
            out.insert(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
        out
    }

    /// `Access-Control-Expose-Headers`: `*` cannot be sent with credentials, and the names
    /// exposed are then not known.
    fn exposed(&self) -> Option<HeaderValue> {
        if self.any_expose && self.credentials { None } else { self.expose_headers.clone() }
    }

    /// Adds the CORS headers of an actual response to a request from an allowed `origin`.
    pub fn add_response_headers(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        headers.insert(ALLOW_ORIGIN, origin.clone());
        headers.append(http::header::VARY, HeaderValue::from_static("origin"));
        if self.credentials {
            headers.insert(ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        if let Some(v) = self.exposed() {
            headers.insert(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(
        authority: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        prefix: Option<&'a str>,
    ) -> RequestParts<'a> {
        RequestParts { tls: false, authority: Some(authority), path, query, matched_prefix: prefix }
    }

    #[test]
    fn prefix_replacement_follows_the_gateway_api_table() {
        for (path, prefix, replacement, want) in [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            // The root prefix is stored as ``.
            ("/bar", "", "/xyz", "/xyz/bar"),
            ("/", "", "/xyz", "/xyz/"),
        ] {
            assert_eq!(replace_prefix(path, prefix, replacement), want, "{path} {prefix:?} {replacement:?}");
        }
    }

    #[test]
    fn rewrites_keep_the_query_and_need_a_prefix_for_prefix_replacement() {
        let r =
            Rewrite::new().with_path(PathModifier::prefix("/v2").unwrap()).with_hostname("Backend.internal").unwrap();
        assert_eq!(
            r.path_and_query(&parts("a", "/v1/users", Some("x=1"), Some("/v1"))).as_deref(),
            Some("/v2/users?x=1")
        );
        assert_eq!(r.hostname(), Some("backend.internal"));
        assert_eq!(r.path_and_query(&parts("a", "/v1/users", None, None)), None);
        let full = Rewrite::new().with_path(PathModifier::full("/only").unwrap());
        assert_eq!(full.path_and_query(&parts("a", "/v1/users", None, None)).as_deref(), Some("/only"));
        assert!(PathModifier::full("relative").is_err() && PathModifier::prefix("x").is_err());
        for bad in ["/a b", "/a?b", "/a#b", "/a\tb"] {
            assert!(PathModifier::full(bad).is_err() && PathModifier::prefix(bad).is_err(), "{bad}");
        }
        assert!(PathModifier::prefix("").is_ok() && PathModifier::full("").is_err());
        assert!(Rewrite::new().with_hostname("*.wild.com").is_err());
    }

    #[test]
    fn redirect_ports_follow_the_gateway_api_rules() {
        let plain = Redirect::new();
        // No scheme, no port: the listener's port, which the authority names.
        assert_eq!(plain.location(&parts("a.com:8080", "/p", Some("q=1"), None)), "http://a.com:8080/p?q=1");
        assert_eq!(plain.location(&parts("a.com", "/p", None, None)), "http://a.com/p");
        // A scheme without a port: that scheme's well-known port, left out.
        let https = Redirect::new().with_scheme("https").unwrap();
        assert_eq!(https.location(&parts("a.com:8080", "/p", None, None)), "https://a.com/p");
        // An explicit port is written unless it is the scheme's default.
        let port = Redirect::new().with_scheme("https").unwrap().with_port(8443).unwrap();
        assert_eq!(port.location(&parts("a.com", "/p", None, None)), "https://a.com:8443/p");
        let p443 = Redirect::new().with_port(443).unwrap();
        let tls = RequestParts { tls: true, ..parts("a.com:80", "/p", None, None) };
        assert_eq!(p443.location(&tls), "https://a.com/p");
        let host = Redirect::new().with_hostname("b.com").unwrap().with_path(PathModifier::prefix("/new").unwrap());
        assert_eq!(host.location(&parts("a.com", "/old/x", None, Some("/old"))), "http://b.com/new/x");
        assert_eq!(Redirect::new().location(&parts("[::1]:8080", "/", None, None)), "http://[::1]:8080/");
        // A Gateway listener on 8080 reached with `Host: example.org` (no port).
        let listener = Redirect::new().with_hostname("b.com").unwrap().with_listener_port(8080);
        assert_eq!(listener.location(&parts("example.org", "/", None, None)), "http://b.com:8080/");
        let scheme = Redirect::new().with_scheme("https").unwrap().with_listener_port(8080);
        assert_eq!(
            scheme.location(&parts("example.org", "/", None, None)),
            "https://example.org/",
            "the scheme's port"
        );
    }

    #[test]
    fn a_redirect_without_a_scheme_keeps_the_listeners_not_the_connections() {
        let over_quic = RequestParts { tls: true, ..parts("example.org", "/p", None, None) };
        // An HTTP listener's route reached over QUIC (`--gateway-http-over-h3`).
        let http_listener = Redirect::new().with_hostname("b.com").unwrap().with_listener_tls(false);
        assert_eq!(http_listener.location(&over_quic), "http://b.com/p");
        assert_eq!(http_listener.location(&parts("example.org", "/p", None, None)), "http://b.com/p");
        let https_listener = Redirect::new().with_listener_tls(true);
        assert_eq!(https_listener.location(&parts("example.org", "/p", None, None)), "https://example.org/p");
        // A scheme the filter names still wins, with its own port.
        let named = Redirect::new().with_scheme("https").unwrap().with_listener_tls(false);
        assert_eq!(named.location(&over_quic), "https://example.org/p");
        // Without the listener's scheme, the request's stands for it.
        assert_eq!(Redirect::new().location(&over_quic), "https://example.org/p");
        // The TLS port in the authority (the suite's HTTP/3 client names it) is not the
        // HTTP listener's.
        let with_port = RequestParts { tls: true, ..parts("10.0.0.1:443", "/p", None, None) };
        assert_eq!(http_listener.location(&with_port), "http://b.com/p");
        let same = RequestParts { tls: true, ..parts("a.com:8443", "/p", None, None) };
        assert_eq!(https_listener.location(&same), "https://a.com:8443/p", "its own protocol: its port");
    }

    #[test]
    fn redirect_status_codes_are_the_redirect_ones() {
        for code in [301, 302, 303, 307, 308] {
            assert_eq!(Redirect::new().with_status(code).unwrap().status().as_u16(), code);
        }
        assert_eq!(Redirect::new().with_status(200).unwrap_err(), FilterError::BadRedirectStatus(200));
        assert_eq!(Redirect::new().status(), StatusCode::FOUND);
        assert!(Redirect::new().with_scheme("ftp").is_err() && Redirect::new().with_port(0).is_err());
        assert!(Redirect::new().with_port(70000).is_err());
    }

    #[test]
    fn header_modifier_sets_adds_removes_and_refuses_what_is_not_a_header() {
        let m = HeaderModifier::new()
            .with_set("X-Set", "new")
            .unwrap()
            .with_add("x-add", "two")
            .unwrap()
            .with_remove("X-Gone")
            .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-set", HeaderValue::from_static("old"));
        h.insert("x-add", HeaderValue::from_static("one"));
        h.insert("x-gone", HeaderValue::from_static("x"));
        m.apply(&mut h);
        assert_eq!(h["x-set"], "new");
        assert_eq!(h.get_all("x-add").iter().collect::<Vec<_>>(), ["one", "two"]);
        assert!(!h.contains_key("x-gone"));
        assert_eq!(
            HeaderModifier::new().with_set("bad name", "x").unwrap_err(),
            FilterError::BadHeaderName("bad name".into())
        );
        assert_eq!(HeaderModifier::new().with_add("x", "a\nb").unwrap_err(), FilterError::BadHeaderValue("x".into()));
        assert!(matches!(HeaderModifier::new().with_set("Host", "x"), Err(FilterError::ReservedHeader(_))));
        assert!(matches!(
            HeaderModifier::new().with_set("x", "1").unwrap().with_set("X", "2"),
            Err(FilterError::DuplicateHeader(_))
        ));
    }

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Cors::new(&s(origins), &s(&["GET", "PUT"]), &s(&["x-a", "x-b"]), &s(&["x-exposed"]), None, credentials).unwrap()
    }

    #[test]
    fn cors_origins_match_scheme_host_and_port_with_left_wildcards() {
        let c = cors(&["https://*.example.com", "http://exact.org:8080", "https://plain.net"], false);
        let ok = |o: &'static str| c.allows(&HeaderValue::from_static(o));
        assert!(ok("https://a.example.com") && ok("https://a.b.example.com") && ok("https://A.Example.com:443"));
        assert!(!ok("https://example.com"), "the wildcard needs a label");
        assert!(!ok("http://a.example.com"), "scheme differs");
        assert!(!ok("https://a.example.com:8443"), "port differs");
        assert!(!ok("https://evilexample.com"));
        assert!(ok("http://exact.org:8080") && !ok("http://exact.org"));
        assert!(ok("https://plain.net") && !ok("https://sub.plain.net") && !ok("null"));
        let any = cors(&["*"], false);
        assert!(any.allows(&HeaderValue::from_static("https://anything.io:1234")));
        for bad in ["ftp://a.com", "https://a.*.com", "https://a.com/path", "a.com", "https://"] {
            assert!(Cors::new(&[bad.to_string()], &[], &[], &[], None, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn cors_preflight_and_response_headers() {
        let c = cors(&["https://app.example"], true);
        let origin = HeaderValue::from_static("https://app.example");
        let mut req = HeaderMap::new();
        req.insert(http::header::ORIGIN, origin.clone());
        req.insert(http::header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("PUT"));
        assert!(Cors::is_preflight(&Method::OPTIONS, &req) && !Cors::is_preflight(&Method::GET, &req));
        let h = c.preflight_headers(&origin, &req);
        assert_eq!(h["access-control-allow-origin"], "https://app.example");
        assert_eq!(h["access-control-allow-methods"], "GET, PUT");
        assert_eq!(h["access-control-allow-headers"], "x-a, x-b");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-max-age"], "5");
        assert_eq!(h["access-control-expose-headers"], "x-exposed", "the preflight names them too");
        let mut resp = HeaderMap::new();
        c.add_response_headers(&origin, &mut resp);
        assert_eq!(resp["access-control-expose-headers"], "x-exposed");
        assert_eq!(resp["vary"], "origin");

        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let wild = Cors::new(&s(&["*"]), &s(&["*"]), &s(&["*"]), &s(&["*"]), Some(600), true).unwrap();
        req.insert(http::header::ACCESS_CONTROL_REQUEST_HEADERS, HeaderValue::from_static("x-custom"));
        let h = wild.preflight_headers(&origin, &req);
        assert_eq!(h["access-control-allow-methods"], "PUT", "with credentials a wildcard echoes");
        assert_eq!(h["access-control-allow-headers"], "x-custom");
        assert_eq!(h["access-control-max-age"], "600");
        let mut resp = HeaderMap::new();
        wild.add_response_headers(&origin, &mut resp);
        assert!(!resp.contains_key("access-control-expose-headers"), "no * with credentials");
    }

    #[test]
    fn mirrors_are_capped_and_spread_by_percent() {
        let group = Arc::new(BackendGroup::new(
            "m".into(),
            crate::upstream::Strategy::RoundRobin,
            crate::upstream::Timeouts::default(),
            vec![],
        ));
        let m = Mirror::new(group.clone(), 100).unwrap();
        let permits: Vec<_> = (0..MAX_MIRRORS_IN_FLIGHT).map(|_| m.try_start().unwrap()).collect();
        assert!(m.try_start().is_none(), "the cap");
        drop(permits);
        assert_eq!(m.in_flight(), 0);
        assert!(m.try_start().is_some());
        let quarter = Mirror::new(group.clone(), 25).unwrap();
        assert_eq!((0..100).filter(|_| quarter.chosen()).count(), 25);
        assert!(Mirror::new(group, 101).is_err());
    }
}
