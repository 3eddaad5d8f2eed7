//! The admin HTTP server: `/healthz` (alive), `/readyz` (a route table is loaded and the
//! listeners are bound; the body also names what is degraded, such as a failing watch)
//! and `/debug/routes` (the live route table, read-only; loopback peers only unless
//! allowed from anywhere, since it lists every tenant's hosts and backend addresses).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
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

/// `/debug/routes` and who may read it. It shows every tenant's hosts, paths and backend
/// addresses, so by default only peers on loopback get it (someone on the node, or
/// `kubectl port-forward`); `/metrics`, `/healthz` and `/readyz` are for anyone.
#[derive(Clone)]
pub struct DebugRoutes {
    pub view: RoutesView,
    pub from_anywhere: bool,
}

/// Whether the process is ready to take traffic, and what is degraded while it serves.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
    /// One line each; shown in the `/readyz` body without changing its status, because a
    /// degraded process still serves what it has (taking it out of a load balancer would
    /// serve nothing instead).
    degraded: ArcSwap<Vec<String>>,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
    pub fn set_degraded(&self, lines: Vec<String>) {
        self.degraded.store(Arc::new(lines));
    }
    pub fn degraded(&self) -> Vec<String> {
        self.degraded.load().as_ref().clone()
    }

    /// The `/readyz` answer.
    fn report(&self) -> (StatusCode, String) {
        let (status, mut body) = if self.is_ready() {
            (StatusCode::OK, "ready\n".to_string())
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_string())
        };
        for line in self.degraded.load().iter() {
            body.push_str("degraded: ");
            body.push_str(line);
            body.push('\n');
        }
        (status, body)
    }
}

/// Binds the admin address and serves until `shutdown`.
pub async fn start(
    addr: SocketAddr,
    routes: DebugRoutes,
    ready: Arc<Readiness>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => return,
            };
            let (ready, metrics) = (ready.clone(), metrics.clone());
            let routes = (routes.from_anywhere || peer.ip().to_canonical().is_loopback()).then(|| routes.view.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let resp = route(&req, routes.as_ref(), &ready, &metrics);
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

/// Answers one admin request; `routes` is `None` for a peer not allowed `/debug/routes`.
fn route<B>(
    req: &Request<B>,
    routes: Option<&RoutesView>,
    ready: &Readiness,
    metrics: &Metrics,
) -> Response<ProxyBody> {
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
        "/readyz" => {
            let (status, body) = ready.report();
            let mut resp = Response::new(full(body));
            *resp.status_mut() = status;
            resp
        }
        "/debug/routes" => {
            let Some(routes) = routes else {
                return text(StatusCode::FORBIDDEN, "/debug/routes is served to loopback peers only\n");
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_routes_only_for_peers_allowed_it() {
        let (ready, metrics) = (Readiness::default(), Metrics::new().unwrap());
        let view: RoutesView = Arc::new(|| serde_json::json!({"routes": []}));
        let req = Request::get("/debug/routes").body(()).unwrap();
        assert_eq!(route(&req, Some(&view), &ready, &metrics).status(), StatusCode::OK);
        assert_eq!(route(&req, None, &ready, &metrics).status(), StatusCode::FORBIDDEN);
        let metrics_req = Request::get("/metrics").body(()).unwrap();
        assert_eq!(route(&metrics_req, None, &ready, &metrics).status(), StatusCode::OK, "metrics for anyone");
    }

    #[test]
    fn readyz_stays_ready_and_names_what_is_degraded() {
        let r = Readiness::default();
        assert_eq!(r.report(), (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_string()));
        r.set(true);
        assert_eq!(r.report(), (StatusCode::OK, "ready\n".to_string()));
        r.set_degraded(vec!["BackendGroup watch failing (routes are built without BackendGroup objects): 404".into()]);
        let (status, body) = r.report();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            "ready\ndegraded: BackendGroup watch failing (routes are built without BackendGroup objects): 404\n"
        );
        r.set_degraded(Vec::new());
        assert_eq!(r.report().1, "ready\n");
    }
}
