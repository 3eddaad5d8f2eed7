//! Host ownership between namespaces (tenants), as the OpenShift router and Contour's root
//! HTTPProxy do it: the namespace of the oldest object claiming a host owns it, and rules
//! for that host from other namespaces are refused, so no tenant can take another's paths
//! (a longer prefix, an Exact path), cookies included. A pure function of the claims, so
//! every replica decides the same, whatever order the watches delivered objects in.
//!
//! A wildcard and the exact hosts it covers are one claim for this purpose: a request for
//! `shop.example.com` that its own rules do not route falls through to `*.example.com`'s
//! rules, and takes its certificate, so letting two namespaces hold them would let either
//! take the other's traffic. See README "Multi-tenancy".

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;

use k8s_openapi::api::networking::v1::IngressClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::routes::{HostRule, wildcard_suffix};

/// IngressClass annotation: namespaces that may share hosts, `a,b` (one group), groups
/// separated by `;` (`a,b;c,d`). Only cluster admins can edit IngressClasses.
pub const SHARED_HOSTS_ANNOTATION: &str = "quic-ingress.dev/shared-host-namespaces";
/// IngressClass annotation: namespaces whose host-less rules, default backends and
/// host-less BackendGroup routes are served (on every host), comma-separated.
pub const CATCH_ALL_ANNOTATION: &str = "quic-ingress.dev/catch-all-namespaces";

/// `--host-ownership`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostOwnership {
    /// The first namespace to claim a host owns it.
    #[default]
    Namespace,
    /// No ownership (single-tenant clusters): any object may route any host and path.
    None,
}

impl FromStr for HostOwnership {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "namespace" => Ok(Self::Namespace),
            "none" => Ok(Self::None),
            other => Err(format!("{other:?}: expected namespace or none")),
        }
    }
}

/// What the admin granted on the IngressClass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    shared: Vec<BTreeSet<String>>,
    catch_all: BTreeSet<String>,
}

fn names(list: &str) -> BTreeSet<String> {
    list.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_string).collect()
}

impl Grants {
    /// The grants written on `class` (none when the class object does not exist).
    pub fn from_class(class: Option<&IngressClass>) -> Self {
        let annotation = |key: &str| class.and_then(|c| c.annotations().get(key).cloned()).unwrap_or_default();
        Self::parse(&annotation(SHARED_HOSTS_ANNOTATION), &annotation(CATCH_ALL_ANNOTATION))
    }

    pub fn parse(shared: &str, catch_all: &str) -> Self {
        Self { shared: shared.split(';').map(names).filter(|g| g.len() > 1).collect(), catch_all: names(catch_all) }
    }

    /// Whether namespace `a` may add rules to a host namespace `b` owns.
    pub fn share(&self, a: &str, b: &str) -> bool {
        a == b || self.shared.iter().any(|g| g.contains(a) && g.contains(b))
    }

    pub fn catch_all(&self, namespace: &str) -> bool {
        self.catch_all.contains(namespace)
    }
}

/// Orders claims: oldest object first, then namespace, name and kind, so ties between
/// objects created in the same second are broken the same way on every replica.
pub type ClaimOrder = (Option<Time>, String, String, &'static str);

/// One object's claim of one host.
#[derive(Debug, Clone)]
pub struct Claim {
    pub order: ClaimOrder,
    pub host: HostRule,
}

impl Claim {
    pub fn new(kind: &'static str, obj: &impl super::records::Identity, host: HostRule) -> Self {
        let (namespace, name) = obj.names();
        let order = (obj.created().cloned(), namespace.to_string(), name.to_string(), kind);
        Self { order, host }
    }

    fn namespace(&self) -> &str {
        &self.order.1
    }
}

/// Who owns which host, and which claims were refused (with the owner that refused them).
#[derive(Debug, Default)]
pub struct Owners {
    exact: HashMap<String, String>,
    wildcard: HashMap<String, String>,
    /// Owners of the exact hosts one label under each wildcard suffix.
    under: HashMap<String, BTreeSet<String>>,
    /// `(kind, namespace, name, host)` → the owning namespace.
    refused: HashMap<(&'static str, String, String, HostRule), String>,
}

impl Owners {
    /// Decides ownership: claims are taken oldest first; a claim is refused when a
    /// namespace that does not share with its own already holds the host, the wildcard
    /// covering it, or (for a wildcard) an exact host it covers.
    pub fn decide(mut claims: Vec<Claim>, grants: &Grants) -> Self {
        claims.sort_by(|a, b| a.order.cmp(&b.order));
        let mut owners = Owners::default();
        for claim in claims {
            let ns = claim.namespace().to_string();
            match owners.conflict(&claim.host, &ns, grants) {
                Some(owner) => {
                    let (_, cns, name, kind) = claim.order;
                    owners.refused.insert((kind, cns, name, claim.host), owner);
                }
                None => owners.record(claim.host, ns),
            }
        }
        owners
    }

    /// A namespace other than `ns` (and not sharing with it) holding `host` or what
    /// overlaps it.
    fn conflict(&self, host: &HostRule, ns: &str, grants: &Grants) -> Option<String> {
        let foreign = |owner: &String| !grants.share(ns, owner);
        match host {
            HostRule::Exact(h) => {
                let wildcard = wildcard_suffix(h).and_then(|s| self.wildcard.get(s));
                self.exact.get(h).filter(|o| foreign(o)).or(wildcard.filter(|o| foreign(o))).cloned()
            }
            // A Gateway API wildcard (any depth) is claimed as the one-label one, until the
            // Gateway translation decides its own ownership rules.
            HostRule::Wildcard(s) | HostRule::Suffix(s) => {
                let under = self.under.get(s).into_iter().flatten().find(|o| foreign(o));
                self.wildcard.get(s).filter(|o| foreign(o)).or(under).cloned()
            }
        }
    }

    fn record(&mut self, host: HostRule, ns: String) {
        match host {
            HostRule::Exact(h) => {
                // Looked up before inserting: most hosts share a few suffixes and one
                // namespace each, so nothing is allocated for them.
                if let Some(s) = wildcard_suffix(&h) {
                    match self.under.get_mut(s) {
                        Some(owners) if owners.contains(&ns) => {}
                        Some(owners) => {
                            owners.insert(ns.clone());
                        }
                        None => {
                            self.under.insert(s.to_string(), BTreeSet::from([ns.clone()]));
                        }
                    }
                }
                self.exact.entry(h).or_insert(ns);
            }
            HostRule::Wildcard(s) | HostRule::Suffix(s) => {
                self.wildcard.entry(s).or_insert(ns);
            }
        }
    }

    /// The namespace owning `host` when `kind` `namespace/name`'s claim of it was refused.
    pub fn refusal(&self, kind: &'static str, namespace: &str, name: &str, host: &HostRule) -> Option<&str> {
        // Asked for every rule of every object each build, and most clusters refuse
        // nothing: no key is built then.
        if self.refused.is_empty() {
            return None;
        }
        self.refused.get(&(kind, namespace.to_string(), name.to_string(), host.clone())).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(age: i64, ns: &str, name: &str, host: &str) -> Claim {
        let ts = k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 - age).unwrap();
        Claim { order: (Some(Time(ts)), ns.into(), name.into(), "Ingress"), host: HostRule::parse(host).unwrap() }
    }

    fn refused(owners: &Owners, c: &Claim) -> Option<String> {
        owners.refusal(c.order.3, &c.order.1, &c.order.2, &c.host).map(str::to_string)
    }

    #[test]
    fn the_oldest_namespace_owns_a_host_whatever_the_order_claims_arrive_in() {
        let a = claim(500, "a", "shop", "shop.example.com");
        let b = claim(10, "b", "login", "shop.example.com");
        let a_later = claim(5, "a", "more", "shop.example.com");
        for claims in [vec![a.clone(), b.clone(), a_later.clone()], vec![a_later.clone(), b.clone(), a.clone()]] {
            let owners = Owners::decide(claims, &Grants::default());
            assert_eq!(refused(&owners, &b).as_deref(), Some("a"));
            assert_eq!(refused(&owners, &a), None);
            assert_eq!(refused(&owners, &a_later), None, "the owner may add more objects");
        }
    }

    #[test]
    fn same_second_ties_break_by_namespace_then_name() {
        let b = claim(100, "b", "x", "tie.example.com");
        let a = claim(100, "a", "z", "tie.example.com");
        let owners = Owners::decide(vec![b.clone(), a.clone()], &Grants::default());
        assert_eq!(refused(&owners, &b).as_deref(), Some("a"));
    }

    #[test]
    fn a_wildcard_and_the_exact_hosts_it_covers_have_one_owner() {
        let wild = claim(500, "a", "w", "*.example.com");
        let shop = claim(10, "b", "s", "shop.example.com");
        let deeper = claim(10, "b", "d", "x.shop.example.com");
        let owners = Owners::decide(vec![wild.clone(), shop.clone(), deeper.clone()], &Grants::default());
        assert_eq!(refused(&owners, &shop).as_deref(), Some("a"), "an exact host under another's wildcard");
        assert_eq!(refused(&owners, &deeper), None, "a wildcard covers one label only");

        // The other way round: an older exact host blocks a newer wildcard over it.
        let shop = claim(500, "b", "s", "shop.example.com");
        let wild = claim(10, "a", "w", "*.example.com");
        let owners = Owners::decide(vec![wild.clone(), shop.clone()], &Grants::default());
        assert_eq!(refused(&owners, &wild).as_deref(), Some("b"));
        assert_eq!(refused(&owners, &shop), None);
    }

    #[test]
    fn namespaces_granted_together_share_hosts_and_no_one_else_does() {
        let grants = Grants::parse("a, b ; c,d", "");
        let a = claim(500, "a", "x", "shop.example.com");
        let b = claim(100, "b", "x", "shop.example.com");
        let c = claim(50, "c", "x", "shop.example.com");
        let owners = Owners::decide(vec![a, b.clone(), c.clone()], &grants);
        assert_eq!(refused(&owners, &b), None);
        assert_eq!(refused(&owners, &c).as_deref(), Some("a"));
        assert!(grants.share("c", "d") && !grants.share("b", "c") && grants.share("e", "e"));
        assert_eq!(Grants::parse("solo", ""), Grants::default(), "a group of one grants nothing");
    }

    #[test]
    fn grants_come_from_the_ingress_class_annotations() {
        let mut class = IngressClass::default();
        class.metadata.annotations = Some(
            [
                (SHARED_HOSTS_ANNOTATION.to_string(), "web,api".to_string()),
                (CATCH_ALL_ANNOTATION.to_string(), "errors, platform".to_string()),
            ]
            .into(),
        );
        let grants = Grants::from_class(Some(&class));
        assert!(grants.share("web", "api"));
        assert!(grants.catch_all("platform") && grants.catch_all("errors") && !grants.catch_all("web"));
        assert_eq!(Grants::from_class(None), Grants::default());
        assert_eq!("none".parse::<HostOwnership>(), Ok(HostOwnership::None));
        assert!("tenant".parse::<HostOwnership>().is_err());
    }
}
