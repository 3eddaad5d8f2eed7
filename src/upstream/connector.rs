//! Dials one endpoint for hyper's pooled client: TCP (with a connect timeout), then TLS
//! with ALPN for `https://` endpoints.
//!
//! The connector ignores the request URI on purpose: the connection goes to its endpoint
//! whatever the URI says.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Where and how to connect.
#[derive(Clone)]
pub struct EndpointConnector {
    target: Arc<Target>,
}

/// Open connections to one endpoint, whichever client opened them.
#[derive(Default)]
pub struct ConnCounts {
    /// All open connections.
    open: AtomicI64,
    /// Those that carry many requests at once (HTTP/2, HTTP/3).
    multiplexed: AtomicI64,
}

impl ConnCounts {
    pub fn opened(&self, multiplexed: bool) {
        self.open.fetch_add(1, Ordering::Relaxed);
        if multiplexed {
            self.multiplexed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn closed(&self, multiplexed: bool) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if multiplexed {
            self.multiplexed.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// (all, multiplexed).
    pub fn get(&self) -> (i64, i64) {
        (self.open.load(Ordering::Relaxed), self.multiplexed.load(Ordering::Relaxed))
    }
}

struct Target {
    counts: Arc<ConnCounts>,
    /// HTTP/2 without TLS (`h2c://`): every connection is multiplexed.
    h2c: bool,
    host: String,
    port: u16,
    connect_timeout: Duration,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl EndpointConnector {
    pub fn new(
        host: String,
        port: u16,
        connect_timeout: Duration,
        tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
        counts: Arc<ConnCounts>,
        h2c: bool,
    ) -> Self {
        let tls = tls.map(|(cfg, name)| (TlsConnector::from(cfg), name));
        Self { target: Arc::new(Target { counts, h2c, host, port, connect_timeout, tls }) }
    }
}

impl EndpointConnector {
    /// HTTP/2 without TLS: every connection speaks h2 (prior knowledge).
    pub fn is_h2c(&self) -> bool {
        self.target.h2c
    }
}

impl tower_service::Service<Uri> for EndpointConnector {
    type Response = UpstreamStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<UpstreamStream>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let target = self.target.clone();
        Box::pin(async move {
            let host = target.host.trim_start_matches('[').trim_end_matches(']');
            let tcp = tokio::time::timeout(target.connect_timeout, TcpStream::connect((host, target.port)))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            let _ = tcp.set_nodelay(true);
            let io = match &target.tls {
                None => Io::Plain(TokioIo::new(tcp)),
                Some((connector, name)) => {
                    let tls = tokio::time::timeout(target.connect_timeout, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
                    Io::Tls(Box::new(TokioIo::new(tls)))
                }
            };
            let multiplexed = target.h2c || is_h2(&io);
            target.counts.opened(multiplexed);
            Ok(UpstreamStream { io, counts: target.counts.clone(), multiplexed })
        })
    }
}

/// A connection to an endpoint, counted as open until dropped.
pub struct UpstreamStream {
    io: Io,
    counts: Arc<ConnCounts>,
    multiplexed: bool,
}

impl Drop for UpstreamStream {
    fn drop(&mut self) {
        self.counts.closed(self.multiplexed);
    }
}

fn is_h2(io: &Io) -> bool {
    match io {
        Io::Plain(_) => false,
        Io::Tls(s) => s.inner().get_ref().1.alpn_protocol() == Some(b"h2"),
    }
}

enum Io {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        if is_h2(&self.io) { Connected::new().negotiated_h2() } else { Connected::new() }
    }
}

impl Read for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}
