//! Handshake floods against a real `quic-ingress serve` over loopback: clients that start a
//! TLS or QUIC handshake and stall in it, over the caps on handshakes in progress (global
//! and per source address); the handshake deadline; Retry, and Retry tokens shared by two
//! processes through one key file. Other loopback addresses (127.0.0.2, ...) are other
//! clients. Each test prints its figures (time until a slot was freed, RSS).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Backend, Proxy, TempDir, catch_all, h3_status_from, https1_status_from, metric, quic_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// `server.limits` lines for the config.
fn limits(pairs: &[(&str, &str)]) -> String {
    let mut out = String::from("  limits:\n");
    for (k, v) in pairs {
        out.push_str(&format!("    {k}: {v}\n"));
    }
    out
}

async fn proxy(limits: &str) -> (Proxy, Backend) {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start_with(&catch_all(&backend.url("http")), limits).await;
    (proxy, backend)
}

async fn hits(proxy: &Proxy, limit: &str) -> f64 {
    metric(proxy.admin, &format!("quic_ingress_limit_hits_total{{limit=\"{limit}\"}}")).await
}

/// Waits until `limit` has been hit at least `n` times; how long that took from `since`.
async fn hits_reach(proxy: &Proxy, limit: &str, n: f64, since: Instant, deadline: Duration) -> Duration {
    common::wait_until(&format!("{n} hits of {limit}"), deadline, || async { hits(proxy, limit).await >= n }).await;
    since.elapsed()
}

fn assert_rss(proxy: &Proxy, attack: &str, bound_mib: u64) {
    proxy.proc.assert_rss_under(bound_mib, attack);
}

// === TLS over TCP ===

/// A real ClientHello (rustls), as the first flight of a TLS client.
fn client_hello() -> Vec<u8> {
    let config = Arc::new(common::insecure().tls_config(&[b"http/1.1"]).unwrap());
    let mut tls = rustls::ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
    let mut out = Vec::new();
    tls.write_tls(&mut out).unwrap();
    out
}

/// A TCP client from `bind` that sends the first half of a ClientHello and then nothing.
struct StalledTls {
    stream: TcpStream,
    since: Instant,
}

impl StalledTls {
    async fn start(addr: SocketAddr, bind: &str, hello: &[u8]) -> Self {
        let mut stream = common::tcp_from(addr, bind).await.expect("connect");
        let since = Instant::now();
        // A refused connection may already be closed: the write's outcome does not matter.
        let _ = stream.write_all(&hello[..hello.len() / 2]).await;
        Self { stream, since }
    }

    /// Whether the server closed the connection within `wait`.
    async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut buf = [0u8; 256];
        let until = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(until, self.stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {} // an alert or the like: keep reading until the close
            }
        }
    }

    /// Waits (at most `wait`) for the server to close; how long after the connect it did.
    async fn closed_after(&mut self, wait: Duration) -> Option<Duration> {
        self.closed_within(wait).await.then(|| self.since.elapsed())
    }
}

async fn stalled_tls(addr: SocketAddr, bind: &str, hello: &[u8], n: usize) -> Vec<StalledTls> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(StalledTls::start(addr, bind, hello).await);
    }
    out
}

/// How many of `conns` the server closed within `wait` (all waited on together).
async fn count_closed(conns: &mut [StalledTls], wait: Duration) -> usize {
    let closed = futures::future::join_all(conns.iter_mut().map(|c| c.closed_within(wait))).await;
    closed.into_iter().filter(|c| *c).count()
}

#[tokio::test]
async fn stalled_tls_handshakes_over_the_caps_are_closed_and_other_clients_served() {
    let caps = [("handshake_timeout", "4s"), ("max_handshakes", "8"), ("max_handshakes_per_ip", "4")];
    let (proxy, _b) = proxy(&limits(&caps)).await;
    let hello = client_hello();
    // Seven from one address: four are held in their handshake, three closed at once.
    let mut held = stalled_tls(proxy.addr, "127.0.0.1:0", &hello, 4).await;
    let mut over = stalled_tls(proxy.addr, "127.0.0.1:0", &hello, 3).await;
    assert_eq!(count_closed(&mut over, Duration::from_millis(500)).await, 3, "over the per-IP cap: closed");
    assert_eq!(count_closed(&mut held, Duration::from_millis(300)).await, 0, "within the cap: held");
    assert_eq!(hits(&proxy, "handshakes_per_ip").await, 3.0);
    // Meanwhile another address is served.
    assert_eq!(https1_status_from(proxy.addr, "127.0.0.2:0", "/other").await, Ok(200));
    // Four from a third address fill the global cap (8); a fourth address is refused.
    let mut more = stalled_tls(proxy.addr, "127.0.0.3:0", &hello, 4).await;
    let mut beyond = stalled_tls(proxy.addr, "127.0.0.4:0", &hello, 1).await;
    assert_eq!(count_closed(&mut beyond, Duration::from_millis(500)).await, 1, "over the global cap: closed");
    assert_eq!(count_closed(&mut more, Duration::from_millis(300)).await, 0, "within the global cap: held");
    assert_eq!(hits(&proxy, "handshakes").await, 1.0);
    assert!(https1_status_from(proxy.addr, "127.0.0.4:0", "/x").await.is_err(), "nobody new while the cap is full");
    // Each held handshake is closed at its deadline (4 s), which frees the slots.
    held.append(&mut more);
    let closes = futures::future::join_all(held.iter_mut().map(|c| c.closed_after(Duration::from_secs(10)))).await;
    let closes: Vec<Duration> = closes.into_iter().map(|c| c.expect("closed within 10 s")).collect();
    let (first, last) = (closes.iter().min().unwrap(), closes.iter().max().unwrap());
    eprintln!(
        "stalled TLS handshakes: 8 held, 5 refused at once; held ones closed {first:?} to {last:?} after connect (deadline 4s)"
    );
    assert!(*first >= Duration::from_millis(3900) && *last < Duration::from_millis(5500), "closed at {closes:?}");
    let freed = Instant::now();
    assert_eq!(https1_status_from(proxy.addr, "127.0.0.4:0", "/after").await, Ok(200), "slots free again");
    eprintln!("stalled TLS handshakes: a refused address served {:?} after the last close", freed.elapsed());
    assert!(hits(&proxy, "handshake_timeout").await >= 8.0);
    assert_rss(&proxy, "stalled TLS handshakes", 100);
}

// === QUIC ===

/// What the server did with a stalled client's first flight.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// It answered with its handshake and is waiting for ours: a half-open handshake.
    Held,
    /// CONNECTION_REFUSED.
    Refused,
    /// A Retry: it keeps nothing until the client proves its address.
    Retry,
    /// Closed for another reason.
    Closed(String),
    /// Nothing at all.
    Silent,
}

/// A QUIC client that sends its first flight (a real ClientHello, built by quinn-proto)
/// and never answers what the server sends, so the server holds a half-open handshake.
/// It still decodes what comes back, to tell a refusal or a Retry from a held handshake.
struct StalledQuic {
    socket: UdpSocket,
    endpoint: quinn_proto::Endpoint,
    conn: quinn_proto::Connection,
    since: Instant,
    lost: Option<quinn::ConnectionError>,
    answered: bool,
    /// Datagrams of the first flight.
    datagrams: usize,
}

impl StalledQuic {
    async fn start(server: SocketAddr, bind: &str) -> Self {
        Self::start_with(server, bind, Vec::new(), Duration::ZERO).await
    }

    /// A ClientHello spread over several Initial packets (padded with ALPN names), the
    /// last of them sent `late`.
    async fn start_split(server: SocketAddr, bind: &str, late: Duration) -> Self {
        let filler: Vec<Vec<u8>> = (0..60).map(|n| format!("x-filler-protocol-name-{n:03}").into_bytes()).collect();
        Self::start_with(server, bind, filler, late).await
    }

    async fn start_with(server: SocketAddr, bind: &str, extra_alpn: Vec<Vec<u8>>, late: Duration) -> Self {
        let socket = UdpSocket::bind(bind).await.expect("bind");
        let mut tls = common::insecure().tls_config(&[b"h3"]).unwrap();
        tls.alpn_protocols.extend(extra_alpn);
        tls.enable_early_data = false;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut endpoint =
            quinn_proto::Endpoint::new(Arc::new(quinn_proto::EndpointConfig::default()), None, false, None);
        let (_, mut conn) = endpoint.connect(Instant::now(), config, server, "localhost").expect("connect");
        let since = Instant::now();
        let mut first_flight = Vec::new();
        let mut buf = Vec::new();
        while let Some(t) = conn.poll_transmit(Instant::now(), 1, &mut buf) {
            first_flight.push(buf[..t.size].to_vec());
            buf.clear();
        }
        let last = first_flight.len() - 1;
        for (n, datagram) in first_flight.iter().enumerate() {
            if n == last && n > 0 {
                tokio::time::sleep(late).await;
            }
            socket.send_to(datagram, server).await.expect("send Initial");
        }
        Self { socket, endpoint, conn, since, lost: None, answered: false, datagrams: first_flight.len() }
    }

    /// What the server answered to the first flight (waiting at most `wait` for it).
    async fn answer(&mut self, wait: Duration) -> Answer {
        self.read(wait, true).await
    }

    /// Reads what the server sends until it closes the connection, or `wait` passes.
    async fn closed(&mut self, wait: Duration) -> Answer {
        self.read(wait, false).await
    }

    async fn read(&mut self, wait: Duration, first_only: bool) -> Answer {
        let until = tokio::time::Instant::now() + wait;
        let mut datagram = vec![0u8; 65536];
        loop {
            let Ok(Ok((n, from))) = tokio::time::timeout_at(until, self.socket.recv_from(&mut datagram)).await else {
                break;
            };
            let data = &datagram[..n];
            // Long header, QUIC v1 type 3.
            if data[0] & 0xf0 == 0xf0 {
                return Answer::Retry;
            }
            self.answered = true;
            self.feed(from, data);
            // A refusal is the whole first datagram; a held handshake's starts with ServerHello.
            if self.lost.is_some() || first_only {
                break;
            }
        }
        match &self.lost {
            Some(e) if common::is_refused(e) => Answer::Refused,
            Some(e) => Answer::Closed(e.to_string()),
            None if self.answered => Answer::Held,
            None => Answer::Silent,
        }
    }

    /// Decodes one datagram from the server (without ever answering it).
    fn feed(&mut self, from: SocketAddr, data: &[u8]) {
        let mut buf = Vec::new();
        let event = self.endpoint.handle(Instant::now(), from, None, None, data.into(), &mut buf);
        if let Some(quinn_proto::DatagramEvent::ConnectionEvent(_, event)) = event {
            self.conn.handle_event(event);
        }
        while let Some(event) = self.conn.poll() {
            if let quinn_proto::Event::ConnectionLost { reason } = event {
                self.lost = Some(reason);
            }
        }
    }
}

async fn stalled_quic(addr: SocketAddr, bind: &str, n: usize) -> Vec<(StalledQuic, Answer)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut client = StalledQuic::start(addr, bind).await;
        // A held handshake answers at once; wait no longer than needed to see it.
        let answer = client.answer(Duration::from_millis(300)).await;
        out.push((client, answer));
    }
    out
}

fn answers(clients: &[(StalledQuic, Answer)]) -> Vec<Answer> {
    clients.iter().map(|(_, a)| a.clone()).collect()
}

#[tokio::test]
async fn stalled_quic_handshakes_over_the_caps_are_refused_and_other_clients_served() {
    let caps = [
        ("handshake_timeout", "4s"),
        ("max_handshakes", "8"),
        ("max_handshakes_per_ip", "4"),
        // Not Retry: this test is about the caps on half-open handshakes.
        ("retry_above_handshakes", "1000"),
    ];
    let (proxy, _b) = proxy(&limits(&caps)).await;
    let rss_before = proxy.proc.rss_kib();
    let started = Instant::now();
    let held = stalled_quic(proxy.addr, "127.0.0.1:0", 4).await;
    assert_eq!(answers(&held), vec![Answer::Held; 4], "within the per-IP cap: half-open handshakes held");
    let over = stalled_quic(proxy.addr, "127.0.0.1:0", 3).await;
    assert_eq!(answers(&over), vec![Answer::Refused; 3], "over the per-IP cap: CONNECTION_REFUSED");
    let refused_real = quic_connect(proxy.addr, "127.0.0.1:0").await.expect_err("a real client at the cap");
    assert!(refused_real.as_ref().is_some_and(common::is_refused), "refused: {refused_real:?}");
    assert_eq!(hits(&proxy, "handshakes_per_ip").await, 4.0);
    assert_eq!(h3_status_from(proxy.addr, "127.0.0.2:0", "/other").await, Ok(200), "another address is served");
    let more = stalled_quic(proxy.addr, "127.0.0.3:0", 4).await;
    assert_eq!(answers(&more), vec![Answer::Held; 4], "up to the global cap: held");
    let beyond = stalled_quic(proxy.addr, "127.0.0.4:0", 2).await;
    assert_eq!(answers(&beyond), vec![Answer::Refused; 2], "over the global cap: CONNECTION_REFUSED");
    assert_eq!(hits(&proxy, "handshakes").await, 2.0);
    let filled = started.elapsed();
    // Every half-open handshake is dropped at its deadline (4 s), freeing the slots.
    let dropped = hits_reach(&proxy, "handshake_timeout", 8.0, started, Duration::from_secs(10)).await;
    eprintln!(
        "stalled QUIC handshakes: 8 held, 5 refused (CONNECTION_REFUSED), caps full {filled:?} after the first Initial; the 8th dropped {dropped:?} after it (deadline 4s)"
    );
    assert!(dropped >= Duration::from_millis(3900) && dropped < filled + Duration::from_millis(5500));
    let freed = Instant::now();
    common::wait_until("a refused address to be served", Duration::from_secs(5), || async {
        h3_status_from(proxy.addr, "127.0.0.4:0", "/after").await == Ok(200)
    })
    .await;
    eprintln!("stalled QUIC handshakes: a refused address served {:?} after the drops", freed.elapsed());
    assert_eq!(h3_status_from(proxy.addr, "127.0.0.1:0", "/after").await, Ok(200), "and the flooding one");
    let grown = proxy.proc.rss_kib().saturating_sub(rss_before);
    eprintln!("stalled QUIC handshakes: RSS grew {} KiB", grown);
    assert_rss(&proxy, "stalled QUIC handshakes", 100);
    drop((held, over, more, beyond));
}

#[tokio::test]
async fn a_stalled_handshake_is_dropped_at_the_deadline() {
    let caps = [("handshake_timeout", "1s"), ("max_handshakes_per_ip", "2"), ("retry_above_handshakes", "1000")];
    let (proxy, _b) = proxy(&limits(&caps)).await;
    let hello = client_hello();
    let mut quic = StalledQuic::start(proxy.addr, "127.0.0.1:0").await;
    assert_eq!(quic.answer(Duration::from_millis(300)).await, Answer::Held);
    let mut tls = StalledTls::start(proxy.addr, "127.0.0.1:0", &hello).await;
    assert!(!tls.closed_within(Duration::from_millis(200)).await, "held");
    // Both slots of the address are taken by the stalled handshakes.
    let refused = quic_connect(proxy.addr, "127.0.0.1:0").await.expect_err("the address is at its cap");
    assert!(refused.as_ref().is_some_and(common::is_refused), "{refused:?}");
    let quic_since = quic.since;
    let (tls_closed, quic_seen, quic_dropped) = tokio::join!(
        tls.closed_after(Duration::from_secs(5)),
        async {
            // The server's CONNECTION_CLOSE, when the client can still decode it.
            let answer = quic.closed(Duration::from_secs(3)).await;
            (answer, quic_since.elapsed())
        },
        // The QUIC handshake started first, so it is the first to go.
        hits_reach(&proxy, "handshake_timeout", 1.0, quic_since, Duration::from_secs(5)),
    );
    let tls_closed = tls_closed.expect("the TLS handshake is closed");
    eprintln!(
        "handshake deadline 1s: TLS closed after {tls_closed:?}; QUIC dropped by {quic_dropped:?} (metric), client saw {:?} after {:?}",
        quic_seen.0, quic_seen.1
    );
    assert!(tls_closed >= Duration::from_millis(950) && tls_closed < Duration::from_millis(2000));
    assert!(quic_dropped >= Duration::from_millis(950) && quic_dropped < Duration::from_millis(2000));
    let freed = Instant::now();
    assert_eq!(h3_status_from(proxy.addr, "127.0.0.1:0", "/after").await, Ok(200), "the slots are free again");
    eprintln!("handshake deadline 1s: served {:?} after the drops", freed.elapsed());
    assert_rss(&proxy, "stalled handshakes at the deadline", 100);
}

#[tokio::test]
async fn a_clienthello_that_arrives_late_gets_no_extra_time() {
    // The handshake deadline runs from the first Initial: a client that takes 800 ms to
    // finish its ClientHello has 200 ms left, not another second.
    let caps = [("handshake_timeout", "1s"), ("retry_above_handshakes", "1000")];
    let (proxy, _b) = proxy(&limits(&caps)).await;
    let mut quic = StalledQuic::start_split(proxy.addr, "127.0.0.1:0", Duration::from_millis(800)).await;
    assert!(quic.datagrams > 1, "the ClientHello spans {} Initial packets", quic.datagrams);
    let dropped = hits_reach(&proxy, "handshake_timeout", 1.0, quic.since, Duration::from_secs(5)).await;
    let seen = quic.closed(Duration::from_secs(2)).await;
    eprintln!(
        "late ClientHello ({} Initials, the last after 800 ms): dropped {dropped:?} after the first (deadline 1s); client saw {seen:?}",
        quic.datagrams
    );
    assert!(dropped >= Duration::from_millis(950) && dropped < Duration::from_millis(1600), "dropped at {dropped:?}");
}

// === Retry ===

#[tokio::test]
async fn with_retry_always_stalled_initials_hold_nothing() {
    let caps = [("retry_above_handshakes", "0"), ("max_handshakes_per_ip", "4"), ("handshake_timeout", "10s")];
    let (proxy, _b) = proxy(&limits(&caps)).await;
    let flood = stalled_quic(proxy.addr, "127.0.0.1:0", 20).await;
    assert_eq!(answers(&flood), vec![Answer::Retry; 20], "each gets a Retry, not a handshake");
    assert_eq!(hits(&proxy, "handshakes_per_ip").await, 0.0, "no slot was taken");
    let started = Instant::now();
    assert_eq!(h3_status_from(proxy.addr, "127.0.0.1:0", "/after").await, Ok(200), "served through a Retry");
    eprintln!("Retry always: 20 stalled Initials held no slot; the same address was served in {:?}", started.elapsed());
    assert!(hits(&proxy, "retry_sent").await >= 21.0);
    assert_rss(&proxy, "Retry under a flood", 100);
}

#[tokio::test]
async fn above_the_threshold_new_clients_get_a_retry_and_complete_through_it() {
    let caps = [("retry_above_handshakes", "2"), ("handshake_timeout", "5s")];
    let (proxy, _b) = proxy(&limits(&caps)).await;
    let held = stalled_quic(proxy.addr, "127.0.0.3:0", 2).await;
    assert_eq!(answers(&held), vec![Answer::Held; 2], "below the threshold: no Retry");
    let third = stalled_quic(proxy.addr, "127.0.0.3:0", 1).await;
    assert_eq!(answers(&third), vec![Answer::Retry], "at the threshold: Retry");
    assert_eq!(h3_status_from(proxy.addr, "127.0.0.1:0", "/through-retry").await, Ok(200));
    assert_eq!(hits(&proxy, "retry_sent").await, 2.0, "the stalled one and the real client");
    drop(held);
}

/// Writes a token key file (base64, one key per line, the first sealing).
fn key_file(dir: &std::path::Path, name: &str, keys: &[[u8; 32]]) -> std::path::PathBuf {
    use base64::Engine;
    let path = dir.join(name);
    let lines: Vec<String> = keys.iter().map(|k| base64::engine::general_purpose::STANDARD.encode(k)).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn temp_dir(name: &str) -> TempDir {
    TempDir::new(name)
}

/// A UDP relay for one client: its datagrams go to `first` until `first` sends a Retry,
/// then to `second`. So the retried Initial, with the token `first` sealed, reaches
/// another process, from the same address (the relay's socket) the token was sealed for.
struct SwitchRelay {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SwitchRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SwitchRelay {
    async fn start(first: SocketAddr, second: SocketAddr) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
            let (mut client, mut target) = (None, first);
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut up) => {
                        client = Some(from);
                        let _ = back.send_to(&up[..n], target).await;
                    }
                    Ok((n, from)) = back.recv_from(&mut down) => {
                        if from == first && down[0] & 0xf0 == 0xf0 {
                            target = second;
                        }
                        if let Some(to) = client {
                            let _ = front.send_to(&down[..n], to).await;
                        }
                    }
                }
            }
        });
        Self { addr, task }
    }
}

/// Two proxies that always send Retry, with the given key files; a client whose Retry came
/// from the first completes its handshake with the second. Returns the request's status
/// and each proxy's Retry count.
async fn retry_across(key_a: &std::path::Path, key_b: &std::path::Path) -> (Result<u16, String>, f64, f64) {
    let backend = Backend::start("b").await;
    let routes = catch_all(&backend.url("http"));
    let with_key = |path: &std::path::Path| {
        limits(&[("retry_above_handshakes", "0"), ("retry_token_key_file", &format!("\"{}\"", path.display()))])
    };
    let a = Proxy::start_with(&routes, &with_key(key_a)).await;
    let b = Proxy::start_with(&routes, &with_key(key_b)).await;
    let relay = SwitchRelay::start(a.addr, b.addr).await;
    let status = h3_status_from(relay.addr, "127.0.0.1:0", "/across").await;
    let (retries_a, retries_b) = (hits(&a, "retry_sent").await, hits(&b, "retry_sent").await);
    (status, retries_a, retries_b)
}

#[tokio::test]
async fn a_retry_token_sealed_by_one_process_is_accepted_by_another_with_the_same_key_file() {
    let dir = temp_dir("retry-shared");
    let shared = key_file(&dir, "token.key", &[[7; 32]]);
    let (status, retries_a, retries_b) = retry_across(&shared, &shared).await;
    eprintln!("shared Retry key: status {status:?}; Retries sent by A {retries_a}, by B {retries_b}");
    assert_eq!(status, Ok(200), "the handshake completed with B on A's token");
    assert_eq!((retries_a, retries_b), (1.0, 0.0), "B accepted A's token instead of sending a Retry of its own");
}

#[tokio::test]
async fn after_a_key_rotation_tokens_of_the_previous_key_are_still_accepted() {
    let dir = temp_dir("retry-rotated");
    // A replica not yet rotated seals with the old key; a rotated one seals with the new
    // key and still opens the old (the file lists it second).
    let old = key_file(&dir, "old.key", &[[1; 32]]);
    let rotated = key_file(&dir, "rotated.key", &[[2; 32], [1; 32]]);
    let (status, retries_old, retries_rotated) = retry_across(&old, &rotated).await;
    eprintln!("rotated Retry key: status {status:?}; Retries sent by old {retries_old}, by rotated {retries_rotated}");
    assert_eq!(status, Ok(200), "the handshake completed on a token of the previous key");
    assert_eq!((retries_old, retries_rotated), (1.0, 0.0), "the rotated replica opened the old token");
}
