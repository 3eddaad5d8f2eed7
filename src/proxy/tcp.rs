//! The TCP listeners: HTTPS (HTTP/1.1 and HTTP/2 by ALPN, with `Alt-Svc` so browsers
//! discover the HTTP/3 listener on the same port) and, when configured, plaintext HTTP
//! (HTTP/1.1 and HTTP/2 with prior knowledge). One path for both: accept and admit → the
//! PROXY protocol header (trusted peers, when on) → TLS or not → serve HTTP.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use http::header::ALT_SVC;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::admission::{Admission, Handshaking};
use super::pipeline::{self, ConnInfo, Downstream, Shared};
use super::proxy_header::{self, HeaderReadError};
use crate::config::Limits;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::traces;

/// The `Alt-Svc` value advertising HTTP/3 on `port`.
pub fn alt_svc(port: u16) -> HeaderValue {
    HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400")).unwrap_or(HeaderValue::from_static("clear"))
}

/// How a listener's connections get to HTTP.
#[derive(Clone)]
pub enum Security {
    /// TLS within the handshake deadline, then HTTP/2 or HTTP/1.1 as ALPN chose; responses
    /// carry `alt_svc`.
    Tls { acceptor: TlsAcceptor, alt_svc: Arc<HeaderValue> },
    /// Plain HTTP: HTTP/1.1, or HTTP/2 with prior knowledge (h2c, what gRPC clients speak
    /// to `http://`), told apart by the connection preface. No `Alt-Svc`: browsers use
    /// alternative services only for `https://` origins, so advertising h3 here would be
    /// bytes on every response for nobody.
    Plain,
}

/// One TCP listener's setup.
#[derive(Clone)]
pub struct Listener {
    pub security: Security,
    /// A connection from a trusted proxy must start with a PROXY protocol header (v2 or
    /// v1), whose source address is the client. Other peers are served as they are.
    pub proxy_protocol: bool,
}

/// Accepts connections until `shutdown`, then lets open connections finish their
/// in-flight requests (HTTP/2 GOAWAY, HTTP/1.1 `Connection: close`).
pub async fn serve(
    listener: TcpListener,
    setup: Listener,
    shared: Arc<Shared>,
    admission: Arc<Admission>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let graceful = GracefulShutdown::new();
    let setup = Arc::new(setup);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Only a trusted proxy's header is read; anyone else's bytes are TLS or HTTP, so
        // a PROXY header from them fails as garbage and names nobody.
        let expects_header = setup.proxy_protocol && shared.trusted.trusts(peer.ip());
        // A balancer's connections count against the client it names, once it has.
        let admitted = if expects_header { admission.handshake_unattributed() } else { admission.handshake(peer.ip()) };
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(refusal) => {
                // Closing at once is the polite refusal TCP has.
                shared.metrics.limit_hit(refusal.label());
                tracing::debug!(%peer, limit = refusal.label(), "TCP connection refused");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (setup, shared, watcher) = (setup.clone(), shared.clone(), graceful.watcher());
        let span = tracing::debug_span!("tcp_connection", client = %peer);
        tracker.spawn(connection(stream, peer, admitted, expects_header, setup, shared, watcher).instrument(span));
    }
    drop(listener);
    graceful.shutdown().await;
}

/// One connection up to HTTP: the PROXY header when expected, then the TLS handshake
/// within its deadline (or none, on the plaintext listener).
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    admitted: Handshaking,
    expects_header: bool,
    setup: Arc<Listener>,
    shared: Arc<Shared>,
    watcher: Watcher,
) {
    let limits = shared.limits.clone();
    let mut stream = WriteDeadline::new(stream, limits.response_write_timeout.0, shared.metrics.clone());
    let (client, admitted) = if expects_header {
        match proxied_client(&mut stream, peer, admitted, &shared).await {
            Some(named) => named,
            None => return,
        }
    } else {
        (peer, admitted)
    };
    match &setup.security {
        Security::Tls { acceptor, alt_svc } => {
            let tls = match tokio::time::timeout(limits.handshake_timeout.0, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => {
                    shared.metrics.limit_hit("handshake_timeout");
                    return tracing::debug!("TLS handshake timed out");
                }
            };
            // The protocol is the one ALPN agreed, not what the first bytes look like, so a
            // client that chose h2 and sends no HTTP/2 preface gets an HTTP/2 error.
            let h2_only = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
            let conn = ConnInfo { client, protocol: Downstream::Tcp, early_data: false };
            http(tls, h2_only, conn, Some(alt_svc.clone()), admitted, shared, watcher).await;
        }
        Security::Plain => {
            let conn = ConnInfo { client, protocol: Downstream::Cleartext, early_data: false };
            http(stream, false, conn, None, admitted, shared, watcher).await;
        }
    }
}

/// A trusted proxy's connection: its PROXY header, read within the header deadline,
/// names the client (LOCAL and address-less headers: the proxy itself), whose per-IP caps
/// then apply. `None` when the connection is to be closed: no valid header in time, or
/// the client is at its caps.
async fn proxied_client(
    stream: &mut WriteDeadline<TcpStream>,
    peer: SocketAddr,
    admitted: Handshaking,
    shared: &Shared,
) -> Option<(SocketAddr, Handshaking)> {
    let header = match proxy_header::read(stream, shared.limits.header_timeout.0).await {
        Ok(header) => header,
        Err(e) => {
            if matches!(e, HeaderReadError::Timeout(_)) {
                shared.metrics.limit_hit("header_timeout");
            }
            tracing::debug!(error = %e, "a trusted proxy's connection without a valid PROXY header: closed");
            return None;
        }
    };
    let client = header.source.unwrap_or(peer);
    match admitted.attribute(client.ip()) {
        Ok(admitted) => {
            tracing::debug!(%client, "PROXY protocol header");
            Some((client, admitted))
        }
        Err(refusal) => {
            shared.metrics.limit_hit(refusal.label());
            tracing::debug!(%client, limit = refusal.label(), "TCP connection refused");
            None
        }
    }
}

/// HTTP on an established connection: HTTP/2 only (`h2_only`, ALPN chose it) or HTTP/1.1
/// with upgrades and HTTP/2 by preface, until the client leaves, the connection idles past
/// its limits, or shutdown drains it.
async fn http<I>(
    io: I,
    h2_only: bool,
    conn_info: ConnInfo,
    alt_svc: Option<Arc<HeaderValue>>,
    admitted: Handshaking,
    shared: Arc<Shared>,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = shared.limits.clone();
    let _connected = admitted.established();
    let activity = Arc::new(Activity::new());
    let (metrics, open) = (shared.metrics.clone(), shared.metrics.tcp_connections_open.clone());
    let seen = activity.clone();
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let in_flight = seen.begin();
        request(shared.clone(), alt_svc.clone(), conn_info, in_flight, req)
    });
    open.inc();
    // HTTP/2 has no Upgrade; `http2_only` is ignored with upgrades.
    let builder = builder(&limits);
    let io = TokioIo::new(io);
    let mut conn: Pin<Box<dyn std::future::Future<Output = _> + Send>> = if h2_only {
        Box::pin(watcher.watch(builder.http2_only().serve_connection(io, service).into_owned()))
    } else {
        Box::pin(watcher.watch(builder.serve_connection_with_upgrades(io, service).into_owned()))
    };
    let ended = loop {
        let check = activity.deadline(&limits);
        tokio::select! {
            ended = conn.as_mut() => break ended,
            () = tokio::time::sleep_until(check) => {
                if let Some(why) = activity.expired(&limits) {
                    if why == "header_timeout" {
                        metrics.limit_hit(why);
                    }
                    tracing::debug!(reason = why, "closing an idle connection");
                    break Ok(());
                }
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection error");
    }
    open.dec();
}

/// One request over TCP: its span, the request-body idle limit, the shared pipeline, then
/// `Alt-Svc` (HTTPS) and the guards that keep the span, the connection's in-flight count and
/// (HTTP/2) a stall watch alive as long as the response body.
async fn request(
    shared: Arc<Shared>,
    alt_svc: Option<Arc<HeaderValue>>,
    conn: ConnInfo,
    in_flight: InFlight,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<crate::body::ProxyBody>, std::convert::Infallible> {
    let is_h2 = req.version() == http::Version::HTTP_2;
    let span = traces::span!(
        "http_request",
        otel.kind = "server", http.request.method = %req.method(), url.path = %req.uri().path()
    );
    // Continued only from a trusted proxy: anyone else could force sampling.
    if shared.trusted.trusts(conn.client.ip()) {
        traces::set_remote_parent(&span, req.headers());
    }
    let body_idle = shared.limits.request_body_idle_timeout.0;
    let req = req.map(|body| {
        crate::body::boxed(crate::body::IdleTimeout::new(body, body_idle).on_timeout(shared.body_idle_hits.clone()))
    });
    let mut resp = pipeline::handle(&shared, req, conn).instrument(span.clone()).await;
    if let Some(alt_svc) = alt_svc {
        resp.headers_mut().insert(ALT_SVC, (*alt_svc).clone());
    }
    if !span.is_none() {
        // hyper writes the response after we return: the span lives as long as the body,
        // so it ends when the last byte is handed over.
        let send = tracing::info_span!(parent: &span, "response_send");
        resp = resp.map(|body| crate::body::boxed(crate::body::Guarded::new(body, send)));
    }
    // The request is in flight until its response body is gone.
    let mut resp = resp.map(|body| crate::body::boxed(crate::body::Guarded::new(body, in_flight)));
    if is_h2 {
        // HTTP/2 flow control can stall one stream while the connection lives on; the
        // socket's write deadline would never see it.
        let (limit, metrics) = (shared.limits.response_write_timeout.0, shared.metrics.clone());
        resp = resp.map(|body| {
            crate::body::boxed(crate::body::StallWatch::new(body, limit, move || {
                metrics.limit_hit("response_write");
                tracing::debug!("HTTP/2 client took nothing of a response in time: body dropped");
            }))
        });
    }
    Ok(resp)
}

/// hyper's connection settings from the limits: header deadline (HTTP/1.1; hyper also
/// times the wait for the next request with it), HTTP/2 pings and header-list size.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout.0);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keep_alive_interval.0)
        .keep_alive_timeout(limits.http2_keep_alive_timeout.0)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

// === Activity ===

/// What a connection is doing, to close it when idle: requests in flight, and since when
/// none has been.
struct Activity {
    in_flight: AtomicUsize,
    requests: AtomicU64,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self { in_flight: AtomicUsize::new(0), requests: AtomicU64::new(0), idle_since: Mutex::new(Instant::now()) }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn idle_since(&self) -> Instant {
        *self.idle_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When to look again: the first request must come within the header deadline (for
    /// HTTP/2, whose frames hyper does not time), later ones within the idle timeout.
    fn deadline(&self, limits: &Limits) -> Instant {
        let wait =
            if self.requests.load(Ordering::Relaxed) == 0 { limits.header_timeout.0 } else { limits.idle_timeout.0 };
        if self.in_flight.load(Ordering::Acquire) > 0 { Instant::now() + wait } else { self.idle_since() + wait }
    }

    /// Why the connection should close now, if it should.
    fn expired(&self, limits: &Limits) -> Option<&'static str> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let first = self.requests.load(Ordering::Relaxed) == 0;
        let (wait, why) =
            if first { (limits.header_timeout.0, "header_timeout") } else { (limits.idle_timeout.0, "idle") };
        (self.idle_since().elapsed() >= wait).then_some(why)
    }
}

/// One request in flight on a connection.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
    }
}

// === WriteDeadline ===

/// A TCP stream whose writes must make progress within `limit`: a client that stops
/// reading (zero window) gets its connection closed, and the response body with the
/// backend slot it holds is dropped.
struct WriteDeadline<T> {
    inner: T,
    /// Running while writes are blocked; made only when one is.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    limit: Duration,
    metrics: Arc<Metrics>,
}

impl<T> WriteDeadline<T> {
    fn new(inner: T, limit: Duration, metrics: Arc<Metrics>) -> Self {
        Self { inner, stall: None, limit, metrics }
    }

    /// Passes on a write's outcome, failing it once the writes have been blocked too long.
    fn watch<R>(&mut self, cx: &mut Context<'_>, polled: Poll<std::io::Result<R>>) -> Poll<std::io::Result<R>> {
        if polled.is_ready() {
            self.stall = None;
            return polled;
        }
        let limit = self.limit;
        let stall = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if stall.as_mut().poll(cx).is_ready() {
            self.metrics.limit_hit("response_write");
            return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading")));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
