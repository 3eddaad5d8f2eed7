//! Cluster tests of per-Gateway addresses (issue 14, `--gateway-addresses per-gateway`):
//! a real API server, the controller with the rules of `deploy/rbac.yaml` (its
//! `quic-ingress-gateway-services` Role included), and a real HTTP/3 client. In a test
//! binary of its own: its cluster-scoped GatewayClass coming and going would rebuild the
//! tables of the other Gateway tests' controllers while they measure idleness.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, ensure};
use kube::api::{Api, DeleteParams, PostParams};
use quic_ingress::client::{RequestBody, TrustOptions};
use quic_ingress::kube::gateway::api::{Gateway, GatewayClass};
use quic_ingress_e2e::controller::{ControllerOptions, install_crd};
use quic_ingress_e2e::gateway::{gateway, gateway_class, http_route, https_listener};
use quic_ingress_e2e::namespace::unique_name;
use quic_ingress_e2e::objects::{ca_and_cert, endpoint_slice, service, tls_secret};
use quic_ingress_e2e::process::log_path;
use quic_ingress_e2e::{Backend, Controller, ControllerRbac, TestEnv, TestHost, TestNamespace, eventually};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(20);

fn write_temp(name: &str, contents: &str) -> Result<PathBuf> {
    let path = log_path(name)?.with_extension("pem");
    std::fs::write(&path, contents)?;
    Ok(path)
}

/// A cluster-scoped GatewayClass of this test, deleted on drop.
struct Class {
    name: String,
    api: Api<GatewayClass>,
}

impl Class {
    async fn create(env: &TestEnv) -> Result<Class> {
        let name = unique_name("quic-gw-addr");
        let api = Api::<GatewayClass>::all(env.client()?);
        api.create(&PostParams::default(), &gateway_class(&name)?).await?;
        Ok(Class { name, api })
    }

    async fn delete(self) -> Result<()> {
        self.api.delete(&self.name, &DeleteParams::default()).await?;
        Ok(())
    }
}

async fn wait_gateway<F>(ns: &TestNamespace, name: &str, what: &str, ok: F) -> Result<Gateway>
where
    F: Fn(&Gateway) -> bool,
{
    let api = ns.api::<Gateway>();
    eventually(what, TIMEOUT, || async {
        let gw = api.get(name).await?;
        if ok(&gw) {
            return Ok(Some(gw));
        }
        Err(anyhow!("status so far: {}", serde_json::to_string(&gw.status)?))
    })
    .await
}

/// `--gateway-addresses per-gateway`: two Gateways with a route for the same host and path
/// each get a Service of their own (like the published one, mapping the listener port to
/// their data-plane port), their status shows its address, each Gateway's port answers
/// with its own route's backend, and a deleted Gateway's Service goes.
#[tokio::test]
async fn per_gateway_addresses_give_each_gateway_a_service_and_its_own_routes() -> Result<()> {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
    use kube::api::{ListParams, ObjectMeta};
    use quic_ingress::client::H3Client;
    use quic_ingress::kube::gateway::services::{GATEWAY_ANNOTATION, INSTANCE_LABEL};

    let env = TestEnv::shared().await?;
    let host = TestHost::shared().await?;
    let (web_a, web_b) = (Backend::start_in(host, "gw-one").await?, Backend::start_in(host, "gw-two").await?);
    install_crd(env).await?;
    let ns = TestNamespace::new(env, "gw-addr").await?;
    let rbac = ControllerRbac::grant(env, &ns).await?;
    // The Role of deploy/rbac.yaml for the Gateways' Services, in the published Service's
    // namespace.
    ns.create(&RoleBinding {
        metadata: ObjectMeta { name: Some("quic-ingress-gateway-services".into()), ..ObjectMeta::default() },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "quic-ingress-gateway-services".into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: quic_ingress_e2e::identity::CONTROLLER.into(),
            namespace: None,
        }]),
    })
    .await?;
    let probe = service("rbac-probe").port("https", 443).build();
    let as_controller =
        Api::<Service>::namespaced(env.client_as(quic_ingress_e2e::identity::CONTROLLER).await?, ns.name());
    eventually("the Services Role to take effect", TIMEOUT, || async {
        as_controller.create(&PostParams { dry_run: true, ..PostParams::default() }, &probe).await?;
        Ok(Some(()))
    })
    .await?;
    // The published Service, whose type and selector the Gateways' Services copy.
    ns.create(&service("edge").port("https", 443).selector("app", "edge").build()).await?;
    // A range of its own, free now and below the ephemeral ports (which the other tests'
    // sockets and connections take), on the controller's loopback address.
    let range = quic_ingress_e2e::process::free_port_range(10)?;
    let mut opts = ControllerOptions::new(ns.name());
    opts.publish_address = None;
    opts.extra_args = [
        "--publish-service",
        &format!("{}/edge", ns.name()),
        "--gateway-addresses",
        "per-gateway",
        "--gateway-port-range",
        &format!("{}-{}", range.start(), range.end()),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let c = Controller::start_with(env, opts).await?;
    let class = Class::create(env).await?;

    let hostname = "gw.example.com";
    let (ca, cert, key) = ca_and_cert(hostname)?;
    let trust = TrustOptions { insecure: false, ca_file: Some(write_temp("gw-addr-ca", &ca)?) };
    ns.apply(&tls_secret("gw-tls", &cert, &key).build()).await?;
    for (svc, web) in [("web-one", &web_a), ("web-two", &web_b)] {
        ns.create(&service(svc).port("http", 80).build()).await?;
        let slice =
            endpoint_slice(svc).name(&format!("{svc}-1")).address(host.ip()).port("http", i32::from(web.port()));
        ns.apply(&slice.build()).await?;
    }
    let port = c.addr().port();
    for (gw, svc) in [("one", "web-one"), ("two", "web-two")] {
        ns.create(&gateway(gw, &class.name, json!([https_listener("https", port, None, "gw-tls")]))?).await?;
        let spec = json!({"parentRefs": [{"name": gw}], "hostnames": [hostname],
                          "rules": [{"backendRefs": [{"name": svc, "port": 80}]}]});
        ns.create(&http_route(&format!("to-{gw}"), spec)?).await?;
    }

    // Two Services of ours, one per Gateway, each mapping TCP and UDP `port` to a
    // data-plane port of its own.
    let services = ns.api::<Service>();
    let ours = ListParams::default().labels(&format!("{INSTANCE_LABEL}=quic"));
    let by_gateway = eventually("a Service per Gateway", TIMEOUT, || async {
        let list = services.list(&ours).await?;
        let mut found = std::collections::BTreeMap::new();
        for svc in list.items {
            let gw = svc.metadata.annotations.as_ref().and_then(|a| a.get(GATEWAY_ANNOTATION)).cloned();
            let spec = svc.spec.clone().unwrap_or_default();
            let targets: Vec<(i32, String, String)> = spec
                .ports
                .iter()
                .flatten()
                .map(|p| {
                    let target = p.target_port.as_ref().map(|t| format!("{t:?}")).unwrap_or_default();
                    (p.port, p.protocol.clone().unwrap_or_default(), target)
                })
                .collect();
            found.insert(gw.unwrap_or_default(), (spec.cluster_ip.unwrap_or_default(), spec.selector, targets));
        }
        if found.len() == 2 {
            return Ok(Some(found));
        }
        Err(anyhow!("Services so far: {found:?}"))
    })
    .await?;
    let one = &by_gateway[&format!("{}/one", ns.name())];
    let two = &by_gateway[&format!("{}/two", ns.name())];
    assert_ne!(one.0, two.0, "two addresses");
    assert_eq!(one.1.as_ref().and_then(|s| s.get("app")).map(String::as_str), Some("edge"), "the published selector");
    let data_port = |targets: &[(i32, String, String)]| -> Result<u16> {
        let tcp = targets.iter().find(|t| t.0 == i32::from(port) && t.1 == "TCP").context("TCP port")?;
        let udp = targets.iter().find(|t| t.0 == i32::from(port) && t.1 == "UDP").context("UDP port")?;
        ensure!(tcp.2 == udp.2, "TCP and UDP to one data-plane port: {targets:?}");
        Ok(tcp.2.trim_start_matches("Int(").trim_end_matches(')').parse()?)
    };
    let (port_one, port_two) = (data_port(&one.2)?, data_port(&two.2)?);
    assert_ne!(port_one, port_two);

    // Each Gateway's status shows its Service's address.
    for (gw, svc) in [("one", one), ("two", two)] {
        let want = svc.0.clone();
        wait_gateway(&ns, gw, "the Gateway to show its own address", |g| {
            g.status.as_ref().is_some_and(|s| s.addresses.iter().map(|a| a.value.as_str()).eq([want.as_str()]))
        })
        .await?;
    }

    // The data plane, as kube-proxy would reach it: each port answers for its Gateway.
    for (data_port, backend) in [(port_one, "gw-one"), (port_two, "gw-two")] {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], data_port));
        let answer = eventually("the Gateway's port to serve its route", TIMEOUT, || async {
            let client = H3Client::connect(addr, hostname, &trust).await?;
            let req = http::Request::get(format!("https://{hostname}/")).body(())?;
            let resp = client.request(req, RequestBody::Empty).await?;
            let got = resp.headers.get("x-backend").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            if resp.status == 200 && got == backend {
                return Ok(Some(got));
            }
            Err(anyhow!("answered {} from {got:?}", resp.status))
        })
        .await
        .with_context(|| format!("port {data_port}; the controller's log ends:\n{}", c.log_tail(40)))?;
        assert_eq!(answer, backend);
    }

    // A deleted Gateway's Service goes, and its port closes.
    ns.api::<Gateway>().delete("two", &DeleteParams::default()).await?;
    eventually("the deleted Gateway's Service to go", TIMEOUT, || async {
        let names: Vec<String> =
            services.list(&ours).await?.items.into_iter().filter_map(|s| s.metadata.name).collect();
        if names.len() == 1 {
            return Ok(Some(()));
        }
        Err(anyhow!("Services so far: {names:?}"))
    })
    .await?;
    eventually("the deleted Gateway's port to close", TIMEOUT, || async {
        match tokio::net::TcpStream::connect(("127.0.0.1", port_two)).await {
            Err(_) => Ok(Some(())),
            Ok(_) => Err(anyhow!("port {port_two} still open")),
        }
    })
    .await?;
    class.delete().await?;
    drop(rbac);
    Ok(())
}
