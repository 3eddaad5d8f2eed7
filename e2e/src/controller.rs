//! The controller under test: `quic-ingress controller` as a process, running as the
//! unprivileged `controller` identity bound only to the rules of `deploy/rbac.yaml`, plus
//! an HTTP/3 client (the project's own) to send requests through it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Client, Config};
use quic_ingress::client::{ClientError, H3Client, RequestBody, TrustOptions};
use quic_ingress::kube::crd::BackendGroup;

use crate::process::{TestProcess, free_tcp_port_besides, free_udp_tcp_port, log_path, quic_ingress_bin, repo_root};
use crate::wait::eventually;
use crate::{TestEnv, TestNamespace, identity};

/// The CRD manifest users apply.
pub const CRD_MANIFEST: &str = "crds/backendgroups.quic-ingress.dev.yaml";
/// The RBAC manifest users apply: ClusterRole `quic-ingress` and Role
/// `quic-ingress-leader-election`.
pub const RBAC_MANIFEST: &str = "deploy/rbac.yaml";
/// Per request, so a lost packet or a hung stream cannot outlast a test's deadline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs kubectl and fails with its stderr when it fails.
pub async fn kubectl(mut cmd: Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    cmd.stdin(std::process::Stdio::null());
    let out = tokio::process::Command::from(cmd).output().await.with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubectl apply --server-side` of the BackendGroup CRD as admin (idempotent, safe to run
/// from concurrent tests), then waits until BackendGroups are served. The Gateway API CRDs
/// the controller also watches are installed beside it ([`crate::gateway`]), so a
/// controller of these tests has no failing watch.
pub async fn install_crd(env: &TestEnv) -> anyhow::Result<()> {
    crate::gateway::install_gateway_crds(env).await?;
    let mut cmd = env.kubectl();
    cmd.args(["apply", "--server-side", "--force-conflicts", "-f"]).arg(repo_root().join(CRD_MANIFEST));
    kubectl(cmd).await?;
    let api = Api::<BackendGroup>::all(env.client()?);
    eventually("BackendGroups to be served", Duration::from_secs(30), || async {
        api.list(&ListParams::default().limit(1)).await?;
        Ok(Some(()))
    })
    .await
}

/// The RBAC of `deploy/rbac.yaml` bound to the `controller` identity for one test
/// namespace: the ClusterRole through a ClusterRoleBinding named after the namespace, the
/// leader-election Role through a RoleBinding in it. The ClusterRoleBinding is
/// cluster-wide, so it is deleted on drop (the rest goes with the namespace).
pub struct ControllerRbac {
    binding: String,
    config: Config,
}

impl ControllerRbac {
    /// Applies the manifest (ClusterRole, and the Role into `ns`), binds both to
    /// `controller`, and waits until the authorizer lets it list Ingresses and read
    /// Leases there.
    pub async fn grant(env: &TestEnv, ns: &TestNamespace) -> anyhow::Result<ControllerRbac> {
        let mut cmd = env.kubectl();
        cmd.args(["apply", "--server-side", "--force-conflicts", "-n", ns.name(), "-f"])
            .arg(repo_root().join(RBAC_MANIFEST));
        kubectl(cmd).await?;
        let subject = || {
            vec![Subject {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "User".into(),
                name: identity::CONTROLLER.into(),
                namespace: None,
            }]
        };
        let binding = format!("quic-ingress-e2e-{}", ns.name());
        let crb = ClusterRoleBinding {
            metadata: ObjectMeta { name: Some(binding.clone()), ..ObjectMeta::default() },
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: "quic-ingress".into(),
            },
            subjects: Some(subject()),
        };
        Api::<ClusterRoleBinding>::all(env.client()?).create(&PostParams::default(), &crb).await?;
        let rbac = ControllerRbac { binding, config: env.config().clone() };
        ns.create(&RoleBinding {
            metadata: ObjectMeta { name: Some("quic-ingress-leader-election".into()), ..ObjectMeta::default() },
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: "quic-ingress-leader-election".into(),
            },
            subjects: Some(subject()),
        })
        .await?;
        // The authorizer learns of bindings through a watch of its own.
        let as_controller = env.client_as(identity::CONTROLLER).await?;
        let ingresses = Api::<Ingress>::namespaced(as_controller.clone(), ns.name());
        let leases = Api::<Lease>::namespaced(as_controller, ns.name());
        eventually("the controller's RBAC to take effect", Duration::from_secs(30), || async {
            ingresses.list(&ListParams::default().limit(1)).await?;
            leases.get_opt("quic-ingress-e2e-probe").await?;
            Ok(Some(()))
        })
        .await?;
        Ok(rbac)
    }
}

impl Drop for ControllerRbac {
    fn drop(&mut self) {
        let (name, config) = (self.binding.clone(), self.config.clone());
        // Own thread and runtime: drop may run while the test's runtime shuts down.
        let worker = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let api = Api::<ClusterRoleBinding>::all(Client::try_from(config)?);
                match tokio::time::timeout(Duration::from_secs(10), api.delete(&name, &DeleteParams::default())).await?
                {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
                    Err(e) => Err(anyhow::Error::from(e)),
                }
            })
        });
        if let Ok(Err(e)) = worker.join() {
            eprintln!("quic-ingress-e2e: deleting ClusterRoleBinding {}: {e:#}", self.binding);
        }
    }
}

/// How to start the controller.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// `--namespace`: the watches and the leader Lease are confined to it.
    pub namespace: String,
    /// `--publish-address`.
    pub publish_address: Option<String>,
    /// Identity to run as (default `controller`).
    pub identity: &'static str,
    /// More arguments for `quic-ingress controller`.
    pub extra_args: Vec<String>,
    /// Confine the watches to `namespace` (`--namespace`); otherwise every namespace is
    /// watched (for tests of several tenants) and `namespace` only holds the leader Lease.
    pub watch_namespace: bool,
    /// `--allow-backend-cidr 127.0.0.0/8`: static BackendGroup backends of tests
    /// ([`crate::Backend::start_local`]) listen on loopback, which is refused by default.
    pub allow_loopback_backends: bool,
    /// Deadline for `/readyz`.
    pub ready_timeout: Duration,
}

impl ControllerOptions {
    pub fn new(namespace: &str) -> Self {
        ControllerOptions {
            namespace: namespace.to_string(),
            publish_address: Some("192.0.2.10".into()),
            identity: identity::CONTROLLER,
            extra_args: Vec::new(),
            watch_namespace: true,
            allow_loopback_backends: true,
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// A running `quic-ingress controller`, killed on drop.
pub struct Controller {
    process: TestProcess,
    listen: SocketAddr,
    admin: SocketAddr,
    clients: Mutex<HashMap<String, H3Client>>,
}

impl Controller {
    /// Starts the controller for one test namespace with the defaults of
    /// [`ControllerOptions::new`] and waits for `/readyz`.
    pub async fn start(env: &TestEnv, namespace: &str) -> anyhow::Result<Controller> {
        Self::start_with(env, ControllerOptions::new(namespace)).await
    }

    pub async fn start_with(env: &TestEnv, opts: ControllerOptions) -> anyhow::Result<Controller> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(env, &opts).await {
                // A port picked free was taken before the controller bound it.
                Err(e) if attempt < 3 && format!("{e:#}").to_lowercase().contains("address already in use") => {
                    eprintln!("quic-ingress-e2e: controller lost a port race, retrying: {e:#}");
                }
                result => return result,
            }
        }
    }

    async fn try_start(env: &TestEnv, opts: &ControllerOptions) -> anyhow::Result<Controller> {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_tcp_port_besides(&[listen.port()])?));
        let mut cmd = Command::new(quic_ingress_bin()?);
        cmd.args(["--log-format", "text", "controller", "--kubeconfig"])
            .arg(env.kubeconfig_for(opts.identity)?)
            .args(["--listen", &listen.to_string(), "--admin-listen", &admin.to_string()])
            .args(["--drain-timeout", "1s"]);
        if opts.watch_namespace {
            cmd.args(["--namespace", &opts.namespace]);
        } else {
            cmd.env("POD_NAMESPACE", &opts.namespace);
        }
        if opts.allow_loopback_backends {
            cmd.args(["--allow-backend-cidr", "127.0.0.0/8"]);
        }
        cmd.args(&opts.extra_args);
        // The controller writes its self-signed default certificate and key under the
        // temporary directory and leaves them there; keep them in this run's directory,
        // which the next run removes, rather than in /tmp.
        let tmp = crate::env::process_dir()?.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        cmd.env("TMPDIR", tmp);
        if let Some(addr) = &opts.publish_address {
            cmd.args(["--publish-address", addr]);
        }
        let mut process = TestProcess::spawn("controller", cmd, log_path(&format!("controller-{}", opts.namespace))?)?;
        let deadline = tokio::time::Instant::now() + opts.ready_timeout;
        loop {
            process.check_running()?;
            if admin_get(admin, "/readyz").await.map(|(status, _)| status == 200).unwrap_or(false) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("controller not ready after {:?}\n{}", opts.ready_timeout, process.log_tail(30));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(Controller { process, listen, admin, clients: Mutex::new(HashMap::new()) })
    }

    /// The data plane address (UDP for HTTP/3, TCP for HTTP/1.1 and HTTP/2).
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log_path(&self) -> PathBuf {
        self.process.log_path().to_path_buf()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Fails with the log's tail if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.process.check_running()
    }

    /// `/debug/routes` as JSON.
    pub async fn debug_routes(&self) -> anyhow::Result<serde_json::Value> {
        let (status, body) = admin_get(self.admin, "/debug/routes").await?;
        if status != 200 {
            bail!("/debug/routes answered {status}");
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// Resident memory of the controller process, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("VmRSS")
    }

    /// The part of the resident memory mapped from files, in KiB (`RssFile`): the pages of
    /// the binary's code and read-only data it has touched. They are clean page cache,
    /// shared with every process mapping the same file and dropped under memory pressure.
    pub fn file_rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("RssFile")
    }

    fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("no {field} in /proc/{}/status", self.pid()))
    }

    /// CPU time the controller process has used so far (user + system, in seconds), from
    /// `/proc/PID/stat`.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // After "pid (comm) ": state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
        let ticks = |i: usize| -> anyhow::Result<f64> {
            Ok(fields.get(i).ok_or_else(|| anyhow!("short /proc/{}/stat", self.pid()))?.parse::<f64>()?)
        };
        // SAFETY: sysconf only reads a constant of the running system.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Ok((ticks(11)? + ticks(12)?) / per_second.max(1.0))
    }

    /// One sample's value from `/metrics` (`series` as printed, labels included), 0 when
    /// absent (a labelled counter appears only once counted).
    pub async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let (_, body) = admin_get(self.admin, "/metrics").await?;
        Ok(String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0))
    }

    /// `/readyz`: status and body.
    pub async fn readyz(&self) -> anyhow::Result<(u16, String)> {
        let (status, body) = admin_get(self.admin, "/readyz").await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// `GET https://HOST/PATH` over HTTP/3, with SNI `host`, accepting any certificate.
    /// One connection per host is kept and made again after an error.
    pub async fn get(&self, host: &str, path: &str) -> anyhow::Result<Reply> {
        self.get_via(host, host, path).await
    }

    /// `GET https://HOST/PATH` on the kept connection whose SNI is `sni` (so requests for
    /// many hosts can share one connection and skip handshakes).
    pub async fn get_via(&self, sni: &str, host: &str, path: &str) -> anyhow::Result<Reply> {
        let cached = self.clients.lock().map_err(|_| anyhow!("poisoned"))?.get(sni).cloned();
        let client = match cached {
            Some(c) => c,
            None => {
                let trust = TrustOptions { insecure: true, ca_file: None };
                let c = tokio::time::timeout(REQUEST_TIMEOUT, H3Client::connect(self.listen, sni, &trust))
                    .await
                    .context("HTTP/3 connect timed out")??;
                self.clients.lock().map_err(|_| anyhow!("poisoned"))?.insert(sni.to_string(), c.clone());
                c
            }
        };
        match request(&client, host, path).await {
            Ok(reply) => Ok(reply),
            Err(e) => {
                self.clients.lock().map_err(|_| anyhow!("poisoned"))?.remove(sni);
                Err(e)
            }
        }
    }

    /// Like [`Controller::get`], on a new connection with the given trust (for TLS tests).
    pub async fn get_with(&self, sni: &str, path: &str, trust: &TrustOptions) -> Result<Reply, GetError> {
        let client = tokio::time::timeout(REQUEST_TIMEOUT, H3Client::connect(self.listen, sni, trust))
            .await
            .map_err(|_| GetError::Other(anyhow!("HTTP/3 connect timed out")))?
            .map_err(GetError::Connect)?;
        request(&client, sni, path).await.map_err(GetError::Other)
    }

    /// Waits until `GET https://HOST/PATH` is answered 200 by backend `want`.
    pub async fn wait_for_backend(
        &self,
        host: &str,
        path: &str,
        want: &str,
        timeout: Duration,
    ) -> anyhow::Result<Reply> {
        eventually(&format!("{host}{path} to be served by {want}"), timeout, || async {
            let reply = self.get(host, path).await?;
            if reply.status == 200 && reply.backend() == Some(want) {
                return Ok(Some(reply));
            }
            Err(anyhow!("answered {} by {:?}: {}", reply.status, reply.backend(), reply.text()))
        })
        .await
    }

    /// Waits until `GET https://HOST/PATH` is answered with `status`.
    pub async fn wait_for_status(
        &self,
        host: &str,
        path: &str,
        status: u16,
        timeout: Duration,
    ) -> anyhow::Result<Reply> {
        eventually(&format!("{host}{path} to answer {status}"), timeout, || async {
            let reply = self.get(host, path).await?;
            if reply.status == status {
                return Ok(Some(reply));
            }
            Err(anyhow!("answered {} by {:?}: {}", reply.status, reply.backend(), reply.text()))
        })
        .await
    }

    /// Sends `n` requests one after another and counts the answering backends (`"<status>"`
    /// for answers without `x-backend`).
    pub async fn tally(&self, host: &str, path: &str, n: usize) -> anyhow::Result<BTreeMap<String, usize>> {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let reply = self.get(host, path).await?;
            let key = match reply.backend() {
                Some(b) if reply.status == 200 => b.to_string(),
                _ => format!("<{}>", reply.status),
            };
            *seen.entry(key).or_insert(0) += 1;
        }
        Ok(seen)
    }

    /// SIGTERM, and SIGKILL if it has not exited after `timeout`.
    pub async fn stop(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.process.stop_with(libc::SIGTERM, timeout).await
    }
}

/// Why [`Controller::get_with`] failed: at the handshake (e.g. certificate rejected) or
/// later.
#[derive(Debug)]
pub enum GetError {
    Connect(ClientError),
    Other(anyhow::Error),
}

impl std::fmt::Display for GetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GetError::Connect(e) => write!(f, "connect: {e}"),
            GetError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for GetError {}

async fn request(client: &H3Client, host: &str, path: &str) -> anyhow::Result<Reply> {
    let fut = async {
        let req = http::Request::get(format!("https://{host}{path}")).body(())?;
        let resp = client.request(req, RequestBody::Empty).await?;
        let (status, headers) = (resp.status.as_u16(), resp.headers.clone());
        let body = resp.bytes().await?;
        Ok::<_, anyhow::Error>(Reply { status, headers, body })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut).await.with_context(|| format!("GET {host}{path} timed out"))?
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The demo backend that answered (its `x-backend` header).
    pub fn backend(&self) -> Option<&str> {
        self.headers.get("x-backend").and_then(|v| v.to_str().ok())
    }

    /// The body as JSON (demo backends answer JSON).
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("not JSON: {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET PATH` on the admin address over HTTP/1.1: (status, body).
pub async fn admin_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fut = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let raw = tokio::time::timeout(REQUEST_TIMEOUT, fut).await.context("admin request timed out")??;
    parse_http1(&raw)
}

/// Status and body of a `Connection: close` HTTP/1.1 response (plain or chunked body).
fn parse_http1(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow!("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line: {head}"))?;
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(|| anyhow!("bad chunk"))?;
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..line_end]).trim(), 16)?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size).ok_or_else(|| anyhow!("short chunk"))?);
            rest = rest.get(size + 2..).unwrap_or(&[]);
        }
        body = out;
    }
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::parse_http1;

    #[test]
    fn parses_plain_and_chunked_http1_responses() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nready\n";
        assert_eq!(parse_http1(plain).unwrap(), (200, b"ready\n".to_vec()));
        let chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnot \r\n6\r\nready\n\r\n0\r\n\r\n";
        assert_eq!(parse_http1(chunked).unwrap(), (503, b"not ready\n".to_vec()));
        assert!(parse_http1(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
