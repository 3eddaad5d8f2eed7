//! Standalone mode's YAML configuration: the file format of SPEC.md, its validation (every
//! problem reported with the field path), and its compilation into a `RouteTable`.

mod duration;
mod limits;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use duration::{HumanDuration, parse_duration};
pub use limits::{Limits, MAX_HEADER_BYTES_CEILING};

use crate::net::{Cidr, TrustedProxies};
use crate::routes::CertSet;
use crate::routes::{self, HostRule, PathRule, RouteEntry, RouteTable, RouteTableBuilder, WeightedBackends};
use crate::upstream::{
    self, BackendSpec, EndpointRegistry, GroupSpec, HealthCheckSpec, Members, PassiveCheck, PassiveSpec, PoolSettings,
    SpecError, Timeouts, UpstreamTls,
};

/// A problem with one field of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, like `backend_groups[0].backends[1].url`.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: invalid configuration:\n{}", .errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid { file: String, errors: Vec<FieldError> },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub backend_groups: Vec<BackendGroupConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_address")]
    pub address: String,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub alt_svc_port: Option<u16>,
    #[serde(default)]
    pub congestion_control: CongestionControl,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: HumanDuration,
    /// Serve GET, HEAD and OPTIONS from 0-RTT early data (other methods get 425). Default:
    /// on, unless `ticket_key_file` is set.
    pub early_data: Option<bool>,
    /// Session-ticket keys shared by every replica (48-byte keys, raw or base64; the first
    /// seals, all open), so resumption works behind a load balancer.
    pub ticket_key_file: Option<PathBuf>,
    /// Proxies and load balancers in front (addresses or CIDR ranges) whose
    /// `X-Forwarded-For` and `Forwarded` are believed; from anyone else they are replaced.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// A plaintext HTTP listener (HTTP/1.1, and HTTP/2 with prior knowledge), e.g.
    /// "0.0.0.0:8080"; none when absent.
    pub http_listen: Option<String>,
    /// Connections from `trusted_proxies` to the TCP listeners must start with a PROXY
    /// protocol header (v2 or v1) naming the client.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// What one client may take of the proxy (see `Limits`).
    #[serde(default)]
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum CongestionControl {
    #[default]
    Cubic,
    Bbr,
}

/// `strategy` of a backend group, as the file spells it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
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

/// `path_type` of a route, as the file spells it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum PathType {
    Exact,
    #[default]
    Prefix,
    /// The whole path matches the pattern (Gateway API `RegularExpression`).
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    #[serde(default = "default_admin_address")]
    pub admin_address: String,
    /// OpenTelemetry traces over OTLP/HTTP; off when absent.
    pub tracing: Option<crate::telemetry::traces::TracingConfig>,
    /// Serve `/debug/routes` to any peer of the admin address, not only loopback ones.
    #[serde(default)]
    pub debug_routes_from_anywhere: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { admin_address: default_admin_address(), tracing: None, debug_routes_from_anywhere: false }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub id: String,
    pub host: Option<String>,
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default)]
    pub path_type: PathType,
    /// The group serving the route; or `backend_refs` to split by weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_group: Option<String>,
    /// Groups sharing the route's requests by weight (Gateway API `backendRefs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRefConfig>,
    /// What else a request must carry (Gateway API `HTTPRouteMatch` without the path).
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<routes::spec::MatchSpec>,
    /// Gateway API filters, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<routes::spec::FilterSpec>,
    /// Gateway API `timeouts`: `request` and `backendRequest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<routes::spec::TimeoutsSpec>,
}

/// One of a route's weighted groups.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRefConfig {
    /// A backend group id.
    pub name: String,
    /// 0 to 1000000; 0 sends nothing there (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

impl RouteConfig {
    /// The groups the route sends to, with weights: `backend_group` or `backend_refs`.
    fn backend_names(&self) -> Vec<(&str, u32)> {
        match &self.backend_group {
            Some(g) => vec![(g.as_str(), 1)],
            None => self.backend_refs.iter().map(|r| (r.name.as_str(), r.weight)).collect(),
        }
    }

    fn redirects(&self) -> bool {
        self.filters.iter().any(|f| f.kind == routes::spec::FilterType::RequestRedirect)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendGroupConfig {
    pub id: String,
    #[serde(default)]
    pub strategy: Strategy,
    pub backends: Vec<BackendConfig>,
    pub health_check: Option<HealthCheckConfig>,
    pub passive: Option<PassiveConfig>,
    #[serde(default)]
    pub connection_pool: PoolConfig,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    #[serde(default)]
    pub tls: UpstreamTlsConfig,
    /// The largest request body this group takes (413 beyond), over `server.limits`.
    pub max_request_body_bytes: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub url: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_hc_interval")]
    pub interval: HumanDuration,
    #[serde(default = "default_hc_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Not in SPEC.md's example: statuses counted healthy, like "200-399".
    #[serde(default = "default_expected_status")]
    pub expected_status: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    #[serde(default = "default_observation_window")]
    pub observation_window: HumanDuration,
    /// Not in SPEC.md's example: how long an ejected backend rests before a trial request.
    #[serde(default = "default_cooldown")]
    pub cooldown: HumanDuration,
    /// Not in SPEC.md's example: the most of the group (percent) passive checks may eject.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

fn default_max_ejection_percent() -> u32 {
    upstream::DEFAULT_MAX_EJECTION_PERCENT
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default = "default_max_idle")]
    pub max_idle_connections: usize,
    #[serde(default = "default_max_per_host")]
    pub max_connections_per_host: usize,
    /// Not in SPEC.md's example: requests that may wait for a connection slot.
    #[serde(default = "default_max_pending")]
    pub max_pending_requests: usize,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_idle_connections: default_max_idle(),
            max_connections_per_host: default_max_per_host(),
            max_pending_requests: default_max_pending(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

/// Not in SPEC.md's example: bounds on waiting for a backend (see Timeouts).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    #[serde(default = "default_connect_timeout")]
    pub connect: HumanDuration,
    #[serde(default = "default_response_headers_timeout")]
    pub response_headers: HumanDuration,
    #[serde(default = "default_pool_wait")]
    pub pool_wait: HumanDuration,
    #[serde(default = "default_idle")]
    pub idle: HumanDuration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            connect: default_connect_timeout(),
            response_headers: default_response_headers_timeout(),
            pool_wait: default_pool_wait(),
            idle: default_idle(),
        }
    }
}

/// Not in SPEC.md's example: TLS to `https://` and `h3://` backends.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

fn default_address() -> String {
    "0.0.0.0:443".into()
}
fn default_admin_address() -> String {
    "127.0.0.1:9090".into()
}
fn default_drain_timeout() -> HumanDuration {
    HumanDuration::secs(30)
}
fn default_path() -> String {
    "/".into()
}
fn default_weight() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn default_hc_interval() -> HumanDuration {
    HumanDuration::secs(10)
}
fn default_hc_timeout() -> HumanDuration {
    HumanDuration::secs(5)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_health_path() -> String {
    "/health".into()
}
fn default_expected_status() -> String {
    "200-399".into()
}
fn default_max_failures() -> u32 {
    5
}
fn default_observation_window() -> HumanDuration {
    HumanDuration::secs(60)
}
fn default_cooldown() -> HumanDuration {
    HumanDuration(PassiveCheck::default().cooldown)
}
fn default_max_idle() -> usize {
    PoolSettings::default().max_idle_connections
}
fn default_max_per_host() -> usize {
    PoolSettings::default().max_connections_per_host
}
fn default_max_pending() -> usize {
    PoolSettings::default().max_pending_requests
}
fn default_idle() -> HumanDuration {
    HumanDuration(Timeouts::default().idle)
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration(PoolSettings::default().idle_timeout)
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Timeouts::default().connect)
}
fn default_response_headers_timeout() -> HumanDuration {
    HumanDuration(Timeouts::default().response_headers)
}
fn default_pool_wait() -> HumanDuration {
    HumanDuration(Timeouts::default().pool_wait)
}

/// Reads and parses a configuration file (syntax and field types only).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::Read { file: file.clone(), reason: e.to_string() })?;
    parse(&file, &text)
}

/// Parses configuration text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse { file: file.to_string(), message: e.to_string() })
}

/// The addresses a configuration listens on, validated.
#[derive(Debug, Clone)]
pub struct Listen {
    pub address: SocketAddr,
    pub admin_address: SocketAddr,
    pub alt_svc_port: u16,
    pub trusted_proxies: TrustedProxies,
    /// The plaintext HTTP listener, if any.
    pub http_address: Option<SocketAddr>,
    /// `server.proxy_protocol`.
    pub proxy_protocol: bool,
}

impl Config {
    /// Checks everything that does not touch the network and returns the listen addresses.
    pub fn validate(&self) -> Result<Listen, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut err = |field: String, message: String| errors.push(FieldError { field, message });
        let address = self.server.address.parse::<SocketAddr>();
        if let Err(e) = &address {
            err("server.address".into(), format!("{:?} is not an address with a port: {e}", self.server.address));
        }
        let http_address = match self.server.http_listen.as_deref().map(str::parse::<SocketAddr>) {
            None => None,
            Some(Ok(http)) => {
                if address.as_ref().is_ok_and(|a| *a == http) {
                    err(
                        "server.http_listen".into(),
                        "must differ from server.address, whose TCP port serves HTTPS".into(),
                    );
                }
                Some(http)
            }
            Some(Err(e)) => {
                let text = self.server.http_listen.as_deref().unwrap_or("");
                err("server.http_listen".into(), format!("{text:?} is not an address with a port: {e}"));
                None
            }
        };
        let mut trusted = Vec::new();
        for (i, range) in self.server.trusted_proxies.iter().enumerate() {
            match range.parse::<Cidr>() {
                Ok(cidr) => trusted.push(cidr),
                Err(e) => err(format!("server.trusted_proxies[{i}]"), e.to_string()),
            }
        }
        let admin = self.telemetry.admin_address.parse::<SocketAddr>();
        if let Err(e) = &admin {
            err(
                "telemetry.admin_address".into(),
                format!("{:?} is not an address with a port: {e}", self.telemetry.admin_address),
            );
        }
        if let Some(t) = &self.telemetry.tracing {
            let ok_url = t
                .endpoint
                .parse::<http::Uri>()
                .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some());
            if !ok_url {
                err("telemetry.tracing.endpoint".into(), format!("{:?} is not an http(s) URL", t.endpoint));
            }
            if !(0.0..=1.0).contains(&t.sampling_ratio) {
                err("telemetry.tracing.sampling_ratio".into(), "must be between 0 and 1".into());
            }
        }
        match (&self.server.cert_file, &self.server.key_file) {
            (Some(_), None) => err("server.key_file".into(), "required when server.cert_file is set".into()),
            (None, Some(_)) => err("server.cert_file".into(), "required when server.key_file is set".into()),
            _ => {}
        }
        if self.server.early_data == Some(true) && self.server.ticket_key_file.is_some() {
            err(
                "server.early_data".into(),
                "0-RTT needs single-use sessions kept by each replica, which shared ticket keys replace; \
                 remove server.ticket_key_file or set early_data: false"
                    .into(),
            );
        }
        for e in self.server.limits.validate("server.limits") {
            err(e.field, e.message);
        }
        if self.server.alt_svc_port == Some(0) {
            err("server.alt_svc_port".into(), "must be a port between 1 and 65535".into());
        }

        let mut group_ids = HashSet::new();
        for (i, g) in self.backend_groups.iter().enumerate() {
            let at = format!("backend_groups[{i}]");
            if g.id.trim().is_empty() {
                err(format!("{at}.id"), "must not be empty".into());
            } else if !group_ids.insert(g.id.as_str()) {
                err(format!("{at}.id"), format!("duplicate backend group id {:?}", g.id));
            }
            for e in g.group_spec().validate().err().unwrap_or_default() {
                let e = group_field_error(i, e);
                err(e.field, e.message);
            }
        }

        let mut route_ids = HashSet::new();
        let mut claimed = std::collections::HashMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if r.id.trim().is_empty() {
                err(format!("{at}.id"), "must not be empty".into());
            } else if !route_ids.insert(r.id.as_str()) {
                err(format!("{at}.id"), format!("duplicate route id {:?}", r.id));
            }
            let host = match r.host.as_deref().map(HostRule::parse).transpose() {
                Ok(h) => h,
                Err(e) => {
                    err(format!("{at}.host"), e.to_string());
                    None
                }
            };
            match PathRule::new(&r.path, r.path_type.into()) {
                Ok(path) => {
                    let key = (host.as_ref().map(ToString::to_string), path.to_string(), r.matches.clone());
                    if let Some(first) = claimed.insert(key, r.id.clone()) {
                        err(format!("{at}.path"), format!("host and path are already routed by route {first:?}"));
                    }
                    // Mirrors may name any group of the file; compile only checks the names.
                    let mut known = |name: &str| group_ids.contains(name).then(|| placeholder_group(name));
                    let options =
                        routes::spec::compile(r.matches.as_ref(), &r.filters, r.timeouts.as_ref(), &path, &mut known);
                    for e in options.err().unwrap_or_default() {
                        err(format!("{at}.{}", e.field), e.message);
                    }
                }
                Err(e) => err(format!("{at}.path"), e.to_string()),
            }
            match (&r.backend_group, r.backend_refs.is_empty()) {
                (Some(_), false) => {
                    err(format!("{at}.backend_refs"), "set backend_group or backend_refs, not both".into())
                }
                (None, true) if !r.redirects() => {
                    err(format!("{at}.backend_group"), "a route needs backend_group or backend_refs".into())
                }
                _ => {}
            }
            if r.backend_refs.len() > upstream::MAX_BACKENDS {
                err(format!("{at}.backend_refs"), format!("at most {} entries are allowed", upstream::MAX_BACKENDS));
            }
            if let Some(g) = &r.backend_group
                && !group_ids.contains(g.as_str())
            {
                err(format!("{at}.backend_group"), format!("unknown backend group {g:?}"));
            }
            for (j, b) in r.backend_refs.iter().enumerate() {
                if !group_ids.contains(b.name.as_str()) {
                    err(format!("{at}.backend_refs[{j}].name"), format!("unknown backend group {:?}", b.name));
                }
                if b.weight > upstream::MAX_WEIGHT {
                    err(
                        format!("{at}.backend_refs[{j}].weight"),
                        format!("must be between 0 and {}", upstream::MAX_WEIGHT),
                    );
                }
            }
        }

        match (address, admin) {
            (Ok(address), Ok(admin_address)) if errors.is_empty() => Ok(Listen {
                address,
                admin_address,
                alt_svc_port: self.server.alt_svc_port.unwrap_or(address.port()),
                trusted_proxies: TrustedProxies::new(trusted),
                http_address,
                proxy_protocol: self.server.proxy_protocol,
            }),
            _ => Err(errors),
        }
    }

    /// Builds the route table. Call `validate` first: the file-wide checks (addresses, ids,
    /// routes) are not repeated here. Groups are validated again by `GroupSpec::compile`,
    /// and anything that can still fail (reading CA bundles) is reported by field.
    pub fn compile(
        &self,
        registry: &EndpointRegistry,
        certs: CertSet,
        generation: u64,
    ) -> Result<RouteTable, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut builder = RouteTableBuilder::new(certs);
        // Groups that failed are reported once, not again by each route naming them.
        let mut failed = HashSet::new();
        for (i, g) in self.backend_groups.iter().enumerate() {
            match g.group_spec().compile(registry) {
                Ok(group) => {
                    builder.add_group(group);
                }
                Err(e) => {
                    failed.insert(g.id.as_str());
                    errors.extend(e.into_iter().map(|e| group_field_error(i, e)));
                }
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let field = |f: &str| format!("routes[{i}].{f}");
            let host = match r.host.as_deref().map(HostRule::parse).transpose() {
                Ok(h) => h,
                Err(e) => {
                    errors.push(FieldError { field: field("host"), message: e.to_string() });
                    continue;
                }
            };
            let path = match PathRule::new(&r.path, r.path_type.into()) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(FieldError { field: field("path"), message: e.to_string() });
                    continue;
                }
            };
            let mut backends = Vec::new();
            let mut unknown = false;
            for (j, (name, weight)) in r.backend_names().into_iter().enumerate() {
                match builder.group(name) {
                    Some(g) => backends.push((Some(g), weight)),
                    None if failed.contains(name) => unknown = true,
                    None => {
                        let f = if r.backend_group.is_some() {
                            field("backend_group")
                        } else {
                            field(&format!("backend_refs[{j}].name"))
                        };
                        errors.push(FieldError { field: f, message: format!("unknown backend group {name:?}") });
                        unknown = true;
                    }
                }
            }
            if unknown {
                continue;
            }
            let mut resolve = |name: &str| builder.group(name);
            let options =
                match routes::spec::compile(r.matches.as_ref(), &r.filters, r.timeouts.as_ref(), &path, &mut resolve) {
                    Ok(o) => o,
                    Err(e) => {
                        errors.extend(e.into_iter().map(|e| FieldError { field: field(&e.field), message: e.message }));
                        continue;
                    }
                };
            let entry = RouteEntry {
                matcher: options.matcher,
                filters: options.filters,
                timeouts: options.timeouts,
                ..RouteEntry::split(&r.id, host, path, WeightedBackends::new(backends))
            };
            if let Err(conflict) = builder.add_entry(entry) {
                errors.push(FieldError { field: field("path"), message: conflict.to_string() });
            }
        }
        if errors.is_empty() { Ok(builder.build(generation)) } else { Err(errors) }
    }

    /// Host names routed by this configuration (for the development certificate).
    pub fn hosts(&self) -> Vec<String> {
        self.routes.iter().filter_map(|r| r.host.clone()).collect()
    }
}

/// A stand-in for a group known to exist, while validating names only.
fn placeholder_group(id: &str) -> std::sync::Arc<upstream::BackendGroup> {
    std::sync::Arc::new(upstream::BackendGroup::new(
        id.into(),
        upstream::Strategy::RoundRobin,
        Timeouts::default(),
        vec![],
    ))
}

/// A group's error, named by its path in the file.
fn group_field_error(i: usize, e: SpecError) -> FieldError {
    FieldError { field: format!("backend_groups[{i}].{}", e.field), message: e.message }
}

impl BackendGroupConfig {
    /// The group in the model both configuration sources share (validated and compiled
    /// there, so YAML and BackendGroup objects follow the same rules).
    pub fn group_spec(&self) -> GroupSpec {
        let backends = self.backends.iter().map(|b| BackendSpec { url: b.url.clone(), weight: b.weight }).collect();
        GroupSpec {
            id: self.id.clone(),
            strategy: self.strategy.into(),
            members: Members::Listed(backends),
            health_check: self.health_check.as_ref().map(|hc| HealthCheckSpec {
                enabled: hc.enabled,
                interval: hc.interval.0,
                timeout: hc.timeout.0,
                healthy_threshold: hc.healthy_threshold,
                unhealthy_threshold: hc.unhealthy_threshold,
                path: hc.path.clone(),
                expected_status: hc.expected_status.clone(),
            }),
            // Passive checks are on unless a group turns them off.
            passive: self.passive.as_ref().map_or_else(PassiveSpec::default, |p| PassiveSpec {
                enabled: p.enabled,
                check: PassiveCheck {
                    max_failures: p.max_failures,
                    window: p.observation_window.0,
                    cooldown: p.cooldown.0,
                },
                max_ejection_percent: p.max_ejection_percent,
            }),
            pool: PoolSettings {
                max_idle_connections: self.connection_pool.max_idle_connections,
                max_connections_per_host: self.connection_pool.max_connections_per_host,
                max_pending_requests: self.connection_pool.max_pending_requests,
                idle_timeout: self.connection_pool.idle_timeout.0,
            },
            timeouts: Timeouts {
                connect: self.timeouts.connect.0,
                response_headers: self.timeouts.response_headers.0,
                pool_wait: self.timeouts.pool_wait.0,
                idle: self.timeouts.idle.0,
            },
            tls: UpstreamTls {
                ca_file: self.tls.ca_file.clone(),
                ca_pem: None,
                server_name: self.tls.server_name.clone(),
                insecure_skip_verify: self.tls.insecure_skip_verify,
                subject_alt_names: Vec::new(),
            },
            max_request_body_bytes: self.max_request_body_bytes,
        }
    }
}

#[cfg(test)]
mod tests;
