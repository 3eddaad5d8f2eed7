//! Request mirroring: a copy of a request's head goes to another group and its response is
//! dropped; the client's request never waits for it.
//!
//! Bounded on purpose: only requests without a body are mirrored (GET, HEAD, OPTIONS,
//! TRACE, whose bodies carry no meaning, and any request whose body is known to be empty),
//! since copying a body would mean buffering it or holding the client's request back; and
//! at most `MAX_MIRRORS_IN_FLIGHT` copies per mirror filter are in flight, the rest
//! skipped (logged at debug). A copy waits for a slot and a response no longer than the
//! mirror group's own timeouts.

use std::sync::Arc;

use http::{Method, Request};

use super::attempt::upstream_request;
use super::context::RequestContext;
use crate::body::{ProxyBody, empty};
use crate::routes::Mirror;

/// Starts a copy of `req` to the mirror's group, if it is chosen and has room.
pub fn send(ctx: &RequestContext, mirror: &Arc<Mirror>, req: &Request<ProxyBody>) {
    if !mirror.chosen() {
        return;
    }
    if !bodiless(req) {
        tracing::debug!(route = ctx.route_id(), "not mirrored: the request has a body");
        return;
    }
    let Some(permit) = mirror.try_start() else {
        tracing::debug!(group = %mirror.group.id, "not mirrored: too many mirrored requests in flight");
        return;
    };
    let group = mirror.group.clone();
    let Some(endpoint) = group.pick(&[]).cloned() else {
        tracing::debug!(group = %group.id, "not mirrored: no healthy backend");
        return;
    };
    let mut copy = Request::new(empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    // The copy has no body, whatever the original declared.
    copy.headers_mut().remove(http::header::CONTENT_LENGTH);
    copy.headers_mut().remove(http::header::TRANSFER_ENCODING);
    let copy = upstream_request(copy, &endpoint, ctx);
    let timeouts = *group.timeouts;
    tokio::spawn(async move {
        let _permit = permit;
        let Some(_slot) = endpoint.acquire(&timeouts).await else { return };
        match tokio::time::timeout(timeouts.response_headers, endpoint.send(copy)).await {
            // Dropping the response drops its body unread.
            Ok(Ok(resp)) => tracing::debug!(backend = %endpoint.address, status = resp.status().as_u16(), "mirrored"),
            Ok(Err(e)) => tracing::debug!(backend = %endpoint.address, error = %e, "mirror failed"),
            Err(_) => tracing::debug!(backend = %endpoint.address, "mirror timed out"),
        }
    });
}

/// Whether the request carries no body worth copying.
fn bodiless(req: &Request<ProxyBody>) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
        || http_body::Body::is_end_stream(req.body())
        || req.headers().get(http::header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() == b"0")
}
