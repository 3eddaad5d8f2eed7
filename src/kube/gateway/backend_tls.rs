//! BackendTLSPolicy in the model: which Service ports a policy targets (`sectionName` is
//! a port name), what the backend is verified with (the `ca.crt` of ConfigMaps in the
//! policy's namespace, or the system roots for `wellKnownCACertificates: System`; the
//! `hostname` is the SNI and the name checked, unless `subjectAltNames` lists the names to
//! check instead), the spec's conflict rule (the oldest policy per target wins, the
//! others are `Conflicted`), and which Gateways each policy is reached through (its
//! status `ancestors`). Pure data, built from the watched objects.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;

use super::api::{self, BackendTLSPolicy};
use super::model::{ObjectKey, Refusal};
use crate::kube::records::ServiceRecord;
use crate::upstream::UpstreamTls;
use crate::upstream::san::SubjectAltName;

/// The key of a CA bundle in a referenced ConfigMap (the spec's Core support).
pub const CA_KEY: &str = "ca.crt";

/// A Service, or one port of it (by name), that a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub namespace: String,
    pub service: String,
    /// `sectionName`: a port name; `None`: every port.
    pub section: Option<String>,
}

/// One BackendTLSPolicy as we understood it.
#[derive(Debug, Clone)]
pub struct PolicyImage {
    pub key: ObjectKey,
    /// The Service targets (targetRefs of other kinds are not ours to apply).
    pub targets: Vec<Target>,
    /// What connections are verified with; `None`: no valid CA, so they must fail.
    pub tls: Option<UpstreamTls>,
    /// `Accepted`: `Invalid`, `NoValidCACertificate` or `Conflicted` when refused.
    pub accepted: Result<(), Refusal>,
    /// `ResolvedRefs`: `InvalidCACertificateRef` or `InvalidKind` when refused.
    pub resolved: Result<(), Refusal>,
    /// Gateways (indices into `Model::gateways`) whose routes reach a target.
    pub ancestors: BTreeSet<usize>,
}

/// What the connections to one Service port must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendTls {
    /// TLS verified as `tls` says; over HTTP/3 when the port's `appProtocol` asks for it.
    Verify { policy: String, tls: UpstreamTls, h3: bool },
    /// A policy applies but has no valid CA: the spec wants these requests to fail (5xx).
    Refused,
}

/// The policies of one translation, and which one wins each target.
#[derive(Debug, Default)]
pub struct Policies {
    pub images: Vec<PolicyImage>,
    winners: HashMap<Target, usize>,
}

impl Policies {
    /// Resolves `policies` against the ConfigMaps; `watched` says whether a namespace's
    /// objects are watched at all.
    pub fn resolve(
        policies: &[Arc<BackendTLSPolicy>],
        config_maps: &[Arc<ConfigMap>],
        watched: &dyn Fn(&str) -> bool,
    ) -> Self {
        let maps: HashMap<(&str, &str), &ConfigMap> = config_maps
            .iter()
            .map(|c| {
                ((c.metadata.namespace.as_deref().unwrap_or(""), c.metadata.name.as_deref().unwrap_or("")), c.as_ref())
            })
            .collect();
        let mut sorted: Vec<&BackendTLSPolicy> = policies
            .iter()
            .map(AsRef::as_ref)
            .filter(|p| watched(p.metadata.namespace.as_deref().unwrap_or("")))
            .collect();
        // The spec's precedence: the oldest first, then namespace/name.
        sorted.sort_by_key(|p| {
            (p.metadata.creation_timestamp.clone(), p.metadata.namespace.clone(), p.metadata.name.clone())
        });
        let mut images: Vec<PolicyImage> = sorted.iter().map(|p| image(p, &maps)).collect();
        let mut winners: HashMap<Target, usize> = HashMap::new();
        for (i, img) in images.iter_mut().enumerate() {
            let mut lost_to = None;
            for t in &img.targets {
                match winners.get(t) {
                    Some(&w) => lost_to = Some(w),
                    None => {
                        winners.insert(t.clone(), i);
                    }
                }
            }
            if let Some(w) = lost_to
                && img.accepted.is_ok()
            {
                let winner = sorted.get(w).map(|p| format!("{}/{}", ns_of(p), name_of(p))).unwrap_or_default();
                img.accepted = Err((
                    "Conflicted",
                    format!("BackendTLSPolicy {winner} is older and targets the same Service and section"),
                ));
            }
        }
        Policies { images, winners }
    }

    /// The policy that applies to port `port` (named `port_name`) of Service `ns/name`:
    /// one naming the port comes before one for the whole Service.
    pub fn for_port(&self, ns: &str, name: &str, port_name: Option<&str>) -> Option<usize> {
        let key = |section: Option<&str>| Target {
            namespace: ns.to_string(),
            service: name.to_string(),
            section: section.map(str::to_string),
        };
        port_name
            .filter(|p| !p.is_empty())
            .and_then(|p| self.winners.get(&key(Some(p))))
            .or_else(|| self.winners.get(&key(None)))
            .copied()
    }

    /// Every policy, winning or not, that targets the port (they all show the Gateways
    /// it is reached through).
    pub fn targeting<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
        port_name: Option<&'a str>,
    ) -> impl Iterator<Item = usize> + 'a {
        self.images.iter().enumerate().filter_map(move |(i, p)| {
            p.targets
                .iter()
                .any(|t| {
                    t.namespace == ns && t.service == name && t.section.as_deref().is_none_or(|s| Some(s) == port_name)
                })
                .then_some(i)
        })
    }

    /// What connections to `port` of `svc` must do, when a policy applies to it.
    pub fn backend_tls(&self, ns: &str, svc: &ServiceRecord, port: i32) -> Option<BackendTls> {
        let name = svc.meta.name();
        let sp = svc.ports.iter().find(|p| p.port == port)?;
        let i = self.for_port(ns, name, sp.name.as_deref())?;
        let img = &self.images[i];
        Some(match &img.tls {
            Some(tls) => Verify {
                policy: format!("{}/{}", img.key.namespace, img.key.name),
                tls: tls.clone(),
                h3: is_h3(sp.app_protocol.as_deref()),
            },
            None => BackendTls::Refused,
        })
    }
}

use BackendTls::Verify;

/// `appProtocol` values that ask for HTTP/3 to the backend (domain-prefixed, as
/// Kubernetes wants non-standard values; `h3` as BackendGroup's `protocol` spells it).
pub fn is_h3(app_protocol: Option<&str>) -> bool {
    matches!(app_protocol, Some("quic-ingress.dev/h3" | "h3"))
}

fn ns_of(p: &BackendTLSPolicy) -> &str {
    p.metadata.namespace.as_deref().unwrap_or("")
}

fn name_of(p: &BackendTLSPolicy) -> &str {
    p.metadata.name.as_deref().unwrap_or("")
}

fn image(p: &BackendTLSPolicy, maps: &HashMap<(&str, &str), &ConfigMap>) -> PolicyImage {
    let ns = ns_of(p);
    let v = &p.spec.validation;
    let targets: Vec<Target> = p
        .spec
        .target_refs
        .iter()
        .filter(|t| t.group.is_empty() && t.kind == "Service")
        .map(|t| Target {
            namespace: ns.to_string(),
            service: t.name.clone(),
            section: t.section_name.clone().filter(|s| !s.is_empty()),
        })
        .collect();
    let mut problems: Vec<Refusal> = Vec::new();
    let mut bundle: Vec<u8> = Vec::new();
    let mut valid_refs = 0;
    for r in &v.ca_certificate_refs {
        if !r.group.is_empty() || r.kind != "ConfigMap" {
            let group = if r.group.is_empty() { "core" } else { r.group.as_str() };
            problems.push((
                "InvalidKind",
                format!("caCertificateRef {group}/{} {}: only ConfigMaps are supported", r.kind, r.name),
            ));
            continue;
        }
        match ca_bundle(maps, ns, &r.name) {
            Ok(pem) => {
                valid_refs += 1;
                bundle.extend_from_slice(&pem);
                bundle.push(b'\n');
            }
            Err(m) => problems.push(("InvalidCACertificateRef", m)),
        }
    }
    let resolved = match problems.first() {
        None => Ok(()),
        Some((reason, _)) => Err((*reason, problems.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; "))),
    };
    let well_known = v.well_known_ca_certificates.as_deref().filter(|w| !w.is_empty());
    let hostname = v.hostname.to_ascii_lowercase();
    let sans = subject_alt_names(&v.subject_alt_names);
    let base = |ca_pem| UpstreamTls {
        ca_file: None,
        ca_pem,
        server_name: Some(hostname.clone()),
        insecure_skip_verify: false,
        subject_alt_names: sans.clone().unwrap_or_default(),
    };
    let (tls, accepted) = if hostname.is_empty() {
        (None, Err(("Invalid", "validation.hostname is required".to_string())))
    } else if let Err(m) = &sans {
        (None, Err(("Invalid", m.clone())))
    } else {
        match (well_known, v.ca_certificate_refs.is_empty()) {
            (Some(_), false) => {
                (None, Err(("Invalid", "caCertificateRefs and wellKnownCACertificates exclude each other".into())))
            }
            (Some("System"), true) => (Some(base(None)), Ok(())),
            (Some(other), true) => {
                (None, Err(("Invalid", format!("wellKnownCACertificates {other:?} is not supported (System is)"))))
            }
            (None, true) => (None, Err(("Invalid", "set caCertificateRefs or wellKnownCACertificates".into()))),
            (None, false) if valid_refs == 0 => {
                let why = resolved.as_ref().err().map(|(_, m)| m.clone()).unwrap_or_default();
                (None, Err(("NoValidCACertificate", format!("no valid CA certificate: {why}"))))
            }
            (None, false) => {
                let what = format!("BackendTLSPolicy {ns}/{} caCertificateRefs", name_of(p));
                (Some(base(Some((what, bundle)))), Ok(()))
            }
        }
    };
    PolicyImage { key: ObjectKey::of(p), targets, tls, accepted, resolved, ancestors: BTreeSet::new() }
}

/// `subjectAltNames` as the names a certificate must carry one of (then the hostname is
/// only the SNI, as the spec says); an entry of an unknown type refuses the policy.
fn subject_alt_names(list: &[api::SubjectAltName]) -> Result<Vec<SubjectAltName>, String> {
    list.iter()
        .enumerate()
        .map(|(i, n)| match (n.type_.as_str(), &n.hostname, &n.uri) {
            ("Hostname", Some(h), _) if !h.is_empty() => Ok(SubjectAltName::Dns(h.to_ascii_lowercase())),
            ("URI", _, Some(u)) if !u.is_empty() => Ok(SubjectAltName::Uri(u.clone())),
            (t, _, _) => Err(format!("validation.subjectAltNames[{i}]: type {t:?} without its value")),
        })
        .collect()
}

/// The PEM bundle under `ca.crt` of ConfigMap `ns/name`, checked to hold certificates.
fn ca_bundle(maps: &HashMap<(&str, &str), &ConfigMap>, ns: &str, name: &str) -> Result<Vec<u8>, String> {
    let cm = maps.get(&(ns, name)).ok_or_else(|| format!("ConfigMap {ns}/{name} not found"))?;
    let pem = cm
        .data
        .as_ref()
        .and_then(|d| d.get(CA_KEY))
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| format!("ConfigMap {ns}/{name} has no {CA_KEY}"))?;
    crate::tls::roots_from_pem(pem.as_bytes(), &format!("ConfigMap {ns}/{name} {CA_KEY}"))
        .map_err(|e| format!("ConfigMap {ns}/{name} {CA_KEY}: {e}"))?;
    Ok(pem.as_bytes().to_vec())
}
