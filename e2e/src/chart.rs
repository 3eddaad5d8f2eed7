//! The Helm chart in cluster tests: `helm` against the test cluster, and the controller run
//! as the chart deploys it (the rendered Deployment's arguments and a token of the chart's
//! ServiceAccount), since no kubelet runs the chart's pods on this control plane.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::config::{AuthInfo, Kubeconfig};

use crate::TestEnv;
use crate::controller::{admin_get, kubectl};
use crate::process::{
    TestProcess, free_tcp_port_besides, free_udp_tcp_port, helm_bin, log_path, quic_ingress_bin, repo_root,
};

/// Runs helm with the test cluster's admin kubeconfig from the repository root; its stdout.
pub fn helm(env: &TestEnv, args: &[&str]) -> Result<String> {
    let out = Command::new(helm_bin()?)
        .args(args)
        .arg("--kubeconfig")
        .arg(env.kubeconfig_path())
        .current_dir(repo_root())
        .output()
        .context("running helm")?;
    if !out.status.success() {
        bail!("helm {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A kubeconfig for the API server that authenticates with `token`.
pub fn token_kubeconfig(env: &TestEnv, token: &str, path: &PathBuf) -> Result<()> {
    let mut config = Kubeconfig::read_from(env.kubeconfig_path())?;
    for named in &mut config.auth_infos {
        named.auth_info = Some(AuthInfo { token: Some(token.to_string().into()), ..AuthInfo::default() });
    }
    std::fs::write(path, serde_json::to_vec(&config)?)?;
    Ok(())
}

/// A kubeconfig authenticating as ServiceAccount `namespace/name`, with a token from
/// `kubectl create token` (what the kubelet would mount into the pod).
pub async fn service_account_kubeconfig(env: &TestEnv, namespace: &str, name: &str) -> Result<PathBuf> {
    let mut token = env.kubectl();
    token.args(["create", "token", name, "-n", namespace, "--duration", "1h"]);
    let token = kubectl(token).await?;
    let path = crate::process::log_dir()?.join(format!("kubeconfig-{namespace}-{name}"));
    token_kubeconfig(env, token.trim(), &path)?;
    Ok(path)
}

/// The arguments of the first container of Deployment `namespace/name`.
pub async fn deployment_args(client: &kube::Client, namespace: &str, name: &str) -> Result<Vec<String>> {
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace).get(name).await?;
    let container = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.into_iter().next())
        .context("no container")?;
    Ok(container.args.unwrap_or_default())
}

/// `quic-ingress` started with a chart Deployment's arguments, killed on drop.
pub struct ChartController {
    process: TestProcess,
    listen: SocketAddr,
    admin: SocketAddr,
    /// The plaintext HTTP listener, when the chart's arguments have `--http-listen`.
    http: Option<SocketAddr>,
}

impl ChartController {
    /// Starts the binary with `args` (only `--listen` and `--admin-listen` moved to free
    /// loopback ports), authenticating with `kubeconfig`, as pod `pod_name` of `namespace`
    /// (`POD_NAME`, `POD_NAMESPACE`), and waits until `/readyz` answers 200.
    pub async fn start(args: &[String], kubeconfig: &Path, namespace: &str, pod_name: &str) -> Result<Self> {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_tcp_port_besides(&[listen.port()])?));
        let mut args = args.to_vec();
        for (flag, value) in [("--listen", listen), ("--admin-listen", admin)] {
            let at = args.iter().position(|a| a == flag).with_context(|| format!("no {flag} in {args:?}"))?;
            args[at + 1] = value.to_string();
        }
        let http = match args.iter().position(|a| a == "--http-listen") {
            Some(at) if at + 1 < args.len() => {
                let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port_besides(&[listen.port(), admin.port()])?));
                args[at + 1] = http.to_string();
                Some(http)
            }
            _ => None,
        };
        let mut cmd = Command::new(quic_ingress_bin()?);
        cmd.args(&args).env("KUBECONFIG", kubeconfig).env("POD_NAMESPACE", namespace).env("POD_NAME", pod_name);
        let tmp = crate::env::process_dir()?.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        cmd.env("TMPDIR", tmp);
        let log = log_path(&format!("chart-{namespace}-{pod_name}"))?;
        let mut process = TestProcess::spawn("chart controller", cmd, log)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            process.check_running()?;
            if admin_get(admin, "/readyz").await.is_ok_and(|(status, _)| status == 200) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the chart's controller is not ready after 30 s\n{}", process.log_tail(30));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(Self { process, listen, admin, http })
    }

    /// The data plane address (UDP for HTTP/3, TCP for HTTP/1.1 and HTTP/2).
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The plaintext HTTP listener (TCP), if the chart turned it on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    pub fn log_path(&self) -> PathBuf {
        self.process.log_path().to_path_buf()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// `/readyz`: status and body.
    pub async fn readyz(&self) -> Result<(u16, String)> {
        let (status, body) = admin_get(self.admin, "/readyz").await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// One sample's value from `/metrics` (`series` as printed, labels included), 0 when
    /// absent (a labelled counter appears only once counted).
    pub async fn metric(&self, series: &str) -> Result<f64> {
        let (_, body) = admin_get(self.admin, "/metrics").await?;
        Ok(String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0))
    }
}
