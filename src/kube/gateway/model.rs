//! The Gateway API as we understood it: a typed, faithful image of what GatewayClasses,
//! Gateways, HTTPRoutes and GRPCRoutes (`grpc.rs`: the same rule image) ask for (per listener, per hostname, per rule: matches, filters,
//! backendRefs resolved to Services with weights, timeouts), with every reference
//! resolved or refused the way the spec says. Pure data built by [`resolve`] from the
//! watched objects; status is computed from it, and `table.rs` maps what today's route
//! table can express. Nothing here is dropped or approximated: what cannot be served yet
//! is still carried, so the table mapping can name it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::ResourceExt;
use rustls::sign::CertifiedKey;

use super::api::{
    self, BackendObjectRef, BackendTLSPolicy, Cors, GROUP, GRPCRoute, Gateway, GatewayClass, HTTPRoute,
    HTTPRouteFilter, HeaderModifier, ParentRef, ReferenceGrant, RequestRedirect, RouteGroupKind, UrlRewrite,
};
use super::backend_tls::{BackendTls, Policies};
use super::grpc::{self, BackendProtocol};
use crate::kube::records::ServiceRecord;

/// `spec.controllerName` of GatewayClasses this controller serves by default (the domain
/// of our API group, `quic-ingress.dev`); `--gateway-controller-name` sets another, so two
/// installations each serve their own classes and keep to their own status entries.
pub const GATEWAY_CONTROLLER_NAME: &str = "quic-ingress.dev/gateway-controller";

/// A condition's `(reason, message)` when it is not in its good state.
pub type Refusal = (&'static str, String);

/// The Gateway API objects at one moment (part of `World`).
#[derive(Default, Clone)]
pub struct GatewayWorld {
    pub classes: Vec<Arc<GatewayClass>>,
    pub gateways: Vec<Arc<Gateway>>,
    pub routes: Vec<Arc<HTTPRoute>>,
    pub grpc_routes: Vec<Arc<GRPCRoute>>,
    pub grants: Vec<Arc<ReferenceGrant>>,
    /// For `allowedRoutes.namespaces.from: Selector`.
    pub namespaces: Vec<Arc<Namespace>>,
    pub backend_tls_policies: Vec<Arc<BackendTLSPolicy>>,
    /// For BackendTLSPolicy `caCertificateRefs`.
    pub config_maps: Vec<Arc<ConfigMap>>,
}

/// Which ports this process serves, so a listener is Programmed only on one of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServedPorts {
    /// The port clients reach the TLS listener on (TCP for HTTP/1.1+2, UDP for HTTP/3):
    /// `--alt-svc-port` when set (the chart sets it to the Service port, 443), else the
    /// port of `--listen`.
    pub https: Option<u16>,
    /// The plaintext HTTP listener's port; `None` while there is none.
    pub http: Option<u16>,
}

/// Everything the Gateway API asks for, resolved.
#[derive(Debug, Default)]
pub struct Model {
    /// The controllerName of the classes served (`--gateway-controller-name`).
    pub controller_name: Arc<str>,
    pub classes: Vec<ClassImage>,
    pub gateways: Vec<GatewayImage>,
    /// Shared: an incremental update keeps the images of the routes it did not change.
    pub routes: Vec<Arc<RouteImage>>,
    pub policies: Policies,
    /// The TLS a BackendTLSPolicy asks for on a Service port `(namespace, name, port)`
    /// some route uses.
    pub backend_tls: HashMap<(String, String, i32), BackendTls>,
}

impl Model {
    /// Whether listener `l` of gateway `g` carries traffic.
    pub fn serves(&self, g: usize, l: usize) -> bool {
        let gw = &self.gateways[g];
        gw.refusal.is_none() && gw.listeners.get(l).is_some_and(|l| l.programmed().is_ok())
    }

    /// Every `(parent, gateway, listener, host)` `route` is served on.
    pub fn served_hosts(&self, route: &RouteImage) -> Vec<(usize, usize, usize, Option<String>)> {
        let mut out = Vec::new();
        for (p, parent) in route.parents.iter().enumerate() {
            let Ok(attachments) = &parent.attached else { continue };
            for a in attachments.iter().filter(|a| self.serves(parent.gateway, a.listener)) {
                out.extend(a.hosts.iter().map(|h| (p, parent.gateway, a.listener, h.clone())));
            }
        }
        out
    }
}

/// Identity of an object, for status and precedence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub created: Option<Time>,
}

impl ObjectKey {
    pub(super) fn of(obj: &impl kube::Resource) -> Self {
        let m = obj.meta();
        ObjectKey {
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone(),
            generation: m.generation,
            created: m.creation_timestamp.clone(),
        }
    }
}

/// A GatewayClass whose controllerName is ours (all are Accepted: we take no parameters).
#[derive(Debug, Clone)]
pub struct ClassImage {
    pub key: ObjectKey,
    /// `parametersRef` set: we have no parameters kind, so the class is refused.
    pub refusal: Option<Refusal>,
}

#[derive(Debug, Clone)]
pub struct GatewayImage {
    pub key: ObjectKey,
    /// The controllerName of its class (ours): the name our status entries carry.
    pub controller: Arc<str>,
    /// Gateway-level refusal (`Accepted=False`): unsupported spec fields.
    pub refusal: Option<Refusal>,
    pub listeners: Vec<ListenerImage>,
}

impl GatewayImage {
    pub fn accepted(&self) -> bool {
        self.refusal.is_none() && self.listeners.iter().any(|l| l.accepted.is_ok())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Https,
}

/// Which namespaces may attach routes to a listener.
#[derive(Debug, Clone, PartialEq)]
pub enum AllowedNamespaces {
    Same,
    All,
    Selector(LabelSelector),
}

#[derive(Clone)]
pub struct ListenerImage {
    pub name: String,
    pub port: i32,
    /// `None`: a protocol we do not serve (the listener is refused).
    pub protocol: Option<Protocol>,
    /// As written: an exact name or a Gateway-style `*.suffix` (one or more labels).
    pub hostname: Option<String>,
    pub allowed: AllowedNamespaces,
    pub supported_kinds: Vec<RouteGroupKind>,
    /// Certificates of an HTTPS listener that resolved: Secret `(namespace, name)` and key.
    pub certs: Vec<((String, String), Arc<CertifiedKey>)>,
    /// `Accepted`: protocol, port and TLS mode.
    pub accepted: Result<(), Refusal>,
    /// `ResolvedRefs`: certificateRefs and route kinds.
    pub resolved: Result<(), Refusal>,
    /// `Conflicted=True` with this reason and message.
    pub conflicted: Option<Refusal>,
}

impl std::fmt::Debug for ListenerImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerImage")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("protocol", &self.protocol)
            .field("hostname", &self.hostname)
            .field("certs", &self.certs.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("accepted", &self.accepted)
            .field("resolved", &self.resolved)
            .field("conflicted", &self.conflicted)
            .finish()
    }
}

impl ListenerImage {
    /// `Programmed`: the listener carries traffic.
    pub fn programmed(&self) -> Result<(), Refusal> {
        if let Err((_, m)) = &self.accepted {
            return Err(("Invalid", format!("not accepted: {m}")));
        }
        if let Some((_, m)) = &self.conflicted {
            return Err(("Invalid", format!("conflicted: {m}")));
        }
        if let Err((_, m)) = &self.resolved {
            return Err(("Invalid", format!("unresolved references: {m}")));
        }
        Ok(())
    }
}

/// The kinds of route we attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    pub fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

/// A route object of either kind.
#[derive(Debug, Clone)]
pub enum RouteObject {
    Http(Arc<HTTPRoute>),
    Grpc(Arc<GRPCRoute>),
}

impl RouteObject {
    pub fn kind(&self) -> RouteKind {
        match self {
            RouteObject::Http(_) => RouteKind::Http,
            RouteObject::Grpc(_) => RouteKind::Grpc,
        }
    }

    pub fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            RouteObject::Http(r) => &r.metadata,
            RouteObject::Grpc(r) => &r.metadata,
        }
    }

    fn parent_refs(&self) -> &[ParentRef] {
        match self {
            RouteObject::Http(r) => &r.spec.parent_refs,
            RouteObject::Grpc(r) => &r.spec.parent_refs,
        }
    }

    fn hostnames(&self) -> Vec<String> {
        let hosts = match self {
            RouteObject::Http(r) => &r.spec.hostnames,
            RouteObject::Grpc(r) => &r.spec.hostnames,
        };
        hosts.iter().map(|h| h.to_ascii_lowercase()).collect()
    }
}

#[derive(Debug, Clone)]
pub struct RouteImage {
    pub key: ObjectKey,
    /// The object itself, for Events and host claims.
    pub object: RouteObject,
    pub hostnames: Vec<String>,
    /// Only parentRefs that name a Gateway of one of our classes.
    pub parents: Vec<ParentImage>,
    pub rules: Vec<RuleImage>,
    /// `ResolvedRefs=False`: every backendRef (and mirror backendRef) problem.
    pub unresolved: Vec<Refusal>,
}

#[derive(Debug, Clone)]
pub struct ParentImage {
    pub parent_ref: ParentRef,
    /// Index into `Model::gateways`.
    pub gateway: usize,
    /// The controllerName of that Gateway's class: the name of our status entry.
    pub controller: Arc<str>,
    /// Attachments to listeners, or why none (`Accepted=False`).
    pub attached: Result<Vec<Attachment>, Refusal>,
}

/// A route attached to one listener, with the hostnames it serves there.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    pub listener: usize,
    /// The intersection of the listener's hostname and the route's hostnames; `[None]`:
    /// any host.
    pub hosts: Vec<Option<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuleImage {
    pub name: Option<String>,
    pub matches: Vec<RouteMatch>,
    pub filters: Vec<Filter>,
    pub backends: Vec<WeightedBackend>,
    pub timeouts: Timeouts,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    RegularExpression(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValueMatch {
    pub name: String,
    pub value: String,
    pub regex: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub headers: Vec<ValueMatch>,
    pub query_params: Vec<ValueMatch>,
    pub method: Option<String>,
}

/// A filter as the route asks for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    RequestRedirect(RequestRedirect),
    UrlRewrite(UrlRewrite),
    RequestMirror {
        backend: Backend,
        percent: Option<f64>,
    },
    Cors(Cors),
    ExtensionRef(api::ObjectRef),
    /// A filter type without its body, or of an unknown type.
    Invalid(String),
}

impl Filter {
    /// The Gateway API name of the filter type.
    pub fn type_name(&self) -> &str {
        match self {
            Filter::RequestHeaderModifier(_) => "RequestHeaderModifier",
            Filter::ResponseHeaderModifier(_) => "ResponseHeaderModifier",
            Filter::RequestRedirect(_) => "RequestRedirect",
            Filter::UrlRewrite(_) => "URLRewrite",
            Filter::RequestMirror { .. } => "RequestMirror",
            Filter::Cors(_) => "CORS",
            Filter::ExtensionRef(_) => "ExtensionRef",
            Filter::Invalid(t) => t,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WeightedBackend {
    pub weight: u32,
    pub target: Backend,
    pub filters: Vec<Filter>,
}

/// Where a backendRef points.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    Service {
        namespace: String,
        name: String,
        port: i32,
        /// How its endpoints are spoken to.
        protocol: BackendProtocol,
    },
    /// Unresolved (missing, not permitted, wrong kind): the spec answers its share of
    /// requests with 500.
    Invalid { reason: &'static str, message: String },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeouts {
    pub request: Option<Duration>,
    pub backend_request: Option<Duration>,
}

// === Resolution ===

/// What [`resolve`] reads besides the Gateway API objects.
pub struct Inputs<'a> {
    pub services: &'a HashMap<(&'a str, &'a str), &'a ServiceRecord>,
    pub secrets: &'a HashMap<(&'a str, &'a str), &'a Secret>,
    pub ports: ServedPorts,
    /// `--namespace`: only objects there are watched (empty: every namespace).
    pub watch_namespaces: &'a std::collections::BTreeSet<String>,
    /// `--gateway-controller-name`: the GatewayClasses served are those naming it.
    pub controller_name: &'a str,
}

impl Inputs<'_> {
    /// Whether objects in `ns` are watched (so a missing one is really missing).
    fn watched(&self, ns: &str) -> bool {
        self.watch_namespaces.is_empty() || self.watch_namespaces.contains(ns)
    }
}

/// Builds the model: our classes, their Gateways, and the HTTPRoutes attached to them.
pub fn resolve(world: &GatewayWorld, inputs: &Inputs<'_>) -> Model {
    let classes: Vec<ClassImage> = world
        .classes
        .iter()
        .filter(|c| c.spec.controller_name == inputs.controller_name)
        .map(|c| ClassImage {
            key: ObjectKey::of(c.as_ref()),
            refusal: c.spec.parameters_ref.as_ref().map(|_| {
                ("InvalidParameters", "quic-ingress takes no GatewayClass parameters; remove parametersRef".to_string())
            }),
        })
        .collect();
    let accepted_classes: BTreeSet<&str> =
        classes.iter().filter(|c| c.refusal.is_none()).map(|c| c.key.name.as_str()).collect();
    let grants = Grants::new(&world.grants);
    let namespace_labels: HashMap<String, BTreeMap<String, String>> =
        world.namespaces.iter().map(|n| (n.name_any(), n.labels().clone())).collect();

    let mut gateways: Vec<&Gateway> = world
        .gateways
        .iter()
        .map(AsRef::as_ref)
        .filter(|g| accepted_classes.contains(g.spec.gateway_class_name.as_str()))
        .collect();
    gateways.sort_by_key(|g| (g.metadata.creation_timestamp.clone(), g.namespace(), g.name_any()));
    let controller: Arc<str> = Arc::from(inputs.controller_name);
    let gateway_images: Vec<GatewayImage> =
        gateways.iter().map(|g| gateway_image(g, &controller, inputs, &grants)).collect();
    let index: HashMap<(String, String), usize> =
        gateway_images.iter().enumerate().map(|(i, g)| ((g.key.namespace.clone(), g.key.name.clone()), i)).collect();

    let mut routes: Vec<RouteObject> = world.routes.iter().cloned().map(RouteObject::Http).collect();
    routes.extend(world.grpc_routes.iter().cloned().map(RouteObject::Grpc));
    // The spec's precedence between routes (of both kinds): oldest first, then
    // namespace/name.
    routes.sort_by_key(|r| {
        let m = r.meta();
        (m.creation_timestamp.clone(), m.namespace.clone(), m.name.clone(), r.kind())
    });
    let mut route_images: Vec<RouteImage> = routes
        .iter()
        .filter_map(|r| route_image(r, &gateway_images, &index, &namespace_labels, inputs, &grants))
        .collect();
    grpc::refuse_kind_conflicts(&mut route_images);
    let watched = |ns: &str| inputs.watched(ns);
    let mut policies = Policies::resolve(&world.backend_tls_policies, &world.config_maps, &watched);
    let backend_tls = apply_policies(&mut policies, &route_images, inputs);
    Model {
        controller_name: controller,
        classes,
        gateways: gateway_images,
        routes: route_images.into_iter().map(Arc::new).collect(),
        policies,
        backend_tls,
    }
}

/// The TLS of every Service port a route uses that a policy targets, and each policy's
/// ancestors: the Gateways of the routes that reach its targets.
fn apply_policies(
    policies: &mut Policies,
    routes: &[RouteImage],
    inputs: &Inputs<'_>,
) -> HashMap<(String, String, i32), BackendTls> {
    let mut out = HashMap::new();
    if policies.images.is_empty() {
        return out;
    }
    for route in routes {
        let gateways: BTreeSet<usize> = route.parents.iter().map(|p| p.gateway).collect();
        let mirrors =
            route.rules.iter().flat_map(|r| r.filters.iter().chain(r.backends.iter().flat_map(|b| &b.filters)));
        let targets = route.rules.iter().flat_map(|r| r.backends.iter().map(|b| &b.target)).chain(mirrors.filter_map(
            |f| match f {
                Filter::RequestMirror { backend, .. } => Some(backend),
                _ => None,
            },
        ));
        for target in targets {
            let Backend::Service { namespace, name, port, .. } = target else { continue };
            let Some(svc) = inputs.services.get(&(namespace.as_str(), name.as_str())) else { continue };
            let port_name = svc.ports.iter().find(|p| p.port == *port).and_then(|p| p.name.clone());
            let hits: Vec<usize> = policies.targeting(namespace, name, port_name.as_deref()).collect();
            for i in hits {
                policies.images[i].ancestors.extend(gateways.iter().copied());
            }
            if let Some(tls) = policies.backend_tls(namespace, svc, *port) {
                out.insert((namespace.clone(), name.clone(), *port), tls);
            }
        }
    }
    out
}

/// ReferenceGrants by the namespace they grant access into.
struct Grants<'a>(HashMap<&'a str, Vec<&'a ReferenceGrant>>);

impl<'a> Grants<'a> {
    fn new(grants: &'a [Arc<ReferenceGrant>]) -> Self {
        let mut by_ns: HashMap<&str, Vec<&ReferenceGrant>> = HashMap::new();
        for g in grants {
            by_ns.entry(g.metadata.namespace.as_deref().unwrap_or("")).or_default().push(g);
        }
        Grants(by_ns)
    }

    /// Whether a `from_kind` (of the Gateway API group) in `from_ns` may refer to the core
    /// `to_kind` object `to_ns/to_name`.
    fn allows(&self, from_kind: &str, from_ns: &str, to_kind: &str, to_ns: &str, to_name: &str) -> bool {
        from_ns == to_ns
            || self.0.get(to_ns).is_some_and(|grants| {
                grants.iter().any(|g| {
                    g.spec.from.iter().any(|f| f.group == GROUP && f.kind == from_kind && f.namespace == from_ns)
                        && g.spec.to.iter().any(|t| {
                            t.group.is_empty() && t.kind == to_kind && t.name.as_deref().is_none_or(|n| n == to_name)
                        })
                })
            })
    }
}

fn gateway_image(gw: &Gateway, controller: &Arc<str>, inputs: &Inputs<'_>, grants: &Grants<'_>) -> GatewayImage {
    let key = ObjectKey::of(gw);
    let refusal = if !gw.spec.addresses.is_empty() {
        Some((
            "UnsupportedAddress",
            "spec.addresses: static addresses are not supported; the Gateway is reached on the controller's published address"
                .to_string(),
        ))
    } else if gw.spec.tls.is_some() {
        Some(("UnsupportedValue", "spec.tls (client certificate validation) is not supported".to_string()))
    } else {
        None
    };
    let mut listeners: Vec<ListenerImage> =
        gw.spec.listeners.iter().map(|l| listener_image(l, &key.namespace, inputs, grants)).collect();
    mark_conflicts(&mut listeners);
    GatewayImage { key, controller: controller.clone(), refusal, listeners }
}

fn listener_image(l: &api::Listener, gw_ns: &str, inputs: &Inputs<'_>, grants: &Grants<'_>) -> ListenerImage {
    let protocol = match l.protocol.as_str() {
        "HTTP" => Some(Protocol::Http),
        "HTTPS" => Some(Protocol::Https),
        _ => None,
    };
    let accepted = match protocol {
        None => Err(("UnsupportedProtocol", format!("protocol {} is not supported (HTTP and HTTPS are)", l.protocol))),
        Some(Protocol::Https) => match inputs.ports.https {
            Some(p) if i32::from(p) == l.port => tls_mode_ok(l),
            Some(p) => Err(("PortUnavailable", format!("HTTPS is served on port {p} only (TCP and UDP)"))),
            None => Err(("PortUnavailable", "no HTTPS listener is configured".to_string())),
        },
        Some(Protocol::Http) => match inputs.ports.http {
            Some(p) if i32::from(p) == l.port => Ok(()),
            Some(p) => Err(("PortUnavailable", format!("HTTP is served on port {p} only"))),
            None => Err((
                "PortUnavailable",
                "this controller has no plaintext HTTP listener; use an HTTPS listener".to_string(),
            )),
        },
    };
    let (mut supported_kinds, kinds_problem) = supported_kinds(l);
    // A listener of a protocol we do not serve supports no route kind at all.
    if protocol.is_none() {
        supported_kinds.clear();
    }
    let mut problems: Vec<Refusal> = kinds_problem.into_iter().collect();
    let mut certs = Vec::new();
    if protocol == Some(Protocol::Https) {
        let refs = l.tls.as_ref().map(|t| t.certificate_refs.as_slice()).unwrap_or_default();
        if refs.is_empty() && l.tls.as_ref().and_then(|t| t.mode.as_deref()).unwrap_or("Terminate") == "Terminate" {
            problems.push(("InvalidCertificateRef", "an HTTPS listener needs tls.certificateRefs".to_string()));
        }
        for r in refs {
            match certificate(r, gw_ns, inputs, grants) {
                Ok(c) => certs.push(c),
                Err(p) => problems.push(p),
            }
        }
    }
    let resolved = match problems.first() {
        None => Ok(()),
        Some((reason, _)) => Err((*reason, problems.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; "))),
    };
    let allowed = match l.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref()) {
        None => AllowedNamespaces::Same,
        Some(n) => match (n.from.as_deref().unwrap_or("Same"), &n.selector) {
            ("All", _) => AllowedNamespaces::All,
            ("Selector", Some(s)) => AllowedNamespaces::Selector(s.clone()),
            // A Selector without a selector selects nothing (the API server refuses it anyway).
            ("Selector", None) => AllowedNamespaces::Selector(LabelSelector {
                match_expressions: Some(vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                        key: "quic-ingress.dev/none".into(),
                        operator: "In".into(),
                        values: Some(Vec::new()),
                    },
                ]),
                match_labels: None,
            }),
            _ => AllowedNamespaces::Same,
        },
    };
    ListenerImage {
        name: l.name.clone(),
        port: l.port,
        protocol,
        hostname: l.hostname.as_ref().map(|h| h.to_ascii_lowercase()),
        allowed,
        supported_kinds,
        certs,
        accepted,
        resolved,
        conflicted: None,
    }
}

fn tls_mode_ok(l: &api::Listener) -> Result<(), Refusal> {
    match l.tls.as_ref().and_then(|t| t.mode.as_deref()).unwrap_or("Terminate") {
        "Terminate" => Ok(()),
        other => Err(("UnsupportedValue", format!("tls.mode {other} is not supported on HTTPS (Terminate is)"))),
    }
}

/// The route kinds a listener takes: HTTPRoute and GRPCRoute (both listener protocols
/// serve HTTP/2, with prior knowledge on plaintext), whatever else it lists.
fn supported_kinds(l: &api::Listener) -> (Vec<RouteGroupKind>, Option<Refusal>) {
    let kind = |k: RouteKind| RouteGroupKind { group: Some(GROUP.into()), kind: k.name().into() };
    let Some(kinds) = l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()).filter(|k| !k.is_empty()) else {
        return (vec![kind(RouteKind::Http), kind(RouteKind::Grpc)], None);
    };
    let of = |k: &RouteGroupKind| {
        let ours = k.group.as_deref().unwrap_or(GROUP) == GROUP;
        [RouteKind::Http, RouteKind::Grpc].into_iter().find(|r| ours && k.kind == r.name())
    };
    let mut listed: Vec<RouteKind> = kinds.iter().filter_map(of).collect();
    listed.sort();
    listed.dedup();
    let ours = |k: &RouteGroupKind| of(k).is_some();
    let supported: Vec<RouteGroupKind> = listed.into_iter().map(kind).collect();
    let invalid: Vec<String> = kinds
        .iter()
        .filter(|k| !ours(k))
        .map(|k| format!("{}/{}", k.group.as_deref().unwrap_or(GROUP), k.kind))
        .collect();
    let problem = (!invalid.is_empty()).then(|| {
        (
            "InvalidRouteKinds",
            format!("route kinds {} are not supported (HTTPRoute and GRPCRoute are)", invalid.join(", ")),
        )
    });
    (supported, problem)
}

fn certificate(
    r: &api::ObjectRef,
    gw_ns: &str,
    inputs: &Inputs<'_>,
    grants: &Grants<'_>,
) -> Result<((String, String), Arc<CertifiedKey>), Refusal> {
    let (group, kind) = (r.group.as_deref().unwrap_or(""), r.kind.as_deref().unwrap_or("Secret"));
    let ns = r.namespace.as_deref().unwrap_or(gw_ns);
    if !group.is_empty() || kind != "Secret" {
        return Err((
            "InvalidCertificateRef",
            format!("certificateRef {group}/{kind} {ns}/{} is not a Secret", r.name),
        ));
    }
    if !grants.allows("Gateway", gw_ns, "Secret", ns, &r.name) {
        return Err((
            "RefNotPermitted",
            format!("Secret {ns}/{} is in another namespace and no ReferenceGrant there allows it", r.name),
        ));
    }
    if !inputs.watched(ns) {
        return Err(("InvalidCertificateRef", format!("Secret {ns}/{}: namespace {ns} is not watched", r.name)));
    }
    let secret = inputs
        .secrets
        .get(&(ns, r.name.as_str()))
        .ok_or_else(|| ("InvalidCertificateRef", format!("no kubernetes.io/tls Secret {ns}/{}", r.name)))?;
    let key = crate::kube::translate::secret_cert(secret)
        .map_err(|e| ("InvalidCertificateRef", format!("Secret {ns}/{}: {e}", r.name)))?;
    Ok(((ns.to_string(), r.name.clone()), key))
}

/// Listeners of one Gateway on the same port: different protocols conflict
/// (`ProtocolConflict`), the same protocol and hostname conflict (`HostnameConflict`).
fn mark_conflicts(listeners: &mut [ListenerImage]) {
    let snapshot: Vec<(i32, Option<Protocol>, Option<String>)> =
        listeners.iter().map(|l| (l.port, l.protocol, l.hostname.clone())).collect();
    for (i, l) in listeners.iter_mut().enumerate() {
        let others = snapshot.iter().enumerate().filter(|(j, o)| *j != i && o.0 == l.port);
        for (_, (_, protocol, hostname)) in others {
            if *protocol != l.protocol {
                l.conflicted =
                    Some(("ProtocolConflict", format!("another listener uses port {} with another protocol", l.port)));
                break;
            }
            if *hostname == l.hostname {
                l.conflicted =
                    Some(("HostnameConflict", format!("another listener on port {} has the same hostname", l.port)));
            }
        }
    }
}

fn route_image(
    route: &RouteObject,
    gateways: &[GatewayImage],
    index: &HashMap<(String, String), usize>,
    namespace_labels: &HashMap<String, BTreeMap<String, String>>,
    inputs: &Inputs<'_>,
    grants: &Grants<'_>,
) -> Option<RouteImage> {
    let key = match route {
        RouteObject::Http(r) => ObjectKey::of(r.as_ref()),
        RouteObject::Grpc(r) => ObjectKey::of(r.as_ref()),
    };
    let hostnames = route.hostnames();
    let parents: Vec<ParentImage> = route
        .parent_refs()
        .iter()
        .filter(|p| p.group.as_deref().unwrap_or(GROUP) == GROUP && p.kind.as_deref().unwrap_or("Gateway") == "Gateway")
        .filter_map(|p| {
            let ns = p.namespace.clone().unwrap_or_else(|| key.namespace.clone());
            let gateway = *index.get(&(ns, p.name.clone()))?;
            let labels = namespace_labels.get(&key.namespace);
            let attached = attach(route.kind(), &hostnames, &key.namespace, labels, p, &gateways[gateway]);
            let controller = gateways[gateway].controller.clone();
            Some(ParentImage { parent_ref: p.clone(), gateway, controller, attached })
        })
        .collect();
    if parents.is_empty() {
        return None;
    }
    let mut unresolved = Vec::new();
    let from = Referrer { kind: route.kind(), namespace: &key.namespace };
    let rules = match route {
        RouteObject::Http(r) => {
            r.spec.rules.iter().map(|r| rule_image(r, &from, inputs, grants, &mut unresolved)).collect()
        }
        RouteObject::Grpc(r) => {
            r.spec.rules.iter().map(|r| grpc_rule_image(r, &from, inputs, grants, &mut unresolved)).collect()
        }
    };
    Some(RouteImage { key, object: route.clone(), hostnames, parents, rules, unresolved })
}

/// Which listeners of `gw` the parentRef `p` attaches `route` to.
fn attach(
    kind: RouteKind,
    hostnames: &[String],
    route_ns: &str,
    route_ns_labels: Option<&BTreeMap<String, String>>,
    p: &ParentRef,
    gw: &GatewayImage,
) -> Result<Vec<Attachment>, Refusal> {
    if let Some((_, m)) = &gw.refusal {
        return Err(("NotAllowedByListeners", format!("the Gateway is not accepted: {m}")));
    }
    let named: Vec<(usize, &ListenerImage)> = gw
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| p.section_name.as_ref().is_none_or(|s| *s == l.name))
        .filter(|(_, l)| p.port.is_none_or(|port| port == l.port))
        .collect();
    if named.is_empty() {
        return Err(("NoMatchingParent", "no listener matches the parentRef's sectionName and port".to_string()));
    }
    let allowed: Vec<(usize, &ListenerImage)> = named
        .into_iter()
        .filter(|(_, l)| l.accepted.is_ok() && l.supported_kinds.iter().any(|k| k.kind == kind.name()))
        .filter(|(_, l)| match &l.allowed {
            AllowedNamespaces::Same => route_ns == gw.key.namespace,
            AllowedNamespaces::All => true,
            AllowedNamespaces::Selector(s) => route_ns_labels.is_some_and(|labels| selector_matches(s, labels)),
        })
        .collect();
    if allowed.is_empty() {
        return Err(("NotAllowedByListeners", "no listener's allowedRoutes admits this route".to_string()));
    }
    let attachments: Vec<Attachment> = allowed
        .into_iter()
        .filter_map(|(i, l)| {
            let hosts = intersect(l.hostname.as_deref(), hostnames);
            (!hosts.is_empty()).then_some(Attachment { listener: i, hosts })
        })
        .collect();
    if attachments.is_empty() {
        return Err(("NoMatchingListenerHostname", "no listener hostname matches the route's hostnames".to_string()));
    }
    Ok(attachments)
}

/// Whether `host` (exact) is covered by Gateway-style wildcard `*.suffix` (one or more
/// labels in front of the suffix).
fn under_wildcard(host: &str, suffix: &str) -> bool {
    host.len() > suffix.len() + 1 && host.ends_with(suffix) && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
}

/// The hostnames a route serves on a listener: the spec's intersection of the listener's
/// hostname with the route's; `[None]` when neither names one.
pub fn intersect(listener: Option<&str>, route: &[String]) -> Vec<Option<String>> {
    let Some(l) = listener else {
        return if route.is_empty() { vec![None] } else { route.iter().cloned().map(Some).collect() };
    };
    if route.is_empty() {
        return vec![Some(l.to_string())];
    }
    let mut out = Vec::new();
    for r in route {
        let hit = match (l.strip_prefix("*."), r.strip_prefix("*.")) {
            (None, None) => (l == r).then(|| r.clone()),
            (Some(ls), None) => under_wildcard(r, ls).then(|| r.clone()),
            (None, Some(rs)) => under_wildcard(l, rs).then(|| l.to_string()),
            (Some(ls), Some(rs)) => {
                if ls == rs || under_wildcard(rs, ls) {
                    Some(r.clone())
                } else if under_wildcard(ls, rs) {
                    Some(l.to_string())
                } else {
                    None
                }
            }
        };
        if let Some(h) = hit
            && !out.contains(&Some(h.clone()))
        {
            out.push(Some(h));
        }
    }
    out
}

/// `matchLabels` and `matchExpressions` (In, NotIn, Exists, DoesNotExist) against labels.
pub fn selector_matches(s: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = s.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = s.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// The route that refers to a backend or filter target: its kind names it in
/// ReferenceGrants and decides how the backend is spoken to.
struct Referrer<'a> {
    kind: RouteKind,
    namespace: &'a str,
}

fn weighted_backends(
    refs: &[api::HTTPBackendRef],
    from: &Referrer<'_>,
    inputs: &Inputs<'_>,
    grants: &Grants<'_>,
    unresolved: &mut Vec<Refusal>,
) -> Vec<WeightedBackend> {
    refs.iter()
        .map(|b| WeightedBackend {
            weight: b.weight.unwrap_or(1).max(0) as u32,
            target: backend(&b.target, from, inputs, grants, unresolved),
            filters: b.filters.iter().map(|f| filter(f, from, inputs, grants, unresolved)).collect(),
        })
        .collect()
}

/// A GRPCRoute rule as the HTTPRoute rule image it means: method matches become paths
/// (`grpc::method_path`), headers and the rest are the same.
fn grpc_rule_image(
    r: &api::GRPCRouteRule,
    from: &Referrer<'_>,
    inputs: &Inputs<'_>,
    grants: &Grants<'_>,
    unresolved: &mut Vec<Refusal>,
) -> RuleImage {
    let default_match = [api::GRPCRouteMatch::default()];
    let matches = if r.matches.is_empty() { &default_match[..] } else { &r.matches[..] };
    RuleImage {
        name: r.name.clone(),
        matches: matches
            .iter()
            .map(|m| RouteMatch {
                path: grpc::method_path(m.method.as_ref()),
                headers: value_matches(&m.headers),
                query_params: Vec::new(),
                method: None,
            })
            .collect(),
        filters: r.filters.iter().map(|f| grpc::filter_allowed(filter(f, from, inputs, grants, unresolved))).collect(),
        backends: weighted_backends(&r.backend_refs, from, inputs, grants, unresolved)
            .into_iter()
            .map(|mut b| {
                b.filters = b.filters.into_iter().map(grpc::filter_allowed).collect();
                b
            })
            .collect(),
        timeouts: Timeouts::default(),
    }
}

fn rule_image(
    r: &api::HTTPRouteRule,
    from: &Referrer<'_>,
    inputs: &Inputs<'_>,
    grants: &Grants<'_>,
    unresolved: &mut Vec<Refusal>,
) -> RuleImage {
    let default_match = [api::HTTPRouteMatch::default()];
    let matches = r.matches.as_deref().filter(|m| !m.is_empty()).unwrap_or(&default_match);
    let mut filter_of = |f: &HTTPRouteFilter| filter(f, from, inputs, grants, unresolved);
    let filters = r.filters.iter().map(&mut filter_of).collect();
    let backends = weighted_backends(&r.backend_refs, from, inputs, grants, unresolved);
    let duration = |d: &Option<String>| d.as_deref().and_then(|s| crate::config::parse_duration(s).ok());
    RuleImage {
        name: r.name.clone(),
        matches: matches.iter().map(route_match).collect(),
        filters,
        backends,
        timeouts: r
            .timeouts
            .as_ref()
            .map(|t| Timeouts { request: duration(&t.request), backend_request: duration(&t.backend_request) })
            .unwrap_or_default(),
    }
}

fn route_match(m: &api::HTTPRouteMatch) -> RouteMatch {
    let value = m.path.as_ref().and_then(|p| p.value.clone()).unwrap_or_else(|| "/".into());
    let path = match m.path.as_ref().and_then(|p| p.type_.as_deref()).unwrap_or("PathPrefix") {
        "Exact" => PathMatch::Exact(value),
        "RegularExpression" => PathMatch::RegularExpression(value),
        _ => PathMatch::Prefix(value),
    };
    RouteMatch {
        path,
        headers: value_matches(&m.headers),
        query_params: value_matches(&m.query_params),
        method: m.method.clone(),
    }
}

fn value_matches(list: &[api::HTTPHeaderMatch]) -> Vec<ValueMatch> {
    list.iter()
        .map(|h| ValueMatch {
            name: h.name.clone(),
            value: h.value.clone(),
            regex: h.type_.as_deref() == Some("RegularExpression"),
        })
        .collect()
}

fn filter(
    f: &HTTPRouteFilter,
    from: &Referrer<'_>,
    inputs: &Inputs<'_>,
    grants: &Grants<'_>,
    unresolved: &mut Vec<Refusal>,
) -> Filter {
    let missing = || Filter::Invalid(f.type_.clone());
    match f.type_.as_str() {
        "RequestHeaderModifier" => {
            f.request_header_modifier.clone().map_or_else(missing, Filter::RequestHeaderModifier)
        }
        "ResponseHeaderModifier" => {
            f.response_header_modifier.clone().map_or_else(missing, Filter::ResponseHeaderModifier)
        }
        "RequestRedirect" => f.request_redirect.clone().map_or_else(missing, Filter::RequestRedirect),
        "URLRewrite" => f.url_rewrite.clone().map_or_else(missing, Filter::UrlRewrite),
        "RequestMirror" => match &f.request_mirror {
            Some(m) => {
                let percent = match (&m.percent, &m.fraction) {
                    (Some(p), _) => Some(f64::from(*p)),
                    (None, Some(fr)) => {
                        Some(f64::from(fr.numerator) * 100.0 / f64::from(fr.denominator.unwrap_or(100).max(1)))
                    }
                    (None, None) => None,
                };
                Filter::RequestMirror { backend: backend(&m.backend_ref, from, inputs, grants, unresolved), percent }
            }
            None => missing(),
        },
        "CORS" => f.cors.clone().map_or_else(missing, Filter::Cors),
        "ExtensionRef" => f.extension_ref.clone().map_or_else(missing, Filter::ExtensionRef),
        _ => missing(),
    }
}

/// Resolves a backendRef to a Service port, or says why it cannot be (recorded for the
/// route's `ResolvedRefs`).
fn backend(
    b: &BackendObjectRef,
    from: &Referrer<'_>,
    inputs: &Inputs<'_>,
    grants: &Grants<'_>,
    unresolved: &mut Vec<Refusal>,
) -> Backend {
    let route_ns = from.namespace;
    let ns = b.namespace.as_deref().unwrap_or(route_ns);
    let (group, kind) = (b.group.as_deref().unwrap_or(""), b.kind.as_deref().unwrap_or("Service"));
    let refused = |reason: &'static str, message: String, unresolved: &mut Vec<Refusal>| {
        unresolved.push((reason, message.clone()));
        Backend::Invalid { reason, message }
    };
    if !group.is_empty() || kind != "Service" {
        return refused(
            "InvalidKind",
            format!("backendRef {group}/{kind} {ns}/{} is not a Service", b.name),
            unresolved,
        );
    }
    if !grants.allows(from.kind.name(), route_ns, "Service", ns, &b.name) {
        let message = format!("Service {ns}/{} is in another namespace and no ReferenceGrant there allows it", b.name);
        return refused("RefNotPermitted", message, unresolved);
    }
    let Some(port) = b.port else {
        return refused("BackendNotFound", format!("backendRef to Service {ns}/{} has no port", b.name), unresolved);
    };
    let watched = inputs.watched(ns);
    match inputs.services.get(&(ns, b.name.as_str())) {
        Some(svc) if watched => {
            let has_port = svc.ports.iter().any(|p| p.port == port);
            if has_port {
                let protocol = grpc::backend_protocol(from.kind);
                Backend::Service { namespace: ns.to_string(), name: b.name.clone(), port, protocol }
            } else {
                refused("BackendNotFound", format!("Service {ns}/{} has no port {port}", b.name), unresolved)
            }
        }
        _ => refused("BackendNotFound", format!("Service {ns}/{} not found", b.name), unresolved),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_intersection_follows_the_spec() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let some = |v: &[&str]| v.iter().map(|x| Some(x.to_string())).collect::<Vec<_>>();
        assert_eq!(intersect(None, &[]), vec![None]);
        assert_eq!(intersect(Some("a.example.com"), &[]), some(&["a.example.com"]));
        assert_eq!(intersect(None, &s(&["a.example.com"])), some(&["a.example.com"]));
        assert_eq!(intersect(Some("a.example.com"), &s(&["b.example.com"])), Vec::<Option<String>>::new());
        // Gateway wildcards cover one or more labels, never the suffix itself.
        assert_eq!(
            intersect(Some("*.example.com"), &s(&["a.example.com", "x.y.example.com", "example.com"])),
            some(&["a.example.com", "x.y.example.com"])
        );
        assert_eq!(intersect(Some("a.example.com"), &s(&["*.example.com"])), some(&["a.example.com"]));
        assert_eq!(intersect(Some("*.example.com"), &s(&["*.shop.example.com"])), some(&["*.shop.example.com"]));
        assert_eq!(intersect(Some("*.shop.example.com"), &s(&["*.example.com"])), some(&["*.shop.example.com"]));
        assert!(intersect(Some("*.example.com"), &s(&["*.example.org"])).is_empty());
    }

    #[test]
    fn label_selectors_match_labels_and_expressions() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        let labels: BTreeMap<String, String> = [("team".to_string(), "shop".to_string())].into();
        let by_label = LabelSelector { match_labels: Some(labels.clone()), match_expressions: None };
        assert!(selector_matches(&by_label, &labels));
        assert!(!selector_matches(&by_label, &BTreeMap::new()));
        let expr = |op: &str, values: &[&str]| LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
        };
        assert!(selector_matches(&expr("In", &["shop", "blog"]), &labels));
        assert!(!selector_matches(&expr("NotIn", &["shop"]), &labels));
        assert!(selector_matches(&expr("Exists", &[]), &labels));
        assert!(!selector_matches(&expr("DoesNotExist", &[]), &labels));
        assert!(!selector_matches(&expr("Bogus", &[]), &labels));
    }
}
