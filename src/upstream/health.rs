//! Active health checks: one probe task per distinct endpoint, following the route table
//! (new endpoints start being probed, removed ones stop). Results live on the endpoint, so
//! they survive table swaps; transitions are reported on a channel for logs and Events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Request;
use tokio::task::JoinHandle;

use super::{BackendGroup, Endpoint};
use crate::telemetry::metrics::Metrics;

/// How a group's endpoints are probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub path: String,
    /// Statuses that count as healthy, inclusive.
    pub expected_status: (u16, u16),
}

/// Parses an expected status range: `200-399` or a single status like `204`.
pub fn parse_status_range(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("invalid status range {text:?}: expected like \"200-399\" or \"204\"");
    let (lo, hi) = match text.trim().split_once('-') {
        Some((a, b)) => (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?),
        None => {
            let v: u16 = text.trim().parse().map_err(|_| bad())?;
            (v, v)
        }
    };
    if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            path: "/health".into(),
            expected_status: (200, 399),
        }
    }
}

/// The latest probe results of an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthRecord {
    pub last_check: Option<SystemTime>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
}

impl HealthRecord {
    /// Records one probe; returns the new health when the thresholds flip it.
    pub fn observe(
        &mut self,
        now: SystemTime,
        result: Result<(), String>,
        healthy: bool,
        check: &HealthCheck,
    ) -> Option<bool> {
        self.last_check = Some(now);
        match result {
            Ok(()) => {
                self.consecutive_successes += 1;
                self.consecutive_failures = 0;
                self.last_error = None;
                (!healthy && self.consecutive_successes >= check.healthy_threshold).then_some(true)
            }
            Err(e) => {
                self.consecutive_failures += 1;
                self.consecutive_successes = 0;
                self.last_error = Some(e);
                (healthy && self.consecutive_failures >= check.unhealthy_threshold).then_some(false)
            }
        }
    }
}

/// A change of an endpoint's health.
#[derive(Debug, Clone)]
pub struct Transition {
    pub endpoint: Arc<Endpoint>,
    pub healthy: bool,
    pub reason: String,
}

/// Keeps one probe task per endpoint that some group checks.
pub struct HealthChecker {
    tasks: HashMap<usize, (Arc<Endpoint>, HealthCheck, JoinHandle<()>)>,
    metrics: Arc<Metrics>,
}

impl HealthChecker {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { tasks: HashMap::new(), metrics }
    }

    /// Starts probing endpoints new to `groups` (those of the table being published) and
    /// stops those they no longer have. An endpoint shared by several groups is probed
    /// once, with the first group's settings.
    pub fn sync<'a>(&mut self, groups: impl IntoIterator<Item = &'a Arc<BackendGroup>>) {
        let mut wanted: HashMap<usize, (Arc<Endpoint>, HealthCheck)> = HashMap::new();
        for group in groups {
            let Some(check) = &group.health_check else { continue };
            for (ep, _) in group.members() {
                wanted.entry(Arc::as_ptr(ep) as usize).or_insert_with(|| (ep.clone(), HealthCheck::clone(check)));
            }
        }
        self.tasks.retain(|key, (_, check, task)| {
            let keep = wanted.get(key).is_some_and(|(_, c)| c == check);
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, (ep, check)) in wanted {
            if self.tasks.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(probe_loop(ep.clone(), check.clone(), self.metrics.clone()));
            self.tasks.insert(key, (ep, check, task));
        }
    }

    /// Number of endpoints being probed.
    pub fn probed(&self) -> usize {
        self.tasks.len()
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        for (_, _, task) in self.tasks.values() {
            task.abort();
        }
    }
}

async fn probe_loop(ep: Arc<Endpoint>, check: HealthCheck, metrics: Arc<Metrics>) {
    let healthy = metrics.health_checks.with_label_values(&["healthy"]);
    let unhealthy = metrics.health_checks.with_label_values(&["unhealthy"]);
    loop {
        let result = probe(&ep, &check).await;
        if result.is_ok() { &healthy } else { &unhealthy }.inc();
        if let Some(healthy) = ep.observe_probe(result, &check) {
            let reason = if healthy {
                format!("{} consecutive successful checks", check.healthy_threshold)
            } else {
                ep.health_record().last_error.unwrap_or_else(|| "failed checks".into())
            };
            ep.announce(healthy, reason);
        }
        // ±10% jitter keeps probes of many endpoints from lining up.
        let jitter = rand::random_range(0.9..1.1);
        tokio::time::sleep(check.interval.mul_f64(jitter)).await;
    }
}

async fn probe(ep: &Endpoint, check: &HealthCheck) -> Result<(), String> {
    let scheme = if ep.url.protocol.uses_tls() { "https" } else { "http" };
    let uri = format!("{scheme}://{}{}", ep.address, check.path);
    let req = Request::get(uri)
        .header(http::header::USER_AGENT, "quic-ingress-health-check")
        .body(crate::body::empty())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(check.timeout, ep.send(req)).await {
        Err(_) => Err(format!("timed out after {:?}", check.timeout)),
        Ok(Err(e)) => Err(short_error(&e)),
        Ok(Ok(resp)) if (check.expected_status.0..=check.expected_status.1).contains(&resp.status().as_u16()) => Ok(()),
        Ok(Ok(resp)) => Err(format!("status {}", resp.status().as_u16())),
    }
}

/// The innermost cause, which says what happened ("Connection refused (os error 111)").
fn short_error(e: &dyn std::error::Error) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_parse() {
        assert_eq!(parse_status_range("200-399"), Ok((200, 399)));
        assert_eq!(parse_status_range("204"), Ok((204, 204)));
        for bad in ["", "abc", "399-200", "99", "200-700"] {
            assert!(parse_status_range(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn thresholds_flip_health_only_after_enough_results() {
        let check = HealthCheck { healthy_threshold: 2, unhealthy_threshold: 3, ..HealthCheck::default() };
        let now = SystemTime::now();
        let mut r = HealthRecord::default();
        let mut healthy = true;
        let mut flips = Vec::new();
        let results = [false, false, true, false, false, false, false, true, true, true];
        for ok in results {
            let result = if ok { Ok(()) } else { Err("connection refused".to_string()) };
            if let Some(h) = r.observe(now, result, healthy, &check) {
                healthy = h;
                flips.push(h);
            }
        }
        assert_eq!(flips, vec![false, true], "down after 3 failures in a row, up after 2 successes");
        assert_eq!(r.consecutive_successes, 3);
        assert!(r.last_error.is_none());
    }
}
