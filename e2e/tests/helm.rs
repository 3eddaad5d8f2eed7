//! The Helm chart (`charts/quic-ingress`) against the real API server: it lints, installs,
//! its objects are what the controller needs, its RBAC equals `deploy/rbac.yaml`, and the
//! controller started with the rendered Deployment's arguments and the chart's
//! ServiceAccount token serves an Ingress. The control plane runs no kubelet, so the pods
//! themselves (and `helm test`) cannot run here.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::IngressClass;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::Api;
use kube::config::{AuthInfo, Kubeconfig};
use quic_ingress::client::{H3Client, RequestBody, TrustOptions};
use quic_ingress::kube::crd::BackendGroup;
use quic_ingress_e2e::controller::{admin_get, install_crd, kubectl};
use quic_ingress_e2e::namespace::unique_name;
use quic_ingress_e2e::objects::{backend_group, ingress};
use quic_ingress_e2e::process::{
    TestProcess, free_tcp_port, free_udp_tcp_port, helm_bin, log_path, quic_ingress_bin, repo_root,
};
use quic_ingress_e2e::{Backend, TestEnv, TestNamespace, eventually};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(30);
const RELEASE: &str = "edge";
/// The chart's full name for the release.
const FULLNAME: &str = "edge-quic-ingress";

fn helm(env: &TestEnv, args: &[&str]) -> Result<String> {
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

/// The rules of the ClusterRole in `deploy/rbac.yaml`, as JSON.
async fn manifest_rules(env: &TestEnv) -> Result<serde_json::Value> {
    let mut cmd = env.kubectl();
    cmd.args(["create", "--dry-run=client", "-o", "json", "-f"]).arg(repo_root().join("deploy/rbac.yaml"));
    // One JSON document per object.
    let out = kubectl(cmd).await?;
    for object in serde_json::Deserializer::from_str(&out).into_iter::<serde_json::Value>() {
        let object = object?;
        if object["kind"] == "ClusterRole" {
            return Ok(object["rules"].clone());
        }
    }
    bail!("no ClusterRole in deploy/rbac.yaml")
}

/// A kubeconfig for the API server that authenticates with `token`.
fn token_kubeconfig(env: &TestEnv, token: &str, path: &PathBuf) -> Result<()> {
    let mut config = Kubeconfig::read_from(env.kubeconfig_path())?;
    for named in &mut config.auth_infos {
        named.auth_info = Some(AuthInfo { token: Some(token.to_string().into()), ..AuthInfo::default() });
    }
    std::fs::write(path, serde_json::to_vec(&config)?)?;
    Ok(())
}

#[tokio::test]
async fn the_chart_installs_and_its_service_account_runs_the_controller() -> Result<()> {
    let env = TestEnv::shared().await?;
    let ns = TestNamespace::new(env, "helm").await?;
    install_crd(env).await?;
    let class = unique_name("quic-helm");
    helm(env, &["lint", "charts/quic-ingress"])?;
    // No --wait: nothing runs the pods on this control plane.
    helm(
        env,
        &[
            "install",
            RELEASE,
            "charts/quic-ingress",
            "-n",
            ns.name(),
            "--set",
            &format!("ingressClass.name={class}"),
            "--set",
            "sessionTickets.shared=true",
            "--set",
            "controller.congestionControl=bbr",
            // The static backend below listens on loopback, refused by default.
            "--set",
            "controller.allowBackendCidrs={127.0.0.0/8}",
        ],
    )?;
    let client = ns.client().clone();

    // The objects the controller needs.
    let ic = Api::<IngressClass>::all(client.clone()).get(&class).await?;
    ensure!(ic.spec.and_then(|s| s.controller).as_deref() == Some("quic-ingress.dev/controller"));
    let svc = ns.api::<Service>().get(FULLNAME).await?;
    let ports: Vec<(i32, String)> = svc
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.port, p.protocol.unwrap_or_default()))
        .collect();
    ensure!(ports == vec![(443, "TCP".into()), (443, "UDP".into())], "one address, TCP and UDP 443: {ports:?}");
    // The chart renders no key material: the controller keeps the ticket Secret (below).
    ensure!(
        ns.api::<Secret>().get_opt(&format!("{FULLNAME}-session-tickets")).await?.is_none(),
        "the chart made a ticket key"
    );
    // The Gateway API is served here, so the chart's GatewayClass is rendered.
    let gc = Api::<quic_ingress::kube::gateway::api::GatewayClass>::all(client.clone()).get("quic").await?;
    ensure!(gc.spec.controller_name == quic_ingress::kube::gateway::GATEWAY_CONTROLLER_NAME, "{:?}", gc.spec);
    let chart_rules = serde_json::to_value(Api::<ClusterRole>::all(client.clone()).get(FULLNAME).await?.rules)?;
    ensure!(chart_rules == manifest_rules(env).await?, "the chart's ClusterRole differs from deploy/rbac.yaml");

    // The controller as the chart deploys it: the Deployment's arguments, the chart's
    // ServiceAccount, only the listen addresses moved to loopback.
    let deployment = ns.api::<Deployment>().get(FULLNAME).await?;
    let container = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.into_iter().next())
        .context("no container")?;
    let listen = format!("127.0.0.1:{}", free_udp_tcp_port()?);
    let admin = format!("127.0.0.1:{}", free_tcp_port()?);
    let mut args = container.args.unwrap_or_default();
    ensure!(
        args.windows(2).any(|w| w == ["--congestion-control", "bbr"]),
        "chart values reach the arguments: {args:?}"
    );
    for (flag, value) in [("--listen", &listen), ("--admin-listen", &admin)] {
        let at = args.iter().position(|a| a == flag).with_context(|| format!("no {flag} in {args:?}"))?;
        args[at + 1] = value.clone();
    }
    let mut token = env.kubectl();
    token.args(["create", "token", FULLNAME, "-n", ns.name(), "--duration", "1h"]);
    let token = kubectl(token).await?;
    let kubeconfig = quic_ingress_e2e::process::log_dir()?.join(format!("kubeconfig-{}", ns.name()));
    token_kubeconfig(env, token.trim(), &kubeconfig)?;
    let mut cmd = Command::new(quic_ingress_bin()?);
    cmd.args(&args).env("KUBECONFIG", &kubeconfig).env("POD_NAMESPACE", ns.name()).env("POD_NAME", "edge-0");
    let tmp = quic_ingress_e2e::env::process_dir()?.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    cmd.env("TMPDIR", tmp);
    let controller = TestProcess::spawn("chart controller", cmd, log_path(&format!("helm-{}", ns.name()))?)?;
    let controller = std::cell::RefCell::new(controller);
    let admin_addr = admin.parse()?;
    eventually("the chart's controller to be ready", TIMEOUT, || async {
        controller.borrow_mut().check_running()?;
        Ok(admin_get(admin_addr, "/readyz").await.ok().filter(|(s, _)| *s == 200).map(|_| ()))
    })
    .await
    .with_context(|| controller.borrow().log_tail(30))?;

    let backend = Backend::start_local("chart-backend").await?;
    ns.create(&backend_group("web", json!({"backends": [{"url": backend.url()}]}))?).await?;
    ns.create(
        &ingress("web")
            .class(&class)
            .resource_rule("chart.example.com", "/", "Prefix", "quic-ingress.dev", "BackendGroup", "web")
            .build(),
    )
    .await?;
    let trust = TrustOptions { insecure: true, ca_file: None };
    let h3 = H3Client::connect(listen.parse()?, "chart.example.com", &trust).await?;
    eventually("the Ingress to be served by the chart's controller", TIMEOUT, || async {
        let req = http::Request::get("https://chart.example.com/").body(())?;
        let resp = h3.request(req, RequestBody::Empty).await?;
        let served = resp.headers.get("x-backend").is_some_and(|b| b == "chart-backend");
        Ok(served.then_some(()))
    })
    .await
    .with_context(|| controller.borrow().log_tail(30))?;
    // The schema admits h3:// backends and the controller builds them (Ready, 1 backend).
    ns.create(&backend_group("quic", json!({"backends": [{"url": "h3://192.0.2.20:443"}]}))?).await?;
    let groups = ns.api::<BackendGroup>();
    eventually("the h3 BackendGroup to be built", TIMEOUT, || async {
        let status = groups.get("quic").await?.status;
        let ready = status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
        let built = status.as_ref().is_some_and(|s| s.total_backends == 1)
            && ready.is_some_and(|c| c.reason != "InvalidBackendGroup");
        Ok(built.then_some(()))
    })
    .await
    .with_context(|| controller.borrow().log_tail(30))?;
    // The leader, as the chart's ServiceAccount, created the ticket Secret and every
    // replica loaded it.
    let tickets = ns.api::<Secret>();
    let key = eventually("the controller to create the ticket Secret", TIMEOUT, || async {
        let secret = tickets.get_opt(&format!("{FULLNAME}-session-tickets")).await?;
        Ok(secret.and_then(|s| s.data).and_then(|d| d.get("ticket.key").cloned()))
    })
    .await
    .with_context(|| controller.borrow().log_tail(30))?;
    ensure!(key.0.len() == 48, "a 48-byte ticket key, got {}", key.0.len());
    eventually("the ticket keys to be loaded", TIMEOUT, || async {
        Ok(std::fs::read_to_string(controller.borrow().log_path())?
            .contains("session-ticket keys loaded")
            .then_some(()))
    })
    .await?;
    let controller = controller.into_inner();

    drop(controller);
    helm(env, &["uninstall", RELEASE, "-n", ns.name()])?;
    ensure!(Api::<ClusterRole>::all(client).get_opt(FULLNAME).await?.is_none(), "uninstall removes the ClusterRole");
    ns.cleanup().await
}

#[test]
fn bad_chart_values_are_refused_naming_the_value() -> Result<()> {
    for (setting, named) in [
        ("replicaCount=0", "/replicaCount"),
        ("service.type=Ingress", "/service/type"),
        ("tracing.samplingRatio=2", "/tracing/samplingRatio"),
        ("controller.logFormat=xml", "/controller/logFormat"),
        ("controller.congestionControl=reno", "/controller/congestionControl"),
    ] {
        let out = Command::new(helm_bin()?)
            .args(["template", RELEASE, "charts/quic-ingress", "--set", setting])
            .current_dir(repo_root())
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{setting} was accepted");
        ensure!(stderr.contains(named), "{setting}: the error does not name {named}: {stderr}");
    }
    Ok(())
}
