//! Scoped ports (a Gateway with an address of its own) on the real data plane over
//! loopback: two port scopes with a route for `/` each answer with their own backend over
//! HTTP/1.1 (TLS and plaintext) and HTTP/3, the default listener keeps its own routes, and a
//! port no table names any more is closed while the others keep serving. Every wait has a
//! deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Backend, free_port, h3_get, insecure, tls, wait_until};
use quic_ingress::client::H3Client;
use quic_ingress::proxy::{DataPlane, ListenOptions, TcpOptions};
use quic_ingress::routes::{
    CertSet, HostRule, PathRule, PathType, RouteEntry, RouteTable, RouteTableBuilder, ScopedPort,
};
use quic_ingress::telemetry::metrics::Metrics;
use quic_ingress::upstream::{BackendUrl, EndpointRegistry, GroupSpec, Members};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const LOCALHOST: [u8; 4] = [127, 0, 0, 1];

fn localhost_key() -> Arc<CertifiedKey> {
    let g = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    quic_ingress::tls::certified_key_from_pem(g.cert.pem().as_bytes(), g.signing_key.serialize_pem().as_bytes())
        .unwrap()
}

fn certs() -> CertSet {
    CertSet::with_default(localhost_key())
}

/// The ports of one scope: TLS (TCP and UDP) and plaintext.
#[derive(Clone, Copy)]
struct Ports {
    tls: u16,
    plain: u16,
}

impl Ports {
    fn new() -> Self {
        Self { tls: free_port(), plain: free_port() }
    }
}

/// A table: `/` on the default listeners to `default`, and for each `(scope, ports,
/// backend)` a scope of its own with `/` to that backend.
fn table(
    registry: &EndpointRegistry,
    certs: &CertSet,
    default: &Backend,
    scopes: &[(&str, Ports, &Backend)],
    generation: u64,
) -> RouteTable {
    table_with(registry, certs, default, scopes, generation, |_| {})
}

/// [`table`], with `more` run on the builder before it is built.
fn table_with(
    registry: &EndpointRegistry,
    certs: &CertSet,
    default: &Backend,
    scopes: &[(&str, Ports, &Backend)],
    generation: u64,
    more: impl FnOnce(&mut RouteTableBuilder),
) -> RouteTable {
    let mut b = RouteTableBuilder::new(certs.clone());
    let route = |b: &mut RouteTableBuilder, id: &str, scoped: Option<&str>, backend: &Backend| {
        let url = BackendUrl::parse(&backend.url("http")).unwrap();
        let group = b.add_group(GroupSpec::new(id, Members::Discovered(vec![url])).compile(registry).unwrap());
        let path = PathRule::new("/", PathType::Prefix).unwrap();
        let entry = RouteEntry { scoped: scoped.map(str::to_string), ..RouteEntry::new(id, None, path, group) };
        b.add_entry(entry).unwrap();
    };
    route(&mut b, "default", None, default);
    for (scope, ports, backend) in scopes {
        let tls = ScopedPort { scope: scope.to_string(), tls: true, alt_svc_port: Some(443) };
        b.add_scoped_port(ports.tls, tls).unwrap();
        b.add_scoped_port(ports.plain, ScopedPort { scope: scope.to_string(), tls: false, alt_svc_port: None })
            .unwrap();
        route(&mut b, scope, Some(scope), backend);
    }
    more(&mut b);
    b.build(generation)
}

/// One HTTP/1.1 GET `/` over `io`: the status and the answering backend (`x-backend`).
async fn get1<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) -> (u16, String, String) {
    io.write_all(b"GET / HTTP/1.1\r\nHost: any.example\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut buf)).await.expect("answer in time").unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let header = |name: &str| {
        text.lines()
            .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
            .unwrap_or("")
            .to_string()
    };
    (status, header("x-backend"), header("alt-svc"))
}

async fn https1(port: u16) -> (u16, String, String) {
    get1(tls((LOCALHOST, port).into(), b"http/1.1").await).await
}

async fn http1(port: u16) -> (u16, String, String) {
    get1(tokio::net::TcpStream::connect(SocketAddr::from((LOCALHOST, port))).await.unwrap()).await
}

async fn h3(port: u16) -> (u16, String) {
    let client = H3Client::connect((LOCALHOST, port).into(), "localhost", &insecure()).await.expect("h3 connect");
    let answer = h3_get(&client, "any.example", "/").await;
    (answer.status, answer.backend())
}

/// A data plane on loopback with an empty table, and what tables for it are built from.
struct Started {
    plane: DataPlane,
    registry: EndpointRegistry,
    certs: CertSet,
}

/// The tests here run one at a time: each binds ports picked free a moment before
/// (`free_port`), and the data plane takes UDP port 0 and then the same port over TCP, so
/// two of them side by side could take each other's ports.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start() -> Started {
    let metrics = Arc::new(Metrics::new().unwrap());
    let registry = EndpointRegistry::new(metrics.clone(), None);
    let certs = certs();
    let options = ListenOptions {
        address: (LOCALHOST, 0).into(),
        alt_svc_port: None,
        congestion: Default::default(),
        resumption: quic_ingress::tls::Resumption::single_use(false),
        trusted_proxies: Default::default(),
        limits: Default::default(),
        tcp: TcpOptions::default(),
    };
    let tables = quic_ingress::proxy::tables(RouteTable::empty(certs.clone()));
    let plane = DataPlane::start(&options, tables, metrics).await.unwrap();
    Started { plane, registry, certs }
}

#[tokio::test]
async fn two_scopes_answer_for_the_same_path_with_their_own_backends_and_a_dropped_scope_closes() {
    let (a, b, d) = (Backend::start("a").await, Backend::start("b").await, Backend::start("default").await);
    let _one = ONE_AT_A_TIME.lock().await;
    let Started { plane, registry, certs } = start().await;
    let (pa, pb) = (Ports::new(), Ports::new());
    plane.publish(table(&registry, &certs, &d, &[("gw-a", pa, &a), ("gw-b", pb, &b)], 1));

    // Published means listening: no wait is needed before the first request.
    assert_eq!(h3(pa.tls).await, (200, "a".into()), "HTTP/3 on scope a's port");
    assert_eq!(h3(pb.tls).await, (200, "b".into()), "HTTP/3 on scope b's port");
    assert_eq!(h3(plane.local_addr.port()).await, (200, "default".into()), "the default listener");
    let (status, backend, alt_svc) = https1(pa.tls).await;
    assert_eq!((status, backend.as_str()), (200, "a"), "HTTPS over TCP on scope a's port");
    assert_eq!(alt_svc, "h3=\":443\"; ma=86400", "the advertised port is the scope's, not the data-plane port");
    let (status, backend, _) = https1(pb.tls).await;
    assert_eq!((status, backend.as_str()), (200, "b"));
    let (status, backend, alt_svc) = http1(pa.plain).await;
    assert_eq!((status, backend.as_str()), (200, "a"), "plaintext HTTP on scope a's plain port");
    assert_eq!(alt_svc, "", "no Alt-Svc on plaintext");
    assert_eq!(http1(pb.plain).await.1, "b");
    let mut open = plane.scoped_listeners().ports();
    open.sort_unstable();
    let mut want = vec![pa.tls, pa.plain, pb.tls, pb.plain];
    want.sort_unstable();
    assert_eq!(open, want);

    // Scope b goes: its ports close, scope a's keep serving.
    let held = tls((LOCALHOST, pa.tls).into(), b"http/1.1").await;
    plane.publish(table(&registry, &certs, &d, &[("gw-a", pa, &a)], 2));
    wait_until("scope b's TCP port to close", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(SocketAddr::from((LOCALHOST, pb.tls))).await.is_err()
    })
    .await;
    assert!(tokio::net::TcpStream::connect(SocketAddr::from((LOCALHOST, pb.plain))).await.is_err());
    assert_eq!(get1(held).await.1, "a", "a connection to a kept port, made before the change, is served");
    assert_eq!(h3(pa.tls).await, (200, "a".into()));
    assert_eq!(http1(pa.plain).await.1, "a");
    assert!(plane.shutdown(Duration::from_secs(5)).await, "drained");
}

/// The certificate the TLS listener on `port` presents for SNI `localhost`.
async fn presented(port: u16) -> Vec<u8> {
    let stream = tls((LOCALHOST, port).into(), b"http/1.1").await;
    let certs = stream.get_ref().1.peer_certificates().expect("a certificate");
    certs[0].as_ref().to_vec()
}

#[tokio::test]
async fn a_scoped_port_presents_its_scopes_certificate_and_no_other_scopes() {
    let (a, b, d) = (Backend::start("a").await, Backend::start("b").await, Backend::start("default").await);
    let _one = ONE_AT_A_TIME.lock().await;
    let Started { plane, registry, certs } = start().await;
    let (pa, pb) = (Ports::new(), Ports::new());
    // Scope a has a certificate of its own for `localhost`; the shared listeners another.
    let (own, shared) = (localhost_key(), localhost_key());
    let own_der = own.cert[0].as_ref().to_vec();
    let shared_der = shared.cert[0].as_ref().to_vec();
    let host = HostRule::Exact("localhost".into());
    plane.publish(table_with(&registry, &certs, &d, &[("gw-a", pa, &a), ("gw-b", pb, &b)], 1, |b| {
        b.scoped_certs_mut("gw-a").insert(&host, own.clone());
        b.certs_mut().insert(&host, shared.clone());
    }));
    assert_eq!(presented(pa.tls).await, own_der, "scope a's port: its own certificate");
    assert_eq!(presented(plane.local_addr.port()).await, shared_der, "the shared listener: its own");
    let on_b = presented(pb.tls).await;
    assert!(on_b != own_der && on_b != shared_der, "scope b's port: the default, neither of the others");
    assert_eq!(on_b, certs.resolve(None).unwrap().cert[0].as_ref().to_vec());
    // Requests are still served there, by the scope's routes.
    assert_eq!(h3(pa.tls).await, (200, "a".into()));
    assert_eq!(h3(pb.tls).await, (200, "b".into()));
    assert!(plane.shutdown(Duration::from_secs(5)).await, "drained");
}

/// A scoped port another socket holds when the table comes is not given up: the data plane
/// binds it once it is free, with no new table, and serves its scope there; the scope's
/// other port serves from the start.
#[tokio::test]
async fn a_scoped_port_busy_at_publish_is_bound_once_it_is_free() {
    let (a, d) = (Backend::start("a").await, Backend::start("default").await);
    let _one = ONE_AT_A_TIME.lock().await;
    let Started { plane, registry, certs } = start().await;
    let pa = Ports::new();
    // Someone else has the TLS port's UDP side (as a client's ephemeral port may).
    let squatter = std::net::UdpSocket::bind(SocketAddr::from((LOCALHOST, pa.tls))).unwrap();
    plane.publish(table(&registry, &certs, &d, &[("gw-a", pa, &a)], 1));
    assert_eq!(plane.scoped_listeners().ports(), vec![pa.plain], "only the free port is open");
    assert_eq!(http1(pa.plain).await.1, "a", "the free port serves its scope meanwhile");

    drop(squatter);
    wait_until("the freed port to be bound", Duration::from_secs(10), || async {
        plane.scoped_listeners().ports().contains(&pa.tls)
    })
    .await;
    assert_eq!(h3(pa.tls).await, (200, "a".into()), "HTTP/3 on the port once it was free");
    assert_eq!(https1(pa.tls).await.1, "a", "and HTTPS over TCP");
    assert!(plane.shutdown(Duration::from_secs(5)).await, "drained, the retry included");
}
