//! Prometheus metrics, served at `/metrics` on the admin address. A `Metrics` value is
//! made once at start-up and handed to what records into it (listeners, the endpoint
//! registry, health checks, the controller); nothing here is a process-wide static, so
//! tests each get their own. Labels are bounded: routes and backends come from
//! configuration, methods are folded to a fixed set, no paths or client addresses.
//!
//! Per-backend series outlive no backend: each endpoint holds a [`BackendSeries`] lease
//! on its address, and when the last lease on an address goes, its series go too. Gauges
//! that describe live endpoints (in flight, health, pooled connections) are not stored at
//! all: the endpoint registry computes them when scraped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric the process exports.
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_request_duration: HistogramVec,
    pub retries: IntCounterVec,
    /// Requests balanced while their group was in panic mode (passive ejections ignored).
    pub panic_requests: IntCounterVec,
    pub quic_connections_open: IntGauge,
    pub quic_handshakes: IntCounterVec,
    pub quic_rtt: Histogram,
    pub quic_lost_packets: IntCounter,
    pub quic_path_migrations: IntCounter,
    pub quic_zero_rtt: IntCounterVec,
    pub early_data_requests: IntCounterVec,
    pub tls_resumptions: IntCounterVec,
    pub tcp_connections_open: IntGauge,
    pub health_checks: IntCounterVec,
    pub passive_ejections: IntCounterVec,
    pub route_table_generation: IntGauge,
    pub route_table_routes: IntGauge,
    pub route_table_build_seconds: Histogram,
    pub watch_events: IntCounterVec,
    pub change_to_serving: Histogram,
    pub route_table_rebuilds: IntCounter,
    pub watch_changes: IntCounterVec,
    pub watch_failing: IntGaugeVec,
    pub watch_errors: IntCounterVec,
    /// Times a limit refused or cut off a client, by `limit` (one of [`LIMITS`]).
    pub limit_hits: IntCounterVec,
    /// How many endpoints hold a lease on each backend address.
    backend_leases: Mutex<HashMap<String, usize>>,
}

/// The `limit` label values of `quic_ingress_limit_hits_total`: a fixed set, so the
/// series exist (at zero) from the start.
pub const LIMITS: &[&str] = &[
    "header_size",
    "header_timeout",
    "handshake_timeout",
    "retry_sent",
    "connections",
    "connections_per_ip",
    "handshakes",
    "handshakes_per_ip",
    "request_body_idle",
    "response_write",
    "body_size",
];

const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("quic_ingress")
}

impl Metrics {
    /// Every metric, registered. Fails only on a duplicate or malformed name, a programming
    /// error the unit tests catch.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let r = |c: Box<dyn prometheus::core::Collector>| registry.register(c);
        let m = Self {
            http_requests: IntCounterVec::new(
                opts("http_requests_total", "Requests served, by method, status, backend and route"),
                &["method", "status", "backend", "route"],
            )?,
            http_request_duration: HistogramVec::new(
                HistogramOpts::from(opts("http_request_duration_seconds", "Time from request to response headers"))
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["route"],
            )?,
            retries: IntCounterVec::new(opts("retries_total", "Requests sent again to another backend"), &["route"])?,
            panic_requests: IntCounterVec::new(
                opts(
                    "backend_group_panic_requests_total",
                    "Requests balanced over all endpoints because more were failing than max_ejection_percent lets passive checks eject",
                ),
                &["group"],
            )?,
            quic_connections_open: IntGauge::with_opts(opts("quic_connections_open", "Open QUIC connections"))?,
            quic_handshakes: IntCounterVec::new(
                opts("quic_handshakes_total", "QUIC handshakes by outcome"),
                &["outcome"],
            )?,
            quic_rtt: Histogram::with_opts(
                HistogramOpts::from(opts("quic_rtt_seconds", "Smoothed RTT of QUIC connections when they close"))
                    .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            quic_lost_packets: IntCounter::with_opts(opts("quic_lost_packets_total", "Packets lost on QUIC paths"))?,
            quic_path_migrations: IntCounter::with_opts(opts(
                "quic_path_migrations_total",
                "Clients seen at a new address on an existing QUIC connection",
            ))?,
            quic_zero_rtt: IntCounterVec::new(
                opts(
                    "quic_zero_rtt_total",
                    "QUIC handshakes whose client offered 0-RTT early data, by whether it was accepted",
                ),
                &["outcome"],
            )?,
            early_data_requests: IntCounterVec::new(
                opts(
                    "early_data_requests_total",
                    "Requests received before the handshake completed: forwarded (safe methods) or too_early (425)",
                ),
                &["outcome"],
            )?,
            tls_resumptions: IntCounterVec::new(
                opts(
                    "tls_resumptions_total",
                    "Clients resuming a TLS session: resumed, or unknown_ticket (not ours, expired, used, or rotated out)",
                ),
                &["outcome"],
            )?,
            tcp_connections_open: IntGauge::with_opts(opts("tcp_connections_open", "Open HTTPS-over-TCP connections"))?,
            health_checks: IntCounterVec::new(
                opts("health_checks_total", "Active health probes by result"),
                &["result"],
            )?,
            passive_ejections: IntCounterVec::new(
                opts("passive_ejections_total", "Backends ejected by passive checks"),
                &["backend"],
            )?,
            route_table_generation: IntGauge::with_opts(opts(
                "route_table_generation",
                "Generation of the table serving",
            ))?,
            route_table_routes: IntGauge::with_opts(opts("route_table_routes", "Routes in the table serving"))?,
            route_table_build_seconds: Histogram::with_opts(
                HistogramOpts::from(opts("route_table_build_seconds", "Time to build a route table"))
                    .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            watch_events: IntCounterVec::new(opts("watch_events_total", "Kubernetes watch events by kind"), &["kind"])?,
            change_to_serving: Histogram::with_opts(
                HistogramOpts::from(opts(
                    "change_to_serving_seconds",
                    "From the first watch event of a burst to the new route table serving",
                ))
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            route_table_rebuilds: IntCounter::with_opts(opts(
                "route_table_rebuilds_total",
                "Route tables built by the controller (each follows a relevant watch change or relist)",
            ))?,
            watch_changes: IntCounterVec::new(
                opts(
                    "watch_changes_total",
                    "Watch events that changed what the route table is built from (status writes do not), by kind",
                ),
                &["kind"],
            )?,
            watch_failing: IntGaugeVec::new(
                opts(
                    "watch_failing",
                    "1 while a watch fails (e.g. its CRD is not installed or RBAC forbids it), by kind",
                ),
                &["kind"],
            )?,
            watch_errors: IntCounterVec::new(
                opts("watch_errors_total", "Failed watch or list attempts, by kind"),
                &["kind"],
            )?,
            limit_hits: IntCounterVec::new(
                opts("limit_hits_total", "Clients refused or cut off by a limit, by limit"),
                &["limit"],
            )?,
            registry: Registry::new(),
            backend_leases: Mutex::default(),
        };
        r(Box::new(m.http_requests.clone()))?;
        r(Box::new(m.http_request_duration.clone()))?;
        r(Box::new(m.retries.clone()))?;
        r(Box::new(m.panic_requests.clone()))?;
        r(Box::new(m.quic_connections_open.clone()))?;
        r(Box::new(m.quic_handshakes.clone()))?;
        r(Box::new(m.quic_rtt.clone()))?;
        r(Box::new(m.quic_lost_packets.clone()))?;
        r(Box::new(m.quic_path_migrations.clone()))?;
        r(Box::new(m.quic_zero_rtt.clone()))?;
        r(Box::new(m.early_data_requests.clone()))?;
        r(Box::new(m.tls_resumptions.clone()))?;
        r(Box::new(m.tcp_connections_open.clone()))?;
        r(Box::new(m.health_checks.clone()))?;
        r(Box::new(m.passive_ejections.clone()))?;
        r(Box::new(m.route_table_generation.clone()))?;
        r(Box::new(m.route_table_routes.clone()))?;
        r(Box::new(m.route_table_build_seconds.clone()))?;
        r(Box::new(m.watch_events.clone()))?;
        r(Box::new(m.change_to_serving.clone()))?;
        r(Box::new(m.route_table_rebuilds.clone()))?;
        r(Box::new(m.watch_changes.clone()))?;
        r(Box::new(m.watch_failing.clone()))?;
        r(Box::new(m.watch_errors.clone()))?;
        r(Box::new(m.limit_hits.clone()))?;
        for limit in LIMITS {
            m.limit_hits.with_label_values(&[limit]);
        }
        // Fixed outcomes start at zero, so rates and dashboards work before the first event.
        for outcome in ["accepted", "rejected"] {
            m.quic_zero_rtt.with_label_values(&[outcome]);
        }
        for outcome in ["forwarded", "too_early"] {
            m.early_data_requests.with_label_values(&[outcome]);
        }
        for outcome in ["resumed", "unknown_ticket"] {
            m.tls_resumptions.with_label_values(&[outcome]);
        }
        Ok(Self { registry, ..m })
    }

    /// Counts one hit of `limit` (a name from [`LIMITS`]).
    /// The counter of `limit`'s hits, for code that counts without knowing the metrics.
    pub fn limit_counter(&self, limit: &'static str) -> IntCounter {
        debug_assert!(LIMITS.contains(&limit), "{limit} is not in LIMITS");
        self.limit_hits.with_label_values(&[limit])
    }

    pub fn limit_hit(&self, limit: &'static str) {
        debug_assert!(LIMITS.contains(&limit), "{limit} is not in LIMITS");
        self.limit_hits.with_label_values(&[limit]).inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Records a route table about to be published and how long it took to build.
    pub fn record_table(&self, generation: u64, routes: usize, build: std::time::Duration) {
        self.route_table_generation.set(generation as i64);
        self.route_table_routes.set(routes as i64);
        self.route_table_build_seconds.observe(build.as_secs_f64());
    }

    /// Registers a collector whose series are computed when scraped.
    pub fn register_collector(&self, collector: Box<dyn prometheus::core::Collector>) -> Result<(), prometheus::Error> {
        self.registry.register(collector)
    }

    /// A lease on `address`'s per-backend series, held by each endpoint at that address.
    pub fn backend_series(self: &Arc<Self>, address: &str) -> BackendSeries {
        let mut leases = self.backend_leases.lock().unwrap_or_else(|p| p.into_inner());
        *leases.entry(address.to_string()).or_insert(0) += 1;
        BackendSeries {
            metrics: self.clone(),
            passive_ejections: BackendCounter { family: self.passive_ejections.clone(), backend: address.to_string() },
        }
    }

    /// How many series `vec` has for `backend` (for tests and checks of cardinality).
    pub fn series_of_backend(&self, family: &dyn prometheus::core::Collector, backend: &str) -> usize {
        labelled(family, "backend", backend).len()
    }

    fn drop_backend_series(&self, address: &str) {
        for values in labelled(&self.http_requests, "backend", address) {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            let _ = self.http_requests.remove_label_values(&values);
        }
        let _ = self.passive_ejections.remove_label_values(&[address]);
    }
}

/// The label values, in the metric's label order, of every series of `family` whose
/// `label` is `value`.
fn labelled(family: &dyn prometheus::core::Collector, label: &str, value: &str) -> Vec<Vec<String>> {
    let Some(desc) = family.desc().into_iter().next() else { return Vec::new() };
    let order = desc.variable_labels.clone();
    family
        .collect()
        .iter()
        .flat_map(|f| f.get_metric())
        .filter(|m| m.get_label().iter().any(|l| l.name() == label && l.value() == value))
        .map(|m| {
            order
                .iter()
                .map(|name| {
                    m.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_string()).unwrap_or_default()
                })
                .collect()
        })
        .collect()
}

/// An endpoint's claim on its address's series, with the handles it records into. When
/// the last claim on an address is dropped, every series labelled with it is removed, so
/// pods coming and going do not grow the metric set.
pub struct BackendSeries {
    metrics: Arc<Metrics>,
    /// `quic_ingress_passive_ejections_total` of the address (which it keeps).
    pub passive_ejections: BackendCounter,
}

impl BackendSeries {
    fn address(&self) -> &str {
        &self.passive_ejections.backend
    }
}

impl Drop for BackendSeries {
    fn drop(&mut self) {
        let mut leases = self.metrics.backend_leases.lock().unwrap_or_else(|p| p.into_inner());
        let Some(count) = leases.get_mut(self.address()) else { return };
        *count -= 1;
        if *count == 0 {
            leases.remove(self.address());
            // Still under the lock, so a new lease on the address cannot race the removal.
            self.metrics.drop_backend_series(self.address());
        }
    }
}

impl std::fmt::Debug for BackendSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendSeries").field("address", &self.address()).finish()
    }
}

/// A per-backend counter whose series is made when it is first counted (or read), not
/// with the endpoint: prometheus copies the metric's description into every series, about
/// 370 bytes each, and a replica with 100,000 endpoints held 35 MiB of passive-ejection
/// series that almost never count anything. So a backend's series appears with its first
/// ejection.
pub struct BackendCounter {
    family: IntCounterVec,
    backend: String,
}

impl BackendCounter {
    pub fn inc(&self) {
        self.family.with_label_values(&[self.backend.as_str()]).inc();
    }

    /// The count so far (making the series, at 0, if it was never counted).
    pub fn get(&self) -> u64 {
        self.family.with_label_values(&[self.backend.as_str()]).get()
    }
}

/// One live endpoint as a scrape sees it.
#[derive(Debug, Clone, Default)]
pub struct EndpointSample {
    pub backend: String,
    pub in_flight: i64,
    pub healthy: bool,
    /// Open pooled connections, and how many of them carry a request now.
    pub open: i64,
    pub active: i64,
}

/// The per-backend gauges, computed when scraped from the endpoints alive at that moment
/// (`sample` lists them). Endpoints at one address add up (two groups with their own pool
/// settings may name the same Service); a backend is healthy only while every endpoint at
/// that address takes traffic; a removed endpoint simply stops being listed.
pub struct EndpointGauges {
    sample: Box<dyn Fn() -> Vec<EndpointSample> + Send + Sync>,
    active_connections: IntGaugeVec,
    backend_healthy: IntGaugeVec,
    upstream_connections: IntGaugeVec,
    pool_connections: IntGaugeVec,
}

impl EndpointGauges {
    pub fn new(sample: impl Fn() -> Vec<EndpointSample> + Send + Sync + 'static) -> Result<Self, prometheus::Error> {
        Ok(Self {
            sample: Box::new(sample),
            active_connections: IntGaugeVec::new(
                opts("active_connections", "Requests in flight to a backend (HTTP/1.1: connections in use)"),
                &["backend"],
            )?,
            backend_healthy: IntGaugeVec::new(
                opts("backend_healthy", "1 when the backend takes traffic (0 when any group took it out)"),
                &["backend"],
            )?,
            upstream_connections: IntGaugeVec::new(
                opts(
                    "upstream_connections",
                    "Open pooled connections to a backend (upstream_pool_connections splits them into active and idle)",
                ),
                &["backend"],
            )?,
            pool_connections: IntGaugeVec::new(
                opts(
                    "upstream_pool_connections",
                    "Pooled connections to a backend: active (carrying a request) or idle (kept for reuse)",
                ),
                &["backend", "state"],
            )?,
        })
    }

    fn families(&self) -> [&IntGaugeVec; 4] {
        [&self.active_connections, &self.backend_healthy, &self.upstream_connections, &self.pool_connections]
    }
}

impl prometheus::core::Collector for EndpointGauges {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.families().into_iter().flat_map(|f| f.desc()).collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        for family in self.families() {
            family.reset();
        }
        let mut healthy: HashMap<String, bool> = HashMap::new();
        for e in (self.sample)() {
            let b = e.backend.as_str();
            self.active_connections.with_label_values(&[b]).add(e.in_flight);
            self.upstream_connections.with_label_values(&[b]).add(e.open);
            self.pool_connections.with_label_values(&[b, "active"]).add(e.active);
            self.pool_connections.with_label_values(&[b, "idle"]).add(e.open.max(e.active) - e.active);
            *healthy.entry(e.backend).or_insert(true) &= e.healthy;
        }
        for (backend, up) in healthy {
            self.backend_healthy.with_label_values(&[backend.as_str()]).set(i64::from(up));
        }
        self.families().into_iter().flat_map(|f| f.collect()).collect()
    }
}

/// Folds a method into a bounded label value.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new().unwrap())
    }

    #[test]
    fn every_metric_registers_and_renders_with_the_prefix() {
        let m = metrics();
        m.http_requests.with_label_values(&["GET", "200", "b", "r"]).inc();
        m.quic_connections_open.set(0);
        let text = m.render();
        assert!(
            text.contains("quic_ingress_http_requests_total{backend=\"b\",method=\"GET\",route=\"r\",status=\"200\"}")
        );
        assert!(text.contains("quic_ingress_quic_connections_open 0"));
    }

    #[test]
    fn two_values_keep_their_own_counts() {
        let (a, b) = (metrics(), metrics());
        a.quic_lost_packets.inc_by(3);
        assert_eq!((a.quic_lost_packets.get(), b.quic_lost_packets.get()), (3, 0));
    }

    #[test]
    fn a_backends_series_go_with_its_last_lease() {
        let m = metrics();
        let first = m.backend_series("10.0.0.1:80");
        let second = m.backend_series("10.0.0.1:80");
        m.http_requests.with_label_values(&["GET", "200", "10.0.0.1:80", "r"]).inc();
        m.http_requests.with_label_values(&["POST", "502", "10.0.0.1:80", "r"]).inc();
        m.http_requests.with_label_values(&["GET", "200", "10.0.0.2:80", "r"]).inc();
        first.passive_ejections.inc();
        drop(first);
        assert_eq!(m.series_of_backend(&m.http_requests, "10.0.0.1:80"), 2, "another endpoint still uses it");
        assert_eq!(second.passive_ejections.get(), 1, "one series per address, shared");
        drop(second);
        assert_eq!(m.series_of_backend(&m.http_requests, "10.0.0.1:80"), 0);
        assert_eq!(m.series_of_backend(&m.passive_ejections, "10.0.0.1:80"), 0);
        assert_eq!(m.series_of_backend(&m.http_requests, "10.0.0.2:80"), 1, "other backends keep theirs");
    }

    #[test]
    fn endpoint_gauges_add_up_per_address_and_health_needs_every_endpoint() {
        let gauges = EndpointGauges::new(|| {
            let e = |backend: &str, in_flight, healthy, open, active| EndpointSample {
                backend: backend.into(),
                in_flight,
                healthy,
                open,
                active,
            };
            vec![e("a:1", 2, true, 3, 2), e("a:1", 1, false, 1, 1), e("b:1", 0, true, 1, 0)]
        })
        .unwrap();
        let m = metrics();
        m.register_collector(Box::new(gauges)).unwrap();
        let text = m.render();
        for line in [
            "quic_ingress_active_connections{backend=\"a:1\"} 3",
            "quic_ingress_backend_healthy{backend=\"a:1\"} 0",
            "quic_ingress_backend_healthy{backend=\"b:1\"} 1",
            "quic_ingress_upstream_connections{backend=\"a:1\"} 4",
            "quic_ingress_upstream_pool_connections{backend=\"a:1\",state=\"active\"} 3",
            "quic_ingress_upstream_pool_connections{backend=\"a:1\",state=\"idle\"} 1",
            "quic_ingress_upstream_pool_connections{backend=\"b:1\",state=\"idle\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    /// Every metric family name exported.
    fn family_names() -> Vec<String> {
        use prometheus::core::Collector;
        let m = metrics();
        let gauges = EndpointGauges::new(Vec::new).unwrap();
        let collectors: Vec<&dyn Collector> = vec![
            &m.http_requests,
            &m.http_request_duration,
            &m.retries,
            &m.panic_requests,
            &m.quic_connections_open,
            &m.quic_handshakes,
            &m.quic_rtt,
            &m.quic_lost_packets,
            &m.quic_path_migrations,
            &m.quic_zero_rtt,
            &m.early_data_requests,
            &m.tls_resumptions,
            &m.tcp_connections_open,
            &m.health_checks,
            &m.passive_ejections,
            &m.route_table_generation,
            &m.route_table_routes,
            &m.route_table_build_seconds,
            &m.watch_events,
            &m.change_to_serving,
            &m.limit_hits,
            &gauges,
            &m.route_table_rebuilds,
            &m.watch_changes,
            &m.watch_failing,
            &m.watch_errors,
        ];
        collectors.iter().flat_map(|c| c.desc()).map(|d| d.fq_name.clone()).collect()
    }

    #[test]
    fn the_grafana_dashboard_only_uses_exported_metrics() {
        let families = family_names();
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../deploy/grafana-dashboard.json")).expect("dashboard JSON");
        let mut used = 0;
        for target in
            dashboard["panels"].as_array().into_iter().flatten().flat_map(|p| p["targets"].as_array()).flatten()
        {
            let expr = target["expr"].as_str().unwrap_or_default();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("quic_ingress_") {
                    used += 1;
                    let family = word.trim_end_matches("_bucket");
                    assert!(families.iter().any(|f| f == family), "the dashboard uses {word}, which is not exported");
                }
            }
        }
        assert!(used > 10, "the dashboard should chart the main metrics");
    }

    #[test]
    fn unknown_methods_fold_into_other() {
        assert_eq!(method_label(&http::Method::from_bytes(b"PROPFIND").unwrap()), "OTHER");
    }
}
