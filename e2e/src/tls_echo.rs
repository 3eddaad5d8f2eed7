//! A TLS backend for cluster tests: the Gateway API suite's echo server (`echo-basic`,
//! the image the conformance suite's BackendTLSPolicy tests use) run in the test host
//! with a serving certificate, so it answers HTTPS (HTTP/2 or HTTP/1.1 by ALPN) and
//! echoes the SNI it was reached with (`tls.serverName` in its JSON).

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use anyhow::ensure;

use crate::grpc::echo_basic_bin;
use crate::netns::TestHost;
use crate::process::{TestProcess, log_path};

/// echo-basic serving HTTPS in the test host, killed on drop.
pub struct TlsEcho {
    /// The HTTPS address (its plaintext ports are unused).
    pub addr: SocketAddr,
    _process: TestProcess,
}

impl TlsEcho {
    /// Starts it as pod `pod` with the PEM certificate chain and key given, and returns
    /// once its HTTPS port accepts connections.
    pub async fn start(host: &'static TestHost, pod: &str, cert_pem: &str, key_pem: &str) -> anyhow::Result<TlsEcho> {
        // Ports of this process's test host; apart from the demo backends' range.
        static NEXT_PORT: AtomicU16 = AtomicU16::new(24000);
        let base = NEXT_PORT.fetch_add(3, Ordering::Relaxed);
        let dir = log_path(&format!("tls-echo-{pod}"))?.with_extension("d");
        std::fs::create_dir_all(&dir)?;
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, cert_pem)?;
        std::fs::write(&key, key_pem)?;
        let mut cmd = Command::new(echo_basic_bin()?);
        cmd.env("HTTP_PORT", base.to_string())
            .env("H2C_PORT", (base + 1).to_string())
            .env("HTTPS_PORT", (base + 2).to_string())
            .env("TLS_SERVER_CERT", &cert)
            .env("TLS_SERVER_PRIVKEY", &key)
            .env("POD_NAME", pod)
            .env("NAMESPACE", "e2e");
        let mut process = host.spawn(&format!("tls echo {pod}"), &cmd, &log_path(&format!("tls-echo-{pod}"))?)?;
        let addr = SocketAddr::new(host.ip(), base + 2);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            process.check_running()?;
            let connect = tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr)).await;
            if matches!(connect, Ok(Ok(_))) {
                return Ok(TlsEcho { addr, _process: process });
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "tls echo on {addr} not up in 10 s\n{}",
                process.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
