//! Hostile clients against a real `quic-ingress serve` over loopback: each attack, then a
//! normal request served by the same process, whose resident memory stays under a bound.
//! Limits are set short here (1 s) so each test is quick; every loop is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Proxy, catch_all, h3_get, raw_quic, tls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Short limits so the attacks are cut off quickly.
const LIMITS: &str = "  limits:\n    header_timeout: 1s\n    handshake_timeout: 2s\n    request_body_idle_timeout: 1s\n    response_write_timeout: 1s\n";

/// Resident memory of the proxy now, in KiB.
fn rss_kib(proxy: &Proxy) -> u64 {
    proxy.proc.rss_kib()
}

/// After an attack: a normal HTTP/3 request is served and the proxy stays under `bound_mib`.
async fn still_serving(proxy: &Proxy, attack: &str, bound_mib: u64) {
    let client = proxy.h3().await;
    assert_eq!(h3_get(&client, "localhost", "/after").await.status, 200, "{attack}: a normal request afterwards");
    let rss = rss_kib(proxy);
    eprintln!("{attack}: proxy RSS {} MiB after the attack", rss / 1024);
    assert!(rss < bound_mib * 1024, "{attack}: RSS {rss} KiB over {bound_mib} MiB");
}

/// Opens the client's control stream (SETTINGS, empty), as an h3 client would first.
async fn control_stream(conn: &quinn::Connection) -> quinn::SendStream {
    let mut control = conn.open_uni().await.expect("uni");
    control.write_all(&[0x00, 0x04, 0x00]).await.expect("settings");
    control
}

/// A frame header: type, then length as an 8-byte varint.
fn frame_header(frame_type: u8, length: u64) -> Vec<u8> {
    let mut out = vec![frame_type];
    out.extend_from_slice(&(length | 0xc000_0000_0000_0000).to_be_bytes());
    out
}

async fn proxy_with(extra: &str) -> (Proxy, Backend) {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start_with(&catch_all(&backend.url("http")), &format!("{LIMITS}{extra}")).await;
    (proxy, backend)
}

#[tokio::test]
async fn slowloris_over_tcp_is_closed_at_the_header_deadline() {
    let (proxy, _b) = proxy_with("").await;
    let mut conn = tls(proxy.addr, b"http/1.1").await;
    let started = Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    let mut closed = None;
    // One byte every 100 ms: the whole head would take far longer than the deadline.
    for b in head.iter().chain(std::iter::repeat(&b'a')).take(100) {
        if conn.write_all(&[*b]).await.is_err() || conn.flush().await.is_err() {
            closed = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(read) = tokio::time::timeout(Duration::from_millis(100), conn.read(&mut buf)).await {
            // A 408 or the end of the stream: either way hyper gave up on us.
            if read.map_or(true, |n| n == 0 || buf[..n].starts_with(b"HTTP/1.1 408")) {
                closed = Some(started.elapsed());
                break;
            }
        }
    }
    let closed = closed.expect("the connection is closed within 10 s of trickling");
    eprintln!("slowloris: closed after {closed:?}");
    assert!(closed < Duration::from_secs(3), "closed after {closed:?}, the deadline is 1s");
    still_serving(&proxy, "slowloris", 100).await;
}

#[tokio::test]
async fn silent_http3_streams_are_stopped_at_the_header_deadline() {
    let (proxy, _b) = proxy_with("").await;
    let conn = raw_quic(proxy.addr, "127.0.0.1:0").await.expect("connect");
    let _control = control_stream(&conn).await;
    let started = Instant::now();
    let mut streams = Vec::new();
    for _ in 0..200 {
        let (mut send, recv) = conn.open_bi().await.expect("bidi");
        // One byte, so the stream exists for the server: the start of a HEADERS frame.
        send.write_all(&[0x01]).await.expect("write");
        streams.push((send, recv));
    }
    // One deadline for all of them, so the test is bounded whatever the server does.
    let waits = streams.iter_mut().map(|(send, _)| send.stopped());
    let stopped = match tokio::time::timeout(Duration::from_secs(8), futures::future::join_all(waits)).await {
        Ok(all) => all.len(),
        Err(_) => 0,
    };
    let took = started.elapsed();
    eprintln!("silent streams: {stopped} of 200 stopped after {took:?}");
    assert_eq!(stopped, 200, "every silent stream is stopped by the server");
    assert!(took < Duration::from_secs(4), "stopped after {took:?}, the deadline is 1s");
    still_serving(&proxy, "silent streams", 100).await;
}

#[tokio::test]
async fn an_oversized_headers_frame_is_refused_before_it_is_buffered() {
    let (proxy, _b) = proxy_with("").await;
    let before = rss_kib(&proxy);
    let conn = raw_quic(proxy.addr, "127.0.0.1:0").await.expect("connect");
    let _control = control_stream(&conn).await;
    let (mut send, _recv) = conn.open_bi().await.expect("bidi");
    send.write_all(&frame_header(0x01, 100 << 20)).await.expect("frame header");
    let chunk = vec![b'x'; 64 * 1024];
    let started = Instant::now();
    let mut sent = 0usize;
    // Up to 100 MiB, as declared; the server must stop us long before.
    while sent < 100 << 20 && started.elapsed() < Duration::from_secs(20) {
        match tokio::time::timeout(Duration::from_secs(5), send.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let took = started.elapsed();
    let grown = rss_kib(&proxy).saturating_sub(before);
    eprintln!("oversized HEADERS: stopped after {} KiB, {took:?}; RSS grew {} MiB", sent / 1024, grown / 1024);
    assert!(sent < 8 << 20, "the client could send {sent} bytes of one HEADERS frame");
    assert!(grown < 20 * 1024, "RSS grew {grown} KiB");
    still_serving(&proxy, "oversized HEADERS", 100).await;
}

#[tokio::test]
async fn thirty_thousand_header_fields_do_not_panic() {
    let (proxy, _b) = proxy_with("").await;
    let conn = raw_quic(proxy.addr, "127.0.0.1:0").await.expect("connect");
    let _control = control_stream(&conn).await;
    // QPACK: no dynamic table; :method GET, :scheme https, :path / from the static table,
    // :authority with a literal value, then 30,000 one-byte static fields
    // (accept-encoding: gzip, deflate, br), which decode to about 1.6 MB.
    let mut block = vec![0x00, 0x00, 0xd1, 0xd7, 0xc1, 0x50, 0x09];
    block.extend_from_slice(b"localhost");
    block.extend(std::iter::repeat_n(0xc0 | 31, 30_000));
    let (mut send, mut recv) = conn.open_bi().await.expect("bidi");
    let mut frame = frame_header(0x01, block.len() as u64);
    frame.extend_from_slice(&block);
    send.write_all(&frame).await.expect("headers");
    let _ = send.finish();
    // The answer (a 431) or a reset: anything but a hang; the process must live on.
    let answer = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20)).await;
    eprintln!("30,000 fields: {:?}", answer.as_ref().map(|r| r.as_ref().map(|b| b.len())));
    assert!(answer.is_ok(), "the stream is answered or reset in time");
    assert!(proxy.proc.child.id() > 0);
    still_serving(&proxy, "30,000 header fields", 100).await;
}

#[tokio::test]
async fn connections_over_the_per_ip_cap_are_refused_and_others_served() {
    let (proxy, _b) = proxy_with("    max_connections_per_ip: 4\n    max_handshakes_per_ip: 4\n").await;
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        match raw_quic(proxy.addr, "127.0.0.1:0").await {
            Ok(c) => open.push(c),
            Err(_) => refused += 1,
        }
    }
    eprintln!("QUIC flood: {} accepted, {refused} refused", open.len());
    assert_eq!((open.len(), refused), (4, 6), "four from one address, the rest refused");
    // TCP connections that never start TLS count as handshakes from the same address.
    let mut tcp = Vec::new();
    for _ in 0..3 {
        tcp.push(tokio::net::TcpStream::connect(proxy.addr).await.expect("tcp"));
    }
    let mut closed = 0;
    for s in &mut tcp {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 3, "TCP from an address at its cap is closed at once");
    // Another address is in the allowed range.
    let other = raw_quic(proxy.addr, "127.0.0.2:0").await.expect("another address is served");
    drop(other);
    drop(open);
    drop(tcp);
    common::wait_until("the caps to free up", Duration::from_secs(10), || async {
        raw_quic(proxy.addr, "127.0.0.1:0").await.is_ok()
    })
    .await;
    still_serving(&proxy, "connection flood", 100).await;
}

/// A group whose one backend takes one request at a time, waiting long for a slot.
fn one_slot(backend: &Backend) -> String {
    format!(
        "routes:\n  - {{id: r, path: /, backend_group: g}}\nbackend_groups:\n  - id: g\n    backends: [{{url: \"{}\"}}]\n    connection_pool: {{max_connections_per_host: 1}}\n    timeouts: {{pool_wait: 20s}}\n",
        backend.url("http")
    )
}

#[tokio::test]
async fn a_stalled_upload_frees_its_backend_slot() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start_with(&one_slot(&backend), LIMITS).await;
    let mut slow = tls(proxy.addr, b"http/1.1").await;
    slow.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\nx").await.expect("head");
    slow.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The slot is taken; the next request waits for it.
    let started = Instant::now();
    let client = proxy.h3().await;
    let next = tokio::time::timeout(Duration::from_secs(15), h3_get(&client, "localhost", "/next")).await;
    let took = started.elapsed();
    eprintln!("stalled upload: the next request was served after {took:?}");
    assert_eq!(next.expect("served before the pool wait ran out").status, 200);
    assert!(took < Duration::from_secs(5), "slot freed after {took:?}; the body idle timeout is 1s");
    drop(slow);
    still_serving(&proxy, "stalled upload", 100).await;
}

#[tokio::test]
async fn a_reader_that_takes_nothing_frees_its_backend_slot() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start_with(&one_slot(&backend), LIMITS).await;
    let mut stuck = tls(proxy.addr, b"http/1.1").await;
    // 200 MB, far more than the socket buffers hold; never read.
    stuck.write_all(b"GET /big?bytes=200000000 HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("head");
    stuck.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let client = proxy.h3().await;
    let next = tokio::time::timeout(Duration::from_secs(15), h3_get(&client, "localhost", "/next")).await;
    let took = started.elapsed();
    eprintln!("zero-window reader: the next request was served after {took:?}");
    assert_eq!(next.expect("served before the pool wait ran out").status, 200);
    assert!(took < Duration::from_secs(6), "slot freed after {took:?}; the write timeout is 1s");
    drop(stuck);
    still_serving(&proxy, "zero-window reader", 150).await;
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413() {
    let backend = Backend::start("b").await;
    let url = backend.url("http");
    // The server allows 1000 bytes; group `roomy` allows 10000.
    let routes = format!(
        "routes:\n  - {{id: r, path: /, backend_group: g}}\n  - {{id: big, path: /roomy, backend_group: roomy}}\nbackend_groups:\n  - id: g\n    backends: [{{url: \"{url}\"}}]\n  - id: roomy\n    max_request_body_bytes: 10000\n    backends: [{{url: \"{url}\"}}]\n"
    );
    let proxy = Proxy::start_with(&routes, &format!("{LIMITS}    max_request_body_bytes: 1000\n")).await;
    let client = proxy.h3().await;
    let post = |path: &str, n: usize| {
        let req = http::Request::post(format!("https://localhost{path}")).body(()).unwrap();
        (req, quic_ingress::client::RequestBody::Bytes(bytes::Bytes::from(vec![b'x'; n])))
    };
    let (req, body) = post("/up", 5000);
    assert_eq!(common::h3_send(&client, req, body).await.status, 413, "a declared length over the limit");
    let (req, body) = post("/roomy/up", 5000);
    assert_eq!(common::h3_send(&client, req, body).await.status, 200, "the group's own limit is higher");
    let (req, body) = post("/roomy/up", 20000);
    assert_eq!(common::h3_send(&client, req, body).await.status, 413, "and still a limit");
    // A streamed body (no content-length) is cut off once it passes the limit.
    let chunks = futures::stream::iter((0..10).map(|_| bytes::Bytes::from(vec![b'y'; 500])));
    let req = http::Request::post("https://localhost/up").body(()).unwrap();
    let streamed = quic_ingress::client::RequestBody::Stream(Box::pin(chunks));
    assert_eq!(common::h3_send(&client, req, streamed).await.status, 413, "a streamed body over the limit");
    let metric = common::metric(proxy.admin, "quic_ingress_limit_hits_total{limit=\"body_size\"}").await;
    assert!(metric >= 1.0, "the hit is counted");
}

#[tokio::test]
async fn with_retry_always_clients_prove_their_address_and_are_served() {
    let (proxy, _b) = proxy_with("    retry_above_handshakes: 0\n").await;
    still_serving(&proxy, "retry always", 100).await;
    let retries = common::metric(proxy.admin, "quic_ingress_limit_hits_total{limit=\"retry_sent\"}").await;
    assert!(retries >= 1.0, "a Retry was sent before the handshake ({retries})");
}

#[tokio::test]
async fn an_http2_client_that_withholds_its_window_frees_the_backend_slot() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start_with(&one_slot(&backend), LIMITS).await;
    let io = tls(proxy.addr, b"h2").await;
    // A stream window of 0: the server may send no body byte until we say so, and we never do.
    let (mut h2, conn) =
        h2::client::Builder::new().initial_window_size(0).handshake::<_, bytes::Bytes>(io).await.expect("h2");
    let driver = tokio::spawn(conn);
    let req = http::Request::get("https://localhost/big?bytes=10000000").body(()).unwrap();
    let (resp, _) = h2.send_request(req, true).expect("send");
    let resp = tokio::time::timeout(Duration::from_secs(5), resp).await.expect("headers in time").expect("headers");
    let _held = resp.into_body();
    let started = Instant::now();
    let client = proxy.h3().await;
    let next = tokio::time::timeout(Duration::from_secs(15), h3_get(&client, "localhost", "/next")).await;
    let took = started.elapsed();
    eprintln!("HTTP/2 zero window: the next request was served after {took:?}");
    assert_eq!(next.expect("served before the pool wait ran out").status, 200);
    assert!(took < Duration::from_secs(5), "slot freed after {took:?}; the write timeout is 1s");
    assert!(!driver.is_finished(), "the HTTP/2 connection itself stayed up: only the stream stalled");
    still_serving(&proxy, "HTTP/2 zero window", 100).await;
}
