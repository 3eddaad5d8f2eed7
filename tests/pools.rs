//! Upstream pools are keyed by endpoint: clients naming many hosts (each `Host:` port, each
//! wildcard label) share one endpoint's connections, and the backend still sees the host
//! each client asked for.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use common::*;

async fn upstream_connections(proxy: &Proxy, backend: &Backend) -> f64 {
    metric(proxy.admin, &format!("quic_ingress_upstream_connections{{backend=\"{}\"}}", backend.addr)).await
}

#[tokio::test]
async fn many_host_ports_and_wildcard_labels_share_one_pool_per_endpoint() {
    for protocol in ["http1", "h2"] {
        let backend = Backend::start_with(protocol, protocol).await;
        let scheme = if protocol == "h2" { "h2c" } else { "http" };
        let config = format!(
            "routes:\n  - {{id: r, host: \"*.example.com\", path: /, backend_group: g}}\nbackend_groups:\n  - id: g\n    backends: [{{url: \"{}\"}}]\n",
            backend.url(scheme)
        );
        let proxy = Proxy::start(&config).await;
        let c = proxy.h3().await;
        for i in 0..60u16 {
            // Thirty ports of one name, then thirty labels of the wildcard.
            let host = if i < 30 { format!("a.example.com:{}", 1000 + i) } else { format!("l{i}.example.com") };
            let a = h3_get(&c, &host, "/x").await;
            assert_eq!(a.status, 200, "{protocol} {host}");
            assert_eq!(a.json()["host"], host.as_str(), "{protocol}: the backend sees the client's host");
        }
        let open = upstream_connections(&proxy, &backend).await;
        assert!((1.0..=2.0).contains(&open), "{protocol}: {open} upstream connections for 60 hosts, one after another");
        proxy.proc.assert_rss_under(96, &format!("{protocol}: 60 hosts"));
    }
}
