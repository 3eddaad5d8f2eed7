//! The host → path → target index: built once, then looked up per request without locks.

use std::collections::HashMap;

use super::matching::{HostRule, PathRule, normalize_request_host, strip_query, wildcard_suffix};

/// Paths of one host, ready for lookup: exact paths hashed, prefixes longest first.
#[derive(Debug, Clone)]
struct PathIndex<T> {
    exact: HashMap<String, T>,
    prefixes: Vec<(String, T)>,
}

impl<T> Default for PathIndex<T> {
    fn default() -> Self {
        Self { exact: HashMap::new(), prefixes: Vec::new() }
    }
}

impl<T> PathIndex<T> {
    fn lookup(&self, path: &str) -> Option<&T> {
        if let Some(t) = self.exact.get(path) {
            return Some(t);
        }
        self.prefixes.iter().find(|(p, _)| super::matching::prefix_matches(p, path)).map(|(_, t)| t)
    }

    /// Inserts unless the same rule is already taken; returns the holder on conflict.
    fn insert(&mut self, rule: PathRule, target: T) -> Result<(), &T> {
        match rule {
            PathRule::Exact(p) => {
                if self.exact.contains_key(&p) {
                    return Err(&self.exact[&p]);
                }
                self.exact.insert(p, target);
            }
            PathRule::Prefix(p) => {
                if let Some(i) = self.prefixes.iter().position(|(q, _)| *q == p) {
                    return Err(&self.prefixes[i].1);
                }
                // Keep longest first so the first match is the most specific one.
                let at = self.prefixes.partition_point(|(q, _)| q.len() >= p.len());
                self.prefixes.insert(at, (p, target));
            }
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.exact.len() + self.prefixes.len()
    }
}

/// Routes indexed by host rule, then path rule.
///
/// Lookup order: the exact host, then the one-label wildcard of the host, then rules
/// without a host; within each, Exact paths before Prefix paths, the longest prefix first.
/// A host level whose paths do not match falls through to the next level, so a host-less
/// rule serves every host that has no rule of its own for that path.
#[derive(Debug, Clone)]
pub struct HostIndex<T> {
    exact_hosts: HashMap<String, PathIndex<T>>,
    wildcard_hosts: HashMap<String, PathIndex<T>>,
    any_host: PathIndex<T>,
}

impl<T> Default for HostIndex<T> {
    fn default() -> Self {
        Self { exact_hosts: HashMap::new(), wildcard_hosts: HashMap::new(), any_host: PathIndex::default() }
    }
}

impl<T> HostIndex<T> {
    /// Adds a rule; on conflict (same host rule and path rule) returns the existing target.
    pub fn insert(&mut self, host: Option<&HostRule>, path: PathRule, target: T) -> Result<(), &T> {
        let index = match host {
            Some(HostRule::Exact(h)) => self.exact_hosts.entry(h.clone()).or_default(),
            Some(HostRule::Wildcard(s)) => self.wildcard_hosts.entry(s.clone()).or_default(),
            None => &mut self.any_host,
        };
        index.insert(path, target)
    }

    /// Finds the target for a request host (raw `Host`/`:authority`) and path (with query).
    pub fn lookup(&self, raw_host: Option<&str>, path_and_query: &str) -> Option<&T> {
        let path = strip_query(path_and_query);
        let host = raw_host.and_then(normalize_request_host);
        if let Some(host) = host.as_deref() {
            if let Some(t) = self.exact_hosts.get(host).and_then(|i| i.lookup(path)) {
                return Some(t);
            }
            if let Some(t) = wildcard_suffix(host).and_then(|s| self.wildcard_hosts.get(s)).and_then(|i| i.lookup(path))
            {
                return Some(t);
            }
        }
        self.any_host.lookup(path)
    }

    /// Number of (host, path) rules.
    pub fn len(&self) -> usize {
        self.any_host.len()
            + self.exact_hosts.values().map(PathIndex::len).sum::<usize>()
            + self.wildcard_hosts.values().map(PathIndex::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Exact and wildcard host names with at least one rule (for certificates, debugging).
    pub fn hosts(&self) -> impl Iterator<Item = HostRule> + '_ {
        self.exact_hosts
            .keys()
            .map(|h| HostRule::Exact(h.clone()))
            .chain(self.wildcard_hosts.keys().map(|s| HostRule::Wildcard(s.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::super::matching::PathType;
    use super::*;

    /// Test builder: `index(&[(host, path, type, name)])`.
    fn index(rules: &[(Option<&str>, &str, PathType, &'static str)]) -> HostIndex<&'static str> {
        let mut idx = HostIndex::default();
        for (host, path, ty, name) in rules {
            let host = host.map(|h| HostRule::parse(h).unwrap());
            idx.insert(host.as_ref(), PathRule::new(path, *ty).unwrap(), *name).unwrap();
        }
        idx
    }
    use PathType::{Exact, Prefix};

    #[test]
    fn exact_path_wins_over_prefix() {
        let idx = index(&[(None, "/foo", Prefix, "prefix"), (None, "/foo", Exact, "exact")]);
        assert_eq!(idx.lookup(None, "/foo"), Some(&"exact"));
        assert_eq!(idx.lookup(None, "/foo/"), Some(&"prefix"));
        assert_eq!(idx.lookup(None, "/foo?x=1"), Some(&"exact"));
    }

    #[test]
    fn longest_prefix_wins_whatever_the_insert_order() {
        let idx =
            index(&[(None, "/", Prefix, "root"), (None, "/aaa/bbb", Prefix, "long"), (None, "/aaa", Prefix, "short")]);
        assert_eq!(idx.lookup(None, "/aaa/bbb/c"), Some(&"long"));
        assert_eq!(idx.lookup(None, "/aaa/bbbc"), Some(&"short"));
        assert_eq!(idx.lookup(None, "/aaaccc"), Some(&"root"));
        assert_eq!(idx.lookup(None, "/zzz"), Some(&"root"));
    }

    #[test]
    fn exact_host_before_wildcard_before_any() {
        let idx = index(&[
            (Some("foo.bar.com"), "/", Prefix, "exact"),
            (Some("*.bar.com"), "/", Prefix, "wild"),
            (None, "/", Prefix, "any"),
        ]);
        assert_eq!(idx.lookup(Some("foo.bar.com"), "/"), Some(&"exact"));
        assert_eq!(idx.lookup(Some("FOO.Bar.com:8443"), "/"), Some(&"exact"));
        assert_eq!(idx.lookup(Some("baz.bar.com"), "/"), Some(&"wild"));
        assert_eq!(idx.lookup(Some("bar.com"), "/"), Some(&"any"));
        assert_eq!(idx.lookup(None, "/"), Some(&"any"));
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        let idx = index(&[(Some("*.bar.com"), "/", Prefix, "wild")]);
        assert_eq!(idx.lookup(Some("foo.bar.com"), "/x"), Some(&"wild"));
        assert_eq!(idx.lookup(Some("a.foo.bar.com"), "/x"), None);
        assert_eq!(idx.lookup(Some("bar.com"), "/x"), None);
    }

    #[test]
    fn host_level_falls_through_when_no_path_matches() {
        let idx = index(&[(Some("a.com"), "/api", Prefix, "api"), (None, "/", Prefix, "any")]);
        assert_eq!(idx.lookup(Some("a.com"), "/api/x"), Some(&"api"));
        assert_eq!(idx.lookup(Some("a.com"), "/web"), Some(&"any"));
    }

    #[test]
    fn no_match_is_none() {
        let idx = index(&[(Some("a.com"), "/api", Exact, "api")]);
        assert_eq!(idx.lookup(Some("a.com"), "/api/"), None);
        assert_eq!(idx.lookup(Some("b.com"), "/api"), None);
        assert!(HostIndex::<()>::default().lookup(None, "/").is_none());
    }

    #[test]
    fn same_host_and_path_conflicts() {
        let mut idx = index(&[(Some("a.com"), "/api", Prefix, "first")]);
        let host = HostRule::parse("A.com").unwrap();
        let err = idx.insert(Some(&host), PathRule::new("/api/", Prefix).unwrap(), "second");
        assert_eq!(err, Err(&"first"));
        // The same path as Exact is a different rule.
        assert!(idx.insert(Some(&host), PathRule::new("/api", Exact).unwrap(), "third").is_ok());
        assert_eq!(idx.len(), 2);
    }
}
