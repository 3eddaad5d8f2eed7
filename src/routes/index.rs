//! The host → path → target index: built once, then looked up per request without locks.
//!
//! Several entries may share one host and path when they differ in what else they ask
//! of a request (a [`RequestMatch`]) or in the listeners they serve. The order is Gateway
//! API's precedence, which for the Ingress rules (no match, one entry per host and path)
//! is exactly the Ingress order:
//! 1. host: the exact host, then `*.` wildcards by longest suffix (an Ingress one-label
//!    wildcard before a Gateway one of the same suffix), then entries without a host; a
//!    level where nothing matches falls through to the next;
//! 2. path: Exact, then RegularExpression (longer patterns first; Gateway API leaves
//!    their rank to the implementation, and this is Envoy Gateway's), then Prefix by
//!    longest prefix (whole segments);
//! 3. within one path: a method match, then more header matches, then more query matches,
//!    then the entry's [`TieBreak`] (lower first), then the order of insertion.

use std::collections::HashMap;
use std::sync::Arc;

use super::matching::{HostRule, PathRule, normalize_request_host, prefix_matches, strip_query, wildcard_suffix};
use super::pattern::Pattern;
use super::request_match::{ListenerScope, RequestMatch, RequestView, TieBreak};

/// One entry competing for a host and path.
#[derive(Debug, Clone)]
pub struct Candidate<T> {
    /// What else the request must carry; `None` takes any request. Boxed: Ingress routes
    /// never have one, and inline it was 72 of a candidate's 128 bytes.
    pub matcher: Option<Box<RequestMatch>>,
    pub scope: ListenerScope,
    pub tie_break: TieBreak,
    pub target: T,
}

impl<T> Candidate<T> {
    /// An entry taking every request on every listener.
    pub fn any(target: T) -> Self {
        Self { matcher: None, scope: ListenerScope::Both, tie_break: TieBreak::default(), target }
    }

    fn admits(&self, req: &RequestView<'_>) -> bool {
        self.scope.admits(req.listener) && self.matcher.as_ref().is_none_or(|m| m.matches(req))
    }

    /// Sort key: higher rank first, then lower tie-break.
    fn precedes(&self, other: &Self) -> bool {
        let rank = |c: &Self| c.matcher.as_deref().map_or((false, 0, 0), RequestMatch::rank);
        match rank(self).cmp(&rank(other)) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => self.tie_break < other.tie_break,
        }
    }
}

/// The entries of one host and path rule, in precedence order.
#[derive(Debug, Clone)]
struct Slot<T>(Vec<Candidate<T>>);

impl<T> Slot<T> {
    fn pick(&self, req: &RequestView<'_>) -> Option<&T> {
        self.0.iter().find(|c| c.admits(req)).map(|c| &c.target)
    }

    /// Inserts in order; an entry with the same match on an overlapping listener scope
    /// is a conflict, and the entry already there keeps its place (and is returned).
    fn insert(&mut self, candidate: Candidate<T>) -> Result<(), &Candidate<T>> {
        if let Some(i) = self.0.iter().position(|c| c.matcher == candidate.matcher && c.scope.overlaps(candidate.scope))
        {
            return Err(&self.0[i]);
        }
        // After every entry that precedes or ties with it: insertion order breaks ties.
        let at = self.0.iter().position(|c| candidate.precedes(c)).unwrap_or(self.0.len());
        reserve_first(&mut self.0);
        self.0.insert(at, candidate);
        Ok(())
    }
}

/// Makes room for one element in an empty vector, instead of the four a first push
/// reserves: almost every host has one path and every path one entry, and with 10,000
/// Ingresses the unused room was 530 of the 2,280 bytes each route held (heaptrack).
fn reserve_first<E>(v: &mut Vec<E>) {
    if v.capacity() == 0 {
        v.reserve_exact(1);
    }
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

/// Paths of one host, ready for lookup: exact paths hashed, patterns and prefixes longest
/// first.
#[derive(Debug, Clone)]
struct PathIndex<T> {
    exact: HashMap<String, Slot<T>>,
    regexes: Vec<(Pattern, Slot<T>)>,
    prefixes: Vec<(String, Slot<T>)>,
}

impl<T> Default for PathIndex<T> {
    fn default() -> Self {
        Self { exact: HashMap::new(), regexes: Vec::new(), prefixes: Vec::new() }
    }
}

impl<T> PathIndex<T> {
    fn lookup(&self, path: &str, req: &RequestView<'_>) -> Option<&T> {
        if let Some(t) = self.exact.get(path).and_then(|s| s.pick(req)) {
            return Some(t);
        }
        if let Some(t) = self.regexes.iter().filter(|(p, _)| p.is_match(path)).find_map(|(_, s)| s.pick(req)) {
            return Some(t);
        }
        self.prefixes.iter().filter(|(p, _)| prefix_matches(p, path)).find_map(|(_, s)| s.pick(req))
    }

    /// Inserts unless the same rule with the same match is already taken; returns the
    /// holder on conflict.
    fn insert(&mut self, rule: PathRule, candidate: Candidate<T>) -> Result<(), &Candidate<T>> {
        match rule {
            PathRule::Exact(p) => self.exact.entry(p).or_default().insert(candidate),
            PathRule::Regex(r) => {
                let i = match self.regexes.iter().position(|(q, _)| *q == r) {
                    Some(i) => i,
                    None => {
                        let at = self.regexes.partition_point(|(q, _)| q.as_str().len() >= r.as_str().len());
                        reserve_first(&mut self.regexes);
                        self.regexes.insert(at, (r, Slot::default()));
                        at
                    }
                };
                self.regexes[i].1.insert(candidate)
            }
            PathRule::Prefix(p) => {
                let i = match self.prefixes.iter().position(|(q, _)| *q == p) {
                    Some(i) => i,
                    None => {
                        // Keep longest first so the first match is the most specific one.
                        let at = self.prefixes.partition_point(|(q, _)| q.len() >= p.len());
                        reserve_first(&mut self.prefixes);
                        self.prefixes.insert(at, (p, Slot::default()));
                        at
                    }
                };
                self.prefixes[i].1.insert(candidate)
            }
        }
    }

    fn candidates(&self) -> impl Iterator<Item = &Candidate<T>> + '_ {
        let slots =
            self.exact.values().chain(self.regexes.iter().map(|(_, s)| s)).chain(self.prefixes.iter().map(|(_, s)| s));
        slots.flat_map(|s| s.0.iter())
    }

    fn targets(&self) -> impl Iterator<Item = &T> + '_ {
        self.candidates().map(|c| &c.target)
    }

    fn len(&self) -> usize {
        self.exact.values().map(|s| s.0.len()).sum::<usize>()
            + self.regexes.iter().map(|(_, s)| s.0.len()).sum::<usize>()
            + self.prefixes.iter().map(|(_, s)| s.0.len()).sum::<usize>()
    }
}

/// How many parts [`Shards`] splits exact hosts into.
const SHARDS: usize = 64;

/// Exact hosts → paths, in parts shared between tables: a table updated for a few hosts
/// ([`HostIndex::spliced`]) copies the parts those hosts are in (1/64th of the hosts each),
/// and shares the rest, with every host's paths, with the table it came from.
#[derive(Debug, Clone)]
struct Shards<V>(Vec<Arc<HashMap<String, V>>>);

impl<V> Default for Shards<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

/// FNV-1a: cheap, and only spreads hosts over the parts (each part hashes again).
fn shard_of(host: &str) -> usize {
    let h = host.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (h % SHARDS as u64) as usize
}

impl<V> Shards<V> {
    fn get(&self, host: &str) -> Option<&V> {
        self.0.get(shard_of(host))?.get(host)
    }

    fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.0.iter().flat_map(|m| m.values())
    }

    fn keys(&self) -> impl Iterator<Item = &String> + '_ {
        self.0.iter().flat_map(|m| m.keys())
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &V)> + '_ {
        self.0.iter().flat_map(|m| m.iter())
    }
}

impl<V: Clone> Shards<V> {
    /// The part `host` goes in, copied first if another table shares it.
    fn part_mut(&mut self, host: &str) -> &mut HashMap<String, V> {
        if self.0.is_empty() {
            self.0 = (0..SHARDS).map(|_| Arc::default()).collect();
        }
        Arc::make_mut(&mut self.0[shard_of(host)])
    }

    fn remove(&mut self, host: &str) {
        if self.get(host).is_some() {
            self.part_mut(host).remove(host);
        }
    }

    fn insert(&mut self, host: String, value: V) {
        self.part_mut(&host).insert(host, value);
    }
}

/// Routes indexed by host rule, then path rule (see the module's precedence list).
///
/// Each host's paths are shared (`Arc`), and so are the parts of the exact-host map
/// ([`Shards`]) a change does not touch.
#[derive(Debug, Clone)]
pub struct HostIndex<T> {
    exact_hosts: Shards<Arc<PathIndex<T>>>,
    wildcard_hosts: HashMap<String, Arc<PathIndex<T>>>,
    suffix_hosts: HashMap<String, Arc<PathIndex<T>>>,
    any_host: PathIndex<T>,
}

impl<T> Default for HostIndex<T> {
    fn default() -> Self {
        Self {
            exact_hosts: Shards::default(),
            wildcard_hosts: HashMap::new(),
            suffix_hosts: HashMap::new(),
            any_host: PathIndex::default(),
        }
    }
}

impl<T: Clone> HostIndex<T> {
    /// Adds a rule taking any request; on conflict (same host rule and path rule) returns
    /// the existing target.
    pub fn insert(&mut self, host: Option<&HostRule>, path: PathRule, target: T) -> Result<(), &T> {
        self.insert_candidate(host, path, Candidate::any(target)).map_err(|existing| &existing.target)
    }

    /// Adds an entry; on conflict (same host rule, path rule and match, on overlapping
    /// listeners) returns the existing entry, whose match is the same as the new one's.
    pub fn insert_candidate(
        &mut self,
        host: Option<&HostRule>,
        path: PathRule,
        candidate: Candidate<T>,
    ) -> Result<(), &Candidate<T>> {
        // Copied on write only when an older table still shares the host's paths.
        let index = match host {
            Some(HostRule::Exact(h)) => Arc::make_mut(self.exact_hosts.part_mut(h).entry(h.clone()).or_default()),
            Some(HostRule::Wildcard(s)) => Arc::make_mut(self.wildcard_hosts.entry(s.clone()).or_default()),
            Some(HostRule::Suffix(s)) => Arc::make_mut(self.suffix_hosts.entry(s.clone()).or_default()),
            None => &mut self.any_host,
        };
        index.insert(path, candidate)
    }

    /// This index with every entry of the exact hosts `replaced` taken out and `with`'s
    /// exact hosts put in. `with` holds exact hosts only, each of them in `replaced`: the
    /// caller re-translated every object that claims them.
    pub fn spliced<'h>(&self, replaced: impl IntoIterator<Item = &'h str>, with: HostIndex<T>) -> Self {
        let mut out = self.clone();
        for host in replaced {
            out.exact_hosts.remove(host);
        }
        for part in with.exact_hosts.0 {
            for (host, paths) in Arc::unwrap_or_clone(part) {
                out.exact_hosts.insert(host, paths);
            }
        }
        out
    }
}

impl<T> HostIndex<T> {
    /// Finds the target for a request host (raw `Host`/`:authority`) and path (with query),
    /// seen as a GET without headers on a TLS listener.
    pub fn lookup(&self, raw_host: Option<&str>, path_and_query: &str) -> Option<&T> {
        self.lookup_request(&RequestView::get(raw_host, path_and_query))
    }

    /// Finds the target for a request.
    pub fn lookup_request(&self, req: &RequestView<'_>) -> Option<&T> {
        let path = strip_query(req.path_and_query);
        let host = req.host.and_then(normalize_request_host);
        if let Some(host) = host.as_deref() {
            if let Some(t) = self.exact_hosts.get(host).and_then(|i| i.lookup(path, req)) {
                return Some(t);
            }
            let one_label = wildcard_suffix(host);
            if let Some(t) = one_label.and_then(|s| self.wildcard_hosts.get(s)).and_then(|i| i.lookup(path, req)) {
                return Some(t);
            }
            if !self.suffix_hosts.is_empty() {
                let mut suffix = one_label;
                while let Some(s) = suffix {
                    if let Some(t) = self.suffix_hosts.get(s).and_then(|i| i.lookup(path, req)) {
                        return Some(t);
                    }
                    suffix = wildcard_suffix(s);
                }
            }
        }
        self.any_host.lookup(path, req)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.any_host.len()
            + self
                .exact_hosts
                .values()
                .chain(self.wildcard_hosts.values())
                .chain(self.suffix_hosts.values())
                .map(|p| p.len())
                .sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry's target, in no particular order.
    pub fn targets(&self) -> impl Iterator<Item = &T> + '_ {
        let exact = self.exact_hosts.values();
        exact
            .chain(self.wildcard_hosts.values())
            .chain(self.suffix_hosts.values())
            .map(AsRef::as_ref)
            .chain(std::iter::once(&self.any_host))
            .flat_map(PathIndex::targets)
    }

    /// Every entry with its host rule (`None`: any host), in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = (Option<HostRule>, &Candidate<T>)> + '_ {
        let exact = self.exact_hosts.iter().map(|(h, p)| (HostRule::Exact(h.clone()), p));
        let wildcard = self.wildcard_hosts.iter().map(|(s, p)| (HostRule::Wildcard(s.clone()), p));
        let suffix = self.suffix_hosts.iter().map(|(s, p)| (HostRule::Suffix(s.clone()), p));
        let hosted =
            exact.chain(wildcard).chain(suffix).flat_map(|(h, p)| p.candidates().map(move |c| (Some(h.clone()), c)));
        hosted.chain(self.any_host.candidates().map(|c| (None, c)))
    }

    /// The targets of exact host `host`'s entries.
    pub fn targets_of(&self, host: &str) -> impl Iterator<Item = &T> + '_ {
        self.exact_hosts.get(host).into_iter().flat_map(|p| p.targets())
    }

    /// The suffixes of the wildcard host rules (either kind) with entries.
    pub fn wildcard_suffixes(&self) -> impl Iterator<Item = &str> + '_ {
        self.wildcard_hosts.keys().chain(self.suffix_hosts.keys()).map(String::as_str)
    }

    /// Exact and wildcard host names with at least one rule (for certificates, debugging).
    pub fn hosts(&self) -> impl Iterator<Item = HostRule> + '_ {
        self.exact_hosts
            .keys()
            .map(|h| HostRule::Exact(h.clone()))
            .chain(self.wildcard_hosts.keys().map(|s| HostRule::Wildcard(s.clone())))
            .chain(self.suffix_hosts.keys().map(|s| HostRule::Suffix(s.clone())))
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

    // === Gateway API precedence ===

    use super::super::request_match::{Listener, ValueMatch};
    use http::{HeaderMap, HeaderValue, Method};

    /// Test builder: an entry with a match made of `method`, `headers` and `query` names
    /// (each required to equal "1"), and a tie-break.
    fn entry(name: &'static str, method: Option<&str>, headers: &[&str], query: &[&str]) -> Candidate<&'static str> {
        let mut m = RequestMatch::new();
        if let Some(method) = method {
            m = m.with_method(method).unwrap();
        }
        for h in headers {
            m = m.with_header(h, ValueMatch::exact("1")).unwrap();
        }
        for q in query {
            m = m.with_query(q, ValueMatch::exact("1")).unwrap();
        }
        Candidate { matcher: (!m.is_empty()).then(|| Box::new(m)), ..Candidate::any(name) }
    }

    fn ask(idx: &HostIndex<&'static str>, method: &Method, headers: &[&str], pq: &str) -> Option<&'static str> {
        let mut map = HeaderMap::new();
        for h in headers {
            map.insert(http::HeaderName::from_bytes(h.as_bytes()).unwrap(), HeaderValue::from_static("1"));
        }
        let view = RequestView {
            host: Some("gw.example"),
            path_and_query: pq,
            method,
            headers: &map,
            listener: Listener::Tls,
        };
        idx.lookup_request(&view).copied()
    }

    fn add(idx: &mut HostIndex<&'static str>, path: &str, ty: PathType, c: Candidate<&'static str>) {
        idx.insert_candidate(None, PathRule::new(path, ty).unwrap(), c).unwrap();
    }

    #[test]
    fn within_one_path_method_then_headers_then_query_decide() {
        let mut idx = HostIndex::default();
        // Inserted from least to most specific: the order must not matter.
        add(&mut idx, "/", Prefix, entry("plain", None, &[], &[]));
        add(&mut idx, "/", Prefix, entry("two-queries", None, &[], &["a", "b"]));
        add(&mut idx, "/", Prefix, entry("one-header", None, &["x-a"], &[]));
        add(&mut idx, "/", Prefix, entry("two-headers", None, &["x-a", "x-b"], &[]));
        add(&mut idx, "/", Prefix, entry("method", Some("POST"), &[], &[]));
        let get = Method::GET;
        assert_eq!(ask(&idx, &Method::POST, &["x-a", "x-b"], "/?a=1&b=1"), Some("method"));
        assert_eq!(ask(&idx, &get, &["x-a", "x-b"], "/?a=1&b=1"), Some("two-headers"));
        assert_eq!(ask(&idx, &get, &["x-a"], "/?a=1&b=1"), Some("one-header"), "a header beats any number of queries");
        assert_eq!(ask(&idx, &get, &[], "/?a=1&b=1"), Some("two-queries"));
        assert_eq!(ask(&idx, &get, &[], "/?a=1"), Some("plain"));
    }

    #[test]
    fn the_path_decides_before_the_match() {
        let mut idx = HostIndex::default();
        add(&mut idx, "/foo", Prefix, entry("prefix-with-header", None, &["x-a"], &[]));
        add(&mut idx, "/foo/bar", Prefix, entry("longer-prefix", None, &[], &[]));
        add(&mut idx, "/foo/bar", Exact, entry("exact-with-method", Some("PUT"), &[], &[]));
        add(&mut idx, "/foo/[a-z]+", PathType::RegularExpression, entry("regex", None, &[], &[]));
        let get = Method::GET;
        assert_eq!(ask(&idx, &Method::PUT, &[], "/foo/bar"), Some("exact-with-method"));
        assert_eq!(ask(&idx, &get, &["x-a"], "/foo/bar"), Some("regex"), "the Exact entry's method fails: regex next");
        assert_eq!(ask(&idx, &get, &["x-a"], "/foo/bar/baz"), Some("longer-prefix"), "longest prefix over headers");
        assert_eq!(ask(&idx, &get, &["x-a"], "/foo/baz1"), Some("prefix-with-header"));
        assert_eq!(ask(&idx, &get, &[], "/foo/baz1"), None, "the header is required");
        assert_eq!(ask(&idx, &get, &["x-a"], "/foobar"), None, "prefixes match whole segments");
    }

    #[test]
    fn ties_go_to_the_lower_tie_break_then_the_first_added() {
        let mut idx = HostIndex::default();
        let older = TieBreak { created: 10, name: "ns/b".into(), index: 0 };
        let newer = TieBreak { created: 20, name: "ns/a".into(), index: 0 };
        add(&mut idx, "/", Prefix, Candidate { tie_break: newer, ..entry("newer", None, &["x-b"], &[]) });
        add(&mut idx, "/", Prefix, Candidate { tie_break: older.clone(), ..entry("older", None, &["x-a"], &[]) });
        assert_eq!(ask(&idx, &Method::GET, &["x-a", "x-b"], "/"), Some("older"));
        let same = TieBreak { index: 1, ..older };
        add(&mut idx, "/", Prefix, Candidate { tie_break: same.clone(), ..entry("second-rule", None, &["x-c"], &[]) });
        add(&mut idx, "/", Prefix, Candidate { tie_break: same, ..entry("added-later", None, &["x-d"], &[]) });
        assert_eq!(ask(&idx, &Method::GET, &["x-c", "x-d"], "/"), Some("second-rule"));
        // The same match again conflicts, whatever its tie-break.
        let err = idx
            .insert_candidate(None, PathRule::new("/", Prefix).unwrap(), entry("dup", None, &["x-a"], &[]))
            .map_err(|c| &c.target);
        assert_eq!(err, Err(&"older"));
    }

    #[test]
    fn listener_scopes_split_one_host_and_path() {
        let mut idx = HostIndex::default();
        add(&mut idx, "/", Prefix, Candidate { scope: ListenerScope::Tls, ..Candidate::any("https") });
        add(&mut idx, "/", Prefix, Candidate { scope: ListenerScope::Plain, ..Candidate::any("http") });
        let conflict = idx
            .insert_candidate(None, PathRule::new("/", Prefix).unwrap(), Candidate::any("both"))
            .map_err(|c| &c.target);
        assert_eq!(conflict, Err(&"https"), "both listeners overlap the ones taken");
        let headers = HeaderMap::new();
        let view = |listener| RequestView {
            host: None,
            path_and_query: "/",
            method: &Method::GET,
            headers: &headers,
            listener,
        };
        assert_eq!(idx.lookup_request(&view(Listener::Tls)), Some(&"https"));
        assert_eq!(idx.lookup_request(&view(Listener::Plain)), Some(&"http"));
    }

    #[test]
    fn gateway_wildcards_match_any_labels_longest_suffix_first_never_the_apex() {
        let mut idx = HostIndex::default();
        for (host, name) in [("*.example.com", "any-depth"), ("*.b.example.com", "deeper")] {
            let host = HostRule::parse_gateway(host).unwrap();
            idx.insert(Some(&host), PathRule::new("/", Prefix).unwrap(), name).unwrap();
        }
        let one_label = HostRule::parse("*.c.example.com").unwrap();
        idx.insert(Some(&one_label), PathRule::new("/", Prefix).unwrap(), "ingress").unwrap();
        assert_eq!(idx.lookup(Some("a.example.com"), "/"), Some(&"any-depth"));
        assert_eq!(idx.lookup(Some("x.y.z.example.com"), "/"), Some(&"any-depth"));
        assert_eq!(idx.lookup(Some("a.b.example.com"), "/"), Some(&"deeper"));
        assert_eq!(idx.lookup(Some("x.a.b.example.com"), "/"), Some(&"deeper"));
        assert_eq!(idx.lookup(Some("x.c.example.com"), "/"), Some(&"ingress"));
        assert_eq!(idx.lookup(Some("y.x.c.example.com"), "/"), Some(&"any-depth"), "the Ingress wildcard is one label");
        assert_eq!(idx.lookup(Some("example.com"), "/"), None, "not the apex");
        assert_eq!(idx.len(), 3);
    }
}
