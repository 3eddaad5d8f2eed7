//! The admin HTTP server: `/healthz` (alive), `/readyz` (a route table is loaded and the
//! listeners are bound) and `/debug/routes` (the live route table, read-only).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Method, Request, Response, StatusCode, header};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use crate::body::{ProxyBody, full};

/// The live route table as JSON, for `/debug/routes`; the caller knows the table, the
/// admin server only shows it.
pub type RoutesView = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Whether the process is ready to take traffic.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Binds the admin address and serves until `shutdown`.
pub async fn start(
    addr: SocketAddr,
    routes: RoutesView,
    ready: Arc<Readiness>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                // Out of file descriptors and the like: back off instead of spinning.
                accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => { tokio::time::sleep(std::time::Duration::from_millis(50)).await; continue } },
                () = shutdown.cancelled() => return,
            };
            let (routes, ready, metrics) = (routes.clone(), ready.clone(), metrics.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let resp = route(&req, &routes, &ready, &metrics);
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    tracing::info!(address = %local, "admin server listening");
    Ok(local)
}

fn route<B>(req: &Request<B>, routes: &RoutesView, ready: &Readiness, metrics: &Metrics) -> Response<ProxyBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/metrics" => {
            let mut resp = Response::new(full(metrics.render()));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; version=0.0.4"));
            resp
        }
        "/readyz" if ready.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/debug/routes" => {
            let body = routes();
            let mut resp = Response::new(full(body.to_string()));
            resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp
}
