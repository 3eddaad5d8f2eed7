//! Host and path matching: the Ingress v1 semantics (one-label wildcards, Exact and
//! Prefix paths), plus what Gateway API adds (wildcards over any number of labels,
//! RegularExpression paths). Pure functions, compiled once.
//!
//! The request side of every comparison is normalised here (lower-cased host without a
//! port, path without a query) so the table side can be prepared when it is built.

use std::fmt;

use super::pattern::Pattern;

/// A host rule as written in a route: an exact name, or `*.suffix` matching one label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostRule {
    /// `api.example.com` (stored lower-case).
    Exact(String),
    /// `*.example.com` stored as the suffix `example.com` (lower-case): Ingress v1, matches
    /// exactly one label (`a.example.com`, not `a.b.example.com` nor `example.com`).
    Wildcard(String),
    /// Gateway API `*.example.com`, stored as the suffix `example.com`: matches any number
    /// of labels (`a.example.com`, `a.b.example.com`), never the apex `example.com`.
    /// Made by [`HostRule::parse_gateway`]. Lookup tries longer suffixes first.
    Suffix(String),
}

/// Why a host or path rule was refused while compiling a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("host {0:?} is not a valid DNS name (a `*.` wildcard may only stand first)")]
    BadHost(String),
    #[error("path {0:?} must start with '/'")]
    PathNotAbsolute(String),
    #[error("path {0:?} contains characters that are not allowed in a path")]
    BadPathChars(String),
    #[error("path {0}")]
    BadRegex(#[from] super::pattern::PatternError),
}

impl HostRule {
    /// Parses `host` as written in a route or an Ingress rule.
    pub fn parse(host: &str) -> Result<Self, RuleError> {
        let lower = host.trim().to_ascii_lowercase();
        let bad = || RuleError::BadHost(host.to_string());
        if let Some(suffix) = lower.strip_prefix("*.") {
            if !is_dns_name(suffix) {
                return Err(bad());
            }
            Ok(Self::Wildcard(suffix.to_string()))
        } else if is_dns_name(&lower) {
            Ok(Self::Exact(lower))
        } else {
            Err(bad())
        }
    }
}

impl HostRule {
    /// Parses a Gateway API hostname: `*.suffix` matches any number of labels
    /// ([`HostRule::Suffix`]); anything else is an exact host.
    pub fn parse_gateway(host: &str) -> Result<Self, RuleError> {
        match Self::parse(host)? {
            Self::Wildcard(s) => Ok(Self::Suffix(s)),
            other => Ok(other),
        }
    }
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(h) => f.write_str(h),
            // Both are written `*.suffix` where they come from; the variant says which.
            Self::Wildcard(s) | Self::Suffix(s) => write!(f, "*.{s}"),
        }
    }
}

/// A DNS name (or an IP literal, which users put in `host` when testing) without a port.
fn is_dns_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

/// Normalises a request's host (`Host` header or `:authority`): lower-case, no port, no
/// trailing dot. Returns `None` for an empty host.
pub fn normalize_request_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let without_port = if let Some(rest) = raw.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or(rest)
    } else if raw.matches(':').count() == 1 {
        raw.split(':').next().unwrap_or(raw)
    } else {
        raw
    };
    let host = without_port.trim_end_matches('.');
    if host.is_empty() { None } else { Some(host.to_ascii_lowercase()) }
}

/// The wildcard suffix a request host would match: `a.b.c` → `b.c` (one label only).
pub fn wildcard_suffix(host: &str) -> Option<&str> {
    let (first, rest) = host.split_once('.')?;
    (!first.is_empty() && !rest.is_empty()).then_some(rest)
}

/// A path rule, prepared for matching.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathRule {
    /// Byte-for-byte equality.
    Exact(String),
    /// Element-wise prefix, stored without a trailing slash (`/` is stored as ``).
    Prefix(String),
    /// A regular expression the whole (normalised) path must match (Gateway API
    /// `RegularExpression`). Ranked after Exact paths and before every Prefix, longer
    /// patterns first (see `index`).
    Regex(Pattern),
}

/// How a path in a route is to be compared, as in Ingress v1 `pathType` (and Gateway API's
/// `RegularExpression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PathType {
    Exact,
    #[default]
    Prefix,
    RegularExpression,
}

impl PathRule {
    /// Builds the rule for `path`. A standalone path written as `/api/*` means the
    /// prefix `/api`, the same as `path_type: Prefix` with `/api`.
    pub fn new(path: &str, path_type: PathType) -> Result<Self, RuleError> {
        if path_type == PathType::RegularExpression {
            // Matched against the normalised path as it is; not normalised itself (a
            // pattern's `.` and `..` are not path segments).
            return Ok(Self::Regex(Pattern::new(path)?));
        }
        if !path.starts_with('/') {
            return Err(RuleError::PathNotAbsolute(path.to_string()));
        }
        if path.bytes().any(|b| b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#') {
            return Err(RuleError::BadPathChars(path.to_string()));
        }
        // Requests are matched in normal form, so a rule is kept in it too: `/%7Euser`
        // must match the `/~user` a request for it becomes. A rule that cannot be
        // normalised (an encoded slash) is kept as written; no request will match it.
        let normal = super::normalize::normalize_path(path);
        let path = normal.as_deref().unwrap_or(path);
        if let Some(prefix) = path.strip_suffix("/*") {
            return Ok(Self::Prefix(prefix.trim_end_matches('/').to_string()));
        }
        Ok(match path_type {
            PathType::Exact => Self::Exact(path.to_string()),
            PathType::Prefix | PathType::RegularExpression => Self::Prefix(path.trim_end_matches('/').to_string()),
        })
    }

    /// The prefix of a Prefix rule (without its trailing slash; `` for `/`), which a
    /// `ReplacePrefixMatch` rewrite or redirect replaces.
    pub fn prefix(&self) -> Option<&str> {
        match self {
            Self::Prefix(p) => Some(p),
            Self::Exact(_) | Self::Regex(_) => None,
        }
    }

    /// Whether `path` (without its query) matches this rule.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => p == path,
            Self::Prefix(p) => prefix_matches(p, path),
            Self::Regex(r) => r.is_match(path),
        }
    }

    /// Length used to order rules: longer prefixes are more specific.
    pub fn specificity(&self) -> usize {
        match self {
            Self::Exact(p) | Self::Prefix(p) => p.len(),
            Self::Regex(r) => r.as_str().len(),
        }
    }
}

impl fmt::Display for PathRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(p) => write!(f, "Exact {p}"),
            Self::Prefix(p) if p.is_empty() => f.write_str("Prefix /"),
            Self::Prefix(p) => write!(f, "Prefix {p}"),
            Self::Regex(r) => write!(f, "RegularExpression {}", r.as_str()),
        }
    }
}

/// Element-wise prefix match: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`.
/// `prefix` carries no trailing slash; the empty prefix (`/`) matches every path.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

/// The path of a request target without its query string.
pub fn strip_query(path_and_query: &str) -> &str {
    path_and_query.split('?').next().unwrap_or(path_and_query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_kept_in_the_normal_form_requests_are_matched_in() {
        assert_eq!(PathRule::new("/%7Euser//x/", PathType::Exact).unwrap(), PathRule::Exact("/~user/x/".into()));
        assert_eq!(PathRule::new("/a/../b", PathType::Prefix).unwrap(), PathRule::Prefix("/b".into()));
        assert_eq!(PathRule::new("/api/*", PathType::Exact).unwrap(), PathRule::Prefix("/api".into()));
        assert_eq!(PathRule::new("/", PathType::Prefix).unwrap(), PathRule::Prefix("".into()));
    }

    fn prefix(p: &str) -> PathRule {
        PathRule::new(p, PathType::Prefix).unwrap()
    }
    fn exact(p: &str) -> PathRule {
        PathRule::new(p, PathType::Exact).unwrap()
    }

    #[test]
    fn prefix_is_element_wise() {
        let r = prefix("/foo");
        assert!(r.matches("/foo"));
        assert!(r.matches("/foo/"));
        assert!(r.matches("/foo/bar"));
        assert!(!r.matches("/foobar"));
        assert!(!r.matches("/fo"));
        assert!(!r.matches("/"));
    }

    #[test]
    fn prefix_ignores_trailing_slash_in_rule() {
        let r = prefix("/foo/");
        assert!(r.matches("/foo"));
        assert!(r.matches("/foo/bar"));
        assert!(!r.matches("/foobar"));
    }

    #[test]
    fn aaa_does_not_match_aaaccc() {
        assert!(!prefix("/aaa").matches("/aaaccc"));
        assert!(prefix("/aaa").matches("/aaa/ccc"));
        assert!(!prefix("/aaa/bbb").matches("/aaa/bbbxyz"));
    }

    #[test]
    fn root_prefix_matches_everything() {
        let r = prefix("/");
        for p in ["/", "/a", "/a/b/", "/anything?x"] {
            assert!(r.matches(p), "{p}");
        }
    }

    #[test]
    fn star_suffix_means_prefix() {
        assert_eq!(PathRule::new("/api/*", PathType::Exact).unwrap(), prefix("/api"));
        assert_eq!(PathRule::new("/*", PathType::Prefix).unwrap(), prefix("/"));
    }

    #[test]
    fn exact_is_byte_for_byte_and_case_sensitive() {
        let r = exact("/foo");
        assert!(r.matches("/foo"));
        assert!(!r.matches("/foo/"));
        assert!(!r.matches("/Foo"));
        assert!(!r.matches("/foo/bar"));
        assert!(!prefix("/foo").matches("/FOO"));
    }

    #[test]
    fn relative_or_odd_paths_are_refused() {
        assert!(matches!(PathRule::new("api", PathType::Prefix), Err(RuleError::PathNotAbsolute(_))));
        assert!(matches!(PathRule::new("/a b", PathType::Prefix), Err(RuleError::BadPathChars(_))));
        assert!(matches!(PathRule::new("/a?b", PathType::Exact), Err(RuleError::BadPathChars(_))));
    }

    #[test]
    fn hosts_parse_case_insensitively() {
        assert_eq!(HostRule::parse("API.Example.com").unwrap(), HostRule::Exact("api.example.com".into()));
        assert_eq!(HostRule::parse("*.Example.com").unwrap(), HostRule::Wildcard("example.com".into()));
        assert!(HostRule::parse("a.*.com").is_err());
        assert!(HostRule::parse("*").is_err());
        assert!(HostRule::parse("bad host").is_err());
        assert!(HostRule::parse("-a.com").is_err());
        assert_eq!(HostRule::parse("127.0.0.1").unwrap(), HostRule::Exact("127.0.0.1".into()));
    }

    #[test]
    fn request_hosts_lose_port_and_case() {
        assert_eq!(normalize_request_host("Foo.COM:8443").as_deref(), Some("foo.com"));
        assert_eq!(normalize_request_host("foo.com.").as_deref(), Some("foo.com"));
        assert_eq!(normalize_request_host("[::1]:443").as_deref(), Some("::1"));
        assert_eq!(normalize_request_host("::1").as_deref(), Some("::1"));
        assert_eq!(normalize_request_host("").as_deref(), None);
    }

    #[test]
    fn gateway_hosts_parse_to_suffix_wildcards() {
        assert_eq!(HostRule::parse_gateway("*.Example.com").unwrap(), HostRule::Suffix("example.com".into()));
        assert_eq!(HostRule::parse_gateway("a.example.com").unwrap(), HostRule::Exact("a.example.com".into()));
        assert_eq!(HostRule::Suffix("example.com".into()).to_string(), "*.example.com");
        assert!(HostRule::parse_gateway("a.*.com").is_err());
    }

    #[test]
    fn regex_paths_match_the_whole_path_and_bad_ones_name_the_pattern() {
        let r = PathRule::new("/v[0-9]+/.*", PathType::RegularExpression).unwrap();
        assert!(r.matches("/v1/users") && !r.matches("/v1") && !r.matches("/x/v1/users"));
        assert_eq!(r.to_string(), "RegularExpression /v[0-9]+/.*");
        let err = PathRule::new("/[", PathType::RegularExpression).unwrap_err();
        assert!(matches!(err, RuleError::BadRegex(_)) && err.to_string().contains("\"/[\""), "{err}");
    }

    #[test]
    fn only_prefix_rules_have_a_prefix_to_replace() {
        assert_eq!(prefix("/foo/").prefix(), Some("/foo"));
        assert_eq!(prefix("/").prefix(), Some(""));
        assert_eq!(exact("/foo").prefix(), None);
    }

    #[test]
    fn wildcard_suffix_takes_exactly_one_label() {
        assert_eq!(wildcard_suffix("a.example.com"), Some("example.com"));
        assert_eq!(wildcard_suffix("example.com"), Some("com"));
        assert_eq!(wildcard_suffix("localhost"), None);
        assert_eq!(wildcard_suffix(".example.com"), None);
    }
}
