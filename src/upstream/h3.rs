//! HTTP/3 to one endpoint (`h3://`): one QUIC connection carries every request as a stream
//! of its own, and is dialled again once it has closed. Request bodies stream up while the
//! response streams down.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::{Buf, Bytes};
use h3::client::{RequestStream, SendRequest};
use http_body::{Body, Frame};
use http_body_util::BodyExt;

use super::SendError;
use super::connector::ConnCounts;
use crate::body::{BoxError, ProxyBody};

type Sender = SendRequest<h3_quinn::OpenStreams, Bytes>;

/// The HTTP/3 client of one endpoint.
pub struct H3Upstream {
    host: String,
    port: u16,
    server_name: String,
    tls: quinn::ClientConfig,
    connect_timeout: Duration,
    /// The connection in use; replaced when it closes.
    current: ArcSwapOption<Live>,
    /// Held while dialling, so concurrent requests wait for one new connection.
    dialling: tokio::sync::Mutex<()>,
    /// The UDP socket, bound on first use (a table build binds nothing).
    socket: std::sync::OnceLock<quinn::Endpoint>,
    counts: Arc<ConnCounts>,
}

struct Live {
    conn: quinn::Connection,
    send: Sender,
}

impl H3Upstream {
    pub fn new(
        host: String,
        port: u16,
        tls: rustls::ClientConfig,
        server_name: String,
        connect_timeout: Duration,
        idle_timeout: Duration,
        counts: Arc<ConnCounts>,
    ) -> Result<Self, String> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
        let mut tls = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        // An idle pooled connection closes like an idle HTTP/1.1 one would.
        transport.max_idle_timeout(quinn::IdleTimeout::try_from(idle_timeout).ok());
        tls.transport_config(Arc::new(transport));
        Ok(Self {
            host,
            port,
            server_name,
            tls,
            connect_timeout,
            current: ArcSwapOption::empty(),
            dialling: tokio::sync::Mutex::new(()),
            socket: std::sync::OnceLock::new(),
            counts,
        })
    }

    /// Sends a request; the response body streams from the backend as it is read.
    pub async fn send(&self, req: http::Request<ProxyBody>) -> Result<http::Response<H3Body>, SendError> {
        let (parts, body) = req.into_parts();
        let (mut send, conn) = self.connection().await?;
        let watch = SilenceWatch::new(conn);
        let stream = match send.send_request(http::Request::from_parts(parts, ())).await {
            Ok(s) => s,
            Err(e) => {
                // The connection went away (idle timeout, backend restart) before this
                // request's headers left: nothing reached the backend.
                self.current.store(None);
                return Err(SendError::NotSent(format!("HTTP/3 connection lost: {e}")));
            }
        };
        let (mut up, mut down) = stream.split();
        if body.is_end_stream() {
            up.finish().await.map_err(|e| SendError::Broken(e.to_string()))?;
        } else {
            tokio::spawn(pump(body, up));
        }
        let resp = down.recv_response().await.map_err(|e| SendError::Broken(e.to_string()))?;
        watch.disarm();
        Ok(resp.map(|()| H3Body { stream: down, data_done: false, finished: false }))
    }

    /// The live connection, or a new one.
    async fn connection(&self) -> Result<(Sender, quinn::Connection), SendError> {
        let usable =
            |live: &Arc<Live>| live.conn.close_reason().is_none().then(|| (live.send.clone(), live.conn.clone()));
        if let Some(found) = self.current.load().as_ref().and_then(usable) {
            return Ok(found);
        }
        let _dialling = self.dialling.lock().await;
        // Another request may have dialled while this one waited.
        if let Some(found) = self.current.load().as_ref().and_then(usable) {
            return Ok(found);
        }
        let live =
            tokio::time::timeout(self.connect_timeout, self.dial()).await.map_err(|_| SendError::ConnectTimeout)??;
        let found = (live.send.clone(), live.conn.clone());
        self.current.store(Some(Arc::new(live)));
        Ok(found)
    }

    async fn dial(&self) -> Result<Live, SendError> {
        let not_sent = |what: &str, e: &dyn std::fmt::Display| SendError::NotSent(format!("{what}: {e}"));
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let addr = tokio::net::lookup_host((host, self.port))
            .await
            .map_err(|e| not_sent("resolving", &e))?
            .next()
            .ok_or_else(|| SendError::NotSent(format!("{host} has no address")))?;
        let socket = self.socket(addr.is_ipv6())?;
        let conn = socket
            .connect_with(self.tls.clone(), addr, &self.server_name)
            .map_err(|e| not_sent("connecting", &e))?
            .await
            .map_err(|e| not_sent("QUIC handshake", &e))?;
        let (mut driver, send) =
            h3::client::new(h3_quinn::Connection::new(conn.clone())).await.map_err(|e| not_sent("HTTP/3 setup", &e))?;
        self.counts.opened(true);
        let counts = self.counts.clone();
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
            counts.closed(true);
        });
        Ok(Live { conn, send })
    }

    fn socket(&self, ipv6: bool) -> Result<&quinn::Endpoint, SendError> {
        if let Some(socket) = self.socket.get() {
            return Ok(socket);
        }
        let bind: std::net::SocketAddr =
            if ipv6 { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() } else { ([0, 0, 0, 0], 0).into() };
        let socket = quinn::Endpoint::client(bind).map_err(|e| SendError::NotSent(format!("UDP socket: {e}")))?;
        Ok(self.socket.get_or_init(|| socket))
    }
}

impl Drop for H3Upstream {
    fn drop(&mut self) {
        if let Some(socket) = self.socket.get() {
            socket.close(quinn::VarInt::from_u32(0), b"endpoint removed");
        }
    }
}

/// How long an abandoned request must have waited before silence condemns its connection.
const SILENCE: Duration = Duration::from_secs(1);

/// Closes the connection of a request abandoned without an answer (the proxy's response
/// timeout) if the peer sent nothing at all meanwhile, not even an acknowledgement: the
/// backend is gone (killed, or restarted and no longer knowing the connection), and only a
/// new connection reaches it; QUIC's own idle timeout would take far longer to notice. A
/// slow answer on a live connection keeps it: acknowledgements still arrive.
struct SilenceWatch {
    conn: Option<quinn::Connection>,
    received: u64,
    since: std::time::Instant,
}

impl SilenceWatch {
    fn new(conn: quinn::Connection) -> Self {
        let received = conn.stats().udp_rx.datagrams;
        Self { conn: Some(conn), received, since: std::time::Instant::now() }
    }

    fn disarm(mut self) {
        self.conn = None;
    }
}

impl Drop for SilenceWatch {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if conn.stats().udp_rx.datagrams == self.received && self.since.elapsed() >= SILENCE {
            tracing::warn!(peer = %conn.remote_address(), "HTTP/3 backend silent: closing the connection to dial again");
            conn.close(quinn::VarInt::from_u32(0x100), b"no answer");
        }
    }
}

/// Streams a request body up the stream, ending it with trailers or FIN.
async fn pump(mut body: ProxyBody, mut up: RequestStream<h3_quinn::SendStream<Bytes>, Bytes>) {
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            // The client's body broke: the backend must not take a truncated one as whole.
            up.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
            return;
        };
        match frame.into_data() {
            Ok(data) => {
                if up.send_data(data).await.is_err() {
                    return;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = up.send_trailers(trailers).await;
                    return;
                }
            }
        }
    }
    let _ = up.finish().await;
}

/// A response body read from an HTTP/3 stream, trailers included.
pub struct H3Body {
    stream: RequestStream<h3_quinn::RecvStream, Bytes>,
    data_done: bool,
    finished: bool,
}

impl Body for H3Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match this.stream.poll_recv_data(cx) {
                Poll::Ready(Ok(Some(mut buf))) => {
                    return Poll::Ready(Some(Ok(Frame::data(buf.copy_to_bytes(buf.remaining())))));
                }
                Poll::Ready(Ok(None)) => this.data_done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Pending => return Poll::Pending,
            }
        }
        let trailers = std::task::ready!(this.stream.poll_recv_trailers(cx));
        this.finished = true;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }
}
