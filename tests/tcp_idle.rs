//! Idle and half-sent requests on the TCP listener, against a real `quic-ingress serve`
//! over loopback: the HTTP/1.1 keep-alive idle timeout (its own setting, apart from the
//! header deadline), and an HTTP/2 stream whose HEADERS never end (no END_HEADERS, then
//! silence or a trickle of CONTINUATION frames). Each test prints the time until the
//! connection was freed, and the proxy's RSS.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Proxy, catch_all, h3_get, tls};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

async fn proxy(limits: &[(&str, &str)]) -> (Proxy, Backend) {
    proxy_with("", limits).await
}

/// A proxy with `server` lines and `limits` under `server.limits`.
async fn proxy_with(server: &str, limits: &[(&str, &str)]) -> (Proxy, Backend) {
    let mut extra = format!("{server}  limits:\n");
    for (k, v) in limits {
        extra.push_str(&format!("    {k}: {v}\n"));
    }
    let backend = Backend::start("b").await;
    let proxy = Proxy::start_with(&catch_all(&backend.url("http")), &extra).await;
    (proxy, backend)
}

async fn still_serving(proxy: &Proxy, attack: &str) {
    let client = proxy.h3().await;
    assert_eq!(h3_get(&client, "localhost", "/after").await.status, 200, "{attack}: a normal request afterwards");
    proxy.proc.assert_rss_under(100, attack);
}

// === HTTP/1.1 keep-alive ===

/// Reads one HTTP/1.1 response (Content-Length or chunked body); its status.
async fn read_response<S: AsyncRead + Unpin>(conn: &mut S) -> u16 {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert!(conn.read(&mut byte).await.expect("response head") == 1, "closed mid-head");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
    let length = head.lines().find_map(|l| l.strip_prefix("content-length:")).map(|v| v.trim().parse().unwrap());
    match length {
        Some(n) => {
            let mut body = vec![0u8; n];
            conn.read_exact(&mut body).await.expect("body");
        }
        None => {
            // Chunked: read to the last chunk.
            let mut body = Vec::new();
            while !body.ends_with(b"0\r\n\r\n") {
                assert!(conn.read(&mut byte).await.expect("chunk") == 1, "closed mid-body");
                body.push(byte[0]);
            }
        }
    }
    status
}

async fn get<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut S, path: &str) -> u16 {
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).await.expect("request");
    tokio::time::timeout(Duration::from_secs(5), read_response(conn)).await.expect("answered in time")
}

/// Waits (at most `wait`) for the server to close the connection; when it did.
async fn closed_at<S: AsyncRead + Unpin>(conn: &mut S, wait: Duration) -> Option<Instant> {
    let mut buf = [0u8; 512];
    let until = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(until, conn.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(Instant::now()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_its_own_deadline_and_a_busy_one_is_not() {
    // The keep-alive wait (1 s) is shorter than the header deadline (3 s): the idle
    // connection goes at the first, so the two are separate timers.
    let (proxy, _b) = proxy(&[("header_timeout", "3s"), ("http1_keep_alive_idle", "1s")]).await;
    let mut idle = tls(proxy.addr, b"http/1.1").await;
    assert_eq!(get(&mut idle, "/first").await, 200);
    let answered = Instant::now();
    let closed = closed_at(&mut idle, Duration::from_secs(10)).await.expect("closed within 10 s");
    let after = closed - answered;
    eprintln!("keep-alive idle 1s (header deadline 3s): closed {after:?} after the last response");
    assert!(after >= Duration::from_millis(950) && after < Duration::from_millis(2500), "closed after {after:?}");

    // A connection that keeps sending requests, each within the idle limit, stays up past
    // both deadlines.
    let mut busy = tls(proxy.addr, b"http/1.1").await;
    let started = Instant::now();
    for n in 0..9 {
        assert_eq!(get(&mut busy, &format!("/busy/{n}")).await, 200, "request {n} on the same connection");
        tokio::time::sleep(Duration::from_millis(450)).await;
    }
    eprintln!("keep-alive idle 1s: 9 requests 450 ms apart served on one connection over {:?}", started.elapsed());
    assert!(started.elapsed() > Duration::from_secs(3));
    still_serving(&proxy, "keep-alive idle").await;
}

#[tokio::test]
async fn the_plaintext_listener_has_the_same_keep_alive_deadline() {
    let http: std::net::SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
    let listen = format!("  http_listen: \"{http}\"\n");
    let (_proxy, _b) = proxy_with(&listen, &[("header_timeout", "3s"), ("http1_keep_alive_idle", "1s")]).await;
    let mut conn = tokio::net::TcpStream::connect(http).await.expect("connect");
    assert_eq!(get(&mut conn, "/plain").await, 200);
    let answered = Instant::now();
    let closed = closed_at(&mut conn, Duration::from_secs(10)).await.expect("closed within 10 s");
    let after = closed - answered;
    eprintln!("plaintext keep-alive idle 1s (header deadline 3s): closed {after:?} after the last response");
    assert!(after >= Duration::from_millis(950) && after < Duration::from_millis(2500), "closed after {after:?}");
}

#[tokio::test]
async fn a_request_head_begun_on_a_keep_alive_connection_has_the_header_deadline() {
    // Here the header deadline (1 s) is the shorter: waiting between requests is allowed
    // for 10 s, but a head once begun must be complete within 1 s.
    let (proxy, _b) = proxy(&[("header_timeout", "1s"), ("http1_keep_alive_idle", "10s")]).await;
    let mut conn = tls(proxy.addr, b"http/1.1").await;
    // A response slower than the header deadline is not cut off by it.
    assert_eq!(get(&mut conn, "/first?delay_ms=1500").await, 200);
    // Idle for twice the header deadline: still open (hyper's header_read_timeout alone
    // closed it here).
    assert_eq!(closed_at(&mut conn, Duration::from_secs(2)).await, None, "a keep-alive wait is not a slow head");
    assert_eq!(get(&mut conn, "/second").await, 200);
    conn.write_all(b"GET /slow HTTP/1.1\r\nHost: loc").await.expect("partial head");
    conn.flush().await.expect("flush");
    let first_byte = Instant::now();
    let closed = closed_at(&mut conn, Duration::from_secs(10)).await.expect("closed within 10 s");
    let after = closed - first_byte;
    eprintln!("header deadline 1s on a keep-alive connection: a begun head closed {after:?} after its first byte");
    assert!(after >= Duration::from_millis(950) && after < Duration::from_millis(2500), "closed after {after:?}");
    let hits = common::metric(proxy.admin, "quic_ingress_limit_hits_total{limit=\"header_timeout\"}").await;
    assert_eq!(hits, 1.0, "counted as a header timeout");
    still_serving(&proxy, "slow head on a keep-alive connection").await;
}

// === HTTP/2 header blocks that never end ===

const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK for GET https://localhost/ (static table, a literal authority).
fn get_block() -> Vec<u8> {
    let mut block = vec![0x82, 0x87, 0x84, 0x41, 0x09];
    block.extend_from_slice(b"localhost");
    block
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A frame from the server.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn read_frame<S: AsyncRead + Unpin>(conn: &mut S) -> Option<Frame> {
    let mut head = [0u8; 9];
    conn.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    conn.read_exact(&mut payload).await.ok()?;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some(Frame { kind: head[3], flags: head[4], stream, payload })
}

/// An HTTP/2 connection by hand: the preface, SETTINGS acknowledged, and one complete GET
/// answered on stream 1, so what follows is a later stream (the first request's headers
/// have a deadline of their own).
async fn h2_after_one_request(proxy: &Proxy) -> (tokio::io::ReadHalf<Tls>, tokio::io::WriteHalf<Tls>) {
    let (mut rx, mut tx) = tokio::io::split(tls(proxy.addr, b"h2").await);
    tx.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    tx.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    tx.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &get_block())).await.unwrap();
    let answered = async {
        loop {
            let f = read_frame(&mut rx).await.expect("the server answers stream 1");
            match f.kind {
                SETTINGS if f.flags & ACK == 0 => tx.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap(),
                PING if f.flags & ACK == 0 => tx.write_all(&frame(PING, ACK, 0, &f.payload)).await.unwrap(),
                _ if f.stream == 1 && f.flags & END_STREAM != 0 => return,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), answered).await.expect("stream 1 answered in time");
    (rx, tx)
}

/// Reads until the server ends the connection: when, and the GOAWAY error code if it sent one.
async fn h2_closed<S: AsyncRead + Unpin>(rx: &mut S, wait: Duration) -> Option<(Instant, Option<u32>)> {
    let mut goaway = None;
    let until = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(until, read_frame(rx)).await {
            Err(_) => return None,
            Ok(None) => return Some((Instant::now(), goaway)),
            Ok(Some(f)) if f.kind == GOAWAY && f.payload.len() >= 8 => {
                goaway = Some(u32::from_be_bytes(f.payload[4..8].try_into().unwrap()));
            }
            Ok(Some(_)) => {}
        }
    }
}

/// A HEADERS frame on `stream` that starts a field whose value is far longer than any
/// limit, and never ends its header block.
fn endless_headers(stream: u32) -> Vec<u8> {
    let mut block = get_block();
    // Literal without indexing, new name "x-pad", value length 1 MiB (7-bit prefix).
    block.extend_from_slice(&[0x00, 0x05]);
    block.extend_from_slice(b"x-pad");
    let mut rest = (1u32 << 20) - 127;
    block.push(0x7f);
    while rest >= 128 {
        block.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    block.push(rest as u8);
    block.extend_from_slice(&[b'a'; 1000]);
    frame(HEADERS, END_STREAM, stream, &block)
}

#[tokio::test]
async fn a_later_http2_stream_whose_headers_never_end_is_freed_by_the_keep_alive_ping() {
    // Mid-block the client may send nothing but CONTINUATION, so it cannot answer a PING:
    // the connection goes at interval + timeout (here 1 s + 1 s; by default 30 s + 20 s).
    let limits = [("header_timeout", "1s"), ("http2_keep_alive_interval", "1s"), ("http2_keep_alive_timeout", "1s")];
    let (proxy, _b) = proxy(&limits).await;
    let before = proxy.proc.rss_kib();
    let mut conns = Vec::new();
    let started = Instant::now();
    // Twenty such connections at once.
    for _ in 0..20 {
        let (rx, mut tx) = h2_after_one_request(&proxy).await;
        tx.write_all(&endless_headers(3)).await.unwrap();
        tx.flush().await.unwrap();
        conns.push((rx, tx, Instant::now()));
    }
    let grown = proxy.proc.rss_kib().saturating_sub(before);
    let closes = futures::future::join_all(conns.iter_mut().map(|(rx, _, sent)| {
        let sent = *sent;
        async move { h2_closed(rx, Duration::from_secs(10)).await.map(|(at, code)| (at - sent, code)) }
    }))
    .await;
    let closes: Vec<(Duration, Option<u32>)> = closes.into_iter().map(|c| c.expect("closed within 10 s")).collect();
    let slowest = closes.iter().map(|c| c.0).max().unwrap();
    eprintln!(
        "HTTP/2 headers never ended (20 connections): closed at most {slowest:?} after the HEADERS (ping 1s + 1s); GOAWAY codes {:?}; RSS grew {} KiB while they were held; all set up in {:?}",
        closes.iter().map(|c| c.1).collect::<std::collections::BTreeSet<_>>(),
        grown,
        started.elapsed()
    );
    assert!(slowest < Duration::from_secs(4), "freed after {slowest:?}");
    still_serving(&proxy, "HTTP/2 endless HEADERS").await;
}

#[tokio::test]
async fn continuation_frames_that_never_end_the_block_are_cut_off() {
    // The PING would come only after 30 s: what stops this one is h2's bound on a header
    // block (a few CONTINUATION frames past max_header_bytes).
    let (proxy, _b) = proxy(&[("header_timeout", "1s")]).await;
    let before = proxy.proc.rss_kib();
    let (mut rx, mut tx) = h2_after_one_request(&proxy).await;
    tx.write_all(&endless_headers(3)).await.unwrap();
    let started = Instant::now();
    let over = std::sync::atomic::AtomicBool::new(false);
    let reader = async {
        let closed = h2_closed(&mut rx, Duration::from_secs(10)).await;
        over.store(true, std::sync::atomic::Ordering::Relaxed);
        closed
    };
    // Up to 100 CONTINUATION frames of 16 KiB, 20 ms apart, none with END_HEADERS.
    let writer = async {
        let chunk = frame(CONTINUATION, 0, 3, &[b'a'; 16 * 1024]);
        let mut sent = 0usize;
        while sent < 100 && !over.load(std::sync::atomic::Ordering::Relaxed) {
            if tx.write_all(&chunk).await.is_err() || tx.flush().await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    };
    let (closed, sent) = tokio::join!(reader, writer);
    let grown = proxy.proc.rss_kib().saturating_sub(before);
    eprintln!(
        "HTTP/2 CONTINUATION trickle: {sent} frames of 16 KiB written before the close, connection closed {:?} after the first ({:?}); RSS grew {grown} KiB",
        closed.map(|(at, _)| at - started),
        closed.map(|(_, code)| code)
    );
    assert!(closed.is_some(), "the connection is closed");
    assert!(sent < 20, "{sent} CONTINUATION frames of one header block were written before the close");
    still_serving(&proxy, "HTTP/2 CONTINUATION trickle").await;
}
