//! The attempt phase: pick an endpoint, take a connection slot, send with a deadline,
//! report the outcome to passive health, and say whether another attempt may follow.
//! `forward` loops over attempts within the group's retry budget.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri, Version};
use tracing::{Instrument, Span};

use super::context::RequestContext;
use super::error::{ProxyError, classify, error_chain};
use crate::body::{Guarded, IdleTimeout, ProxyBody, boxed};
use crate::proxy::headers::{EARLY_DATA, set_forwarded, strip_hop_by_hop};
use crate::proxy::retry::lend;
use crate::proxy::upgrade;
use crate::routes::Route;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::traces;
use crate::upstream::{BackendGroup, Endpoint, Protocol, counts_as_failure};

/// Attempts per request: the first try and up to two retries on other endpoints.
pub const MAX_ATTEMPTS: usize = 3;

/// How one attempt ended.
pub enum Attempt {
    /// The backend's response, to send to the client (it may be a 5xx no retry could fix).
    Served(Response<ProxyBody>),
    /// No usable response. `retry` gives the body back when another endpoint may be tried:
    /// the failure allows it and the body was never read upstream.
    Failed { error: ProxyError, retry: Option<ProxyBody> },
}

/// Sends the request to the route's group, failing over to another endpoint when that is
/// safe and the retry budget allows.
pub async fn forward(
    ctx: &mut RequestContext,
    route: &Route,
    group: &BackendGroup,
    req: Request<ProxyBody>,
    metrics: &Metrics,
) -> Result<Response<ProxyBody>, ProxyError> {
    group.retry_budget.deposit();
    // The route's per-attempt timeout replaces the group's; zero is no limit (tokio takes
    // a deadline past the end of time as never).
    let response_timeout = match route.timeouts.backend_request {
        Some(d) if d.is_zero() => Duration::MAX,
        Some(d) => d,
        None => group.timeouts.response_headers,
    };
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    let mut tried: Vec<Arc<Endpoint>> = Vec::new();
    let mut last = ProxyError::NoHealthyBackend;
    if group.in_panic() {
        metrics.panic_requests.with_label_values(&[group.id.as_str()]).inc();
    }
    for n in 0..MAX_ATTEMPTS {
        let balance_span = traces::span!("load_balance", attempt = n);
        let Some(endpoint) = balance_span.in_scope(|| group.pick(&tried).cloned()) else { break };
        // A retry is paid for only once there is an endpoint left to send it to.
        if n > 0 {
            if !group.retry_budget.withdraw() {
                break;
            }
            metrics.retries.with_label_values(&[route.id.as_str()]).inc();
        }
        tried.push(endpoint.clone());
        ctx.backend = Some(endpoint.address.clone());
        let Some(this_body) = body.take() else { break };
        let may_retry = n + 1 < MAX_ATTEMPTS;
        match attempt(ctx, group, &endpoint, &parts, this_body, (may_retry, response_timeout), balance_span).await {
            Attempt::Served(resp) => return Ok(resp),
            Attempt::Failed { error, retry: Some(again) } => {
                body = Some(again);
                last = error;
            }
            Attempt::Failed { error, retry: None } => return Err(error),
        }
    }
    Err(last)
}

/// One attempt at `endpoint`, waiting `response_timeout` for the response headers.
/// `may_retry` is false on the last allowed attempt, so its 502/503 goes to the client as
/// the backend sent it.
pub async fn attempt(
    ctx: &RequestContext,
    group: &BackendGroup,
    endpoint: &Arc<Endpoint>,
    parts: &Parts,
    body: ProxyBody,
    (may_retry, response_timeout): (bool, Duration),
    balance_span: Span,
) -> Attempt {
    let Some(slot) = endpoint.acquire(&group.timeouts).instrument(balance_span).await else {
        // Nothing was sent: another endpoint may have room.
        return Attempt::Failed { error: ProxyError::PoolFull, retry: Some(body) };
    };
    let (lent, lender) = lend(body);
    let lent = boxed(IdleTimeout::new(lent, group.timeouts.idle));
    let mut req = upstream_request(Request::from_parts(parts.clone(), lent), endpoint, ctx);
    let backend_span = traces::span!("backend_request", otel.kind = "client", server.address = %endpoint.address);
    traces::inject(&backend_span, req.headers_mut());
    let sent = tokio::time::timeout(response_timeout, endpoint.send(req)).instrument(backend_span).await;
    let outcome = match sent {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => {
            tracing::warn!(backend = %endpoint.address, error = %error_chain(&e), "upstream request failed");
            Err(classify(&e))
        }
        Err(_) => {
            tracing::warn!(backend = %endpoint.address, timeout = ?response_timeout, "upstream timed out");
            Err(ProxyError::UpstreamTimeout)
        }
    };
    match outcome {
        Ok(resp) => {
            let status = resp.status();
            group.report(endpoint, !counts_as_failure(status));
            if may_retry && retryable_status(status) && ctx.idempotent {
                // Replay only a body the backend never read (an empty one, usually).
                if let Some(body) = lender.take_back() {
                    return Attempt::Failed { error: ProxyError::BadUpstream, retry: Some(body) };
                }
            }
            let idle = group.timeouts.idle;
            Attempt::Served(resp.map(|b| boxed(IdleTimeout::new(Guarded::new(b, slot), idle))))
        }
        Err(error) => {
            if error == ProxyError::Connect {
                group.report_unreachable(endpoint);
            } else {
                group.report(endpoint, false);
            }
            let retry = if may_retry && retryable_error(error, ctx.idempotent) { lender.take_back() } else { None };
            Attempt::Failed { error, retry }
        }
    }
}

/// Responses another endpoint may do better with.
fn retryable_status(status: StatusCode) -> bool {
    matches!(status, StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE)
}

/// A failure that allows another attempt: one that sent nothing (any method), or a
/// connection that broke before the response (idempotent methods). A response timeout may
/// have reached the backend, so it is never retried.
fn retryable_error(error: ProxyError, idempotent: bool) -> bool {
    error.nothing_sent() || (idempotent && error == ProxyError::BadUpstream)
}

/// Rewrites a downstream request for `endpoint`: same method, path and authority, header
/// rules applied, the version the upstream protocol speaks.
pub(super) fn upstream_request(
    req: Request<ProxyBody>,
    endpoint: &Endpoint,
    ctx: &RequestContext,
) -> Request<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    set_forwarded(&mut parts.headers, &ctx.hop, ctx.host.as_deref(), ctx.conn.protocol.scheme());
    if ctx.conn.early_data {
        // RFC 8470: the backend may answer 425 itself if it cannot take the replay risk.
        parts.headers.insert(EARLY_DATA.clone(), HeaderValue::from_static("1"));
    }
    if let Some(protocol) = &ctx.upgrade
        && matches!(endpoint.url.protocol, Protocol::Http1 | Protocol::Https)
    {
        upgrade::restore(&mut parts.headers, protocol);
    }

    let scheme = match endpoint.url.protocol {
        Protocol::Https | Protocol::H3 => "https",
        Protocol::Http1 | Protocol::H2c => "http",
    };
    let path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    // Keep the client's authority in the URI (HTTP/2 sends it as :authority), or the one a
    // URL rewrite gave; the connector dials the endpoint regardless.
    let authority = ctx
        .upstream_host
        .as_deref()
        .or(ctx.host.as_deref())
        .filter(|h| h.parse::<http::uri::Authority>().is_ok())
        .unwrap_or(&endpoint.address);
    parts.uri = Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .unwrap_or_else(|_| Uri::from_static("/"));
    match endpoint.url.protocol {
        Protocol::H2c => {
            parts.version = Version::HTTP_2;
            parts.headers.remove(header::HOST);
        }
        Protocol::H3 => {
            parts.version = Version::HTTP_3;
            parts.headers.remove(header::HOST);
        }
        Protocol::Http1 | Protocol::Https => {
            parts.version = Version::HTTP_11;
            if let Ok(h) = HeaderValue::from_str(authority) {
                parts.headers.insert(header::HOST, h);
            }
        }
    }
    Request::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_that_may_not_have_run_are_retried() {
        for err in [ProxyError::Connect, ProxyError::ConnectTimeout, ProxyError::PoolFull] {
            assert!(retryable_error(err, false), "{err:?}: nothing was sent, so even a POST may go elsewhere");
        }
        assert!(retryable_error(ProxyError::BadUpstream, true), "a broken connection, idempotent method");
        assert!(!retryable_error(ProxyError::BadUpstream, false), "a POST may have run");
        assert!(!retryable_error(ProxyError::UpstreamTimeout, true), "a slow backend may be running it");
        assert!(retryable_status(StatusCode::BAD_GATEWAY) && retryable_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!retryable_status(StatusCode::INTERNAL_SERVER_ERROR) && !retryable_status(StatusCode::GATEWAY_TIMEOUT));
    }
}
