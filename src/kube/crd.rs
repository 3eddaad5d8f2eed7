//! The BackendGroup custom resource (quic-ingress.dev/v1alpha1): spec, status, and the
//! server-side validation that goes into its CustomResourceDefinition.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::{Message, Rule};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::config::parse_duration;
use crate::routes;
use crate::upstream::{
    self, BackendSpec, EndpointRegistry, Field, GroupSpec, HealthCheckSpec as HealthSettings, MAX_BACKENDS,
    MAX_FAILURES, MAX_POOL_SIZE, MAX_ROUTES, MAX_THRESHOLD, MAX_WEIGHT, MIN_HEALTH_INTERVAL, Members, PassiveSpec,
    UpstreamTls, millis,
};

/// What the durations of this resource look like (a subset of Go's `time.ParseDuration`, so
/// the API server's CEL `duration()` reads them as we do).
const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";
/// Longest duration text; also bounds the cost the API server estimates for the CEL rules.
const DURATION_MAX_LENGTH: usize = 32;

/// A CEL rule for the API server: the duration is at least `min`.
fn at_least(min: Duration) -> Rule {
    Rule::new(format!("duration(self) >= duration('{}')", millis(min)))
        .message(Message::Message(format!("must be at least {}", millis(min))))
}

/// A CEL rule for the API server: the duration is not zero.
fn positive() -> Rule {
    Rule::new("duration(self) > duration('0s')").message("must be greater than 0")
}

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
    /// The IngressClass whose controller serves this group's `routes`; unset: the
    /// cluster's default IngressClass, as for Ingress. A group naming another class is
    /// ignored by this one's controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,
    /// round_robin (smooth weighted), least_connections or random (weighted).
    #[serde(default)]
    pub strategy: Strategy,
    /// Endpoints from the EndpointSlices of this Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    /// Static endpoints, instead of a Service (at most 1000; larger sets come from a
    /// Service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_BACKENDS))]
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
    /// Bounds on waiting for a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsSpec>,
    /// Routes to this group declared without an Ingress (at most 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ROUTES))]
    pub routes: Vec<BackendGroupRoute>,
    /// TLS to `https`/`h3` backends: which CA to trust and which name to verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsSpec>,
    /// The largest request body this group takes, in bytes (413 beyond); the
    /// controller's `--limit-max-request-body-bytes` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_request_body_bytes: Option<u64>,
}

/// How backends are balanced. This resource's own enum, so the versioned API does not
/// change when the runtime's does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    RoundRobin,
    LeastConnections,
    Random,
}

impl From<Strategy> for upstream::Strategy {
    fn from(s: Strategy) -> Self {
        match s {
            Strategy::RoundRobin => Self::RoundRobin,
            Strategy::LeastConnections => Self::LeastConnections,
            Strategy::Random => Self::Random,
        }
    }
}

/// How a route's path is compared, as in Ingress v1 `pathType`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum PathType {
    Exact,
    #[default]
    Prefix,
    /// The whole path matches the pattern (Gateway API RegularExpression).
    RegularExpression,
}

impl From<PathType> for routes::PathType {
    fn from(p: PathType) -> Self {
        match p {
            PathType::Exact => Self::Exact,
            PathType::Prefix => Self::Prefix,
            PathType::RegularExpression => Self::RegularExpression,
        }
    }
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
    /// Share of requests, relative to the other backends; 0 drains the backend.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = MAX_WEIGHT))]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// How to talk to a Service's endpoints.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendProtocol {
    #[default]
    Http1,
    H2,
    Https,
    H3,
}

impl BackendProtocol {
    /// The backend URL scheme this protocol is dialled with.
    pub fn scheme(self) -> &'static str {
        match self {
            Self::Http1 => "http",
            Self::H2 => "h2c",
            Self::Https => "https",
            Self::H3 => "h3",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckSpec {
    /// Probe the backends (default true); false keeps the settings but probes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Time between probes of one backend; at least 100ms (0 would be a hot loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[x_kube(validation = at_least(MIN_HEALTH_INTERVAL))]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[x_kube(validation = positive())]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_THRESHOLD))]
    pub healthy_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_THRESHOLD))]
    pub unhealthy_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub path: Option<String>,
    /// Statuses counted healthy, like "200-399" (the default) or "204".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-5][0-9][0-9](-[1-5][0-9][0-9])?$"))]
    pub expected_status: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PassiveHealthCheckSpec {
    /// Eject backends that fail real requests (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_FAILURES))]
    pub max_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[x_kube(validation = positive())]
    pub observation_window: Option<String>,
    /// How long an ejected backend rests before a trial request (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[x_kube(validation = positive())]
    pub cooldown: Option<String>,
    /// The most of the group, in percent, passive checks may eject at once (at least one
    /// backend; default 50). Beyond it the group balances over all backends (panic mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_ejection_percent: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPoolSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_POOL_SIZE))]
    pub max_idle_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_POOL_SIZE))]
    pub max_connections_per_host: Option<u32>,
    /// Requests that may wait for a connection slot; beyond it they get 503 at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_POOL_SIZE))]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[x_kube(validation = positive())]
    pub idle_timeout: Option<String>,
}

/// Bounds on waiting for a backend (each greater than 0).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutsSpec {
    /// TCP connect plus TLS handshake (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[x_kube(validation = positive())]
    pub connect: Option<String>,
    /// From sending the request until the response headers arrive (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[x_kube(validation = positive())]
    pub response_headers: Option<String>,
    /// Waiting for a free connection slot (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[x_kube(validation = positive())]
    pub pool_wait: Option<String>,
    /// A request or response body going without data (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[x_kube(validation = positive())]
    pub idle: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendGroupRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default = "default_path")]
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
    #[serde(default)]
    pub path_type: PathType,
    /// What else a request must carry: method, headers, queryParams (Gateway API
    /// `HTTPRouteMatch` without the path).
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<routes::spec::MatchSpec>,
    /// Gateway API filters, in order. A RequestMirror's backendRef names a BackendGroup
    /// of the same namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = routes::spec::MAX_FILTERS))]
    pub filters: Vec<routes::spec::FilterSpec>,
    /// Gateway API timeouts: request, backendRequest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<routes::spec::TimeoutsSpec>,
}

fn default_path() -> String {
    "/".into()
}

/// A problem with one field of a BackendGroup, named as `kubectl explain` names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidField {
    pub field: String,
    pub message: String,
}

impl BackendGroupSpec {
    /// Where this group's endpoints come from: its static backends, or (`None`) the
    /// Service the caller resolves.
    pub fn listed_members(&self) -> Option<Members> {
        if self.backends.is_empty() {
            return None;
        }
        let backends = self.backends.iter().map(|b| BackendSpec { url: b.url.clone(), weight: b.weight }).collect();
        Some(Members::Listed(backends))
    }

    /// This spec in the model both configuration sources share. `members` are its
    /// endpoints (see `listed_members`), `tls` its TLS settings with the CA bundle read.
    /// Only reading the text of durations can fail here; the rules are `GroupSpec`'s.
    pub fn group_spec(&self, id: String, members: Members, tls: UpstreamTls) -> Result<GroupSpec, Vec<InvalidField>> {
        let mut errors = Vec::new();
        let mut duration = |field: &str, text: &Option<String>, default: Duration| match text {
            None => default,
            Some(text) => parse_duration(text).unwrap_or_else(|message| {
                errors.push(InvalidField { field: format!("spec.{field}"), message });
                default
            }),
        };
        let mut group = GroupSpec::new(id, members);
        group.strategy = self.strategy.into();
        group.tls = tls;
        group.max_request_body_bytes = self.max_request_body_bytes;
        if let Some(hc) = &self.health_check {
            let d = HealthSettings::default();
            group.health_check = Some(HealthSettings {
                enabled: hc.enabled.unwrap_or(true),
                interval: duration("healthCheck.interval", &hc.interval, d.interval),
                timeout: duration("healthCheck.timeout", &hc.timeout, d.timeout),
                healthy_threshold: hc.healthy_threshold.unwrap_or(d.healthy_threshold),
                unhealthy_threshold: hc.unhealthy_threshold.unwrap_or(d.unhealthy_threshold),
                path: hc.path.clone().unwrap_or(d.path),
                expected_status: hc.expected_status.clone().unwrap_or(d.expected_status),
            });
        }
        if let Some(p) = &self.passive_health_check {
            let d = PassiveSpec::default().check;
            group.passive.enabled = p.enabled.unwrap_or(true);
            group.passive.check.max_failures = p.max_failures.unwrap_or(d.max_failures);
            group.passive.check.window =
                duration("passiveHealthCheck.observationWindow", &p.observation_window, d.window);
            group.passive.check.cooldown = duration("passiveHealthCheck.cooldown", &p.cooldown, d.cooldown);
            group.passive.max_ejection_percent =
                p.max_ejection_percent.unwrap_or(PassiveSpec::default().max_ejection_percent);
        }
        if let Some(p) = &self.connection_pool {
            let pool = &mut group.pool;
            let size = |n: Option<u32>, default: usize| n.map_or(default, |n| n as usize);
            pool.max_idle_connections = size(p.max_idle_connections, pool.max_idle_connections);
            pool.max_connections_per_host = size(p.max_connections_per_host, pool.max_connections_per_host);
            pool.max_pending_requests = size(p.max_pending_requests, pool.max_pending_requests);
            pool.idle_timeout = duration("connectionPool.idleTimeout", &p.idle_timeout, pool.idle_timeout);
        }
        if let Some(t) = &self.timeouts {
            let d = group.timeouts;
            group.timeouts.connect = duration("timeouts.connect", &t.connect, d.connect);
            group.timeouts.response_headers =
                duration("timeouts.responseHeaders", &t.response_headers, d.response_headers);
            group.timeouts.pool_wait = duration("timeouts.poolWait", &t.pool_wait, d.pool_wait);
            group.timeouts.idle = duration("timeouts.idle", &t.idle, d.idle);
        }
        if errors.is_empty() { Ok(group) } else { Err(errors) }
    }

    /// Converts, validates and compiles this spec into the runtime group.
    pub fn compile(
        &self,
        id: String,
        members: Members,
        tls: UpstreamTls,
        registry: &EndpointRegistry,
    ) -> Result<upstream::BackendGroup, Vec<InvalidField>> {
        let from_service = matches!(members, Members::Discovered(_));
        let group = self.group_spec(id, members, tls)?;
        group.compile(registry).map_err(|errors| {
            errors
                .into_iter()
                .map(|e| InvalidField { field: field_path(e.field, from_service), message: e.message })
                .collect()
        })
    }
}

/// Where a `GroupSpec` field lives in this resource. Endpoints found through the Service
/// are blamed on `spec.service`.
pub fn field_path(field: Field, from_service: bool) -> String {
    let path = match field {
        Field::Backends | Field::BackendUrl(_) if from_service => "service",
        Field::Backends => "backends",
        Field::BackendUrl(i) => return format!("spec.backends[{i}].url"),
        Field::BackendWeight(i) => return format!("spec.backends[{i}].weight"),
        Field::HealthInterval => "healthCheck.interval",
        Field::HealthTimeout => "healthCheck.timeout",
        Field::HealthyThreshold => "healthCheck.healthyThreshold",
        Field::UnhealthyThreshold => "healthCheck.unhealthyThreshold",
        Field::HealthPath => "healthCheck.path",
        Field::HealthExpectedStatus => "healthCheck.expectedStatus",
        Field::PassiveMaxFailures => "passiveHealthCheck.maxFailures",
        Field::PassiveWindow => "passiveHealthCheck.observationWindow",
        Field::PassiveCooldown => "passiveHealthCheck.cooldown",
        Field::PassiveMaxEjectionPercent => "passiveHealthCheck.maxEjectionPercent",
        Field::PoolMaxIdle => "connectionPool.maxIdleConnections",
        Field::PoolMaxPerHost => "connectionPool.maxConnectionsPerHost",
        Field::PoolMaxPending => "connectionPool.maxPendingRequests",
        Field::PoolIdleTimeout => "connectionPool.idleTimeout",
        Field::TimeoutConnect => "timeouts.connect",
        Field::TimeoutResponseHeaders => "timeouts.responseHeaders",
        Field::TimeoutPoolWait => "timeouts.poolWait",
        Field::TimeoutIdle => "timeouts.idle",
        Field::Tls => "tls",
        Field::MaxRequestBody => "maxRequestBodyBytes",
    };
    format!("spec.{path}")
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

    /// The CRD's `spec` properties as JSON.
    fn spec_schema() -> serde_json::Value {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(BackendGroup::crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
    }

    /// The schema of the property at `path` (`spec.backends[0].url`), if there is one.
    fn property<'a>(schema: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
        let mut at = schema;
        for part in path.strip_prefix("spec.")?.split('.') {
            let (name, indexed) = match part.split_once('[') {
                Some((name, _)) => (name, true),
                None => (part, false),
            };
            at = at.get("properties")?.get(name)?;
            if indexed {
                at = at.get("items")?;
            }
        }
        Some(at)
    }

    #[test]
    fn every_field_of_the_shared_model_names_a_property_of_the_schema() {
        let schema = spec_schema();
        let all = [
            Field::Backends,
            Field::BackendUrl(0),
            Field::BackendWeight(0),
            Field::HealthInterval,
            Field::HealthTimeout,
            Field::HealthyThreshold,
            Field::UnhealthyThreshold,
            Field::HealthPath,
            Field::HealthExpectedStatus,
            Field::PassiveMaxFailures,
            Field::PassiveWindow,
            Field::PassiveCooldown,
            Field::PoolMaxIdle,
            Field::PoolMaxPerHost,
            Field::PoolMaxPending,
            Field::PoolIdleTimeout,
            Field::TimeoutConnect,
            Field::TimeoutResponseHeaders,
            Field::TimeoutPoolWait,
            Field::TimeoutIdle,
            Field::Tls,
            Field::MaxRequestBody,
        ];
        for field in all {
            let path = field_path(field, false);
            assert!(property(&schema, &path).is_some(), "{field:?} maps to {path}, which the schema lacks");
        }
        assert_eq!(field_path(Field::BackendUrl(3), true), "spec.service");
    }

    #[test]
    fn the_schema_states_the_bounds_of_the_shared_model() {
        let schema = spec_schema();
        let at = |path: &str| property(&schema, path).unwrap_or_else(|| panic!("no {path}")).clone();
        assert_eq!(at("spec.backends")["maxItems"].as_u64(), Some(MAX_BACKENDS as u64));
        assert_eq!(at("spec.routes")["maxItems"].as_u64(), Some(MAX_ROUTES as u64));
        assert_eq!(at("spec.backends[0].weight")["maximum"].as_f64(), Some(f64::from(MAX_WEIGHT)));
        for path in ["spec.healthCheck.healthyThreshold", "spec.healthCheck.unhealthyThreshold"] {
            assert_eq!(
                (at(path)["minimum"].as_f64(), at(path)["maximum"].as_f64()),
                (Some(1.0), Some(100.0)),
                "{path}"
            );
        }
        assert_eq!(at("spec.passiveHealthCheck.maxFailures")["maximum"].as_f64(), Some(f64::from(MAX_FAILURES)));
        let rule =
            |path: &str| at(path)["x-kubernetes-validations"][0]["rule"].as_str().unwrap_or_default().to_string();
        assert_eq!(rule("spec.healthCheck.interval"), "duration(self) >= duration('100ms')");
        for path in [
            "spec.healthCheck.timeout",
            "spec.passiveHealthCheck.observationWindow",
            "spec.passiveHealthCheck.cooldown",
            "spec.connectionPool.idleTimeout",
            "spec.timeouts.connect",
            "spec.timeouts.responseHeaders",
            "spec.timeouts.poolWait",
            "spec.timeouts.idle",
        ] {
            assert_eq!(rule(path), "duration(self) > duration('0s')", "{path}");
            assert_eq!(at(path)["maxLength"].as_u64(), Some(DURATION_MAX_LENGTH as u64), "{path}");
        }
    }

    #[test]
    fn what_the_yaml_has_the_resource_has_too() {
        let yaml = r#"
backends: [{url: "http://10.0.0.1:8001", weight: 2}]
healthCheck: {enabled: false, interval: 1s, expectedStatus: "204"}
passiveHealthCheck: {enabled: true, maxFailures: 2, observationWindow: 30s, cooldown: 5s}
connectionPool: {maxPendingRequests: 7}
timeouts: {connect: 1s, responseHeaders: 2s, poolWait: 3s, idle: 4s}
"#;
        let spec: BackendGroupSpec = serde_saphyr::from_str(yaml).unwrap();
        let members = spec.listed_members().unwrap();
        let group = spec.group_spec("g".into(), members, UpstreamTls::default()).unwrap();
        group.validate().unwrap();
        let hc = group.health_check.as_ref().unwrap();
        assert_eq!((hc.enabled, hc.interval, hc.expected_status.as_str()), (false, Duration::from_secs(1), "204"));
        assert_eq!(
            (group.passive.enabled, group.passive.check.max_failures, group.passive.check.cooldown),
            (true, 2, Duration::from_secs(5))
        );
        assert_eq!(group.pool.max_pending_requests, 7);
        let secs = |s| Duration::from_secs(s);
        assert_eq!(
            [group.timeouts.connect, group.timeouts.response_headers, group.timeouts.pool_wait, group.timeouts.idle],
            [secs(1), secs(2), secs(3), secs(4)]
        );
    }

    #[test]
    fn compile_errors_use_the_resource_spelling() {
        let spec = BackendGroupSpec {
            backends: vec![StaticBackend { url: "http://a b:1".into(), weight: 1 }],
            health_check: Some(HealthCheckSpec { expected_status: Some("599-100".into()), ..Default::default() }),
            ..Default::default()
        };
        let members = spec.listed_members().unwrap();
        let errors =
            spec.compile("g".into(), members, UpstreamTls::default(), &EndpointRegistry::default()).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.backends[0].url", "spec.healthCheck.expectedStatus"], "{errors:?}");
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
