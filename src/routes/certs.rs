//! The certificates of one route table, chosen by SNI: they are published with the
//! routes that need them, so a request never sees a route without its certificate.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use super::{HostRule, wildcard_suffix};

/// Certificates of one route table: by exact host, by wildcard suffix, and a default for
/// clients that send no (or an unknown) SNI name.
#[derive(Clone, Default)]
pub struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for CertSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertSet")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .field("default", &self.default.is_some())
            .finish()
    }
}

impl CertSet {
    pub fn with_default(default: Arc<CertifiedKey>) -> Self {
        Self { default: Some(default), ..Self::default() }
    }

    /// A set with this one's default certificate and nothing else.
    pub fn default_only(&self) -> Self {
        Self { default: self.default.clone(), ..Self::default() }
    }

    /// Replaces the certificate for clients whose SNI name no other certificate covers.
    pub fn set_default(&mut self, key: Arc<CertifiedKey>) {
        self.default = Some(key);
    }

    /// Whether a certificate is kept for exactly this host rule.
    pub fn covers(&self, host: &HostRule) -> bool {
        match host {
            HostRule::Exact(h) => self.exact.contains_key(h),
            HostRule::Wildcard(s) | HostRule::Suffix(s) => self.wildcard.contains_key(s),
        }
    }

    pub fn insert(&mut self, host: &HostRule, key: Arc<CertifiedKey>) {
        match host {
            HostRule::Exact(h) => self.exact.insert(h.clone(), key),
            // A certificate for `*.suffix` covers one label (RFC 6125), whichever rule asked for it.
            HostRule::Wildcard(s) | HostRule::Suffix(s) => self.wildcard.insert(s.clone(), key),
        };
    }

    /// The certificate for an SNI name: exact, then wildcard, then the default.
    pub fn resolve(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let found = sni.map(|s| s.to_ascii_lowercase()).and_then(|name| {
            self.exact.get(&name).or_else(|| wildcard_suffix(&name).and_then(|s| self.wildcard.get(s))).cloned()
        });
        found.or_else(|| self.default.clone())
    }

    /// This set with the certificates of the exact hosts `replaced` taken from `with` (its
    /// other hosts, wildcards and default are not taken).
    pub fn spliced(&self, replaced: &std::collections::BTreeSet<String>, mut with: CertSet) -> CertSet {
        let mut out = self.clone();
        for host in replaced {
            match with.exact.remove(host) {
                Some(key) => out.exact.insert(host.clone(), key),
                None => out.exact.remove(host),
            };
        }
        out
    }

    pub fn hosts(&self) -> impl Iterator<Item = String> + '_ {
        self.exact.keys().cloned().chain(self.wildcard.keys().map(|s| format!("*.{s}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certified_key_from_pem;

    fn key_for(name: &str) -> Arc<CertifiedKey> {
        let g = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        certified_key_from_pem(g.cert.pem().as_bytes(), g.signing_key.serialize_pem().as_bytes()).unwrap()
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let (a, w, d) = (key_for("a.example.com"), key_for("*.example.com"), key_for("default"));
        let mut set = CertSet::with_default(d.clone());
        set.insert(&HostRule::parse("a.example.com").unwrap(), a.clone());
        set.insert(&HostRule::parse("*.example.com").unwrap(), w.clone());
        assert!(Arc::ptr_eq(&set.resolve(Some("A.example.com")).unwrap(), &a));
        assert!(Arc::ptr_eq(&set.resolve(Some("b.example.com")).unwrap(), &w));
        assert!(Arc::ptr_eq(&set.resolve(Some("x.b.example.com")).unwrap(), &d));
        assert!(Arc::ptr_eq(&set.resolve(None).unwrap(), &d));
        assert!(CertSet::default().resolve(Some("a")).is_none());
    }
}
