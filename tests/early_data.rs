//! 0-RTT and session resumption against the real proxy: our quinn client and aioquic resume
//! with session tickets; early GET/HEAD/OPTIONS are forwarded with `Early-Data: 1`, other
//! early methods get 425; a replayed ticket gets no 0-RTT; replicas sharing ticket keys
//! resume each other's sessions.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::time::{Duration, Instant};

use common::{BIN, Backend, DelayRelay, Proxy, TempDir, aioquic, catch_all, h3_get, h3_send, metric};
use quic_ingress::client::{H3Connector, RequestBody, TrustOptions};

fn one_route(backend: &Backend) -> String {
    catch_all(&backend.url("http"))
}

fn insecure() -> TrustOptions {
    TrustOptions { insecure: true, ca_file: None }
}

/// The `early-data` header the demo backend saw, if any.
fn early_header(answer: &common::Answer) -> Option<String> {
    answer.json()["headers"]["early-data"].as_str().map(str::to_string)
}

fn post(path: &str) -> http::Request<()> {
    http::Request::post(format!("https://localhost{path}")).body(()).expect("request")
}

#[tokio::test]
async fn resumed_connections_send_safe_requests_in_0rtt_and_unsafe_ones_get_425() {
    let backend = Backend::start("one").await;
    let proxy = Proxy::start(&one_route(&backend)).await;
    // 40 ms each way: the client's Finished reaches the proxy 120 ms after its first flight,
    // so requests sent with that flight are certainly read before the handshake completes.
    let relay = DelayRelay::start(proxy.addr, Duration::from_millis(40)).await;
    let connector = H3Connector::new(&insecure(), false, true).expect("connector");

    let started = Instant::now();
    let first = connector.connect(relay.addr, "localhost").await.expect("connect");
    let full = h3_get(&first, "localhost", "/first").await;
    let full_handshake = started.elapsed();
    assert_eq!(full.status, 200);
    assert_eq!(early_header(&full), None, "a request after a full handshake is not early data");

    // The ticket comes just after the handshake; a connection without one is a full handshake.
    let mut early = None;
    for _ in 0..5 {
        let started = Instant::now();
        let (client, accepted) = connector.connect_early(relay.addr, "localhost").await.expect("connect");
        if let Some(accepted) = accepted {
            early = Some((started, client, accepted));
            break;
        }
    }
    let (started, client, accepted) = early.expect("no session ticket after 5 connections");
    // All three leave with the first flight, before the handshake can complete.
    let head_req = http::Request::head("https://localhost/early").body(()).expect("request");
    let (get, head, refused) = tokio::join!(
        async {
            let get = h3_get(&client, "localhost", "/early").await;
            (get, started.elapsed())
        },
        h3_send(&client, head_req, RequestBody::Empty),
        h3_send(&client, post("/early"), RequestBody::Bytes("order=1".into())),
    );
    let (get, zero_rtt) = get;
    assert_eq!(get.status, 200);
    assert_eq!(early_header(&get).as_deref(), Some("1"), "the backend is told the request was early data");
    assert_eq!(head.status, 200, "HEAD is safe in early data");
    assert_eq!(refused.status, 425, "POST in early data: {}", String::from_utf8_lossy(&refused.body));
    let no_backend = "quic_ingress_http_requests_total{backend=\"\",method=\"POST\",route=\"r\",status=\"425\"}";
    assert_eq!(metric(proxy.admin, no_backend).await, 1.0, "the refused POST never reached a backend");

    assert!(accepted.await, "the proxy accepted the 0-RTT data");
    let later = h3_send(&client, post("/late"), RequestBody::Bytes("order=1".into())).await;
    assert_eq!(later.status, 200, "the same POST after the handshake is served");
    assert_eq!(early_header(&later), None);

    let m = |s: &'static str| metric(proxy.admin, s);
    assert!(m("quic_ingress_quic_zero_rtt_total{outcome=\"accepted\"}").await >= 1.0);
    assert_eq!(m("quic_ingress_early_data_requests_total{outcome=\"forwarded\"}").await, 2.0);
    assert_eq!(m("quic_ingress_early_data_requests_total{outcome=\"too_early\"}").await, 1.0);
    eprintln!(
        "figure: first response over a 80 ms RTT path: full handshake {:.0} ms, 0-RTT resumption {:.0} ms",
        full_handshake.as_secs_f64() * 1000.0,
        zero_rtt.as_secs_f64() * 1000.0
    );
}

// Multi-threaded: the relay keeps forwarding while this thread waits for aioquic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aioquic_gets_0rtt_once_per_ticket_so_a_replayed_first_flight_gets_none() {
    let backend = Backend::start("one").await;
    let proxy = Proxy::start(&one_route(&backend)).await;
    // Through a slow path, so the early request is certainly read before the handshake ends.
    let relay = DelayRelay::start(proxy.addr, Duration::from_millis(40)).await;
    let via = relay.addr.to_string();
    let aioquic = |url: &str, extra: &[&str]| {
        tokio::task::block_in_place(|| aioquic(url, &[&["--connect-to", via.as_str()], extra].concat()))
    };
    let dir = tempdir("replay");
    let ticket = dir.join("ticket");
    let url = proxy.https_url("/replay");
    let ticket_arg = ticket.to_str().expect("path");

    let first = &aioquic(&url, &["--session-ticket", ticket_arg])[0];
    assert_eq!(first["session_resumed"], false);
    let copy = dir.join("copy");
    std::fs::copy(&ticket, &copy).expect("copy ticket");

    let early = &aioquic(&url, &["--session-ticket", ticket_arg, "--zero-rtt"])[0];
    assert_eq!((early["status"].as_u64(), &early["early_data_accepted"]), (Some(200), &true.into()));
    let seen: serde_json::Value = serde_json::from_str(early["body"].as_str().expect("body")).expect("echo");
    assert_eq!(seen["headers"]["early-data"], "1");

    // The same ticket again, as an attacker replaying the captured first flight would: the
    // session was single-use, so no early data; the request is sent again after a full
    // handshake and is not marked early.
    let rejected_before = metric(proxy.admin, "quic_ingress_quic_zero_rtt_total{outcome=\"rejected\"}").await;
    let replay = &aioquic(&url, &["--session-ticket", copy.to_str().expect("path"), "--zero-rtt"])[0];
    assert_eq!(replay["early_data_accepted"], false);
    assert_eq!(replay["session_resumed"], false);
    assert_eq!(replay["status"], 200);
    let seen: serde_json::Value = serde_json::from_str(replay["body"].as_str().expect("body")).expect("echo");
    assert!(seen["headers"]["early-data"].is_null());
    let rejected = metric(proxy.admin, "quic_ingress_quic_zero_rtt_total{outcome=\"rejected\"}").await;
    assert_eq!(rejected, rejected_before + 1.0);
}

#[tokio::test]
async fn early_data_false_turns_0rtt_off_but_keeps_resumption() {
    let backend = Backend::start("one").await;
    let proxy = Proxy::start_with(&one_route(&backend), "  early_data: false\n").await;
    let dir = tempdir("off");
    let ticket = dir.join("ticket");
    let ticket_arg = ticket.to_str().expect("path");
    let url = proxy.https_url("/off");
    aioquic(&url, &["--session-ticket", ticket_arg]);
    let resumed = &aioquic(&url, &["--session-ticket", ticket_arg, "--zero-rtt"])[0];
    assert_eq!(resumed["session_resumed"], true);
    assert_eq!(resumed["early_data_accepted"], false);
    assert_eq!(resumed["status"], 200);
}

#[tokio::test]
async fn replicas_sharing_ticket_keys_resume_each_others_sessions() {
    let backend = Backend::start("one").await;
    let dir = tempdir("shared");
    let shared = dir.join("shared.key");
    let other = dir.join("other.key");
    std::fs::write(&shared, random_key()).expect("key");
    std::fs::write(&other, random_key()).expect("key");
    let with_key = |path: &std::path::Path| format!("  ticket_key_file: \"{}\"\n", path.display());
    let a = Proxy::start_with(&one_route(&backend), &with_key(&shared)).await;
    let b = Proxy::start_with(&one_route(&backend), &with_key(&shared)).await;
    let c = Proxy::start_with(&one_route(&backend), &with_key(&other)).await;

    let ticket = dir.join("ticket");
    let ticket_arg = ticket.to_str().expect("path");
    let at_a = &aioquic(&a.https_url("/"), &["--session-ticket", ticket_arg])[0];
    assert_eq!(at_a["session_resumed"], false);
    std::fs::copy(&ticket, dir.join("ticket-for-c")).expect("copy");

    let at_b = &aioquic(&b.https_url("/"), &["--session-ticket", ticket_arg])[0];
    assert_eq!(at_b["session_resumed"], true, "replica B opens replica A's ticket");
    assert_eq!(at_b["early_data_accepted"], false, "shared tickets never carry 0-RTT");
    assert_eq!(at_b["status"], 200);

    let at_c = &aioquic(&c.https_url("/"), &["--session-ticket", dir.join("ticket-for-c").to_str().expect("path")])[0];
    assert_eq!(at_c["session_resumed"], false, "a replica with other keys cannot");
    assert_eq!(at_c["status"], 200);
    let resumed = |p: &Proxy| metric(p.admin, "quic_ingress_tls_resumptions_total{outcome=\"resumed\"}");
    assert_eq!(resumed(&b).await, 1.0);
    assert_eq!(resumed(&c).await, 0.0);
    let unknown = metric(c.admin, "quic_ingress_tls_resumptions_total{outcome=\"unknown_ticket\"}").await;
    assert_eq!(unknown, 1.0, "C counts the ticket it could not open");
}

#[tokio::test]
async fn a_rotated_ticket_key_file_takes_effect_without_a_restart() {
    let backend = Backend::start("one").await;
    let dir = tempdir("rotate");
    let key_file = dir.join("ticket.key");
    let (old, new) = (random_key(), random_key());
    std::fs::write(&key_file, &old).expect("key");
    let proxy =
        Proxy::start_with(&one_route(&backend), &format!("  ticket_key_file: \"{}\"\n", key_file.display())).await;
    let url = proxy.https_url("/");
    let ticket = dir.join("ticket");
    let arg = ticket.to_str().expect("path").to_string();
    aioquic(&url, &["--session-ticket", &arg]);
    let old_ticket = dir.join("old-ticket");
    std::fs::copy(&ticket, &old_ticket).expect("copy");

    // The new key first, the old one still accepted: old tickets resume.
    std::fs::write(&key_file, [new.clone(), old].concat()).expect("key");
    wait_for_reload(&proxy, 2).await;
    let resumed = &aioquic(&url, &["--session-ticket", &arg])[0];
    assert_eq!(resumed["session_resumed"], true, "a ticket sealed with the old key still opens");

    // The old key dropped: tickets it sealed no longer resume; new ones do.
    std::fs::write(&key_file, &new).expect("key");
    wait_for_reload(&proxy, 3).await;
    let stale = &aioquic(&url, &["--session-ticket", old_ticket.to_str().expect("path")])[0];
    assert_eq!((stale["session_resumed"].as_bool(), stale["status"].as_u64()), (Some(false), Some(200)));
    let fresh = &aioquic(&url, &["--session-ticket", &arg])[0];
    assert_eq!(fresh["session_resumed"], true, "the ticket from the last run was sealed with the new key");
}

/// Waits until the proxy has published configuration `generation`.
async fn wait_for_reload(proxy: &Proxy, generation: u64) {
    common::wait_until("the reload", Duration::from_secs(10), || async {
        metric(proxy.admin, "quic_ingress_route_table_generation").await == generation as f64
    })
    .await;
}

#[test]
fn bad_ticket_settings_are_rejected_naming_the_field() {
    let dir = tempdir("check");
    let short = dir.join("short.key");
    std::fs::write(&short, [7u8; 47]).expect("key");
    let cases = [
        (format!("  ticket_key_file: \"{}\"\n", short.display()), "server.ticket_key_file"),
        (format!("  ticket_key_file: \"{}\"\n  early_data: true\n", short.display()), "server.early_data"),
    ];
    for (extra, field) in cases {
        let config = dir.join("config.yaml");
        std::fs::write(&config, format!("server:\n  address: \"127.0.0.1:8443\"\n{extra}")).expect("config");
        let out = std::process::Command::new(BIN).arg("check-config").arg(&config).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(field), "{field} not named in: {stderr}");
    }
}

fn random_key() -> Vec<u8> {
    let mut key = vec![0u8; 48];
    let mut f = std::fs::File::open("/dev/urandom").expect("urandom");
    std::io::Read::read_exact(&mut f, &mut key).expect("random");
    key
}

fn tempdir(name: &str) -> TempDir {
    TempDir::new(&format!("early-{name}"))
}
