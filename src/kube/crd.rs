//! The BackendGroup custom resource (quic-ingress.dev/v1alpha1): spec, status, and the
//! server-side validation that goes into its CustomResourceDefinition.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::routes::PathType;
use crate::upstream::Strategy;

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "quic-ingress.dev",
    version = "v1alpha1",
    kind = "BackendGroup",
    plural = "backendgroups",
    shortname = "bg",
    namespaced,
    status = "BackendGroupStatus",
    printcolumn = r#"{"name":"Strategy","type":"string","jsonPath":".spec.strategy"}"#,
    printcolumn = r#"{"name":"Healthy","type":"string","jsonPath":".status.healthy","description":"healthy/total backends"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.service) != (has(self.backends) && size(self.backends) > 0)")
    .message("set exactly one of service or backends"))]
#[serde(rename_all = "camelCase")]
pub struct BackendGroupSpec {
    /// round_robin (smooth weighted), least_connections or random (weighted).
    #[serde(default)]
    pub strategy: Strategy,
    /// Endpoints from the EndpointSlices of this Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    /// Static endpoints, instead of a Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<StaticBackend>,
    /// How to talk to Service endpoints (static backends carry it in their URL).
    #[serde(default)]
    pub protocol: BackendProtocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive_health_check: Option<PassiveHealthCheckSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSpec>,
    /// Routes to this group declared without an Ingress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<BackendGroupRoute>,
    /// TLS to `https`/`h3` backends: which CA to trust and which name to verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsSpec>,
}

/// How backends' certificates are verified (system roots and the URL's host by default).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTlsSpec {
    /// A `kubernetes.io/tls` Secret in this namespace whose `ca.crt` holds the CA bundle to
    /// trust (as cert-manager writes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<String>,
    /// The name to send as SNI and verify the certificate against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Accept any certificate (test backends only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct ServiceRef {
    #[schemars(length(min = 1))]
    pub name: String,
    /// The Service port number.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct StaticBackend {
    /// http://, h2c://, https:// or h3:// with host and port.
    #[schemars(regex(pattern = r"^(http|h2c|https|h3)://[^/?#@]+/?$"))]
    pub url: String,
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 1000000))]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendProtocol {
    #[default]
    Http1,
    H2,
    Https,
    H3,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub healthy_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub unhealthy_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub path: Option<String>,
    /// Statuses counted healthy, like "200-399" (the default) or "204".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-5][0-9][0-9](-[1-5][0-9][0-9])?$"))]
    pub expected_status: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PassiveHealthCheckSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub observation_window: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPoolSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_idle_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_connections_per_host: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub idle_timeout: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendGroupRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default = "default_path")]
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
    #[serde(default)]
    pub path_type: PathType,
}

fn default_path() -> String {
    "/".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendGroupStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub healthy_backends: u32,
    #[serde(default)]
    pub total_backends: u32,
    /// `healthy/total`, for `kubectl get bg`.
    #[serde(default)]
    pub healthy: String,
    #[serde(default)]
    pub backends: Vec<BackendStatus>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    pub address: String,
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default)]
    pub consecutive_failures: u32,
}

/// The CRD as YAML, as `quic-ingress crd` prints it and `crds/` stores it.
pub fn crd_yaml() -> Result<String, String> {
    use kube::CustomResourceExt;
    let crd = BackendGroup::crd();
    let body = serde_saphyr::to_string(&crd).map_err(|e| e.to_string())?;
    Ok(format!("# Generated by `quic-ingress crd`; do not edit.\n---\n{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_folder_matches_the_generated_definition() {
        let generated = crd_yaml().unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/backendgroups.quic-ingress.dev.yaml");
        let stored = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            stored == generated,
            "crds/ is out of date: run `cargo run -- crd > crds/backendgroups.quic-ingress.dev.yaml`"
        );
    }

    #[test]
    fn the_helm_chart_ships_the_same_definition() {
        let root = env!("CARGO_MANIFEST_DIR");
        let read = |p: &str| std::fs::read_to_string(format!("{root}/{p}")).unwrap_or_default();
        assert!(
            read("charts/quic-ingress/crds/backendgroups.quic-ingress.dev.yaml")
                == read("crds/backendgroups.quic-ingress.dev.yaml"),
            "charts/quic-ingress/crds/ is out of date: copy crds/backendgroups.quic-ingress.dev.yaml there"
        );
    }

    #[test]
    fn spec_parses_the_spec_md_example() {
        let yaml = r#"
strategy: least_connections
service: {name: api, port: 8080}
protocol: http1
healthCheck: {interval: 10s, timeout: 5s, healthyThreshold: 2, unhealthyThreshold: 3, path: /health}
passiveHealthCheck: {maxFailures: 5, observationWindow: 60s}
connectionPool: {maxIdleConnections: 100, maxConnectionsPerHost: 10, idleTimeout: 90s}
routes:
  - {host: api.example.com, path: /api, pathType: Prefix}
"#;
        let spec: BackendGroupSpec = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(spec.strategy, Strategy::LeastConnections);
        assert_eq!(spec.service.as_ref().unwrap().port, 8080);
        assert_eq!(spec.routes[0].path_type, PathType::Prefix);
        assert_eq!(spec.health_check.as_ref().unwrap().path.as_deref(), Some("/health"));
    }

    #[test]
    fn schema_carries_enums_ranges_and_the_one_of_rule() {
        use kube::CustomResourceExt;
        let json = serde_json::to_string(&BackendGroup::crd()).unwrap();
        for needle in [
            "\"least_connections\"",
            "\"maximum\":65535",
            "set exactly one of service or backends",
            "\"shortNames\":[\"bg\"]",
            "\"subresources\":{\"status\":{}}",
        ] {
            assert!(json.contains(needle), "CRD lacks {needle}");
        }
    }
}
