//! The command line as users drive it: check-config, get, and exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::process::Command;

use common::*;

fn write(dir: &TempDir, name: &str, yaml: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, yaml).unwrap();
    p
}

#[test]
fn check_config_accepts_the_example_and_names_bad_fields() {
    let dir = TempDir::new("cli");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/standalone.yaml");
    let out = Command::new(BIN).args(["check-config", example]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (2 routes, 2 backend groups)"));

    let bad = write(
        &dir,
        "bad.yaml",
        "server: {address: \"127.0.0.1:8443\"}\nroutes:\n  - {id: r, path: /, backend_group: missing}\nbackend_groups:\n  - id: g\n    backends: [{url: \"http://127.0.0.1:1\"}]\n    health_check: {interval: 0s}\n",
    );
    let out = Command::new(BIN).args(["check-config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(err.contains("routes[0].backend_group: unknown backend group \"missing\""), "{err}");
    assert!(err.contains("backend_groups[0].health_check.interval"), "{err}");

    let typo = write(&dir, "typo.yaml", "server: {adress: \"127.0.0.1:8443\"}\n");
    let out = Command::new(BIN).args(["check-config"]).arg(&typo).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `adress`"));

    let out = Command::new(BIN).args(["check-config", "/nonexistent.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN).args(["no-such-command"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn worker_threads_must_be_a_positive_count() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/standalone.yaml");
    let out = Command::new(BIN).args(["--worker-threads", "1", "check-config", example]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    for bad in ["0", "two"] {
        let out = Command::new(BIN).args(["--worker-threads", bad, "check-config", example]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "--worker-threads {bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--worker-threads"), "{err}");
    }
    let out =
        Command::new(BIN).args(["check-config", example]).env("QUIC_INGRESS_WORKER_THREADS", "0").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "QUIC_INGRESS_WORKER_THREADS=0 is refused too");
}

#[test]
fn serve_refuses_an_invalid_config_with_exit_2() {
    let dir = TempDir::new("cli");
    let bad = write(
        &dir,
        "serve-bad.yaml",
        "server: {address: \"127.0.0.1:8443\"}\nroutes: [{id: r, backend_group: nope}]\n",
    );
    let out = Command::new(BIN).args(["serve", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("routes[0].backend_group"));
}

#[test]
fn per_gateway_ports_may_not_overlap_a_listener() {
    let controller = |extra: &[&str]| {
        let mut args = vec!["controller", "--gateway-addresses", "per-gateway", "--publish-service", "qi/edge"];
        args.extend_from_slice(extra);
        // A kubeconfig that does not exist: the flags are checked before any connection.
        args.extend_from_slice(&["--kubeconfig", "/nonexistent/kubeconfig"]);
        Command::new(BIN).args(&args).output().unwrap()
    };
    let out = controller(&["--listen", "127.0.0.1:20001"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--gateway-port-range 20000-20999 holds the port of --listen 127.0.0.1:20001"), "{err}");
    let out = controller(&["--gateway-port-range", "9000-9100"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--admin-listen"), "the admin port 9090 is in 9000-9100");
}

#[tokio::test]
async fn get_prints_status_protocol_and_body_over_each_protocol() {
    let b = Backend::start("cli").await;
    let proxy = Proxy::start(&catch_all(&b.url("http"))).await;
    for (flag, proto) in
        [("--http3", "HTTP/3.0 200 OK"), ("--http2", "HTTP/2.0 200 OK"), ("--http1", "HTTP/1.1 200 OK")]
    {
        let out = Command::new(BIN).args(["get", "-k", flag, &proxy.https_url("/cli")]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{flag}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.starts_with(proto), "{flag}: {stdout}");
        assert!(stdout.contains("\"backend\":\"cli\""), "{stdout}");
    }
    // Without -k the self-signed certificate is refused.
    let out = Command::new(BIN).args(["get", &proxy.https_url("/cli")]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn get_early_data_resumes_and_reports_0rtt() {
    let b = Backend::start("cli-0rtt").await;
    let proxy = Proxy::start(&catch_all(&b.url("http"))).await;
    let out = Command::new(BIN).args(["get", "-k", "--early-data", &proxy.https_url("/early")]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("0-RTT: accepted"), "{stderr}");
    assert!(stdout.starts_with("HTTP/3.0 200 OK"), "{stdout}");
    let accepted = metric(proxy.admin, "quic_ingress_quic_zero_rtt_total{outcome=\"accepted\"}").await;
    assert_eq!(accepted, 1.0, "the proxy counted the 0-RTT it took");
}

#[test]
fn a_relative_ca_file_is_found_next_to_the_config_file() {
    let dir = TempDir::new("cli");
    let cert = rcgen::generate_simple_self_signed(vec!["backend.internal".to_string()]).unwrap();
    let config = write(
        &dir,
        "relative-ca.yaml",
        "server: {address: \"127.0.0.1:8443\"}\nroutes:\n  - {id: r, path: /, backend_group: g}\nbackend_groups:\n  - id: g\n    backends: [{url: \"h3://127.0.0.1:9443\"}]\n    tls: {ca_file: relative-ca.pem}\n",
    );
    std::fs::write(config.with_file_name("relative-ca.pem"), cert.cert.pem()).unwrap();
    // Run from elsewhere: the bundle is next to the config, not in the working directory.
    let out = Command::new(BIN).arg("check-config").arg(&config).current_dir("/").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
