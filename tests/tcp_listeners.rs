//! The TCP listeners over loopback against a real `quic-ingress serve`: the plaintext HTTP
//! listener (HTTP/1.1 and h2c, same pipeline and limits as HTTPS), and the PROXY protocol
//! on both TCP listeners, from trusted and untrusted peers. Every wait has a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Answer, Backend, Proxy, catch_all, free_port};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use quic_ingress::client::TrustOptions;
use quic_ingress::net::proxy_protocol::encode_v2;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Short deadlines so the attacks are cut off quickly.
const LIMITS: &str = "  limits:\n    header_timeout: 1s\n    handshake_timeout: 2s\n";
/// The client a trusted balancer names in its PROXY header.
const CLIENT: &str = "203.0.113.7:51000";

/// A proxy with a plaintext listener, `extra` server lines, `limits` lines under
/// `server.limits`, and one catch-all backend.
async fn proxy_with(extra: &str, limits: &str) -> (Proxy, Backend, SocketAddr) {
    let backend = Backend::start("b").await;
    let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let server = format!("  http_listen: \"{http}\"\n{extra}{LIMITS}{limits}");
    let proxy = Proxy::start_with(&catch_all(&backend.url("http")), &server).await;
    (proxy, backend, http)
}

/// The PROXY protocol on, trusting only 127.0.0.1.
const PROXY_PROTOCOL: &str = "  proxy_protocol: true\n  trusted_proxies: [\"127.0.0.1\"]\n";

/// A TCP connection to `to` from the address `from` (any port).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), socket.connect(to)).await.expect("connect in time").unwrap()
}

/// TLS over `tcp` with ALPN `alpn`, trusting any certificate.
async fn tls(tcp: TcpStream, alpn: &[u8]) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = TrustOptions { insecure: true, ca_file: None }.tls_config(&[alpn]).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp)).await.expect("TLS in time")
}

/// One request over `io` (HTTP/2 when `h2`, else HTTP/1.1), body read whole.
async fn send<S>(io: S, h2: bool, req: http::Request<Full<Bytes>>) -> Result<Answer, hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    };
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(10), body.collect()).await.expect("body in time")?.to_bytes();
    Ok(Answer { status: parts.status.as_u16(), headers: parts.headers, body })
}

/// A GET for `path` naming `shop.example.com` as it should be named in `h2` or HTTP/1.1,
/// with a spoofed `X-Forwarded-For`.
fn spoofed(scheme: &str, h2: bool, path: &str) -> http::Request<Full<Bytes>> {
    let builder = if h2 {
        http::Request::get(format!("{scheme}://shop.example.com{path}"))
    } else {
        http::Request::get(path).header("host", "shop.example.com")
    };
    builder.header("x-forwarded-for", "1.2.3.4").header("x-real-ip", "1.2.3.4").body(Full::default()).unwrap()
}

/// The access-log line of the request for `path`.
fn access_line(proxy: &Proxy, path: &str) -> String {
    let log = std::fs::read_to_string(&proxy.log).unwrap();
    let needle = format!("\"path\":\"{path}\"");
    log.lines().find(|l| l.contains(&needle)).unwrap_or_else(|| panic!("no access line for {path}")).to_string()
}

/// Whether the peer closes `stream` (or resets it) within `within`, answering nothing.
async fn closed_silently(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(within, stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

// === plaintext listener ===

#[tokio::test]
async fn plaintext_http1_and_h2c_are_routed_streamed_and_say_http() {
    let (proxy, _b, http) = proxy_with("", "").await;
    for h2 in [false, true] {
        let tcp = TcpStream::connect(http).await.unwrap();
        let path = if h2 { "/h2c" } else { "/h1" };
        let a = send(tcp, h2, spoofed("http", h2, path)).await.unwrap();
        assert_eq!(a.status, 200, "{path}");
        assert!(a.headers.get("alt-svc").is_none(), "no Alt-Svc on plaintext: {:?}", a.headers);
        let j = a.json();
        assert_eq!(j["path"], path);
        assert_eq!(j["host"], "shop.example.com");
        let h = &j["headers"];
        assert_eq!(h["x-forwarded-proto"], "http", "{h}");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1", "an untrusted client's claim is replaced: {h}");
        assert_eq!(h["forwarded"], "for=127.0.0.1;host=\"shop.example.com\";proto=http");
        let line = access_line(&proxy, path);
        assert!(line.contains("\"protocol\":\"Cleartext\""), "{line}");
    }

    // Streamed both ways over h2c: a 16 MiB upload counted by the backend as it arrives,
    // and a 16 MiB download.
    const MIB: usize = 1024 * 1024;
    let tcp = TcpStream::connect(http).await.unwrap();
    let up =
        http::Request::post("http://shop.example.com/up").body(Full::new(Bytes::from(vec![7u8; 16 * MIB]))).unwrap();
    let a = send(tcp, true, up).await.unwrap();
    assert_eq!(a.json()["body_bytes"], 16 * MIB);
    let tcp = TcpStream::connect(http).await.unwrap();
    let down = http::Request::get(format!("http://shop.example.com/down?bytes={}", 16 * MIB)).body(Full::default());
    let a = send(tcp, true, down.unwrap()).await.unwrap();
    assert_eq!((a.status, a.body.len()), (200, 16 * MIB));

    // The HTTPS listener still says https and advertises HTTP/3.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let a = send(tls(tcp, b"h2").await.unwrap(), true, spoofed("https", true, "/tls")).await.unwrap();
    assert_eq!(a.json()["headers"]["x-forwarded-proto"], "https");
    assert!(a.headers.get("alt-svc").is_some());
}

#[tokio::test]
async fn slowloris_on_the_plaintext_port_is_closed_at_the_header_deadline() {
    let (proxy, _b, http) = proxy_with("", "").await;
    let mut conn = TcpStream::connect(http).await.unwrap();
    let started = Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    let mut closed = None;
    // One byte every 100 ms: the whole head would take far longer than the deadline.
    for b in head.iter().chain(std::iter::repeat(&b'a')).take(100) {
        if conn.write_all(&[*b]).await.is_err() {
            closed = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(read) = tokio::time::timeout(Duration::from_millis(100), conn.read(&mut buf)).await
            && read.map_or(true, |n| n == 0 || buf[..n].starts_with(b"HTTP/1.1 408"))
        {
            closed = Some(started.elapsed());
            break;
        }
    }
    let closed = closed.expect("the connection is closed within 10 s of trickling");
    eprintln!("plaintext slowloris: closed after {closed:?}");
    assert!(closed >= Duration::from_millis(900) && closed < Duration::from_secs(3), "closed after {closed:?}");
    let tcp = TcpStream::connect(http).await.unwrap();
    assert_eq!(send(tcp, false, spoofed("http", false, "/after")).await.unwrap().status, 200, "still serving");
    proxy.proc.assert_rss_under(100, "plaintext slowloris");
}

// === PROXY protocol ===

#[tokio::test]
async fn a_trusted_balancer_names_the_client_over_tls_and_plaintext() {
    let (proxy, _b, http) = proxy_with(PROXY_PROTOCOL, "").await;
    let client: SocketAddr = CLIENT.parse().unwrap();
    for (plain, h2) in [(false, false), (false, true), (true, false), (true, true)] {
        let to = if plain { http } else { proxy.addr };
        let mut tcp = connect_from([127, 0, 0, 1], to).await;
        tcp.write_all(&encode_v2(Some(client), to, &[])).await.unwrap();
        let path = format!("/named-{}-{}", if plain { "plain" } else { "tls" }, if h2 { "h2" } else { "h1" });
        let scheme = if plain { "http" } else { "https" };
        let a = if plain {
            send(tcp, h2, spoofed(scheme, h2, &path)).await
        } else {
            send(tls(tcp, if h2 { b"h2" } else { b"http/1.1" }).await.unwrap(), h2, spoofed(scheme, h2, &path)).await
        }
        .unwrap();
        let h = &a.json()["headers"];
        // The named client is the peer: not a trusted proxy, so its own claim is replaced.
        assert_eq!(h["x-forwarded-for"], "203.0.113.7", "{path}: {h}");
        assert_eq!(h["x-real-ip"], "203.0.113.7", "{path}: {h}");
        assert_eq!(h["forwarded"], format!("for=203.0.113.7;host=\"shop.example.com\";proto={scheme}"), "{path}");
        assert_eq!(h["x-forwarded-proto"], scheme);
        let line = access_line(&proxy, &path);
        assert!(
            line.contains("\"client_ip\":\"203.0.113.7\"") && line.contains("\"peer_ip\":\"203.0.113.7\""),
            "{line}"
        );
    }

    // LOCAL (the balancer's own health check): the balancer is the peer, and trusted.
    let mut tcp = connect_from([127, 0, 0, 1], http).await;
    tcp.write_all(&encode_v2(None, http, &[])).await.unwrap();
    let a = send(tcp, false, spoofed("http", false, "/local")).await.unwrap();
    assert_eq!(a.json()["headers"]["x-forwarded-for"], "1.2.3.4, 127.0.0.1", "a trusted peer's header is kept");
    // Version 1 text works too.
    let mut tcp = connect_from([127, 0, 0, 1], http).await;
    tcp.write_all(format!("PROXY TCP4 203.0.113.8 127.0.0.1 4000 {}\r\n", http.port()).as_bytes()).await.unwrap();
    let a = send(tcp, false, spoofed("http", false, "/v1")).await.unwrap();
    assert_eq!(a.json()["headers"]["x-real-ip"], "203.0.113.8");
}

#[tokio::test]
async fn an_untrusted_peer_is_a_plain_client_and_its_header_is_garbage() {
    let (proxy, _b, http) = proxy_with(PROXY_PROTOCOL, "").await;
    let client: SocketAddr = CLIENT.parse().unwrap();
    // Plaintext: the header is read as HTTP/1.1 and refused as such; nobody is named.
    let mut tcp = connect_from([127, 0, 0, 2], http).await;
    tcp.write_all(&encode_v2(Some(client), http, &[])).await.unwrap();
    tcp.write_all(b"GET /spoof HTTP/1.1\r\nHost: shop.example.com\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await.expect("answered in time");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 400"), "{answer}");
    // TLS: the header is no ClientHello.
    let mut tcp = connect_from([127, 0, 0, 2], proxy.addr).await;
    tcp.write_all(&encode_v2(Some(client), proxy.addr, &[])).await.unwrap();
    assert!(tls(tcp, b"http/1.1").await.is_err(), "a PROXY header before TLS from an untrusted peer");
    let log = std::fs::read_to_string(&proxy.log).unwrap();
    assert!(!log.contains("203.0.113.7"), "the untrusted header named a client somewhere: {log}");

    // Without a header it is served, as itself.
    for (to, plain) in [(http, true), (proxy.addr, false)] {
        let tcp = connect_from([127, 0, 0, 2], to).await;
        let a = if plain {
            send(tcp, false, spoofed("http", false, "/untrusted")).await
        } else {
            send(tls(tcp, b"http/1.1").await.unwrap(), false, spoofed("https", false, "/untrusted")).await
        }
        .unwrap();
        assert_eq!(a.json()["headers"]["x-forwarded-for"], "127.0.0.2");
    }
}

#[tokio::test]
async fn a_trusted_peer_without_a_header_is_closed() {
    let (proxy, _b, http) = proxy_with(PROXY_PROTOCOL, "").await;
    // Plain HTTP where the header should be: closed, nothing answered.
    let mut tcp = connect_from([127, 0, 0, 1], http).await;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: shop.example.com\r\n\r\n").await.unwrap();
    assert!(closed_silently(&mut tcp, Duration::from_secs(3)).await, "served without a PROXY header");
    // A ClientHello where the header should be.
    let tcp = connect_from([127, 0, 0, 1], proxy.addr).await;
    assert!(tls(tcp, b"http/1.1").await.is_err(), "TLS without a PROXY header");
    // A header naming an unknown family or version.
    let mut bad = encode_v2(Some(CLIENT.parse().unwrap()), http, &[]);
    bad[12] = 0x31;
    let mut tcp = connect_from([127, 0, 0, 1], http).await;
    tcp.write_all(&bad).await.unwrap();
    assert!(closed_silently(&mut tcp, Duration::from_secs(3)).await);
}

#[tokio::test]
async fn a_trickled_header_is_closed_at_the_header_deadline() {
    let (proxy, _b, _http) = proxy_with(PROXY_PROTOCOL, "").await;
    let header = encode_v2(Some(CLIENT.parse().unwrap()), proxy.addr, &[]);
    let mut tcp = connect_from([127, 0, 0, 1], proxy.addr).await;
    let started = Instant::now();
    let mut closed = None;
    // One byte every 100 ms: the 28-byte header would take 2.8 s, the deadline is 1 s.
    for b in &header {
        if tcp.write_all(&[*b]).await.is_err() {
            closed = Some(started.elapsed());
            break;
        }
        if closed_silently(&mut tcp, Duration::from_millis(100)).await {
            closed = Some(started.elapsed());
            break;
        }
    }
    let closed = closed.expect("closed before the header was complete");
    eprintln!("trickled PROXY header: closed after {closed:?}");
    assert!(closed >= Duration::from_millis(900) && closed < Duration::from_secs(2), "closed after {closed:?}");
    assert!(common::metric(proxy.admin, "quic_ingress_limit_hits_total{limit=\"header_timeout\"}").await >= 1.0);
}

/// A plaintext connection from the trusted balancer naming `client`, with one request
/// answered on it (so it is counted against `client` by the time this returns).
async fn named_connection(
    http: SocketAddr,
    client: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let mut tcp = connect_from([127, 0, 0, 1], http).await;
    tcp.write_all(&encode_v2(Some(client), http, &[])).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/cap").header("host", "shop.example.com").body(Full::default()).unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200, "{client}");
    sender
}

#[tokio::test]
async fn per_ip_caps_apply_to_the_clients_a_balancer_names() {
    let (proxy, _b, http) =
        proxy_with(PROXY_PROTOCOL, "    max_connections_per_ip: 2\n    max_handshakes_per_ip: 2\n").await;
    // Four connections from one balancer for four clients, all open at once: the
    // balancer's own address is at no cap.
    let mut open = Vec::new();
    for n in 1..=4u8 {
        open.push(named_connection(http, ([203, 0, 113, n], 1000).into()).await);
    }
    // Two more for one of them fill its cap; a third naming it is refused.
    let full: SocketAddr = "203.0.113.9:1".parse().unwrap();
    for _ in 0..2 {
        open.push(named_connection(http, full).await);
    }
    let mut tcp = connect_from([127, 0, 0, 1], http).await;
    tcp.write_all(&encode_v2(Some(full), http, &[])).await.unwrap();
    assert!(closed_silently(&mut tcp, Duration::from_secs(3)).await, "over the named client's cap");
    assert!(common::metric(proxy.admin, "quic_ingress_limit_hits_total{limit=\"connections_per_ip\"}").await >= 1.0);
    drop(open);
}

#[tokio::test]
async fn websockets_pass_the_plaintext_listener_after_a_proxy_header() {
    let (_proxy, _b, http) = proxy_with(PROXY_PROTOCOL, "").await;
    let mut tcp = connect_from([127, 0, 0, 1], http).await;
    // The header and the upgrade request in one write: nothing past the header is eaten.
    let mut first = encode_v2(Some(CLIENT.parse().unwrap()), http, &[]);
    first.extend_from_slice(
        b"GET /chat HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    tcp.write_all(&first).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        head.push(tokio::time::timeout(Duration::from_secs(5), tcp.read_u8()).await.expect("101 in time").unwrap());
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101") && head.contains("upgrade: websocket"), "{head}");
    for message in [&b"hello"[..], &[b'x'; 100_000][..]] {
        tcp.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut echoed)).await.expect("echo").unwrap();
        assert_eq!(echoed, message);
    }
}
