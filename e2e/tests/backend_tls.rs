//! Cluster tests of BackendTLSPolicy (issue 14): the standard-channel CRDs applied to a
//! real API server, the controller with the rules of `deploy/rbac.yaml` (ConfigMaps and
//! BackendTLSPolicies included), and a real TLS backend (the conformance suite's
//! echo-basic with a certificate from a test CA). With the CA from a ConfigMap and the
//! right hostname the backend answers 200 and saw that hostname as SNI; a wrong hostname
//! or CA fails the handshake (502); a missing ConfigMap refuses the policy
//! (`NoValidCACertificate`, `InvalidCACertificateRef`) and its requests (500), and
//! creating the ConfigMap heals it. The policy's status names the Gateway as its ancestor.
//! A Service port with `appProtocol: quic-ingress.dev/h3` is dialled over HTTP/3 (to a
//! `quic-ingress serve` origin) with the same verification.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams};
use quic_ingress::kube::gateway::api::{BackendTLSPolicy, GatewayClass};
use quic_ingress_e2e::controller::install_crd;
use quic_ingress_e2e::gateway::{backend_tls_policy, gateway, gateway_class, http_route, https_listener, summary};
use quic_ingress_e2e::namespace::unique_name;
use quic_ingress_e2e::objects::{ca_and_cert, endpoint_slice, service, tls_secret};
use quic_ingress_e2e::process::{TestProcess, log_path, quic_ingress_bin};
use quic_ingress_e2e::tls_echo::TlsEcho;
use quic_ingress_e2e::{Backend, Controller, ControllerRbac, TestEnv, TestHost, TestNamespace, eventually};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(20);

fn ca_config_map(name: &str, ca_pem: &str) -> Result<ConfigMap> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name}, "data": {"ca.crt": ca_pem},
    }))?)
}

fn validation(config_map: &str, hostname: &str) -> Value {
    json!({"caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": config_map}], "hostname": hostname})
}

/// `(status, reason, observedGeneration)` of condition `type_` of our ancestor entry for
/// Gateway `gw`, with the policy's generation.
fn ancestor_condition(p: &BackendTLSPolicy, gw: &str, type_: &str) -> Option<(String, String, Option<i64>)> {
    let status = p.status.as_ref()?;
    let ours = status.ancestors.iter().find(|a| {
        a.ancestor_ref.name == gw
            && a.ancestor_ref.kind.as_deref() == Some("Gateway")
            && a.controller_name == quic_ingress::kube::gateway::GATEWAY_CONTROLLER_NAME
    })?;
    summary(&ours.conditions, type_)
}

fn is(status: &str, reason: &str, generation: Option<i64>) -> Option<(String, String, Option<i64>)> {
    Some((status.to_string(), reason.to_string(), generation))
}

async fn wait_policy<F>(ns: &TestNamespace, name: &str, what: &str, ok: F) -> Result<BackendTLSPolicy>
where
    F: Fn(&BackendTLSPolicy) -> bool,
{
    let api = ns.api::<BackendTLSPolicy>();
    eventually(what, TIMEOUT, || async {
        let p = api.get(name).await?;
        if ok(&p) {
            return Ok(Some(p));
        }
        Err(anyhow!("status so far: {}", serde_json::to_string(&p.status)?))
    })
    .await
}

#[tokio::test]
async fn a_backend_tls_policy_verifies_the_backend_with_its_configmap_ca_and_hostname() -> Result<()> {
    let env = TestEnv::shared().await?;
    let host = TestHost::shared().await?;
    let backend_name = "secure.backend.internal";
    let (ca, cert, key) = ca_and_cert(backend_name)?;
    let (other_ca, _, _) = ca_and_cert(backend_name)?;
    let echo = TlsEcho::start(host, "tls-web", &cert, &key).await?;
    install_crd(env).await?;
    let ns = TestNamespace::new(env, "btls").await?;
    let rbac = ControllerRbac::grant(env, &ns).await?;
    let c = Controller::start(env, ns.name()).await?;
    let class_name = unique_name("quic-btls");
    let classes = Api::<GatewayClass>::all(env.client()?);
    classes.create(&PostParams::default(), &gateway_class(&class_name)?).await?;

    // The frontend: an HTTPS listener; the backend: Service port `https` (no appProtocol:
    // the policy alone makes it TLS) whose endpoint is the TLS echo server.
    let hostname = "btls.example.com";
    let (_, front_cert, front_key) = ca_and_cert(hostname)?;
    ns.apply(&tls_secret("front-tls", &front_cert, &front_key).build()).await?;
    ns.create(&service("secure").port("https", 443).build()).await?;
    ns.apply(
        &endpoint_slice("secure")
            .name("secure-1")
            .address(host.ip())
            .port("https", i32::from(echo.addr.port()))
            .build(),
    )
    .await?;
    ns.create(&ca_config_map("backend-ca", &ca)?).await?;
    ns.create(&ca_config_map("other-ca", &other_ca)?).await?;
    let port = c.addr().port();
    ns.create(&gateway("gw", &class_name, json!([https_listener("https", port, Some(hostname), "front-tls")]))?)
        .await?;
    ns.create(&http_route(
        "secure",
        json!({
            "parentRefs": [{"name": "gw"}],
            "hostnames": [hostname],
            "rules": [{"backendRefs": [{"name": "secure", "port": 443}]}],
        }),
    )?)
    .await?;

    // Without a policy the port is spoken to as plaintext HTTP/1.1, which Go's TLS server
    // answers with its own 400.
    let plain = c.wait_for_status(hostname, "/x", 400, TIMEOUT).await?;
    assert!(plain.text().contains("HTTPS server"), "{}", plain.text());

    // The right CA and hostname: 200, and the backend saw the hostname as SNI.
    let policy = backend_tls_policy("secure-tls", "secure", Some("https"), validation("backend-ca", backend_name))?;
    let created = ns.create(&policy).await?;
    let ok = c.wait_for_status(hostname, "/verified", 200, TIMEOUT).await?;
    let echoed = ok.json()?;
    assert_eq!(echoed["tls"]["serverName"], backend_name, "SNI seen by the backend: {echoed}");
    assert_eq!(echoed["path"], "/verified");
    let g = created.metadata.generation;
    let p = wait_policy(&ns, "secure-tls", "Accepted and ResolvedRefs for the Gateway", |p| {
        ancestor_condition(p, "gw", "Accepted") == is("True", "Accepted", g)
            && ancestor_condition(p, "gw", "ResolvedRefs") == is("True", "ResolvedRefs", g)
    })
    .await?;
    let ancestor = &p.status.as_ref().context("status")?.ancestors[0];
    assert_eq!(ancestor.ancestor_ref.namespace.as_deref(), Some(ns.name()));
    assert_eq!(ancestor.ancestor_ref.group.as_deref(), Some("gateway.networking.k8s.io"));

    // A hostname the certificate does not name: the handshake fails, 502; the policy itself
    // is still valid.
    // Edits start from the built object (one read back carries managedFields, which an
    // apply refuses).
    let mut wrong_host = policy.clone();
    wrong_host.spec.validation.hostname = "elsewhere.internal".into();
    let applied = ns.apply(&wrong_host).await?;
    c.wait_for_status(hostname, "/wrong-host", 502, TIMEOUT).await?;
    let g = applied.metadata.generation;
    wait_policy(&ns, "secure-tls", "still Accepted for the new generation", |p| {
        ancestor_condition(p, "gw", "Accepted") == is("True", "Accepted", g)
    })
    .await?;

    // Another CA: 502 again.
    let mut wrong_ca = policy.clone();
    wrong_ca.spec.validation = serde_json::from_value(validation("other-ca", backend_name))?;
    ns.apply(&wrong_ca).await?;
    c.wait_for_status(hostname, "/wrong-ca", 502, TIMEOUT).await?;

    // A ConfigMap that does not exist: the policy is refused with the spec's reasons and
    // its backend's requests fail with 500.
    let mut missing = policy.clone();
    missing.spec.validation = serde_json::from_value(validation("late-ca", backend_name))?;
    let applied = ns.apply(&missing).await?;
    let g = applied.metadata.generation;
    wait_policy(&ns, "secure-tls", "NoValidCACertificate and InvalidCACertificateRef", |p| {
        ancestor_condition(p, "gw", "Accepted") == is("False", "NoValidCACertificate", g)
            && ancestor_condition(p, "gw", "ResolvedRefs") == is("False", "InvalidCACertificateRef", g)
    })
    .await?;
    c.wait_for_status(hostname, "/no-ca", 500, TIMEOUT).await?;

    // The ConfigMap appears (a watched ConfigMap, no restart): valid again, 200.
    ns.create(&ca_config_map("late-ca", &ca)?).await?;
    wait_policy(&ns, "secure-tls", "Accepted again once the ConfigMap exists", |p| {
        ancestor_condition(p, "gw", "Accepted") == is("True", "Accepted", g)
            && ancestor_condition(p, "gw", "ResolvedRefs") == is("True", "ResolvedRefs", g)
    })
    .await?;
    let healed = c.wait_for_status(hostname, "/healed", 200, TIMEOUT).await?;
    assert_eq!(healed.json()?["tls"]["serverName"], backend_name);

    drop(c);
    drop(rbac);
    classes.delete(&class_name, &DeleteParams::default()).await?;
    drop(echo);
    ns.cleanup().await
}

/// A `quic-ingress serve` in the test host speaking HTTP/3 (and HTTPS) with a
/// certificate from a test CA, in front of a demo backend: an HTTP/3 origin.
async fn h3_origin(host: &'static TestHost, cert: &str, key: &str, backend: &Backend) -> Result<(u16, TestProcess)> {
    let dir = log_path("h3-origin")?.with_extension("d");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("tls.crt"), cert)?;
    std::fs::write(dir.join("tls.key"), key)?;
    let port = 24500;
    let config = format!(
        "server: {{address: \"0.0.0.0:{port}\", cert_file: \"{crt}\", key_file: \"{key}\"}}\n\
         telemetry: {{admin_address: \"127.0.0.1:{admin}\"}}\n\
         routes: [{{id: all, path: /, backend_group: origin}}]\n\
         backend_groups: [{{id: origin, backends: [{{url: \"http://{addr}\"}}]}}]\n",
        crt = dir.join("tls.crt").display(),
        key = dir.join("tls.key").display(),
        admin = port + 1,
        addr = backend.addr(),
    );
    let config_path = dir.join("config.yaml");
    std::fs::write(&config_path, config)?;
    let mut cmd = std::process::Command::new(quic_ingress_bin()?);
    cmd.arg("serve").arg("--config").arg(&config_path);
    let mut process = host.spawn("h3 origin", &cmd, &log_path("h3-origin")?)?;
    let addr = std::net::SocketAddr::new(host.ip(), port);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        process.check_running()?;
        let connect = tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr)).await;
        if matches!(connect, Ok(Ok(_))) {
            return Ok((port, process));
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the HTTP/3 origin on {addr} is not up\n{}",
            process.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_backend_tls_policy_on_an_h3_service_port_dials_the_backend_over_http3() -> Result<()> {
    let env = TestEnv::shared().await?;
    let host = TestHost::shared().await?;
    let origin_name = "h3.backend.internal";
    let (ca, cert, key) = ca_and_cert(origin_name)?;
    let web = Backend::start_in(host, "behind-h3").await?;
    let (origin_port, origin) = h3_origin(host, &cert, &key, &web).await?;
    install_crd(env).await?;
    let ns = TestNamespace::new(env, "btls-h3").await?;
    let rbac = ControllerRbac::grant(env, &ns).await?;
    let c = Controller::start(env, ns.name()).await?;
    let class_name = unique_name("quic-btls-h3");
    let classes = Api::<GatewayClass>::all(env.client()?);
    classes.create(&PostParams::default(), &gateway_class(&class_name)?).await?;

    let hostname = "btls-h3.example.com";
    let (_, front_cert, front_key) = ca_and_cert(hostname)?;
    ns.apply(&tls_secret("front-tls", &front_cert, &front_key).build()).await?;
    ns.create(&service("origin").port("h3", 443).app_protocol("quic-ingress.dev/h3").build()).await?;
    ns.apply(&endpoint_slice("origin").name("origin-1").address(host.ip()).port("h3", i32::from(origin_port)).build())
        .await?;
    ns.create(&ca_config_map("origin-ca", &ca)?).await?;
    let port = c.addr().port();
    ns.create(&gateway("gw", &class_name, json!([https_listener("https", port, Some(hostname), "front-tls")]))?)
        .await?;
    ns.create(&http_route(
        "origin",
        json!({
            "parentRefs": [{"name": "gw"}],
            "hostnames": [hostname],
            "rules": [{"backendRefs": [{"name": "origin", "port": 443}]}],
        }),
    )?)
    .await?;
    let policy = backend_tls_policy("origin-tls", "origin", None, validation("origin-ca", origin_name))?;
    ns.create(&policy).await?;

    let reply = c.wait_for_status(hostname, "/through-h3", 200, TIMEOUT).await?;
    assert_eq!(reply.backend(), Some("behind-h3"), "{}", reply.text());
    let routes = c.debug_routes().await?.to_string();
    let expected = format!("h3://{}:{origin_port}", host.ip());
    assert!(routes.contains(&expected), "the backend is dialled over HTTP/3 ({expected}): {routes}");
    // The wrong name: the QUIC handshake fails, 502.
    let mut wrong = policy.clone();
    wrong.spec.validation.hostname = "other.backend.internal".into();
    ns.apply(&wrong).await?;
    c.wait_for_status(hostname, "/wrong-name", 502, TIMEOUT).await?;

    drop(c);
    drop(rbac);
    drop(origin);
    classes.delete(&class_name, &DeleteParams::default()).await?;
    ns.cleanup().await
}
