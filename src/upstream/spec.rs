//! One model of a backend group for both configuration sources. Standalone YAML (`config`)
//! and the BackendGroup resource (`kube::crd`) convert into a `GroupSpec`; `validate` is the
//! one set of rules (each error names its `Field`, which each source spells its own way),
//! and `compile` the one step from a valid spec to the runtime `BackendGroup`.
//!
//! The bounds are constants so the CRD schema can state the same numbers for the API server
//! to check; a test in `kube::crd` keeps the two in step.

use std::fmt;
use std::time::Duration;

use super::{
    BackendGroup, BackendUrl, DEFAULT_MAX_EJECTION_PERCENT, EndpointRegistry, EndpointSpec, HealthCheck, PassiveCheck,
    PoolSettings, Strategy, Timeouts, UpstreamTls, parse_status_range,
};

/// Most backends one group may list. The BackendGroup status carries a line per backend, so
/// this keeps status well inside etcd's object size limit (1.5 MiB), and bounds the probes
/// one object can start; bigger sets come from a Service's EndpointSlices.
pub const MAX_BACKENDS: usize = 1000;
/// Most routes one BackendGroup object may declare (more belong in Ingresses); keeps the
/// object small and the API server's validation cost bounded.
pub const MAX_ROUTES: usize = 100;
/// Largest backend weight. 0 drains a backend; 1000 backends at this weight still sum
/// within a `u32`.
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Largest healthy/unhealthy threshold: 100 probes at the default 10 s is a quarter hour,
/// past which a threshold is a typo rather than a policy.
pub const MAX_THRESHOLD: u32 = 100;
/// Largest passive `max_failures`.
pub const MAX_FAILURES: u32 = 1000;
/// Shortest active-check interval: a zero interval is a hot probe loop, and 100 ms over
/// `MAX_BACKENDS` backends is already 10,000 probes a second.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);
/// Largest connection-pool count (idle, per host, pending).
pub const MAX_POOL_SIZE: usize = 100_000;

/// A field of a `GroupSpec`. `Display` gives its path inside the group as the standalone
/// YAML spells it (`health_check.interval`); the CRD maps each to its camelCase path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Backends,
    BackendUrl(usize),
    BackendWeight(usize),
    HealthInterval,
    HealthTimeout,
    HealthyThreshold,
    UnhealthyThreshold,
    HealthPath,
    HealthExpectedStatus,
    PassiveMaxFailures,
    PassiveWindow,
    PassiveCooldown,
    PassiveMaxEjectionPercent,
    PoolMaxIdle,
    PoolMaxPerHost,
    PoolMaxPending,
    PoolIdleTimeout,
    TimeoutConnect,
    TimeoutResponseHeaders,
    TimeoutPoolWait,
    TimeoutIdle,
    Tls,
    MaxRequestBody,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Backends => "backends",
            Self::BackendUrl(i) => return write!(f, "backends[{i}].url"),
            Self::BackendWeight(i) => return write!(f, "backends[{i}].weight"),
            Self::HealthInterval => "health_check.interval",
            Self::HealthTimeout => "health_check.timeout",
            Self::HealthyThreshold => "health_check.healthy_threshold",
            Self::UnhealthyThreshold => "health_check.unhealthy_threshold",
            Self::HealthPath => "health_check.path",
            Self::HealthExpectedStatus => "health_check.expected_status",
            Self::PassiveMaxFailures => "passive.max_failures",
            Self::PassiveWindow => "passive.observation_window",
            Self::PassiveCooldown => "passive.cooldown",
            Self::PassiveMaxEjectionPercent => "passive.max_ejection_percent",
            Self::PoolMaxIdle => "connection_pool.max_idle_connections",
            Self::PoolMaxPerHost => "connection_pool.max_connections_per_host",
            Self::PoolMaxPending => "connection_pool.max_pending_requests",
            Self::PoolIdleTimeout => "connection_pool.idle_timeout",
            Self::TimeoutConnect => "timeouts.connect",
            Self::TimeoutResponseHeaders => "timeouts.response_headers",
            Self::TimeoutPoolWait => "timeouts.pool_wait",
            Self::TimeoutIdle => "timeouts.idle",
            Self::Tls => "tls",
            Self::MaxRequestBody => "max_request_body_bytes",
        };
        f.write_str(name)
    }
}

/// What is wrong with one field of a group.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: Field,
    pub message: String,
}

/// A backend written in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub url: String,
    pub weight: u32,
}

/// Where a group's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Members {
    /// Written in the configuration: checked URLs, 1 to `MAX_BACKENDS` of them.
    Listed(Vec<BackendSpec>),
    /// Found at run time (a Service's ready endpoints), weight 1 each; may be empty (the
    /// group then answers 503 until endpoints appear), and has no upper bound.
    Discovered(Vec<BackendUrl>),
}

/// Active health checking as configured; `enabled: false` keeps the settings validated but
/// probes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckSpec {
    pub enabled: bool,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub path: String,
    /// Statuses counted healthy, as text: `200-399` or `204`.
    pub expected_status: String,
}

impl Default for HealthCheckSpec {
    fn default() -> Self {
        let d = HealthCheck::default();
        Self {
            enabled: true,
            interval: d.interval,
            timeout: d.timeout,
            healthy_threshold: d.healthy_threshold,
            unhealthy_threshold: d.unhealthy_threshold,
            path: d.path,
            expected_status: format!("{}-{}", d.expected_status.0, d.expected_status.1),
        }
    }
}

/// Passive health checking from real traffic (on unless turned off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveSpec {
    pub enabled: bool,
    pub check: PassiveCheck,
    /// The most of the group (percent, at least one endpoint) passive checks may eject;
    /// beyond it the group is in panic mode (see `BackendGroup::in_panic`).
    pub max_ejection_percent: u32,
}

impl Default for PassiveSpec {
    fn default() -> Self {
        Self { enabled: true, check: PassiveCheck::default(), max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT }
    }
}

/// A backend group as configured, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub id: String,
    pub strategy: Strategy,
    pub members: Members,
    pub health_check: Option<HealthCheckSpec>,
    pub passive: PassiveSpec,
    pub pool: PoolSettings,
    pub timeouts: Timeouts,
    pub tls: UpstreamTls,
    /// The largest request body this group takes (413 beyond); the server-wide limit
    /// when unset.
    pub max_request_body_bytes: Option<u64>,
}

impl GroupSpec {
    /// A group with every setting at its default: round robin, passive checks only.
    pub fn new(id: impl Into<String>, members: Members) -> Self {
        Self {
            id: id.into(),
            strategy: Strategy::default(),
            members,
            health_check: None,
            passive: PassiveSpec::default(),
            pool: PoolSettings::default(),
            timeouts: Timeouts::default(),
            tls: UpstreamTls::default(),
            max_request_body_bytes: None,
        }
    }

    /// Every rule a group must follow, whichever source it came from. Reports every
    /// problem, not just the first.
    pub fn validate(&self) -> Result<(), Vec<SpecError>> {
        let mut errors = Vec::new();
        let mut err = |field: Field, message: String| errors.push(SpecError { field, message });

        if let Members::Listed(backends) = &self.members {
            if backends.is_empty() {
                err(Field::Backends, "at least one backend is required".into());
            } else if backends.len() > MAX_BACKENDS {
                err(Field::Backends, format!("{} backends; at most {MAX_BACKENDS} are allowed", backends.len()));
            } else if backends.iter().all(|b| b.weight == 0) {
                err(Field::Backends, "every weight is 0, so no backend would ever be picked".into());
            }
            for (i, b) in backends.iter().enumerate().take(MAX_BACKENDS) {
                if let Err(e) = BackendUrl::parse(&b.url) {
                    err(Field::BackendUrl(i), e.to_string());
                }
                if b.weight > MAX_WEIGHT {
                    err(Field::BackendWeight(i), format!("must be between 0 and {MAX_WEIGHT}"));
                }
            }
        }

        if let Some(hc) = &self.health_check {
            if hc.interval < MIN_HEALTH_INTERVAL {
                err(Field::HealthInterval, format!("must be at least {}", millis(MIN_HEALTH_INTERVAL)));
            }
            positive(&mut err, Field::HealthTimeout, hc.timeout);
            for (field, value) in
                [(Field::HealthyThreshold, hc.healthy_threshold), (Field::UnhealthyThreshold, hc.unhealthy_threshold)]
            {
                if !(1..=MAX_THRESHOLD).contains(&value) {
                    err(field, format!("must be between 1 and {MAX_THRESHOLD}"));
                }
            }
            if !hc.path.starts_with('/') {
                err(Field::HealthPath, format!("{:?} must start with '/'", hc.path));
            }
            if let Err(e) = parse_status_range(&hc.expected_status) {
                err(Field::HealthExpectedStatus, e);
            }
        }

        let p = &self.passive.check;
        if !(1..=MAX_FAILURES).contains(&p.max_failures) {
            err(Field::PassiveMaxFailures, format!("must be between 1 and {MAX_FAILURES}"));
        }
        positive(&mut err, Field::PassiveWindow, p.window);
        positive(&mut err, Field::PassiveCooldown, p.cooldown);
        if !(1..=100).contains(&self.passive.max_ejection_percent) {
            err(Field::PassiveMaxEjectionPercent, "must be between 1 and 100".into());
        }

        if self.pool.max_idle_connections > MAX_POOL_SIZE {
            err(Field::PoolMaxIdle, format!("must be between 0 and {MAX_POOL_SIZE}"));
        }
        if !(1..=MAX_POOL_SIZE).contains(&self.pool.max_connections_per_host) {
            err(Field::PoolMaxPerHost, format!("must be between 1 and {MAX_POOL_SIZE}"));
        }
        if self.max_request_body_bytes == Some(0) {
            err(Field::MaxRequestBody, "must be at least 1".into());
        }
        if self.pool.max_pending_requests > MAX_POOL_SIZE {
            err(Field::PoolMaxPending, format!("must be between 0 and {MAX_POOL_SIZE}"));
        }
        positive(&mut err, Field::PoolIdleTimeout, self.pool.idle_timeout);

        for (field, d) in [
            (Field::TimeoutConnect, self.timeouts.connect),
            (Field::TimeoutResponseHeaders, self.timeouts.response_headers),
            (Field::TimeoutPoolWait, self.timeouts.pool_wait),
            (Field::TimeoutIdle, self.timeouts.idle),
        ] {
            positive(&mut err, field, d);
        }

        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// Validates, then builds the runtime group, taking endpoints from `registry` (so their
    /// health and pools survive a rebuild). Setting up TLS can still fail (a CA bundle that
    /// cannot be read): that is reported on `Field::Tls`.
    pub fn compile(&self, registry: &EndpointRegistry) -> Result<BackendGroup, Vec<SpecError>> {
        self.validate()?;
        let members: Vec<(BackendUrl, u32)> = match &self.members {
            Members::Listed(backends) => backends
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    BackendUrl::parse(&b.url)
                        .map(|u| (u, b.weight))
                        .map_err(|e| vec![SpecError { field: Field::BackendUrl(i), message: e.to_string() }])
                })
                .collect::<Result<_, _>>()?,
            Members::Discovered(urls) => urls.iter().map(|u| (u.clone(), 1)).collect(),
        };
        let mut errors = Vec::new();
        let mut endpoints = Vec::with_capacity(members.len());
        for (url, weight) in members {
            let spec = EndpointSpec {
                url,
                pool: self.pool.clone(),
                connect_timeout: self.timeouts.connect,
                tls: self.tls.clone(),
            };
            match registry.endpoint(&spec) {
                Ok(ep) => endpoints.push((ep, weight)),
                Err(e) => errors.push(SpecError { field: Field::Tls, message: e.to_string() }),
            }
        }
        if !errors.is_empty() {
            // One unreadable bundle fails every endpoint the same way: say it once.
            errors.dedup();
            return Err(errors);
        }
        let health_check = self.health_check.as_ref().filter(|hc| hc.enabled).map(|hc| HealthCheck {
            interval: hc.interval,
            timeout: hc.timeout,
            healthy_threshold: hc.healthy_threshold,
            unhealthy_threshold: hc.unhealthy_threshold,
            path: hc.path.clone(),
            // Checked by validate above.
            expected_status: parse_status_range(&hc.expected_status).unwrap_or((200, 399)),
        });
        let passive = self.passive.enabled.then(|| self.passive.check.clone());
        Ok(BackendGroup::new(self.id.clone(), self.strategy, self.timeouts, endpoints)
            .with_health_check(health_check)
            .with_passive(passive)
            .with_max_request_body(self.max_request_body_bytes)
            .with_max_ejection_percent(self.passive.max_ejection_percent))
    }
}

fn positive(err: &mut impl FnMut(Field, String), field: Field, d: Duration) {
    if d.is_zero() {
        err(field, "must be greater than 0".into());
    }
}

/// A duration as the CRD's CEL rules and messages write it (`100ms`).
pub fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(urls: &[(&str, u32)]) -> GroupSpec {
        GroupSpec::new(
            "g",
            Members::Listed(urls.iter().map(|(u, w)| BackendSpec { url: u.to_string(), weight: *w }).collect()),
        )
    }

    fn fields(spec: &GroupSpec) -> Vec<Field> {
        spec.validate().err().unwrap_or_default().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn defaults_are_valid_and_compile_with_passive_checks_on() {
        let spec = listed(&[("http://127.0.0.1:1", 1)]);
        assert_eq!(fields(&spec), vec![]);
        let group = spec.compile(&EndpointRegistry::default()).unwrap();
        assert_eq!(group.passive.as_deref(), Some(&PassiveCheck::default()));
        assert!(group.health_check.is_none());
        assert_eq!(*group.timeouts, Timeouts::default());
    }

    #[test]
    fn a_zero_interval_and_zero_thresholds_are_refused_not_clamped() {
        let mut spec = listed(&[("http://127.0.0.1:1", 1)]);
        spec.health_check = Some(HealthCheckSpec {
            interval: Duration::ZERO,
            healthy_threshold: 0,
            unhealthy_threshold: MAX_THRESHOLD + 1,
            ..HealthCheckSpec::default()
        });
        assert_eq!(fields(&spec), vec![Field::HealthInterval, Field::HealthyThreshold, Field::UnhealthyThreshold]);
        let errors = spec.compile(&EndpointRegistry::default()).unwrap_err();
        assert_eq!(errors[0].to_string(), "health_check.interval: must be at least 100ms");
    }

    #[test]
    fn the_interval_bound_is_inclusive() {
        let mut spec = listed(&[("http://127.0.0.1:1", 1)]);
        let check = |interval| HealthCheckSpec { interval, ..HealthCheckSpec::default() };
        spec.health_check = Some(check(MIN_HEALTH_INTERVAL));
        assert_eq!(fields(&spec), vec![]);
        spec.health_check = Some(check(MIN_HEALTH_INTERVAL - Duration::from_millis(1)));
        assert_eq!(fields(&spec), vec![Field::HealthInterval]);
    }

    #[test]
    fn backend_lists_are_bounded_and_need_a_weight() {
        assert_eq!(fields(&listed(&[])), vec![Field::Backends]);
        assert_eq!(fields(&listed(&[("http://a:1", 0), ("http://b:1", 0)])), vec![Field::Backends]);
        assert_eq!(fields(&listed(&[("http://a:1", 0), ("http://b:1", 1)])), vec![]);
        let many: Vec<(String, u32)> =
            (0..=MAX_BACKENDS).map(|i| (format!("http://10.0.0.1:{}", 1000 + i), 1)).collect();
        let many: Vec<(&str, u32)> = many.iter().map(|(u, w)| (u.as_str(), *w)).collect();
        assert_eq!(fields(&listed(&many)), vec![Field::Backends]);
        assert_eq!(fields(&listed(&many[..MAX_BACKENDS])), vec![]);
        assert_eq!(
            fields(&listed(&[("ftp://a:1", 1), ("http://b:1", MAX_WEIGHT + 1)])),
            vec![Field::BackendUrl(0), Field::BackendWeight(1)]
        );
    }

    #[test]
    fn discovered_members_may_be_empty() {
        let spec = GroupSpec::new("service:ns/web:80", Members::Discovered(vec![]));
        assert_eq!(spec.compile(&EndpointRegistry::default()).unwrap().members().count(), 0);
    }

    #[test]
    fn zero_durations_and_limits_name_their_field() {
        let mut spec = listed(&[("http://127.0.0.1:1", 1)]);
        spec.passive.check = PassiveCheck { max_failures: 0, window: Duration::ZERO, cooldown: Duration::ZERO };
        spec.pool.max_connections_per_host = 0;
        spec.pool.idle_timeout = Duration::ZERO;
        spec.timeouts.pool_wait = Duration::ZERO;
        assert_eq!(
            fields(&spec),
            vec![
                Field::PassiveMaxFailures,
                Field::PassiveWindow,
                Field::PassiveCooldown,
                Field::PoolMaxPerHost,
                Field::PoolIdleTimeout,
                Field::TimeoutPoolWait
            ]
        );
    }

    #[test]
    fn a_disabled_check_is_still_validated_but_not_run() {
        let mut spec = listed(&[("http://127.0.0.1:1", 1)]);
        spec.health_check = Some(HealthCheckSpec { enabled: false, ..HealthCheckSpec::default() });
        spec.passive.enabled = false;
        let group = spec.compile(&EndpointRegistry::default()).unwrap();
        assert!(group.health_check.is_none() && group.passive.is_none());
        spec.health_check = Some(HealthCheckSpec { enabled: false, path: "health".into(), ..Default::default() });
        assert_eq!(fields(&spec), vec![Field::HealthPath]);
    }

    #[test]
    fn settings_reach_the_runtime_group() {
        let mut spec = listed(&[("http://127.0.0.1:1", 7)]);
        spec.strategy = Strategy::Random;
        spec.timeouts.response_headers = Duration::from_secs(3);
        spec.health_check = Some(HealthCheckSpec { expected_status: "204".into(), ..Default::default() });
        spec.passive.check.cooldown = Duration::from_secs(2);
        let group = spec.compile(&EndpointRegistry::default()).unwrap();
        assert_eq!(group.strategy, Strategy::Random);
        assert_eq!(group.timeouts.response_headers, Duration::from_secs(3));
        assert_eq!(group.health_check.as_ref().map(|h| h.expected_status), Some((204, 204)));
        assert_eq!(group.passive.as_ref().map(|p| p.cooldown), Some(Duration::from_secs(2)));
        assert_eq!(group.members().map(|(_, w)| w).collect::<Vec<_>>(), vec![7]);
    }

    #[test]
    fn field_names_are_the_yaml_paths() {
        assert_eq!(Field::BackendWeight(2).to_string(), "backends[2].weight");
        assert_eq!(Field::TimeoutResponseHeaders.to_string(), "timeouts.response_headers");
    }
}
