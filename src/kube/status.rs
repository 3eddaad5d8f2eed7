//! What the leader writes back: BackendGroup `.status` (per-backend health, healthy/total,
//! Ready condition), Ingress `status.loadBalancer`, and Events for skipped objects and
//! health transitions. The published Service's address is watched, not polled.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};

use super::crd::{BackendGroup as BackendGroupCr, BackendGroupStatus, BackendStatus};
use super::records::IngressRecord;
use super::translate::{GroupStatusSource, Problem, RefusedGroup};
use super::watches::{Board, WatchBackoff};
use crate::upstream::Transition;

/// How often status is refreshed even when nothing changed (for `lastCheck`).
const REFRESH: Duration = Duration::from_secs(30);
/// How often health is compared with the status written (in memory: no API call unless
/// something differs).
const TICK: Duration = Duration::from_secs(2);
/// The board's name for the published Service's watch.
pub const PUBLISHED_SERVICE: &str = "PublishedService";

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
    /// Served Ingresses, `(namespace, name)`; their current status is read from the
    /// store when written, since status changes do not rebuild (and so refresh no feed).
    pub served: Vec<(String, String)>,
    /// Ingresses of the same translation not served: ours to clear if they show our address.
    pub unserved: Vec<(String, String)>,
    /// BackendGroup objects that could not be built (invalid, or an address refused).
    pub invalid_groups: Vec<RefusedGroup>,
    /// The Gateway API model and outcomes, for GatewayClass, Gateway and HTTPRoute status.
    pub gateway: Arc<super::gateway::GatewayTranslation>,
}

/// Runs forever; acts only while `leading` is true.
/// Where the status writer reads what it needs besides the feed.
pub struct Sources {
    /// The addresses to publish (`None`: nothing to publish), kept current by
    /// [`follow_published`].
    pub published: watch::Receiver<Option<Vec<String>>>,
    /// The Ingress reflector's store, for their current `status.loadBalancer`.
    pub ingresses: super::watches::ScopedStore<IngressRecord>,
    /// The Gateway API stores, for the status objects show now.
    pub gateway: super::gateway::watches::GatewayStores,
    /// With per-Gateway addresses: each Gateway's (its Service's), kept current by
    /// `gateway::services`; `None`: every Gateway shows `published`.
    pub gateway_addresses: Option<watch::Receiver<super::gateway::services::Addresses>>,
}

/// Runs forever; acts only while `leading` is true.
pub async fn run(
    client: Client,
    reporter: Reporter,
    sources: Sources,
    mut leading: watch::Receiver<bool>,
    mut feed: watch::Receiver<Arc<Feed>>,
    mut transitions: mpsc::UnboundedReceiver<Transition>,
) {
    let recorder = Recorder::new(client.clone(), reporter);
    let mut published = sources.published.clone();
    let mut gateway_addresses = sources.gateway_addresses.clone();
    let mut writer = Writer {
        client,
        recorder,
        sources,
        written: HashMap::new(),
        lb_written: HashMap::new(),
        reported: HashSet::new(),
        gateway: super::gateway::status::Writer::default(),
    };
    let mut tick = tokio::time::interval(TICK);
    // A fixed address (or none) has no sender left: its value never changes.
    let mut published_follows = true;
    loop {
        let mut transition = None;
        tokio::select! {
            _ = tick.tick() => {}
            r = feed.changed() => if r.is_err() { return },
            r = leading.changed() => if r.is_err() { return },
            r = published.changed(), if published_follows => published_follows = r.is_ok(),
            r = changed_or_never(gateway_addresses.as_mut()) => if r.is_err() { gateway_addresses = None },
            t = transitions.recv() => match t { Some(t) => transition = Some(t), None => return },
        }
        if !*leading.borrow() {
            writer.written.clear();
            writer.lb_written.clear();
            writer.gateway.forget();
            continue;
        }
        let current = feed.borrow().clone();
        if let Some(t) = transition {
            writer.health_event(&current, &t).await;
        }
        writer.problem_events(&current).await;
        writer.group_statuses(&current).await;
        writer.ingress_statuses(&current).await;
        let shared = writer.sources.published.borrow().clone().unwrap_or_default();
        let per_gateway = writer.sources.gateway_addresses.as_ref().map(|rx| rx.borrow().clone());
        let addresses = super::gateway::status::GatewayAddresses { shared, per_gateway };
        let Writer { client, sources, gateway, .. } = &mut writer;
        gateway.write(client, &current.gateway, &sources.gateway, &addresses).await;
    }
}

/// A change of `rx`, or never when there is none to follow.
async fn changed_or_never<T>(rx: Option<&mut watch::Receiver<T>>) -> Result<(), watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

struct Writer {
    client: Client,
    recorder: Recorder,
    sources: Sources,
    /// Last status written per object, and when.
    written: HashMap<(String, String), (BackendGroupStatus, Instant)>,
    /// Load-balancer addresses last written per Ingress, with the resourceVersion the store
    /// showed then: until the store has seen the write, it is not made again.
    lb_written: HashMap<(String, String), (Vec<String>, Option<String>)>,
    /// Problems already reported as Events.
    reported: HashSet<Problem>,
    gateway: super::gateway::status::Writer,
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
                // The details (which could map another tenant's network) stay in the log.
                last_error: record.last_error.as_deref().map(|e| generic_probe_error(e).to_string()),
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
    let mut conditions = vec![ready_condition("Ready", status, reason, message, src.generation, previous)];
    if src.has_routes {
        let (status, reason, message) = match src.route_problems.as_slice() {
            [] => ("True", "RoutesAccepted", "every route is served".to_string()),
            [(reason, _), ..] => {
                ("False", *reason, src.route_problems.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; "))
            }
        };
        conditions.push(ready_condition("Accepted", status, reason, message, src.generation, previous));
    }
    BackendGroupStatus {
        observed_generation: src.generation,
        healthy_backends: healthy,
        total_backends: total,
        healthy: format!("{healthy}/{total}"),
        backends,
        conditions,
    }
}

/// What a tenant is told about a failed probe: the kind of failure only. The full error
/// ("No route to host", a resolver's message, a certificate's names) would tell whoever
/// can read the status what lies behind an address, a port-scan oracle.
pub fn generic_probe_error(detail: &str) -> &'static str {
    let d = detail.to_ascii_lowercase();
    if let Some(code) = d.strip_prefix("status ")
        && let Some(known) = STATUS_TEXTS.iter().find(|s| s.ends_with(code.trim()))
    {
        return known;
    }
    if d.contains("timed out") || d.contains("timeout") || d.contains("deadline") {
        "timeout"
    } else if d.contains("refused") {
        "connection refused"
    } else if d.contains("tls") || d.contains("certificate") || d.contains("handshake") || d.contains("alert") {
        "TLS error"
    } else if d.starts_with("status ") {
        "unexpected status"
    } else if d.contains("reset") || d.contains("closed") || d.contains("broken pipe") || d.contains("eof") {
        "connection closed"
    } else {
        "connection failed"
    }
}

/// Statuses shown as they are: what the backend answered is the tenant's own business.
const STATUS_TEXTS: &[&str] = &[
    "status 300",
    "status 301",
    "status 302",
    "status 303",
    "status 304",
    "status 307",
    "status 308",
    "status 400",
    "status 401",
    "status 403",
    "status 404",
    "status 405",
    "status 408",
    "status 409",
    "status 410",
    "status 421",
    "status 425",
    "status 429",
    "status 500",
    "status 501",
    "status 502",
    "status 503",
    "status 504",
];

fn ready_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
) -> Condition {
    // The transition time moves only when the status does.
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: type_.into(),
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
        for g in &feed.invalid_groups {
            let condition = ready_condition("Ready", "False", g.reason, g.message.clone(), g.generation, &[]);
            let status = BackendGroupStatus {
                observed_generation: g.generation,
                healthy: "0/0".into(),
                conditions: vec![condition],
                ..Default::default()
            };
            self.patch_group_status(&g.namespace, &g.name, status).await;
        }
    }

    async fn problem_events(&mut self, feed: &Feed) {
        let current: HashSet<Problem> = feed.problems.iter().cloned().collect();
        for p in feed.problems.iter().filter(|p| !self.reported.contains(*p)) {
            let reference = match p.kind {
                "BackendGroup" => group_ref(&p.namespace, &p.name, p.uid.as_ref()),
                kind => ObjectReference {
                    api_version: Some(
                        match kind {
                            "Gateway" | "HTTPRoute" => "gateway.networking.k8s.io/v1",
                            _ => "networking.k8s.io/v1",
                        }
                        .into(),
                    ),
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
        // Probe errors are made generic as in status; the endpoint logged the details.
        // The health checkers' own summaries ("3 consecutive failed requests") stay.
        let ours =
            t.reason.contains("consecutive") || t.reason == "a trial request succeeded" || t.reason == "failed checks";
        let why = if ours { t.reason.as_str() } else { generic_probe_error(&t.reason) };
        let note =
            format!("backend {} is {}: {why}", t.endpoint.address, if t.healthy { "healthy" } else { "unhealthy" });
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

    async fn ingress_statuses(&mut self, feed: &Feed) {
        let Some(addresses) = self.sources.published.borrow().clone() else { return };
        for (ns, name) in &feed.served {
            let Some(ingress) = self.sources.ingresses.get(ns, name) else { continue };
            if current_lb(&ingress) == addresses {
                continue;
            }
            let lb: Vec<IngressLoadBalancerIngress> = addresses
                .iter()
                .map(|a| {
                    if a.parse::<std::net::IpAddr>().is_ok() {
                        IngressLoadBalancerIngress { ip: Some(a.clone()), ..Default::default() }
                    } else {
                        IngressLoadBalancerIngress { hostname: Some(a.clone()), ..Default::default() }
                    }
                })
                .collect();
            let patch = serde_json::json!({ "status": { "loadBalancer": { "ingress": lb } } });
            self.patch_ingress_status(&ingress, &addresses, &patch).await;
        }
        // An Ingress that moved to another class (or lost its class) keeps no address
        // this process wrote; one showing another controller's addresses is left alone,
        // even when they are ours too (two classes of quic-ingress on the same nodes
        // publish the same node addresses, and each clearing the other's would never end).
        for (ns, name) in &feed.unserved {
            let wrote = self.lb_written.get(&(ns.clone(), name.clone())).is_some_and(|(target, _)| !target.is_empty());
            if !wrote {
                continue;
            }
            let Some(ingress) = self.sources.ingresses.get(ns, name) else { continue };
            let current = current_lb(&ingress);
            if !current.is_empty() && current == addresses {
                let patch = serde_json::json!({ "status": { "loadBalancer": { "ingress": null } } });
                self.patch_ingress_status(&ingress, &[], &patch).await;
            }
        }
        if self.lb_written.len() > feed.served.len() + feed.unserved.len() {
            let known: HashSet<&(String, String)> = feed.served.iter().chain(&feed.unserved).collect();
            self.lb_written.retain(|k, _| known.contains(k));
        }
    }

    /// Writes `status.loadBalancer` of `ingress` (as the store shows it) to `target`, unless
    /// that very write was made and the store has not caught up with it yet.
    async fn patch_ingress_status(&mut self, ingress: &IngressRecord, target: &[String], patch: &serde_json::Value) {
        let (ns, name) = (ingress.meta.namespace().to_string(), ingress.meta.name().to_string());
        let key = (ns.clone(), name.clone());
        let seen = (target.to_vec(), ingress.meta.version().map(|(_, rv)| rv.to_string()));
        if self.lb_written.get(&key) == Some(&seen) {
            return;
        }
        let api: Api<Ingress> = Api::namespaced(self.client.clone(), &ns);
        match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => {
                self.lb_written.insert(key, seen);
            }
            Err(e) => tracing::warn!(namespace = %ns, name = %name, error = %e, "cannot write Ingress status"),
        }
    }
}

/// Follows where Ingresses say they can be reached: a fixed address, nothing, or the
/// published Service's addresses, which are watched (one object, by field selector)
/// rather than fetched on every status pass.
pub fn follow_published(client: &Client, publish: &Publish, board: &Board) -> Published {
    let (tx, rx) = watch::channel(None);
    let (service_tx, service_rx) = watch::channel(None);
    match publish {
        Publish::None => {}
        Publish::Address(a) => {
            tx.send_replace(Some(a.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()));
        }
        Publish::Service(ns, name) => {
            board.register(PUBLISHED_SERVICE, false);
            let api = Api::<Service>::namespaced(client.clone(), ns);
            let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let stream = watcher(api, cfg).backoff(WatchBackoff::default());
            let board = board.clone();
            tokio::spawn(async move {
                futures::pin_mut!(stream);
                // The Service as the watch shows it, and during a relist as it is listed.
                let (mut current, mut relisted): (Option<Service>, Option<Service>) = (None, None);
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(watcher::Event::Init) => relisted = None,
                        Ok(watcher::Event::InitApply(svc)) => relisted = Some(svc),
                        Ok(watcher::Event::InitDone) => current = relisted.take(),
                        Ok(watcher::Event::Apply(svc)) => current = Some(svc),
                        Ok(watcher::Event::Delete(_)) => current = None,
                        Err(e) => {
                            tracing::debug!(error = %e, "watching the published Service failed; retrying");
                            board.failed(PUBLISHED_SERVICE, e.to_string());
                            continue;
                        }
                    }
                    board.ok(PUBLISHED_SERVICE, true);
                    let service = current.clone().map(Arc::new);
                    service_tx.send_if_modified(|old| {
                        let spec = |s: &Option<Arc<Service>>| s.as_ref().and_then(|s| s.spec.clone());
                        let changed = spec(old) != spec(&service);
                        *old = service;
                        changed
                    });
                    let addresses = current.as_ref().and_then(service_addresses);
                    tx.send_if_modified(|old| {
                        let changed = *old != addresses;
                        *old = addresses;
                        changed
                    });
                }
            });
        }
    }
    Published { addresses: rx, service: service_rx }
}

/// What [`follow_published`] follows.
pub struct Published {
    /// The addresses to publish (`None`: nothing to publish).
    pub addresses: watch::Receiver<Option<Vec<String>>>,
    /// The published Service itself (per-Gateway Services copy its type and selector).
    pub service: watch::Receiver<Option<Arc<Service>>>,
}

/// The addresses a Service in front of the controller offers: its load balancer's, else
/// its external IPs, else its cluster IP; `None` when it has none.
pub fn service_addresses(svc: &Service) -> Option<Vec<String>> {
    let lb: Vec<String> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
        .collect();
    if !lb.is_empty() {
        return Some(lb);
    }
    let spec = svc.spec.as_ref()?;
    let external = spec.external_ips.clone().unwrap_or_default();
    if !external.is_empty() {
        return Some(external);
    }
    spec.cluster_ip.clone().filter(|ip| ip != "None").map(|ip| vec![ip])
}

/// The `status.loadBalancer` addresses an Ingress shows now.
pub fn current_lb(ingress: &IngressRecord) -> Vec<String> {
    ingress.load_balancer.iter().map(|a| a.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus};

    fn svc(cluster_ip: Option<&str>, external: &[&str], lb: &[(&str, bool)]) -> Service {
        Service {
            spec: Some(ServiceSpec {
                cluster_ip: cluster_ip.map(str::to_string),
                external_ips: Some(external.iter().map(|s| s.to_string()).collect()),
                ..ServiceSpec::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(
                        lb.iter()
                            .map(|(a, is_ip)| LoadBalancerIngress {
                                ip: is_ip.then(|| a.to_string()),
                                hostname: (!is_ip).then(|| a.to_string()),
                                ..LoadBalancerIngress::default()
                            })
                            .collect(),
                    ),
                }),
                ..ServiceStatus::default()
            }),
            ..Service::default()
        }
    }

    #[test]
    fn probe_errors_in_status_say_only_what_kind_of_failure() {
        for (detail, shown) in [
            ("Connection refused (os error 111)", "connection refused"),
            ("timed out after 5s", "timeout"),
            ("connect timed out", "timeout"),
            ("invalid peer certificate: NotValidForName (names: db.internal, 10.3.4.5)", "TLS error"),
            ("received fatal alert: HandshakeFailure", "TLS error"),
            ("status 503", "status 503"),
            ("status 418", "unexpected status"),
            ("Connection reset by peer (os error 104)", "connection closed"),
            ("No route to host (os error 113)", "connection failed"),
            ("failed to lookup address information: Name or service not known", "connection failed"),
        ] {
            assert_eq!(generic_probe_error(detail), shown, "{detail}");
        }
    }

    #[test]
    fn the_published_address_prefers_the_load_balancer_then_external_ips_then_the_cluster_ip() {
        let both = svc(Some("10.0.0.5"), &["198.51.100.1"], &[("203.0.113.7", true), ("lb.example.com", false)]);
        assert_eq!(service_addresses(&both), Some(vec!["203.0.113.7".into(), "lb.example.com".into()]));
        assert_eq!(
            service_addresses(&svc(Some("10.0.0.5"), &["198.51.100.1"], &[])),
            Some(vec!["198.51.100.1".into()])
        );
        assert_eq!(service_addresses(&svc(Some("10.0.0.5"), &[], &[])), Some(vec!["10.0.0.5".into()]));
        assert_eq!(service_addresses(&svc(Some("None"), &[], &[])), None, "headless");
    }
}
