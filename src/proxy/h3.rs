//! The HTTP/3 listener: one task per QUIC connection and one per request, so a slow
//! request never holds up the others on its connection.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h3::server::{RequestResolver, RequestStream};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::admission::{Admission, Handshaking};
use super::early_data::Handshake;
use super::h3_guard::{GuardedConnection, GuardedRecv};
use super::pipeline::{self, ConnInfo, Downstream, Shared};
use crate::body::{BoxError, ProxyBody};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::traces;

type H3Conn = h3::server::Connection<GuardedConnection, Bytes>;
type SendHalf = RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type RecvHalf = RequestStream<GuardedRecv<h3_quinn::RecvStream>, Bytes>;

/// H3_REQUEST_REJECTED, sent on a stream whose headers did not come in time.
const H3_REQUEST_REJECTED: u32 = 0x010b;

/// Accepts QUIC connections until `shutdown`; then each connection is sent GOAWAY and
/// finishes the requests it has.
pub async fn serve(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    admission: Arc<Admission>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let m = shared.metrics.clone();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            () = shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        let remote = incoming.remote_address();
        // Under a flood of handshakes, make new clients prove their address first (one
        // round trip, no state kept here), so spoofed sources cannot take the slots.
        if !incoming.remote_address_validated()
            && incoming.may_retry()
            && admission.handshakes() >= shared.limits.retry_above_handshakes
        {
            m.limit_hit("retry_sent");
            if let Err(e) = incoming.retry() {
                tracing::debug!(error = %e, "cannot send Retry");
            }
            continue;
        }
        let admitted = match admission.handshake(remote.ip()) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                m.limit_hit(refusal.label());
                tracing::debug!(%remote, limit = refusal.label(), "QUIC connection refused");
                incoming.refuse();
                continue;
            }
        };
        // Exported spans are info level; without an exporter the span only tags debug logs.
        let span = if traces::enabled() {
            tracing::info_span!("quic_connection", %remote)
        } else {
            tracing::debug_span!("quic_connection", %remote)
        };
        let (shared, shutdown, t) = (shared.clone(), shutdown.clone(), tracker.clone());
        // Boxed: whatever the task captures stays in its allocation for the connection's
        // whole life, idle or not, and an Incoming (the client's first packet) is large.
        let incoming = Box::new(incoming);
        tracker.spawn(
            async move {
                if let Err(e) = connection(incoming, admitted, shared, shutdown, t).await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
    // New handshakes are refused from here on; existing connections keep going.
    endpoint.set_server_config(None);
}

/// One QUIC connection: its handshake, then its requests.
///
/// Its future is the task an idle connection keeps, so the phases that end (the handshake,
/// building the h3 connection) run boxed and give their memory back when done.
async fn connection(
    incoming: Box<quinn::Incoming>,
    admitted: Handshaking,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> Result<(), BoxError> {
    let m = &shared.metrics;
    // One deadline for the whole handshake, from the first Initial: a client that trickles
    // its ClientHello gets no extra time for the rest.
    let deadline = Instant::now() + shared.limits.handshake_timeout.0;
    let (conn, handshake) = match Box::pin(handshake(*incoming, deadline)).await {
        Ok(accepted) => accepted,
        Err(failed) => {
            m.quic_handshakes.with_label_values(&["error"]).inc();
            if matches!(failed, HandshakeError::TimedOut) {
                m.limit_hit("handshake_timeout");
            }
            return Err(failed.into());
        }
    };
    watch_handshake(&conn, handshake.clone(), admitted, deadline, m.clone());
    serve_requests(conn, handshake, shared, shutdown, tracker).await
}

/// Why a QUIC handshake did not get as far as serving requests.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("QUIC handshake timed out")]
    TimedOut,
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
}

/// Accepts the connection as soon as requests can be served: from the first flight, so
/// requests that came as 0-RTT early data are handled while the handshake completes (see
/// early_data for which ones are forwarded).
async fn handshake(
    incoming: quinn::Incoming,
    deadline: Instant,
) -> Result<(quinn::Connection, Handshake), HandshakeError> {
    let mut connecting = incoming.accept()?;
    // Wait for the whole ClientHello first (Chromium's spans two Initial packets): until
    // then the client's stream limits are unknown, and quinn does not wake an `open_uni`
    // waiting on them, so h3's control stream, and with it the first request, would stall
    // for good. Found by the browser tests.
    tokio::time::timeout_at(deadline, connecting.handshake_data()).await.map_err(|_| HandshakeError::TimedOut)??;
    match connecting.into_0rtt() {
        Ok((conn, done)) => Ok((conn, Handshake::pending(done))),
        Err(connecting) => {
            let conn = tokio::time::timeout_at(deadline, connecting).await.map_err(|_| HandshakeError::TimedOut)??;
            Ok((conn, Handshake::completed()))
        }
    }
}

/// Counts the handshake's outcome when it is known, without holding up early requests; a
/// 0-RTT handshake not complete by `deadline` is closed. The connection counts against the
/// caps as a handshake until then, and as a connection until it closes.
fn watch_handshake(
    conn: &quinn::Connection,
    handshake: Handshake,
    admitted: Handshaking,
    deadline: Instant,
    metrics: Arc<Metrics>,
) {
    let conn = conn.clone();
    tokio::spawn(async move {
        if tokio::time::timeout_at(deadline, handshake.finished()).await.is_err() {
            metrics.limit_hit("handshake_timeout");
            conn.close(quinn::VarInt::from_u32(0x0100), b"handshake timeout");
        }
        let label = if conn.close_reason().is_none() { "ok" } else { "error" };
        metrics.quic_handshakes.with_label_values(&[label]).inc();
        if label == "ok" {
            let connected = admitted.established();
            conn.closed().await;
            drop(connected);
        }
    });
}

/// Accepts request streams until the client leaves or, after `shutdown`, the requests in
/// flight are done; each request runs in its own task.
async fn serve_requests(
    conn: quinn::Connection,
    handshake: Handshake,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> Result<(), BoxError> {
    let m = &shared.metrics;
    m.quic_connections_open.inc();
    let open = ConnectionGauge { conn: conn.clone(), metrics: m.clone(), lost_counted: std::cell::Cell::new(0) };
    let mut stats_tick = tokio::time::interval_at(Instant::now() + STATS_EVERY, STATS_EVERY);
    let mut client = conn.remote_address();
    let max_header = shared.limits.max_header_bytes;
    let mut builder = h3::server::builder();
    builder.max_field_section_size(max_header);
    let mut h3: H3Conn = Box::pin(builder.build(GuardedConnection::new(conn, max_header, m.clone()))).await?;
    let mut closing = false;
    // Requests of this connection in flight, and the request streams the client may open.
    let in_flight = Arc::new(AtomicU32::new(0));
    let mut stream_limit = INITIAL_CONCURRENT_REQUESTS;
    loop {
        let accepted = tokio::select! {
            accepted = h3.accept() => accepted,
            _ = stats_tick.tick() => {
                open.count_lost();
                continue;
            }
            () = shutdown.cancelled(), if !closing => {
                closing = true;
                // GOAWAY: the client opens no new requests here; accept() returns None once
                // the requests already accepted are done.
                Box::pin(h3.shutdown(0)).await?;
                continue;
            }
        };
        let resolver = match accepted {
            Ok(Some(resolver)) => resolver,
            Ok(None) => return Ok(()),
            Err(e) if e.is_h3_no_error() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        // A client that moved (Wi-Fi to cellular) keeps its connection; quinn has validated
        // the new path, so requests now come from the new address.
        let now_at = open.conn.remote_address();
        if now_at != client {
            m.quic_path_migrations.inc();
            tracing::debug!(from = %client, to = %now_at, "client migrated");
            client = now_at;
        }
        // Judged when the stream opens, as quinn's own `is_0rtt` does: a stream the client
        // opened before the handshake completed came in early data.
        let early_data = !handshake.complete();
        let counted = InFlight::start(&in_flight);
        if let Some(raised) = raised_stream_limit(in_flight.load(Ordering::Relaxed), stream_limit) {
            open.conn.set_max_concurrent_bi_streams(raised.into());
            stream_limit = raised;
        }
        let (shared, conn_span) = (shared.clone(), tracing::Span::current());
        tracker.spawn(async move {
            let _counted = counted;
            if let Err(e) = request(resolver, &shared, client, early_data, conn_span).await {
                tracing::debug!(error = %e, "request stream failed");
            }
        });
    }
}

/// Request streams a client may have open at once when its connection starts: RFC 9114's
/// recommended minimum (§6.1), and the default of quic-go and Envoy.
pub(super) const INITIAL_CONCURRENT_REQUESTS: u32 = 100;
/// What a busy connection is raised to: hyper's default for HTTP/2, which our TCP listener
/// keeps.
const MAX_CONCURRENT_REQUESTS: u32 = 200;

/// The request-stream limit to raise a connection to once `in_flight` of its requests run
/// under `current`: the full limit when three quarters of the current one are in use, early
/// enough that the client's next streams are rarely held up by the round trip.
///
/// Why not the full limit from the start: quinn-proto allocates the state of every stream a
/// client may open when the connection is created, so the limit is paid for by every idle
/// connection (at 100 request and 8 unidirectional streams, its tables take about 5 KiB; at
/// 200, 11 KiB; at 256 and 16, 22 KiB). Only connections that use more pay for more.
fn raised_stream_limit(in_flight: u32, current: u32) -> Option<u32> {
    (current < MAX_CONCURRENT_REQUESTS && in_flight >= current / 4 * 3).then_some(MAX_CONCURRENT_REQUESTS)
}

/// Counts one request of a connection as in flight until dropped.
struct InFlight(Arc<AtomicU32>);

impl InFlight {
    fn start(count: &Arc<AtomicU32>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How often a long-lived connection's lost packets are added to the counter.
const STATS_EVERY: Duration = Duration::from_secs(10);

/// Counts a connection as open until dropped, then records its RTT; lost packets are
/// counted as they accrue, so long-lived connections show in the rate.
struct ConnectionGauge {
    conn: quinn::Connection,
    metrics: Arc<Metrics>,
    lost_counted: std::cell::Cell<u64>,
}

impl ConnectionGauge {
    fn count_lost(&self) {
        let lost = self.conn.stats().path.lost_packets;
        let new = lost.saturating_sub(self.lost_counted.replace(lost));
        self.metrics.quic_lost_packets.inc_by(new);
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        let m = &self.metrics;
        m.quic_connections_open.dec();
        self.count_lost();
        m.quic_rtt.observe(self.conn.stats().path.rtt.as_secs_f64());
    }
}

async fn request(
    resolver: RequestResolver<GuardedConnection, Bytes>,
    shared: &Shared,
    client: std::net::SocketAddr,
    early_data: bool,
    conn_span: tracing::Span,
) -> Result<(), BoxError> {
    let parse_span = traces::span!(parent: &conn_span, "http3_parse");
    let limits = &shared.limits;
    let resolved =
        tokio::time::timeout(limits.header_timeout.0, resolver.resolve_request()).instrument(parse_span).await;
    let (req, stream) = match resolved {
        Ok(resolved) => resolved?,
        Err(_) => {
            // Dropping the resolver stops the stream, so its slot goes back to the client.
            shared.metrics.limit_hit("header_timeout");
            tracing::debug!(code = H3_REQUEST_REJECTED, "no request headers in time");
            return Err("request headers did not arrive in time".into());
        }
    };
    let request_span = traces::span!(
        parent: &conn_span, "http_request",
        otel.kind = "server", http.request.method = %req.method(), url.path = %req.uri().path()
    );
    // A trace is continued only from a trusted proxy: anyone else could force sampling.
    if shared.trusted.trusts(client.ip()) {
        traces::set_remote_parent(&request_span, req.headers());
    }
    let (mut send, recv) = stream.split();
    let (parts, ()) = req.into_parts();
    let mut body = H3RequestBody::new(recv, content_length(&parts.headers));
    if body.remaining.is_none() {
        body.peek_end(Duration::from_millis(100)).await;
    }
    let body = crate::body::IdleTimeout::new(body, limits.request_body_idle_timeout.0)
        .on_timeout(shared.body_idle_hits.clone());
    let req = Request::from_parts(parts, crate::body::boxed(body));
    let resp = pipeline::handle(shared, req, ConnInfo { client, protocol: Downstream::H3, early_data })
        .instrument(request_span.clone())
        .await;
    let send_span = traces::span!(parent: &request_span, "response_send");
    let sent = send_response(&mut send, resp, limits.response_write_timeout.0).instrument(send_span).await;
    match sent {
        Ok(()) => Ok(()),
        Err(Failed(e)) => Err(e),
        Err(Stalled) => {
            // A client that takes nothing is dropped, with the body and its backend slot.
            shared.metrics.limit_hit("response_write");
            send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
            Err("the client took nothing of the response in time".into())
        }
    }
}

/// A response could not be sent: the client stopped taking it, or something broke.
enum SendFailure {
    Stalled,
    Failed(BoxError),
}
use SendFailure::{Failed, Stalled};

/// Runs one write towards the client, which must make progress within `deadline`.
async fn within<T, E: Into<BoxError>>(
    deadline: Duration,
    write: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, SendFailure> {
    match tokio::time::timeout(deadline, write).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failed(e.into())),
        Err(_) => Err(Stalled),
    }
}

/// Streams a response to the client frame by frame; each write must finish within
/// `deadline`.
async fn send_response(send: &mut SendHalf, resp: Response<ProxyBody>, deadline: Duration) -> Result<(), SendFailure> {
    let (parts, mut body) = resp.into_parts();
    within(deadline, send.send_response(Response::from_parts(parts, ()))).await?;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                // The upstream broke mid-body: reset the stream so the client sees a
                // truncated response, never a clean end.
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return Err(Failed(e));
            }
        };
        match frame.into_data() {
            Ok(data) => within(deadline, send.send_data(data)).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    within(deadline, send.send_trailers(trailers)).await?;
                    return Ok(());
                }
            }
        }
    }
    within(deadline, send.finish()).await?;
    Ok(())
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// An HTTP/3 request body as a streaming `http_body::Body`.
struct H3RequestBody {
    recv: RecvHalf,
    /// Bytes still expected when the client sent `content-length`.
    remaining: Option<u64>,
    /// A frame read early by `peek_end`: the first chunk, or trailers without data.
    peeked: Option<Frame<Bytes>>,
    /// The data frames have ended; trailers, if the client sent any, come next.
    data_done: bool,
    done: bool,
}

impl H3RequestBody {
    fn new(recv: RecvHalf, remaining: Option<u64>) -> Self {
        Self { recv, remaining, peeked: None, data_done: false, done: remaining == Some(0) }
    }

    /// Without `content-length`, finds out whether a body follows at all, so a GET is not
    /// sent upstream with a chunked (empty) body. Clients end a body-less request's stream
    /// with its headers; a client still silent after `wait` is treated as streaming.
    async fn peek_end(&mut self, wait: Duration) {
        let first = tokio::time::timeout(wait, std::future::poll_fn(|cx| self.recv.poll_recv_data(cx))).await;
        match first {
            Ok(Ok(Some(mut buf))) => self.peeked = Some(Frame::data(buf.copy_to_bytes(buf.remaining()))),
            Ok(Ok(None)) => {
                // No data: the stream ended, or trailers came at once. Either is known now,
                // so a request without either is sent upstream as body-less.
                self.data_done = true;
                let trailers = std::future::poll_fn(|cx| self.recv.poll_recv_trailers(cx));
                match tokio::time::timeout(wait, trailers).await {
                    Ok(Ok(None)) => self.done = true,
                    Ok(Ok(Some(t))) => self.peeked = Some(Frame::trailers(t)),
                    Ok(Err(_)) | Err(_) => {}
                }
            }
            Ok(Err(_)) | Err(_) => {}
        }
    }
}

impl Body for H3RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.peeked.take() {
            this.done |= frame.is_trailers();
            return Poll::Ready(Some(Ok(frame)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match this.recv.poll_recv_data(cx) {
                Poll::Ready(Ok(Some(mut buf))) => {
                    let data = buf.copy_to_bytes(buf.remaining());
                    if let Some(r) = this.remaining.as_mut() {
                        *r = r.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Ok(None)) => this.data_done = true,
                Poll::Ready(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        // Request trailers (RFC 9114 4.1: a HEADERS frame after the data) go upstream as
        // the body's last frame; hyper writes them as HTTP/2 trailers or, for an HTTP/1.1
        // backend, in the last chunk when the request declared them in `trailer`.
        let trailers = std::task::ready!(this.recv.poll_recv_trailers(cx));
        this.done = true;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        // Not at `remaining == Some(0)`: trailers may still follow the declared length.
        self.peeked.is_none() && self.done
    }

    fn size_hint(&self) -> SizeHint {
        match (self.remaining, self.done, &self.peeked) {
            (_, true, None) => SizeHint::with_exact(0),
            (Some(r), _, None) => SizeHint::with_exact(r),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_connection_gets_the_full_stream_limit_once_and_an_idle_one_never() {
        let initial = INITIAL_CONCURRENT_REQUESTS;
        assert_eq!(raised_stream_limit(0, initial), None);
        assert_eq!(raised_stream_limit(initial / 2, initial), None);
        assert_eq!(raised_stream_limit(initial / 4 * 3, initial), Some(MAX_CONCURRENT_REQUESTS));
        assert_eq!(raised_stream_limit(MAX_CONCURRENT_REQUESTS, MAX_CONCURRENT_REQUESTS), None, "already raised");
    }

    #[test]
    fn in_flight_counts_until_each_request_is_dropped() {
        let count = Arc::new(AtomicU32::new(0));
        let (a, b) = (InFlight::start(&count), InFlight::start(&count));
        assert_eq!(count.load(Ordering::Relaxed), 2);
        drop(a);
        assert_eq!(count.load(Ordering::Relaxed), 1);
        drop(b);
        assert_eq!(count.load(Ordering::Relaxed), 0);
    }
}
