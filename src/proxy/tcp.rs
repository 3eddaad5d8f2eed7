//! The HTTPS-over-TCP listener (HTTP/1.1 and HTTP/2 by ALPN). Its responses carry
//! `Alt-Svc` so browsers discover the HTTP/3 listener on the same port.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use http::header::ALT_SVC;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::pipeline::{self, ConnInfo, Downstream, Shared};
use crate::telemetry::traces;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `Alt-Svc` value advertising HTTP/3 on `port`.
pub fn alt_svc(port: u16) -> HeaderValue {
    HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400")).unwrap_or(HeaderValue::from_static("clear"))
}

/// Accepts TLS connections until `shutdown`, then lets open connections finish their
/// in-flight requests (HTTP/2 GOAWAY, HTTP/1.1 `Connection: close`).
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    alt_svc: HeaderValue,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let graceful = GracefulShutdown::new();
    let alt_svc = Arc::new(alt_svc);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (stream, client) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, shared, alt_svc, watcher) =
            (acceptor.clone(), shared.clone(), alt_svc.clone(), graceful.watcher());
        let span = tracing::debug_span!("tcp_connection", %client);
        tracker.spawn(
            async move {
                let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!("TLS handshake timed out"),
                };
                let open = shared.metrics.tcp_connections_open.clone();
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (shared, alt_svc) = (shared.clone(), alt_svc.clone());
                    async move {
                        let span = traces::span!(
                            "http_request",
                            otel.kind = "server", http.request.method = %req.method(), url.path = %req.uri().path()
                        );
                        // Continued only from a trusted proxy: anyone else could force sampling.
                        if shared.trusted.trusts(client.ip()) {
                            traces::set_remote_parent(&span, req.headers());
                        }
                        let req = req.map(crate::body::boxed);
                        let mut resp = pipeline::handle(
                            &shared,
                            req,
                            ConnInfo { client, protocol: Downstream::Tcp, early_data: false },
                        )
                        .instrument(span.clone())
                        .await;
                        resp.headers_mut().insert(ALT_SVC, (*alt_svc).clone());
                        if !span.is_none() {
                            // hyper writes the response after we return: the span lives as
                            // long as the body, so it ends when the last byte is handed over.
                            let send = tracing::info_span!(parent: &span, "response_send");
                            resp = resp.map(|body| crate::body::boxed(crate::body::Guarded::new(body, send)));
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                open.inc();
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                if let Err(e) = watcher.watch(conn.into_owned()).await {
                    tracing::debug!(error = %e, "connection error");
                }
                open.dec();
            }
            .instrument(span),
        );
    }
    drop(listener);
    graceful.shutdown().await;
}
