//! The per-request context the pipeline's phases share: what was asked, of which route,
//! and which backend answered. Filled in as the phases run, read by the log phase.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request};

use super::ConnInfo;
use crate::body::ProxyBody;
use crate::net::TrustedProxies;
use crate::proxy::headers::{Hop, ensure_request_id};
use crate::proxy::retry::is_idempotent;
use crate::proxy::upgrade;
use crate::routes::{Listener, Route};

/// One request's journey through the pipeline.
#[derive(Debug)]
pub struct RequestContext {
    pub started: Instant,
    pub conn: ConnInfo,
    /// Who sent it: the peer, whether it is a trusted proxy, the client behind it.
    pub hop: Hop,
    pub request_id: HeaderValue,
    /// The authority the client asked for: `:authority` (HTTP/2, HTTP/3, absolute-form) or Host.
    pub host: Option<String>,
    pub method: Method,
    pub path: String,
    /// The method may be sent twice (a 502/503 may go to another backend).
    pub idempotent: bool,
    /// The protocol of an HTTP/1.1 `Upgrade` handshake (WebSocket), if one was asked for.
    pub upgrade: Option<HeaderValue>,
    /// The route the request matched, once the route phase found one.
    pub route: Option<Arc<Route>>,
    /// The backend that answered, or the last one tried.
    pub backend: Option<String>,
    /// The request came in over TLS (HTTPS, HTTP/3) rather than on the plaintext listener:
    /// its scheme, and which routes it may take (a plaintext request takes only routes
    /// whose listener scope is `Both` or `Plain`).
    pub tls: bool,
    /// The authority the backend is sent instead of the client's (a URL rewrite's
    /// hostname); `X-Forwarded-Host` keeps the client's.
    pub upstream_host: Option<String>,
    /// The request's `Origin`, when a CORS filter of its route allowed it: the response
    /// phase adds the CORS headers for it.
    pub cors_origin: Option<HeaderValue>,
}

impl RequestContext {
    /// Reads what the phases need from the request, giving it an `x-request-id` if it has none.
    pub fn new(req: &mut Request<ProxyBody>, conn: ConnInfo, trusted: &TrustedProxies) -> Self {
        let request_id = ensure_request_id(req.headers_mut());
        let method = req.method().clone();
        Self {
            started: Instant::now(),
            conn,
            hop: Hop::resolve(req.headers(), conn.client.ip(), trusted),
            request_id,
            host: request_host(req),
            idempotent: is_idempotent(&method),
            method,
            path: req.uri().path().to_string(),
            upgrade: upgrade::requested(req.headers(), req.version()),
            route: None,
            backend: None,
            tls: conn.protocol.tls(),
            upstream_host: None,
            cors_origin: None,
        }
    }

    /// The listener the request came in on.
    pub fn listener(&self) -> Listener {
        if self.tls { Listener::Tls } else { Listener::Plain }
    }

    /// The matched route's id, or "" before (or without) a match.
    pub fn route_id(&self) -> &str {
        self.route.as_ref().map_or("", |r| r.id.as_str())
    }
}

fn request_host<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
}
