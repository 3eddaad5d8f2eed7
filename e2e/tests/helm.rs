//! The Helm chart (`charts/quic-ingress`) against the real API server: it lints, installs,
//! its objects are what the controller needs, its RBAC equals `deploy/rbac.yaml`, and the
//! controller started with the rendered Deployment's arguments and the chart's
//! ServiceAccount token serves an Ingress. The control plane runs no kubelet, so the pods
//! themselves (and `helm test`) cannot run here.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::IngressClass;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use kube::api::Api;
use quic_ingress::client::{H3Client, RequestBody, TrustOptions};
use quic_ingress::kube::crd::BackendGroup;
use quic_ingress_e2e::chart::{ChartController, deployment_args, helm, service_account_kubeconfig};
use quic_ingress_e2e::controller::{install_crd, kubectl};
use quic_ingress_e2e::namespace::unique_name;
use quic_ingress_e2e::objects::{backend_group, ingress};
use quic_ingress_e2e::process::{helm_bin, repo_root};
use quic_ingress_e2e::{Backend, TestEnv, TestNamespace, eventually};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(30);
const RELEASE: &str = "edge";
/// The chart's full name for the release.
const FULLNAME: &str = "edge-quic-ingress";

/// The head of a plaintext HTTP/1.1 GET / for `host` (lower-cased).
async fn plain_get(addr: std::net::SocketAddr, host: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let raw = tokio::time::timeout(TIMEOUT, exchange).await.context("plaintext request timed out")??;
    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    Ok(text.split("\r\n\r\n").next().unwrap_or_default().to_string())
}

/// The rules of the ClusterRole in `deploy/rbac.yaml`, as JSON.
async fn manifest_rules(env: &TestEnv) -> Result<serde_json::Value> {
    manifest_object_rules(env, "ClusterRole", None).await
}

/// The rules of the object of `kind` (and `name`, when given) in `deploy/rbac.yaml`.
async fn manifest_object_rules(env: &TestEnv, kind: &str, name: Option<&str>) -> Result<serde_json::Value> {
    let mut cmd = env.kubectl();
    cmd.args(["create", "--dry-run=client", "-o", "json", "-f"]).arg(repo_root().join("deploy/rbac.yaml"));
    // One JSON document per object.
    let out = kubectl(cmd).await?;
    for object in serde_json::Deserializer::from_str(&out).into_iter::<serde_json::Value>() {
        let object = object?;
        if object["kind"] == kind && name.is_none_or(|n| object["metadata"]["name"] == n) {
            return Ok(object["rules"].clone());
        }
    }
    bail!("no {kind} {name:?} in deploy/rbac.yaml")
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
    ensure!(
        ports == vec![(443, "TCP".into()), (443, "UDP".into()), (80, "TCP".into())],
        "one address, TCP and UDP 443, and plaintext HTTP on TCP 80: {ports:?}"
    );
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
    // Per-Gateway addresses (on by default): Services in the release namespace only.
    let services_role = format!("{FULLNAME}-gateway-services");
    let role = Api::<Role>::namespaced(client.clone(), ns.name()).get(&services_role).await?;
    let want = manifest_object_rules(env, "Role", Some("quic-ingress-gateway-services")).await?;
    ensure!(serde_json::to_value(&role.rules)? == want, "the chart's {services_role} differs from deploy/rbac.yaml");
    ensure!(
        want == json!([{"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch", "create", "patch", "delete"]}]),
        "Services only, and no more verbs than the keeper uses: {want}"
    );

    // The controller as the chart deploys it: the Deployment's arguments, the chart's
    // ServiceAccount, only the listen addresses moved to loopback.
    let args = deployment_args(&client, ns.name(), FULLNAME).await?;
    ensure!(
        args.windows(2).any(|w| w == ["--congestion-control", "bbr"]),
        "chart values reach the arguments: {args:?}"
    );
    ensure!(
        args.windows(2).any(|w| w == ["--gateway-addresses", "per-gateway"]),
        "per-Gateway addresses are on by default: {args:?}"
    );
    let kubeconfig = service_account_kubeconfig(env, ns.name(), FULLNAME).await?;
    let controller = ChartController::start(&args, &kubeconfig, ns.name(), "edge-0").await?;
    let listen = controller.addr().to_string();

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
    .with_context(|| controller.log_tail(30))?;
    // The chart's plaintext HTTP listener serves the same routes.
    let http_addr = controller.http_addr().context("the chart's arguments have no --http-listen")?;
    let http_head = plain_get(http_addr, "chart.example.com").await?;
    ensure!(
        http_head.starts_with("http/1.1 200") && http_head.contains("x-backend: chart-backend"),
        "plaintext HTTP from the chart's --http-listen: {http_head}"
    );
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
    .with_context(|| controller.log_tail(30))?;
    // The leader, as the chart's ServiceAccount, created the ticket Secret and every
    // replica loaded it.
    let tickets = ns.api::<Secret>();
    let key = eventually("the controller to create the ticket Secret", TIMEOUT, || async {
        let secret = tickets.get_opt(&format!("{FULLNAME}-session-tickets")).await?;
        Ok(secret.and_then(|s| s.data).and_then(|d| d.get("ticket.key").cloned()))
    })
    .await
    .with_context(|| controller.log_tail(30))?;
    ensure!(key.0.len() == 48, "a 48-byte ticket key, got {}", key.0.len());
    eventually("the ticket keys to be loaded", TIMEOUT, || async {
        Ok(std::fs::read_to_string(controller.log_path())?.contains("session-ticket keys loaded").then_some(()))
    })
    .await?;
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
