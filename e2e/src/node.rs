//! Helpers for the node tests (`tests/node.rs`), which run the chart's pods on a cluster
//! with a kubelet (`make cluster-up`, or any real cluster): helm, the image under test,
//! workloads built from it, the container processes on this host, and HTTP/3 and HTTP/2
//! clients that reconnect the way browsers do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use http::Version;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use quic_ingress::client::{ClientError, H3Client, RequestBody, TrustOptions, request_tcp};
use serde_json::json;

use crate::process::{helm_bin, repo_root};
use crate::{TestEnv, env};

/// The image the node tests install (`make test-node` sets it to what `make image` built).
pub const IMAGE_VAR: &str = "QUIC_INGRESS_IMAGE";

/// `REPOSITORY:TAG` of the image under test: `QUIC_INGRESS_IMAGE`, else the one `make
/// image` builds for the chart's appVersion.
pub fn image() -> (String, String) {
    let image = std::env::var(IMAGE_VAR).ok().filter(|v| !v.is_empty());
    let image = image.unwrap_or_else(|| format!("localhost/quic-ingress:{}", chart_app_version()));
    split_image(&image)
}

/// Splits `repo[:port]/name:tag` at the tag's colon (a registry port is not a tag).
pub fn split_image(image: &str) -> (String, String) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (image.to_string(), "latest".to_string()),
    }
}

fn chart_app_version() -> String {
    let chart = std::fs::read_to_string(repo_root().join("charts/quic-ingress/Chart.yaml")).unwrap_or_default();
    chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap_or_else(|| "latest".into())
}

/// Runs helm against the test cluster from the repository root; returns stdout, or fails
/// with stderr.
pub async fn helm(env: &TestEnv, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(helm_bin()?);
    cmd.args(args).arg("--kubeconfig").arg(env.kubeconfig_path()).current_dir(repo_root());
    let shown = format!("helm {}", args.join(" "));
    let out = tokio::process::Command::from(cmd).output().await.with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A Deployment of demo backends from the image under test: each answers with its pod's
/// name (downward API), on port 8080, runs as 65532 with a read-only root filesystem, and
/// is Ready when `/health` answers.
pub fn demo_backend_deployment(name: &str, replicas: i32) -> anyhow::Result<Deployment> {
    let (repo, tag) = image();
    let restricted = json!({
        "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": true, "runAsUser": 65532,
        "seccompProfile": {"type": "RuntimeDefault"}
    });
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            // New pods first: the test checks that nothing fails while this rolls.
            "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "backend",
                        "image": format!("{repo}:{tag}"),
                        "imagePullPolicy": "IfNotPresent",
                        "args": ["--log-format", "json", "demo-backend", "--listen", "0.0.0.0:8080", "--name", "$(POD_NAME)"],
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        // Slow to turn unready on purpose: the test stops a backend and
                        // expects the BackendGroup's own health check to notice first.
                        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1, "failureThreshold": 30},
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                        "securityContext": restricted,
                    }]
                }
            }
        }
    }))?)
}

/// The container's main process on this host, found by its container ID in
/// `/proc/<pid>/cgroup` (the runtime puts each container in a cgroup named after it).
/// `None` when the container does not run on this machine (another cluster).
pub fn host_pid_of(pod: &Pod, container: &str) -> Option<u32> {
    let status = pod.status.as_ref()?.container_statuses.as_ref()?.iter().find(|c| c.name == container)?;
    let id = status.container_id.as_deref()?.rsplit_once("://")?.1.to_string();
    let mut found: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(&id)))
        .collect();
    // The container's init process has the lowest pid of its cgroup.
    found.sort_unstable();
    found.first().copied()
}

/// The real, effective, saved and filesystem UIDs of a process (`Uid:` of
/// `/proc/<pid>/status`).
pub fn process_uids(pid: u32) -> anyhow::Result<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_uids(&status).with_context(|| format!("no Uid line in /proc/{pid}/status"))
}

fn parse_uids(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().map(|v| v.parse().ok()).collect()
}

/// The mount options of a process's root filesystem, as it sees it
/// (`/proc/<pid>/mountinfo`: the last mount on `/`).
pub fn root_mount_options(pid: u32) -> anyhow::Result<Vec<String>> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    parse_root_options(&info).with_context(|| format!("no / in /proc/{pid}/mountinfo"))
}

fn parse_root_options(mountinfo: &str) -> Option<Vec<String>> {
    // Fields: id parent major:minor root mountpoint options ...
    mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(4) == Some(&"/")).then(|| f.get(5).map(|o| o.split(',').map(str::to_string).collect()))?
        })
        .next_back()
}

/// The `Healthy:` value of the backend block with `address` in `kubectl describe
/// backendgroup` output.
pub fn described_backend_health(describe: &str, address: &str) -> Option<String> {
    let lines: Vec<&str> = describe.lines().collect();
    let start = lines.iter().position(|l| {
        let t = l.trim();
        t.starts_with("Address:") && t.trim_start_matches("Address:").trim() == address
    })?;
    lines[start + 1..]
        .iter()
        .take_while(|l| !l.trim_start().starts_with("Address:"))
        .find_map(|l| l.trim().strip_prefix("Healthy:").map(|v| v.trim().to_string()))
}

/// One answer of a demo backend through the proxy.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub version: Version,
    /// The backend's `--name`: its pod's name.
    pub backend: String,
}

/// A client of one address and host name, over HTTP/3 (one connection, replaced when the
/// server closes it, e.g. with GOAWAY on shutdown) or HTTP/2 (a connection per request).
pub struct Client {
    addr: SocketAddr,
    host: String,
    trust: TrustOptions,
    h3: tokio::sync::Mutex<Option<H3Client>>,
}

impl Client {
    pub fn new(addr: SocketAddr, host: &str) -> Self {
        Self {
            addr,
            host: host.to_string(),
            trust: TrustOptions { insecure: true, ca_file: None },
            h3: tokio::sync::Mutex::new(None),
        }
    }

    async fn h3_connection(&self, fresh: bool) -> anyhow::Result<H3Client> {
        let mut slot = self.h3.lock().await;
        if fresh || slot.is_none() {
            *slot = Some(H3Client::connect(self.addr, &self.host, &self.trust).await?);
        }
        slot.clone().context("no connection")
    }

    /// GET over HTTP/3. A request that fails on the kept connection (it went away: GOAWAY
    /// on shutdown, a close) is sent again once on a new connection, as browsers do; the
    /// first error comes back as the reason for the resend.
    pub async fn get_h3(&self, path: &str) -> anyhow::Result<(Answer, Option<String>)> {
        match self.try_h3(path, false).await {
            Ok(a) => Ok((a, None)),
            Err(e) => Ok((self.try_h3(path, true).await?, Some(format!("{e:#}")))),
        }
    }

    async fn try_h3(&self, path: &str, fresh: bool) -> anyhow::Result<Answer> {
        let conn = self.h3_connection(fresh).await?;
        let req = http::Request::get(format!("https://{}{path}", self.host)).body(())?;
        let fut = async {
            let resp = conn.request(req, RequestBody::Empty).await?;
            let (status, version) = (resp.status.as_u16(), resp.version);
            let body = resp.bytes().await?;
            Ok::<_, anyhow::Error>(answer(status, version, &body))
        };
        tokio::time::timeout(Duration::from_secs(5), fut).await.context("HTTP/3 request timed out")?
    }

    /// GET over HTTP/2 on a new TLS connection. A request the connection never wrote,
    /// because the server went away first (its GOAWAY came as the connection opened:
    /// `ClientError::NotSent`), is sent again once on a new connection, as browsers do; the
    /// first error comes back as the reason. Any other error is a failure: the request may
    /// have reached the server.
    pub async fn get_h2(&self, path: &str) -> anyhow::Result<(Answer, Option<String>)> {
        match self.try_h2(path).await {
            Ok(a) => Ok((a, None)),
            Err(e) if matches!(e.downcast_ref(), Some(ClientError::NotSent(_))) => {
                Ok((self.try_h2(path).await?, Some(format!("{e:#}"))))
            }
            Err(e) => Err(e),
        }
    }

    async fn try_h2(&self, path: &str) -> anyhow::Result<Answer> {
        let req = http::Request::get(format!("https://{}{path}", self.host)).body(())?;
        let fut = async {
            let resp =
                request_tcp(self.addr, &self.host, &self.trust, Version::HTTP_2, req, RequestBody::Empty).await?;
            let (status, version) = (resp.status.as_u16(), resp.version);
            let body = resp.bytes().await?;
            Ok::<_, anyhow::Error>(answer(status, version, &body))
        };
        tokio::time::timeout(Duration::from_secs(5), fut).await.context("HTTP/2 request timed out")?
    }
}

fn answer(status: u16, version: Version, body: &[u8]) -> Answer {
    let backend = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["backend"].as_str().map(str::to_string))
        .unwrap_or_default();
    Answer { status, version, backend }
}

/// Counts of a steady load.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoadCounts {
    pub ok: u64,
    /// Sent again on a new connection after the first one went away.
    pub retried: u64,
    pub failed: u64,
}

/// Steady HTTP/3 and HTTP/2 load from this host (one request at a time per protocol) until
/// stopped; every answer that is not a 200 from a demo backend counts as failed.
pub struct Load {
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 3]>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    retries: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, host: &str, path: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<[AtomicU64; 3]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let retries = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for h3 in [true, false] {
            let (stop, counts, errors, retries) = (stop.clone(), counts.clone(), errors.clone(), retries.clone());
            let client = Client::new(addr, host);
            let path = path.to_string();
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let result = if h3 { client.get_h3(&path).await } else { client.get_h2(&path).await };
                    let outcome = match result {
                        Ok((a, retried)) if a.status == 200 && !a.backend.is_empty() => Ok(retried),
                        Ok((a, _)) => Err(format!("{}: status {} from {:?}", proto(h3), a.status, a.backend)),
                        Err(e) => Err(format!("{}: {e:#}", proto(h3))),
                    };
                    match outcome {
                        Ok(retried) => {
                            counts[0].fetch_add(1, Ordering::Relaxed);
                            if let Some(why) = retried {
                                counts[1].fetch_add(1, Ordering::Relaxed);
                                keep_first(&retries, format!("{}: {why}", proto(h3)));
                            }
                        }
                        Err(e) => {
                            counts[2].fetch_add(1, Ordering::Relaxed);
                            keep_first(&errors, e);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        Self { stop, counts, errors, retries, tasks }
    }

    pub fn counts(&self) -> LoadCounts {
        LoadCounts {
            ok: self.counts[0].load(Ordering::Relaxed),
            retried: self.counts[1].load(Ordering::Relaxed),
            failed: self.counts[2].load(Ordering::Relaxed),
        }
    }

    /// The first errors seen (at most 20).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Why the first resent requests (at most 20) were sent again.
    pub fn retries(&self) -> Vec<String> {
        self.retries.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Stops the clients and returns the final counts.
    pub async fn stop(self) -> LoadCounts {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        LoadCounts {
            ok: self.counts[0].load(Ordering::Relaxed),
            retried: self.counts[1].load(Ordering::Relaxed),
            failed: self.counts[2].load(Ordering::Relaxed),
        }
    }
}

/// Keeps the first 20 lines.
fn keep_first(lines: &std::sync::Mutex<Vec<String>>, line: String) {
    if let Ok(mut lines) = lines.lock()
        && lines.len() < 20
    {
        lines.push(line);
    }
}

fn proto(h3: bool) -> &'static str {
    if h3 { "HTTP/3" } else { "HTTP/2" }
}

/// Resident memory of the node cluster's processes on this host, in KiB, by command name
/// (containerd and its shims, the API server, the node components, the pods' processes):
/// every process whose command line names the cluster directory or that runs in a pod
/// cgroup.
pub fn cluster_rss_kib(cluster_dir: &Path) -> Vec<(String, u64)> {
    let dir = cluster_dir.to_string_lossy().to_string();
    let mut by_name: std::collections::BTreeMap<String, u64> = Default::default();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let ours = cmdline.contains(&dir) || cgroup.contains("/kubepods");
        // Shells and build tools that merely name the directory (make's recipe) are not
        // part of the cluster.
        let tool = ["sh", "bash", "make", "cargo"]
            .iter()
            .any(|t| cmdline.split(' ').next().is_some_and(|a| a.ends_with(&format!("/{t}")) || a == *t));
        if !ours || tool {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        let name = if cgroup.contains("/kubepods") {
            "pods".to_string()
        } else {
            let argv: Vec<&str> = cmdline.split_whitespace().collect();
            let base = argv.first().map(|a| a.rsplit('/').next().unwrap_or(a)).unwrap_or("?");
            // The node binary runs every component: name it by its subcommand.
            if base.starts_with("node-") { argv.get(1).copied().unwrap_or(base).to_string() } else { base.to_string() }
        };
        *by_name.entry(name).or_default() += rss;
    }
    by_name.into_iter().collect()
}

/// The node cluster's directory (`make cluster-up` writes its kubeconfig there): the
/// directory of `QUIC_INGRESS_TEST_KUBECONFIG`.
pub fn cluster_dir() -> Option<PathBuf> {
    std::env::var_os(env::KUBECONFIG_VAR).map(PathBuf::from).and_then(|p| p.parent().map(Path::to_path_buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_at_the_tag() {
        assert_eq!(split_image("localhost/quic-ingress:0.1.0"), ("localhost/quic-ingress".into(), "0.1.0".into()));
        assert_eq!(split_image("reg:5000/qi"), ("reg:5000/qi".into(), "latest".into()));
        assert_eq!(split_image("reg:5000/qi:dev"), ("reg:5000/qi".into(), "dev".into()));
    }

    #[test]
    fn uid_line_is_read_from_proc_status() {
        let status = "Name:\tquic-ingress\nUid:\t65532\t65532\t65532\t65532\nGid:\t65532\t65532\t65532\t65532\n";
        assert_eq!(parse_uids(status), Some(vec![65532; 4]));
        assert_eq!(parse_uids("Name:\tx\n"), None);
    }

    #[test]
    fn root_mount_options_are_those_of_the_last_mount_on_slash() {
        let info = "22 1 0:20 / / rw,relatime - overlay overlay rw\n\
                    23 22 0:21 / /proc rw,nosuid - proc proc rw\n\
                    30 22 0:20 / / ro,relatime - overlay overlay rw\n";
        assert_eq!(parse_root_options(info), Some(vec!["ro".to_string(), "relatime".to_string()]));
    }

    #[test]
    fn a_backend_block_of_describe_gives_its_health() {
        let out = "Backends:\n  Address:  10.244.0.5:8080\n  Healthy:  true\n  Address:  10.244.0.6:8080\n  Healthy:  false\n";
        assert_eq!(described_backend_health(out, "10.244.0.6:8080").as_deref(), Some("false"));
        assert_eq!(described_backend_health(out, "10.244.0.7:8080"), None);
    }
}
