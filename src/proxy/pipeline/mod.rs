//! The request pipeline both listeners share, written against `http::Request`/`Response`
//! with streaming bodies, so HTTP/3 and HTTP/1.1+2 requests take exactly the same path.
//!
//! A request goes through phases over one [`RequestContext`], each a small function:
//!
//! ```text
//! route ─► filters ─► attempt ─► retry? ─► attempt ... ─► respond_error? ─► response filters
//!       ─► respond ─► log
//! ```
//! - `route` ([`route`]): one table load; host, path, method, headers, query and listener.
//! - `filters` ([`filters`]): the 0-RTT rule, then the route's request-side filters in
//!   order (header changes, redirect, rewrite, mirror, CORS preflight); then the route's
//!   weighted backends give the group.
//! - `attempt` ([`attempt`]): balance, connection slot, send with timeouts, passive health;
//!   each attempt says whether another may follow, and `forward` loops within the budget
//!   and the route's `request` timeout.
//! - `respond_error` ([`error`]): why the proxy answered instead of a backend.
//! - `response` ([`response`]): the route's response-side filters (header changes, CORS
//!   headers), on every response of a matched route, the proxy's own answers included.
//! - `respond` and `log` ([`finish`]): response headers, metrics and the access log.

mod attempt;
mod context;
mod error;
mod filters;
mod finish;
#[doc(hidden)]
pub mod fuzz;
mod mirror;
mod response;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::borrow::Cow;

use http::uri::PathAndQuery;
use http::{Request, Response, Uri};

use crate::body::ProxyBody;
use crate::net::TrustedProxies;
use crate::routes::{RequestView, Route, RouteTable, normalize_path_and_query};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::traces;
pub use context::RequestContext;
use error::ProxyError;

/// What the pipeline knows about the downstream connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub protocol: Downstream,
    /// The request came before the TLS handshake completed (0-RTT), so it may be a replay.
    pub early_data: bool,
}

/// The listener a request came in on (the access log's `protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downstream {
    /// HTTP/3 over QUIC.
    H3,
    /// HTTP/1.1 or HTTP/2 over TLS over TCP.
    Tcp,
    /// HTTP/1.1 or HTTP/2 (prior knowledge) over plain TCP: the `http://` listener.
    Cleartext,
}

impl Downstream {
    /// Whether the client's connection is encrypted.
    pub fn tls(self) -> bool {
        !matches!(self, Self::Cleartext)
    }

    /// The scheme the client used, as `X-Forwarded-Proto` and `Forwarded: proto=` say it.
    pub fn scheme(self) -> &'static str {
        if self.tls() { "https" } else { "http" }
    }
}

/// The route table being served, swapped whole on every change.
pub type Tables = Arc<ArcSwap<RouteTable>>;

/// What every request reads: the table being served, the metrics it records into, and
/// the proxies whose forwarding headers are believed.
pub struct Shared {
    pub tables: Tables,
    pub metrics: Arc<Metrics>,
    pub trusted: TrustedProxies,
    /// The limits every request obeys (body size, idle timeouts).
    pub limits: Arc<crate::config::Limits>,
    /// Request bodies cut off for silence, resolved once rather than per request.
    pub body_idle_hits: prometheus::IntCounter,
    /// The scoped port these listeners serve (see `RouteTable::route_on`); `None` on the
    /// default listeners.
    pub scope_port: Option<u16>,
}

impl Shared {
    /// The same, for the listeners of scoped port `port`.
    pub fn scoped(&self, port: u16) -> Self {
        Self {
            tables: self.tables.clone(),
            metrics: self.metrics.clone(),
            trusted: self.trusted.clone(),
            limits: self.limits.clone(),
            body_idle_hits: self.body_idle_hits.clone(),
            scope_port: Some(port),
        }
    }
}

/// Serves one request from the current route table.
pub async fn handle(shared: &Shared, mut req: Request<ProxyBody>, conn: ConnInfo) -> Response<ProxyBody> {
    let mut ctx = RequestContext::new(&mut req, conn, &shared.trusted);
    // A WebSocket (or other HTTP/1.1 upgrade) handshake: the client's connection is taken
    // over once the backend agrees.
    let client_upgrade = ctx.upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let mut resp = match serve(shared, &mut ctx, req).await {
        Ok(resp) => resp,
        Err(err) => error::respond_error(err),
    };
    if let Some(route) = &ctx.route {
        response::apply(route, ctx.cors_origin.as_ref(), resp.headers_mut());
    }
    let resp = finish::respond(&ctx, resp, client_upgrade, shared.limits.upgrade_idle_timeout.0);
    finish::log(&ctx, &resp, &shared.metrics);
    resp
}

/// The phases up to a response: route, filters, then attempts at backends.
async fn serve(
    shared: &Shared,
    ctx: &mut RequestContext,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let req = normalize(ctx, req)?;
    let route = route(&shared.tables, shared.scope_port, ctx, &req)?;
    let req = match filters::apply(ctx, &route, req, &shared.metrics) {
        filters::Flow::Continue(req) => req,
        filters::Flow::Respond(resp) => return Ok(resp),
    };
    let group = route.backends.pick().ok_or(ProxyError::NoBackend)?;
    let max_body = group.max_request_body_bytes.unwrap_or(shared.limits.max_request_body_bytes);
    let (req, exceeded) = body_limit(req, max_body, &shared.metrics)?;
    let forwarded = match route.timeouts.request.filter(|d| !d.is_zero()) {
        None => attempt::forward(ctx, &route, group, req, &shared.metrics).await,
        Some(limit) => tokio::time::timeout(limit, attempt::forward(ctx, &route, group, req, &shared.metrics))
            .await
            .unwrap_or_else(|_| {
                tracing::warn!(route = %route.id, timeout = ?limit, "route request timeout");
                Err(ProxyError::UpstreamTimeout)
            }),
    };
    if exceeded.load(std::sync::atomic::Ordering::Acquire) {
        // The body was cut off on its way: whatever the backend made of it, say why.
        shared.metrics.limit_hit("body_size");
        return Err(ProxyError::PayloadTooLarge);
    }
    forwarded
}

/// The request-body size limit: a declared length over it is refused before anything is
/// sent; a streamed body is cut off when it passes it (the flag then says so).
fn body_limit(
    req: Request<ProxyBody>,
    max: u64,
    metrics: &Metrics,
) -> Result<(Request<ProxyBody>, Arc<std::sync::atomic::AtomicBool>), ProxyError> {
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        metrics.limit_hit("body_size");
        return Err(ProxyError::PayloadTooLarge);
    }
    let exceeded = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let req = req.map(|body| crate::body::boxed(crate::body::SizeLimit::new(body, max, exceeded.clone())));
    Ok((req, exceeded))
}

/// Rewrites the request's path into its normal form (see `routes::normalize_path`) before
/// routing, so the route matches the path the backend is sent; a path that cannot be
/// normalised safely gets 400.
fn normalize(ctx: &mut RequestContext, mut req: Request<ProxyBody>) -> Result<Request<ProxyBody>, ProxyError> {
    let Some(pq) = req.uri().path_and_query() else { return Ok(req) };
    // `OPTIONS *` names the server, not a path.
    if pq.as_str() == "*" {
        return Ok(req);
    }
    let normal = match normalize_path_and_query(pq.as_str()) {
        Ok(Cow::Borrowed(_)) => return Ok(req),
        Ok(Cow::Owned(normal)) => normal,
        Err(e) => {
            tracing::debug!(path = %ctx.path, error = %e, "refused a request path");
            return Err(ProxyError::BadPath);
        }
    };
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(normal).map_err(|_| ProxyError::BadPath)?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::BadPath)?;
    ctx.path = req.uri().path().to_string();
    Ok(req)
}

/// The route phase: one load per request, so the whole request sees one table.
fn route(
    tables: &ArcSwap<RouteTable>,
    scope_port: Option<u16>,
    ctx: &mut RequestContext,
    req: &Request<ProxyBody>,
) -> Result<Arc<Route>, ProxyError> {
    let _span = traces::span!("route_match").entered();
    let path_and_query = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let view = RequestView {
        host: ctx.host.as_deref(),
        path_and_query,
        method: req.method(),
        headers: req.headers(),
        listener: ctx.listener(),
    };
    let route = tables.load().route_on(scope_port, &view).cloned().ok_or(ProxyError::NoRoute)?;
    ctx.route = Some(route.clone());
    Ok(route)
}
