//! Gateway API in cluster tests: the standard-channel CRDs of `sigs.k8s.io/gateway-api`
//! (from the Go module cache, see `e2e/gateway.mk`) applied to the API server, and object
//! builders for GatewayClass, Gateway, HTTPRoute, GRPCRoute and ReferenceGrant in the
//! controller's own types; the suite's echo server (`echo-basic`) for gRPC backends.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams};
use quic_ingress::kube::gateway::api::{GRPCRoute, Gateway, GatewayClass, HTTPRoute, ReferenceGrant};
use serde_json::{Value, json};

use crate::controller::kubectl;
use crate::process::repo_root;
use crate::{TestEnv, eventually};

/// Set by `make test-e2e`: the module's `config/crd/standard` directory.
pub const CRDS_VAR: &str = "QUIC_INGRESS_GATEWAY_CRDS";

/// The CRD directory: `QUIC_INGRESS_GATEWAY_CRDS`, else what `make -f e2e/gateway.mk`
/// downloads.
pub fn crd_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(CRDS_VAR).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let out = Command::new("make")
        .args(["-s", "--no-print-directory", "-f", "e2e/gateway.mk", "gateway-api-crds-print-dir"])
        .current_dir(repo_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running make gateway-api-crds-print-dir")?;
    if !out.status.success() {
        bail!("make gateway-api-crds-print-dir failed ({})", out.status);
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// `kubectl apply --server-side` of every standard-channel CRD (idempotent, safe from
/// concurrent tests), then waits until the kinds are served.
pub async fn install_gateway_crds(env: &TestEnv) -> anyhow::Result<()> {
    let dir = crd_dir()?;
    let mut cmd = env.kubectl();
    cmd.args(["apply", "--server-side", "--force-conflicts", "-f"]).arg(&dir);
    kubectl(cmd).await?;
    let client = env.client()?;
    eventually("the Gateway API kinds to be served", Duration::from_secs(30), || async {
        Api::<GatewayClass>::all(client.clone()).list(&ListParams::default().limit(1)).await?;
        Api::<Gateway>::all(client.clone()).list(&ListParams::default().limit(1)).await?;
        Api::<HTTPRoute>::all(client.clone()).list(&ListParams::default().limit(1)).await?;
        Api::<GRPCRoute>::all(client.clone()).list(&ListParams::default().limit(1)).await?;
        Api::<ReferenceGrant>::all(client.clone()).list(&ListParams::default().limit(1)).await?;
        Ok(Some(()))
    })
    .await
}

fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> anyhow::Result<T> {
    serde_json::from_value(v).context("building a Gateway API object")
}

/// A GatewayClass of this controller (the default controllerName).
pub fn gateway_class(name: &str) -> anyhow::Result<GatewayClass> {
    gateway_class_of(name, quic_ingress::kube::gateway::GATEWAY_CONTROLLER_NAME)
}

/// A GatewayClass of the controller started with `--gateway-controller-name CONTROLLER`.
pub fn gateway_class_of(name: &str, controller: &str) -> anyhow::Result<GatewayClass> {
    from_json(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": controller},
    }))
}

/// A Gateway of `class` with the given listeners (JSON, as in a manifest).
pub fn gateway(name: &str, class: &str, listeners: Value) -> anyhow::Result<Gateway> {
    from_json(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name},
        "spec": {"gatewayClassName": class, "listeners": listeners},
    }))
}

/// An HTTPS listener terminating TLS with `secret` (`namespace/name` or `name`).
pub fn https_listener(name: &str, port: u16, hostname: Option<&str>, secret: &str) -> Value {
    let cert = match secret.split_once('/') {
        Some((ns, n)) => json!({"kind": "Secret", "name": n, "namespace": ns}),
        None => json!({"kind": "Secret", "name": secret}),
    };
    let mut l = json!({
        "name": name, "port": port, "protocol": "HTTPS",
        "tls": {"mode": "Terminate", "certificateRefs": [cert]},
    });
    if let Some(h) = hostname {
        l["hostname"] = json!(h);
    }
    l
}

/// An HTTPRoute (spec as JSON: parentRefs, hostnames, rules).
pub fn http_route(name: &str, spec: Value) -> anyhow::Result<HTTPRoute> {
    from_json(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name}, "spec": spec,
    }))
}

/// A GRPCRoute with `spec` (JSON, as in a manifest).
pub fn grpc_route(name: &str, spec: Value) -> anyhow::Result<GRPCRoute> {
    from_json(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": name}, "spec": spec,
    }))
}

/// A ReferenceGrant letting `from_kind` objects of `from_ns` refer to `to_kind` objects here.
pub fn reference_grant(name: &str, from_kind: &str, from_ns: &str, to_kind: &str) -> anyhow::Result<ReferenceGrant> {
    from_json(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
        "metadata": {"name": name},
        "spec": {
            "from": [{"group": "gateway.networking.k8s.io", "kind": from_kind, "namespace": from_ns}],
            "to": [{"group": "", "kind": to_kind}],
        },
    }))
}

/// The condition `type_` in `conditions`.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// `(status, reason, observedGeneration)` of condition `type_`, for compact assertions.
pub fn summary(conditions: &[Condition], type_: &str) -> Option<(String, String, Option<i64>)> {
    find(conditions, type_).map(|c| (c.status.clone(), c.reason.clone(), c.observed_generation))
}

/// A BackendTLSPolicy on port `section` of Service `service` (`validation` as JSON:
/// caCertificateRefs or wellKnownCACertificates, hostname).
pub fn backend_tls_policy(
    name: &str,
    service: &str,
    section: Option<&str>,
    validation: Value,
) -> anyhow::Result<quic_ingress::kube::gateway::api::BackendTLSPolicy> {
    let mut target = json!({"group": "", "kind": "Service", "name": service});
    if let Some(s) = section {
        target["sectionName"] = json!(s);
    }
    from_json(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
        "metadata": {"name": name},
        "spec": {"targetRefs": [target], "validation": validation},
    }))
}
