//! `h3://` backends: the proxy speaks HTTP/3 upstream, to a third-party server (aioquic)
//! and to a second quic-ingress, with bodies streamed both ways, trust from a CA bundle,
//! and failover when an HTTP/3 backend is down.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Backend, Proc, Proxy, TempDir, catch_all, h3_get, h3_send, log_file};
use quic_ingress::client::RequestBody;

/// A self-signed certificate for `name`, written as cert.pem and key.pem under a new dir.
fn certificate(name: &str) -> TempDir {
    let dir = TempDir::new(&format!("h3up-{name}"));
    let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("certificate");
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).expect("write key");
    dir
}

/// The aioquic HTTP/3 backend (tests/clients/h3_server.py).
struct AioquicBackend {
    port: u16,
    _proc: Proc,
}

impl AioquicBackend {
    fn start(name: &str, certs: &Path) -> Self {
        Self::start_on(name, certs, 0)
    }

    fn start_on(name: &str, certs: &Path, port: u16) -> Self {
        let python = std::env::var("QUIC_INGRESS_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/h3_server.py");
        let mut child = Command::new(&python)
            .arg(script)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--name", name])
            .arg("--cert")
            .arg(certs.join("cert.pem"))
            .arg("--key")
            .arg(certs.join("key.pem"))
            .stdout(Stdio::piped())
            .stderr(log_file(&format!("h3-backend-{name}")))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python} (run `make test` to install aioquic): {e}"));
        // The server prints `ready PORT` once bound; reading blocks until then (or until it
        // exits, which ends the stream). A watchdog kills it if it hangs.
        let stdout = child.stdout.take().expect("stdout");
        let pid = child.id();
        let watchdog = std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            line
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !watchdog.is_finished() {
            if std::time::Instant::now() > deadline {
                let _ = Command::new("kill").arg(pid.to_string()).status();
                panic!("the aioquic backend did not start in 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let line = watchdog.join().expect("reader");
        let port = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the aioquic backend said {line:?}; see its log"));
        Self { port, _proc: Proc { child, name: format!("h3 backend {name}") } }
    }
}

fn h3_group(urls: &[String], certs: &Path, server_name: &str, extra: &str) -> String {
    let backends: Vec<String> = urls.iter().map(|u| format!("{{url: \"{u}\"}}")).collect();
    format!(
        "routes:\n  - {{id: r, path: /, backend_group: g}}\nbackend_groups:\n  - id: g\n    backends: [{}]\n    tls: {{ca_file: {}, server_name: {server_name}}}\n{extra}",
        backends.join(", "),
        certs.join("cert.pem").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_an_aioquic_backend_over_http3_with_bodies_streamed_both_ways() {
    let certs = certificate("h3.internal");
    let backend = AioquicBackend::start("aioquic", &certs);
    let proxy = Proxy::start(&h3_group(&[format!("h3://127.0.0.1:{}", backend.port)], &certs, "h3.internal", "")).await;
    let c = proxy.h3().await;

    let a = h3_get(&c, "shop.example.com", "/items?x=1").await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let seen = a.json();
    assert_eq!(seen["version"], "HTTP/3");
    assert_eq!(seen["backend"], "aioquic");
    assert_eq!(seen["authority"], "shop.example.com", ":authority keeps the client's host");
    assert_eq!(seen["path"], "/items");
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    assert!(seen["headers"]["x-request-id"].is_string());

    // HEAD: the aioquic server sends a body anyway; the client gets the headers only.
    let head =
        h3_send(&c, http::Request::head("https://localhost/h").body(()).expect("request"), RequestBody::Empty).await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert!(head.headers.contains_key("content-length"));

    // 8 MiB up, streamed; the backend counts what arrived.
    let chunks = futures::stream::iter((0..128).map(|_| bytes::Bytes::from(vec![7u8; 64 * 1024])));
    let post = http::Request::post("https://localhost/upload").body(()).expect("request");
    let up = h3_send(&c, post, RequestBody::Stream(Box::pin(chunks))).await;
    assert_eq!(up.status, 200);
    assert_eq!(up.json()["body_bytes"], 8 * 1024 * 1024);

    // 8 MiB down.
    let down = h3_get(&c, "localhost", "/download?bytes=8388608").await;
    assert_eq!((down.status, down.body.len()), (200, 8 * 1024 * 1024));

    // Many requests at once share the one upstream connection.
    let many = futures::future::join_all((0..40).map(|i| {
        let c = c.clone();
        async move { h3_get(&c, "localhost", &format!("/many/{i}")).await.status }
    }))
    .await;
    assert!(many.iter().all(|s| *s == 200), "{many:?}");
    let open = common::metric(
        proxy.admin,
        &format!("quic_ingress_upstream_connections{{backend=\"127.0.0.1:{}\"}}", backend.port),
    )
    .await;
    assert_eq!(open, 1.0, "one QUIC connection to the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_quic_ingress_is_an_http3_backend_and_untrusted_certificates_get_502() {
    let certs = certificate("edge.internal");
    let origin = Backend::start("origin").await;
    let inner = Proxy::start_with(
        &catch_all(&origin.url("http")),
        &format!(
            "  cert_file: {}\n  key_file: {}\n  trusted_proxies: [\"127.0.0.1\"]\n",
            certs.join("cert.pem").display(),
            certs.join("key.pem").display()
        ),
    )
    .await;
    let url = format!("h3://127.0.0.1:{}", inner.addr.port());
    let outer = Proxy::start(&h3_group(std::slice::from_ref(&url), &certs, "edge.internal", "")).await;
    let a = h3_get(&outer.h3().await, "localhost", "/chained").await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.backend(), "origin");
    assert_eq!(a.json()["headers"]["x-forwarded-for"], "127.0.0.1, 127.0.0.1", "both proxies appended");
    let inner_log = std::fs::read_to_string(&inner.log).expect("inner log");
    assert!(inner_log.contains("\"protocol\":\"H3\""), "the inner proxy was reached over HTTP/3");

    // The same backend without the CA bundle: its certificate is not trusted.
    let untrusted = Proxy::start(&format!(
        "routes:\n  - {{id: r, path: /, backend_group: g}}\nbackend_groups:\n  - id: g\n    backends: [{{url: \"{url}\"}}]\n"
    ))
    .await;
    assert_eq!(h3_get(&untrusted.h3().await, "localhost", "/").await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_http3_backend_fails_over_and_is_ejected() {
    let certs = certificate("h3.internal");
    let live = AioquicBackend::start("live", &certs);
    // Nothing listens here: QUIC gets no answer at all, so only the connect timeout ends it.
    let dead = common::free_port();
    let urls = [format!("h3://127.0.0.1:{dead}"), format!("h3://127.0.0.1:{}", live.port)];
    let extra =
        "    timeouts: {connect: 300ms}\n    passive: {enabled: true, max_failures: 2, observation_window: 60s}\n";
    let proxy = Proxy::start(&h3_group(&urls, &certs, "h3.internal", extra)).await;
    let c = proxy.h3().await;
    for i in 0..10 {
        let a = h3_get(&c, "localhost", &format!("/{i}")).await;
        assert_eq!(a.status, 200, "request {i}: {}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.json()["backend"], "live");
    }
    let ejected =
        common::metric(proxy.admin, &format!("quic_ingress_passive_ejections_total{{backend=\"127.0.0.1:{dead}\"}}"))
            .await;
    assert_eq!(ejected, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_http3_backend_is_dialled_again_after_one_timeout() {
    let certs = certificate("h3.internal");
    let first = AioquicBackend::start("before", &certs);
    let port = first.port;
    let extra = "    timeouts: {response_headers: 1s}\n    passive: {enabled: false}\n";
    let proxy = Proxy::start(&h3_group(&[format!("h3://127.0.0.1:{port}")], &certs, "h3.internal", extra)).await;
    let c = proxy.h3().await;
    assert_eq!(h3_get(&c, "localhost", "/").await.json()["backend"], "before");

    // Killed outright: the proxy's QUIC connection is not closed, and the new process on
    // the same port does not know it.
    first._proc.signal(9);
    drop(first);
    let _second = AioquicBackend::start_on("after", &certs, port);
    let mut statuses = Vec::new();
    loop {
        let a = h3_get(&c, "localhost", "/").await;
        statuses.push(a.status);
        if a.status == 200 {
            assert_eq!(a.json()["backend"], "after");
            break;
        }
        assert!(statuses.len() < 5, "the proxy kept the dead connection: {statuses:?}");
    }
    eprintln!("statuses after the restart: {statuses:?}");
    assert!(statuses[..statuses.len() - 1].iter().all(|s| *s == 504), "{statuses:?}");
}
