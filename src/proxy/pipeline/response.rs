//! The response phase: the matched route's response-side filters (header changes, the
//! CORS headers for an allowed origin), on every response of a matched route, the
//! proxy's own answers (a 503, a redirect) included, so a browser sees the CORS headers
//! on an error too.

use http::HeaderMap;
use http::header::HeaderValue;

use crate::routes::{Filter, Route};

/// Applies `route`'s response filters; `cors_origin` is the origin a CORS filter allowed.
pub fn apply(route: &Route, cors_origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
    if !route.response_filters {
        return;
    }
    for filter in &route.filters {
        match filter {
            Filter::ResponseHeaders(m) => m.apply(headers),
            Filter::Cors(c) => {
                if let Some(origin) = cors_origin {
                    c.add_response_headers(origin, headers);
                }
            }
            Filter::RequestHeaders(_) | Filter::Redirect(_) | Filter::Rewrite(_) | Filter::Mirror(_) => {}
        }
    }
}
