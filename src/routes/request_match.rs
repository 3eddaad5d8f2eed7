//! What a route may require of a request beyond its host and path (Gateway API
//! `HTTPRouteMatch`: method, headers, query parameters), which listener it may come in on,
//! and the precedence among routes sharing one host and path.
//!
//! All of it is compiled when the table is built (names parsed, patterns compiled); a
//! lookup only compares. A route without a `RequestMatch` costs nothing more than before.

use std::borrow::Cow;

use http::Method;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::pattern::{Pattern, PatternError};

/// The listener a request came in on: TLS (HTTPS over TCP, HTTP/3) or plaintext HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    Tls,
    Plain,
}

/// Which listeners a route serves (a Gateway's HTTPS and HTTP listeners may carry
/// different routes). Ingress, BackendGroup and standalone routes serve both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ListenerScope {
    #[default]
    Both,
    Tls,
    Plain,
}

impl ListenerScope {
    pub fn admits(self, listener: Listener) -> bool {
        matches!((self, listener), (Self::Both, _) | (Self::Tls, Listener::Tls) | (Self::Plain, Listener::Plain))
    }

    /// Whether a request could be admitted by both (two such entries with the same
    /// host, path and match conflict).
    pub fn overlaps(self, other: Self) -> bool {
        self == Self::Both || other == Self::Both || self == other
    }
}

/// The last word among routes equal in every Gateway API precedence rule: lower wins.
/// Gateway API asks for the oldest route (creation time), then `namespace/name`
/// alphabetically, then the rule's (and match's) position in its route; a source without
/// such an order leaves it at the default, and the entry added first wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TieBreak {
    /// Creation time in any monotone unit (seconds since the epoch); older is lower.
    pub created: i64,
    /// `namespace/name` of the object.
    pub name: String,
    /// The position inside the object: e.g. `rule_index << 16 | match_index`.
    pub index: u32,
}

/// What a request looks like to the lookup: borrowed from the request, nothing copied.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The raw `Host`/`:authority` (port and case are ignored).
    pub host: Option<&'a str>,
    /// The normalised path with its query.
    pub path_and_query: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub listener: Listener,
}

impl<'a> RequestView<'a> {
    /// A GET with no headers on a TLS listener: how `RouteTable::lookup(host, path)`
    /// (callers that know only a host and path) sees a request.
    pub fn get(host: Option<&'a str>, path_and_query: &'a str) -> Self {
        static NO_HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);
        Self { host, path_and_query, method: &Method::GET, headers: &NO_HEADERS, listener: Listener::Tls }
    }

    /// The query string, without the `?`.
    pub fn query(&self) -> Option<&'a str> {
        self.path_and_query.split_once('?').map(|(_, q)| q)
    }
}

/// Why a match was refused while compiling a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    #[error("header name {0:?} is not a valid HTTP header name")]
    BadHeaderName(String),
    #[error("query parameter name must not be empty")]
    EmptyQueryName,
    #[error("method {0:?} is not a valid HTTP method")]
    BadMethod(String),
    #[error("{0}")]
    BadRegex(#[from] PatternError),
}

/// Why route timeouts were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteTimeoutsError {
    #[error("{0:?} is not a Gateway API duration (like 10s, 500ms, 1h30m)")]
    BadDuration(String),
    #[error("backendRequest cannot be longer than request")]
    BackendLongerThanRequest,
}

/// How one value is compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    Exact(String),
    /// The whole value matches (anchored).
    Regex(Pattern),
}

impl ValueMatch {
    pub fn exact(value: &str) -> Self {
        Self::Exact(value.to_string())
    }

    pub fn regex(pattern: &str) -> Result<Self, MatchError> {
        Ok(Self::Regex(Pattern::new(pattern)?))
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(v) => v == value,
            Self::Regex(p) => p.is_match(value),
        }
    }
}

/// A header the request must carry: the name is case-insensitive (kept lower-case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub value: ValueMatch,
}

/// A query parameter the request must carry: the name is compared exactly (Gateway API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryMatch {
    pub name: String,
    pub value: ValueMatch,
}

/// A Gateway API `HTTPRouteMatch` minus the path (which is the index's key): every part
/// must hold. Built with [`RequestMatch::new`] and its `with_*` methods.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestMatch {
    method: Option<Method>,
    headers: Vec<HeaderMatch>,
    query: Vec<QueryMatch>,
}

impl RequestMatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_method(mut self, method: &str) -> Result<Self, MatchError> {
        self.method = Some(Method::from_bytes(method.as_bytes()).map_err(|_| MatchError::BadMethod(method.into()))?);
        Ok(self)
    }

    /// Adds a header match. Gateway API: of several entries naming one header (in any
    /// case), only the first counts, so later ones are dropped here.
    pub fn with_header(mut self, name: &str, value: ValueMatch) -> Result<Self, MatchError> {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| MatchError::BadHeaderName(name.into()))?;
        if !self.headers.iter().any(|h| h.name == name) {
            self.headers.push(HeaderMatch { name, value });
        }
        Ok(self)
    }

    /// Adds a query-parameter match (the first entry of a name counts, as for headers).
    pub fn with_query(mut self, name: &str, value: ValueMatch) -> Result<Self, MatchError> {
        if name.is_empty() {
            return Err(MatchError::EmptyQueryName);
        }
        if !self.query.iter().any(|q| q.name == name) {
            self.query.push(QueryMatch { name: name.to_string(), value });
        }
        Ok(self)
    }

    /// Whether it requires nothing (then the index stores no match at all).
    pub fn is_empty(&self) -> bool {
        self.method.is_none() && self.headers.is_empty() && self.query.is_empty()
    }

    pub fn method(&self) -> Option<&Method> {
        self.method.as_ref()
    }

    /// Gateway API precedence after the path: a method match, then more header matches,
    /// then more query matches. Higher ranks first.
    pub fn rank(&self) -> (bool, usize, usize) {
        (self.method.is_some(), self.headers.len(), self.query.len())
    }

    /// Whether `req` meets every part.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if self.method.as_ref().is_some_and(|m| m != req.method) {
            return false;
        }
        if !self.headers.iter().all(|h| header_value(req.headers, &h.name).is_some_and(|v| h.value.matches(&v))) {
            return false;
        }
        if self.query.is_empty() {
            return true;
        }
        let query = req.query().unwrap_or("");
        self.query.iter().all(|q| query_value(query, &q.name).is_some_and(|v| q.value.matches(&v)))
    }
}

/// A request header's value as one string: a repeated header is joined with `, ` (RFC 9110
/// 5.3), which allocates only in that case. A value that is not text never matches.
fn header_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<Cow<'a, str>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?.to_str().ok()?;
    let rest: Vec<&HeaderValue> = values.collect();
    if rest.is_empty() {
        return Some(Cow::Borrowed(first));
    }
    let mut joined = first.to_string();
    for v in rest {
        joined.push_str(", ");
        joined.push_str(v.to_str().ok()?);
    }
    Some(Cow::Owned(joined))
}

/// The first value of query parameter `name`, percent- and `+`-decoded (names are compared
/// decoded too). Borrows when nothing needs decoding.
fn query_value<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == name).then(|| decode(v))
    })
}

/// `application/x-www-form-urlencoded` decoding; a malformed escape is kept as written.
fn decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test builder: a request with `headers` and a path with query.
    fn view<'a>(method: &'a Method, headers: &'a HeaderMap, pq: &'a str) -> RequestView<'a> {
        RequestView { host: None, path_and_query: pq, method, headers, listener: Listener::Tls }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn header_names_are_case_insensitive_and_values_exact_or_regex() {
        let m = RequestMatch::new()
            .with_header("X-Version", ValueMatch::exact("v2"))
            .unwrap()
            .with_header("x-user", ValueMatch::regex("[a-z]+-[0-9]+").unwrap())
            .unwrap();
        let ok = headers(&[("x-version", "v2"), ("X-User", "ana-7")]);
        assert!(m.matches(&view(&Method::GET, &ok, "/")));
        let wrong_case_value = headers(&[("x-version", "V2"), ("x-user", "ana-7")]);
        assert!(!m.matches(&view(&Method::GET, &wrong_case_value, "/")), "values are case-sensitive");
        let partial = headers(&[("x-version", "v2"), ("x-user", "ana-7x")]);
        assert!(!m.matches(&view(&Method::GET, &partial, "/")), "a regex matches the whole value");
        assert!(!m.matches(&view(&Method::GET, &headers(&[("x-version", "v2")]), "/")), "a missing header");
    }

    #[test]
    fn a_repeated_header_is_matched_joined() {
        let m = RequestMatch::new().with_header("accept", ValueMatch::exact("a, b")).unwrap();
        assert!(m.matches(&view(&Method::GET, &headers(&[("accept", "a"), ("accept", "b")]), "/")));
    }

    #[test]
    fn only_the_first_entry_of_a_name_counts() {
        let m = RequestMatch::new()
            .with_header("x-a", ValueMatch::exact("1"))
            .unwrap()
            .with_header("X-A", ValueMatch::exact("2"))
            .unwrap();
        assert_eq!(m.rank(), (false, 1, 0));
        assert!(m.matches(&view(&Method::GET, &headers(&[("x-a", "1")]), "/")));
    }

    #[test]
    fn query_params_are_decoded_and_the_first_value_counts() {
        let m = RequestMatch::new()
            .with_query("animal", ValueMatch::exact("whale"))
            .unwrap()
            .with_query("q", ValueMatch::exact("a b/c"))
            .unwrap();
        let h = HeaderMap::new();
        assert!(m.matches(&view(&Method::GET, &h, "/?animal=whale&q=a+b%2Fc")));
        assert!(m.matches(&view(&Method::GET, &h, "/?q=a%20b/c&animal=whale&animal=dolphin")));
        assert!(!m.matches(&view(&Method::GET, &h, "/?animal=dolphin&animal=whale&q=a+b/c")), "first value");
        assert!(!m.matches(&view(&Method::GET, &h, "/?Animal=whale&q=a+b/c")), "names are case-sensitive");
        assert!(!m.matches(&view(&Method::GET, &h, "/")));
        assert_eq!(decode("%zz%4"), "%zz%4", "malformed escapes stay");
    }

    #[test]
    fn method_must_be_equal() {
        let m = RequestMatch::new().with_method("POST").unwrap();
        let h = HeaderMap::new();
        assert!(m.matches(&view(&Method::POST, &h, "/")) && !m.matches(&view(&Method::GET, &h, "/")));
        assert_eq!(m.rank(), (true, 0, 0));
        assert!(RequestMatch::new().with_method("GE T").is_err());
        assert!(RequestMatch::new().is_empty());
    }

    #[test]
    fn bad_names_and_patterns_are_typed_errors() {
        assert_eq!(
            RequestMatch::new().with_header("bad name", ValueMatch::exact("x")).unwrap_err(),
            MatchError::BadHeaderName("bad name".into())
        );
        assert!(matches!(ValueMatch::regex("(").unwrap_err(), MatchError::BadRegex(PatternError::Invalid { .. })));
        assert_eq!(RequestMatch::new().with_query("", ValueMatch::exact("x")).unwrap_err(), MatchError::EmptyQueryName);
    }

    #[test]
    fn scopes_admit_their_listeners() {
        assert!(ListenerScope::Both.admits(Listener::Plain) && ListenerScope::Both.admits(Listener::Tls));
        assert!(ListenerScope::Tls.admits(Listener::Tls) && !ListenerScope::Tls.admits(Listener::Plain));
        assert!(
            !ListenerScope::Plain.overlaps(ListenerScope::Tls) && ListenerScope::Plain.overlaps(ListenerScope::Both)
        );
    }
}
