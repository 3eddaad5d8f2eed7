//! Builders for the objects cluster tests create: Service, EndpointSlice, Ingress,
//! IngressClass and Secret, so a test states only what matters to it.
//!
//! Builders set no namespace; [`crate::TestNamespace::create`] puts objects in the test's
//! namespace.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, Service, ServicePort, ServiceSpec, TypedLocalObjectReference};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressClass, IngressClassSpec, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// The label that ties an EndpointSlice to its Service, as the EndpointSlice
/// controller sets it.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Marks slices as made by someone other than the EndpointSlice controller, so a real
/// cluster's controller leaves them alone.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The managed-by value of slices made by these builders.
pub const MANAGED_BY: &str = "quic-ingress-e2e";
/// Set on an IngressClass that is the cluster default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

#[derive(Clone, Debug, Default)]
struct Meta {
    name: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

impl Meta {
    fn new(name: &str) -> Self {
        Meta { name: name.to_string(), ..Meta::default() }
    }

    fn build(self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name),
            labels: (!self.labels.is_empty()).then_some(self.labels),
            annotations: (!self.annotations.is_empty()).then_some(self.annotations),
            ..ObjectMeta::default()
        }
    }
}

macro_rules! metadata_setters {
    ($builder:ty) => {
        impl $builder {
            /// Adds a label.
            pub fn label(mut self, key: &str, value: &str) -> Self {
                self.meta.labels.insert(key.to_string(), value.to_string());
                self
            }

            /// Adds an annotation.
            pub fn annotation(mut self, key: &str, value: &str) -> Self {
                self.meta.annotations.insert(key.to_string(), value.to_string());
                self
            }
        }
    };
}

/// A port of a Service, by number or by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    Number(i32),
    Name(String),
}

impl From<i32> for PortRef {
    fn from(n: i32) -> Self {
        PortRef::Number(n)
    }
}

impl From<&str> for PortRef {
    fn from(name: &str) -> Self {
        PortRef::Name(name.to_string())
    }
}

// === Service ===

/// A ClusterIP Service without a selector: its endpoints come from EndpointSlices the test
/// creates, since there is no EndpointSlice controller on testenv.
pub fn service(name: &str) -> ServiceBuilder {
    ServiceBuilder { meta: Meta::new(name), ports: Vec::new(), selector: BTreeMap::new() }
}

#[derive(Clone, Debug)]
pub struct ServiceBuilder {
    meta: Meta,
    ports: Vec<ServicePort>,
    selector: BTreeMap<String, String>,
}

metadata_setters!(ServiceBuilder);

impl ServiceBuilder {
    /// A TCP port whose target port is the same number.
    pub fn port(self, name: &str, port: i32) -> Self {
        self.port_to(name, port, port)
    }

    /// A TCP port forwarding to a different target port.
    pub fn port_to(mut self, name: &str, port: i32, target_port: i32) -> Self {
        self.ports.push(ServicePort {
            name: Some(name.to_string()),
            port,
            target_port: Some(IntOrString::Int(target_port)),
            protocol: Some("TCP".to_string()),
            ..ServicePort::default()
        });
        self
    }

    /// Sets `appProtocol` of the port added last (e.g. `kubernetes.io/h2c`).
    pub fn app_protocol(mut self, protocol: &str) -> Self {
        if let Some(port) = self.ports.last_mut() {
            port.app_protocol = Some(protocol.to_string());
        }
        self
    }

    /// Adds a selector entry (only meaningful on a cluster with controllers).
    pub fn selector(mut self, key: &str, value: &str) -> Self {
        self.selector.insert(key.to_string(), value.to_string());
        self
    }

    pub fn build(self) -> Service {
        Service {
            metadata: self.meta.build(),
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".to_string()),
                ports: (!self.ports.is_empty()).then_some(self.ports),
                selector: (!self.selector.is_empty()).then_some(self.selector),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }
}

// === EndpointSlice ===

/// An EndpointSlice for `service`, named `<service>-e2e` unless [`EndpointSliceBuilder::name`]
/// says otherwise, labelled as the EndpointSlice controller would label it.
///
/// The API server rejects loopback addresses in EndpointSlices (127.0.0.0/8 and ::1 fail
/// validation), so backends that tests send traffic to run in the test host's network
/// namespace and are published under its address ([`crate::netns::TestHost::ip`]; start
/// them with [`crate::backend::Backend::start_in`]).
pub fn endpoint_slice(service: &str) -> EndpointSliceBuilder {
    EndpointSliceBuilder {
        meta: Meta::new(&format!("{service}-e2e"))
            .with_label(SERVICE_NAME_LABEL, service)
            .with_label(MANAGED_BY_LABEL, MANAGED_BY),
        address_type: None,
        endpoints: Vec::new(),
        ports: Vec::new(),
    }
}

impl Meta {
    fn with_label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }
}

#[derive(Clone, Debug)]
pub struct EndpointSliceBuilder {
    meta: Meta,
    address_type: Option<String>,
    endpoints: Vec<Endpoint>,
    ports: Vec<EndpointPort>,
}

metadata_setters!(EndpointSliceBuilder);

impl EndpointSliceBuilder {
    /// Renames the slice (a Service may have several).
    pub fn name(mut self, name: &str) -> Self {
        self.meta.name = name.to_string();
        self
    }

    /// Adds a ready, serving endpoint. The slice's address type (IPv4, IPv6) follows the
    /// first address.
    pub fn address(mut self, ip: impl ToString) -> Self {
        let ip = ip.to_string();
        if self.address_type.is_none() {
            let family = if ip.contains(':') { "IPv6" } else { "IPv4" };
            self.address_type = Some(family.to_string());
        }
        self.endpoints.push(Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions { ready: Some(true), serving: Some(true), terminating: Some(false) }),
            ..Endpoint::default()
        });
        self
    }

    /// Sets readiness of the endpoint added last (a not-ready endpoint still serves, as
    /// during a failing readiness probe).
    pub fn ready(mut self, ready: bool) -> Self {
        if let Some(conditions) = self.endpoints.last_mut().and_then(|e| e.conditions.as_mut()) {
            conditions.ready = Some(ready);
        }
        self
    }

    /// Marks the endpoint added last as terminating (not ready, still serving).
    pub fn terminating(mut self) -> Self {
        if let Some(conditions) = self.endpoints.last_mut().and_then(|e| e.conditions.as_mut()) {
            conditions.ready = Some(false);
            conditions.terminating = Some(true);
        }
        self
    }

    /// Adds a TCP port; `name` must match the Service port's name.
    pub fn port(mut self, name: &str, port: i32) -> Self {
        self.ports.push(EndpointPort {
            name: Some(name.to_string()),
            port: Some(port),
            protocol: Some("TCP".to_string()),
            ..EndpointPort::default()
        });
        self
    }

    pub fn build(self) -> EndpointSlice {
        EndpointSlice {
            metadata: self.meta.build(),
            address_type: self.address_type.unwrap_or_else(|| "IPv4".to_string()),
            endpoints: self.endpoints,
            ports: (!self.ports.is_empty()).then_some(self.ports),
        }
    }
}

// === Ingress ===

/// An Ingress; add rules with [`IngressBuilder::rule`].
pub fn ingress(name: &str) -> IngressBuilder {
    IngressBuilder { meta: Meta::new(name), class: None, rules: Vec::new(), tls: Vec::new(), default_backend: None }
}

#[derive(Clone, Debug)]
pub struct IngressBuilder {
    meta: Meta,
    class: Option<String>,
    rules: Vec<IngressRule>,
    tls: Vec<IngressTLS>,
    default_backend: Option<IngressBackend>,
}

metadata_setters!(IngressBuilder);

impl IngressBuilder {
    /// Sets `spec.ingressClassName`.
    pub fn class(mut self, class: &str) -> Self {
        self.class = Some(class.to_string());
        self
    }

    /// Routes `host` (empty: any host) and `path` (`path_type` Exact, Prefix or
    /// ImplementationSpecific) to a Service port. Paths of one host share one rule.
    pub fn rule(self, host: &str, path: &str, path_type: &str, service: &str, port: impl Into<PortRef>) -> Self {
        self.path(host, path, path_type, service_backend(service, port.into()))
    }

    /// Routes `host` and `path` to a resource backend, e.g. a BackendGroup
    /// (`api_group` "quic-ingress.dev", `kind` "BackendGroup").
    pub fn resource_rule(
        self,
        host: &str,
        path: &str,
        path_type: &str,
        api_group: &str,
        kind: &str,
        name: &str,
    ) -> Self {
        let backend = IngressBackend {
            resource: Some(TypedLocalObjectReference {
                api_group: Some(api_group.to_string()),
                kind: kind.to_string(),
                name: name.to_string(),
            }),
            service: None,
        };
        self.path(host, path, path_type, backend)
    }

    /// Sets `spec.defaultBackend` to a Service port.
    pub fn default_backend(mut self, service: &str, port: impl Into<PortRef>) -> Self {
        self.default_backend = Some(service_backend(service, port.into()));
        self
    }

    /// Terminates TLS for `hosts` with the `kubernetes.io/tls` Secret `secret`.
    pub fn tls(mut self, hosts: &[&str], secret: &str) -> Self {
        self.tls.push(IngressTLS {
            hosts: Some(hosts.iter().map(|h| h.to_string()).collect()),
            secret_name: Some(secret.to_string()),
        });
        self
    }

    fn path(mut self, host: &str, path: &str, path_type: &str, backend: IngressBackend) -> Self {
        let host = (!host.is_empty()).then(|| host.to_string());
        let path = HTTPIngressPath { backend, path: Some(path.to_string()), path_type: path_type.to_string() };
        match self.rules.iter_mut().find(|r| r.host == host) {
            Some(rule) => {
                if let Some(http) = rule.http.as_mut() {
                    http.paths.push(path);
                }
            }
            None => self.rules.push(IngressRule { host, http: Some(HTTPIngressRuleValue { paths: vec![path] }) }),
        }
        self
    }

    pub fn build(self) -> Ingress {
        Ingress {
            metadata: self.meta.build(),
            spec: Some(IngressSpec {
                ingress_class_name: self.class,
                rules: (!self.rules.is_empty()).then_some(self.rules),
                tls: (!self.tls.is_empty()).then_some(self.tls),
                default_backend: self.default_backend,
            }),
            ..Ingress::default()
        }
    }
}

fn service_backend(service: &str, port: PortRef) -> IngressBackend {
    let port = match port {
        PortRef::Number(n) => ServiceBackendPort { number: Some(n), name: None },
        PortRef::Name(name) => ServiceBackendPort { number: None, name: Some(name) },
    };
    IngressBackend {
        resource: None,
        service: Some(IngressServiceBackend { name: service.to_string(), port: Some(port) }),
    }
}

// === IngressClass ===

/// A (cluster-scoped) IngressClass handled by `controller`, e.g.
/// `ingress_class("quic", "quic-ingress.dev/controller")`.
pub fn ingress_class(name: &str, controller: &str) -> IngressClassBuilder {
    IngressClassBuilder { meta: Meta::new(name), controller: controller.to_string() }
}

#[derive(Clone, Debug)]
pub struct IngressClassBuilder {
    meta: Meta,
    controller: String,
}

metadata_setters!(IngressClassBuilder);

impl IngressClassBuilder {
    /// Makes it the cluster's default class.
    pub fn default_class(self) -> Self {
        self.annotation(DEFAULT_CLASS_ANNOTATION, "true")
    }

    pub fn build(self) -> IngressClass {
        IngressClass {
            metadata: self.meta.build(),
            spec: Some(IngressClassSpec { controller: Some(self.controller), parameters: None }),
        }
    }
}

// === Secret ===

/// An Opaque Secret; add entries with [`SecretBuilder::data`].
pub fn secret(name: &str) -> SecretBuilder {
    SecretBuilder { meta: Meta::new(name), type_: "Opaque".to_string(), data: BTreeMap::new() }
}

/// A `kubernetes.io/tls` Secret, as Ingress `tls[].secretName` refers to.
pub fn tls_secret(name: &str, cert_pem: impl AsRef<[u8]>, key_pem: impl AsRef<[u8]>) -> SecretBuilder {
    secret(name).type_("kubernetes.io/tls").data("tls.crt", cert_pem).data("tls.key", key_pem)
}

#[derive(Clone, Debug)]
pub struct SecretBuilder {
    meta: Meta,
    type_: String,
    data: BTreeMap<String, ByteString>,
}

metadata_setters!(SecretBuilder);

impl SecretBuilder {
    pub fn type_(mut self, type_: &str) -> Self {
        self.type_ = type_.to_string();
        self
    }

    pub fn data(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        self.data.insert(key.to_string(), ByteString(value.as_ref().to_vec()));
        self
    }

    pub fn build(self) -> Secret {
        Secret { metadata: self.meta.build(), type_: Some(self.type_), data: Some(self.data), ..Secret::default() }
    }
}

/// A BackendGroup from the same JSON a user would write as YAML under `spec:`.
pub fn backend_group(name: &str, spec: serde_json::Value) -> anyhow::Result<quic_ingress::kube::crd::BackendGroup> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "quic-ingress.dev/v1alpha1",
        "kind": "BackendGroup",
        "metadata": {"name": name},
        "spec": spec,
    }))?)
}

/// A CA and a certificate for `host` signed by it: (CA PEM, certificate PEM, key PEM), so a
/// test can trust a served certificate through its CA (or tell two apart by their CAs).
pub fn ca_and_cert(host: &str) -> anyhow::Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, format!("e2e CA for {host}"));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec![host.to_string()])?.signed_by(&key, &issuer)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_one_host_share_a_rule() {
        let ing = ingress("web")
            .class("quic")
            .rule("a.example", "/", "Prefix", "web", 80)
            .rule("a.example", "/api", "Exact", "api", "http")
            .rule("", "/", "Prefix", "fallback", 80)
            .build();
        let spec = ing.spec.unwrap();
        let rules = spec.rules.unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].http.as_ref().unwrap().paths.len(), 2);
        assert_eq!(rules[1].host, None);
        let api = &rules[0].http.as_ref().unwrap().paths[1];
        assert_eq!(api.backend.service.as_ref().unwrap().port.as_ref().unwrap().name.as_deref(), Some("http"));
    }

    #[test]
    fn endpoint_slice_is_labelled_for_its_service() {
        let slice =
            endpoint_slice("web").address("192.0.2.7").ready(false).address("192.0.2.8").port("http", 8001).build();
        let labels = slice.metadata.labels.unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(slice.address_type, "IPv4");
        assert_eq!(slice.endpoints[0].conditions.as_ref().unwrap().ready, Some(false));
        assert_eq!(slice.endpoints[1].conditions.as_ref().unwrap().ready, Some(true));
    }
}
