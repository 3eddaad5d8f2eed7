//! The last two phases: `respond` shapes what goes back to the client (HEAD without a
//! body, the upgrade take-over, hop-by-hop headers, `x-request-id`), and `log` records the
//! request in the metrics and the access log.

use http::Response;
use hyper::upgrade::OnUpgrade;

use super::context::RequestContext;
use crate::body::ProxyBody;
use crate::proxy::headers::{X_REQUEST_ID, strip_hop_by_hop};
use crate::proxy::upgrade;
use crate::telemetry::metrics::{Metrics, method_label};

/// Shapes the response for the client. `client_upgrade` is the client's side of an
/// upgrade handshake, spliced to the backend if it agreed (101).
pub fn respond(
    ctx: &RequestContext,
    mut resp: Response<ProxyBody>,
    client_upgrade: Option<OnUpgrade>,
    upgrade_idle: std::time::Duration,
) -> Response<ProxyBody> {
    if ctx.method == http::Method::HEAD {
        // A response to HEAD has no body, whatever a backend sends after its headers.
        resp = resp.map(|_| crate::body::empty());
    }
    let switched = match (client_upgrade, &ctx.upgrade) {
        (Some(client), Some(protocol)) => {
            let (taken, switched) = upgrade::take_over(resp, client, protocol.clone(), upgrade_idle);
            resp = taken;
            switched
        }
        _ => None,
    };
    strip_hop_by_hop(resp.headers_mut());
    if let Some(protocol) = &switched {
        upgrade::restore(resp.headers_mut(), protocol);
    }
    resp.headers_mut().insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
    resp
}

/// Counts the request and writes its access-log line.
pub fn log(ctx: &RequestContext, resp: &Response<ProxyBody>, metrics: &Metrics) {
    let elapsed = ctx.started.elapsed();
    let route = ctx.route_id();
    let backend = ctx.backend.as_deref().unwrap_or("");
    metrics.http_requests.with_label_values(&[method_label(&ctx.method), resp.status().as_str(), backend, route]).inc();
    metrics.http_request_duration.with_label_values(&[route]).observe(elapsed.as_secs_f64());
    tracing::info!(
        target: "access",
        request_id = ctx.request_id.to_str().unwrap_or(""),
        method = %ctx.method,
        path = %ctx.path,
        host = ctx.host.as_deref().unwrap_or(""),
        route,
        backend,
        status = resp.status().as_u16(),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        client_ip = %ctx.hop.client,
        peer_ip = %ctx.hop.peer,
        protocol = ?ctx.conn.protocol,
        early_data = ctx.conn.early_data,
        "request"
    );
}
