//! The filter phase: the 0-RTT rule every request obeys, then the matched route's
//! request-side filters in the order they were compiled into it. A filter either lets the
//! request go on (possibly changed) or answers it. Response-side filters run in the
//! response phase (`response`).

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};

use super::context::RequestContext;
use super::error::ProxyError;
use super::mirror;
use crate::body::{ProxyBody, empty};
use crate::proxy::early_data::safe_in_early_data;
use crate::routes::{Cors, Filter, Redirect, RequestParts, Rewrite, Route};
use crate::telemetry::metrics::Metrics;

/// What a filter decided.
pub enum Flow {
    /// Go on to the backend with this request.
    Continue(Request<ProxyBody>),
    /// Answer the client with this response; no backend is asked.
    Respond(Response<ProxyBody>),
}

/// Runs the filter phase for `route`.
pub fn apply(ctx: &mut RequestContext, route: &Route, req: Request<ProxyBody>, metrics: &Metrics) -> Flow {
    if let Err(too_early) = early_data(ctx, metrics) {
        return Flow::Respond(super::error::respond_error(too_early));
    }
    let mut flow = Flow::Continue(req);
    for filter in &route.filters {
        let Flow::Continue(req) = flow else { break };
        flow = run(ctx, route, filter, req);
    }
    flow
}

/// RFC 8470: a request that came in 0-RTT early data may be a replay, so only methods safe
/// to run twice are forwarded; the others get 425 and the client sends them again after
/// the handshake.
fn early_data(ctx: &RequestContext, metrics: &Metrics) -> Result<(), ProxyError> {
    if !ctx.conn.early_data {
        return Ok(());
    }
    let safe = safe_in_early_data(&ctx.method);
    metrics.early_data_requests.with_label_values(&[if safe { "forwarded" } else { "too_early" }]).inc();
    if safe { Ok(()) } else { Err(ProxyError::TooEarly) }
}

/// Applies one request-side filter.
fn run(ctx: &mut RequestContext, route: &Route, filter: &Filter, mut req: Request<ProxyBody>) -> Flow {
    match filter {
        Filter::RequestHeaders(m) => {
            m.apply(req.headers_mut());
            Flow::Continue(req)
        }
        // The response phase applies these.
        Filter::ResponseHeaders(_) => Flow::Continue(req),
        Filter::Redirect(r) => Flow::Respond(redirect(ctx, route, r, &req)),
        Filter::Rewrite(r) => Flow::Continue(rewrite(ctx, route, r, req)),
        Filter::Mirror(m) => {
            mirror::send(ctx, m, &req);
            Flow::Continue(req)
        }
        Filter::Cors(c) => cors(ctx, c, req),
    }
}

fn parts<'a>(ctx: &'a RequestContext, route: &'a Route, req: &'a Request<ProxyBody>) -> RequestParts<'a> {
    RequestParts {
        tls: ctx.tls,
        authority: ctx.host.as_deref(),
        path: req.uri().path(),
        query: req.uri().query(),
        matched_prefix: route.path.prefix(),
    }
}

fn redirect(ctx: &RequestContext, route: &Route, r: &Redirect, req: &Request<ProxyBody>) -> Response<ProxyBody> {
    let location = r.location(&parts(ctx, route, req));
    let mut resp = Response::new(empty());
    *resp.status_mut() = r.status();
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        // The parts come from a parsed request and a checked config; should one still not
        // make a header value, say so rather than redirect nowhere.
        Err(_) => *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
    }
    resp
}

fn rewrite(ctx: &mut RequestContext, route: &Route, r: &Rewrite, mut req: Request<ProxyBody>) -> Request<ProxyBody> {
    if let Some(host) = r.hostname() {
        ctx.upstream_host = Some(host.to_string());
    }
    let Some(new) = r.path_and_query(&parts(ctx, route, &req)) else { return req };
    // A rewritten path is sent as written, like the one routed: it came from the config.
    if let Ok(pq) = PathAndQuery::try_from(new) {
        let mut uri = std::mem::take(req.uri_mut()).into_parts();
        uri.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(uri) {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// A preflight is answered here (200, with the CORS headers only for an allowed origin); an
/// actual request from an allowed origin goes on, and the response phase adds the headers.
fn cors(ctx: &mut RequestContext, c: &Cors, req: Request<ProxyBody>) -> Flow {
    let Some(origin) = req.headers().get(header::ORIGIN).filter(|o| c.allows(o)).cloned() else {
        if Cors::is_preflight(req.method(), req.headers()) {
            return Flow::Respond(Response::new(empty()));
        }
        return Flow::Continue(req);
    };
    if Cors::is_preflight(req.method(), req.headers()) {
        let mut resp = Response::new(empty());
        *resp.headers_mut() = c.preflight_headers(&origin, req.headers());
        return Flow::Respond(resp);
    }
    ctx.cors_origin = Some(origin);
    Flow::Continue(req)
}
