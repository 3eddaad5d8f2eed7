//! Demo backends (`quic-ingress demo-backend`) for cluster tests: inside the test host's
//! network namespace (for EndpointSlices) or on 127.0.0.1 (for static BackendGroup URLs).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::netns::TestHost;
use crate::process::{TestProcess, free_tcp_port, http_health, log_path, quic_ingress_bin};

/// How long a backend may take to answer `/health` after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running demo backend that answers `/health` with 200 and everything else with JSON
/// naming it (`{"backend": NAME, ...}`, header `x-backend: NAME`). Killed on drop.
pub struct Backend {
    name: String,
    /// `--protocol`: `http1` or `h2` (cleartext, prior knowledge).
    protocol: &'static str,
    addr: SocketAddr,
    host: Option<&'static TestHost>,
    process: Option<TestProcess>,
}

impl Backend {
    /// Starts backend `name` inside the test host on a port of its own, and returns once
    /// it answers `/health` from the root namespace (through the veth, as the controller
    /// will reach it).
    pub async fn start_in(host: &'static TestHost, name: &str) -> anyhow::Result<Backend> {
        Self::start_in_with(host, name, "http1").await
    }

    /// Like [`Backend::start_in`], speaking `protocol` (`http1`, or `h2` for HTTP/2
    /// cleartext with prior knowledge).
    pub async fn start_in_with(host: &'static TestHost, name: &str, protocol: &'static str) -> anyhow::Result<Backend> {
        // The namespace belongs to this process, so a counter hands out its ports.
        static NEXT_PORT: AtomicU16 = AtomicU16::new(20000);
        let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let mut backend = Backend {
            name: name.to_string(),
            protocol,
            addr: SocketAddr::new(host.ip(), port),
            host: Some(host),
            process: None,
        };
        backend.launch().await?;
        Ok(backend)
    }

    /// Starts backend `name` on 127.0.0.1 on a free port (for static BackendGroup
    /// backends; loopback is allowed only with `--allow-backend-cidr`, which
    /// `ControllerOptions` passes by default).
    pub async fn start_local(name: &str) -> anyhow::Result<Backend> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_tcp_port()?);
            let mut backend = Backend { name: name.to_string(), protocol: "http1", addr, host: None, process: None };
            match backend.launch().await {
                Ok(()) => return Ok(backend),
                // The port was taken between picking and binding.
                Err(e) if attempt < 3 && format!("{e:#}").contains("in use") => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let bin = quic_ingress_bin()?;
        let mut cmd = Command::new(bin);
        cmd.args(["--log-format", "text", "demo-backend", "--listen", &self.addr.to_string(), "--name", &self.name]);
        cmd.args(["--protocol", self.protocol]);
        let log = log_path(&format!("backend-{}", self.name))?;
        let process = match self.host {
            Some(host) => host.spawn(&format!("backend {}", self.name), &cmd, &log)?,
            None => TestProcess::spawn(&format!("backend {}", self.name), cmd, log)?,
        };
        self.process = Some(process);
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            // An exit (e.g. the port is taken) fails at once rather than at the deadline.
            if let Some(p) = self.process.as_mut() {
                p.check_running()?;
            }
            let up = match self.protocol {
                "h2" => tcp_accepts(self.addr).await,
                _ => http_health(self.addr).await,
            };
            match up {
                Ok(true) => return Ok(()),
                Ok(false) | Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                result => {
                    let tail = self.process.as_ref().map(|p| p.log_tail(20)).unwrap_or_default();
                    self.process = None;
                    bail!(
                        "backend {} on {} did not answer /health within {START_TIMEOUT:?} ({result:?})\n{tail}",
                        self.name,
                        self.addr
                    );
                }
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn protocol(&self) -> &str {
        self.protocol
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://ADDR` for static BackendGroup backends.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the process; the backend stops answering at once.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts it again on the same address and waits for `/health`.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch().await.with_context(|| format!("restarting backend {}", self.name))
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }
}

/// For HTTP/2 backends, which an HTTP/1.1 probe cannot ask: the port accepts connections.
async fn tcp_accepts(addr: SocketAddr) -> anyhow::Result<bool> {
    let connect = tokio::net::TcpStream::connect(addr);
    Ok(tokio::time::timeout(Duration::from_secs(2), connect).await.is_ok_and(|r| r.is_ok()))
}
