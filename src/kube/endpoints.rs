//! Service ports and EndpointSlices to endpoint addresses: which port a Service port maps
//! to on its endpoints, and which addresses are ready.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ServicePort;

use super::records::{ServiceRecord, SliceRecord};

/// How an Ingress or BackendGroup names a Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Number(i32),
    Name(String),
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Name(n) => f.write_str(n),
        }
    }
}

/// The Service port `port` refers to.
pub fn service_port<'a>(service: &'a ServiceRecord, port: &PortRef) -> Option<&'a ServicePort> {
    service.ports.iter().find(|p| match port {
        PortRef::Number(n) => p.port == *n,
        PortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
    })
}

/// Ready endpoint addresses (`ip:port`, IPv6 in brackets) for a Service port, across all
/// the Service's slices, deduplicated and sorted (so tables built from the same objects are
/// equal). The slice port is matched by the Service port's name, as EndpointSlices do.
pub fn ready_addresses(slices: &[&SliceRecord], port: &ServicePort) -> Vec<String> {
    let want_name = port.name.as_deref().unwrap_or("");
    let mut out = BTreeSet::new();
    for slice in slices {
        let Some(target) = slice.port(want_name).and_then(|p| u16::try_from(p).ok()) else { continue };
        out.extend(slice.ready_on(target));
    }
    out.into_iter().map(|a| a.to_string()).collect()
}

/// Whether a Service port asks for HTTP/2 cleartext or TLS via `appProtocol`.
pub fn app_protocol_scheme(port: &ServicePort) -> &'static str {
    match port.app_protocol.as_deref() {
        Some("kubernetes.io/h2c") | Some("h2c") => "h2c",
        Some("https") | Some("kubernetes.io/https") => "https",
        _ => "http",
    }
}
