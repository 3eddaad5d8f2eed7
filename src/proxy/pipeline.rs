//! The request pipeline both listeners share: route → balance → forward → record.
//! Written against `http::Request`/`Response` with streaming bodies, so HTTP/3 and
//! HTTP/1.1+2 requests take exactly the same path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};

use super::early_data::safe_in_early_data;
use super::headers::{EARLY_DATA, X_REQUEST_ID, ensure_request_id, set_forwarded, strip_hop_by_hop};
use super::retry::{is_idempotent, lend};
use super::upgrade;
use crate::body::{Guarded, IdleTimeout, ProxyBody, boxed, full};
use crate::routes::RouteTable;
use crate::telemetry::metrics::{METRICS, method_label};
use crate::telemetry::traces;
use crate::upstream::{Endpoint, Protocol, SendError};
use tracing::{Instrument, Span};

/// What the pipeline knows about the downstream connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub protocol: Downstream,
    /// The request came before the TLS handshake completed (0-RTT), so it may be a replay.
    pub early_data: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downstream {
    H3,
    Tcp,
}

/// Why the proxy answered instead of the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyError {
    NoRoute,
    NoHealthyBackend,
    PoolFull,
    Connect,
    ConnectTimeout,
    UpstreamTimeout,
    BadUpstream,
    /// An unsafe method in 0-RTT early data (RFC 8470): the client sends it again once the
    /// handshake is done.
    TooEarly,
}

impl ProxyError {
    fn status(self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoHealthyBackend | Self::PoolFull => StatusCode::SERVICE_UNAVAILABLE,
            Self::Connect | Self::BadUpstream => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout | Self::ConnectTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::TooEarly => StatusCode::TOO_EARLY,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::NoRoute => "no route for this host and path",
            Self::NoHealthyBackend => "no healthy backend",
            Self::PoolFull => "backend connection limit reached",
            Self::Connect => "cannot connect to the backend",
            Self::UpstreamTimeout => "the backend did not answer in time",
            Self::ConnectTimeout => "connecting to the backend timed out",
            Self::BadUpstream => "bad response from the backend",
            Self::TooEarly => "this method is not accepted in TLS early data; send it again after the handshake",
        }
    }

    fn response(self) -> Response<ProxyBody> {
        let mut resp = Response::new(full(format!("{} {}\n", self.status().as_u16(), self.message())));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        resp
    }
}

/// The authority the client asked for: `:authority` (HTTP/2, HTTP/3, absolute-form) or Host.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
}

/// Serves one request from the current route table.
pub async fn handle(tables: &ArcSwap<RouteTable>, mut req: Request<ProxyBody>, conn: ConnInfo) -> Response<ProxyBody> {
    let started = Instant::now();
    let request_id = ensure_request_id(req.headers_mut());
    let host = request_host(&req);
    let method = req.method().clone();
    let path = req.uri().path().to_string();

    // A WebSocket (or other HTTP/1.1 upgrade) handshake: the client's connection is taken
    // over once the backend agrees.
    let upgrade = upgrade::requested(req.headers(), req.version()).map(|p| (hyper::upgrade::on(&mut req), p));
    let protocol = upgrade.as_ref().map(|(_, p)| p.clone());
    let (mut resp, route_id, backend) = forward(tables, req, host.as_deref(), conn, protocol.as_ref()).await;
    if method == http::Method::HEAD {
        // A response to HEAD has no body, whatever a backend sends after its headers.
        resp = resp.map(|_| crate::body::empty());
    }
    let (mut resp, switched) = match upgrade {
        Some((client, protocol)) => upgrade::take_over(resp, client, protocol),
        None => (resp, None),
    };
    let elapsed = started.elapsed();
    let route_label = route_id.as_deref().unwrap_or("");
    METRICS
        .http_requests
        .with_label_values(&[
            method_label(&method),
            resp.status().as_str(),
            backend.as_deref().unwrap_or(""),
            route_label,
        ])
        .inc();
    METRICS.http_request_duration.with_label_values(&[route_label]).observe(elapsed.as_secs_f64());

    strip_hop_by_hop(resp.headers_mut());
    if let Some(protocol) = &switched {
        upgrade::restore(resp.headers_mut(), protocol);
    }
    resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id.clone());
    tracing::info!(
        target: "access",
        request_id = request_id.to_str().unwrap_or(""),
        method = %method,
        path = %path,
        host = host.as_deref().unwrap_or(""),
        route = route_id.as_deref().unwrap_or(""),
        backend = backend.as_deref().unwrap_or(""),
        status = resp.status().as_u16(),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        client_ip = %conn.client.ip(),
        protocol = ?conn.protocol,
        early_data = conn.early_data,
        "request"
    );
    resp
}

/// Attempts per request: the first try and up to two retries on other endpoints.
const MAX_ATTEMPTS: usize = 3;

/// Routes and forwards, failing over to another endpoint when that is safe; returns the
/// response with the route and backend that served it.
async fn forward(
    tables: &ArcSwap<RouteTable>,
    req: Request<ProxyBody>,
    host: Option<&str>,
    conn: ConnInfo,
    upgrade: Option<&HeaderValue>,
) -> (Response<ProxyBody>, Option<String>, Option<String>) {
    let path_and_query = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    // One load per request: the whole request sees one table.
    let tracing_on = traces::enabled();
    let route = {
        let _span = if tracing_on { tracing::info_span!("route_match").entered() } else { Span::none().entered() };
        match tables.load().lookup(host, path_and_query) {
            Some(route) => route.clone(),
            None => return (ProxyError::NoRoute.response(), None, None),
        }
    };
    let route_id = Some(route.id.clone());
    if conn.early_data {
        let safe = safe_in_early_data(req.method());
        let outcome = if safe { "forwarded" } else { "too_early" };
        METRICS.early_data_requests.with_label_values(&[outcome]).inc();
        if !safe {
            return (ProxyError::TooEarly.response(), route_id, None);
        }
    }
    let group = &route.group;
    group.retry_budget.deposit();
    let idempotent = is_idempotent(req.method());
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    let mut tried: Vec<Arc<Endpoint>> = Vec::new();
    let mut last: Option<(ProxyError, String)> = None;

    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            if !group.retry_budget.withdraw() {
                break;
            }
            METRICS.retries.with_label_values(&[route.id.as_str()]).inc();
        }
        let balance_span = if tracing_on { tracing::info_span!("load_balance", attempt) } else { Span::none() };
        let Some(endpoint) = balance_span.in_scope(|| group.pick(&tried).cloned()) else { break };
        tried.push(endpoint.clone());
        let Some(slot) = endpoint.acquire(&group.timeouts).instrument(balance_span).await else {
            // Nothing was sent: another endpoint may have room.
            last = Some((ProxyError::PoolFull, endpoint.address.clone()));
            continue;
        };
        let Some(this_body) = body.take() else { break };
        let (lent, lender) = lend(this_body);
        let lent = boxed(IdleTimeout::new(lent, group.timeouts.idle));
        let mut upstream_req = upstream_request(Request::from_parts(parts.clone(), lent), &endpoint, host, conn);
        if let Some(protocol) = upgrade
            && matches!(endpoint.url.protocol, Protocol::Http1 | Protocol::Https)
        {
            upgrade::restore(upstream_req.headers_mut(), protocol);
        }
        let backend_span = if tracing_on {
            tracing::info_span!("backend_request", otel.kind = "client", server.address = %endpoint.address)
        } else {
            Span::none()
        };
        traces::inject(&backend_span, upstream_req.headers_mut());
        let sent = tokio::time::timeout(group.timeouts.response_headers, endpoint.send(upstream_req))
            .instrument(backend_span)
            .await;
        let outcome = match sent {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                tracing::warn!(backend = %endpoint.address, error = %error_chain(&e), attempt, "upstream request failed");
                Err(classify(&e))
            }
            Err(_) => {
                tracing::warn!(backend = %endpoint.address, timeout = ?group.timeouts.response_headers, "upstream timed out");
                Err(ProxyError::UpstreamTimeout)
            }
        };
        match outcome {
            Ok(resp) => {
                let status = resp.status();
                group.report(&endpoint, !status.is_server_error());
                let retryable = matches!(status, StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE);
                if retryable && idempotent && attempt + 1 < MAX_ATTEMPTS {
                    // Replay only a body the backend never read (an empty one, usually).
                    if let Some(b) = lender.take_back() {
                        body = Some(b);
                        last = Some((ProxyError::BadUpstream, endpoint.address.clone()));
                        continue;
                    }
                }
                let idle = group.timeouts.idle;
                let resp = resp.map(|b| boxed(IdleTimeout::new(Guarded::new(b, slot), idle)));
                return (resp, route_id, Some(endpoint.address.clone()));
            }
            Err(err) => {
                group.report(&endpoint, false);
                // A connect failure sent nothing, so any method may go elsewhere; a connect
                // timeout likewise. A response timeout may have reached the backend.
                let nothing_sent = matches!(err, ProxyError::Connect | ProxyError::ConnectTimeout);
                // A connection that broke before the response is a 502 an idempotent
                // request may retry, if its body was never read.
                let retry = nothing_sent || (idempotent && err == ProxyError::BadUpstream);
                if retry
                    && attempt + 1 < MAX_ATTEMPTS
                    && let Some(b) = lender.take_back()
                {
                    body = Some(b);
                    last = Some((err, endpoint.address.clone()));
                    continue;
                }
                return (err.response(), route_id, Some(endpoint.address.clone()));
            }
        }
    }
    match last {
        Some((err, backend)) => (err.response(), route_id, Some(backend)),
        None => (ProxyError::NoHealthyBackend.response(), route_id, None),
    }
}

/// Rewrites a downstream request for `endpoint`: same method, path and authority, header
/// rules applied, the version the upstream protocol speaks.
fn upstream_request(
    req: Request<ProxyBody>,
    endpoint: &Endpoint,
    host: Option<&str>,
    conn: ConnInfo,
) -> Request<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    set_forwarded(&mut parts.headers, conn.client.ip(), host);
    if conn.early_data {
        // RFC 8470: the backend may answer 425 itself if it cannot take the replay risk.
        parts.headers.insert(EARLY_DATA.clone(), HeaderValue::from_static("1"));
    }

    let scheme = match endpoint.url.protocol {
        Protocol::Https | Protocol::H3 => "https",
        Protocol::Http1 | Protocol::H2c => "http",
    };
    let path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    // Keep the client's authority in the URI (HTTP/2 sends it as :authority); the
    // connector dials the endpoint regardless.
    let authority = host.filter(|h| h.parse::<http::uri::Authority>().is_ok()).unwrap_or(&endpoint.address);
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

/// Maps a send error to the status the user sees: timeouts 504, everything else 502.
fn classify(e: &SendError) -> ProxyError {
    let e = match e {
        SendError::NotSent(_) => return ProxyError::Connect,
        SendError::ConnectTimeout => return ProxyError::ConnectTimeout,
        SendError::Broken(_) => return ProxyError::BadUpstream,
        SendError::Client(e) => e,
    };
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return if e.is_connect() { ProxyError::ConnectTimeout } else { ProxyError::UpstreamTimeout };
        }
        source = err.source();
    }
    if e.is_connect() { ProxyError::Connect } else { ProxyError::BadUpstream }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Shared state handed to listeners.
pub type Tables = Arc<ArcSwap<RouteTable>>;
