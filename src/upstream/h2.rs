//! HTTP/2 to one endpoint (`h2c://`, and `https://` when ALPN picks h2): one multiplexed
//! connection per endpoint, dialled on first use and again once it has closed.
//!
//! Not hyper-util's pooled client: that pools by the request URI's scheme and authority,
//! and sends that authority as `:authority`. Keeping the client's host in `:authority`
//! would then open a pool per distinct `Host` (each port, each wildcard label); putting
//! the endpoint's address there would change what the backend sees. Owning the one
//! connection keeps both: pooled by endpoint, `:authority` as the client sent it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use super::SendError;
use super::connector::{EndpointConnector, UpstreamStream};
use crate::body::ProxyBody;

/// The one HTTP/2 connection of an endpoint.
pub struct H2Upstream {
    connector: EndpointConnector,
    idle_timeout: Duration,
    /// The connection in use; cleared when it closes or has been idle `idle_timeout`.
    current: Arc<ArcSwapOption<Live>>,
    /// Held while dialling, so concurrent requests wait for one new connection.
    dialling: tokio::sync::Mutex<()>,
}

struct Live {
    send: http2::SendRequest<ProxyBody>,
    /// Milliseconds since `born` of the last request sent, for the idle timeout.
    last_used: AtomicU64,
    born: Instant,
}

impl Live {
    fn touch(&self) {
        self.last_used.store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.born.elapsed().saturating_sub(Duration::from_millis(self.last_used.load(Ordering::Relaxed)))
    }
}

impl H2Upstream {
    pub fn new(connector: EndpointConnector, idle_timeout: Duration) -> Self {
        Self {
            connector,
            idle_timeout,
            current: Arc::new(ArcSwapOption::empty()),
            dialling: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends `req` on the endpoint's connection, dialling one if there is none. `Ok(None)`
    /// gives the request back when the server turned out to speak only HTTP/1.1.
    pub async fn send(
        &self,
        req: http::Request<ProxyBody>,
    ) -> Result<Result<http::Response<Incoming>, http::Request<ProxyBody>>, SendError> {
        let mut send = match self.live() {
            Some(send) => send,
            None => match self.dial().await? {
                Some(send) => send,
                None => return Ok(Err(req)),
            },
        };
        let (mut parts, body) = req.into_parts();
        // `:authority` comes from the URI; a Host header beside it would only repeat it.
        parts.headers.remove(http::header::HOST);
        parts.version = http::Version::HTTP_2;
        match send.try_send_request(http::Request::from_parts(parts, body)).await {
            Ok(resp) => Ok(Ok(resp)),
            Err(mut e) => {
                // The connection went away before this request's headers left.
                if e.message().is_some() {
                    self.current.store(None);
                }
                let sent = e.take_message().is_none();
                let err = e.into_error();
                Err(if sent {
                    SendError::Broken(format!("HTTP/2: {err}"))
                } else {
                    SendError::NotSent(format!("HTTP/2 connection lost: {err}"))
                })
            }
        }
    }

    fn live(&self) -> Option<http2::SendRequest<ProxyBody>> {
        let guard = self.current.load();
        let live = guard.as_ref()?;
        if live.send.is_closed() {
            return None;
        }
        live.touch();
        Some(live.send.clone())
    }

    /// Dials a connection; one dialler at a time, the others take what it made. `None`
    /// when the server chose HTTP/1.1 by ALPN (an `https://` endpoint without h2).
    async fn dial(&self) -> Result<Option<http2::SendRequest<ProxyBody>>, SendError> {
        let _dialling = self.dialling.lock().await;
        if let Some(send) = self.live() {
            return Ok(Some(send));
        }
        let mut connector = self.connector.clone();
        let stream: UpstreamStream = connector.call(http::Uri::from_static("/")).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::TimedOut {
                SendError::ConnectTimeout
            } else {
                SendError::NotSent(format!("connect: {e}"))
            }
        })?;
        if !self.connector.is_h2c() && !stream.connected().is_negotiated_h2() {
            return Ok(None);
        }
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(stream)
            .await
            .map_err(|e| SendError::NotSent(format!("HTTP/2 handshake: {e}")))?;
        let live = Arc::new(Live { send: send.clone(), last_used: AtomicU64::new(0), born: Instant::now() });
        self.current.store(Some(live.clone()));
        tokio::spawn(drive(conn, Arc::downgrade(&live), Arc::downgrade(&self.current), self.idle_timeout));
        Ok(Some(send))
    }
}

/// Runs the connection until it closes. Once it has carried no new request for
/// `idle_timeout` it is taken out of use; hyper then closes it when its last stream ends.
async fn drive(
    conn: http2::Connection<UpstreamStream, ProxyBody, TokioExecutor>,
    live: Weak<Live>,
    slot: Weak<ArcSwapOption<Live>>,
    idle_timeout: Duration,
) {
    tokio::pin!(conn);
    loop {
        tokio::select! {
            result = &mut conn => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection closed");
                }
                break;
            }
            () = tokio::time::sleep(idle_timeout) => {
                let (Some(l), Some(s)) = (live.upgrade(), slot.upgrade()) else { continue };
                if l.idle_for() >= idle_timeout {
                    let current = s.load();
                    if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &l)) {
                        s.store(None);
                    }
                }
            }
        }
    }
}
