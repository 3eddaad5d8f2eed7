//! HTTP/1.1 protocol upgrades (WebSocket): the `Upgrade` handshake passes through to the
//! backend, and once it answers 101 the client's and the backend's connections are spliced
//! byte for byte until either side closes.

use http::header::{CONNECTION, HeaderValue, UPGRADE};
use http::{HeaderMap, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::body::ProxyBody;

/// The one protocol passed on to backends: `Upgrade: websocket` (RFC 6455).
const WEBSOCKET: &str = "websocket";

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` plus
/// `Upgrade: websocket`), if any.
///
/// Only WebSocket is passed on. Any other token (`h2c`, `TLS/1.0`, made-up ones) would let a
/// client speak an unchecked protocol to the backend on a connection the proxy no longer
/// parses (h2c smuggling), so such a request is served as a plain request: `Connection`
/// and `Upgrade` are hop-by-hop and are stripped before it goes upstream.
pub fn requested(headers: &HeaderMap, version: Version) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let tokens =
        |name| headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim);
    let asks = tokens(CONNECTION).any(|token| token.eq_ignore_ascii_case("upgrade"));
    // A token may carry a version (`websocket/13`); the name alone decides.
    let websocket = tokens(UPGRADE)
        .any(|token| token.split('/').next().is_some_and(|name| name.trim().eq_ignore_ascii_case(WEBSOCKET)));
    (asks && websocket).then(|| HeaderValue::from_static(WEBSOCKET))
}

/// Puts back the two headers hop-by-hop stripping removed, for the next hop.
pub fn restore(headers: &mut HeaderMap, protocol: &HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, protocol.clone());
}

/// When the backend switched protocols (101), starts the tunnel between `client` and the
/// backend and returns the response to send without its body, with the protocol switched
/// to; any other response is returned as it is.
pub fn take_over(
    mut resp: Response<ProxyBody>,
    client: OnUpgrade,
    protocol: HeaderValue,
    idle: std::time::Duration,
) -> (Response<ProxyBody>, Option<HeaderValue>) {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return (resp, None);
    }
    let backend = hyper::upgrade::on(&mut resp);
    // The body holds the backend's connection slot: it goes with the tunnel.
    let (parts, body) = resp.into_parts();
    splice(client, backend, body, idle);
    (Response::from_parts(parts, crate::body::empty()), Some(protocol))
}

/// Splices the two upgraded connections until either side closes. `hold` (the backend's
/// connection slot) lives as long as the tunnel; a tunnel with no byte either way for
/// `idle` is closed.
fn splice(client: OnUpgrade, backend: OnUpgrade, hold: impl Send + 'static, idle: std::time::Duration) {
    tokio::spawn(async move {
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(both) => both,
            Err(e) => return tracing::debug!(error = %e, "upgrade failed"),
        };
        let last = Arc::new(AtomicU64::new(0));
        let start = tokio::time::Instant::now();
        let mut client = Touched { inner: TokioIo::new(client), last: last.clone(), start };
        let mut backend = Touched { inner: TokioIo::new(backend), last: last.clone(), start };
        let idle_out = async {
            loop {
                let at = start + std::time::Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
                if tokio::time::Instant::now() >= at {
                    return;
                }
                tokio::time::sleep_until(at).await;
            }
        };
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut backend) => match copied {
                Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
                Err(e) => tracing::debug!(error = %e, "upgraded connection broke"),
            },
            () = idle_out => tracing::debug!(?idle, "upgraded connection idle: closed"),
        }
        drop(hold);
    });
}

/// An upgraded connection that records when a byte last went through it.
struct Touched<T> {
    inner: T,
    last: Arc<AtomicU64>,
    start: tokio::time::Instant,
}

impl<T> Touched<T> {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Touched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Touched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn an_upgrade_needs_both_headers_on_http11() {
        let ws = headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")]);
        assert_eq!(requested(&ws, Version::HTTP_11), Some(HeaderValue::from_static("websocket")));
        assert_eq!(requested(&ws, Version::HTTP_2), None, "HTTP/2 has no Upgrade");
        assert_eq!(requested(&headers(&[("upgrade", "websocket")]), Version::HTTP_11), None);
        assert_eq!(requested(&headers(&[("connection", "upgrade")]), Version::HTTP_11), None);
    }

    #[test]
    fn only_websocket_is_passed_on() {
        let ask = |upgrade| headers(&[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", upgrade)]);
        for refused in ["h2c", "HTTP/2.0", "TLS/1.0", "h2c, http/1.1", "websockets", "", "web socket"] {
            assert_eq!(requested(&ask(refused), Version::HTTP_11), None, "{refused:?} is served as a plain request");
        }
        let ws = HeaderValue::from_static("websocket");
        for taken in ["websocket", "WebSocket", "h2c, websocket", "websocket/13"] {
            assert_eq!(requested(&ask(taken), Version::HTTP_11), Some(ws.clone()), "{taken:?}");
        }
    }
}
