//! Test support for the data plane: scripted backends behind `Endpoint::stub`, and route
//! tables of one catch-all route to them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::FutureExt;
use futures::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::Shared;
use crate::body::{ProxyBody, full};
use crate::net::TrustedProxies;
use crate::routes::{CertSet, PathRule, PathType, RouteTable, RouteTableBuilder};
use crate::telemetry::metrics::Metrics;
use crate::upstream::{
    BackendGroup, BackendUrl, Endpoint, EndpointSpec, PassiveCheck, PoolSettings, SendError, Strategy, StubTransport,
    Timeouts, UpstreamBody, UpstreamTls,
};

/// What a scripted backend does with one request.
#[derive(Clone, Copy, Debug)]
pub enum Act {
    /// Answers with this status (and body "from NAME").
    Status(u16),
    /// Fails to connect: nothing reached it.
    Refuse,
    /// Reads the whole request body, then breaks the connection.
    ReadThenBreak,
    /// Never answers.
    Stall,
    /// Answers 200 after this many milliseconds.
    Slow(u64),
}

/// A backend that plays its script in order (the last act repeats), and records what it got.
pub struct Scripted {
    name: &'static str,
    script: Mutex<VecDeque<Act>>,
    pub seen: Mutex<Vec<Request<()>>>,
}

impl Scripted {
    pub fn new(name: &'static str, script: &[Act]) -> Arc<Self> {
        Arc::new(Self { name, script: Mutex::new(script.iter().copied().collect()), seen: Mutex::default() })
    }

    pub fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn next_act(&self) -> Act {
        let mut script = self.script.lock().unwrap();
        if script.len() > 1 { script.pop_front().unwrap() } else { *script.front().unwrap() }
    }
}

impl StubTransport for Scripted {
    fn send(&self, req: Request<ProxyBody>) -> BoxFuture<'static, Result<Response<UpstreamBody>, SendError>> {
        let act = self.next_act();
        let (parts, body) = req.into_parts();
        self.seen.lock().unwrap().push(Request::from_parts(parts, ()));
        let name = self.name;
        async move {
            match act {
                Act::Status(code) => {
                    let mut resp = Response::new(UpstreamBody::Stub(full(format!("from {name}"))));
                    *resp.status_mut() = StatusCode::from_u16(code).unwrap();
                    Ok(resp)
                }
                Act::Refuse => Err(SendError::NotSent("connection refused".into())),
                Act::ReadThenBreak => {
                    // As hyper does: a body that is already at its end is never polled.
                    if !http_body::Body::is_end_stream(&body) {
                        let _ = body.collect().await;
                    }
                    Err(SendError::Broken("connection reset".into()))
                }
                Act::Stall => futures::future::pending().await,
                Act::Slow(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(Response::new(UpstreamBody::Stub(full(format!("from {name}")))))
                }
            }
        }
        .boxed()
    }
}

pub fn spec(port: u16) -> EndpointSpec {
    EndpointSpec {
        url: BackendUrl::parse(&format!("http://192.0.2.1:{port}")).unwrap(),
        pool: PoolSettings::default(),
        connect_timeout: Duration::from_secs(1),
        tls: UpstreamTls::default(),
    }
}

/// A table with one catch-all route to a round-robin group of `backends`, in order,
/// without passive health checks (so failures never eject).
pub fn table(backends: &[Arc<Scripted>], timeouts: Timeouts) -> (Shared, Vec<Arc<Endpoint>>) {
    table_with(backends, timeouts, None)
}

pub fn table_with(
    backends: &[Arc<Scripted>],
    timeouts: Timeouts,
    passive: Option<PassiveCheck>,
) -> (Shared, Vec<Arc<Endpoint>>) {
    let (table, endpoints) = route_table(backends, timeouts, passive, CertSet::default());
    (shared(table), endpoints)
}

/// The table itself, with `certs` for the listeners to present.
pub fn route_table(
    backends: &[Arc<Scripted>],
    timeouts: Timeouts,
    passive: Option<PassiveCheck>,
    certs: CertSet,
) -> (RouteTable, Vec<Arc<Endpoint>>) {
    let endpoints: Vec<Arc<Endpoint>> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| Endpoint::stub(&spec(8000 + i as u16), b.clone() as Arc<dyn StubTransport>))
        .collect();
    let members = endpoints.iter().map(|e| (e.clone(), 1)).collect();
    let mut builder = RouteTableBuilder::new(certs);
    let group =
        builder.add_group(BackendGroup::new("g".into(), Strategy::RoundRobin, timeouts, members).with_passive(passive));
    builder.add_route("r", None, PathRule::new("/", PathType::Prefix).unwrap(), group).unwrap();
    (builder.build(1), endpoints)
}

pub fn shared(table: RouteTable) -> Shared {
    let metrics = Arc::new(Metrics::new().unwrap());
    Shared {
        tables: Arc::new(ArcSwap::from_pointee(table)),
        body_idle_hits: metrics.limit_counter("request_body_idle"),
        metrics,
        trusted: TrustedProxies::default(),
        limits: Arc::default(),
        scope_port: None,
    }
}
