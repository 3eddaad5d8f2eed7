//! What the leader writes back: BackendGroup `.status` (per-backend health, healthy/total,
//! Ready condition), Ingress `status.loadBalancer`, and Events for skipped objects and
//! health transitions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};

use super::crd::{BackendGroup as BackendGroupCr, BackendGroupStatus, BackendStatus};
use super::translate::{GroupStatusSource, Problem};
use crate::upstream::Transition;

/// How often status is refreshed even when nothing changed (for `lastCheck`).
const REFRESH: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_secs(2);

/// Where Ingresses say they can be reached.
#[derive(Debug, Clone)]
pub enum Publish {
    None,
    Address(String),
    /// `namespace/name` of the Service in front of the controller.
    Service(String, String),
}

/// What the latest translation produced, for the status writer.
#[derive(Default)]
pub struct Feed {
    pub problems: Vec<Problem>,
    pub groups: Vec<GroupStatusSource>,
    /// Served Ingresses with their current `status.loadBalancer` addresses.
    pub ingresses: Vec<(String, String, Vec<String>)>,
    /// Ingresses not served (any more) that still show load-balancer addresses.
    pub released: Vec<(String, String, Vec<String>)>,
    /// BackendGroup objects that failed to compile: (namespace, name, generation).
    pub invalid_groups: Vec<(String, String, Option<i64>, String)>,
}

/// Runs forever; acts only while `leading` is true.
pub async fn run(
    client: Client,
    reporter: Reporter,
    publish: Publish,
    mut leading: watch::Receiver<bool>,
    mut feed: watch::Receiver<Arc<Feed>>,
    mut transitions: mpsc::UnboundedReceiver<Transition>,
) {
    let recorder = Recorder::new(client.clone(), reporter);
    let mut writer = Writer { client, recorder, publish, written: HashMap::new(), reported: HashSet::new() };
    let mut tick = tokio::time::interval(TICK);
    loop {
        let mut transition = None;
        tokio::select! {
            _ = tick.tick() => {}
            r = feed.changed() => if r.is_err() { return },
            r = leading.changed() => if r.is_err() { return },
            t = transitions.recv() => match t { Some(t) => transition = Some(t), None => return },
        }
        if !*leading.borrow() {
            writer.written.clear();
            continue;
        }
        let current = feed.borrow().clone();
        if let Some(t) = transition {
            writer.health_event(&current, &t).await;
        }
        writer.problem_events(&current).await;
        writer.group_statuses(&current).await;
        writer.ingress_statuses(&current).await;
    }
}

struct Writer {
    client: Client,
    recorder: Recorder,
    publish: Publish,
    /// Last status written per object, and when.
    written: HashMap<(String, String), (BackendGroupStatus, Instant)>,
    /// Problems already reported as Events.
    reported: HashSet<Problem>,
}

fn group_ref(ns: &str, name: &str, uid: Option<&String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("quic-ingress.dev/v1alpha1".into()),
        kind: Some("BackendGroup".into()),
        namespace: Some(ns.into()),
        name: Some(name.into()),
        uid: uid.cloned(),
        ..Default::default()
    }
}

fn rfc3339(t: SystemTime) -> Option<String> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    k8s_openapi::jiff::Timestamp::from_second(d.as_secs() as i64).ok().map(|ts| ts.to_string())
}

/// The status of one compiled group (pure, so it is tested directly).
pub fn group_status(src: &GroupStatusSource, previous: &[Condition]) -> BackendGroupStatus {
    let backends: Vec<BackendStatus> = src
        .group
        .members()
        .map(|(ep, _)| {
            let record = ep.health_record();
            BackendStatus {
                address: ep.address.clone(),
                healthy: ep.is_healthy(),
                last_check: record.last_check.and_then(rfc3339),
                last_error: record.last_error,
                consecutive_failures: record.consecutive_failures,
            }
        })
        .collect();
    let healthy = backends.iter().filter(|b| b.healthy).count() as u32;
    let total = backends.len() as u32;
    let (status, reason, message) = match (total, healthy) {
        (0, _) => ("False", "NoEndpoints", "the group has no endpoints".to_string()),
        (_, 0) => ("False", "NoHealthyBackends", format!("0 of {total} backends are healthy")),
        _ => ("True", "BackendsHealthy", format!("{healthy} of {total} backends are healthy")),
    };
    BackendGroupStatus {
        observed_generation: src.generation,
        healthy_backends: healthy,
        total_backends: total,
        healthy: format!("{healthy}/{total}"),
        backends,
        conditions: vec![ready_condition(status, reason, message, src.generation, previous)],
    }
}

fn ready_condition(
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
) -> Condition {
    // The transition time moves only when the status does.
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Status equality that ignores `lastCheck` and condition times, which change on every probe.
fn same_status(a: &BackendGroupStatus, b: &BackendGroupStatus) -> bool {
    let strip = |s: &BackendGroupStatus| {
        let mut s = s.clone();
        s.backends.iter_mut().for_each(|b| b.last_check = None);
        s.conditions.iter_mut().for_each(|c| c.last_transition_time = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        s
    };
    strip(a) == strip(b)
}

impl Writer {
    async fn patch_group_status(&mut self, ns: &str, name: &str, status: BackendGroupStatus) {
        let key = (ns.to_string(), name.to_string());
        if let Some((prev, at)) = self.written.get(&key)
            && same_status(prev, &status)
            && at.elapsed() < REFRESH
        {
            return;
        }
        let api: Api<BackendGroupCr> = Api::namespaced(self.client.clone(), ns);
        let patch = serde_json::json!({ "status": status });
        match api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                self.written.insert(key, (status, Instant::now()));
            }
            Err(e) => tracing::warn!(namespace = ns, name, error = %e, "cannot write BackendGroup status"),
        }
    }

    async fn group_statuses(&mut self, feed: &Feed) {
        for src in &feed.groups {
            let previous = self
                .written
                .get(&(src.namespace.clone(), src.name.clone()))
                .map(|(s, _)| s.conditions.clone())
                .unwrap_or_default();
            let status = group_status(src, &previous);
            self.patch_group_status(&src.namespace, &src.name, status).await;
        }
        for (ns, name, generation, message) in &feed.invalid_groups {
            let status = BackendGroupStatus {
                observed_generation: *generation,
                healthy: "0/0".into(),
                conditions: vec![ready_condition("False", "InvalidBackendGroup", message.clone(), *generation, &[])],
                ..Default::default()
            };
            self.patch_group_status(ns, name, status).await;
        }
    }

    async fn problem_events(&mut self, feed: &Feed) {
        let current: HashSet<Problem> = feed.problems.iter().cloned().collect();
        for p in feed.problems.iter().filter(|p| !self.reported.contains(*p)) {
            let reference = match p.kind {
                "BackendGroup" => group_ref(&p.namespace, &p.name, p.uid.as_ref()),
                kind => ObjectReference {
                    api_version: Some("networking.k8s.io/v1".into()),
                    kind: Some(kind.into()),
                    namespace: Some(p.namespace.clone()),
                    name: Some(p.name.clone()),
                    uid: p.uid.clone(),
                    ..Default::default()
                },
            };
            self.publish(&reference, EventType::Warning, p.reason, &p.message).await;
        }
        self.reported = current;
    }

    async fn health_event(&self, feed: &Feed, t: &Transition) {
        let (reason, kind) =
            if t.healthy { ("BackendHealthy", EventType::Normal) } else { ("BackendUnhealthy", EventType::Warning) };
        let note = format!(
            "backend {} is {}: {}",
            t.endpoint.address,
            if t.healthy { "healthy" } else { "unhealthy" },
            t.reason
        );
        for src in &feed.groups {
            if src.group.members().any(|(ep, _)| Arc::ptr_eq(ep, &t.endpoint)) {
                self.publish(&group_ref(&src.namespace, &src.name, src.uid.as_ref()), kind, reason, &note).await;
            }
        }
    }

    async fn publish(&self, reference: &ObjectReference, type_: EventType, reason: &str, note: &str) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, reference).await {
            tracing::warn!(reason, error = %e, "cannot publish an Event");
        }
    }

    async fn ingress_statuses(&self, feed: &Feed) {
        let Some(addresses) = self.published_addresses().await else { return };
        for (ns, name, current) in &feed.ingresses {
            if *current == addresses {
                continue;
            }
            let ingress: Vec<IngressLoadBalancerIngress> = addresses
                .iter()
                .map(|a| {
                    if a.parse::<std::net::IpAddr>().is_ok() {
                        IngressLoadBalancerIngress { ip: Some(a.clone()), ..Default::default() }
                    } else {
                        IngressLoadBalancerIngress { hostname: Some(a.clone()), ..Default::default() }
                    }
                })
                .collect();
            let patch = serde_json::json!({ "status": { "loadBalancer": { "ingress": ingress } } });
            self.patch_ingress_status(ns, name, &patch).await;
        }
        // An Ingress that moved to another class (or lost its class) keeps no address of
        // ours; one showing another controller's addresses is left alone.
        for (ns, name, current) in &feed.released {
            if *current == addresses {
                let patch = serde_json::json!({ "status": { "loadBalancer": { "ingress": null } } });
                self.patch_ingress_status(ns, name, &patch).await;
            }
        }
    }

    async fn patch_ingress_status(&self, ns: &str, name: &str, patch: &serde_json::Value) {
        let api: Api<Ingress> = Api::namespaced(self.client.clone(), ns);
        if let Err(e) = api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch)).await {
            tracing::warn!(namespace = %ns, name = %name, error = %e, "cannot write Ingress status");
        }
    }

    /// The addresses to publish, or `None` when nothing is to be published.
    async fn published_addresses(&self) -> Option<Vec<String>> {
        match &self.publish {
            Publish::None => None,
            Publish::Address(a) => Some(a.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()),
            Publish::Service(ns, name) => {
                let svc = Api::<Service>::namespaced(self.client.clone(), ns).get_opt(name).await.ok()??;
                let lb: Vec<String> = svc
                    .status
                    .and_then(|s| s.load_balancer)
                    .and_then(|lb| lb.ingress)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|i| i.ip.or(i.hostname))
                    .collect();
                if !lb.is_empty() {
                    return Some(lb);
                }
                let spec = svc.spec?;
                let external = spec.external_ips.unwrap_or_default();
                if !external.is_empty() {
                    return Some(external);
                }
                spec.cluster_ip.filter(|ip| ip != "None").map(|ip| vec![ip])
            }
        }
    }
}

/// The `status.loadBalancer` addresses an Ingress shows now.
pub fn current_lb(ingress: &Ingress) -> Vec<String> {
    ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|v| v.iter().filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone())).collect())
        .unwrap_or_default()
}
