//! The lean forms the caches keep of Ingresses, Services and EndpointSlices: what
//! translation and status read of them and nothing else. Every object in scope is held for
//! the life of the process, and the k8s-openapi structs are mostly room for fields never
//! read: 840 bytes
//! of inline struct per Service, 448 per slice, plus the slice's label map (a 544-byte
//! tree node for the one label read) and an endpoint value per set of conditions. At
//! 10,000 Services with a slice each that was over half of what the caches held. An
//! Ingress kept whole was 600 bytes of inline struct (its `ObjectMeta` alone about 330).

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, Ingress, IngressBackend, IngressRule, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Serialize;

use super::cache::Named;
use super::watches::{LAST_APPLIED, Relevant, hash_json};
use super::world::SERVICE_NAME_LABEL;

/// The names and version of a stored object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Meta {
    namespace: Box<str>,
    name: Box<str>,
    /// `None` for objects built by hand (tests): such objects are never memoised.
    uid: Option<Box<str>>,
    resource_version: Option<Box<str>>,
}

impl Meta {
    fn of(m: ObjectMeta) -> Self {
        let boxed = |s: Option<String>| s.map(String::into_boxed_str);
        Self {
            namespace: boxed(m.namespace).unwrap_or_default(),
            name: boxed(m.name).unwrap_or_default(),
            uid: boxed(m.uid),
            resource_version: boxed(m.resource_version),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `(uid, resourceVersion)`, when the object has both.
    pub fn version(&self) -> Option<(&str, &str)> {
        Some((self.uid.as_deref()?, self.resource_version.as_deref()?))
    }
}

/// What translation, ownership and status need to name an object and order it: its
/// names ([`Named`]), uid and creation time. Every API object has them; so do the records.
pub trait Identity: Named {
    fn uid(&self) -> Option<&str>;
    fn created(&self) -> Option<&Time>;
}

impl<K: kube::Resource> Identity for K {
    fn uid(&self) -> Option<&str> {
        self.meta().uid.as_deref()
    }

    fn created(&self) -> Option<&Time> {
        self.meta().creation_timestamp.as_ref()
    }
}

/// An Ingress: its names and version, creation time (the oldest wins a conflict),
/// generation, annotations (but `kubectl apply`'s copy of the object), spec, and the
/// addresses its status shows. Labels, owners, finalizers, managedFields and the rest of
/// the status are not read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngressRecord {
    pub meta: Meta,
    pub created: Option<Time>,
    /// `None` for objects built by hand (tests): their spec is then fingerprinted.
    pub generation: Option<i64>,
    /// Sorted by key, as the API's map is.
    annotations: Box<[(Box<str>, Box<str>)]>,
    pub spec: Option<IngressSpecRecord>,
    /// `status.loadBalancer.ingress`: the IP, else the hostname, of each entry.
    pub load_balancer: Box<[Box<str>]>,
}

impl IngressRecord {
    pub fn annotation(&self, key: &str) -> Option<&str> {
        let found = self.annotations.binary_search_by(|(k, _)| k.as_ref().cmp(key)).ok()?;
        Some(&self.annotations[found].1)
    }
}

impl From<Ingress> for IngressRecord {
    fn from(ing: Ingress) -> Self {
        let mut metadata = ing.metadata;
        let (created, generation) = (metadata.creation_timestamp.take(), metadata.generation);
        let annotations = metadata
            .annotations
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k != LAST_APPLIED)
            .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
            .collect();
        let load_balancer = ing
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| i.ip.or(i.hostname))
            .map(String::into_boxed_str)
            .collect();
        let spec = ing.spec.map(IngressSpecRecord::from);
        Self { meta: Meta::of(metadata), created, generation, annotations, spec, load_balancer }
    }
}

/// An Ingress spec as translation reads it. The k8s-openapi form was about 530 bytes for
/// one rule of one path (inline structs of optional fields, `pathType` as a string); this
/// is about a third of that.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IngressSpecRecord {
    pub class_name: Option<Box<str>>,
    pub default_backend: Option<Box<IngressBackendRecord>>,
    pub rules: Box<[IngressRuleRecord]>,
    pub tls: Box<[IngressTlsRecord]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngressRuleRecord {
    pub host: Option<Box<str>>,
    /// `http.paths`; empty without `http`.
    pub paths: Box<[IngressPathRecord]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngressPathRecord {
    pub path: Option<Box<str>>,
    /// `pathType: Exact`; any other type is served as a prefix (ImplementationSpecific
    /// included), so nothing else of it is kept.
    pub exact: bool,
    pub backend: IngressBackendRecord,
}

/// An Ingress backend: a Service (which wins when both are set, as translation always
/// read it), a resource, or neither.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum IngressBackendRecord {
    Service { name: Box<str>, port: Option<BackendPort> },
    Resource { api_group: Option<Box<str>>, kind: Box<str>, name: Box<str> },
    None,
}

/// A Service backend's port: its number if given, else its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum BackendPort {
    Number(i32),
    Name(Box<str>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngressTlsRecord {
    /// Empty when not given (then the rules' hosts).
    pub hosts: Box<[Box<str>]>,
    pub secret_name: Option<Box<str>>,
}

fn boxed(s: Option<String>) -> Option<Box<str>> {
    s.map(String::into_boxed_str)
}

impl From<IngressSpec> for IngressSpecRecord {
    fn from(spec: IngressSpec) -> Self {
        Self {
            class_name: boxed(spec.ingress_class_name),
            default_backend: spec.default_backend.map(|b| Box::new(b.into())),
            rules: spec.rules.unwrap_or_default().into_iter().map(Into::into).collect(),
            tls: spec.tls.unwrap_or_default().into_iter().map(Into::into).collect(),
        }
    }
}

impl From<IngressRule> for IngressRuleRecord {
    fn from(rule: IngressRule) -> Self {
        let paths = rule.http.map(|h| h.paths).unwrap_or_default();
        Self { host: boxed(rule.host), paths: paths.into_iter().map(Into::into).collect() }
    }
}

impl From<HTTPIngressPath> for IngressPathRecord {
    fn from(p: HTTPIngressPath) -> Self {
        Self { path: boxed(p.path), exact: p.path_type == "Exact", backend: p.backend.into() }
    }
}

impl From<IngressBackend> for IngressBackendRecord {
    fn from(b: IngressBackend) -> Self {
        let port = |p: ServiceBackendPort| match (p.number, p.name) {
            (Some(n), _) => Some(BackendPort::Number(n)),
            (None, name) => boxed(name).map(BackendPort::Name),
        };
        match (b.service, b.resource) {
            (Some(svc), _) => Self::Service { name: svc.name.into_boxed_str(), port: svc.port.and_then(port) },
            (None, Some(r)) => Self::Resource {
                api_group: boxed(r.api_group),
                kind: r.kind.into_boxed_str(),
                name: r.name.into_boxed_str(),
            },
            (None, None) => Self::None,
        }
    }
}

impl From<IngressTLS> for IngressTlsRecord {
    fn from(t: IngressTLS) -> Self {
        let hosts = t.hosts.unwrap_or_default().into_iter().map(String::into_boxed_str).collect();
        Self { hosts, secret_name: boxed(t.secret_name) }
    }
}

impl IngressSpecRecord {
    /// The Service names of the rules' backends.
    pub fn rule_services(&self) -> impl Iterator<Item = &str> + '_ {
        self.rules.iter().flat_map(|r| r.paths.iter()).filter_map(|p| match &p.backend {
            IngressBackendRecord::Service { name, .. } => Some(&**name),
            _ => None,
        })
    }
}

impl Named for IngressRecord {
    fn names(&self) -> (&str, &str) {
        (&self.meta.namespace, &self.meta.name)
    }
}

impl Identity for IngressRecord {
    fn uid(&self) -> Option<&str> {
        self.meta.uid.as_deref()
    }

    fn created(&self) -> Option<&Time> {
        self.created.as_ref()
    }
}

impl Relevant for IngressRecord {
    /// The spec bumps `generation`; annotations (the class, and any annotation filters
    /// will read) do not. The uid tells a re-created object (oldest wins a conflict).
    /// Status is left out: our own status writes wake nothing.
    fn fingerprint(&self) -> u64 {
        let spec = self.generation.is_none().then_some(&self.spec);
        let m = &self.meta;
        hash_json(&(&m.uid, self.generation, &self.annotations, spec), m.resource_version.as_deref())
    }
}

/// A Service: its names and ports. The rest of its spec (cluster IPs, selector, type,
/// policies), its labels, annotations and status are not read; the published Service's
/// address is read by a watch of its own (`status.rs`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceRecord {
    pub meta: Meta,
    pub ports: Vec<ServicePort>,
}

impl From<Service> for ServiceRecord {
    fn from(s: Service) -> Self {
        let mut ports = s.spec.and_then(|spec| spec.ports).unwrap_or_default();
        ports.shrink_to_fit();
        Self { meta: Meta::of(s.metadata), ports }
    }
}

impl Named for ServiceRecord {
    fn names(&self) -> (&str, &str) {
        (&self.meta.namespace, &self.meta.name)
    }
}

impl Named for SliceRecord {
    fn names(&self) -> (&str, &str) {
        (&self.meta.namespace, &self.meta.name)
    }
}

impl Relevant for ServiceRecord {
    /// A status write or a label change leaves the record as it was.
    fn fingerprint(&self) -> u64 {
        hash_json(&(&self.meta.uid, &self.ports), self.meta.resource_version.as_deref())
    }
}

/// A slice port endpoints serve TCP on; the slice's other ports (UDP, SCTP, or without a
/// number) are never routed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlicePort {
    /// "" for the Service's one unnamed port.
    pub name: Box<str>,
    pub port: i32,
}

/// An EndpointSlice: the Service it is for, its TCP ports and the addresses of its ready
/// endpoints. An endpoint that is not ready and serving is never routed to, so it is not
/// kept: its changes wake no build. Pod references, nodes, zones and hints are dropped.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SliceRecord {
    pub meta: Meta,
    /// The `kubernetes.io/service-name` label; "" when it has none (read by nothing).
    pub service: Box<str>,
    pub ports: Vec<SlicePort>,
    /// Ready and serving endpoint addresses, in the slice's order. Empty for an FQDN slice
    /// (not routable addresses).
    pub ready: Vec<IpAddr>,
}

impl SliceRecord {
    /// The endpoint port of the Service port named `name` ("" for an unnamed port), as
    /// EndpointSlices name their ports.
    pub fn port(&self, name: &str) -> Option<i32> {
        self.ports.iter().find(|p| &*p.name == name).map(|p| p.port)
    }

    /// `ip:port` of each ready endpoint on `port` (IPv6 in brackets).
    pub fn ready_on(&self, port: u16) -> impl Iterator<Item = SocketAddr> + '_ {
        self.ready.iter().map(move |ip| SocketAddr::new(*ip, port))
    }
}

impl From<EndpointSlice> for SliceRecord {
    fn from(s: EndpointSlice) -> Self {
        let service = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).cloned().unwrap_or_default();
        let routable = matches!(s.address_type.as_str(), "IPv4" | "IPv6");
        let mut ready: Vec<IpAddr> = Vec::new();
        if routable {
            for ep in &s.endpoints {
                let cond = ep.conditions.as_ref();
                // A nil condition means "unknown", which the API says to treat as ready.
                let is_ready = cond.and_then(|c| c.ready).unwrap_or(true);
                let serving = cond.and_then(|c| c.serving).unwrap_or(is_ready);
                if is_ready && serving {
                    // The API server validates the addresses of IP slices; one that does not
                    // parse could not be connected to either.
                    ready.extend(ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()));
                }
            }
        }
        ready.shrink_to_fit();
        let mut ports: Vec<SlicePort> = s
            .ports
            .into_iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| Some(SlicePort { name: p.name.unwrap_or_default().into_boxed_str(), port: p.port? }))
            .collect();
        ports.shrink_to_fit();
        Self { meta: Meta::of(s.metadata), service: service.into_boxed_str(), ports, ready }
    }
}

impl Relevant for SliceRecord {
    fn fingerprint(&self) -> u64 {
        let Self { meta, service, ports, ready } = self;
        hash_json(&(&meta.uid, service, ports, ready), meta.resource_version.as_deref())
    }
}

/// Tests give objects of any kind a version: a uid made from their (namespace, name) and
/// a resourceVersion.
#[cfg(test)]
pub(crate) trait SetVersion {
    fn set_version(&mut self, uid: &dyn Fn(&str, &str) -> String, resource_version: &str);
}

#[cfg(test)]
impl<K: kube::Resource> SetVersion for K {
    fn set_version(&mut self, uid: &dyn Fn(&str, &str) -> String, resource_version: &str) {
        let m = self.meta_mut();
        m.uid = Some(uid(m.namespace.as_deref().unwrap_or(""), m.name.as_deref().unwrap_or("")));
        m.resource_version = Some(resource_version.into());
    }
}

#[cfg(test)]
impl Meta {
    fn set_version(&mut self, uid: &dyn Fn(&str, &str) -> String, resource_version: &str) {
        self.uid = Some(uid(&self.namespace, &self.name).into());
        self.resource_version = Some(resource_version.into());
    }
}

#[cfg(test)]
impl SetVersion for ServiceRecord {
    fn set_version(&mut self, uid: &dyn Fn(&str, &str) -> String, resource_version: &str) {
        self.meta.set_version(uid, resource_version);
    }
}

#[cfg(test)]
impl SetVersion for IngressRecord {
    fn set_version(&mut self, uid: &dyn Fn(&str, &str) -> String, resource_version: &str) {
        self.meta.set_version(uid, resource_version);
    }
}

#[cfg(test)]
impl SetVersion for SliceRecord {
    fn set_version(&mut self, uid: &dyn Fn(&str, &str) -> String, resource_version: &str) {
        self.meta.set_version(uid, resource_version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServiceSpec, ServiceStatus};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    #[test]
    fn an_ingress_spec_keeps_what_translation_reads() {
        use k8s_openapi::api::core::v1::TypedLocalObjectReference;
        use k8s_openapi::api::networking::v1::{HTTPIngressRuleValue, IngressServiceBackend};
        let service = |name: &str, port: ServiceBackendPort| IngressBackend {
            service: Some(IngressServiceBackend { name: name.into(), port: Some(port) }),
            ..IngressBackend::default()
        };
        let path = |path: &str, path_type: &str, backend: IngressBackend| HTTPIngressPath {
            path: Some(path.into()),
            path_type: path_type.into(),
            backend,
        };
        let number = ServiceBackendPort { number: Some(80), name: Some("http".into()) };
        let named = ServiceBackendPort { name: Some("http".into()), ..ServiceBackendPort::default() };
        let resource = TypedLocalObjectReference {
            api_group: Some("quic-ingress.dev".into()),
            kind: "BackendGroup".into(),
            name: "pool".into(),
        };
        let both = IngressBackend { resource: Some(resource.clone()), ..service("web", named.clone()) };
        let spec = IngressSpec {
            ingress_class_name: Some("quic".into()),
            rules: Some(vec![
                IngressRule {
                    host: Some("a.example.com".into()),
                    http: Some(HTTPIngressRuleValue {
                        paths: vec![
                            path("/x", "Exact", service("web", number)),
                            path("/", "ImplementationSpecific", both),
                            path("/r", "Prefix", IngressBackend { resource: Some(resource), service: None }),
                            path("/n", "Prefix", IngressBackend::default()),
                        ],
                    }),
                },
                IngressRule { host: None, http: None },
            ]),
            tls: Some(vec![IngressTLS { hosts: None, secret_name: Some("cert".into()) }]),
            default_backend: Some(service("fallback", ServiceBackendPort::default())),
        };
        let kept = IngressSpecRecord::from(spec);
        assert_eq!(kept.class_name.as_deref(), Some("quic"));
        let paths = &kept.rules[0].paths;
        let view: Vec<_> = paths.iter().map(|p| (p.path.as_deref(), p.exact)).collect();
        assert_eq!(view, [(Some("/x"), true), (Some("/"), false), (Some("/r"), false), (Some("/n"), false)]);
        let svc = |name: &str, port| IngressBackendRecord::Service { name: name.into(), port };
        assert_eq!(paths[0].backend, svc("web", Some(BackendPort::Number(80))), "the number wins over the name");
        assert_eq!(paths[1].backend, svc("web", Some(BackendPort::Name("http".into()))), "a Service wins");
        let pool = IngressBackendRecord::Resource {
            api_group: Some("quic-ingress.dev".into()),
            kind: "BackendGroup".into(),
            name: "pool".into(),
        };
        assert_eq!((&paths[2].backend, &paths[3].backend), (&pool, &IngressBackendRecord::None));
        assert_eq!((kept.rules[1].host.as_deref(), kept.rules[1].paths.len()), (None, 0), "a rule without http");
        assert_eq!(kept.default_backend.as_deref(), Some(&svc("fallback", None)), "a port of neither kind");
        assert_eq!((kept.tls[0].hosts.len(), kept.tls[0].secret_name.as_deref()), (0, Some("cert")));
        assert_eq!(kept.rule_services().collect::<Vec<_>>(), ["web", "web"]);
    }

    fn meta(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            uid: Some(format!("uid-{name}")),
            resource_version: Some("7".into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..ObjectMeta::default()
        }
    }

    fn endpoint(ip: &str, ready: Option<bool>, serving: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions { ready, serving, terminating: None }),
            node_name: Some("node-1".into()),
            ..Endpoint::default()
        }
    }

    fn slice(family: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            metadata: meta("web-1", &[(SERVICE_NAME_LABEL, "web"), ("app", "web")]),
            address_type: family.into(),
            endpoints,
            ports: Some(vec![
                EndpointPort { name: Some("http".into()), port: Some(8080), ..EndpointPort::default() },
                EndpointPort {
                    name: Some("dns".into()),
                    port: Some(53),
                    protocol: Some("UDP".into()),
                    ..EndpointPort::default()
                },
                EndpointPort { name: Some("none".into()), port: None, ..EndpointPort::default() },
            ]),
        }
    }

    #[test]
    fn a_service_keeps_its_names_version_and_ports_and_not_its_status() {
        let port =
            ServicePort { name: Some("http".into()), port: 80, app_protocol: Some("h2c".into()), ..Default::default() };
        let svc = Service {
            metadata: meta("web", &[("app", "web")]),
            spec: Some(ServiceSpec {
                ports: Some(vec![port.clone()]),
                cluster_ip: Some("10.96.0.7".into()),
                type_: Some("ClusterIP".into()),
                ..ServiceSpec::default()
            }),
            status: None,
        };
        let record = ServiceRecord::from(svc.clone());
        assert_eq!((record.meta.namespace(), record.meta.name()), ("shop", "web"));
        assert_eq!(record.meta.version(), Some(("uid-web", "7")));
        assert_eq!(record.ports, [port]);
        let written = Service { status: Some(ServiceStatus::default()), ..svc.clone() };
        let mut relabelled = written.clone();
        relabelled.metadata.resource_version = Some("8".into());
        relabelled.metadata.labels = None;
        assert_eq!(record.fingerprint(), ServiceRecord::from(relabelled).fingerprint(), "status and labels");
        let mut moved = svc;
        if let Some(p) = moved.spec.as_mut().and_then(|s| s.ports.as_mut()) {
            p[0].port = 81;
        }
        assert_ne!(record.fingerprint(), ServiceRecord::from(moved).fingerprint());
    }

    #[test]
    fn a_slice_keeps_its_service_its_tcp_ports_and_its_ready_serving_addresses_in_order() {
        let record = SliceRecord::from(slice(
            "IPv4",
            vec![
                endpoint("10.0.0.3", Some(true), Some(true)),
                endpoint("10.0.0.1", Some(false), Some(false)),
                endpoint("10.0.0.2", None, None),
                endpoint("10.0.0.4", Some(true), Some(false)),
                endpoint("not-an-ip", Some(true), None),
            ],
        ));
        assert_eq!(&*record.service, "web");
        assert_eq!(record.ports, [SlicePort { name: "http".into(), port: 8080 }], "UDP and unnumbered ports dropped");
        assert_eq!((record.port("http"), record.port("dns"), record.port("")), (Some(8080), None, None));
        let ready: Vec<String> = record.ready_on(8080).map(|a| a.to_string()).collect();
        assert_eq!(ready, ["10.0.0.3:8080", "10.0.0.2:8080"], "unknown conditions count as ready");
    }

    #[test]
    fn ipv6_addresses_are_bracketed_and_fqdn_slices_route_nowhere() {
        let v6 = SliceRecord::from(slice("IPv6", vec![endpoint("fd00::1", Some(true), Some(true))]));
        assert_eq!(v6.ready_on(443).map(|a| a.to_string()).collect::<Vec<_>>(), ["[fd00::1]:443"]);
        let fqdn = SliceRecord::from(slice("FQDN", vec![endpoint("db.example.com", Some(true), Some(true))]));
        assert!(fqdn.ready.is_empty());
    }

    #[test]
    fn a_slice_changes_only_when_what_is_routed_to_does() {
        let base = slice("IPv4", vec![endpoint("10.0.0.1", Some(true), Some(true))]);
        let fingerprint = |s: &EndpointSlice| SliceRecord::from(s.clone()).fingerprint();
        let mut unready_added = base.clone();
        unready_added.endpoints.push(endpoint("10.0.0.9", Some(false), Some(false)));
        unready_added.metadata.resource_version = Some("8".into());
        assert_eq!(fingerprint(&base), fingerprint(&unready_added), "an endpoint not ready is not routed to");
        let mut other_label = base.clone();
        if let Some(l) = other_label.metadata.labels.as_mut() {
            l.insert("app".into(), "other".into());
        }
        assert_eq!(fingerprint(&base), fingerprint(&other_label));
        let mut moved = base.clone();
        moved.endpoints[0].addresses = vec!["10.0.0.2".into()];
        assert_ne!(fingerprint(&base), fingerprint(&moved));
        let mut renamed = base.clone();
        if let Some(l) = renamed.metadata.labels.as_mut() {
            l.insert(SERVICE_NAME_LABEL.into(), "api".into());
        }
        assert_ne!(fingerprint(&base), fingerprint(&renamed));
    }
}
