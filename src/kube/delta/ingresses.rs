//! Updates for changed Ingresses: each routes exact hosts of its own, with Service
//! backends only, no default backend, and TLS for its own hosts only.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use super::{Context, Kind, Previous, Update, by_name, changes, names_of, patched_problems};
use crate::kube::ownership::HostOwnership;
use crate::kube::records::{IngressBackendRecord, IngressRecord, IngressSpecRecord};
use crate::kube::status::Feed;
use crate::kube::translate::{LastGoodCerts, is_ours, translate_part};
use crate::kube::world::World;
use crate::routes::HostRule;

/// The hosts of one Ingress version whose routes depend on nothing but itself and the
/// Services and Secrets it names.
#[derive(Default)]
struct OwnHosts {
    /// The exact host of each rule.
    hosts: Vec<String>,
    /// Whether it has a TLS section (every host of which is one of `hosts`).
    tls: bool,
}

/// `ing`'s own hosts; `None` sends the change to a full build.
fn own_hosts(ing: &IngressRecord) -> Option<OwnHosts> {
    let Some(spec) = &ing.spec else { return Some(OwnHosts::default()) };
    if spec.default_backend.is_some() {
        return None;
    }
    let mut hosts = Vec::new();
    for rule in &spec.rules {
        let HostRule::Exact(host) = HostRule::parse(rule.host.as_deref()?).ok()? else { return None };
        if rule.paths.iter().any(|p| !matches!(p.backend, IngressBackendRecord::Service { .. })) {
            return None;
        }
        hosts.push(host);
    }
    for t in &spec.tls {
        // No hosts: the rules' hosts.
        for h in &t.hosts {
            let HostRule::Exact(h) = HostRule::parse(h).ok()? else { return None };
            if !hosts.contains(&h) {
                return None;
            }
        }
    }
    Some(OwnHosts { hosts, tls: !spec.tls.is_empty() })
}

/// One side of the change: Ingress versions of ours, with their hosts.
#[derive(Default)]
struct Side {
    ours: Vec<Arc<IngressRecord>>,
    hosts: Vec<String>,
    /// Whether one of them has a TLS section.
    tls: bool,
}

impl Side {
    /// `None` when one of `versions` of ours depends on more than itself.
    fn of(versions: &[Arc<IngressRecord>], world: &World, class: &str) -> Option<Self> {
        let mut side = Self::default();
        for ing in versions.iter().filter(|i| is_ours(i, &world.classes, class)) {
            let own = own_hosts(ing)?;
            side.hosts.extend(own.hosts);
            side.tls |= own.tls;
            side.ours.push(ing.clone());
        }
        Some(side)
    }
}

/// `world`, whose Ingresses alone changed since `prev`, as an update of it.
pub(super) fn update(
    prev: &mut Previous,
    world: &World,
    cx: &Context<'_>,
    last_good: &mut LastGoodCerts,
) -> Option<Update> {
    let (removed, added) = changes(&prev.world.ingresses, &world.ingresses)?;
    let class = cx.settings.ingress_class.as_str();
    let (gone, new) = (Side::of(&removed, &prev.world, class)?, Side::of(&added, world, class)?);
    // Certificates for the hosts: in namespace mode only an Ingress routing a host serves
    // one for it, but a Gateway listener can too, and without ownership any Ingress can.
    let certs = gone.tls || new.tls;
    if certs && (cx.settings.host_ownership == HostOwnership::None || !world.gateway.gateways.is_empty()) {
        return None;
    }

    // Every host the change touches must be the changed Ingresses' alone: no unchanged
    // Ingress, no other kind, no wildcard over it, no route of anyone else in the table.
    let gone_ids: HashSet<String> =
        gone.ours.iter().map(|i| names_of(i.as_ref())).map(|(ns, n)| format!("{ns}/{n}")).collect();
    let replaced: BTreeSet<String> = gone.hosts.iter().chain(&new.hosts).cloned().collect();
    if !prev.claims.only_by(Kind::Ingress, &replaced, &gone.hosts)
        || replaced.iter().any(|h| prev.table.route_ids_of_host(h).any(|id| !gone_ids.contains(id)))
    {
        return None;
    }

    let by_name = by_name(prev, world);
    let part = part_world(&new.ours, world, &by_name);
    let t = translate_part(&part, cx.settings, cx.registry, last_good, cx.generation);
    let maybe_unused = gone.hosts.iter().flat_map(|h| prev.table.groups_of_host(h)).collect();
    let table = prev.table.spliced(cx.generation, &replaced, t.table, maybe_unused, certs);

    let changed_keys: HashSet<(String, String)> = removed.iter().chain(&added).map(|i| names_of(i.as_ref())).collect();
    let is_changed = |k: &(String, String)| changed_keys.contains(k);
    let problems = patched_problems(&prev.feed.problems, "Ingress", &changed_keys, t.problems);
    let mut served: Vec<(String, String)> = prev.feed.served.iter().filter(|k| !is_changed(k)).cloned().collect();
    let mut unserved: Vec<(String, String)> = prev.feed.unserved.iter().filter(|k| !is_changed(k)).cloned().collect();
    for ing in &added {
        if is_ours(ing, &world.classes, class) {
            served.push(names_of(ing.as_ref()))
        } else {
            unserved.push(names_of(ing.as_ref()))
        }
    }
    let feed = Feed {
        problems,
        groups: prev.feed.groups.clone(),
        served,
        unserved,
        invalid_groups: prev.feed.invalid_groups.clone(),
        gateway: prev.feed.gateway.clone(),
    };
    // The previous build's claims are not needed again: the next build starts from these.
    let mut claims = std::mem::take(&mut prev.claims);
    claims.count(Kind::Ingress, &gone.hosts, false);
    claims.count(Kind::Ingress, &new.hosts, true);
    Some(Update { table, feed, claims, by_name, changed: removed.len() + added.len() })
}

/// The Ingresses `ours` with the classes, Services, EndpointSlices and Secrets they read.
fn part_world(ours: &[Arc<IngressRecord>], world: &World, by_name: &super::ByName) -> World {
    let mut part = World { ingresses: ours.to_vec(), classes: world.classes.clone(), ..World::default() };
    let (mut services, mut secrets) = (BTreeSet::new(), BTreeSet::new());
    for ing in ours {
        let ns = names_of(ing.as_ref()).0;
        for svc in ing.spec.iter().flat_map(IngressSpecRecord::rule_services) {
            services.insert((ns.clone(), svc.to_string()));
        }
        for name in ing.spec.iter().flat_map(|s| s.tls.iter()).filter_map(|t| t.secret_name.as_deref()) {
            secrets.insert((ns.clone(), name.to_string()));
        }
    }
    by_name.add_to(&mut part, &services, &secrets);
    part
}
