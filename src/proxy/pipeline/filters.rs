//! The filter phase: the 0-RTT rule every request obeys, then the matched route's filters
//! in the order they were compiled into it. A filter either lets the request go on
//! (possibly changed) or answers it.

use http::{Request, Response};

use super::context::RequestContext;
use super::error::ProxyError;
use crate::body::ProxyBody;
use crate::proxy::early_data::safe_in_early_data;
use crate::routes::{Filter, Route};
use crate::telemetry::metrics::Metrics;

/// What a filter decided.
pub enum Flow {
    /// Go on to the backend with this request.
    Continue(Request<ProxyBody>),
    /// Answer the client with this response; no backend is asked.
    Respond(Response<ProxyBody>),
}

/// Runs the filter phase for `route`.
pub fn apply(ctx: &RequestContext, route: &Route, req: Request<ProxyBody>, metrics: &Metrics) -> Flow {
    if let Err(too_early) = early_data(ctx, metrics) {
        return Flow::Respond(super::error::respond_error(too_early));
    }
    let mut flow = Flow::Continue(req);
    for filter in &route.filters {
        let Flow::Continue(req) = flow else { break };
        flow = run(filter, req);
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

/// Applies one filter.
fn run(filter: &Filter, _req: Request<ProxyBody>) -> Flow {
    match *filter {}
}
