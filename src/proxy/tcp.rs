//! The TCP listeners: HTTPS (HTTP/1.1 and HTTP/2 by ALPN, with `Alt-Svc` so browsers
//! discover the HTTP/3 listener on the same port) and, when configured, plaintext HTTP
//! (HTTP/1.1 and HTTP/2 with prior knowledge). One path for both: accept and admit → the
//! PROXY protocol header (trusted peers, when on) → TLS or not → serve HTTP.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
use tokio::sync::Notify;
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
    // Reads as HTTP/1.1 until a request says HTTP/2 (by preface, without ALPN).
    let activity = Arc::new(Activity::new(!h2_only));
    let (metrics, open) = (shared.metrics.clone(), shared.metrics.tcp_connections_open.clone());
    let seen = activity.clone();
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let in_flight = seen.begin(req.version());
        request(shared.clone(), alt_svc.clone(), conn_info, in_flight, req)
    });
    open.inc();
    // HTTP/2 has no Upgrade; `http2_only` is ignored with upgrades.
    let builder = builder(&limits);
    let io = TokioIo::new(ReadActivity { inner: io, activity: activity.clone() });
    let mut conn: Pin<Box<dyn std::future::Future<Output = _> + Send>> = if h2_only {
        Box::pin(watcher.watch(builder.http2_only().serve_connection(io, service).into_owned()))
    } else {
        Box::pin(watcher.watch(builder.serve_connection_with_upgrades(io, service).into_owned()))
    };
    let ended = loop {
        let due = activity.due(&limits);
        // With a request in flight nothing is due; a change of state wakes the loop.
        let check = due.map_or_else(|| Instant::now() + limits.idle_timeout.0, |(at, _)| at);
        tokio::select! {
            ended = conn.as_mut() => break ended,
            () = activity.changed.notified() => {}
            () = tokio::time::sleep_until(check) => {
                // Looked at again: a request may have begun since (that wakes nobody).
                if let Some((at, why)) = activity.due(&limits)
                    && Instant::now() >= at
                {
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

/// hyper's connection settings from the limits: HTTP/2 pings and header-list size. HTTP/1.1
/// gets no header timer from hyper: hyper's `header_read_timeout` starts as soon as it
/// waits for a request, so it would also cut keep-alive waits short; `Activity` times both.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keep_alive_interval.0)
        .keep_alive_timeout(limits.http2_keep_alive_timeout.0)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

// === Activity ===

/// What a connection is doing, to close it when it waits too long: requests in flight,
/// since when none has been, and (HTTP/1.1) when the next request's first byte came.
struct Activity {
    in_flight: AtomicUsize,
    requests: AtomicU64,
    http1: AtomicBool,
    times: Mutex<Times>,
    /// Wakes the connection's timer when what it waits for changes.
    changed: Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Times {
    idle_since: Instant,
    /// The first byte read since the connection went idle (HTTP/1.1: a request head begun).
    head_started: Option<Instant>,
}

/// The connection's state as the timer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiting {
    in_flight: bool,
    /// Requests begun so far.
    requests: u64,
    http1: bool,
    times: Times,
}

/// When an idle connection is to be closed, and why (the reason names a limit); None while
/// a request is in flight (body and write deadlines time those). The first request must
/// come within the header deadline from the start (for HTTP/2, whose frames hyper does not
/// time); on HTTP/1.1 a later one has `http1_keep_alive_idle` to begin and, once its first
/// byte is in, the header deadline for the rest of its head; HTTP/2 has `idle_timeout`.
fn due(w: &Waiting, limits: &Limits) -> Option<(Instant, &'static str)> {
    if w.in_flight {
        return None;
    }
    let header = limits.header_timeout.0;
    Some(match (w.requests, w.http1, w.times.head_started) {
        (0, _, _) => (w.times.idle_since + header, "header_timeout"),
        (_, true, Some(first_byte)) => (first_byte + header, "header_timeout"),
        (_, true, None) => (w.times.idle_since + limits.http1_keep_alive_idle.0, "keep_alive_idle"),
        (_, false, _) => (w.times.idle_since + limits.idle_timeout.0, "idle"),
    })
}

impl Activity {
    fn new(http1: bool) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            http1: AtomicBool::new(http1),
            times: Mutex::new(Times { idle_since: Instant::now(), head_started: None }),
            changed: Notify::new(),
        }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        // Two instants, always coherent: a panic elsewhere cannot leave them half-written.
        self.times.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn begin(self: &Arc<Self>, version: http::Version) -> InFlight {
        if version == http::Version::HTTP_2 {
            // HTTP/2 by prior knowledge on a connection ALPN did not make h2.
            self.http1.store(false, Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.times().head_started = None;
        InFlight(self.clone())
    }

    /// Bytes came from the client: while idle, that begins the next request's head.
    fn read_some(&self) {
        if self.in_flight.load(Ordering::Acquire) > 0 || !self.http1.load(Ordering::Relaxed) {
            return;
        }
        let mut times = self.times();
        if times.head_started.is_none() {
            times.head_started = Some(Instant::now());
            drop(times);
            self.changed.notify_one();
        }
    }

    fn due(&self, limits: &Limits) -> Option<(Instant, &'static str)> {
        let waiting = Waiting {
            in_flight: self.in_flight.load(Ordering::Acquire) > 0,
            requests: self.requests.load(Ordering::Relaxed),
            http1: self.http1.load(Ordering::Relaxed),
            times: *self.times(),
        };
        due(&waiting, limits)
    }
}

/// One request in flight on a connection.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.times() = Times { idle_since: Instant::now(), head_started: None };
            self.0.changed.notify_one();
        }
    }
}

/// The client's side of a connection, telling `Activity` when bytes come in.
struct ReadActivity<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadActivity<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read_some();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadActivity<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_timeout: crate::config::HumanDuration::secs(10),
            http1_keep_alive_idle: crate::config::HumanDuration::secs(75),
            idle_timeout: crate::config::HumanDuration::secs(60),
            ..Limits::default()
        }
    }

    /// An HTTP/1.1 connection idle since `t0`, after one request.
    fn waiting(t0: Instant) -> Waiting {
        Waiting { in_flight: false, requests: 1, http1: true, times: Times { idle_since: t0, head_started: None } }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_first_request_has_the_header_deadline_from_the_start() {
        let t0 = Instant::now();
        let w = Waiting { requests: 0, ..waiting(t0) };
        assert_eq!(due(&w, &limits()), Some((t0 + S(10), "header_timeout")));
        let h2 = Waiting { http1: false, ..w };
        assert_eq!(due(&h2, &limits()), Some((t0 + S(10), "header_timeout")), "HTTP/2 too");
        let trickled = Waiting { times: Times { idle_since: t0, head_started: Some(t0 + S(9)) }, ..w };
        assert_eq!(due(&trickled, &limits()), Some((t0 + S(10), "header_timeout")), "a late first byte buys nothing");
    }

    #[test]
    fn a_keep_alive_wait_has_its_own_limit_and_a_begun_head_the_header_deadline() {
        let t0 = Instant::now();
        assert_eq!(due(&waiting(t0), &limits()), Some((t0 + S(75), "keep_alive_idle")));
        let begun = Waiting { times: Times { idle_since: t0, head_started: Some(t0 + S(70)) }, ..waiting(t0) };
        assert_eq!(due(&begun, &limits()), Some((t0 + S(80), "header_timeout")));
        let h2 = Waiting { http1: false, ..begun };
        assert_eq!(due(&h2, &limits()), Some((t0 + S(60), "idle")), "HTTP/2 reads are not request heads");
    }

    #[test]
    fn nothing_is_due_while_a_request_is_in_flight() {
        let w = Waiting { in_flight: true, ..waiting(Instant::now()) };
        assert_eq!(due(&w, &limits()), None);
    }
}
