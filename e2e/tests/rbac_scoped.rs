//! The chart scoped to namespaces (`controller.watchNamespaces: [team-a, team-c]`) on the
//! real API server, with RBAC on: its ServiceAccount can read Secrets in the watched
//! namespaces and in no other (the server answers 403), and the controller run as that
//! ServiceAccount, with the rendered Deployment's arguments, serves both watched
//! namespaces' Ingresses with their certificates (one store merged from a watch per
//! namespace), ignores team-b's, and stays Ready with no degraded watch. Told to watch
//! team-b too, it still serves and names team-b's forbidden watches on `/readyz`.

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use kube::Client;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use quic_ingress::client::{H3Client, RequestBody, TrustOptions};
use quic_ingress::kube::crd::BackendGroup;
use quic_ingress_e2e::chart::{ChartController, deployment_args, helm, service_account_kubeconfig};
use quic_ingress_e2e::controller::install_crd;
use quic_ingress_e2e::namespace::unique_name;
use quic_ingress_e2e::objects::{backend_group, ca_and_cert, ingress, tls_secret};
use quic_ingress_e2e::{Backend, TestEnv, TestNamespace, eventually};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(30);
const RELEASE: &str = "scoped";
const FULLNAME: &str = "scoped-quic-ingress";

/// The HTTP status of a refused request, if it was refused by the API server.
fn api_status<T>(result: Result<T, kube::Error>) -> Option<u16> {
    match result {
        Err(kube::Error::Api(status)) => Some(status.code),
        _ => None,
    }
}

/// Whether `client` may get, list and watch Secret `name` of `namespace` (each answer).
async fn secret_access(client: &Client, namespace: &str, name: &str) -> Result<[Option<u16>; 3]> {
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    let get = api_status(api.get(name).await);
    let by_name = ListParams::default().fields(&format!("metadata.name={name}"));
    let list = match api.list(&by_name).await {
        Ok(list) if list.items.iter().any(|s| s.metadata.name.as_deref() == Some(name)) => Some(200),
        Ok(list) => bail!("listed {namespace} without {name}: {} items", list.items.len()),
        Err(e) => api_status::<()>(Err(e)),
    };
    let watch_params = WatchParams::default().fields(&format!("metadata.name={name}")).timeout(5);
    let watch = match api.watch(&watch_params, "0").await {
        Ok(stream) => {
            // From resourceVersion 0 the watch starts with the object itself.
            let first = tokio::time::timeout(Duration::from_secs(5), stream.boxed().next()).await;
            match first {
                Ok(Some(Ok(WatchEvent::Added(s)))) if s.metadata.name.as_deref() == Some(name) => Some(200),
                Ok(Some(Ok(WatchEvent::Error(e)))) => Some(e.code),
                other => bail!("watching {namespace}/{name}: {:?}", other.map(|o| o.map(|r| r.is_ok()))),
            }
        }
        Err(e) => api_status::<()>(Err(e)),
    };
    Ok([get, list, watch])
}

/// Whether `host` answers 200 from backend `want` over HTTP/3, its certificate verified
/// with `trust`.
async fn served_by(controller: &ChartController, host: &str, trust: &TrustOptions, want: &str) -> Result<Option<()>> {
    let h3 = H3Client::connect(controller.addr(), host, trust).await?;
    let resp = h3.request(http::Request::get(format!("https://{host}/")).body(())?, RequestBody::Empty).await?;
    let by = resp.headers.get("x-backend").and_then(|b| b.to_str().ok());
    Ok((resp.status == 200 && by == Some(want)).then_some(()))
}

#[tokio::test]
async fn a_chart_scoped_to_namespaces_cannot_read_secrets_of_others_and_serves_its_own() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crd(env).await?;
    let release = TestNamespace::new(env, "rbac-release").await?;
    let team_a = TestNamespace::new(env, "team-a").await?;
    let team_b = TestNamespace::new(env, "team-b").await?;
    let team_c = TestNamespace::new(env, "team-c").await?;
    let class = unique_name("quic-scoped");
    helm(
        env,
        &[
            "install",
            RELEASE,
            "charts/quic-ingress",
            "-n",
            release.name(),
            "--set",
            &format!("ingressClass.name={class}"),
            "--set",
            &format!("controller.watchNamespaces={{{},{}}}", team_a.name(), team_c.name()),
            "--set",
            "controller.allowBackendCidrs={127.0.0.0/8}",
        ],
    )?;
    let admin = env.client()?;

    // What the chart granted: cluster-wide, only cluster-scoped kinds (IngressClasses,
    // GatewayClasses, Namespaces' labels); Secrets in team-a only.
    let cluster_rules = Api::<ClusterRole>::all(admin.clone()).get(FULLNAME).await?.rules.unwrap_or_default();
    let cluster_resources: Vec<&String> = cluster_rules.iter().flat_map(|r| r.resources.iter().flatten()).collect();
    ensure!(
        cluster_resources == ["ingressclasses", "gatewayclasses", "namespaces", "gatewayclasses/status"],
        "the ClusterRole grants {cluster_resources:?}"
    );
    Api::<Role>::namespaced(admin.clone(), team_a.name()).get(FULLNAME).await?;
    Api::<Role>::namespaced(admin.clone(), team_c.name()).get(FULLNAME).await?;
    ensure!(Api::<Role>::namespaced(admin.clone(), team_b.name()).get_opt(FULLNAME).await?.is_none());

    let (ca_a, cert_a, key_a) = ca_and_cert("a.example.com")?;
    let (ca_b, cert_b, key_b) = ca_and_cert("b.example.com")?;
    let (ca_c, cert_c, key_c) = ca_and_cert("c.example.com")?;
    team_a.create(&tls_secret("a-tls", &cert_a, &key_a).build()).await?;
    team_b.create(&tls_secret("b-tls", &cert_b, &key_b).build()).await?;
    team_c.create(&tls_secret("c-tls", &cert_c, &key_c).build()).await?;

    // As the chart's ServiceAccount (a real token, so the decisions are the authorizer's).
    let kubeconfig = service_account_kubeconfig(env, release.name(), FULLNAME).await?;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let as_controller = Client::try_from(config)?;
    // RoleBindings reach the authorizer through its own watch: wait for team-a's.
    let classes = Api::<k8s_openapi::api::networking::v1::IngressClass>::all(as_controller.clone());
    let access_a = eventually("the chart's bindings to take effect", TIMEOUT, || async {
        classes.list(&ListParams::default().limit(1)).await?;
        let access = secret_access(&as_controller, team_a.name(), "a-tls").await?;
        Ok((access[1] == Some(200)).then_some(access))
    })
    .await?;
    // The controller lists and watches; it never gets a Secret, so no Role grants get.
    ensure!(access_a == [Some(403), Some(200), Some(200)], "team-a get/list/watch answered {access_a:?}");
    let access_b = secret_access(&as_controller, team_b.name(), "b-tls").await?;
    ensure!(access_b == [Some(403); 3], "team-b get/list/watch must be Forbidden, answered {access_b:?}");
    let everywhere = Api::<Secret>::all(as_controller.clone()).list(&ListParams::default().limit(1)).await;
    ensure!(api_status(everywhere) == Some(403), "a cluster-wide Secret list must be Forbidden");

    // The controller as the chart runs it: --namespace team-a, the Lease in the release
    // namespace.
    let args = deployment_args(&admin, release.name(), FULLNAME).await?;
    ensure!(args.windows(2).any(|w| w == ["--namespace", team_a.name()]), "{args:?}");
    ensure!(args.windows(2).any(|w| w == ["--namespace", team_c.name()]), "{args:?}");
    ensure!(args.windows(2).any(|w| w == ["--lease-namespace", release.name()]), "{args:?}");
    let controller = ChartController::start(&args, &kubeconfig, release.name(), "scoped-0").await?;

    let backend_a = Backend::start_local("team-a-web").await?;
    let backend_b = Backend::start_local("team-b-web").await?;
    let backend_c = Backend::start_local("team-c-web").await?;
    for (ns, host, backend, secret) in [
        (&team_a, "a.example.com", &backend_a, "a-tls"),
        (&team_b, "b.example.com", &backend_b, "b-tls"),
        (&team_c, "c.example.com", &backend_c, "c-tls"),
    ] {
        ns.create(&backend_group("web", json!({"backends": [{"url": backend.url()}]}))?).await?;
        ns.create(
            &ingress("web")
                .class(&class)
                .resource_rule(host, "/", "Prefix", "quic-ingress.dev", "BackendGroup", "web")
                .tls(&[host], secret)
                .build(),
        )
        .await?;
    }
    let dir = quic_ingress_e2e::process::log_dir()?.join(unique_name("rbac-scoped"));
    std::fs::create_dir_all(&dir)?;
    let trust = |name: &str, pem: &str| -> Result<TrustOptions> {
        let path = dir.join(name);
        std::fs::write(&path, pem)?;
        Ok(TrustOptions { insecure: false, ca_file: Some(path) })
    };
    let (trust_a, trust_b, trust_c) = (trust("ca-a.pem", &ca_a)?, trust("ca-b.pem", &ca_b)?, trust("ca-c.pem", &ca_c)?);

    // team-a and team-c: HTTPS (HTTP/3) with their own certificates, verified through their
    // CAs.
    for (host, trust, want) in [("a.example.com", &trust_a, "team-a-web"), ("c.example.com", &trust_c, "team-c-web")] {
        eventually(&format!("{host} to be served with its certificate"), TIMEOUT, || {
            served_by(&controller, host, trust, want)
        })
        .await
        .with_context(|| controller.log_tail(30))?;
    }
    // The watches merged from two namespaces still tell changes from noise: a label (read
    // by nothing) on team-c's Ingress is an event but no change; an annotation is a change.
    let ingress_metric = |what: &str| format!("quic_ingress_watch_{what}_total{{kind=\"Ingress\"}}");
    let counts = || async {
        Ok::<_, anyhow::Error>((
            controller.metric(&ingress_metric("events")).await?,
            controller.metric(&ingress_metric("changes")).await?,
        ))
    };
    let ingresses_c = Api::<k8s_openapi::api::networking::v1::Ingress>::namespaced(admin.clone(), team_c.name());
    // The leader writes the published address first; after that, events are the patches'.
    eventually("the leader to write team-c's Ingress status", TIMEOUT, || async {
        let status = ingresses_c.get("web").await?.status.and_then(|s| s.load_balancer).and_then(|l| l.ingress);
        Ok(status.filter(|i| !i.is_empty()).map(|_| ()))
    })
    .await
    .with_context(|| controller.log_tail(30))?;
    let (events, changes) = counts().await?;
    for (field, key) in [("labels", "noise"), ("annotations", "quic-ingress.dev/e2e-touch")] {
        let patch = json!({"metadata": {field: {key: "1"}}});
        ingresses_c.patch("web", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await?;
    }
    // Both patches seen (two events), the annotation counted: then the count is final.
    let after = eventually("both patches to reach the Ingress watch", TIMEOUT, || async {
        let now = counts().await?;
        Ok((now.0 >= events + 2.0 && now.1 > changes).then_some(now))
    })
    .await?;
    ensure!(after.1 - changes == 1.0, "a label and an annotation patch counted {} changes", after.1 - changes);
    // The status write in team-a is allowed too: the BackendGroup gets its status.
    let groups = Api::<BackendGroup>::namespaced(admin.clone(), team_a.name());
    eventually("team-a's BackendGroup status", TIMEOUT, || async {
        Ok(groups.get("web").await?.status.filter(|s| s.total_backends == 1).map(|_| ()))
    })
    .await
    .with_context(|| controller.log_tail(30))?;

    // team-b: not watched, so neither routed nor given its certificate.
    ensure!(
        H3Client::connect(controller.addr(), "b.example.com", &trust_b).await.is_err(),
        "team-b's certificate is served"
    );
    let any_cert = TrustOptions { insecure: true, ca_file: None };
    let h3 = H3Client::connect(controller.addr(), "b.example.com", &any_cert).await?;
    let resp = h3.request(http::Request::get("https://b.example.com/").body(())?, RequestBody::Empty).await?;
    ensure!(resp.status == 404, "team-b's Ingress is served: {}", resp.status);
    let team_b_groups = Api::<BackendGroup>::namespaced(admin.clone(), team_b.name());
    ensure!(team_b_groups.get("web").await?.status.is_none(), "team-b's BackendGroup got status");

    // Ready, and no watch degraded by a cluster-wide list the Roles do not allow.
    let (status, body) = controller.readyz().await?;
    ensure!(status == 200 && !body.contains("degraded") && !body.contains("failing"), "/readyz: {status} {body}");
    for kind in ["Ingress", "Service", "EndpointSlice", "Secret", "BackendGroup", "IngressClass"] {
        let failing = controller.metric(&format!("quic_ingress_watch_failing{{kind=\"{kind}\"}}")).await?;
        let errors = controller.metric(&format!("quic_ingress_watch_errors_total{{kind=\"{kind}\"}}")).await?;
        ensure!(failing == 0.0 && errors == 0.0, "{kind}: failing {failing}, {errors} errors");
    }

    // Told to watch team-b as well, which no Role allows: team-b's watches fail (403) and
    // /readyz names them, while the watched namespaces are still served.
    drop(controller);
    let mut wider = args.clone();
    wider.extend(["--namespace".to_string(), team_b.name().to_string()]);
    let controller = ChartController::start(&wider, &kubeconfig, release.name(), "scoped-1").await?;
    let failing =
        format!("Secret watch failing (routes are built without Secret objects): namespace {}", team_b.name());
    let body = eventually("/readyz to name team-b's watches", TIMEOUT, || async {
        let (status, body) = controller.readyz().await?;
        ensure!(status == 200, "/readyz {status}: {body}");
        Ok(body.contains(&failing).then_some(body))
    })
    .await
    .with_context(|| controller.log_tail(30))?;
    ensure!(body.contains("forbidden"), "{body}");
    eventually("a.example.com to be served beside the failing watches", TIMEOUT, || {
        served_by(&controller, "a.example.com", &trust_a, "team-a-web")
    })
    .await
    .with_context(|| controller.log_tail(30))?;

    drop(controller);
    helm(env, &["uninstall", RELEASE, "-n", release.name()])?;
    team_c.cleanup().await?;
    team_b.cleanup().await?;
    team_a.cleanup().await?;
    release.cleanup().await
}
