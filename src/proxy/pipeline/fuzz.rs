//! Entry points for the fuzz targets in `fuzz/`: the pure pieces of the request path that
//! take attacker-controlled bytes, reachable from outside the crate without making the
//! pipeline's modules public. Not an API: hidden from the docs, may change at any time.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use http::Request;

use super::attempt::upstream_request;
use super::context::RequestContext;
use super::{ConnInfo, Downstream};
use crate::body::empty;
use crate::net::TrustedProxies;
use crate::upstream::{BackendUrl, Endpoint, EndpointRegistry, EndpointSpec, PoolSettings, UpstreamTls};

/// Whether a ClientHello offers early data (see `proxy::early_data`).
pub fn offers_early_data(stream: &[u8]) -> Option<bool> {
    crate::proxy::early_data::offers_early_data(stream)
}

/// One endpoint per upstream protocol, made once: a registry's clients bind nothing
/// until a request is sent, and none is sent here.
fn endpoints() -> &'static [Arc<Endpoint>] {
    static ENDPOINTS: OnceLock<(EndpointRegistry, Vec<Arc<Endpoint>>)> = OnceLock::new();
    &ENDPOINTS
        .get_or_init(|| {
            let registry = EndpointRegistry::default();
            let eps = ["http://192.0.2.1:80", "h2c://192.0.2.1:81", "https://192.0.2.1:443", "h3://192.0.2.1:443"]
                .iter()
                .filter_map(|u| {
                    let spec = EndpointSpec {
                        url: BackendUrl::parse(u).ok()?,
                        pool: PoolSettings::default(),
                        connect_timeout: std::time::Duration::from_secs(1),
                        tls: UpstreamTls { insecure_skip_verify: true, ..UpstreamTls::default() },
                    };
                    registry.endpoint(&spec).ok()
                })
                .collect();
            (registry, eps)
        })
        .1
}

/// Runs a downstream request through the pipeline's request rewriting (path
/// normalisation, then hop-by-hop stripping, forwarding headers, upgrade and authority
/// handling) for the endpoint of protocol `which` (0-3), and returns what would be sent
/// upstream; `None` when the path is refused (400).
pub fn rewrite_request(
    req: Request<()>,
    which: u8,
    client: SocketAddr,
    early_data: bool,
    tcp: bool,
) -> Option<Request<()>> {
    let eps = endpoints();
    let endpoint = eps.get(usize::from(which) % eps.len().max(1))?;
    let protocol = if tcp { Downstream::Tcp } else { Downstream::H3 };
    let mut req = req.map(|()| empty());
    let mut ctx = RequestContext::new(&mut req, ConnInfo { client, protocol, early_data }, &TrustedProxies::default());
    let req = super::normalize(&mut ctx, req).ok()?;
    Some(upstream_request(req, endpoint, &ctx).map(|_| ()))
}
