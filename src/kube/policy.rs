//! Which addresses a BackendGroup's static URLs (`spec.backends[].url`) may point at in
//! Kubernetes mode. A tenant who may create BackendGroups must not turn the ingress into a
//! proxy to the cloud's metadata service, the controller's own admin port, or pods and
//! Services of other namespaces (past their NetworkPolicies). Service references
//! (`spec.service`) name the tenant's own Service and are always allowed.
//!
//! IP literals are checked here, when the table is built. Host names are resolved by the
//! connection pool at connect time, possibly to another address each time, so a check of
//! their addresses here would prove nothing (DNS rebinding); only names that are known to
//! reach metadata or cluster-internal addresses are refused. See README "Multi-tenancy".

use std::net::IpAddr;

pub use crate::net::Cidr;

/// Ranges refused whatever the cluster, with what they are. The metadata addresses come
/// first, so a message names them rather than "link-local".
const ALWAYS_REFUSED: &[(&str, &str)] = &[
    ("169.254.169.254/32", "a cloud metadata address"),
    ("fd00:ec2::254/128", "a cloud metadata address"),
    ("100.100.100.200/32", "a cloud metadata address"),
    ("168.63.129.16/32", "a cloud platform address"),
    ("127.0.0.0/8", "loopback"),
    ("::1/128", "loopback"),
    // 0.0.0.0 and :: connect to the local host on Linux.
    ("0.0.0.0/8", "the local host"),
    ("::/128", "the local host"),
    ("169.254.0.0/16", "link-local"),
    ("fe80::/10", "link-local"),
];

/// Host names that reach metadata services or the cluster's own names. Names ending in
/// one of `REFUSED_SUFFIXES` are refused too.
const REFUSED_NAMES: &[&str] = &[
    "localhost",
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.tencentyun.com",
    "kubernetes",
    "kubernetes.default",
];
const REFUSED_SUFFIXES: &[&str] = &[".localhost", ".svc", ".cluster.local", ".metadata.google.internal"];

/// The policy: what is refused, and the admin's allow-list that overrides it.
#[derive(Debug, Clone)]
pub struct BackendPolicy {
    refused: Vec<(Cidr, String)>,
    allowed: Vec<Cidr>,
}

/// `--service-cidr` when none is given: kubeadm's default Service range.
pub const DEFAULT_SERVICE_CIDRS: &[&str] = &["10.96.0.0/12"];
/// `--pod-cidr` when none is given: the pod range of kubeadm's usual CNI set-ups (flannel).
pub const DEFAULT_POD_CIDRS: &[&str] = &["10.244.0.0/16"];

impl Default for BackendPolicy {
    /// The built-in refusals plus the default Service and pod ranges, nothing allowed.
    fn default() -> Self {
        let parse = |list: &[&str]| list.iter().filter_map(|c| c.parse().ok()).collect::<Vec<Cidr>>();
        Self::new(&parse(DEFAULT_SERVICE_CIDRS), &parse(DEFAULT_POD_CIDRS), &[])
    }
}

impl BackendPolicy {
    /// Refuses the built-in ranges and the cluster's Service and pod ranges, except what
    /// `allowed` lists.
    pub fn new(service_cidrs: &[Cidr], pod_cidrs: &[Cidr], allowed: &[Cidr]) -> Self {
        let mut refused: Vec<(Cidr, String)> =
            ALWAYS_REFUSED.iter().filter_map(|(range, what)| Some((range.parse().ok()?, what.to_string()))).collect();
        refused.extend(service_cidrs.iter().map(|c| (*c, format!("in the cluster's Service range {c}"))));
        refused.extend(pod_cidrs.iter().map(|c| (*c, format!("in the cluster's pod range {c}"))));
        Self { refused, allowed: allowed.to_vec() }
    }

    /// Allows everything (standalone mode's behaviour; tests of other rules).
    pub fn allow_all() -> Self {
        Self { refused: Vec::new(), allowed: Vec::new() }
    }

    /// `Err(why)` when a static backend at `host` (a URL's host: a name, an IPv4 address
    /// or a bracketed IPv6 address) is not allowed.
    pub fn check_host(&self, host: &str) -> Result<(), String> {
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        match bare.parse::<IpAddr>() {
            Ok(ip) => self.check_ip(ip),
            Err(_) => self.check_name(bare),
        }
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if self.allowed.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        match self.refused.iter().find(|(c, _)| c.contains(ip)) {
            Some((_, what)) => Err(format!("{ip} is {what}")),
            None => Ok(()),
        }
    }

    fn check_name(&self, name: &str) -> Result<(), String> {
        if self.refused.is_empty() {
            return Ok(());
        }
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        if REFUSED_NAMES.contains(&lower.as_str()) || REFUSED_SUFFIXES.iter().any(|s| lower.ends_with(s)) {
            return Err(format!("{name} is a metadata or cluster-internal name (use spec.service for Services)"));
        }
        // One label resolves through the pod's DNS search path: a Service of the
        // controller's own namespace.
        if !lower.contains('.') {
            return Err(format!("{name} is a single-label name, resolved through the cluster's DNS search path"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn every_built_in_range_reads() {
        assert_eq!(BackendPolicy::allow_all().refused.len(), 0);
        assert_eq!(BackendPolicy::new(&[], &[], &[]).refused.len(), ALWAYS_REFUSED.len());
    }

    #[test]
    fn loopback_link_local_and_metadata_are_refused_by_default() {
        let p = BackendPolicy::default();
        for (host, why) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("[::1]", "loopback"),
            ("[::ffff:127.0.0.1]", "loopback"),
            ("0.0.0.0", "the local host"),
            ("169.254.169.254", "a cloud metadata address"),
            ("[fd00:ec2::254]", "a cloud metadata address"),
            ("169.254.1.2", "link-local"),
            ("[fe80::1]", "link-local"),
            ("10.96.0.10", "Service range 10.96.0.0/12"),
            ("10.244.3.4", "pod range 10.244.0.0/16"),
        ] {
            let err = p.check_host(host).expect_err(host);
            assert!(err.contains(why), "{host}: {err}");
        }
        for host in ["10.0.0.9", "192.0.2.20", "[2001:db8::1]", "api.example.com", "backend.internal.corp"] {
            assert_eq!(p.check_host(host), Ok(()), "{host}");
        }
    }

    #[test]
    fn names_known_to_reach_metadata_or_the_cluster_are_refused() {
        let p = BackendPolicy::default();
        for host in [
            "localhost",
            "LOCALHOST.",
            "app.localhost",
            "metadata.google.internal",
            "metadata",
            "api.other-tenant.svc",
            "api.other-tenant.svc.cluster.local",
            "quic-ingress",
        ] {
            assert!(p.check_host(host).is_err(), "{host}");
        }
    }

    #[test]
    fn the_allow_list_overrides_and_the_cluster_ranges_are_the_flags() {
        let p = BackendPolicy::new(&cidrs(&["10.0.0.0/24"]), &cidrs(&["10.1.0.0/16"]), &cidrs(&["127.0.0.0/8"]));
        assert_eq!(p.check_host("127.0.0.1"), Ok(()), "allowed explicitly");
        assert!(p.check_host("[::1]").is_err(), "the allow-list is per range");
        assert!(p.check_host("10.0.0.5").unwrap_err().contains("Service range 10.0.0.0/24"));
        assert!(p.check_host("10.1.2.3").unwrap_err().contains("pod range 10.1.0.0/16"));
        assert_eq!(p.check_host("10.96.0.1"), Ok(()), "given ranges replace the defaults");
        assert!(p.check_host("169.254.169.254").is_err(), "the built-in ranges stay");
        assert_eq!(BackendPolicy::allow_all().check_host("169.254.169.254"), Ok(()));
        assert_eq!(BackendPolicy::allow_all().check_host("localhost"), Ok(()));
    }
}
