//! Gateway API routes in the translation: the model (`kube::gateway::model`) is resolved
//! once per build, its host claims join the Ingress ones for ownership, each HTTPRoute and
//! GRPCRoute is
//! added to the table in creation order among the Ingresses (through the single mapping
//! of `kube::gateway::table::to_table`), and each listener's certificate is served for the
//! hosts its routes really route. What happened to every rule on every parent is kept for
//! status.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{CATCH_ALL_REFUSED, HOST_OWNED, Translator};
use crate::kube::endpoints::PortRef;
use crate::kube::gateway::addresses::{self, GatewayId, GatewayPorts};
use crate::kube::gateway::backend_tls::BackendTls;
use crate::kube::gateway::grpc::BackendProtocol;
use crate::kube::gateway::model::{self, Inputs, Model, RouteObject};
use crate::kube::gateway::table::{self, TableBackend};
use crate::kube::gateway::{GatewayTranslation, ParentOutcome};
use crate::kube::ownership::Claim;
use crate::kube::world::{Indexed, World};
use crate::routes::{Filter, HostRule, ListenerScope, RouteEntry, ScopedPort, TieBreak, WeightedBackends, spec};
use crate::upstream::{BackendGroup, GroupSpec, Members, UpstreamTls};

/// The group an unresolved mirror target sends copies to: no endpoints, so none leave.
/// (An unresolved backendRef has no group: its share is answered 500.)
const UNRESOLVED_GROUP: &str = "gateway:unresolved-backend";

/// `Model::backend_tls`: the TLS of Service ports `(namespace, name, port)`.
type BackendTlsByPort = std::collections::HashMap<(String, String, i32), BackendTls>;

/// The Gateway API side of one translation.
pub(super) struct GatewayState {
    model: Model,
    outcomes: Vec<Vec<ParentOutcome>>,
    /// Hosts routed through each listener `(gateway, listener)`: its certificate's hosts.
    listener_hosts: BTreeMap<(usize, usize), BTreeSet<HostRule>>,
    /// Per-Gateway addresses: each such Gateway's data-plane ports (by gateway index).
    ports: BTreeMap<usize, GatewayPorts>,
}

impl GatewayState {
    pub(super) fn new(world: &World, idx: &Indexed<'_>, settings: &super::Settings) -> Self {
        let inputs = Inputs {
            services: &idx.services,
            secrets: &idx.secrets,
            ports: settings.gateway_ports,
            watch_namespaces: &settings.watch_namespaces,
            controller_name: &settings.gateway_controller_name,
        };
        let model = model::resolve(&world.gateway, &inputs);
        let outcomes = model.routes.iter().map(|r| vec![ParentOutcome::default(); r.parents.len()]).collect();
        let ports = match settings.gateway_port_range {
            Some(range) => gateway_ports(&model, range),
            None => BTreeMap::new(),
        };
        GatewayState { model, outcomes, listener_hosts: BTreeMap::new(), ports }
    }

    pub(super) fn route_count(&self) -> usize {
        self.model.routes.len()
    }

    /// The precedence key of route `i`, comparable with an Ingress's.
    pub(super) fn order(&self, i: usize) -> (Option<&Time>, &str, &str) {
        let k = &self.model.routes[i].key;
        (k.created.as_ref(), k.namespace.as_str(), k.name.as_str())
    }

    fn serves(&self, g: usize, l: usize) -> bool {
        self.model.serves(g, l)
    }

    fn served_hosts(&self, i: usize) -> Vec<(usize, usize, usize, Option<String>)> {
        self.model.served_hosts(&self.model.routes[i])
    }

    /// The exact hosts HTTPRoutes would route, as ownership claims of their namespaces.
    pub(super) fn claims(&self) -> Vec<Claim> {
        let mut claims = Vec::new();
        for (i, route) in self.model.routes.iter().enumerate() {
            let hosts: BTreeSet<HostRule> = self
                .served_hosts(i)
                .into_iter()
                .filter_map(|(_, _, _, h)| h.filter(|h| !h.starts_with("*.")))
                .filter_map(|h| HostRule::parse(&h).ok())
                .collect();
            let kind = route.object.kind().name();
            claims.extend(hosts.into_iter().map(|h| match &route.object {
                RouteObject::Http(r) => Claim::new(kind, r.as_ref(), h),
                RouteObject::Grpc(r) => Claim::new(kind, r.as_ref(), h),
            }));
        }
        claims
    }

    pub(super) fn finish(self) -> GatewayTranslation {
        let outcomes = self.outcomes.into_iter().map(Arc::from).collect();
        GatewayTranslation { model: self.model, outcomes, ports: self.ports }
    }

    /// The port scope of gateway `g`'s routes, when it has an address of its own.
    fn scope_of(&self, g: usize) -> Option<String> {
        self.ports.contains_key(&g).then(|| {
            let key = &self.model.gateways[g].key;
            addresses::scope_name(&key.namespace, &key.name)
        })
    }
}

/// The ports of every Gateway of our classes, assigned over all of them (so a Gateway's
/// acceptance changing moves no other), kept for those that carry traffic.
fn gateway_ports(model: &Model, range: addresses::PortRange) -> BTreeMap<usize, GatewayPorts> {
    let ids: Vec<GatewayId<'_>> = model
        .gateways
        .iter()
        .map(|g| GatewayId { namespace: &g.key.namespace, name: &g.key.name, created: g.key.created.as_ref() })
        .collect();
    let mut ports = addresses::assign(&ids, range);
    ports.retain(|g, _| {
        let gw = &model.gateways[*g];
        gw.refusal.is_none() && gw.listeners.iter().any(|l| l.programmed().is_ok())
    });
    ports
}

impl Translator<'_> {
    /// Adds the rules of route `i` (HTTPRoute or GRPCRoute) on every listener and host it
    /// is served on.
    pub(super) fn gateway_route(&mut self, gw: &mut GatewayState, i: usize) {
        let route = gw.model.routes[i].clone();
        let (ns, name) = (route.key.namespace.clone(), route.key.name.clone());
        let id = format!("{}:{ns}/{name}", route.object.kind().name().to_ascii_lowercase());
        let created = route.key.created.as_ref().map_or(i64::MAX, |t| t.0.as_second());
        let http_over_h3 = self.settings.gateway_http_over_h3;
        for (p, g, l, host) in gw.served_hosts(i) {
            let Some(protocol) = gw.model.gateways[g].listeners[l].protocol else { continue };
            for (r, rule) in route.rules.iter().enumerate() {
                let table_rule = match table::to_table(protocol, host.as_deref(), rule, http_over_h3) {
                    Ok(t) => t,
                    Err(missing) => {
                        let needs = missing.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                        gw.outcomes[i][p].drop_rule(r, "UnsupportedValue", format!("needs {needs}, not supported"));
                        continue;
                    }
                };
                let host_rule = table_rule.entries.first().and_then(|e| e.host.clone());
                let allowed = match &route.object {
                    RouteObject::Http(r) => self.gateway_host_allowed("HTTPRoute", r.as_ref(), host_rule.as_ref()),
                    RouteObject::Grpc(r) => self.gateway_host_allowed("GRPCRoute", r.as_ref(), host_rule.as_ref()),
                };
                if let Err((reason, message)) = allowed {
                    gw.outcomes[i][p].drop_rule(r, reason, message);
                    continue;
                }
                let object = format!("{ns}/{name}");
                // With an address of its own, the Gateway's routes are served on its ports
                // (what its status says, and what status reports on), and on the shared
                // listeners as before, where the oldest route keeps a contested host and path.
                let scoped = gw.scope_of(g);
                let mut passes = vec![(None, scoped.is_none())];
                if let Some(scope) = scoped {
                    passes.push((Some(scope), true));
                }
                for (scope, reported) in passes {
                    let built =
                        self.gateway_entries(&id, &object, created, r, table_rule.clone(), &gw.model.backend_tls);
                    let entries = match built {
                        Ok(entries) => entries,
                        Err((reason, message)) => {
                            gw.outcomes[i][p].drop_rule(r, reason, message);
                            break;
                        }
                    };
                    for mut entry in entries {
                        entry.scoped = scope.clone();
                        let entry_host = entry.host.clone();
                        match self.builder.add_entry(entry) {
                            Ok(()) => {}
                            // The same rule reached through another listener or parent.
                            Err(conflict) if conflict.existing == id => {}
                            Err(_) if !reported => continue,
                            Err(conflict) => {
                                gw.outcomes[i][p].drop_rule(
                                    r,
                                    "RouteConflict",
                                    format!("{conflict} (the oldest object wins)"),
                                );
                                continue;
                            }
                        }
                        if reported {
                            gw.outcomes[i][p].served.insert(r);
                        }
                        if let Some(h) = entry_host {
                            gw.listener_hosts.entry((g, l)).or_default().insert(h);
                        }
                    }
                }
            }
        }
    }

    /// The data-plane ports of the Gateways with addresses of their own: TLS (Alt-Svc
    /// advertises the HTTPS listener port clients reach) and, with a plaintext listener,
    /// plaintext.
    pub(super) fn gateway_scoped_ports(&mut self, gw: &GatewayState) {
        let served = self.settings.gateway_ports;
        for (g, ports) in &gw.ports {
            let Some(scope) = gw.scope_of(*g) else { continue };
            let tls = ScopedPort { scope: scope.clone(), tls: true, alt_svc_port: served.https };
            let plain = served.http.map(|_| ScopedPort { scope, tls: false, alt_svc_port: None });
            for (port, kind) in std::iter::once((ports.tls, tls)).chain(plain.map(|k| (ports.plain, k))) {
                if let Err(e) = self.builder.add_scoped_port(port, kind) {
                    // Not reachable: the assignment gives every port once.
                    tracing::warn!(error = %e, "a Gateway's data-plane port is taken");
                }
            }
        }
    }

    /// The route-table entries of one rule: its backends and mirrors resolved to groups,
    /// its matches and filters compiled by the data plane (which checks what the API
    /// server did not, e.g. regular expressions, and names the field it refuses).
    fn gateway_entries(
        &mut self,
        id: &str,
        object: &str,
        created: i64,
        rule_index: usize,
        rule: table::TableRule,
        backend_tls: &BackendTlsByPort,
    ) -> Result<Vec<RouteEntry>, (&'static str, String)> {
        let mut backends = Vec::with_capacity(rule.backends.len());
        for (backend, weight) in &rule.backends {
            backends.push((self.gateway_group(backend, backend_tls)?, *weight));
        }
        let mut mirrors = Vec::with_capacity(rule.mirrors.len());
        for m in &rule.mirrors {
            let group = match self.gateway_group(m, backend_tls)? {
                Some(g) => g,
                None => self.gateway_group_unresolved()?,
            };
            mirrors.push(group);
        }
        let mut entries = Vec::with_capacity(rule.entries.len());
        for e in rule.entries {
            let mut resolve = |name: &str| name.parse::<usize>().ok().and_then(|k| mirrors.get(k).cloned());
            let options =
                spec::compile(Some(&e.matcher), &rule.filters, None, &e.path, &mut resolve).map_err(|errors| {
                    let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                    ("UnsupportedValue", message)
                })?;
            // A redirect without a scheme keeps the listener's, also where the listener's
            // routes are served on another (`--gateway-http-over-h3`).
            let listener_tls = rule.scope == ListenerScope::Tls;
            let filters = options
                .filters
                .into_iter()
                .map(|f| match f {
                    Filter::Redirect(r) => Filter::Redirect(r.with_listener_tls(listener_tls)),
                    other => other,
                })
                .collect();
            let index = u32::try_from((rule_index << 16) | e.match_index).unwrap_or(u32::MAX);
            entries.push(RouteEntry {
                id: id.to_string(),
                host: e.host,
                path: e.path,
                matcher: options.matcher,
                scope: rule.scope,
                scoped: None,
                tie_break: TieBreak { created, name: object.to_string(), index },
                backends: WeightedBackends::new(backends.clone()),
                filters,
                timeouts: rule.timeouts,
            });
        }
        Ok(entries)
    }

    /// Host ownership and catch-alls, as for Ingress rules; an Event tells the route.
    fn gateway_host_allowed(
        &mut self,
        kind: &'static str,
        obj: &impl kube::Resource,
        host: Option<&HostRule>,
    ) -> Result<(), (&'static str, String)> {
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let name = obj.meta().name.clone().unwrap_or_default();
        match host {
            None => {
                if self.catch_all_allowed(kind, obj, "a route without hostnames on a listener without one") {
                    Ok(())
                } else {
                    Err((CATCH_ALL_REFUSED, "a route for every host needs the catch-all grant of its namespace".into()))
                }
            }
            Some(h) => match self.owners.and_then(|o| o.refusal(kind, &ns, &name, h)) {
                None => Ok(()),
                Some(owner) => {
                    let message = format!(
                        "host {h} belongs to namespace {owner} (its oldest claim); rules for it from namespace {ns} are refused"
                    );
                    self.refuse(kind, obj, HOST_OWNED, message.clone());
                    Err((HOST_OWNED, message))
                }
            },
        }
    }

    /// The group of a backend; `None` for one whose requests are answered 500 (an
    /// unresolved backendRef, or a Service whose BackendTLSPolicy has no valid CA).
    fn gateway_group(
        &mut self,
        backend: &TableBackend,
        backend_tls: &BackendTlsByPort,
    ) -> Result<Option<Arc<BackendGroup>>, (&'static str, String)> {
        let TableBackend::Service { namespace, name, port, protocol } = backend else { return Ok(None) };
        match backend_tls.get(&(namespace.clone(), name.clone(), *port)) {
            Some(BackendTls::Refused) => Ok(None),
            Some(BackendTls::Verify { policy, tls, h3 }) => {
                self.service_tls_group(namespace, name, *port, *h3, policy, tls).map(Some)
            }
            None => {
                let scheme = match protocol {
                    BackendProtocol::AppProtocol => None,
                    BackendProtocol::H2c => Some("h2c"),
                };
                self.service_group_with(namespace, name, &PortRef::Number(*port), scheme).map(Some)
            }
        }
    }

    fn gateway_group_unresolved(&mut self) -> Result<Arc<BackendGroup>, (&'static str, String)> {
        if let Some(g) = self.builder.group(UNRESOLVED_GROUP) {
            return Ok(g);
        }
        let group = GroupSpec::new(UNRESOLVED_GROUP.to_string(), Members::Discovered(Vec::new()))
            .compile(self.registry)
            .map_err(|e| ("InvalidBackend", super::join(e)))?;
        Ok(self.builder.add_group(group))
    }

    /// A Service port dialled over TLS as its BackendTLSPolicy says (`https://`, HTTP/2 or
    /// HTTP/1.1 by ALPN; `h3://` when the port's `appProtocol` asks for HTTP/3), whatever
    /// the route kind: gRPC backends negotiate h2 by ALPN. One group per policy and port
    /// in a translation; a changed CA or hostname is another endpoint (and pool).
    fn service_tls_group(
        &mut self,
        ns: &str,
        name: &str,
        port: i32,
        h3: bool,
        policy: &str,
        tls: &UpstreamTls,
    ) -> Result<Arc<BackendGroup>, (&'static str, String)> {
        let scheme = if h3 { "h3" } else { "https" };
        let id = format!("service:{ns}/{name}:{port}:{scheme}:backendtlspolicy:{policy}");
        if let Some(known) = self.known_group(&id) {
            return known;
        }
        let built = match self.service_endpoints(ns, name, &PortRef::Number(port), Some(scheme)) {
            Ok(urls) => {
                let mut spec = GroupSpec::new(id.clone(), Members::Discovered(urls));
                spec.tls = tls.clone();
                spec.compile(self.registry).map(Arc::new).map_err(|errors| ("InvalidBackend", super::join(errors)))
            }
            Err(e) => Err(("ServiceNotFound", e)),
        };
        self.record_group(id, built)
    }

    /// The Gateways' certificates: for the hosts their routes route, then for the names
    /// their listeners accept.
    pub(super) fn gateway_certs(&mut self, gw: &GatewayState) {
        self.gateway_routed_certs(gw);
        self.gateway_listener_certs(gw);
    }

    /// A programmed HTTPS listener's certificate also answers the names the listener
    /// itself accepts, routed or not (a client of an unrouted host there gets the
    /// listener's certificate and a 404, as Gateway API expects): its `hostname`, or, for
    /// a listener without one, every name no other certificate covers. The latter replaces
    /// the controller's default certificate, so only a Gateway allowed catch-alls (host
    /// ownership off, a one-tenant controller, or the IngressClass grant) may do it; the
    /// oldest such listener wins.
    fn gateway_listener_certs(&mut self, gw: &GatewayState) {
        let mut fallback_taken = false;
        // The Gateways whose own address has its catch-all certificate (its first listener's).
        let mut own_fallback_taken = BTreeSet::new();
        for (g, gateway) in gw.model.gateways.iter().enumerate() {
            let ns = gateway.key.namespace.as_str();
            for (l, listener) in gateway.listeners.iter().enumerate() {
                let Some((_, key)) = listener.certs.first() else { continue };
                if !gw.serves(g, l) {
                    continue;
                }
                // On the Gateway's own address, its listeners answer for every name they
                // accept, a catch-all included: no other tenant's clients arrive there.
                if let Some(scope) = gw.scope_of(g) {
                    let own = self.builder.scoped_certs_mut(&scope);
                    match listener.hostname.as_deref().map(HostRule::parse_gateway) {
                        Some(Ok(host)) if !own.covers(&host) => own.insert(&host, key.clone()),
                        None if own_fallback_taken.insert(g) => own.set_default(key.clone()),
                        _ => {}
                    }
                }
                match listener.hostname.as_deref().map(HostRule::parse_gateway) {
                    Some(Ok(host)) => {
                        if !self.builder.certs_mut().covers(&host) {
                            self.builder.certs_mut().insert(&host, key.clone());
                        }
                    }
                    Some(Err(_)) => {}
                    None => {
                        let catch_all =
                            self.owners.is_none() || self.settings.serves_one_tenant(ns) || self.grants.catch_all(ns);
                        if catch_all && !fallback_taken {
                            self.builder.certs_mut().set_default(key.clone());
                            fallback_taken = true;
                        }
                    }
                }
            }
        }
    }

    /// Each programmed HTTPS listener's first certificate, for the hosts routed through
    /// it; a host whose certificate an Ingress (or an earlier listener) already gives
    /// keeps that one.
    fn gateway_routed_certs(&mut self, gw: &GatewayState) {
        for ((g, l), hosts) in &gw.listener_hosts {
            let gateway = &gw.model.gateways[*g];
            let Some((secret, key)) = gateway.listeners[*l].certs.first() else { continue };
            // On the Gateway's own address, its own listeners' certificates only (the first
            // listener routing a host keeps it), whatever the shared listeners serve.
            if let Some(scope) = gw.scope_of(*g) {
                let own = self.builder.scoped_certs_mut(&scope);
                for host in hosts {
                    if !own.covers(host) {
                        own.insert(host, key.clone());
                    }
                }
            }
            for host in hosts {
                match self.cert_claims.get(host) {
                    None => {
                        self.cert_claims.insert(host.clone(), secret.clone());
                        self.builder.certs_mut().insert(host, key.clone());
                    }
                    Some(holder) if holder == secret => {}
                    Some((hns, hname)) => self.problems.push(super::Problem {
                        kind: "Gateway",
                        namespace: gateway.key.namespace.clone(),
                        name: gateway.key.name.clone(),
                        uid: gateway.key.uid.clone(),
                        reason: "TLSHostConflict",
                        message: format!(
                            "the certificate for {host} comes from secret {hns}/{hname}; secret {}/{} of listener {} is not served for it",
                            secret.0, secret.1, gateway.listeners[*l].name
                        ),
                    }),
                }
            }
        }
    }
}
