//! Prometheus metrics, served at `/metrics` on the admin address. One process-wide
//! registry; hot-path handles (per-endpoint gauges) are resolved when endpoints are
//! created, so a request does at most one label look-up. Labels are bounded: routes and
//! backends come from configuration, methods are folded to a fixed set, no paths or
//! client addresses.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric the process exports.
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_request_duration: HistogramVec,
    pub active_connections: IntGaugeVec,
    pub backend_healthy: IntGaugeVec,
    pub retries: IntCounterVec,
    pub quic_connections_open: IntGauge,
    pub quic_handshakes: IntCounterVec,
    pub quic_rtt: Histogram,
    pub quic_lost_packets: IntCounter,
    pub quic_path_migrations: IntCounter,
    pub quic_zero_rtt: IntCounterVec,
    pub early_data_requests: IntCounterVec,
    pub tls_resumptions: IntCounterVec,
    pub upstream_connections: IntGaugeVec,
    pub tcp_connections_open: IntGauge,
    pub health_checks: IntCounterVec,
    pub passive_ejections: IntCounterVec,
    pub route_table_generation: IntGauge,
    pub route_table_routes: IntGauge,
    pub route_table_build_seconds: Histogram,
    pub watch_events: IntCounterVec,
    pub change_to_serving: Histogram,
}

const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("quic_ingress")
}

impl Metrics {
    fn new() -> Result<Self, prometheus::Error> {
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
            active_connections: IntGaugeVec::new(
                opts("active_connections", "Requests in flight to a backend (HTTP/1.1: connections in use)"),
                &["backend"],
            )?,
            backend_healthy: IntGaugeVec::new(
                opts("backend_healthy", "1 when the backend takes traffic"),
                &["backend"],
            )?,
            retries: IntCounterVec::new(opts("retries_total", "Requests sent again to another backend"), &["route"])?,
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
            upstream_connections: IntGaugeVec::new(
                opts(
                    "upstream_connections",
                    "Open pooled connections to a backend (upstream_pool_connections splits them into active and idle)",
                ),
                &["backend"],
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
            registry: Registry::new(),
        };
        r(Box::new(m.http_requests.clone()))?;
        r(Box::new(m.http_request_duration.clone()))?;
        r(Box::new(m.active_connections.clone()))?;
        r(Box::new(m.backend_healthy.clone()))?;
        r(Box::new(m.retries.clone()))?;
        r(Box::new(m.quic_connections_open.clone()))?;
        r(Box::new(m.quic_handshakes.clone()))?;
        r(Box::new(m.quic_rtt.clone()))?;
        r(Box::new(m.quic_lost_packets.clone()))?;
        r(Box::new(m.quic_path_migrations.clone()))?;
        r(Box::new(m.quic_zero_rtt.clone()))?;
        r(Box::new(m.early_data_requests.clone()))?;
        r(Box::new(m.tls_resumptions.clone()))?;
        r(Box::new(m.upstream_connections.clone()))?;
        r(Box::new(m.tcp_connections_open.clone()))?;
        r(Box::new(m.health_checks.clone()))?;
        r(Box::new(m.passive_ejections.clone()))?;
        r(Box::new(m.route_table_generation.clone()))?;
        r(Box::new(m.route_table_routes.clone()))?;
        r(Box::new(m.route_table_build_seconds.clone()))?;
        r(Box::new(m.watch_events.clone()))?;
        r(Box::new(m.change_to_serving.clone()))?;
        r(Box::new(PoolCollector::new()?))?;
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

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// `upstream_pool_connections{backend,state}`: each live endpoint's pooled connections,
/// active or idle, computed when scraped (so idle connections closing show without a request).
struct PoolCollector(IntGaugeVec);

impl PoolCollector {
    fn new() -> Result<Self, prometheus::Error> {
        Ok(Self(IntGaugeVec::new(
            opts(
                "upstream_pool_connections",
                "Pooled connections to a backend: active (carrying a request) or idle (kept for reuse)",
            ),
            &["backend", "state"],
        )?))
    }
}

impl prometheus::core::Collector for PoolCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.reset();
        for (backend, active, idle) in crate::upstream::pool_connections() {
            self.0.with_label_values(&[backend.as_str(), "active"]).add(active);
            self.0.with_label_values(&[backend.as_str(), "idle"]).add(idle);
        }
        self.0.collect()
    }
}

/// The process-wide metrics. Registration only fails on duplicate names, which would be a
/// programming error caught by the first test; a broken set falls back to an empty one.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| match Metrics::new() {
    Ok(m) => m,
    Err(e) => {
        eprintln!("error: metrics registration failed: {e}");
        std::process::abort()
    }
});

/// Records a route table about to be published and how long it took to build.
pub fn record_table(table: &crate::routes::RouteTable, build: std::time::Duration) {
    METRICS.route_table_generation.set(table.generation as i64);
    METRICS.route_table_routes.set(table.route_count() as i64);
    METRICS.route_table_build_seconds.observe(build.as_secs_f64());
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

    #[test]
    fn every_metric_registers_and_renders_with_the_prefix() {
        METRICS.http_requests.with_label_values(&["GET", "200", "b", "r"]).inc();
        METRICS.quic_connections_open.set(0);
        let text = METRICS.render();
        assert!(
            text.contains("quic_ingress_http_requests_total{backend=\"b\",method=\"GET\",route=\"r\",status=\"200\"}")
        );
        assert!(text.contains("quic_ingress_quic_connections_open 0"));
    }

    /// Every metric family name registered.
    fn family_names() -> Vec<String> {
        use prometheus::core::Collector;
        let m = &*METRICS;
        let collectors: Vec<&dyn Collector> = vec![
            &m.http_requests,
            &m.http_request_duration,
            &m.active_connections,
            &m.backend_healthy,
            &m.retries,
            &m.quic_connections_open,
            &m.quic_handshakes,
            &m.quic_rtt,
            &m.quic_lost_packets,
            &m.quic_path_migrations,
            &m.quic_zero_rtt,
            &m.early_data_requests,
            &m.tls_resumptions,
            &m.upstream_connections,
            &m.tcp_connections_open,
            &m.health_checks,
            &m.passive_ejections,
            &m.route_table_generation,
            &m.route_table_routes,
            &m.route_table_build_seconds,
            &m.watch_events,
            &m.change_to_serving,
        ];
        let pool = PoolCollector::new().expect("pool collector");
        collectors
            .iter()
            .chain([&pool as &dyn Collector].iter())
            .flat_map(|c| c.desc())
            .map(|d| d.fq_name.clone())
            .collect()
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
