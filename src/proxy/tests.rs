//! The listeners in process: a real QUIC and a real TLS-over-TCP client on loopback,
//! scripted backends behind the route table, so `h3.rs` and `tcp.rs` are tested on their
//! own (the end-to-end tests in `tests/` run the whole binary).

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Version};

use super::test_support::{Act, Scripted, route_table};
use super::{DataPlane, ListenOptions};
use crate::client::{H3Client, RequestBody, TrustOptions, request_tcp};
use crate::config::CongestionControl;
use crate::routes::CertSet;
use crate::telemetry::metrics::Metrics;
use crate::tls::Resumption;
use crate::upstream::Timeouts;

/// A data plane on a loopback port serving one catch-all route to `backends`.
async fn start(backends: &[Arc<Scripted>], alt_svc_port: Option<u16>) -> (DataPlane, Arc<Metrics>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("qi-listeners-{}-{}", std::process::id(), rand::random::<u32>()));
    let dev = crate::tls::generate_dev_cert(&[], &dir).unwrap();
    let (table, _) = route_table(backends, Timeouts::default(), None, CertSet::with_default(dev.key));
    let options = ListenOptions {
        address: "127.0.0.1:0".parse().unwrap(),
        alt_svc_port,
        congestion: CongestionControl::Cubic,
        resumption: Resumption::single_use(true),
        trusted_proxies: Default::default(),
        limits: Default::default(),
        tcp: Default::default(),
    };
    let metrics = Arc::new(Metrics::new().unwrap());
    let plane = DataPlane::start(&options, super::tables(table), metrics.clone()).await.unwrap();
    (plane, metrics, dir)
}

fn insecure() -> TrustOptions {
    TrustOptions { insecure: true, ca_file: None }
}

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

#[tokio::test]
async fn http3_requests_go_through_the_pipeline_and_their_bodies_stream_back() {
    let backend = Scripted::new("a", &[Act::Status(200)]);
    let (plane, metrics, dir) = start(std::slice::from_ref(&backend), None).await;
    let client = H3Client::connect(plane.local_addr, "localhost", &insecure()).await.unwrap();
    let resp = client.request(get("/x"), RequestBody::Empty).await.unwrap();
    assert_eq!((resp.status.as_u16(), resp.version), (200, Version::HTTP_3));
    assert!(resp.headers.contains_key("x-request-id"));
    assert_eq!(resp.bytes().await.unwrap(), "from a");
    let post = client.request(Request::post("/y").body(()).unwrap(), RequestBody::Bytes("abc".into())).await.unwrap();
    assert_eq!(post.status, 200);
    assert_eq!(backend.calls(), 2, "both requests on one connection");
    assert_eq!(metrics.quic_connections_open.get(), 1);
    // Responses hold the connection too; once the client lets go, nothing holds the drain.
    drop((client, post));
    assert!(plane.shutdown(Duration::from_secs(5)).await);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn tcp_responses_advertise_http3_on_the_configured_port_over_http2_and_http11() {
    let backend = Scripted::new("a", &[Act::Status(204)]);
    let (plane, _metrics, dir) = start(std::slice::from_ref(&backend), Some(4433)).await;
    for version in [Version::HTTP_2, Version::HTTP_11] {
        let resp = request_tcp(plane.local_addr, "localhost", &insecure(), version, get("/"), RequestBody::Empty)
            .await
            .unwrap();
        assert_eq!((resp.status.as_u16(), resp.version), (204, version));
        assert_eq!(resp.headers["alt-svc"], "h3=\":4433\"; ma=86400", "{version:?}");
    }
    assert!(plane.shutdown(Duration::from_secs(1)).await);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_http3_request_finish_then_refuses_new_connections() {
    let backend = Scripted::new("slow", &[Act::Slow(300)]);
    let (plane, _metrics, dir) = start(std::slice::from_ref(&backend), None).await;
    let addr = plane.local_addr;
    let client = H3Client::connect(addr, "localhost", &insecure()).await.unwrap();
    let in_flight = tokio::spawn(async move {
        let resp = client.request(get("/slow"), RequestBody::Empty).await.unwrap();
        (resp.status.as_u16(), resp.bytes().await.unwrap())
    });
    // The request is at the backend once the backend has seen it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while backend.calls() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the request never reached the backend");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(plane.shutdown(Duration::from_secs(5)).await, "drained in time");
    assert_eq!(in_flight.await.unwrap(), (200, "from slow".into()));
    let refused = tokio::time::timeout(Duration::from_secs(3), H3Client::connect(addr, "localhost", &insecure())).await;
    assert!(!matches!(refused, Ok(Ok(_))), "no new connection after shutdown");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn alt_svc_names_the_port_and_a_day() {
    assert_eq!(super::tcp::alt_svc(443), "h3=\":443\"; ma=86400");
}
