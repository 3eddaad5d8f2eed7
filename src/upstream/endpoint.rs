//! One backend endpoint and the state that outlives route-table swaps: its pooled client,
//! connection cap, in-flight count and health. The registry hands the same `Endpoint` to
//! every table that names it, and forgets it once no table does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::connector::{ConnCounts, EndpointConnector};
use super::h2::H2Upstream;
use super::h3::{H3Body, H3Upstream};
use super::{
    BackendUrl, HealthCheck, HealthRecord, PoolSettings, Protocol, Timeouts, Transition, UpstreamError, UpstreamTls,
};
use crate::body::ProxyBody;
use crate::telemetry::metrics::{BackendSeries, EndpointGauges, EndpointSample, Metrics};
use tokio::sync::mpsc;

/// Everything that identifies an endpoint's client: two groups naming the same URL with
/// the same settings share one pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    pub url: BackendUrl,
    pub pool: PoolSettings,
    pub connect_timeout: std::time::Duration,
    pub tls: UpstreamTls,
}

/// A backend endpoint with its client and live counters.
pub struct Endpoint {
    pub url: BackendUrl,
    /// `host:port`, computed once for logs and labels.
    pub address: String,
    in_flight: AtomicUsize,
    healthy: AtomicBool,
    /// Out of rotation because passive checks ejected it (not because an active check
    /// failed): a group in panic mode sends to it anyway.
    passive_ejected: AtomicBool,
    /// Passive checks would have ejected it, but its group was at its ejection cap.
    over_cap: AtomicBool,
    slots: Arc<Semaphore>,
    /// This endpoint's claim on its address's metric series.
    series: BackendSeries,
    /// Requests waiting for a slot, and how many may.
    waiting: AtomicUsize,
    max_waiting: usize,
    /// Probe results; touched by the health checker and status writers, never by requests.
    record: Mutex<HealthRecord>,
    /// Failures seen on real traffic; locked only when a request fails or the endpoint is
    /// ejected.
    passive: Mutex<PassiveState>,
    /// Where health changes are announced (the controller turns them into Events).
    transitions: Option<mpsc::UnboundedSender<Transition>>,
    /// Open connections, for the pool metrics.
    counts: Arc<ConnCounts>,
    /// The client, boxed and built on the first request for plain HTTP endpoints (see
    /// [`Endpoint::new`]), at once for TLS ones.
    client: OnceLock<Box<Transport>>,
    /// What a plain endpoint's client is built from.
    pool: PoolSettings,
    connect_timeout: Duration,
}

/// The client an endpoint's protocol needs.
enum Transport {
    /// HTTP/1.1 (`http://`), pooled by hyper.
    Hyper(Client<EndpointConnector, ProxyBody>),
    /// HTTP/2 with prior knowledge (`h2c://`): one multiplexed connection.
    H2(H2Upstream),
    /// TLS (`https://`): HTTP/2 when the server's ALPN picks it, else HTTP/1.1 pooled by
    /// hyper; which one is learnt on the first connection.
    Https { h2: H2Upstream, http1: Client<EndpointConnector, ProxyBody>, http1_only: AtomicBool },
    /// HTTP/3: one multiplexed QUIC connection.
    H3(H3Upstream),
    /// A stand-in backend for in-process tests of the request pipeline.
    #[cfg(test)]
    Stub(Arc<dyn StubTransport>),
}

/// A backend the pipeline's tests script: answers, fails or stalls as a test says.
#[cfg(test)]
pub trait StubTransport: Send + Sync {
    fn send(
        &self,
        req: http::Request<ProxyBody>,
    ) -> futures::future::BoxFuture<'static, Result<http::Response<UpstreamBody>, SendError>>;
}

/// Why a request got no response from the backend.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Client(#[from] hyper_util::client::legacy::Error),
    /// Nothing reached the backend (connecting failed, or the connection was gone).
    #[error("{0}")]
    NotSent(String),
    #[error("connecting timed out")]
    ConnectTimeout,
    /// The exchange broke after the request was sent.
    #[error("{0}")]
    Broken(String),
}

/// A response body from any upstream protocol.
pub enum UpstreamBody {
    Hyper(Incoming),
    H3(H3Body),
    #[cfg(test)]
    Stub(ProxyBody),
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Hyper(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::H3(b) => std::pin::Pin::new(b).poll_frame(cx),
            #[cfg(test)]
            Self::Stub(b) => std::pin::Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(b) => b.is_end_stream(),
            Self::H3(_) => false,
            #[cfg(test)]
            Self::Stub(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Hyper(b) => b.size_hint(),
            Self::H3(_) => http_body::SizeHint::default(),
            #[cfg(test)]
            Self::Stub(b) => b.size_hint(),
        }
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url.to_string())
            .field("in_flight", &self.in_flight())
            .field("healthy", &self.is_healthy())
            .finish()
    }
}

impl Endpoint {
    /// A plain HTTP endpoint (`http://`, `h2c://`) gets its client on its first request: a
    /// hyper client with its pool and timers, or an HTTP/2 dialler, is most of what an
    /// idle endpoint would hold, and a replica at scale has many endpoints that no request
    /// reaches. A TLS endpoint builds its client now, so that TLS settings it cannot use (an
    /// unreadable CA bundle, a bad server name) fail its group when the table is built.
    fn new(
        spec: &EndpointSpec,
        metrics: &Arc<Metrics>,
        transitions: Option<mpsc::UnboundedSender<Transition>>,
    ) -> Result<Self, UpstreamError> {
        let counts = Arc::new(ConnCounts::default());
        let client = match spec.url.protocol {
            Protocol::Https | Protocol::H3 => Some(Self::tls_transport(spec, &counts)?),
            Protocol::Http1 | Protocol::H2c => None,
        };
        Ok(Self::with_client(spec, metrics, transitions, counts, client))
    }

    /// An endpoint whose requests go to a scripted stand-in instead of the network.
    #[cfg(test)]
    pub fn stub(spec: &EndpointSpec, transport: Arc<dyn StubTransport>) -> Arc<Self> {
        let metrics = Arc::new(Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}")));
        Arc::new(Self::with_client(spec, &metrics, None, Arc::default(), Some(Transport::Stub(transport))))
    }

    /// The client of a plain HTTP endpoint (HTTP/1.1 pooled by hyper, or HTTP/2 with prior
    /// knowledge); building it cannot fail.
    fn plain_transport(&self) -> Transport {
        let connector = |h2c| {
            EndpointConnector::new(
                self.url.host.clone(),
                self.url.port,
                self.connect_timeout,
                None,
                self.counts.clone(),
                h2c,
            )
        };
        match self.url.protocol {
            Protocol::H2c => Transport::H2(H2Upstream::new(connector(true), self.pool.idle_timeout)),
            _ => Transport::Hyper(http1_client(connector(false), &self.pool)),
        }
    }

    /// The client of a TLS endpoint: `h3://`, or `https://` (the only other scheme that
    /// comes here).
    fn tls_transport(spec: &EndpointSpec, counts: &Arc<ConnCounts>) -> Result<Transport, UpstreamError> {
        Ok(match spec.url.protocol {
            Protocol::H3 => {
                let (config, name) = client_tls(&spec.url, &spec.tls, &[b"h3"])?;
                let h3 = H3Upstream::new(
                    spec.url.host.clone(),
                    spec.url.port,
                    Arc::unwrap_or_clone(config),
                    name.to_str().into_owned(),
                    spec.connect_timeout,
                    spec.pool.idle_timeout,
                    counts.clone(),
                )
                .map_err(UpstreamError::Tls)?;
                Transport::H3(h3)
            }
            Protocol::Https | Protocol::Http1 | Protocol::H2c => {
                let connector = |tls| {
                    EndpointConnector::new(
                        spec.url.host.clone(),
                        spec.url.port,
                        spec.connect_timeout,
                        Some(tls),
                        counts.clone(),
                        false,
                    )
                };
                let both = client_tls(&spec.url, &spec.tls, &[b"h2", b"http/1.1"])?;
                let only_http1 = client_tls(&spec.url, &spec.tls, &[b"http/1.1"])?;
                Transport::Https {
                    h2: H2Upstream::new(connector(both), spec.pool.idle_timeout),
                    http1: http1_client(connector(only_http1), &spec.pool),
                    http1_only: AtomicBool::new(false),
                }
            }
        })
    }

    /// The client requests are sent on (built now if this is its first request).
    fn transport(&self) -> &Transport {
        self.client.get_or_init(|| Box::new(self.plain_transport()))
    }

    fn with_client(
        spec: &EndpointSpec,
        metrics: &Arc<Metrics>,
        transitions: Option<mpsc::UnboundedSender<Transition>>,
        counts: Arc<ConnCounts>,
        client: Option<Transport>,
    ) -> Self {
        let address = spec.url.address();
        Self {
            series: metrics.backend_series(&address),
            address,
            url: spec.url.clone(),
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            passive_ejected: AtomicBool::new(false),
            over_cap: AtomicBool::new(false),
            slots: Arc::new(Semaphore::new(spec.pool.max_connections_per_host.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting: spec.pool.max_pending_requests,
            record: Mutex::new(HealthRecord::default()),
            passive: Mutex::new(PassiveState::default()),
            transitions,
            counts,
            client: client.map(Box::new).map(OnceLock::from).unwrap_or_default(),
            pool: spec.pool.clone(),
            connect_timeout: spec.connect_timeout,
        }
    }

    /// The pool's open connections as (active, idle).
    pub fn pool_connections(&self) -> (i64, i64) {
        let (open, multiplexed) = self.counts.get();
        split_pool(open, multiplexed, self.in_flight() as i64)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
        if healthy {
            self.passive_ejected.store(false, Ordering::Relaxed);
        }
    }

    /// Ejected by passive checks (and not since revived).
    pub fn is_passively_ejected(&self) -> bool {
        !self.is_healthy() && self.passive_ejected.load(Ordering::Relaxed)
    }

    /// Failing enough to be ejected, but kept because its group was at its ejection cap.
    pub fn is_over_cap(&self) -> bool {
        self.over_cap.load(Ordering::Relaxed)
    }

    /// Whether a request may be sent here. An endpoint ejected by passive checks gets one
    /// trial request per cool-down when `allow_trial` (no active check will revive it).
    pub fn available(&self, passive: Option<&PassiveCheck>, allow_trial: bool) -> bool {
        if self.is_healthy() {
            return true;
        }
        let (Some(policy), true) = (passive, allow_trial) else { return false };
        let mut state = self.passive.lock().unwrap_or_else(|p| p.into_inner());
        match state.ejected_until {
            Some(until) if Instant::now() >= until => {
                state.ejected_until = Some(Instant::now() + policy.cooldown);
                true
            }
            _ => false,
        }
    }

    /// Records the outcome of a real request; returns the new health when it changed.
    pub fn report(&self, ok: bool, policy: &PassiveCheck) -> Option<bool> {
        self.report_capped(ok, policy, || true)
    }

    /// As [`report`](Self::report), but an ejection happens only if `may_eject` allows it
    /// when the threshold is reached; otherwise the endpoint stays in rotation, marked as
    /// over its group's cap, and the next failure asks again.
    pub fn report_capped(&self, ok: bool, policy: &PassiveCheck, may_eject: impl FnOnce() -> bool) -> Option<bool> {
        let now = Instant::now();
        let mut state = self.passive.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            self.over_cap.store(false, Ordering::Relaxed);
            state.consecutive_failures = 0;
            if state.ejected_until.take().is_some() && !self.is_healthy() {
                self.set_healthy(true);
                return Some(true);
            }
            return None;
        }
        if state.consecutive_failures == 0 || now.duration_since(state.streak_started) > policy.window {
            state.consecutive_failures = 0;
            state.streak_started = now;
        }
        state.consecutive_failures += 1;
        if state.consecutive_failures >= policy.max_failures && self.is_healthy() {
            if !may_eject() {
                self.over_cap.store(true, Ordering::Relaxed);
                return None;
            }
            self.over_cap.store(false, Ordering::Relaxed);
            state.ejected_until = Some(now + policy.cooldown);
            self.set_healthy(false);
            self.passive_ejected.store(true, Ordering::Relaxed);
            self.series.passive_ejections.inc();
            return Some(false);
        }
        if !self.is_healthy() && state.ejected_until.is_some() {
            // A failed trial: wait a whole cool-down again.
            state.ejected_until = Some(now + policy.cooldown);
        }
        None
    }

    /// Logs a change of health and tells whoever listens.
    pub fn announce(self: &Arc<Self>, healthy: bool, reason: String) {
        tracing::warn!(backend = %self.address, healthy, %reason, "backend health changed");
        if let Some(tx) = &self.transitions {
            let _ = tx.send(Transition { endpoint: self.clone(), healthy, reason });
        }
    }

    /// Records a probe result; returns the new health when it changed.
    pub fn observe_probe(&self, result: Result<(), String>, check: &HealthCheck) -> Option<bool> {
        let mut record = self.record.lock().unwrap_or_else(|p| p.into_inner());
        let flipped = record.observe(std::time::SystemTime::now(), result, self.is_healthy(), check);
        if let Some(healthy) = flipped {
            self.set_healthy(healthy);
        }
        flipped
    }

    /// A copy of the latest probe results.
    pub fn health_record(&self) -> HealthRecord {
        self.record.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes a connection slot, waiting at most `timeouts.pool_wait`; `None` when the
    /// endpoint stays at its connection cap that long.
    pub async fn acquire(self: &Arc<Self>, timeouts: &Timeouts) -> Option<InFlight> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // A bounded queue: past max_waiting, answer 503 now rather than queue.
                if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    return None;
                }
                // Counted down on drop, so a request cancelled while waiting leaves the queue.
                struct Waiting<'a>(&'a AtomicUsize);
                impl Drop for Waiting<'_> {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                let _waiting = Waiting(&self.waiting);
                tokio::time::timeout(timeouts.pool_wait, self.slots.clone().acquire_owned()).await.ok()?.ok()?
            }
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight { endpoint: self.clone(), _permit: permit })
    }

    /// Sends a request on the pooled client. The URI carries the client's authority, for
    /// `:authority` on HTTP/2 and HTTP/3; connections go to this endpoint whatever it says.
    pub async fn send(&self, req: http::Request<ProxyBody>) -> Result<http::Response<UpstreamBody>, SendError> {
        match self.transport() {
            Transport::Hyper(client) => Ok(client.request(self.pool_keyed(req)).await?.map(UpstreamBody::Hyper)),
            Transport::H2(h2) => match h2.send(req).await? {
                Ok(resp) => Ok(resp.map(UpstreamBody::Hyper)),
                Err(_) => Err(SendError::NotSent("h2c endpoint did not speak HTTP/2".into())),
            },
            Transport::Https { h2, http1, http1_only } => {
                let req = if http1_only.load(Ordering::Relaxed) {
                    req
                } else {
                    match h2.send(req).await? {
                        Ok(resp) => return Ok(resp.map(UpstreamBody::Hyper)),
                        Err(req) => {
                            http1_only.store(true, Ordering::Relaxed);
                            req
                        }
                    }
                };
                Ok(http1.request(self.pool_keyed(req)).await?.map(UpstreamBody::Hyper))
            }
            Transport::H3(h3) => Ok(h3.send(req).await?.map(UpstreamBody::H3)),
            #[cfg(test)]
            Transport::Stub(stub) => stub.send(req).await,
        }
    }
}

impl Endpoint {
    /// hyper's HTTP/1.1 pool is keyed by the URI's scheme and authority, so the URI gets
    /// this endpoint's address: one pool per endpoint, however many hosts clients name.
    /// The client's host travels in the Host header, set by the pipeline.
    fn pool_keyed(&self, mut req: http::Request<ProxyBody>) -> http::Request<ProxyBody> {
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        if let Ok(authority) = http::uri::Authority::try_from(self.address.as_str()) {
            parts.authority = Some(authority);
        }
        if parts.scheme.is_none() {
            parts.scheme = Some(http::uri::Scheme::HTTP);
        }
        *req.uri_mut() = http::Uri::from_parts(parts).unwrap_or_else(|_| http::Uri::from_static("/"));
        req
    }
}

/// Passive health policy: `max_failures` consecutive failures within `window` eject the
/// endpoint for `cooldown`, after which a trial request may revive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveCheck {
    pub max_failures: u32,
    pub window: Duration,
    pub cooldown: Duration,
}

impl Default for PassiveCheck {
    fn default() -> Self {
        Self { max_failures: 5, window: Duration::from_secs(60), cooldown: Duration::from_secs(10) }
    }
}

struct PassiveState {
    consecutive_failures: u32,
    streak_started: Instant,
    ejected_until: Option<Instant>,
}

impl Default for PassiveState {
    fn default() -> Self {
        Self { consecutive_failures: 0, streak_started: Instant::now(), ejected_until: None }
    }
}

/// A request's claim on an endpoint: counts toward least-connections and holds a connection
/// slot until dropped (when the response body is done).
pub struct InFlight {
    endpoint: Arc<Endpoint>,
    _permit: OwnedSemaphorePermit,
}

impl InFlight {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn client_tls(
    url: &BackendUrl,
    tls: &UpstreamTls,
    alpn: &[&[u8]],
) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), UpstreamError> {
    let tls_err = |e: crate::tls::TlsError| UpstreamError::Tls(e.to_string());
    let name = tls.server_name.clone().unwrap_or_else(|| url.host.trim_matches(['[', ']']).to_string());
    let server_name = ServerName::try_from(name.clone()).map_err(|_| UpstreamError::ServerName(name))?;
    let mut config = if tls.insecure_skip_verify {
        crate::tls::insecure_client_config().map_err(tls_err)?
    } else {
        let roots = match (&tls.ca_pem, &tls.ca_file) {
            (Some((what, pem)), _) => crate::tls::roots_from_pem(pem, what).map_err(tls_err)?,
            (None, Some(path)) => crate::tls::load_roots(path)
                .map_err(|e| UpstreamError::CaBundle { path: path.clone(), reason: e.to_string() })?,
            (None, None) => crate::tls::system_roots(),
        };
        if tls.subject_alt_names.is_empty() {
            crate::tls::client_config(roots).map_err(tls_err)?
        } else {
            let provider = crate::tls::provider();
            let verifier = super::san::SanVerifier::new(
                roots,
                tls.subject_alt_names.clone(),
                provider.signature_verification_algorithms,
            );
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| UpstreamError::Tls(e.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((Arc::new(config), server_name))
}

/// hyper's pooled HTTP/1.1 client over `connector`, with the endpoint's pool limits.
fn http1_client(connector: EndpointConnector, pool: &PoolSettings) -> Client<EndpointConnector, ProxyBody> {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(pool.idle_timeout)
        .pool_max_idle_per_host(pool.max_idle_connections);
    builder.build(connector)
}

/// Splits open connections into active and idle. An HTTP/1.1 connection carries one
/// request at a time, so each request in flight keeps one busy; hyper pools one HTTP/2
/// connection per endpoint, busy while any request is in flight.
fn split_pool(open: i64, multiplexed: i64, in_flight: i64) -> (i64, i64) {
    let serial = (open - multiplexed).max(0);
    let busy_serial = serial.min(in_flight);
    let busy_multiplexed = multiplexed.min(i64::from(in_flight > busy_serial));
    let active = busy_serial + busy_multiplexed;
    (active, open.max(active) - active)
}

/// Live endpoints by spec, held weakly: an endpoint lives as long as some table names it.
type LiveEndpoints = Arc<Mutex<LiveMap>>;

/// The registry's map, swept of dead entries when it has doubled since the last sweep: a
/// sweep on every new endpoint made a build creating n endpoints cost n² (10,000 new
/// Services took a second per build).
#[derive(Default)]
struct LiveMap {
    map: HashMap<EndpointSpec, Weak<Endpoint>>,
    sweep_at: usize,
}

impl LiveMap {
    /// The smallest map worth sweeping.
    const MIN_SWEEP: usize = 64;

    fn insert(&mut self, spec: EndpointSpec, endpoint: &Arc<Endpoint>) {
        if self.map.len() >= self.sweep_at.max(Self::MIN_SWEEP) {
            self.sweep();
        }
        self.map.insert(spec, Arc::downgrade(endpoint));
    }

    fn sweep(&mut self) {
        self.map.retain(|_, weak| weak.strong_count() > 0);
        self.sweep_at = self.map.len() * 2;
    }
}

/// Hands out shared endpoints by spec; keeps only weak references so endpoints no table
/// uses any more are dropped with their pools. Owns the per-backend gauges: they are read
/// from its live endpoints when scraped.
pub struct EndpointRegistry {
    live: LiveEndpoints,
    metrics: Arc<Metrics>,
    transitions: Option<mpsc::UnboundedSender<Transition>>,
}

impl Default for EndpointRegistry {
    /// A registry with metrics of its own (for tests and one-off checks). `Metrics::new`
    /// fails only on a malformed metric name, which the unit tests would have caught.
    fn default() -> Self {
        Self::new(Arc::new(Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}"))), None)
    }
}

impl EndpointRegistry {
    /// A registry recording into `metrics`, whose endpoints announce health changes on
    /// `transitions` when given.
    pub fn new(metrics: Arc<Metrics>, transitions: Option<mpsc::UnboundedSender<Transition>>) -> Self {
        let live = LiveEndpoints::default();
        let sampled = live.clone();
        let registered =
            EndpointGauges::new(move || sample(&sampled)).and_then(|g| metrics.register_collector(Box::new(g)));
        if let Err(e) = registered {
            tracing::warn!(error = %e, "per-backend gauges are not exported");
        }
        Self { live, metrics, transitions }
    }

    /// A registry with metrics of its own whose endpoints announce health changes.
    pub fn with_transitions(transitions: mpsc::UnboundedSender<Transition>) -> Self {
        Self { transitions: Some(transitions), ..Self::default() }
    }

    pub fn endpoint(&self, spec: &EndpointSpec) -> Result<Arc<Endpoint>, UpstreamError> {
        // Only table builds and scrapes take this lock, never requests.
        let mut live = self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = live.map.get(spec).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        let endpoint = Arc::new(Endpoint::new(spec, &self.metrics, self.transitions.clone())?);
        live.insert(spec.clone(), &endpoint);
        Ok(endpoint)
    }

    /// The metrics this registry's endpoints record into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Endpoints still referenced by some table.
    pub fn live_count(&self) -> usize {
        let live = self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        live.map.values().filter(|w| w.strong_count() > 0).count()
    }
}

/// What each live endpoint shows in the per-backend gauges.
fn sample(live: &LiveEndpoints) -> Vec<EndpointSample> {
    let mut live = live.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // A scrape visits every entry anyway: the dead go now, not at the next doubling.
    live.sweep();
    live.map
        .values()
        .filter_map(Weak::upgrade)
        .map(|e| {
            let (active, idle) = e.pool_connections();
            EndpointSample {
                backend: e.address.clone(),
                in_flight: e.in_flight() as i64,
                healthy: e.is_healthy(),
                open: active + idle,
                active,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_connections_are_busy_one_request_each_http2_while_any_request_runs() {
        assert_eq!(split_pool(4, 0, 0), (0, 4));
        assert_eq!(split_pool(4, 0, 3), (3, 1));
        assert_eq!(split_pool(4, 0, 9), (4, 0), "requests waiting for a connection keep none busy");
        assert_eq!(split_pool(1, 1, 0), (0, 1));
        assert_eq!(split_pool(1, 1, 25), (1, 0), "25 streams on one HTTP/2 connection");
        assert_eq!(split_pool(0, 0, 2), (0, 0), "requests still connecting");
    }

    fn spec(url: &str) -> EndpointSpec {
        EndpointSpec {
            url: BackendUrl::parse(url).unwrap(),
            pool: PoolSettings::default(),
            connect_timeout: std::time::Duration::from_secs(1),
            tls: UpstreamTls::default(),
        }
    }

    fn backend_lines(metrics: &Metrics) -> Vec<String> {
        metrics.render().lines().filter(|l| l.contains("backend=")).map(str::to_string).collect()
    }

    #[tokio::test]
    async fn endpoints_at_one_address_share_series_until_the_last_goes() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let reg = EndpointRegistry::new(metrics.clone(), None);
        // A plain Service backend and a BackendGroup with its own pool settings, same pod.
        let plain = reg.endpoint(&spec("http://10.1.0.5:8080")).unwrap();
        let mut tuned = spec("http://10.1.0.5:8080");
        tuned.pool.max_connections_per_host = 7;
        let grouped = reg.endpoint(&tuned).unwrap();
        assert!(!Arc::ptr_eq(&plain, &grouped), "two pools");
        metrics.http_requests.with_label_values(&["GET", "200", "10.1.0.5:8080", "r"]).inc();
        let _busy = grouped.acquire(&Timeouts::default()).await.unwrap();
        grouped.set_healthy(false);
        let text = metrics.render();
        assert!(text.contains("quic_ingress_backend_healthy{backend=\"10.1.0.5:8080\"} 0"), "{text}");
        assert!(text.contains("quic_ingress_active_connections{backend=\"10.1.0.5:8080\"} 1"), "{text}");

        drop(_busy);
        drop(grouped);
        let text = metrics.render();
        assert!(text.contains("quic_ingress_backend_healthy{backend=\"10.1.0.5:8080\"} 1"), "the one left: {text}");
        assert!(text.contains("quic_ingress_http_requests_total{backend=\"10.1.0.5:8080\""), "still in use: {text}");
        drop(plain);
        assert_eq!(backend_lines(&metrics), Vec::<String>::new(), "gone with the last endpoint");
    }

    #[tokio::test]
    async fn a_thousand_endpoint_changes_leave_only_the_live_endpoints_series() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let reg = EndpointRegistry::new(metrics.clone(), None);
        let policy = PassiveCheck { max_failures: 1, ..PassiveCheck::default() };
        let steady = reg.endpoint(&spec("http://10.2.0.1:80")).unwrap();
        for i in 0..1000u16 {
            // A pod replaced: a new address takes traffic, fails once, and goes.
            let ep = reg.endpoint(&spec(&format!("http://10.3.{}.{}:80", i / 250, i % 250))).unwrap();
            metrics.http_requests.with_label_values(&["GET", "200", &ep.address, "r"]).inc();
            metrics.http_requests.with_label_values(&["GET", "502", &ep.address, "r"]).inc();
            ep.report(false, &policy);
        }
        let lines = backend_lines(&metrics);
        assert!(lines.iter().all(|l| l.contains("10.2.0.1:80")), "only the endpoint alive: {lines:?}");
        assert!(lines.len() <= 6, "{lines:?}");
        assert_eq!(reg.live_count(), 1);
        drop(steady);
    }

    #[tokio::test]
    async fn plain_endpoints_get_their_client_with_their_first_request_tls_ones_at_once() {
        let reg = EndpointRegistry::default();
        for url in ["http://127.0.0.1:1", "h2c://127.0.0.1:2"] {
            let ep = reg.endpoint(&spec(url)).unwrap();
            assert!(ep.client.get().is_none(), "{url}: no client before a request");
            let req = http::Request::get("http://example.com/").body(crate::body::empty()).unwrap();
            assert!(ep.send(req).await.is_err(), "{url}: nothing listens there");
            assert!(ep.client.get().is_some(), "{url}: kept for the next request");
        }
        let mut tls = spec("https://127.0.0.1:3");
        tls.tls.insecure_skip_verify = true;
        assert!(reg.endpoint(&tls).unwrap().client.get().is_some(), "TLS settings are checked when built");
        let mut bad = spec("https://127.0.0.1:4");
        bad.tls.ca_pem = Some(("secret ns/ca".into(), b"not a certificate".to_vec()));
        assert!(reg.endpoint(&bad).is_err(), "an unusable CA bundle fails the table build, not a request");
    }

    #[tokio::test]
    async fn registry_shares_endpoints_while_a_table_holds_them() {
        let reg = EndpointRegistry::default();
        let a = reg.endpoint(&spec("http://127.0.0.1:1")).unwrap();
        a.set_healthy(false);
        let again = reg.endpoint(&spec("http://127.0.0.1:1")).unwrap();
        assert!(Arc::ptr_eq(&a, &again), "state survives a rebuild");
        assert!(!again.is_healthy());
        let other = reg.endpoint(&spec("http://127.0.0.1:2")).unwrap();
        assert_eq!(reg.live_count(), 2);
        drop((a, again, other));
        assert_eq!(reg.live_count(), 0);
        assert!(reg.endpoint(&spec("http://127.0.0.1:1")).unwrap().is_healthy(), "forgotten once unused");
    }

    #[tokio::test]
    async fn dropped_endpoints_are_swept_as_the_registry_grows_and_at_a_scrape() {
        let reg = EndpointRegistry::default();
        let kept: Vec<_> =
            (0..100u16).map(|i| reg.endpoint(&spec(&format!("http://10.4.0.{i}:80"))).unwrap()).collect();
        for i in 0..5000u16 {
            drop(reg.endpoint(&spec(&format!("http://10.5.{}.{}:80", i / 250, i % 250))).unwrap());
        }
        let held = reg.live.lock().unwrap().map.len();
        assert!(held <= 2 * (kept.len() + LiveMap::MIN_SWEEP), "dead entries bounded by the live ones: {held}");
        sample(&reg.live);
        assert_eq!(reg.live.lock().unwrap().map.len(), kept.len(), "a scrape sweeps the rest");
        assert_eq!(reg.live_count(), kept.len());
    }

    #[tokio::test]
    async fn passive_failures_eject_and_a_trial_revives() {
        let reg = EndpointRegistry::default();
        let ep = reg.endpoint(&spec("http://127.0.0.1:1")).unwrap();
        let policy = PassiveCheck { max_failures: 3, window: Duration::from_secs(60), cooldown: Duration::ZERO };
        assert_eq!(ep.report(false, &policy), None);
        assert_eq!(ep.report(true, &policy), None, "a success resets the streak");
        assert_eq!(ep.report(false, &policy), None);
        assert_eq!(ep.report(false, &policy), None);
        assert_eq!(ep.report(false, &policy), Some(false), "three in a row eject");
        assert!(!ep.available(Some(&policy), false), "active checks revive it, not trials");
        assert!(ep.available(Some(&policy), true), "a trial after the cool-down");
        assert_eq!(ep.report(true, &policy), Some(true));
        assert!(ep.is_healthy());
    }

    #[tokio::test]
    async fn slots_cap_concurrent_requests() {
        let reg = EndpointRegistry::default();
        let mut s = spec("http://127.0.0.1:1");
        s.pool.max_connections_per_host = 1;
        let ep = reg.endpoint(&s).unwrap();
        let t = Timeouts { pool_wait: std::time::Duration::from_millis(20), ..Timeouts::default() };
        let first = ep.acquire(&t).await.unwrap();
        assert_eq!(ep.in_flight(), 1);
        assert!(ep.acquire(&t).await.is_none(), "second request waits, then gives up");
        let mut s2 = spec("http://127.0.0.1:3");
        s2.pool.max_connections_per_host = 1;
        s2.pool.max_pending_requests = 0;
        let busy = reg.endpoint(&s2).unwrap();
        let _held = busy.acquire(&t).await.unwrap();
        let slow = Timeouts { pool_wait: std::time::Duration::from_secs(30), ..Timeouts::default() };
        let started = std::time::Instant::now();
        assert!(busy.acquire(&slow).await.is_none());
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "no queue: refused at once");
        drop(first);
        assert_eq!(ep.in_flight(), 0);
        assert!(ep.acquire(&t).await.is_some());
    }
}
