//! Updates for changed HTTPRoutes: each names exact hostnames only, none of which another
//! object claims, and the world has nothing that relates routes to one another beyond
//! their hosts (no GRPCRoute, no BackendTLSPolicy, no Gateway with an address of its own,
//! no certificate conflict between listeners). The Gateways, their listeners and their
//! certificates are the same objects as before: the new versions are resolved against
//! them, and the Gateway API model (what status is written from) is patched route by route.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use super::{Context, Kind, PtrSet, Update, by_name, changes, names_of, patched_problems};
use crate::kube::delta::{ByName, Previous};
use crate::kube::gateway::api::{BackendObjectRef, HTTPRoute, HTTPRouteFilter};
use crate::kube::gateway::model::{Model, RouteImage, RouteObject};
use crate::kube::gateway::{GatewayTranslation, GatewayWorld};
use crate::kube::ownership::HostOwnership;
use crate::kube::status::Feed;
use crate::kube::translate::{LastGoodCerts, translate_part};
use crate::kube::world::World;
use crate::routes::HostRule;

/// The reason of a certificate two listeners (or an Ingress and a listener) both want for
/// a host: which one a host gets then depends on every route through both.
const TLS_HOST_CONFLICT: &str = "TLSHostConflict";

/// `world`, whose HTTPRoutes alone changed since `prev`, as an update of it.
pub(super) fn update(
    prev: &mut Previous,
    world: &World,
    cx: &Context<'_>,
    last_good: &mut LastGoodCerts,
) -> Option<Update> {
    let before = prev.feed.gateway.clone();
    let related = !world.gateway.grpc_routes.is_empty()
        || !world.gateway.backend_tls_policies.is_empty()
        || !before.ports.is_empty()
        || prev.feed.problems.iter().any(|p| p.reason == TLS_HOST_CONFLICT);
    // Without ownership any Ingress's TLS section may give a certificate for the hosts.
    if related || cx.settings.host_ownership == HostOwnership::None {
        return None;
    }
    let (removed, added) = changes(&prev.world.gateway.routes, &world.gateway.routes)?;

    // The hosts the old versions were served on (one per claim), and their route ids.
    let removed_at: PtrSet<HTTPRoute> = removed.iter().map(Arc::as_ptr).collect();
    let is_removed =
        |image: &RouteImage| matches!(&image.object, RouteObject::Http(r) if removed_at.contains(&Arc::as_ptr(r)));
    let (mut gone_hosts, mut gone_ids) = (Vec::new(), HashSet::new());
    for image in before.model.routes.iter().filter(|i| is_removed(i)) {
        gone_ids.insert(route_id(image));
        gone_hosts.extend(served_exact(&before.model, image)?);
    }
    // The new versions are served on some of their hostnames, which must all be exact.
    let mut new_hosts = BTreeSet::new();
    for route in &added {
        if route.spec.hostnames.is_empty() {
            return None;
        }
        for h in &route.spec.hostnames {
            let HostRule::Exact(h) = HostRule::parse(&h.to_ascii_lowercase()).ok()? else { return None };
            new_hosts.insert(h);
        }
    }
    let replaced: BTreeSet<String> = gone_hosts.iter().cloned().chain(new_hosts).collect();
    if !prev.claims.only_by(Kind::HttpRoute, &replaced, &gone_hosts)
        || replaced.iter().any(|h| prev.table.route_ids_of_host(h).any(|id| !gone_ids.contains(id)))
    {
        return None;
    }

    let by_name = by_name(prev, world);
    let part = part_world(&added, world, &by_name);
    let t = translate_part(&part, cx.settings, cx.registry, last_good, cx.generation);
    let claims_beyond = t.claims.http_routes.keys().any(|h| !replaced.contains(h));
    if claims_beyond || t.problems.iter().any(|p| p.reason == TLS_HOST_CONFLICT) {
        return None;
    }
    let maybe_unused = gone_hosts.iter().flat_map(|h| prev.table.groups_of_host(h)).collect();
    let table = prev.table.spliced(cx.generation, &replaced, t.table, maybe_unused, true);

    // The model: the unchanged routes' images as they were, the new ones in precedence
    // order among them.
    let mut routes = Vec::with_capacity(before.model.routes.len() + t.gateway.model.routes.len());
    let mut outcomes = Vec::with_capacity(routes.capacity());
    for (image, outcome) in before.model.routes.iter().zip(&before.outcomes).filter(|(i, _)| !is_removed(i)) {
        routes.push(image.clone());
        outcomes.push(outcome.clone());
    }
    for (image, outcome) in t.gateway.model.routes.into_iter().zip(t.gateway.outcomes) {
        let at = routes.partition_point(|r| order(r) < order(&image));
        routes.insert(at, image);
        outcomes.insert(at, outcome);
    }
    let model = Model {
        controller_name: before.model.controller_name.clone(),
        classes: before.model.classes.clone(),
        gateways: before.model.gateways.clone(),
        routes,
        // None of these: see `related`.
        policies: Default::default(),
        backend_tls: Default::default(),
    };

    let changed_keys: HashSet<(String, String)> = removed.iter().chain(&added).map(|r| names_of(r.as_ref())).collect();
    let feed = Feed {
        problems: patched_problems(&prev.feed.problems, "HTTPRoute", &changed_keys, t.problems),
        groups: prev.feed.groups.clone(),
        served: prev.feed.served.clone(),
        unserved: prev.feed.unserved.clone(),
        invalid_groups: prev.feed.invalid_groups.clone(),
        gateway: Arc::new(GatewayTranslation { model, outcomes, ports: Default::default() }),
    };
    let mut claims = std::mem::take(&mut prev.claims);
    claims.count(Kind::HttpRoute, &gone_hosts, false);
    claims.add(Kind::HttpRoute, &t.claims);
    Some(Update { table, feed, claims, by_name, changed: removed.len() + added.len() })
}

/// The id of a route's table entries.
fn route_id(image: &RouteImage) -> String {
    let kind = image.object.kind().name().to_ascii_lowercase();
    format!("{kind}:{}/{}", image.key.namespace, image.key.name)
}

/// The exact hosts `image` is served on, once each, as it claims them; `None` when it is
/// served on a wildcard or on every host.
fn served_exact(model: &Model, image: &RouteImage) -> Option<BTreeSet<String>> {
    let mut hosts = BTreeSet::new();
    for (_, _, _, host) in model.served_hosts(image) {
        let HostRule::Exact(h) = HostRule::parse(&host?).ok()? else { return None };
        hosts.insert(h);
    }
    Some(hosts)
}

/// The precedence of routes in the model: oldest first, then namespace and name.
fn order(image: &RouteImage) -> impl Ord + '_ {
    let m = image.object.meta();
    (m.creation_timestamp.as_ref(), m.namespace.as_deref(), m.name.as_deref(), image.object.kind())
}

/// The HTTPRoutes `added` with what resolving them reads: the Gateway API objects they
/// attach through (classes, Gateways, grants, Namespaces), the IngressClasses (host
/// ownership grants), the Services they name and the Secrets of the listeners.
fn part_world(added: &[Arc<HTTPRoute>], world: &World, by_name: &ByName) -> World {
    let g = &world.gateway;
    let mut part = World {
        classes: world.classes.clone(),
        gateway: GatewayWorld {
            classes: g.classes.clone(),
            gateways: g.gateways.clone(),
            routes: added.to_vec(),
            grants: g.grants.clone(),
            namespaces: g.namespaces.clone(),
            ..GatewayWorld::default()
        },
        ..World::default()
    };
    let (mut services, mut secrets) = (BTreeSet::new(), BTreeSet::new());
    let named =
        |ns: &str, r: &BackendObjectRef| (r.namespace.clone().unwrap_or_else(|| ns.to_string()), r.name.clone());
    let mirrored = |filters: &[HTTPRouteFilter]| -> Vec<BackendObjectRef> {
        filters.iter().filter_map(|f| f.request_mirror.as_ref()).map(|m| m.backend_ref.clone()).collect()
    };
    for route in added {
        let ns = names_of(route.as_ref()).0;
        for rule in &route.spec.rules {
            for b in &rule.backend_refs {
                services.insert(named(&ns, &b.target));
                services.extend(mirrored(&b.filters).iter().map(|r| named(&ns, r)));
            }
            services.extend(mirrored(&rule.filters).iter().map(|r| named(&ns, r)));
        }
    }
    for gateway in &g.gateways {
        let ns = names_of(gateway.as_ref()).0;
        let refs = gateway.spec.listeners.iter().filter_map(|l| l.tls.as_ref()).flat_map(|t| &t.certificate_refs);
        secrets.extend(refs.map(|r| (r.namespace.clone().unwrap_or_else(|| ns.clone()), r.name.clone())));
    }
    by_name.add_to(&mut part, &services, &secrets);
    part
}
