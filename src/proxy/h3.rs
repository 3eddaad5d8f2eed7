//! The HTTP/3 listener: one task per QUIC connection and one per request, so a slow
//! request never holds up the others on its connection.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h3::server::{RequestResolver, RequestStream};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::early_data::Handshake;
use super::pipeline::{self, ConnInfo, Downstream, Shared};
use crate::body::{BoxError, ProxyBody};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::traces;
use std::sync::Arc;

type H3Conn = h3::server::Connection<h3_quinn::Connection, Bytes>;

/// Accepts QUIC connections until `shutdown`; then each connection is sent GOAWAY and
/// finishes the requests it has.
pub async fn serve(endpoint: quinn::Endpoint, shared: Arc<Shared>, shutdown: CancellationToken, tracker: TaskTracker) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            () = shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        let remote = incoming.remote_address();
        // Exported spans are info level; without an exporter the span only tags debug logs.
        let span = if traces::enabled() {
            tracing::info_span!("quic_connection", %remote)
        } else {
            tracing::debug_span!("quic_connection", %remote)
        };
        let (shared, shutdown, t) = (shared.clone(), shutdown.clone(), tracker.clone());
        tracker.spawn(
            async move {
                if let Err(e) = connection(incoming, shared, shutdown, t).await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
    // New handshakes are refused from here on; existing connections keep going.
    endpoint.set_server_config(None);
}

async fn connection(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> Result<(), BoxError> {
    let m = &shared.metrics;
    // Serve from the first flight: requests that came as 0-RTT early data are handled
    // while the handshake completes (see early_data for which ones are forwarded).
    let accepted = incoming.accept().map(|connecting| connecting.into_0rtt());
    let (conn, handshake) = match accepted {
        Ok(Ok((conn, done))) => (conn, Handshake::pending(done)),
        Ok(Err(connecting)) => match connecting.await {
            Ok(conn) => (conn, Handshake::completed()),
            Err(e) => {
                m.quic_handshakes.with_label_values(&["error"]).inc();
                return Err(e.into());
            }
        },
        Err(e) => {
            m.quic_handshakes.with_label_values(&["error"]).inc();
            return Err(e.into());
        }
    };
    // Count the outcome when it is known, without holding up early requests.
    let (outcome, watched, counted) = (handshake.clone(), conn.clone(), m.clone());
    tokio::spawn(async move {
        outcome.finished().await;
        let label = if watched.close_reason().is_none() { "ok" } else { "error" };
        counted.quic_handshakes.with_label_values(&[label]).inc();
    });
    m.quic_connections_open.inc();
    let open = ConnectionGauge { conn: conn.clone(), metrics: m.clone(), lost_counted: std::cell::Cell::new(0) };
    let mut stats_tick = tokio::time::interval_at(tokio::time::Instant::now() + STATS_EVERY, STATS_EVERY);
    let mut client = conn.remote_address();
    let mut h3: H3Conn = h3::server::builder().build(h3_quinn::Connection::new(conn)).await?;
    let mut closing = false;
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
                h3.shutdown(0).await?;
                continue;
            }
        };
        match accepted {
            Ok(Some(resolver)) => {
                let shared = shared.clone();
                // A client that moved (Wi-Fi to cellular) keeps its connection; quinn has
                // validated the new path, so requests now come from the new address.
                let now_at = open.conn.remote_address();
                if now_at != client {
                    m.quic_path_migrations.inc();
                    tracing::debug!(from = %client, to = %now_at, "client migrated");
                    client = now_at;
                }
                // Judged when the stream opens, as quinn's own `is_0rtt` does: a stream the
                // client opened before the handshake completed came in early data.
                let early_data = !handshake.complete();
                let conn_span = tracing::Span::current();
                tracker.spawn(async move {
                    if let Err(e) = request(resolver, &shared, client, early_data, conn_span).await {
                        tracing::debug!(error = %e, "request stream failed");
                    }
                });
            }
            Ok(None) => return Ok(()),
            Err(e) if e.is_h3_no_error() => return Ok(()),
            Err(e) => return Err(e.into()),
        }
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
    resolver: RequestResolver<h3_quinn::Connection, Bytes>,
    shared: &Shared,
    client: std::net::SocketAddr,
    early_data: bool,
    conn_span: tracing::Span,
) -> Result<(), BoxError> {
    let parse_span = traces::span!(parent: &conn_span, "http3_parse");
    let (req, stream) = resolver.resolve_request().instrument(parse_span).await?;
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
    let req = Request::from_parts(parts, crate::body::boxed(body));
    let resp = pipeline::handle(shared, req, ConnInfo { client, protocol: Downstream::H3, early_data })
        .instrument(request_span.clone())
        .await;
    let send_span = traces::span!(parent: &request_span, "response_send");
    send_response(&mut send, resp).instrument(send_span).await
}

/// Streams a response to the client frame by frame.
async fn send_response(
    send: &mut RequestStream<h3_quinn::SendStream<Bytes>, Bytes>,
    resp: Response<ProxyBody>,
) -> Result<(), BoxError> {
    let (parts, mut body) = resp.into_parts();
    send.send_response(Response::from_parts(parts, ())).await?;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                // The upstream broke mid-body: reset the stream so the client sees a
                // truncated response, never a clean end.
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return Err(e);
            }
        };
        match frame.into_data() {
            Ok(data) => send.send_data(data).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await?;
                    return Ok(());
                }
            }
        }
    }
    send.finish().await?;
    Ok(())
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// An HTTP/3 request body as a streaming `http_body::Body`.
struct H3RequestBody {
    recv: RequestStream<h3_quinn::RecvStream, Bytes>,
    /// Bytes still expected when the client sent `content-length`.
    remaining: Option<u64>,
    /// A chunk read early by `peek_end`.
    peeked: Option<Bytes>,
    done: bool,
}

impl H3RequestBody {
    fn new(recv: RequestStream<h3_quinn::RecvStream, Bytes>, remaining: Option<u64>) -> Self {
        Self { recv, remaining, peeked: None, done: remaining == Some(0) }
    }

    /// Without `content-length`, finds out whether a body follows at all, so a GET is not
    /// sent upstream with a chunked (empty) body. Clients end a body-less request's stream
    /// with its headers; a client still silent after `wait` is treated as streaming.
    async fn peek_end(&mut self, wait: Duration) {
        let first = tokio::time::timeout(wait, std::future::poll_fn(|cx| self.recv.poll_recv_data(cx))).await;
        match first {
            Ok(Ok(Some(mut buf))) => self.peeked = Some(buf.copy_to_bytes(buf.remaining())),
            Ok(Ok(None)) => self.done = true,
            Ok(Err(_)) | Err(_) => {}
        }
    }
}

impl Body for H3RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(data) = this.peeked.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        match this.recv.poll_recv_data(cx) {
            Poll::Ready(Ok(Some(mut buf))) => {
                let data = buf.copy_to_bytes(buf.remaining());
                if let Some(r) = this.remaining.as_mut() {
                    *r = r.saturating_sub(data.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Ok(None)) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                this.done = true;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.peeked.is_none() && (self.done || self.remaining == Some(0))
    }

    fn size_hint(&self) -> SizeHint {
        match (self.remaining, self.done, &self.peeked) {
            (_, true, None) => SizeHint::with_exact(0),
            (Some(r), _, None) => SizeHint::with_exact(r),
            _ => SizeHint::default(),
        }
    }
}
