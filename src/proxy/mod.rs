//! The data plane: HTTP/3 (QUIC) and HTTPS-over-TCP listeners on one port, feeding the
//! shared request pipeline from the current route table.

mod admission;
mod early_data;
mod h3;
mod h3_guard;
mod headers;
mod pipeline;
mod proxy_header;
mod retry;
mod retry_token;
mod scoped;
mod tcp;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Hooks for the fuzz targets (`fuzz/`), not an API.
#[doc(hidden)]
pub use pipeline::fuzz as fuzz_hooks;
pub use pipeline::{ConnInfo, Downstream, Shared, Tables, handle};
pub use scoped::ScopedListeners;

use crate::config::{CongestionControl, Limits};
use crate::net::TrustedProxies;
use crate::routes::RouteTable;
use crate::telemetry::metrics::Metrics;
use crate::tls::Resumption;

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot bind {proto} {addr}: {source}")]
    Bind { proto: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("retry token key {path}: {reason}")]
    RetryKey { path: String, reason: String },
}

/// How the listeners are set up.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    pub address: SocketAddr,
    /// Port advertised in `Alt-Svc` (the listen port unless behind a load balancer).
    pub alt_svc_port: Option<u16>,
    pub congestion: CongestionControl,
    /// Session resumption and 0-RTT.
    pub resumption: Resumption,
    /// Proxies in front whose `X-Forwarded-For`/`Forwarded` are believed.
    pub trusted_proxies: TrustedProxies,
    /// What one client may take (sizes, deadlines, caps).
    pub limits: Limits,
    /// The plaintext listener and the PROXY protocol.
    pub tcp: TcpOptions,
}

/// What the TCP listeners do beyond HTTPS on `ListenOptions::address`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpOptions {
    /// A plaintext HTTP listener (HTTP/1.1, and HTTP/2 with prior knowledge); off when `None`.
    pub http_listen: Option<SocketAddr>,
    /// On both TCP listeners, connections from `trusted_proxies` must start with a PROXY
    /// protocol header (v2, or v1), whose source address is the client's.
    pub proxy_protocol: bool,
}

/// Picks certificates by SNI from the route table currently published, so certificates
/// change atomically with the routes that need them: a default listener's from the table's
/// certificates, a scoped port's from its scope's.
#[derive(Debug)]
struct TableCerts {
    tables: Tables,
    scope: Option<String>,
}

impl ResolvesServerCert for TableCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.tables.load().certs_for(self.scope.as_deref()).resolve(hello.server_name())
    }
}

/// Builds a listener's TLS setups, QUIC and TCP, around a certificate resolver: once for
/// the default listeners, and again for each scoped TLS port, whose resolver serves only its
/// scope's certificates. Everything but the resolver is shared: transport settings, session
/// resumption (tickets open on every listener) and the Retry token key.
pub(crate) struct TlsSetups {
    options: ListenOptions,
    metrics: Arc<Metrics>,
    token_key: Option<Arc<dyn quinn_proto::crypto::HandshakeTokenKey>>,
}

impl TlsSetups {
    fn new(options: &ListenOptions, metrics: Arc<Metrics>) -> Result<Self, ListenError> {
        let token_key = options.limits.retry_token_key_file.as_deref().map(retry_token_key).transpose()?;
        Ok(Self { options: options.clone(), metrics, token_key })
    }

    fn build(
        &self,
        resolver: Arc<dyn ResolvesServerCert>,
    ) -> Result<(quinn::ServerConfig, tokio_rustls::TlsAcceptor), ListenError> {
        let tls_err = |e: &dyn std::fmt::Display| ListenError::Tls(e.to_string());
        let (options, metrics) = (&self.options, &self.metrics);
        let quic_tls = crate::tls::server_config(resolver.clone(), &[b"h3"], true, &options.resumption, metrics)
            .map_err(|e| tls_err(&e))?;
        let quic_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(quic_tls).map_err(|e| tls_err(&e))?;
        let observed = early_data::ObservedServerCrypto { inner: Arc::new(quic_crypto), metrics: metrics.clone() };
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(observed));
        server_config.transport_config(Arc::new(transport_config(options.congestion, &options.limits)));
        if let Some(key) = &self.token_key {
            server_config.token_key(key.clone());
        }
        let tcp_tls = crate::tls::server_config(resolver, &[b"h2", b"http/1.1"], false, &options.resumption, metrics)
            .map_err(|e| tls_err(&e))?;
        Ok((server_config, tokio_rustls::TlsAcceptor::from(Arc::new(tcp_tls))))
    }

    /// The setups of a scoped TLS port: its scope's certificates only.
    pub(crate) fn for_scope(
        &self,
        tables: &Tables,
        scope: &str,
    ) -> Result<(quinn::ServerConfig, tokio_rustls::TlsAcceptor), ListenError> {
        self.build(Arc::new(TableCerts { tables: tables.clone(), scope: Some(scope.to_string()) }))
    }
}

/// Running listeners; `shutdown` drains them.
pub struct DataPlane {
    pub local_addr: SocketAddr,
    /// The plaintext HTTP listener's address, when there is one.
    pub http_addr: Option<SocketAddr>,
    tables: Tables,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    endpoint: quinn::Endpoint,
    resumption: Resumption,
    scoped: ScopedListeners,
}

/// Tries of [`bind_pair`] with port 0: another process can hold TCP on the port UDP got.
const PAIR_BIND_TRIES: usize = 8;

/// A QUIC endpoint and a TCP listener on the same address. With port 0, TCP takes the port
/// UDP was given, and a port whose TCP side is taken is given up for another.
async fn bind_pair(
    server_config: &quinn::ServerConfig,
    address: SocketAddr,
) -> Result<(quinn::Endpoint, SocketAddr, TcpListener), ListenError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let endpoint = quinn::Endpoint::server(server_config.clone(), address).map_err(|source| ListenError::Bind {
            proto: "UDP",
            addr: address,
            source,
        })?;
        let local_addr =
            endpoint.local_addr().map_err(|source| ListenError::Bind { proto: "UDP", addr: address, source })?;
        match TcpListener::bind(local_addr).await {
            Ok(tcp) => return Ok((endpoint, local_addr, tcp)),
            Err(e) if address.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse && tries < PAIR_BIND_TRIES => {
                endpoint.close(0u32.into(), b"");
            }
            Err(source) => return Err(ListenError::Bind { proto: "TCP", addr: local_addr, source }),
        }
    }
}

impl DataPlane {
    /// Binds UDP and TCP on the same address (with port 0, TCP takes UDP's port) and
    /// starts serving `tables`, recording into `metrics`.
    pub async fn start(options: &ListenOptions, tables: Tables, metrics: Arc<Metrics>) -> Result<Self, ListenError> {
        let resumption = &options.resumption;
        let tls = Arc::new(TlsSetups::new(options, metrics.clone())?);
        let (server_config, acceptor) = tls.build(Arc::new(TableCerts { tables: tables.clone(), scope: None }))?;
        let (endpoint, local_addr, tcp) = bind_pair(&server_config, options.address).await?;

        let alt_svc = Arc::new(tcp::alt_svc(options.alt_svc_port.unwrap_or(local_addr.port())));
        let http = match options.tcp.http_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| ListenError::Bind {
                proto: "TCP",
                addr,
                source,
            })?),
            None => None,
        };
        let http_addr = match &http {
            Some(l) => Some(l.local_addr().map_err(|source| ListenError::Bind {
                proto: "TCP",
                addr: options.tcp.http_listen.unwrap_or(local_addr),
                source,
            })?),
            None => None,
        };

        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let limits = Arc::new(options.limits.clone());
        let shared = Arc::new(Shared {
            tables: tables.clone(),
            trusted: options.trusted_proxies.clone(),
            limits: limits.clone(),
            body_idle_hits: metrics.limit_counter("request_body_idle"),
            metrics,
            scope_port: None,
        });
        let admission = admission::Admission::new(&limits);
        tracker.spawn(h3::serve(
            endpoint.clone(),
            shared.clone(),
            admission.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
        let proxy_protocol = options.tcp.proxy_protocol;
        let scoped = ScopedListeners::new(scoped::Setup {
            ip: local_addr.ip(),
            shared: shared.clone(),
            admission: admission.clone(),
            tls: tls.clone(),
            tables: tables.clone(),
            proxy_protocol,
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        });
        if let Some(http) = http {
            let plain = tcp::Listener { security: tcp::Security::Plain, proxy_protocol };
            tracker.spawn(tcp::serve(
                http,
                plain,
                shared.clone(),
                admission.clone(),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        let https = tcp::Listener { security: tcp::Security::Tls { acceptor, alt_svc }, proxy_protocol };
        tracker.spawn(tcp::serve(tcp, https, shared, admission, shutdown.clone(), tracker.clone()));
        tracing::info!(
            address = %local_addr,
            http_address = http_addr.map(|a| a.to_string()),
            proxy_protocol,
            early_data = resumption.early_data(),
            shared_ticket_keys = matches!(resumption, Resumption::SharedKeys(_)),
            "listening (HTTP/3 on UDP, HTTP/1.1 and HTTP/2 on TCP)"
        );
        scoped.sync(tables.load().scoped_ports());
        Ok(Self { local_addr, http_addr, tables, shutdown, tracker, endpoint, resumption: resumption.clone(), scoped })
    }

    /// Publishes a new route table, and listens on the scoped ports it names (and no
    /// others); requests already routed finish on the old one.
    pub fn publish(&self, table: RouteTable) {
        let table = Arc::new(table);
        self.tables.store(table.clone());
        self.scoped.sync(table.scoped_ports());
    }

    /// The scoped ports' listeners, for a publisher that swaps `tables` itself: it calls
    /// `sync` with each table it publishes.
    pub fn scoped_listeners(&self) -> ScopedListeners {
        self.scoped.clone()
    }

    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// How sessions resume; shared ticket keys can be replaced while serving.
    pub fn resumption(&self) -> &Resumption {
        &self.resumption
    }

    /// Stops accepting, sends GOAWAY, and waits up to `drain` for in-flight requests.
    /// Returns whether everything finished in time.
    pub async fn shutdown(self, drain: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        let drained = tokio::time::timeout(drain, self.tracker.wait()).await.is_ok();
        let endpoints: Vec<quinn::Endpoint> =
            std::iter::once(self.endpoint.clone()).chain(self.scoped.endpoints()).collect();
        for endpoint in &endpoints {
            endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
        }
        // Let the CONNECTION_CLOSE frames leave before the process exits.
        let idle = futures::future::join_all(endpoints.iter().map(quinn::Endpoint::wait_idle));
        let _ = tokio::time::timeout(Duration::from_secs(1), idle).await;
        drained
    }
}

/// The keys sealing Retry tokens, from a file shared by the replicas (see `retry_token`).
fn retry_token_key(path: &std::path::Path) -> Result<Arc<dyn quinn_proto::crypto::HandshakeTokenKey>, ListenError> {
    let bad = |reason: String| ListenError::RetryKey { path: path.display().to_string(), reason };
    let raw = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| bad(e.to_string()))?);
    let keys = retry_token::parse_keys(&raw).map_err(|e| bad(e.to_string()))?;
    let keys = retry_token::TokenKeys::new(&keys).ok_or_else(|| bad("no key".into()))?;
    Ok(Arc::new(keys))
}

/// Unidirectional streams a client may have open: HTTP/3 needs three (control, QPACK
/// encoder and decoder); the rest is room for extensions and grease.
const MAX_CONCURRENT_UNI_STREAMS: u32 = 8;
// quinn-proto allocates the state of every stream a client may open when the connection is
// created, in two hash tables (see `h3::raised_stream_limit`): up to 112 entries they fit in
// 128 buckets, about 5 KiB per connection. The send table also holds our 3 uni streams.
const _: () = assert!(h3::INITIAL_CONCURRENT_REQUESTS + MAX_CONCURRENT_UNI_STREAMS <= 112);
const _: () = assert!(h3::INITIAL_CONCURRENT_REQUESTS + 3 <= 112);

fn transport_config(congestion: CongestionControl, limits: &Limits) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    // Raised per connection when it is busy (h3::raised_stream_limit).
    transport.max_concurrent_bidi_streams(h3::INITIAL_CONCURRENT_REQUESTS.into());
    transport.max_concurrent_uni_streams(MAX_CONCURRENT_UNI_STREAMS.into());
    // No QUIC DATAGRAM frames: nothing here reads them (HTTP/3 datagrams are not offered),
    // and quinn would otherwise buffer up to 1.25 MB of them per connection for a client
    // that sends them unread. A client that sends one anyway breaks the protocol.
    transport.datagram_receive_buffer_size(None);
    if let Ok(idle) = quinn::IdleTimeout::try_from(limits.idle_timeout.0) {
        transport.max_idle_timeout(Some(idle));
    }
    // What a client may make us buffer: quinn's connection window is unbounded by default.
    transport.stream_receive_window(limits.quic_stream_receive_window.into());
    transport.receive_window(limits.quic_connection_receive_window.into());
    match congestion {
        CongestionControl::Cubic => {
            transport.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
        }
        CongestionControl::Bbr => {
            transport.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        }
    };
    transport
}

/// A new, empty set of tables to publish into.
pub fn tables(initial: RouteTable) -> Tables {
    Arc::new(ArcSwap::from_pointee(initial))
}

/// `/debug/routes` for the admin server: whatever table `tables` serves when asked.
pub fn debug_routes(tables: &Tables, from_anywhere: bool) -> crate::telemetry::admin::DebugRoutes {
    let tables = tables.clone();
    crate::telemetry::admin::DebugRoutes { view: Arc::new(move || tables.load().debug_view()), from_anywhere }
}
