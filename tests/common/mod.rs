//! Test harness for the real data plane over loopback: the `quic-ingress` binary as proxy
//! and demo backends, free ports, readiness waits with deadlines, and client helpers.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quic_ingress::client::{H3Client, RequestBody, TrustOptions};

pub const BIN: &str = env!("CARGO_BIN_EXE_quic-ingress");

/// A port free on both TCP and UDP at the time of asking.
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found");
}

/// Polls `check` until it returns true or `deadline` passes.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out after {deadline:?} waiting for {what}");
}

/// A plain HTTP GET over TCP (admin endpoints, demo backends); `None` on any failure.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await.ok()?.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// The config body of one catch-all route `r` to a group `g` with one backend at `url`.
pub fn catch_all(url: &str) -> String {
    format!(
        "routes:\n  - {{id: r, path: /, backend_group: g}}\nbackend_groups:\n  - id: g\n    backends: [{{url: \"{url}\"}}]\n"
    )
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (SIGTERM = 15) to the process.
    pub fn signal(&self, sig: i32) {
        let status = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().expect("kill");
        assert!(status.success());
    }

    /// Waits for exit with a deadline.
    pub async fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(start.elapsed() < deadline, "{} did not exit within {deadline:?}", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peak resident memory (VmHWM) in KiB, from /proc.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// Resident memory now (VmRSS) in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/{}/status", self.pid()))
    }

    /// Asserts the process stays under `bound_mib` of resident memory after `attack`.
    pub fn assert_rss_under(&self, bound_mib: u64, attack: &str) {
        let rss = self.rss_kib();
        eprintln!("{attack}: RSS {} MiB", rss / 1024);
        assert!(rss < bound_mib * 1024, "{attack}: RSS {rss} KiB over {bound_mib} MiB");
    }
}

/// Where a child process's stderr (its log lines) goes.
pub fn log_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("quic-ingress-test-logs");
    let _ = std::fs::create_dir_all(&dir);
    dir.join(format!("{name}-{}.log", std::process::id()))
}

pub fn log_file(name: &str) -> Stdio {
    Stdio::from(std::fs::File::create(log_path(name)).expect("log file"))
}

/// A demo backend process.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub proc: Proc,
}

impl Backend {
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, "http1").await
    }

    pub async fn start_with(name: &str, protocol: &str) -> Self {
        Self::start_on(name, protocol, free_port()).await
    }

    pub async fn start_on(name: &str, protocol: &str, port: u16) -> Self {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = Command::new(BIN)
            .args(["demo-backend", "--listen", &addr.to_string(), "--name", name, "--protocol", protocol])
            .stdout(Stdio::null())
            .stderr(log_file(&format!("backend-{name}")))
            .spawn()
            .expect("spawn demo backend");
        let backend = Self { addr, name: name.into(), proc: Proc { child, name: format!("backend {name}") } };
        if protocol == "http1" {
            wait_until(&format!("backend {name}"), Duration::from_secs(10), || async {
                http_get(addr, "/health").await.is_some_and(|(s, _)| s == 200)
            })
            .await;
        } else {
            wait_until(&format!("backend {name}"), Duration::from_secs(10), || async {
                tokio::net::TcpStream::connect(addr).await.is_ok()
            })
            .await;
        }
        backend
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }
}

/// A `quic-ingress serve` process with its config file.
/// A directory of one test's files in the system temp dir, removed with what it holds
/// when dropped (tests that pass leave nothing behind).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        // Tests run in parallel and may use the same label.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("qi-{label}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Proxy {
    pub addr: SocketAddr,
    /// The proxy's log (JSON lines).
    pub log: PathBuf,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub proc: Proc,
    /// Holds the config file.
    _dir: TempDir,
}

impl Proxy {
    /// Starts the proxy; `body` is the YAML after the `server`/`telemetry` sections, and may
    /// use `{server_extra}` lines via `server_extra`.
    pub async fn start(body: &str) -> Self {
        Self::start_with(body, "").await
    }

    pub async fn start_with(body: &str, server_extra: &str) -> Self {
        Self::start_full(body, server_extra, "").await
    }

    /// Starts the proxy with extra lines in the `telemetry` section.
    pub async fn start_telemetry(body: &str, telemetry_extra: &str) -> Self {
        Self::start_full(body, "", telemetry_extra).await
    }

    /// Starts the proxy with extra lines in both the `server` and `telemetry` sections.
    pub async fn start_full(body: &str, server_extra: &str, telemetry_extra: &str) -> Self {
        let port = free_port();
        let admin_port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
        let yaml = format!(
            "server:\n  address: \"{addr}\"\n  drain_timeout: 10s\n{server_extra}telemetry:\n  admin_address: \"{admin}\"\n{telemetry_extra}{body}"
        );
        let dir = TempDir::new("test");
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, yaml).expect("write config");
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log_file(&format!("proxy-{port}")))
            .spawn()
            .expect("spawn proxy");
        let log = log_path(&format!("proxy-{port}"));
        let proc = Proc { child, name: format!("proxy {port}") };
        let mut proxy = Self { addr, log, admin, config_path, proc, _dir: dir };
        let start = Instant::now();
        loop {
            if http_get(admin, "/readyz").await.is_some_and(|(s, _)| s == 200) {
                break;
            }
            if let Some(status) = proxy.proc.child.try_wait().expect("try_wait") {
                panic!("proxy exited during start-up with {status}; log in {}", std::env::temp_dir().display());
            }
            assert!(start.elapsed() < Duration::from_secs(20), "proxy not ready in 20s");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        proxy
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    /// A new HTTP/3 connection to the proxy, trusting any certificate.
    pub async fn h3(&self) -> H3Client {
        self.h3_as("localhost").await
    }

    /// A new HTTP/3 connection presenting `sni`.
    pub async fn h3_as(&self, sni: &str) -> H3Client {
        H3Client::connect(self.addr, sni, &TrustOptions { insecure: true, ca_file: None }).await.expect("h3 connect")
    }
}

/// The result of a request, body read whole.
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// Which demo backend answered.
    pub fn backend(&self) -> String {
        self.headers.get("x-backend").and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
    }
}

/// GET `path` (may include a query) with `host` as authority over an HTTP/3 connection.
pub async fn h3_get(client: &H3Client, host: &str, path: &str) -> Answer {
    h3_send(client, http::Request::get(format!("https://{host}{path}")).body(()).unwrap(), RequestBody::Empty).await
}

pub async fn h3_send(client: &H3Client, req: http::Request<()>, body: RequestBody) -> Answer {
    let resp = client.request(req, body).await.expect("h3 request");
    let (status, headers) = (resp.status.as_u16(), resp.headers.clone());
    let body = resp.bytes().await.expect("h3 body");
    Answer { status, headers, body }
}

/// Runs the third-party aioquic client (tests/clients/h3_client.py); returns its JSON lines.
pub fn aioquic(url: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let python = std::env::var("QUIC_INGRESS_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/h3_client.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(url)
        .arg("--insecure")
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} (run `make test` to install the aioquic client): {e}"));
    assert!(
        out.status.success(),
        "aioquic client failed ({}); run `make test` to install it. stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// A UDP relay on loopback that delays every datagram by `one_way` in each direction, so a
/// QUIC round trip takes at least twice that: a stand-in for a distant client. It serves
/// one client at a time (the last address it heard from).
pub struct DelayRelay {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DelayRelay {
    pub async fn start(target: SocketAddr, one_way: Duration) -> Self {
        use std::sync::Arc;
        let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        back.connect(target).await.expect("connect relay");
        let addr = front.local_addr().expect("relay addr");
        let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
        let task = tokio::spawn(async move {
            let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut up) => {
                        *client.lock().expect("relay lock") = Some(from);
                        let (back, datagram) = (back.clone(), up[..n].to_vec());
                        tokio::spawn(async move {
                            tokio::time::sleep(one_way).await;
                            let _ = back.send(&datagram).await;
                        });
                    }
                    Ok(n) = back.recv(&mut down) => {
                        let Some(to) = *client.lock().expect("relay lock") else { continue };
                        let (front, datagram) = (front.clone(), down[..n].to_vec());
                        tokio::spawn(async move {
                            tokio::time::sleep(one_way).await;
                            let _ = front.send_to(&datagram, to).await;
                        });
                    }
                }
            }
        });
        Self { addr, task }
    }
}

/// A metric's value from the proxy's `/metrics` (0 when absent), e.g.
/// `quic_ingress_quic_zero_rtt_total{outcome="accepted"}`.
pub async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let (_, text) = http_get(admin, "/metrics").await.expect("scrape /metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Trusts any certificate (the proxy's is self-signed).
pub fn insecure() -> TrustOptions {
    TrustOptions { insecure: true, ca_file: None }
}

/// A TLS connection over TCP to the proxy, offering `alpn`.
pub async fn tls(addr: SocketAddr, alpn: &[u8]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    tls_from(addr, alpn, "127.0.0.1:0").await.expect("TLS connection")
}

/// A TLS connection over TCP from the local address `bind` (another loopback address is
/// another client for the per-IP caps).
pub async fn tls_from(
    addr: SocketAddr,
    alpn: &[u8],
    bind: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let config = insecure().tls_config(&[alpn]).map_err(std::io::Error::other)?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tcp_from(addr, bind).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// A TCP connection from the local address `bind`.
pub async fn tcp_from(addr: SocketAddr, bind: &str) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(bind.parse().map_err(std::io::Error::other)?)?;
    socket.connect(addr).await
}

/// A QUIC connection speaking h3 ALPN from `bind`; on failure, how it ended (`None`: no
/// answer within 5 s).
pub async fn quic_connect(addr: SocketAddr, bind: &str) -> Result<quinn::Connection, Option<quinn::ConnectionError>> {
    let mut tls = insecure().tls_config(&[b"h3"]).expect("client TLS config");
    tls.enable_early_data = false;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC client config");
    let mut endpoint = quinn::Endpoint::client(bind.parse().expect("bind address")).expect("client endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    let connecting = endpoint.connect(addr, "localhost").expect("connect");
    match tokio::time::timeout(Duration::from_secs(5), connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(Some(e)),
        Err(_) => Err(None),
    }
}

/// A raw QUIC connection speaking h3 ALPN, from `bind`.
pub async fn raw_quic(addr: SocketAddr, bind: &str) -> Result<quinn::Connection, String> {
    quic_connect(addr, bind).await.map_err(|e| e.map_or_else(|| "handshake timed out".into(), |e| e.to_string()))
}

/// Whether the server refused the connection (QUIC CONNECTION_REFUSED).
pub fn is_refused(e: &quinn::ConnectionError) -> bool {
    matches!(e, quinn::ConnectionError::ConnectionClosed(c) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
}

/// One HTTP/3 GET from the local address `bind`: its status.
pub async fn h3_status_from(addr: SocketAddr, bind: &str, path: &str) -> Result<u16, String> {
    let conn = raw_quic(addr, bind).await?;
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn)).await.map_err(|e| e.to_string())?;
    let drive = tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    let req = http::Request::get(format!("https://localhost{path}")).body(()).expect("request");
    let answer = async {
        let mut stream = send.send_request(req).await.map_err(|e| e.to_string())?;
        stream.finish().await.map_err(|e| e.to_string())?;
        let resp = stream.recv_response().await.map_err(|e| e.to_string())?;
        while stream.recv_data().await.map_err(|e| e.to_string())?.is_some() {}
        Ok(resp.status().as_u16())
    };
    let status =
        tokio::time::timeout(Duration::from_secs(10), answer).await.map_err(|_| "no answer in 10 s".to_string());
    drive.abort();
    status?
}

/// One HTTP/1.1 GET over TLS from the local address `bind`: its status line's code.
pub async fn https1_status_from(addr: SocketAddr, bind: &str, path: &str) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tls_from(addr, b"http/1.1", bind).await.map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
    if !matches!(read, Ok(Ok(_))) && buf.is_empty() {
        return Err(format!("no answer: {read:?}"));
    }
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("not HTTP: {text:.80}"))
}
