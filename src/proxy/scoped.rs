//! The listeners of scoped ports (a Gateway with an address of its own, see
//! `RouteTable::scoped_ports`): opened when a published table names a port, closed when
//! none does any more. Closing is graceful, as at shutdown: no new connections, GOAWAY on
//! HTTP/3 and HTTP/2, and the requests in flight finish.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::Admission;
use super::pipeline::Shared;
use super::{ListenError, h3, tcp};
use crate::routes::ScopedPort;

/// What every scoped listener shares with the default ones: the pipeline's state, the
/// per-client caps, the TLS setups and the shutdown.
pub(super) struct Setup {
    pub ip: IpAddr,
    pub shared: Arc<Shared>,
    pub admission: Arc<Admission>,
    /// Each TLS port gets setups of its own, serving its scope's certificates.
    pub tls: Arc<super::TlsSetups>,
    pub tables: super::Tables,
    pub proxy_protocol: bool,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

/// One open scoped port.
struct Open {
    kind: ScopedPort,
    stop: CancellationToken,
    /// The QUIC endpoint of a TLS port, closed at shutdown.
    endpoint: Option<quinn::Endpoint>,
}

/// The scoped ports listened on; cloned handles share them.
#[derive(Clone)]
pub struct ScopedListeners(Arc<Inner>);

struct Inner {
    setup: Setup,
    state: Mutex<State>,
}

/// The ports listened on, the ports the last table wants, and whether a retry of the
/// ports that could not be bound is pending.
#[derive(Default)]
struct State {
    open: BTreeMap<u16, Open>,
    wanted: BTreeMap<u16, ScopedPort>,
    retrying: bool,
}

/// The first wait before binding a port that was busy again, doubled up to
/// [`RETRY_MAX`] while it stays busy: a port held for a moment (by a process that is
/// going, or by another socket's ephemeral port) comes up without waiting for the next
/// table, and one held for good costs a warning every half minute.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

impl ScopedListeners {
    pub(super) fn new(setup: Setup) -> Self {
        Self(Arc::new(Inner { setup, state: Mutex::new(State::default()) }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A map of handles, never left half-changed by a panic.
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The scoped ports listened on now.
    pub fn ports(&self) -> Vec<u16> {
        self.state().open.keys().copied().collect()
    }

    /// Listens on exactly the ports of `wanted`: closes the others (gracefully), opens the
    /// new ones. A port that cannot be bound is logged and tried again, with a growing
    /// wait, until it is bound or no table wants it.
    pub fn sync(&self, wanted: &BTreeMap<u16, ScopedPort>) {
        let mut state = self.state();
        state.wanted = wanted.clone();
        if self.reconcile(&mut state) > 0 && !state.retrying {
            state.retrying = self.retry_later();
        }
    }

    /// Retries the ports that could not be bound, on the runtime `sync` was called on,
    /// until none is left; false when there is no runtime to do it on.
    fn retry_later(&self) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let this = self.clone();
        let shutdown = self.0.setup.shutdown.clone();
        self.0.setup.tracker.spawn_on(
            async move {
                let mut wait = RETRY_FIRST;
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                    let mut state = this.state();
                    if this.reconcile(&mut state) == 0 {
                        state.retrying = false;
                        return;
                    }
                    wait = (wait * 2).min(RETRY_MAX);
                }
            },
            &runtime,
        );
        true
    }

    /// Brings the open ports in line with `state.wanted`; the number that could not be
    /// bound.
    fn reconcile(&self, state: &mut State) -> usize {
        let setup = &self.0.setup;
        if setup.shutdown.is_cancelled() {
            return 0;
        }
        let State { open, wanted, .. } = state;
        open.retain(|port, o| {
            let keep = wanted.get(port) == Some(&o.kind);
            if !keep {
                tracing::info!(port, scope = %o.kind.scope, "closing a scoped port");
                o.stop.cancel();
            }
            keep
        });
        let mut failed = 0;
        for (port, kind) in wanted.iter() {
            if open.contains_key(port) {
                continue;
            }
            match listen(setup, *port, kind) {
                Ok(o) => {
                    tracing::info!(port, scope = %kind.scope, tls = kind.tls, "listening on a scoped port");
                    open.insert(*port, o);
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(port, scope = %kind.scope, error = %e, "cannot listen on a scoped port; trying again later");
                }
            }
        }
        failed
    }

    /// The QUIC endpoints, for the shutdown's last step.
    pub(super) fn endpoints(&self) -> Vec<quinn::Endpoint> {
        self.state().open.values().filter_map(|o| o.endpoint.clone()).collect()
    }
}

/// Binds `port` (TCP, and UDP for a TLS port) and serves it until its stop token (a child
/// of the shutdown) is cancelled.
fn listen(setup: &Setup, port: u16, kind: &ScopedPort) -> Result<Open, ListenError> {
    let addr = SocketAddr::new(setup.ip, port);
    let bind = |proto: &'static str| move |source: std::io::Error| ListenError::Bind { proto, addr, source };
    let shared = Arc::new(setup.shared.scoped(port));
    let stop = setup.shutdown.child_token();
    // std's bind sets SO_REUSEADDR, as tokio's does: a port closed a moment ago (its old
    // connections in TIME_WAIT) can be opened again.
    let std_tcp = std::net::TcpListener::bind(addr).map_err(bind("TCP"))?;
    std_tcp.set_nonblocking(true).map_err(bind("TCP"))?;
    let tls = if kind.tls {
        let (quic, acceptor) = setup.tls.for_scope(&setup.tables, &kind.scope)?;
        Some((quinn::Endpoint::server(quic, addr).map_err(bind("UDP"))?, acceptor))
    } else {
        None
    };
    let tcp = TcpListener::from_std(std_tcp).map_err(bind("TCP"))?;
    let endpoint = tls.as_ref().map(|(endpoint, _)| endpoint.clone());
    let security = match tls {
        Some((endpoint, acceptor)) => {
            setup.tracker.spawn(h3::serve(
                endpoint,
                shared.clone(),
                setup.admission.clone(),
                stop.clone(),
                setup.tracker.clone(),
            ));
            let alt_svc = Arc::new(tcp::alt_svc(kind.alt_svc_port.unwrap_or(port)));
            tcp::Security::Tls { acceptor, alt_svc }
        }
        None => tcp::Security::Plain,
    };
    let listener = tcp::Listener { security, proxy_protocol: setup.proxy_protocol };
    setup.tracker.spawn(tcp::serve(
        tcp,
        listener,
        shared,
        setup.admission.clone(),
        stop.clone(),
        setup.tracker.clone(),
    ));
    Ok(Open { kind: kind.clone(), stop, endpoint })
}
