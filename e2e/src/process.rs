//! Processes that tests start (the controller, demo backends): where the `quic-ingress`
//! binary is, free ports, log files, and a child handle that kills its process on drop.

use std::fs;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};

/// The `quic-ingress` binary to run (set by `make test-e2e`).
pub const QUIC_INGRESS_BIN_VAR: &str = "QUIC_INGRESS_BIN";

/// The repository root (the parent of this crate).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR")))
}

/// The helm binary: `QUIC_INGRESS_HELM` (set by `make test-e2e`), else built or found by
/// `make -f e2e/testenv.mk helm-print-bin` (a Go build the first time on a machine).
pub fn helm_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("QUIC_INGRESS_HELM").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(bin));
    }
    make_print_bin("helm-print-bin")
}

/// Runs `make -f e2e/testenv.mk TARGET`, a target that builds a tool if needed and prints
/// only its path, and returns that path.
pub fn make_print_bin(target: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new("make")
        .args(["-s", "--no-print-directory", "-f", "e2e/testenv.mk", target])
        .current_dir(repo_root())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running make {target}"))?;
    if !out.status.success() {
        bail!("make {target} failed ({})", out.status);
    }
    let path = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    if !path.is_file() {
        bail!("make {target} printed {}, which is not a file", path.display());
    }
    Ok(path)
}

/// The `quic-ingress` binary: `QUIC_INGRESS_BIN`, else `debug/quic-ingress` in
/// `CARGO_TARGET_DIR`, in the target directory this test binary was built into, or in the
/// repository's `target/`. A test crate cannot use another package's `CARGO_BIN_EXE_*`, so
/// the binary must have been built first (`cargo build -p quic-ingress --bins`; `make
/// test-e2e` does that).
pub fn quic_ingress_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os(QUIC_INGRESS_BIN_VAR).filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("{QUIC_INGRESS_BIN_VAR}={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        candidates.push(PathBuf::from(dir).join("debug/quic-ingress"));
    }
    // A test binary lives in <target>/debug/deps/.
    if let Ok(exe) = std::env::current_exe()
        && let Some(profile_dir) = exe.parent().and_then(Path::parent)
    {
        candidates.push(profile_dir.join("quic-ingress"));
    }
    candidates.push(repo_root().join("target/debug/quic-ingress"));
    if let Some(found) = candidates.iter().find(|c| c.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "the quic-ingress binary was not found (looked at {}); build it with \
         `cargo build -p quic-ingress --bins` or set {QUIC_INGRESS_BIN_VAR} (`make test-e2e` does both)",
        candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
    )
}

/// Where this process keeps logs of the processes it starts: the run directory of
/// [`crate::env`] (`$QUIC_INGRESS_TESTENV_DIR/run-<pid>/`).
pub fn log_dir() -> anyhow::Result<PathBuf> {
    let dir = crate::env::process_dir()?.join("logs");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A fresh log file path `<log_dir>/<stem>-<n>.log`.
pub fn log_path(stem: &str) -> anyhow::Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    Ok(log_dir()?.join(format!("{stem}-{n}.log")))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A port on 127.0.0.1 free for TCP a moment ago and not one of `chosen` (ports picked for
/// the same process but not bound yet, which the kernel may hand out again).
pub fn free_tcp_port_besides(chosen: &[u16]) -> anyhow::Result<u16> {
    for _ in 0..50 {
        let port = free_tcp_port()?;
        if !chosen.contains(&port) {
            return Ok(port);
        }
    }
    bail!("no free TCP port on 127.0.0.1 besides {chosen:?}")
}

/// A port on 127.0.0.1 free for both UDP and TCP a moment ago (the controller's `--listen`
/// takes both).
pub fn free_udp_tcp_port() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port on 127.0.0.1 is free for both UDP and TCP")
}

/// `len` consecutive ports on 127.0.0.1, each free for both UDP and TCP a moment ago, below
/// the kernel's ephemeral range (`net.ipv4.ip_local_port_range`): no socket bound to port 0
/// and no outgoing connection of another test can take one of them before the process the
/// range is for binds it, as it could with ports picked with `bind(0)`.
pub fn free_port_range(len: u16) -> anyhow::Result<std::ops::RangeInclusive<u16>> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (ephemeral_low.saturating_sub(12_000).max(1024), ephemeral_low.saturating_sub(len));
    ensure!(low < high, "no room for {len} ports below the ephemeral range at {ephemeral_low}");
    // A start of its own per process and attempt, so tests running side by side spread out.
    let nanos = std::time::SystemTime::UNIX_EPOCH.elapsed().map_or(0, |d| u64::from(d.subsec_nanos()));
    let seed = u64::from(std::process::id()).wrapping_mul(7919) ^ nanos;
    let span = u64::from(high - low);
    for attempt in 0..50u64 {
        let offset = seed.wrapping_add(attempt.wrapping_mul(409)) % span;
        let first = low + u16::try_from(offset)?;
        let range = first..=first + len - 1;
        let free = range
            .clone()
            .all(|port| UdpSocket::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok());
        if free {
            return Ok(range);
        }
    }
    bail!("no {len} consecutive ports free below the ephemeral range at {ephemeral_low}")
}

/// Makes the child get SIGKILL when the thread that spawns it ends, so nothing outlives a
/// test even when the test binary is killed. (The signal follows the spawning *thread*:
/// spawn from the test's own thread, not from `spawn_blocking`.)
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    cmd
}

/// A process started by a test: killed (SIGKILL) and reaped on drop.
pub struct TestProcess {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl TestProcess {
    /// Spawns `cmd` with stdout and stderr to `log`, dying with its parent thread.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> anyhow::Result<Self> {
        let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        // Plain text in log files: no colour escapes.
        cmd.env("NO_COLOR", "1");
        die_with_parent(&mut cmd).stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
        let shown = format!("{cmd:?}");
        let child = cmd.spawn().with_context(|| format!("starting {name}: {shown}"))?;
        Ok(TestProcess { name: name.to_string(), child: Some(child), log })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the process's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::env::tail(&self.log, lines)
    }

    /// `Err` with the log's tail when the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        let child = self.child.as_mut().ok_or_else(|| anyhow!("{} was stopped", self.name))?;
        if let Some(status) = child.try_wait()? {
            bail!("{} exited with {status}\n{}", self.name, self.log_tail(30));
        }
        Ok(())
    }

    /// Sends `signal` and waits up to `timeout` for the exit, then SIGKILLs.
    pub async fn stop_with(&mut self, signal: i32, timeout: Duration) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        if child.try_wait()?.is_none() {
            // SAFETY: plain syscall on our own child's pid, which is not reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
            let deadline = tokio::time::Instant::now() + timeout;
            while child.try_wait()?.is_none() {
                if tokio::time::Instant::now() >= deadline {
                    let _ = child.kill();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        child.wait()?;
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestProcess {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!("--- {} (log {}) ---\n{}", self.name, self.log.display(), self.log_tail(40));
        }
        self.kill();
    }
}

/// Sends `GET /health` over HTTP/1.1 to `addr` and returns whether it answered 200.
pub async fn http_health(addr: SocketAddr) -> anyhow::Result<bool> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fut = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf.starts_with(b"HTTP/1.1 200"))
    };
    Ok(tokio::time::timeout(Duration::from_secs(2), fut).await.context("no answer within 2s")??)
}
