//! Backends: where requests go once a route matched. Backend groups with a balancer,
//! endpoints with their pooled clients, and the settings both sources share.

pub mod balancer;
mod connector;
mod endpoint;
mod h2;
mod h3;
pub mod health;
mod retry_budget;
pub mod san;
mod spec;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use balancer::{Balancer, Strategy};
#[cfg(test)]
pub use endpoint::StubTransport;
pub use endpoint::{Endpoint, EndpointRegistry, EndpointSpec, InFlight, PassiveCheck, SendError, UpstreamBody};
pub use health::{HealthCheck, HealthChecker, HealthRecord, Transition, parse_status_range};
pub use retry_budget::RetryBudget;
pub use spec::{
    BackendSpec, Field, GroupSpec, HealthCheckSpec, MAX_BACKENDS, MAX_FAILURES, MAX_POOL_SIZE, MAX_ROUTES,
    MAX_THRESHOLD, MAX_WEIGHT, MIN_HEALTH_INTERVAL, Members, PassiveSpec, SpecError, millis,
};

/// Why a backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("backend url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot read CA bundle {path}: {reason}")]
    CaBundle { path: PathBuf, reason: String },
    #[error("upstream TLS: {0}")]
    Tls(String),
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
}

/// The default share of a group passive checks may eject (`passive.max_ejection_percent`).
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 50;

/// Whether a backend's response counts against it in passive health: only the gateway
/// failures a broken or overloaded endpoint gives (502, 503, 504). A 500 or any other
/// status is something a client can provoke on purpose with a bad request, and says the
/// endpoint is alive; it resets the failure streak like a success. Connect errors,
/// resets and timeouts count too (the pipeline reports those as failures directly).
pub fn counts_as_failure(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

/// How the proxy talks to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `http://`: HTTP/1.1 over TCP.
    Http1,
    /// `h2c://`: HTTP/2 over cleartext TCP (prior knowledge).
    H2c,
    /// `https://`: TLS, HTTP/2 or HTTP/1.1 by ALPN.
    Https,
    /// `h3://`: HTTP/3 over QUIC.
    H3,
}

impl Protocol {
    pub fn scheme(self) -> &'static str {
        match self {
            Self::Http1 => "http",
            Self::H2c => "h2c",
            Self::Https => "https",
            Self::H3 => "h3",
        }
    }

    /// Whether the connection is TLS (and so takes the group's `tls` settings).
    pub fn uses_tls(self) -> bool {
        matches!(self, Self::Https | Self::H3)
    }
}

/// A parsed backend URL: protocol plus host and port, no path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendUrl {
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
}

impl BackendUrl {
    pub fn parse(url: &str) -> Result<Self, UpstreamError> {
        let bad = |reason: &str| UpstreamError::BadUrl { url: url.to_string(), reason: reason.to_string() };
        let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let protocol = match uri.scheme_str() {
            Some("http") => Protocol::Http1,
            Some("h2c") => Protocol::H2c,
            Some("https") => Protocol::Https,
            Some("h3") => Protocol::H3,
            Some(other) => return Err(bad(&format!("unknown scheme {other:?}; expected http, h2c, https or h3"))),
            None => return Err(bad("missing scheme; expected http://, h2c://, https:// or h3://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("missing host"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("a backend url has no path or query"));
        }
        if authority.as_str().contains('@') {
            return Err(bad("credentials in a backend url are not supported"));
        }
        let host = authority.host().to_string();
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let port = authority.port_u16().unwrap_or(match protocol {
            Protocol::Https | Protocol::H3 => 443,
            Protocol::Http1 | Protocol::H2c => 80,
        });
        Ok(Self { protocol, host, port })
    }

    /// `host:port` as used in logs, metrics labels and status.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl std::fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.protocol.scheme(), self.host, self.port)
    }
}

/// Connection pool limits per endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolSettings {
    pub max_idle_connections: usize,
    /// Cap on concurrent requests (and so HTTP/1.1 connections) to one endpoint.
    pub max_connections_per_host: usize,
    /// Cap on requests waiting for a slot; beyond it requests get 503 at once.
    pub max_pending_requests: usize,
    pub idle_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_idle_connections: 100,
            max_connections_per_host: 1024,
            max_pending_requests: 1024,
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// Timeouts that bound how long a request may wait on a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake.
    pub connect: Duration,
    /// From sending the request until the response headers arrive.
    pub response_headers: Duration,
    /// How long a request may wait for a free connection slot (`max_connections_per_host`).
    pub pool_wait: Duration,
    /// How long a request or response body may go without data before it is cut off.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            response_headers: Duration::from_secs(60),
            pool_wait: Duration::from_secs(1),
            idle: Duration::from_secs(60),
        }
    }
}

/// TLS settings for `https://` and `h3://` endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// PEM CA bundle to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// The same, given as PEM text (from a Kubernetes Secret) with a name for errors.
    pub ca_pem: Option<(String, Vec<u8>)>,
    /// SNI and verified name; defaults to the URL's host.
    pub server_name: Option<String>,
    /// Skip certificate verification (for self-signed test backends only).
    pub insecure_skip_verify: bool,
    /// Names the certificate must carry one of instead of the server name (which is then
    /// only the SNI); empty: the server name is checked.
    pub subject_alt_names: Vec<san::SubjectAltName>,
}

/// A group of endpoints behind one balancer, as compiled into a route table.
#[derive(Debug)]
pub struct BackendGroup {
    pub id: String,
    pub strategy: Strategy,
    /// Shared with every group that has the same timeouts as the defaults (see
    /// [`shared_or_new`]): nearly all of them, and inline they were a quarter of a group.
    pub timeouts: Arc<Timeouts>,
    /// Active checks for the members, if any. Boxed: most groups (every Service's) have
    /// none, and inline it was a fifth of each group (64 of 312 bytes).
    pub health_check: Option<Box<HealthCheck>>,
    /// Passive checks from real traffic, if enabled; shared like `timeouts`.
    pub passive: Option<Arc<PassiveCheck>>,
    /// Shared by this group's requests: retries allowed as a share of traffic.
    pub retry_budget: RetryBudget,
    /// This group's request-body size limit, over the server-wide one.
    pub max_request_body_bytes: Option<u64>,
    /// The most members (in percent, rounded down, but always at least one) that passive
    /// checks may hold out of rotation at once; see [`BackendGroup::in_panic`].
    pub max_ejection_percent: u32,
    members: Box<[Arc<Endpoint>]>,
    weights: Box<[u32]>,
    balancer: Balancer,
}

/// `value` in an `Arc`: a clone of `shared` when equal to it, so the many groups with the
/// default settings hold one allocation between them instead of a copy each.
pub(crate) fn shared_or_new<T: PartialEq>(value: T, shared: &Arc<T>) -> Arc<T> {
    if value == **shared { shared.clone() } else { Arc::new(value) }
}

static DEFAULT_TIMEOUTS: std::sync::LazyLock<Arc<Timeouts>> = std::sync::LazyLock::new(Default::default);
static DEFAULT_PASSIVE: std::sync::LazyLock<Arc<PassiveCheck>> = std::sync::LazyLock::new(Default::default);

impl BackendGroup {
    pub fn new(id: String, strategy: Strategy, timeouts: Timeouts, members: Vec<(Arc<Endpoint>, u32)>) -> Self {
        let (members, weights): (Vec<_>, Vec<_>) = members.into_iter().unzip();
        let balancer = Balancer::new(strategy, &weights);
        Self {
            id,
            strategy,
            timeouts: shared_or_new(timeouts, &DEFAULT_TIMEOUTS),
            health_check: None,
            passive: Some(DEFAULT_PASSIVE.clone()),
            retry_budget: Default::default(),
            max_request_body_bytes: None,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
            members: members.into(),
            weights: weights.into(),
            balancer,
        }
    }

    pub fn with_health_check(mut self, check: Option<HealthCheck>) -> Self {
        self.health_check = check.map(Box::new);
        self
    }

    pub fn with_passive(mut self, passive: Option<PassiveCheck>) -> Self {
        self.passive = passive.map(|p| shared_or_new(p, &DEFAULT_PASSIVE));
        self
    }

    pub fn with_max_request_body(mut self, max: Option<u64>) -> Self {
        self.max_request_body_bytes = max;
        self
    }

    pub fn with_max_ejection_percent(mut self, percent: u32) -> Self {
        self.max_ejection_percent = percent.min(100);
        self
    }

    /// How many members passive checks may hold out at once: `max_ejection_percent` of
    /// them rounded down, but at least one (as Envoy's `max_ejection_percent` does), so a
    /// dead endpoint in a small group still leaves rotation.
    pub fn ejection_cap(&self) -> usize {
        (self.members.len() * self.max_ejection_percent as usize / 100).max(1)
    }

    /// Whether another member may be ejected: members out of rotation for any reason
    /// (passive or active checks) count toward the cap.
    fn may_eject(&self) -> bool {
        self.members.iter().filter(|e| !e.is_healthy()).count() < self.ejection_cap()
    }

    /// Panic mode: more members are failing than the cap lets passive checks eject. Then
    /// the failures are more likely the clients' doing, or a group-wide overload, than a
    /// few bad endpoints, so passive ejections are ignored and requests are balanced over
    /// every member an active check has not marked down (Envoy's healthy-panic threshold).
    pub fn in_panic(&self) -> bool {
        self.passive.is_some() && self.members.iter().any(|e| e.is_over_cap())
    }

    /// Records a request outcome on `endpoint` for passive health. `ok` is false only for
    /// what [`counts_as_failure`] says a broken endpoint does.
    pub fn report(&self, endpoint: &Arc<Endpoint>, ok: bool) {
        self.record(endpoint, ok, false);
    }

    /// Records that no connection to `endpoint` could be opened (refused, unreachable).
    /// No client can cause that, so the ejection cap does not apply: a group whose pods
    /// died keeps only the live ones in rotation.
    pub fn report_unreachable(&self, endpoint: &Arc<Endpoint>) {
        self.record(endpoint, false, true);
    }

    fn record(&self, endpoint: &Arc<Endpoint>, ok: bool, uncapped: bool) {
        let Some(policy) = &self.passive else { return };
        let was_over = endpoint.is_over_cap();
        let flipped = endpoint.report_capped(ok, policy, || uncapped || self.may_eject());
        if !was_over && endpoint.is_over_cap() {
            tracing::warn!(
                group = %self.id, backend = %endpoint.address, cap = self.ejection_cap(),
                "not ejected: the group is at max_ejection_percent; balancing over all endpoints (panic mode)"
            );
        }
        if let Some(healthy) = flipped {
            let reason = if healthy {
                "a trial request succeeded".to_string()
            } else {
                format!("{} consecutive failed requests", policy.max_failures)
            };
            endpoint.announce(healthy, reason);
        }
    }

    /// Picks a healthy endpoint not in `exclude` (endpoints already tried by this request);
    /// in panic mode, passively ejected endpoints count as healthy.
    pub fn pick(&self, exclude: &[Arc<Endpoint>]) -> Option<&Arc<Endpoint>> {
        let panic = self.in_panic();
        let i = self.balancer.pick(
            &self.weights,
            |i| {
                let e = &self.members[i];
                !exclude.iter().any(|x| Arc::ptr_eq(x, e))
                    && ((panic && e.is_passively_ejected())
                        || e.available(self.passive.as_deref(), self.health_check.is_none()))
            },
            |i| self.members[i].in_flight(),
        )?;
        Some(&self.members[i])
    }

    /// Endpoints with their weights.
    pub fn members(&self) -> impl Iterator<Item = (&Arc<Endpoint>, u32)> {
        self.members.iter().zip(self.weights.iter().copied())
    }

    pub fn healthy_count(&self) -> usize {
        self.members.iter().filter(|e| e.is_healthy()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_urls_parse_with_default_ports() {
        let u = BackendUrl::parse("http://10.0.0.1:8001").unwrap();
        assert_eq!((u.protocol, u.host.as_str(), u.port), (Protocol::Http1, "10.0.0.1", 8001));
        assert_eq!(BackendUrl::parse("https://api.internal").unwrap().port, 443);
        assert_eq!(BackendUrl::parse("h2c://[::1]:9000/").unwrap().host, "[::1]");
        assert_eq!(BackendUrl::parse("h2c://[::1]:9000").unwrap().address(), "[::1]:9000");
    }

    #[tokio::test]
    async fn passive_ejections_are_announced_like_active_ones() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let registry = EndpointRegistry::with_transitions(tx);
        let spec = EndpointSpec {
            url: BackendUrl::parse("http://127.0.0.1:1").unwrap(),
            pool: PoolSettings::default(),
            connect_timeout: Duration::from_secs(1),
            tls: UpstreamTls::default(),
        };
        let ep = registry.endpoint(&spec).unwrap();
        let policy = PassiveCheck { max_failures: 2, ..PassiveCheck::default() };
        let group = BackendGroup::new("g".into(), Strategy::RoundRobin, Timeouts::default(), vec![(ep.clone(), 1)])
            .with_passive(Some(policy));
        group.report(&ep, false);
        assert!(rx.try_recv().is_err());
        group.report(&ep, false);
        let t = rx.try_recv().expect("an ejection is announced");
        assert!(!t.healthy && Arc::ptr_eq(&t.endpoint, &ep));
        assert_eq!(t.reason, "2 consecutive failed requests");
    }

    fn group_of(n: usize, percent: u32) -> (BackendGroup, Vec<Arc<Endpoint>>) {
        let registry = EndpointRegistry::default();
        let eps: Vec<_> = (0..n)
            .map(|i| {
                let spec = EndpointSpec {
                    url: BackendUrl::parse(&format!("http://127.0.0.1:{}", 1 + i)).unwrap(),
                    pool: PoolSettings::default(),
                    connect_timeout: Duration::from_secs(1),
                    tls: UpstreamTls::default(),
                };
                registry.endpoint(&spec).unwrap()
            })
            .collect();
        let policy = PassiveCheck { max_failures: 1, ..PassiveCheck::default() };
        let members = eps.iter().map(|e| (e.clone(), 1)).collect();
        let group = BackendGroup::new("g".into(), Strategy::RoundRobin, Timeouts::default(), members)
            .with_passive(Some(policy))
            .with_max_ejection_percent(percent);
        (group, eps)
    }

    #[test]
    fn only_gateway_failures_count_against_an_endpoint() {
        for code in [502, 503, 504] {
            assert!(counts_as_failure(http::StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [200, 404, 429, 500, 501, 505, 599] {
            assert!(!counts_as_failure(http::StatusCode::from_u16(code).unwrap()), "{code}: a client can provoke it");
        }
    }

    #[test]
    fn ejections_stop_at_the_cap_and_the_group_panics_over_all_endpoints() {
        let (group, eps) = group_of(4, 50);
        assert_eq!(group.ejection_cap(), 2);
        for e in &eps[..3] {
            group.report(e, false);
        }
        assert!(!eps[0].is_healthy() && !eps[1].is_healthy(), "two of four ejected");
        assert!(eps[2].is_healthy() && eps[2].is_over_cap(), "the third is kept in rotation");
        assert!(group.in_panic());
        let picked: std::collections::HashSet<_> =
            (0..8).filter_map(|_| group.pick(&[]).map(|e| e.address.clone())).collect();
        assert_eq!(picked.len(), 4, "panic mode balances over every endpoint: {picked:?}");

        group.report(&eps[2], true);
        assert!(!group.in_panic(), "a success ends the panic");
        let picked: std::collections::HashSet<_> =
            (0..8).filter_map(|_| group.pick(&[]).map(|e| e.address.clone())).collect();
        assert_eq!(picked.len(), 2, "ejected endpoints are out again: {picked:?}");
    }

    #[test]
    fn endpoints_an_active_check_marked_down_stay_out_even_in_panic() {
        let (group, eps) = group_of(3, 50);
        eps[0].set_healthy(false);
        group.report(&eps[1], false);
        assert!(eps[1].is_healthy() && group.in_panic(), "cap 1 is taken by the active check's verdict");
        assert!((0..6).filter_map(|_| group.pick(&[])).all(|e| !Arc::ptr_eq(e, &eps[0])));
    }

    #[test]
    fn unreachable_endpoints_are_ejected_past_the_cap() {
        let (group, eps) = group_of(4, 50);
        for e in &eps[..3] {
            group.report_unreachable(e);
        }
        assert_eq!(eps.iter().filter(|e| !e.is_healthy()).count(), 3, "dead pods leave whatever the cap");
        assert!(!group.in_panic());
        assert!((0..6).filter_map(|_| group.pick(&[])).all(|e| Arc::ptr_eq(e, &eps[3])));
    }

    #[test]
    fn the_cap_is_at_least_one_endpoint() {
        assert_eq!(group_of(1, 50).0.ejection_cap(), 1);
        assert_eq!(group_of(3, 10).0.ejection_cap(), 1);
        assert_eq!(group_of(10, 100).0.ejection_cap(), 10);
    }

    #[test]
    fn h3_urls_are_quic_with_tls_on_port_443_by_default() {
        let url = BackendUrl::parse("h3://api.internal").unwrap();
        assert_eq!((url.protocol, url.port, url.to_string()), (Protocol::H3, 443, "h3://api.internal:443".into()));
        assert!(url.protocol.uses_tls());
    }

    #[test]
    fn bad_backend_urls_say_why() {
        for (url, why) in [
            ("10.0.0.1:8001", "scheme"),
            ("ftp://a:1", "unknown scheme"),
            ("http://a:1/x", "no path"),
            ("http://u:p@a:1", "credentials"),
            ("http://", "empty"),
        ] {
            let err = BackendUrl::parse(url).unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err}");
        }
    }
}
