//! The control plane a test binary talks to: a local kube-apiserver started from the
//! `testenv` binary, or an existing cluster named by a kubeconfig.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::OnceCell;

use crate::identity;
use crate::wait::eventually;

/// Names a kubeconfig to test against instead of starting a control plane. Any cluster
/// will do, as long as its identity may create namespaces, CRDs and RBAC objects and
/// impersonate users.
pub const KUBECONFIG_VAR: &str = "QUIC_INGRESS_TEST_KUBECONFIG";
/// The testenv binary to start (`make testenv-build` prints it); without it the helper
/// builds one with `make -f e2e/testenv.mk`.
pub const TESTENV_BIN_VAR: &str = "QUIC_INGRESS_TESTENV_BIN";
/// Where started control planes keep their kubeconfigs and logs (default: a
/// `quic-ingress-e2e` directory in the system temporary directory).
pub const TESTENV_DIR_VAR: &str = "QUIC_INGRESS_TESTENV_DIR";
/// Seconds to wait for a control plane to become ready (default 120).
pub const START_TIMEOUT_VAR: &str = "QUIC_INGRESS_TESTENV_START_TIMEOUT";
/// The kubectl to run (default: the one built into testenv, else `kubectl` on PATH).
pub const KUBECTL_VAR: &str = "QUIC_INGRESS_KUBECTL";

/// The cluster name testenv writes into its kubeconfigs; it marks a kubeconfig as safe
/// to reuse from plain `KUBECONFIG`.
const TESTENV_CLUSTER: &str = "quic-ingress-testenv";

/// A control plane and the credentials to use it.
///
/// Shared by all tests of a test binary through [`TestEnv::shared`]. Clients are made per
/// call ([`TestEnv::client`]) because every `#[tokio::test]` has its own runtime and a
/// client's connections belong to the runtime that created them.
pub struct TestEnv {
    kubeconfig: PathBuf,
    config: Config,
    is_testenv: bool,
    testenv_bin: Option<PathBuf>,
    /// Where derived kubeconfigs (impersonation) are written; private to this process.
    scratch: PathBuf,
    process: Option<Process>,
}

/// A control plane this process started. Never dropped when it lives in the shared
/// static: the child stops when the stdin pipe closes, which the kernel does when this
/// process exits for any reason, so no apiserver outlives its tests.
struct Process {
    _child: Child,
    _stdin: ChildStdin,
    log: PathBuf,
}

static SHARED: OnceCell<Result<TestEnv, String>> = OnceCell::const_new();

impl TestEnv {
    /// The control plane for this test binary, started (or found) on first use.
    ///
    /// In order: the cluster named by `QUIC_INGRESS_TEST_KUBECONFIG`; the one named by
    /// `KUBECONFIG` if that is a testenv kubeconfig (so `make testenv-up` plus the export
    /// it prints makes tests reuse it); otherwise a new local control plane. Plain
    /// `KUBECONFIG` pointing at another cluster is ignored on purpose: tests create and
    /// delete objects, and a developer's default context is no place for that unasked.
    pub async fn shared() -> anyhow::Result<&'static TestEnv> {
        let env = SHARED.get_or_init(|| async { Self::init().await.map_err(|e| format!("{e:#}")) }).await;
        // A failed start is remembered so the other tests fail fast with the same reason.
        env.as_ref().map_err(|e| anyhow!("no control plane for cluster tests: {e}"))
    }

    async fn init() -> anyhow::Result<TestEnv> {
        if let Some(path) = env_path(KUBECONFIG_VAR) {
            return Self::reuse(path, KUBECONFIG_VAR, start_timeout()).await;
        }
        if let Some(path) = env_path("KUBECONFIG") {
            if names_testenv(&path) {
                // A testenv left behind by a killed `make testenv-up` is no reason to fail:
                // give it a moment, then start a fresh one.
                match Self::reuse(path.clone(), "KUBECONFIG", Duration::from_secs(5)).await {
                    Ok(env) => return Ok(env),
                    Err(e) => eprintln!("quic-ingress-e2e: not using KUBECONFIG={}: {e:#}", path.display()),
                }
            } else {
                eprintln!(
                    "quic-ingress-e2e: not using KUBECONFIG={}: it does not name a testenv control plane; \
                     set {KUBECONFIG_VAR} to run the cluster tests against that cluster",
                    path.display()
                );
            }
        }
        Self::start().await
    }

    async fn reuse(kubeconfig: PathBuf, var: &str, timeout: Duration) -> anyhow::Result<TestEnv> {
        let config = load_config(&kubeconfig).await?;
        let env = TestEnv {
            is_testenv: names_testenv(&kubeconfig),
            kubeconfig,
            config,
            testenv_bin: env_path(TESTENV_BIN_VAR),
            scratch: process_dir()?,
            process: None,
        };
        let client = env.client()?;
        eventually(&format!("{} (from {var}) to be ready", env.server_url()), timeout, || readyz(&client)).await?;
        Ok(env)
    }

    async fn start() -> anyhow::Result<TestEnv> {
        let bin = match env_path(TESTENV_BIN_VAR) {
            Some(bin) => bin,
            None => tokio::task::spawn_blocking(build_testenv).await??,
        };
        let dir = process_dir()?;
        let log = dir.join("testenv.log");
        let started = Instant::now();
        // testenv picks free ports and then binds them; another control plane starting at
        // the same moment can take one in between. Rare, and a retry settles it.
        let mut attempt = 1;
        let (child, stdin) = loop {
            match spawn_testenv(&bin, &dir, &log, &[]).await {
                Ok(running) => break running,
                Err(e) if attempt < 3 && tail(&log, 50).contains("address already in use") => {
                    eprintln!("quic-ingress-e2e: testenv lost a port race, retrying: {e:#}");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let kubeconfig = dir.join("kubeconfig");
        let config = load_config(&kubeconfig).await?;
        eprintln!(
            "quic-ingress-e2e: control plane at {} ready in {:.1?} (kubeconfig {}, log {})",
            config.cluster_url,
            started.elapsed(),
            kubeconfig.display(),
            log.display()
        );
        Ok(TestEnv {
            kubeconfig,
            config,
            is_testenv: true,
            testenv_bin: Some(bin),
            scratch: dir,
            process: Some(Process { _child: child, _stdin: stdin, log }),
        })
    }

    /// A new admin client, bound to the calling test's runtime.
    pub fn client(&self) -> anyhow::Result<Client> {
        Client::try_from(self.config.clone()).context("creating a Kubernetes client")
    }

    /// A new client acting as `identity` (see [`crate::identity`]).
    pub async fn client_as(&self, identity: &str) -> anyhow::Result<Client> {
        let config = load_config(&self.kubeconfig_for(identity)?).await?;
        Client::try_from(config).context("creating a Kubernetes client")
    }

    /// The admin client configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The admin kubeconfig, e.g. for a controller process under test.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kubeconfig acting as `identity`: testenv's own token kubeconfig when there is
    /// one, otherwise the admin kubeconfig with impersonation (`as: identity`), which
    /// works on any cluster whose admin may impersonate.
    pub fn kubeconfig_for(&self, identity: &str) -> anyhow::Result<PathBuf> {
        if identity == identity::ADMIN {
            return Ok(self.kubeconfig.clone());
        }
        if self.is_testenv {
            let own = self.kubeconfig.with_file_name(format!("kubeconfig-{identity}"));
            if own.exists() {
                return Ok(own);
            }
        }
        let path = self.scratch.join(format!("kubeconfig-as-{identity}"));
        if !path.exists() {
            let mut kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
            impersonate(&mut kubeconfig, identity)?;
            write_atomic(&path, &serde_json::to_vec_pretty(&kubeconfig)?)?;
        }
        Ok(path)
    }

    /// The API server's URL.
    pub fn server_url(&self) -> String {
        self.config.cluster_url.to_string()
    }

    /// Whether the API server is a testenv control plane (started here or reused):
    /// version v1.34.x, no controllers, the identities exist as real token users.
    pub fn is_testenv(&self) -> bool {
        self.is_testenv
    }

    /// The log of the control plane this process started, if it started one.
    pub fn log_path(&self) -> Option<&Path> {
        self.process.as_ref().map(|p| p.log.as_path())
    }

    /// `kubectl --kubeconfig <admin>`: `QUIC_INGRESS_KUBECTL` if set, else the kubectl
    /// built into testenv (same version as the server), else `kubectl` on PATH.
    pub fn kubectl(&self) -> Command {
        self.kubectl_with(&self.kubeconfig)
    }

    /// Like [`TestEnv::kubectl`], acting as `identity`.
    pub fn kubectl_as(&self, identity: &str) -> anyhow::Result<Command> {
        Ok(self.kubectl_with(&self.kubeconfig_for(identity)?))
    }

    fn kubectl_with(&self, kubeconfig: &Path) -> Command {
        let mut cmd = match (env_path(KUBECTL_VAR), &self.testenv_bin) {
            (Some(kubectl), _) => Command::new(kubectl),
            (None, Some(bin)) => {
                let mut cmd = Command::new(bin);
                cmd.arg("kubectl");
                cmd
            }
            (None, None) => Command::new("kubectl"),
        };
        cmd.arg("--kubeconfig").arg(kubeconfig);
        cmd
    }
}

/// A control plane of one test's own, which it may stop and restart (e.g. to see the
/// controller ride out a lost API server). Dereferences to [`TestEnv`] for clients,
/// kubeconfigs and kubectl.
///
/// Always a local testenv (whatever `QUIC_INGRESS_TEST_KUBECONFIG` says), with a data
/// directory of its own that survives [`PrivateTestEnv::stop`]: a restart keeps etcd's
/// data, the CA, the tokens and the port, so kubeconfigs handed out before keep working.
/// Dropping it stops the process and removes the directory.
pub struct PrivateTestEnv {
    env: TestEnv,
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    running: Option<(Child, ChildStdin)>,
}

impl std::ops::Deref for PrivateTestEnv {
    type Target = TestEnv;
    fn deref(&self) -> &TestEnv {
        &self.env
    }
}

impl TestEnv {
    /// Starts a control plane for the calling test alone (about 3 s; see
    /// [`PrivateTestEnv`]).
    pub async fn start_private() -> anyhow::Result<PrivateTestEnv> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let bin = match env_path(TESTENV_BIN_VAR) {
            Some(bin) => bin,
            None => tokio::task::spawn_blocking(build_testenv).await??,
        };
        let dir = process_dir()?.join(format!("private-{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        fs::DirBuilder::new().mode(0o700).create(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // As in `start`: a concurrent start can take the picked port; a retry settles it.
        let mut attempt = 1;
        let (port, running, log) = loop {
            let port = crate::process::free_tcp_port()?;
            let log = crate::process::log_path("testenv-private")?;
            match spawn_testenv(&bin, &dir, &log, &private_args(&dir, port)).await {
                Ok(running) => break (port, running, log),
                Err(e) if attempt < 3 && tail(&log, 50).contains("address already in use") => {
                    eprintln!("quic-ingress-e2e: private testenv lost a port race, retrying: {e:#}");
                    attempt += 1;
                    // Start over on an empty directory, not on a half-initialised etcd.
                    fs::remove_dir_all(&dir)?;
                    fs::DirBuilder::new().mode(0o700).create(&dir)?;
                }
                Err(e) => {
                    let _ = fs::remove_dir_all(&dir);
                    return Err(e);
                }
            }
        };
        let kubeconfig = dir.join("kubeconfig");
        let env = TestEnv {
            config: load_config(&kubeconfig).await?,
            kubeconfig,
            is_testenv: true,
            testenv_bin: Some(bin.clone()),
            scratch: dir.clone(),
            process: None,
        };
        eprintln!("quic-ingress-e2e: private control plane at {} ready (log {})", env.server_url(), log.display());
        Ok(PrivateTestEnv { env, bin, dir, port, running: Some(running) })
    }
}

fn private_args(dir: &Path, port: u16) -> [String; 6] {
    [
        "--data-dir".into(),
        dir.display().to_string(),
        "--port".into(),
        port.to_string(),
        // kube-apiserver flags: without this, an open watch (the controller's) holds up the
        // shutdown for the 60 s of --request-timeout; with it, the HTTP server gets 2 s.
        "--".into(),
        "--shutdown-send-retry-after=true".into(),
    ]
}

impl PrivateTestEnv {
    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = crate::process::log_path("testenv-private")?;
        let started = Instant::now();
        self.running = Some(spawn_testenv(&self.bin, &self.dir, &log, &private_args(&self.dir, self.port)).await?);
        eprintln!(
            "quic-ingress-e2e: private control plane on 127.0.0.1:{} ready again in {:.1?} (log {})",
            self.port,
            started.elapsed(),
            log.display()
        );
        Ok(())
    }

    /// Whether the API server is up (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The kube-apiserver's port on 127.0.0.1 (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the API server and etcd gracefully (SIGKILL after 30 s); the data stays.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some((mut child, stdin)) = self.running.take() else { return Ok(()) };
        // testenv shuts down in order when its stdin closes.
        drop(stdin);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    eprintln!("quic-ingress-e2e: private testenv exited with {status}");
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("private testenv did not stop within 30s; killed");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts it again on the same data directory and port (stops it first if running).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.spawn().await
    }
}

impl Drop for PrivateTestEnv {
    fn drop(&mut self) {
        if let Some((mut child, stdin)) = self.running.take() {
            drop(stdin);
            // Give it the graceful path first, briefly; a drop cannot wait long.
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Starts testenv writing into `dir` and waits for its ready marker.
async fn spawn_testenv(bin: &Path, dir: &Path, log: &Path, extra: &[String]) -> anyhow::Result<(Child, ChildStdin)> {
    let log_file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = Command::new(bin)
        .arg("--out-dir")
        .arg(dir)
        .arg("--stop-on-stdin-eof")
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin pipe to testenv"))?;
    let started = Instant::now();
    let timeout = start_timeout();
    let ready = dir.join("ready");
    // A child that exits must fail the start at once, so this cannot be `eventually`.
    loop {
        if ready.exists() {
            return Ok((child, stdin));
        }
        if let Some(status) = child.try_wait()? {
            bail!("testenv exited with {status} before it was ready:\n{}", tail(log, 30));
        }
        if started.elapsed() > timeout {
            // Closing stdin stops it; kill in case it is wedged.
            drop(stdin);
            let _ = child.kill();
            let _ = child.wait();
            bail!("testenv not ready after {timeout:?}:\n{}", tail(log, 30));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn readyz(client: &Client) -> anyhow::Result<Option<()>> {
    let req = http::Request::get("/readyz").body(Vec::new())?;
    // Bounded, so an address that swallows packets cannot outlast the caller's deadline.
    let body = tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await??;
    Ok((body.trim() == "ok").then_some(()))
}

async fn load_config(kubeconfig: &Path) -> anyhow::Result<Config> {
    let parsed =
        Kubeconfig::read_from(kubeconfig).with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", kubeconfig.display()))
}

/// Whether the kubeconfig's current context is a testenv cluster.
fn names_testenv(kubeconfig: &Path) -> bool {
    let Ok(parsed) = Kubeconfig::read_from(kubeconfig) else {
        return false;
    };
    let current = parsed.current_context.as_deref();
    parsed
        .contexts
        .iter()
        .any(|c| Some(c.name.as_str()) == current && c.context.as_ref().is_some_and(|c| c.cluster == TESTENV_CLUSTER))
}

fn impersonate(kubeconfig: &mut Kubeconfig, identity: &str) -> anyhow::Result<()> {
    let current = kubeconfig.current_context.clone().ok_or_else(|| anyhow!("kubeconfig has no current context"))?;
    let user = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.as_ref())
        .and_then(|c| c.user.clone())
        .ok_or_else(|| anyhow!("context {current} has no user"))?;
    let auth = kubeconfig
        .auth_infos
        .iter_mut()
        .find(|a| a.name == user)
        .and_then(|a| a.auth_info.as_mut())
        .ok_or_else(|| anyhow!("kubeconfig has no user {user}"))?;
    auth.impersonate = Some(identity.to_string());
    auth.impersonate_groups = None;
    Ok(())
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn start_timeout() -> Duration {
    let secs = std::env::var(START_TIMEOUT_VAR).ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    Duration::from_secs(secs)
}

/// This process's private directory (0700: it holds credentials and logs), made once per
/// process after removing the directories of test processes that are gone.
pub fn process_dir() -> anyhow::Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| run_dir().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!(e))
}

fn run_dir() -> anyhow::Result<PathBuf> {
    let root = env_path(TESTENV_DIR_VAR).unwrap_or_else(|| std::env::temp_dir().join("quic-ingress-e2e"));
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    prune_stale_runs(&root);
    let dir = root.join(format!("run-{}", std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::DirBuilder::new().mode(0o700).create(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn prune_stale_runs(root: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("run-")) else {
            continue;
        };
        let alive = Path::new("/proc").join(pid).exists();
        // A dir whose ready marker remains still has a live (or killed) testenv; its
        // own shutdown removes the marker, so only a SIGKILLed one leaves it behind.
        if !alive && !entry.path().join("ready").exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Builds the testenv binary the way `make testenv-build` does and returns its path.
fn build_testenv() -> anyhow::Result<PathBuf> {
    eprintln!(
        "quic-ingress-e2e: {TESTENV_BIN_VAR} is not set; building testenv with make \
         (the first build on a machine takes minutes)"
    );
    crate::process::make_print_bin("testenv-print-bin")
}

fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    // Unique per call: tests in one process may derive the same kubeconfig at once.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{seq}", std::process::id()));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// The last `lines` lines of a log file, headed by its path.
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(f) = fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let all: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    let start = all.len().saturating_sub(lines);
    format!("--- last lines of {} ---\n{}", path.display(), all[start..].join("\n"))
}
