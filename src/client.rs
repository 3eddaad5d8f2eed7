//! A small HTTP client for `quic-ingress get` and for tests: HTTP/3 over QUIC, or
//! HTTP/2 / HTTP/1.1 over TLS. Bodies stream both ways.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt};
use http::{Request, Response, Version};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;

/// Why a request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad URL {0:?}: expected https://HOST[:PORT]/PATH")]
    Url(String),
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("connect: {0}")]
    Connect(String),
    #[error("HTTP: {0}")]
    Http(String),
    /// The connection went away (the server's GOAWAY, or a close) before the request was
    /// written: nothing of it reached the server, so it may be sent again on a new
    /// connection, as browsers do.
    #[error("not sent: {0}")]
    NotSent(String),
}

fn http_err(e: impl std::error::Error) -> ClientError {
    ClientError::Http(describe(&e))
}

/// The error and its sources: hyper says "operation was canceled" and keeps why
/// ("connection closed", "connection was not ready") in the source.
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.ends_with(&said) {
            text = format!("{text}: {said}");
        }
        source = cause.source();
    }
    text
}

/// What hyper's `try_send_request` said: a request it hands back was never written.
fn sent<B>(
    result: Result<Response<hyper::body::Incoming>, hyper::client::conn::TrySendError<Request<B>>>,
) -> Result<Response<hyper::body::Incoming>, ClientError> {
    result.map_err(|mut e| {
        let unsent = e.take_message().is_some();
        let text = describe(e.error());
        if unsent { ClientError::NotSent(text) } else { ClientError::Http(text) }
    })
}

/// Trust settings.
#[derive(Debug, Clone, Default)]
pub struct TrustOptions {
    /// Accept any server certificate (`-k`).
    pub insecure: bool,
    /// Trust this PEM bundle instead of the system roots.
    pub ca_file: Option<PathBuf>,
}

impl TrustOptions {
    pub fn tls_config(&self, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, ClientError> {
        let tls_err = |e: crate::tls::TlsError| ClientError::Tls(e.to_string());
        let mut config = if self.insecure {
            crate::tls::insecure_client_config().map_err(tls_err)?
        } else {
            let roots = match &self.ca_file {
                Some(path) => crate::tls::load_roots(path).map_err(tls_err)?,
                None => crate::tls::system_roots(),
            };
            crate::tls::client_config(roots).map_err(tls_err)?
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

/// A request body: nothing, some bytes, or a stream of chunks (sent as they come).
pub enum RequestBody {
    Empty,
    Bytes(Bytes),
    Stream(Pin<Box<dyn Stream<Item = Bytes> + Send>>),
    /// Bytes, then a trailers block.
    WithTrailers(Bytes, http::HeaderMap),
}

/// A response whose body is read chunk by chunk.
pub struct ClientResponse {
    pub status: http::StatusCode,
    pub version: Version,
    pub headers: http::HeaderMap,
    body: ResponseBody,
}

enum ResponseBody {
    /// The stream, and the connection kept open while the body is read.
    H3(Box<h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>>, #[allow(dead_code)] H3Client),
    Hyper(hyper::body::Incoming),
}

impl ClientResponse {
    /// The next chunk of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        match &mut self.body {
            ResponseBody::H3(stream, _) => match stream.recv_data().await.map_err(http_err)? {
                Some(mut buf) => Ok(Some(buf.copy_to_bytes(buf.remaining()))),
                None => Ok(None),
            },
            ResponseBody::Hyper(body) => loop {
                match body.frame().await {
                    None => return Ok(None),
                    Some(frame) => {
                        if let Ok(data) = frame.map_err(http_err)?.into_data() {
                            return Ok(Some(data));
                        }
                    }
                }
            },
        }
    }

    /// The whole body and the trailers after it, if any (gRPC's `grpc-status`).
    pub async fn bytes_and_trailers(mut self) -> Result<(Bytes, Option<http::HeaderMap>), ClientError> {
        let mut out = bytes::BytesMut::new();
        let trailers = match &mut self.body {
            ResponseBody::H3(stream, _) => {
                while let Some(mut buf) = stream.recv_data().await.map_err(http_err)? {
                    out.extend_from_slice(&buf.copy_to_bytes(buf.remaining()));
                }
                stream.recv_trailers().await.map_err(http_err)?
            }
            ResponseBody::Hyper(body) => {
                let mut trailers = None;
                while let Some(frame) = body.frame().await {
                    match frame.map_err(http_err)?.into_data() {
                        Ok(data) => out.extend_from_slice(&data),
                        Err(frame) => trailers = frame.into_trailers().ok().or(trailers),
                    }
                }
                trailers
            }
        };
        Ok((out.freeze(), trailers))
    }

    /// The whole body.
    pub async fn bytes(mut self) -> Result<Bytes, ClientError> {
        let mut out = bytes::BytesMut::new();
        while let Some(chunk) = self.chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }
}

/// One HTTP/3 connection; `request` may be called concurrently from clones.
#[derive(Clone)]
pub struct H3Client {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    authority: String,
    endpoint: quinn::Endpoint,
}

/// Makes HTTP/3 connections from one UDP socket with one TLS session cache, so a later
/// connection to the same server resumes its session and can send requests in 0-RTT.
#[derive(Clone)]
pub struct H3Connector {
    endpoint: quinn::Endpoint,
}

impl H3Connector {
    /// `early_data` lets resumed connections send requests before the handshake completes.
    pub fn new(trust: &TrustOptions, ipv6: bool, early_data: bool) -> Result<Self, ClientError> {
        let mut tls = trust.tls_config(&[b"h3"])?;
        tls.enable_early_data = early_data;
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| ClientError::Tls(e.to_string()))?;
        let bind: SocketAddr = if ipv6 { "[::]:0" } else { "0.0.0.0:0" }.parse().map_err(http_err)?;
        let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| ClientError::Connect(e.to_string()))?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        Ok(Self { endpoint })
    }

    /// Connects after a full handshake.
    pub async fn connect(&self, addr: SocketAddr, server_name: &str) -> Result<H3Client, ClientError> {
        let conn = self
            .endpoint
            .connect(addr, server_name)
            .map_err(|e| ClientError::Connect(e.to_string()))?
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        self.h3(conn, addr, server_name).await
    }

    /// Connects and, when a session ticket from an earlier connection allows it, returns at
    /// once so requests go out as 0-RTT early data; the future then tells whether the
    /// server accepted them. Without a usable ticket this is a full handshake and `None`.
    pub async fn connect_early(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<(H3Client, Option<quinn::ZeroRttAccepted>), ClientError> {
        let connecting = self.endpoint.connect(addr, server_name).map_err(|e| ClientError::Connect(e.to_string()))?;
        match connecting.into_0rtt() {
            Ok((conn, accepted)) => Ok((self.h3(conn, addr, server_name).await?, Some(accepted))),
            Err(connecting) => {
                let conn = connecting.await.map_err(|e| ClientError::Connect(e.to_string()))?;
                Ok((self.h3(conn, addr, server_name).await?, None))
            }
        }
    }

    async fn h3(&self, conn: quinn::Connection, addr: SocketAddr, server_name: &str) -> Result<H3Client, ClientError> {
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn)).await.map_err(http_err)?;
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        let authority =
            if addr.port() == 443 { server_name.to_string() } else { format!("{server_name}:{}", addr.port()) };
        Ok(H3Client { send, authority, endpoint: self.endpoint.clone() })
    }
}

impl H3Client {
    /// Connects to `addr`, presenting `server_name` as SNI.
    pub async fn connect(addr: SocketAddr, server_name: &str, trust: &TrustOptions) -> Result<Self, ClientError> {
        H3Connector::new(trust, addr.is_ipv6(), false)?.connect(addr, server_name).await
    }

    /// Moves the connection to a new local UDP socket, as a phone changing networks does;
    /// the connection (and its requests) carry on if the server supports migration.
    pub fn rebind(&self) -> std::io::Result<()> {
        let ipv6 = self.endpoint.local_addr()?.is_ipv6();
        self.endpoint.rebind(std::net::UdpSocket::bind(if ipv6 { "[::]:0" } else { "0.0.0.0:0" })?)
    }

    /// Sends a request; a relative URI gets this connection's authority.
    pub async fn request(&self, req: Request<()>, body: RequestBody) -> Result<ClientResponse, ClientError> {
        let (mut parts, ()) = req.into_parts();
        if let RequestBody::Bytes(b) = &body {
            parts.headers.entry(http::header::CONTENT_LENGTH).or_insert_with(|| b.len().into());
        }
        if parts.uri.authority().is_none() {
            let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            parts.uri = format!("https://{}{pq}", self.authority).parse().map_err(http_err)?;
        }
        let mut send = self.send.clone();
        // Refused here (the server's GOAWAY, a closed connection), the request never got
        // its headers out whole: the server cannot have acted on it.
        let mut stream =
            send.send_request(Request::from_parts(parts, ())).await.map_err(|e| ClientError::NotSent(describe(&e)))?;
        match body {
            RequestBody::Empty => {}
            RequestBody::Bytes(b) => stream.send_data(b).await.map_err(http_err)?,
            RequestBody::Stream(mut chunks) => {
                while let Some(chunk) = chunks.next().await {
                    stream.send_data(chunk).await.map_err(http_err)?;
                }
            }
            RequestBody::WithTrailers(b, trailers) => {
                if !b.is_empty() {
                    stream.send_data(b).await.map_err(http_err)?;
                }
                stream.send_trailers(trailers).await.map_err(http_err)?;
            }
        }
        stream.finish().await.map_err(http_err)?;
        let resp = stream.recv_response().await.map_err(|e| match &e {
            // RFC 9114 4.1.1: a request reset with H3_REQUEST_REJECTED was not processed.
            h3::error::StreamError::RemoteTerminate { code, .. } if *code == h3::error::Code::H3_REQUEST_REJECTED => {
                ClientError::NotSent(describe(&e))
            }
            _ => http_err(e),
        })?;
        let (parts, ()) = resp.into_parts();
        Ok(ClientResponse {
            status: parts.status,
            version: Version::HTTP_3,
            headers: parts.headers,
            body: ResponseBody::H3(Box::new(stream), self.clone()),
        })
    }
}

/// Sends one request over TLS+TCP with HTTP/2 or HTTP/1.1.
pub async fn request_tcp(
    addr: SocketAddr,
    server_name: &str,
    trust: &TrustOptions,
    version: Version,
    req: Request<()>,
    body: RequestBody,
) -> Result<ClientResponse, ClientError> {
    let alpn: &[&[u8]] = if version == Version::HTTP_2 { &[b"h2"] } else { &[b"http/1.1"] };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(trust.tls_config(alpn)?));
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| ClientError::Tls(e.to_string()))?;
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| ClientError::Connect(e.to_string()))?;
    let tls = connector.connect(name, tcp).await.map_err(|e| ClientError::Tls(e.to_string()))?;
    let io = TokioIo::new(tls);
    let body = match body {
        RequestBody::Empty => crate::body::empty(),
        RequestBody::Bytes(b) => crate::body::full(b),
        RequestBody::Stream(s) => {
            let frames = s.map(|b| Ok::<_, crate::body::BoxError>(http_body::Frame::data(b)));
            http_body_util::StreamBody::new(frames).boxed_unsync()
        }
        RequestBody::WithTrailers(b, trailers) => {
            let frames = [http_body::Frame::data(b), http_body::Frame::trailers(trailers)];
            let frames = futures::stream::iter(frames.map(Ok::<_, crate::body::BoxError>));
            http_body_util::StreamBody::new(frames).boxed_unsync()
        }
    };
    let (mut parts, ()) = req.into_parts();
    let authority = if addr.port() == 443 { server_name.to_string() } else { format!("{server_name}:{}", addr.port()) };
    let pq = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let resp = if version == Version::HTTP_2 {
        parts.uri = format!("https://{authority}{pq}").parse().map_err(http_err)?;
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.map_err(http_err)?;
        tokio::spawn(conn);
        sent(send.try_send_request(Request::from_parts(parts, body)).await)?
    } else {
        parts.uri = pq.parse().map_err(http_err)?;
        if let Ok(h) = http::HeaderValue::from_str(&authority) {
            parts.headers.insert(http::header::HOST, h);
        }
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.map_err(http_err)?;
        tokio::spawn(conn);
        sent(send.try_send_request(Request::from_parts(parts, body)).await)?
    };
    let (parts, incoming): (http::response::Parts, _) = resp.into_parts();
    Ok(ClientResponse {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: ResponseBody::Hyper(incoming),
    })
}

/// Splits `https://host[:port]/path` into the address to dial, the SNI name and the request.
pub async fn target(url: &str) -> Result<(SocketAddr, String, http::Uri), ClientError> {
    let uri: http::Uri = url.parse().map_err(|_| ClientError::Url(url.to_string()))?;
    if uri.scheme_str() != Some("https") {
        return Err(ClientError::Url(url.to_string()));
    }
    let authority = uri.authority().ok_or_else(|| ClientError::Url(url.to_string()))?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
    let port = authority.port_u16().unwrap_or(443);
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| ClientError::Resolve(format!("{host}: {e}")))?
        .next()
        .ok_or_else(|| ClientError::Resolve(host.clone()))?;
    Ok((addr, host, uri))
}

/// Convenience for response type used by callers that want a plain `http::Response`.
pub async fn into_response(resp: ClientResponse) -> Result<Response<Bytes>, ClientError> {
    let (status, version, headers) = (resp.status, resp.version, resp.headers.clone());
    let body = resp.bytes().await?;
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.version_mut() = version;
    *out.headers_mut() = headers;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[derive(Debug, thiserror::Error)]
    #[error("connection closed")]
    struct Closed;

    #[derive(Debug, thiserror::Error)]
    #[error("operation was canceled")]
    struct Canceled(#[source] Closed);

    #[derive(Debug, thiserror::Error)]
    #[error("request failed: {0}")]
    struct SaysItsSource(#[source] Closed);

    #[test]
    fn an_error_is_described_with_its_sources() {
        assert_eq!(describe(&Canceled(Closed)), "operation was canceled: connection closed");
    }

    #[test]
    fn a_source_the_error_already_shows_is_not_repeated() {
        assert_eq!(describe(&SaysItsSource(Closed)), "request failed: connection closed");
    }
}
