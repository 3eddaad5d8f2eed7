//! `quic-ingress demo-backend`: a small echo server for demos and tests.
//!
//! `/health` answers 200; any other path answers JSON describing the request
//! (`backend`, `method`, `path`, `host`, `headers`, and `body_bytes`, counted while the body
//! streams in). Query parameters make it misbehave on purpose, for tests and demos:
//! `delay_ms=N` waits before answering, `status=N` sets the status, `bytes=N` answers with
//! N streamed bytes instead of JSON.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::body::{BoxError, ProxyBody, full};

/// Which protocol the demo backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DemoProtocol {
    #[default]
    Http1,
    /// HTTP/2 over cleartext (prior knowledge), for `h2c://` backends.
    H2,
}

/// Serves until the process ends.
pub async fn run(listen: SocketAddr, name: String, protocol: DemoProtocol) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(address = %listener.local_addr()?, name, ?protocol, "demo backend listening");
    let name: Arc<str> = name.into();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(name.clone(), req));
            let io = TokioIo::new(stream);
            let result = match protocol {
                DemoProtocol::Http1 => {
                    hyper::server::conn::http1::Builder::new().serve_connection(io, service).with_upgrades().await
                }
                DemoProtocol::H2 => {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, service).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "demo connection ended");
            }
        });
    }
}

fn query_param<T: std::str::FromStr>(req: &Request<Incoming>, key: &str) -> Option<T> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn answer(name: Arc<str>, mut req: Request<Incoming>) -> Result<Response<ProxyBody>, BoxError> {
    if req.uri().path() == "/health" {
        return Ok(Response::new(full("ok\n")));
    }
    if let Some(protocol) = req.headers().get(header::UPGRADE).cloned() {
        return Ok(echo_upgrade(&name, &mut req, protocol));
    }
    if let Some(ms) = query_param::<u64>(&req, "delay_ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status =
        query_param::<u16>(&req, "status").and_then(|s| StatusCode::from_u16(s).ok()).unwrap_or(StatusCode::OK);
    let size = query_param::<u64>(&req, "bytes");
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned().into()))
        .collect();
    let (method, path) = (req.method().to_string(), req.uri().path().to_string());
    let version = format!("{:?}", req.version());

    // Count the request body as it streams in; nothing is kept but its trailers, echoed
    // so tests can see that a proxy forwarded them.
    let mut body = req.into_body();
    let mut body_bytes: u64 = 0;
    let mut trailers = serde_json::Map::new();
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) => body_bytes += data.len() as u64,
            Err(frame) => {
                for (k, v) in frame.into_trailers().iter().flatten() {
                    trailers.insert(k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned().into());
                }
            }
        }
    }

    let mut resp = match size {
        Some(n) => Response::new(pattern_body(n)),
        None => {
            let json = serde_json::json!({
                "backend": &*name, "method": method, "path": path, "host": host,
                "headers": headers, "body_bytes": body_bytes, "version": version, "trailers": trailers,
            });
            let mut r = Response::new(full(json.to_string()));
            r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
            r
        }
    };
    *resp.status_mut() = status;
    if method == "HEAD" {
        // The headers of a GET, no body (HTTP/1.1 servers drop it themselves; HTTP/2 ones
        // would send it).
        if let Some(len) = http_body::Body::size_hint(resp.body()).exact() {
            resp.headers_mut().insert(header::CONTENT_LENGTH, len.into());
        }
        resp = resp.map(|_| crate::body::empty());
    }
    resp.headers_mut()
        .insert("x-backend", header::HeaderValue::from_str(&name).unwrap_or(header::HeaderValue::from_static("?")));
    Ok(resp)
}

/// Agrees to any upgrade (WebSocket included) and then echoes every byte back, so tests
/// can check a tunnel end to end without speaking the upgraded protocol.
fn echo_upgrade(name: &str, req: &mut Request<Incoming>, protocol: header::HeaderValue) -> Response<ProxyBody> {
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut read, &mut write).await;
        }
    });
    let mut resp = Response::new(crate::body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("upgrade"));
    resp.headers_mut().insert(header::UPGRADE, protocol);
    if let Ok(v) = header::HeaderValue::from_str(name) {
        resp.headers_mut().insert("x-backend", v);
    }
    resp
}

/// `n` bytes in 64 KiB chunks, generated as they are sent.
fn pattern_body(n: u64) -> ProxyBody {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
    let chunks = stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        async move {
            (left > 0).then(|| {
                let take = left.min(CHUNK);
                (Ok::<_, BoxError>(http_body::Frame::data(chunk.slice(..take as usize))), left - take)
            })
        }
    });
    StreamBody::new(chunks).boxed_unsync()
}
