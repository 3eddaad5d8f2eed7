//! The chart as users run it: `helm install` onto a cluster with a kubelet, so the image,
//! the pods, their probes and security context, the LoadBalancer Service (UDP and TCP 443 on
//! one address) and `helm test` really run. Traffic comes from this host to the
//! LoadBalancer address, over HTTP/3 and HTTP/2, and reaches demo-backend pods.
//!
//! Needs a cluster with a kubelet and a LoadBalancer implementation: `make test-node`
//! starts the single-node one (`make cluster-up`) and runs these tests against it; any other
//! cluster works through `QUIC_INGRESS_TEST_KUBECONFIG` and `QUIC_INGRESS_IMAGE` (see
//! e2e/README.md). Ignored by plain `cargo test`: the testenv control plane runs no pods.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::ListParams;
use quic_ingress_e2e::controller::{admin_get, kubectl};
use quic_ingress_e2e::node::{
    Client, Load, cluster_dir, cluster_rss_kib, demo_backend_deployment, described_backend_health, helm, host_pid_of,
    image, process_uids, root_mount_options,
};
use quic_ingress_e2e::objects::{backend_group, ingress, service};
use quic_ingress_e2e::{TestEnv, TestNamespace, eventually};
use serde_json::json;

const RELEASE: &str = "edge";
const FULLNAME: &str = "edge-quic-ingress";
const HOST: &str = "web.example.com";
const READY: Duration = Duration::from_secs(180);
const TIMEOUT: Duration = Duration::from_secs(60);

/// Appends a figure to target/e2e-figures.txt, as the other cluster tests do.
fn figure(line: &str) {
    use std::io::Write as _;
    eprintln!("figure: {line}");
    let path = quic_ingress_e2e::process::repo_root().join("target/e2e-figures.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "node: {line}");
    }
}

async fn pods(ns: &TestNamespace, selector: &str) -> Result<Vec<Pod>> {
    Ok(ns.api::<Pod>().list(&ListParams::default().labels(selector)).await?.items)
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter().filter_map(|p| p.metadata.name.clone()).collect()
}

/// Ready pods of a selector, once there are exactly `n`.
async fn ready_pods(ns: &TestNamespace, selector: &str, n: usize) -> Result<Vec<Pod>> {
    eventually(&format!("{n} ready pods of {selector}"), READY, || async {
        let all = pods(ns, selector).await?;
        let ready: Vec<Pod> = all.iter().filter(|p| is_ready(p)).cloned().collect();
        Ok((ready.len() == n && all.len() == n).then_some(ready))
    })
    .await
}

async fn kubectl_out(env: &TestEnv, args: &[&str]) -> Result<String> {
    let mut cmd = env.kubectl();
    cmd.args(args);
    kubectl(cmd).await
}

#[tokio::test]
#[ignore = "needs a cluster that runs pods: make test-node"]
async fn helm_install_runs_the_chart_and_serves_http3_and_http2_through_the_load_balancer() -> Result<()> {
    let env = TestEnv::shared().await?;
    let ns = TestNamespace::new(env, "node").await?;
    let result = install_and_serve(env, &ns).await;
    if result.is_err() {
        // What the pods said, before the namespace (and their logs) go away.
        for args in [
            &["get", "pods,endpointslices,events", "-o", "wide", "-n", ns.name()][..],
            &["logs", "-l", "app.kubernetes.io/name=quic-ingress", "--prefix", "--tail", "40", "-n", ns.name()][..],
            &["logs", "-l", "app=web", "--prefix", "--tail", "20", "-n", ns.name()][..],
        ] {
            match kubectl_out(env, args).await {
                Ok(out) => eprintln!("kubectl {}:\n{out}", args.join(" ")),
                Err(e) => eprintln!("kubectl {}: {e:#}", args.join(" ")),
            }
        }
    }
    // The release owns cluster-scoped objects (IngressClass, ClusterRole): uninstall it
    // whatever happened, or the next install meets them.
    let uninstalled = helm(env, &["uninstall", RELEASE, "-n", ns.name(), "--wait", "--timeout", "2m"]).await;
    result?;
    uninstalled?;
    ns.cleanup().await
}

async fn install_and_serve(env: &TestEnv, ns: &TestNamespace) -> Result<()> {
    let (repo, tag) = image();
    let controllers = format!("app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=quic-ingress");

    // The chart's defaults, except the image and a small resources request.
    let started = Instant::now();
    helm(
        env,
        &[
            "install",
            RELEASE,
            "charts/quic-ingress",
            "-n",
            ns.name(),
            "--set",
            &format!("image.repository={repo}"),
            "--set",
            &format!("image.tag={tag}"),
            "--set",
            "resources.requests.cpu=10m",
            "--set",
            "resources.requests.memory=32Mi",
            "--wait",
            "--timeout",
            "3m",
        ],
    )
    .await?;
    let controller_pods = ready_pods(ns, &controllers, 2).await?;
    figure(&format!("helm install --wait -> 2 controller pods Ready: {:.1} s", started.elapsed().as_secs_f64()));

    // They really run as 65532 with a read-only root filesystem (seen from this host).
    for pod in &controller_pods {
        let Some(pid) = host_pid_of(pod, "controller") else {
            eprintln!("{:?}: not running on this host, process checks skipped", pod.metadata.name);
            continue;
        };
        let uids = process_uids(pid)?;
        ensure!(uids.iter().all(|u| *u == 65532), "controller pid {pid} runs as {uids:?}");
        let options = root_mount_options(pid)?;
        ensure!(options.iter().any(|o| o == "ro"), "controller pid {pid}: / is mounted {options:?}");
        eprintln!("controller {:?}: host pid {pid}, Uid {uids:?}, / {options:?}", pod.metadata.name);
    }

    // The Service: one LoadBalancer address, UDP and TCP 443, and plaintext HTTP on TCP 80.
    let services = ns.api::<Service>();
    let lb: std::net::IpAddr = eventually("a LoadBalancer address", TIMEOUT, || async {
        let svc = services.get(FULLNAME).await?;
        let ip = svc.status.and_then(|s| s.load_balancer).and_then(|l| l.ingress).and_then(|i| i.into_iter().next());
        Ok(ip.and_then(|i| i.ip).and_then(|ip| ip.parse().ok()))
    })
    .await?;
    let lb_addr = SocketAddr::new(lb, 443);
    let ports = service_ports(&services.get(FULLNAME).await?);
    ensure!(ports == vec![(80, "TCP".into()), (443, "TCP".into()), (443, "UDP".into())], "ports {ports:?}");

    // Demo backends: a Deployment of the same image, a Service, a BackendGroup and an
    // Ingress routing to it.
    ns.create(&demo_backend_deployment("web", 3)?).await?;
    ns.create(&service("web").port("http", 8080).selector("app", "web").build()).await?;
    ns.create(&backend_group(
        "web",
        json!({
            "service": {"name": "web", "port": 8080},
            "healthCheck": {"interval": "1s", "timeout": "1s", "healthyThreshold": 1, "unhealthyThreshold": 2, "path": "/health"}
        }),
    )?)
    .await?;
    ns.create(
        &ingress("web")
            .class("quic")
            .resource_rule(HOST, "/", "Prefix", "quic-ingress.dev", "BackendGroup", "web")
            .build(),
    )
    .await?;
    let backend_pods = ready_pods(ns, "app=web", 3).await?;
    let backend_names = names(&backend_pods);

    // From this host, HTTP/3 on UDP 443 and HTTP/2 on TCP 443 reach the backend pods.
    let client = Client::new(lb_addr, HOST);
    let first = eventually("HTTP/3 through the LoadBalancer address", TIMEOUT, || async {
        Ok(client.get_h3("/").await.ok().filter(|(a, _)| a.status == 200 && !a.backend.is_empty()))
    })
    .await?;
    eprintln!("first HTTP/3 answer: {first:?}");
    let mut seen_h3 = std::collections::BTreeSet::new();
    let mut seen_h2 = std::collections::BTreeSet::new();
    let mut resent = Vec::new();
    for _ in 0..30 {
        let (a, why) = client.get_h3("/").await?;
        ensure!(a.status == 200 && a.version == http::Version::HTTP_3, "{a:?}");
        seen_h3.insert(a.backend);
        resent.extend(why.map(|w| format!("HTTP/3: {w}")));
        let (a, why) = client.get_h2("/").await?;
        ensure!(a.status == 200 && a.version == http::Version::HTTP_2, "{a:?}");
        seen_h2.insert(a.backend);
        resent.extend(why.map(|w| format!("HTTP/2: {w}")));
    }
    figure(&format!("30 HTTP/3 and 30 HTTP/2 requests after install: {} sent again {resent:?}", resent.len()));
    for seen in [&seen_h3, &seen_h2] {
        ensure!(seen.iter().all(|b| backend_names.contains(b)), "answers from {seen:?}, pods are {backend_names:?}");
        ensure!(seen.len() >= 2, "requests spread over the pods: {seen:?}");
    }
    eprintln!("HTTP/3 reached {seen_h3:?}, HTTP/2 reached {seen_h2:?}");

    // The Ingress status shows the address.
    let ingresses = ns.api::<Ingress>();
    let status_ip = eventually("the Ingress status to show the address", TIMEOUT, || async {
        let ing = ingresses.get("web").await?;
        let ip = ing.status.and_then(|s| s.load_balancer).and_then(|l| l.ingress).and_then(|i| i.into_iter().next());
        Ok(ip.and_then(|i| i.ip))
    })
    .await?;
    ensure!(status_ip == lb.to_string(), "Ingress status {status_ip}, LoadBalancer {lb}");
    eprintln!("{}", kubectl_out(env, &["get", "ingress", "web", "-n", ns.name(), "-o", "wide"]).await?);

    // kubectl describe backendgroup: every pod endpoint healthy.
    let pod_addrs: Vec<String> =
        backend_pods.iter().filter_map(|p| p.status.as_ref()?.pod_ip.clone()).map(|ip| format!("{ip}:8080")).collect();
    let describe = eventually("describe to show the pod endpoints healthy", TIMEOUT, || async {
        let out = kubectl_out(env, &["describe", "backendgroup", "web", "-n", ns.name()]).await?;
        let all = pod_addrs.iter().all(|a| described_backend_health(&out, a).as_deref() == Some("true"));
        Ok(all.then_some(out))
    })
    .await?;
    eprintln!("{describe}");

    // One backend made to fail its health path: its process stopped from this host
    // (SIGSTOP), so /health times out. describe shows that endpoint unhealthy, the others
    // healthy; after SIGCONT it is healthy again.
    if let Some(pid) = host_pid_of(&backend_pods[0], "backend") {
        let stopped = pod_addrs[0].clone();
        signal(pid, libc::SIGSTOP)?;
        let unhealthy = eventually("describe to show the stopped pod unhealthy", TIMEOUT, || async {
            let out = kubectl_out(env, &["describe", "backendgroup", "web", "-n", ns.name()]).await?;
            Ok((described_backend_health(&out, &stopped).as_deref() == Some("false")).then_some(out))
        })
        .await;
        signal(pid, libc::SIGCONT)?;
        let unhealthy = unhealthy?;
        for other in &pod_addrs[1..] {
            ensure!(described_backend_health(&unhealthy, other).as_deref() == Some("true"), "{other}: {unhealthy}");
        }
        eprintln!("{unhealthy}");
        eventually("the resumed pod healthy again", TIMEOUT, || async {
            let out = kubectl_out(env, &["describe", "backendgroup", "web", "-n", ns.name()]).await?;
            Ok((described_backend_health(&out, &stopped).as_deref() == Some("true")).then_some(()))
        })
        .await?;
    }

    // helm test: its pod runs an HTTP/3 request to the Service from inside the cluster.
    let test_out = helm(env, &["test", RELEASE, "-n", ns.name(), "--timeout", "2m"]).await?;
    ensure!(test_out.contains("Succeeded"), "helm test: {test_out}");
    eprintln!("{test_out}");

    // kubectl logs of a controller pod: JSON access lines.
    let controller = controller_pods[0].metadata.name.clone().context("pod name")?;
    let logs = kubectl_out(env, &["logs", &controller, "-n", ns.name(), "--tail", "200"]).await?;
    let access = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .count();
    // Requests went to either pod; the other pod's log is checked when this one has none.
    let access = if access > 0 {
        access
    } else {
        let other = controller_pods[1].metadata.name.clone().context("pod name")?;
        let logs = kubectl_out(env, &["logs", &other, "-n", ns.name(), "--tail", "200"]).await?;
        logs.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "access")
            .count()
    };
    ensure!(access > 0, "no JSON access lines in the controller logs:\n{logs}");

    // /metrics at the pod IP.
    let pod_ip = controller_pods[0].status.as_ref().and_then(|s| s.pod_ip.clone()).context("pod IP")?;
    let (status, body) = admin_get(format!("{pod_ip}:9090").parse()?, "/metrics").await?;
    let body = String::from_utf8_lossy(&body);
    ensure!(status == 200 && body.contains("# TYPE"), "/metrics at {pod_ip}: {status} {body}");

    eprintln!("{}", kubectl_out(env, &["get", "pods", "-o", "wide", "-n", ns.name()]).await?);
    if let Some(dir) = cluster_dir() {
        let rss = cluster_rss_kib(&dir);
        let total: u64 = rss.iter().map(|(_, k)| k).sum();
        figure(&format!("cluster RSS {} MiB: {rss:?}", total / 1024));
    }

    // Under steady HTTP/3 and HTTP/2 load: scale 3 -> 1 -> 3, then delete a backend pod.
    let deployments = ns.api::<Deployment>();
    let load = Load::start(lb_addr, HOST, "/");
    for replicas in [1, 3] {
        deployments
            .patch(
                "web",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await?;
        ready_pods(ns, "app=web", replicas).await?;
        // Traffic keeps flowing after the change settles, not only during it.
        wait_for_more_answers(&load, 20).await?;
    }
    let victim = names(&pods(ns, "app=web").await?).into_iter().next().context("a backend pod")?;
    kubectl_out(env, &["delete", "pod", &victim, "-n", ns.name(), "--wait=true"]).await?;
    ready_pods(ns, "app=web", 3).await?;
    wait_for_more_answers(&load, 20).await?;
    let counts = load.counts();
    let (errors, resent) = (load.errors(), load.retries());
    let counts_at_end = load.stop().await;
    figure(&format!("scale 3->1->3 and a backend pod deleted under load: {counts_at_end:?}; sent again: {resent:?}"));
    ensure!(counts.failed == 0, "failed requests while scaling: {counts:?}: {errors:?}");

    // helm upgrade with a changed value rolls both controller pods, under load.
    let load = Load::start(lb_addr, HOST, "/");
    let before = names(&controller_pods);
    let started = Instant::now();
    helm(
        env,
        &[
            "upgrade",
            RELEASE,
            "charts/quic-ingress",
            "-n",
            ns.name(),
            "--reuse-values",
            "--set",
            "controller.logLevel=debug",
            "--wait",
            "--timeout",
            "3m",
        ],
    )
    .await?;
    let after = eventually("both controller pods replaced", READY, || async {
        let now = pods(ns, &controllers).await?;
        let ready: Vec<Pod> = now.iter().filter(|p| is_ready(p)).cloned().collect();
        let fresh = ready.len() == 2 && now.len() == 2 && names(&ready).iter().all(|n| !before.contains(n));
        Ok(fresh.then_some(ready))
    })
    .await?;
    figure(&format!("helm upgrade -> both controller pods replaced: {:.1} s", started.elapsed().as_secs_f64()));
    wait_for_more_answers(&load, 20).await?;
    let (errors, resent) = (load.errors(), load.retries());
    let counts = load.stop().await;
    figure(&format!("helm upgrade under load: {counts:?}; sent again: {resent:?}"));
    ensure!(counts.failed == 0, "failed requests during the upgrade: {counts:?}: {errors:?}");
    let ports = service_ports(&services.get(FULLNAME).await?);
    ensure!(
        ports == vec![(80, "TCP".into()), (443, "TCP".into()), (443, "UDP".into())],
        "ports after upgrade {ports:?}"
    );

    // Force-delete a controller pod: report what fails and how long until all answer again.
    let load = Load::start(lb_addr, HOST, "/");
    wait_for_more_answers(&load, 10).await?;
    let victim = after[0].metadata.name.clone().context("pod name")?;
    let started = Instant::now();
    kubectl_out(env, &["delete", "pod", &victim, "-n", ns.name(), "--grace-period=0", "--force"]).await?;
    ready_pods(ns, &controllers, 2).await?;
    let recovered = started.elapsed();
    wait_for_more_answers(&load, 20).await?;
    let (errors, resent) = (load.errors(), load.retries());
    let counts = load.stop().await;
    figure(&format!(
        "controller pod force-deleted: replacement Ready after {:.1} s; load {counts:?}; first errors {errors:?}; sent again: {resent:?}",
        recovered.as_secs_f64()
    ));

    // An upgrade that changes the port. Strategic-merge patches key Service ports by number
    // alone (kubernetes#105610) and Helm 3 upgrades by such a patch, so a plain upgrade
    // merges TCP and UDP 4443 into one port; recorded, not asserted (Helm 4's server-side
    // apply does not have the problem). `--force` (a replace, which keeps the cluster IP,
    // node ports and LoadBalancer address) is what the chart documents for a port change,
    // and must leave both protocols.
    let port_change = ["upgrade", RELEASE, "charts/quic-ingress", "-n", ns.name(), "--reuse-values"];
    let port_change = [&port_change[..], &["--set", "service.port=4443", "--wait", "--timeout", "3m"]].concat();
    helm(env, &port_change).await?;
    figure(&format!(
        "plain helm upgrade changing service.port 443 -> 4443 leaves the Service ports {:?}",
        service_ports(&services.get(FULLNAME).await?)
    ));
    helm(env, &[&port_change[..], &["--force"]].concat()).await?;
    let ports = service_ports(&services.get(FULLNAME).await?);
    ensure!(
        ports == vec![(80, "TCP".into()), (4443, "TCP".into()), (4443, "UDP".into())],
        "ports after the port change {ports:?}"
    );
    let moved = Client::new(SocketAddr::new(lb, 4443), HOST);
    let (a, _) = eventually("HTTP/3 on the new port", TIMEOUT, || async { Ok(moved.get_h3("/").await.ok()) }).await?;
    ensure!(a.status == 200, "HTTP/3 on 4443: {a:?}");
    let (a, _) = eventually("HTTP/2 on the new port", TIMEOUT, || async { Ok(moved.get_h2("/").await.ok()) }).await?;
    ensure!(a.status == 200, "HTTP/2 on 4443: {a:?}");
    Ok(())
}

fn signal(pid: u32, sig: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid)?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("signal {sig} to pid {pid}"));
    }
    Ok(())
}

fn service_ports(svc: &Service) -> Vec<(i32, String)> {
    let mut ports: Vec<(i32, String)> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.port, p.protocol.unwrap_or_default()))
        .collect();
    ports.sort();
    ports
}

/// Waits until the load has had `n` more successful answers (bounded).
async fn wait_for_more_answers(load: &Load, n: u64) -> Result<()> {
    let target = load.counts().ok + n;
    eventually(&format!("{n} more answers under load"), TIMEOUT, || async {
        Ok((load.counts().ok >= target).then_some(()))
    })
    .await
}
