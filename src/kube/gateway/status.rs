//! Gateway API status: what GatewayClasses, Gateways, routes and BackendTLSPolicies should say, computed
//! purely from the model and the translation's outcomes (conditions and reasons as the
//! spec names them, with observedGeneration), and the leader's writer, which patches an
//! object only when what it shows differs (condition times aside).

use std::collections::HashMap;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use super::api::{
    BackendTLSPolicy, GROUP, GRPCRouteStatus, Gateway, GatewayAddress, GatewayClass, GatewayClassStatus, GatewayStatus,
    HTTPRouteStatus, ListenerStatus, ParentRef, PolicyAncestorStatus, PolicyStatus, RouteParentStatus,
    SupportedFeature,
};
use super::backend_tls::PolicyImage;
use super::model::{GatewayImage, ObjectKey, RouteImage, RouteKind};
use super::watches::GatewayStores;
use super::{GatewayTranslation, ParentOutcome};

/// The features of the Gateway API conformance profiles we really serve, sorted as the
/// spec requires. Each extended feature joins this list when the data plane serves it.
pub const SUPPORTED_FEATURES: &[&str] = &[
    "BackendTLSPolicy",
    "BackendTLSPolicySANValidation",
    "GRPCRoute",
    "Gateway",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendTimeout",
    "HTTPRouteCORS",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteSchemeRedirect",
    "ReferenceGrant",
];

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    previous: &[Condition],
) -> Condition {
    let status = if ok { "True" } else { "False" };
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
        message: message.into().chars().take(32_000).collect(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// A condition good unless `refusal` says why not.
fn judged(
    type_: &str,
    good_reason: &str,
    good_message: &str,
    refusal: Option<&(&'static str, String)>,
    key: &ObjectKey,
    previous: &[Condition],
) -> Condition {
    match refusal {
        None => condition(type_, true, good_reason, good_message, key.generation, previous),
        Some((reason, message)) => condition(type_, false, reason, message.as_str(), key.generation, previous),
    }
}

pub fn class_status(
    key: &ObjectKey,
    refusal: Option<&(&'static str, String)>,
    previous: &[Condition],
) -> GatewayClassStatus {
    GatewayClassStatus {
        conditions: vec![judged("Accepted", "Accepted", "served by quic-ingress", refusal, key, previous)],
        supported_features: SUPPORTED_FEATURES.iter().map(|f| SupportedFeature { name: f.to_string() }).collect(),
    }
}

/// A Gateway's status: `addresses` are the controller's published ones.
pub fn gateway_status(
    t: &GatewayTranslation,
    g: usize,
    addresses: &[String],
    previous: &GatewayStatus,
) -> GatewayStatus {
    let gw: &GatewayImage = &t.model.gateways[g];
    let key = &gw.key;
    let attached = attached_routes(t, g);
    let listeners: Vec<ListenerStatus> = gw
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let prev =
                previous.listeners.iter().find(|p| p.name == l.name).map(|p| p.conditions.as_slice()).unwrap_or(&[]);
            let programmed = match (&gw.refusal, l.programmed()) {
                (Some((_, m)), _) => Err(("Invalid", format!("the Gateway is not accepted: {m}"))),
                (None, r) => r,
            };
            let conflicted = match &l.conflicted {
                None => condition("Conflicted", false, "NoConflicts", "no conflicts", key.generation, prev),
                Some((reason, m)) => condition("Conflicted", true, reason, m.as_str(), key.generation, prev),
            };
            ListenerStatus {
                name: l.name.clone(),
                supported_kinds: l.supported_kinds.clone(),
                attached_routes: attached.get(&i).copied().unwrap_or(0),
                conditions: vec![
                    judged("Accepted", "Accepted", "listener accepted", l.accepted.as_ref().err(), key, prev),
                    judged("ResolvedRefs", "ResolvedRefs", "references resolved", l.resolved.as_ref().err(), key, prev),
                    judged("Programmed", "Programmed", "serving", programmed.as_ref().err(), key, prev),
                    conflicted,
                ],
            }
        })
        .collect();
    let (accepted_count, total) = (gw.listeners.iter().filter(|l| l.accepted.is_ok()).count(), gw.listeners.len());
    let accepted = match (&gw.refusal, accepted_count) {
        (Some((reason, m)), _) => {
            condition("Accepted", false, reason, m.as_str(), key.generation, &previous.conditions)
        }
        (None, 0) => condition(
            "Accepted",
            false,
            "ListenersNotValid",
            "no listener is valid",
            key.generation,
            &previous.conditions,
        ),
        (None, n) if n < total => condition(
            "Accepted",
            true,
            "ListenersNotValid",
            format!("{} of {total} listeners are not valid", total - n),
            key.generation,
            &previous.conditions,
        ),
        _ => condition("Accepted", true, "Accepted", "accepted", key.generation, &previous.conditions),
    };
    let programmed_any = gw.refusal.is_none() && gw.listeners.iter().any(|l| l.programmed().is_ok());
    let programmed = if programmed_any {
        condition(
            "Programmed",
            true,
            "Programmed",
            "serving on the controller's listeners",
            key.generation,
            &previous.conditions,
        )
    } else {
        condition("Programmed", false, "Invalid", "no listener is programmed", key.generation, &previous.conditions)
    };
    GatewayStatus {
        addresses: addresses
            .iter()
            .map(|a| GatewayAddress {
                type_: Some(if a.parse::<IpAddr>().is_ok() { "IPAddress" } else { "Hostname" }.into()),
                value: a.clone(),
            })
            .collect(),
        conditions: vec![accepted, programmed],
        listeners,
    }
}

/// Routes attached to each listener of gateway `g`.
fn attached_routes(t: &GatewayTranslation, g: usize) -> HashMap<usize, i32> {
    let mut counts: HashMap<usize, i32> = HashMap::new();
    for route in &t.model.routes {
        let mut listeners: Vec<usize> = route
            .parents
            .iter()
            .filter(|p| p.gateway == g)
            .filter_map(|p| p.attached.as_ref().ok())
            .flatten()
            .map(|a| a.listener)
            .collect();
        listeners.sort_unstable();
        listeners.dedup();
        for l in listeners {
            *counts.entry(l).or_default() += 1;
        }
    }
    counts
}

/// Our entries of an HTTPRoute's (or GRPCRoute's) `status.parents`.
pub fn route_parents(
    route: &RouteImage,
    outcomes: &[ParentOutcome],
    previous: &HTTPRouteStatus,
) -> Vec<RouteParentStatus> {
    let key = &route.key;
    route
        .parents
        .iter()
        .zip(outcomes)
        .map(|(parent, outcome)| {
            let prev = previous
                .parents
                .iter()
                .find(|p| p.parent_ref == parent.parent_ref && p.controller_name == *parent.controller)
                .map(|p| p.conditions.as_slice())
                .unwrap_or(&[]);
            let dropped: Vec<(usize, &'static str, String)> = outcome
                .dropped
                .iter()
                .filter(|(r, _)| !outcome.served.contains(r))
                .map(|(r, (reason, messages))| (*r, *reason, format!("Rule {r}: {}", messages.join("; "))))
                .collect();
            let accepted = match &parent.attached {
                Err((reason, m)) => condition("Accepted", false, reason, m.as_str(), key.generation, prev),
                Ok(_) if !dropped.is_empty() && outcome.served.is_empty() => {
                    let message = dropped.iter().map(|(_, _, m)| m.as_str()).collect::<Vec<_>>().join(" | ");
                    condition("Accepted", false, dropped[0].1, message, key.generation, prev)
                }
                Ok(_) => condition("Accepted", true, "Accepted", "accepted", key.generation, prev),
            };
            let resolved = match route.unresolved.first() {
                None => condition("ResolvedRefs", true, "ResolvedRefs", "references resolved", key.generation, prev),
                Some((reason, _)) => {
                    let message = route.unresolved.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; ");
                    let message = format!("{message} (their share of requests is answered 500)");
                    condition("ResolvedRefs", false, reason, message, key.generation, prev)
                }
            };
            let mut conditions = vec![accepted, resolved];
            if parent.attached.is_ok() && !dropped.is_empty() && !outcome.served.is_empty() {
                let which = dropped.iter().map(|(_, _, m)| m.as_str()).collect::<Vec<_>>().join(" | ");
                conditions.push(condition(
                    "PartiallyInvalid",
                    true,
                    "UnsupportedValue",
                    format!("Dropped Rule(s): {which}"),
                    key.generation,
                    prev,
                ));
            }
            RouteParentStatus {
                parent_ref: parent.parent_ref.clone(),
                controller_name: parent.controller.to_string(),
                conditions,
            }
        })
        .collect()
}

/// The spec's limit on `status.ancestors` entries.
const MAX_ANCESTORS: usize = 16;

/// Our entries of a BackendTLSPolicy's `status.ancestors`: one per Gateway whose routes
/// reach a target, each with `Accepted` and `ResolvedRefs`.
pub fn policy_ancestors(
    policy: &PolicyImage,
    gateways: &[GatewayImage],
    previous: &PolicyStatus,
) -> Vec<PolicyAncestorStatus> {
    let key = &policy.key;
    policy
        .ancestors
        .iter()
        .filter_map(|g| gateways.get(*g))
        .take(MAX_ANCESTORS)
        .map(|gw| {
            let ancestor_ref = ParentRef {
                group: Some(GROUP.into()),
                kind: Some("Gateway".into()),
                namespace: Some(gw.key.namespace.clone()),
                name: gw.key.name.clone(),
                section_name: None,
                port: None,
            };
            let prev = previous
                .ancestors
                .iter()
                .find(|a| a.ancestor_ref == ancestor_ref && a.controller_name == *gw.controller)
                .map(|a| a.conditions.as_slice())
                .unwrap_or(&[]);
            PolicyAncestorStatus {
                ancestor_ref,
                controller_name: gw.controller.to_string(),
                conditions: vec![
                    judged("Accepted", "Accepted", "policy accepted", policy.accepted.as_ref().err(), key, prev),
                    judged(
                        "ResolvedRefs",
                        "ResolvedRefs",
                        "references resolved",
                        policy.resolved.as_ref().err(),
                        key,
                        prev,
                    ),
                ],
            }
        })
        .collect()
}

/// A policy's status with our ancestors (entries named `controller`) replaced by `mine`
/// (others' entries kept), with the previous one; `None` when it neither shows entries of
/// ours nor should.
fn merged_ancestors(
    previous: Option<&PolicyStatus>,
    mine: Option<Vec<PolicyAncestorStatus>>,
    controller: &str,
) -> Option<(PolicyStatus, PolicyStatus)> {
    let prev = previous.cloned().unwrap_or_default();
    let mine = mine.unwrap_or_default();
    if mine.is_empty() && !prev.ancestors.iter().any(|a| a.controller_name == controller) {
        return None;
    }
    let mut ancestors: Vec<PolicyAncestorStatus> =
        prev.ancestors.iter().filter(|a| a.controller_name != controller).cloned().collect();
    let room = MAX_ANCESTORS.saturating_sub(ancestors.len());
    ancestors.extend(mine.into_iter().take(room));
    Some((prev, PolicyStatus { ancestors }))
}

/// A status as JSON without condition times, for "did it change" comparisons.
pub fn comparable<T: Serialize>(status: &T) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("lastTransitionTime");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(status).unwrap_or_default();
    strip(&mut v);
    v
}

/// A route's status with our parents (entries named `controller`) replaced by `mine`
/// (others' entries are kept: another installation's, under its own controllerName), with
/// the previous one; `None` when it neither shows entries of ours nor should.
fn merged_parents(
    previous: Option<&HTTPRouteStatus>,
    mine: Option<Vec<RouteParentStatus>>,
    controller: &str,
) -> Option<(HTTPRouteStatus, GRPCRouteStatus)> {
    let prev = previous.cloned().unwrap_or_default();
    let mine = mine.unwrap_or_default();
    if mine.is_empty() && !prev.parents.iter().any(|p| p.controller_name == controller) {
        return None;
    }
    let mut parents: Vec<RouteParentStatus> =
        prev.parents.iter().filter(|p| p.controller_name != controller).cloned().collect();
    parents.extend(mine);
    Some((prev, HTTPRouteStatus { parents }))
}

// === The writer ===

/// Patches Gateway API status for the leader, remembering the last write per object (and
/// the resourceVersion it was made on) so a write is not repeated before the store shows it.
#[derive(Default)]
pub struct Writer {
    written: HashMap<(&'static str, String, String), (serde_json::Value, Option<String>)>,
    /// Per route: the resourceVersion it had and a hash of our entries for it when its
    /// status was last found right. The same pair again needs no comparison: with 10,000
    /// routes, comparing every status as JSON after every build took longer than the build.
    judged: HashMap<RouteKey, Judged>,
}

type RouteKey = (RouteKind, String, String);
type Judged = (Option<String>, u64);

/// Where Gateways say they are reached.
#[derive(Debug, Clone, Default)]
pub struct GatewayAddresses {
    /// The published addresses, every Gateway's when there are no per-Gateway ones.
    pub shared: Vec<String>,
    /// Per-Gateway addresses (`--gateway-addresses per-gateway`), of the Gateways' Services.
    pub per_gateway: Option<super::services::Addresses>,
}

impl GatewayAddresses {
    /// A Gateway's addresses: its Service's when it has `own` ports (none until the
    /// Service has an address), else the shared ones, where its routes are served.
    pub fn of(&self, namespace: &str, name: &str, own: bool) -> Vec<String> {
        match &self.per_gateway {
            Some(each) if own => each.get(&(namespace.to_string(), name.to_string())).cloned().unwrap_or_default(),
            _ => self.shared.clone(),
        }
    }
}

impl Writer {
    pub fn forget(&mut self) {
        self.written.clear();
        self.judged.clear();
    }

    pub async fn write(
        &mut self,
        client: &Client,
        t: &GatewayTranslation,
        stores: &GatewayStores,
        addresses: &GatewayAddresses,
    ) {
        let controller = &*t.model.controller_name;
        for class in &t.model.classes {
            let Some(obj) = stores.classes.get("", &class.key.name) else { continue };
            let prev = obj.status.clone().unwrap_or_default();
            let status = class_status(&class.key, class.refusal.as_ref(), &prev.conditions);
            let api: Api<GatewayClass> = Api::all(client.clone());
            self.patch(&api, "GatewayClass", obj.as_ref(), &prev, &status).await;
        }
        for (g, gw) in t.model.gateways.iter().enumerate() {
            let Some(obj) = stores.gateways.get(&gw.key.namespace, &gw.key.name) else {
                continue;
            };
            let prev = obj.status.clone().unwrap_or_default();
            let own = addresses.of(&gw.key.namespace, &gw.key.name, t.ports.contains_key(&g));
            let status = gateway_status(t, g, &own, &prev);
            let api: Api<Gateway> = Api::namespaced(client.clone(), &gw.key.namespace);
            self.patch(&api, "Gateway", obj.as_ref(), &prev, &status).await;
        }
        let mut ours: HashMap<(RouteKind, String, String), Vec<RouteParentStatus>> = HashMap::new();
        for (route, outcomes) in t.model.routes.iter().zip(&t.outcomes) {
            let kind = route.object.kind();
            let (name, ns) = (&route.key.name, &route.key.namespace);
            let prev = match kind {
                RouteKind::Http => stores.routes.get(ns, name).map(|o| o.status.clone()),
                RouteKind::Grpc => stores.grpc_routes.get(ns, name).map(|o| o.status.clone()),
            };
            let Some(prev) = prev.map(Option::unwrap_or_default) else { continue };
            let key = (kind, route.key.namespace.clone(), route.key.name.clone());
            ours.insert(key, route_parents(route, outcomes, &prev));
        }
        // Every route that shows entries of ours or should: others' entries are kept.
        // Routes judged right at this version with these entries are skipped; what is
        // judged now replaces the map, so deleted routes leave it.
        let mut judged = HashMap::with_capacity(self.judged.len());
        for obj in stores.routes.state() {
            let key = (RouteKind::Http, obj.namespace().unwrap_or_default(), obj.name_any());
            let entries = ours.remove(&key);
            self.route_status(client, key, obj.as_ref(), obj.status.as_ref(), entries, controller, &mut judged).await;
        }
        for obj in stores.grpc_routes.state() {
            let key = (RouteKind::Grpc, obj.namespace().unwrap_or_default(), obj.name_any());
            let entries = ours.remove(&key);
            self.route_status(client, key, obj.as_ref(), obj.status.as_ref(), entries, controller, &mut judged).await;
        }
        self.judged = judged;
        let mut policies: HashMap<(String, String), Vec<PolicyAncestorStatus>> = HashMap::new();
        for policy in &t.model.policies.images {
            let (ns, name) = (&policy.key.namespace, &policy.key.name);
            let Some(obj) = stores.backend_tls_policies.get(ns, name) else { continue };
            let prev = obj.status.clone().unwrap_or_default();
            policies.insert((ns.clone(), name.clone()), policy_ancestors(policy, &t.model.gateways, &prev));
        }
        for obj in stores.backend_tls_policies.state() {
            let key = (obj.namespace().unwrap_or_default(), obj.name_any());
            let Some((prev, status)) = merged_ancestors(obj.status.as_ref(), policies.remove(&key), controller) else {
                continue;
            };
            let api: Api<BackendTLSPolicy> = Api::namespaced(client.clone(), &key.0);
            self.patch(&api, "BackendTLSPolicy", obj.as_ref(), &prev, &status).await;
        }
    }

    /// Writes route `obj`'s status (`status` as the store shows it) with our `entries`,
    /// unless it was judged right at this version with the same entries; records it in
    /// `judged` once it is right.
    #[allow(clippy::too_many_arguments)]
    async fn route_status<K>(
        &mut self,
        client: &Client,
        key: RouteKey,
        obj: &K,
        status: Option<&HTTPRouteStatus>,
        entries: Option<Vec<RouteParentStatus>>,
        controller: &str,
        judged: &mut HashMap<RouteKey, Judged>,
    ) where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let stamp = (obj.meta().resource_version.clone(), crate::kube::watches::hash_json(&entries, None));
        if self.judged.get(&key) != Some(&stamp) {
            let right = match merged_parents(status, entries, controller) {
                None => true,
                Some((prev, wanted)) => {
                    let api: Api<K> = Api::namespaced(client.clone(), &key.1);
                    self.patch(&api, key.0.name(), obj, &prev, &wanted).await
                }
            };
            if !right {
                return;
            }
        }
        judged.insert(key, stamp);
    }

    /// Writes `status` unless `previous` already says it; whether the object's status is
    /// (or was just written) right.
    async fn patch<K, S>(&mut self, api: &Api<K>, kind: &'static str, obj: &K, previous: &S, status: &S) -> bool
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        S: Serialize,
    {
        let wanted = comparable(status);
        if comparable(previous) == wanted {
            return true;
        }
        let (ns, name) =
            (obj.meta().namespace.clone().unwrap_or_default(), obj.meta().name.clone().unwrap_or_default());
        let key = (kind, ns.clone(), name.clone());
        let seen = (wanted, obj.meta().resource_version.clone());
        if self.written.get(&key) == Some(&seen) {
            // Written, and the store has not caught up yet: judged again when it has.
            return false;
        }
        let patch = serde_json::json!({ "status": status });
        match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                self.written.insert(key, seen);
            }
            Err(e) => tracing::warn!(kind, namespace = %ns, name = %name, error = %e, "cannot write status"),
        }
        // Either way, not right yet at this version: the write's own event brings a new
        // version, and a failed write is tried again at the next pass.
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(gateway: &str, controller: &str) -> RouteParentStatus {
        RouteParentStatus {
            parent_ref: ParentRef { name: gateway.into(), ..ParentRef::default() },
            controller_name: controller.into(),
            conditions: Vec::new(),
        }
    }

    fn controllers(s: &HTTPRouteStatus) -> Vec<(&str, &str)> {
        s.parents.iter().map(|p| (p.parent_ref.name.as_str(), p.controller_name.as_str())).collect()
    }

    #[test]
    fn a_route_status_keeps_the_entries_of_other_controller_names() {
        let previous = HTTPRouteStatus { parents: vec![entry("edge-gw", "example.com/edge"), entry("gw", "ours/x")] };
        let (_, merged) = merged_parents(Some(&previous), Some(vec![entry("gw", "ours/x")]), "ours/x").unwrap();
        assert_eq!(controllers(&merged), [("edge-gw", "example.com/edge"), ("gw", "ours/x")]);
        // Detached from our Gateways: only our entry goes.
        let (_, merged) = merged_parents(Some(&previous), None, "ours/x").unwrap();
        assert_eq!(controllers(&merged), [("edge-gw", "example.com/edge")]);
        // Another installation's route, none of ours in it: not written at all.
        assert!(merged_parents(Some(&previous), None, "third.example/y").is_none());
    }
}
