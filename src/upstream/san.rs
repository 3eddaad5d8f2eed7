//! Backend certificates checked by subject alternative names instead of the SNI (Gateway
//! API BackendTLSPolicy `subjectAltNames`): the chain is verified against the roots as
//! usual, and the certificate must carry one of the listed DNS names (with the usual
//! wildcard rules) or URIs (exact, e.g. a SPIFFE ID). The SNI sent stays the configured
//! server name, which then only selects a certificate.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// One name a backend certificate may carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectAltName {
    /// A DNS name (`*.example.com` in the certificate covers `a.example.com`).
    Dns(String),
    /// A URI, compared exactly.
    Uri(String),
}

/// Verifies a chain against `roots` and the end-entity certificate against `names`.
#[derive(Debug)]
pub struct SanVerifier {
    roots: Arc<RootCertStore>,
    names: Vec<SubjectAltName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SanVerifier {
    pub fn new(roots: RootCertStore, names: Vec<SubjectAltName>, algorithms: WebPkiSupportedAlgorithms) -> Self {
        Self { roots: Arc::new(roots), names, algorithms }
    }

    /// Whether the certificate carries one of the names.
    fn matches(&self, der: &CertificateDer<'_>, cert: &ParsedCertificate<'_>) -> bool {
        let uris: Vec<String> = match webpki::EndEntityCert::try_from(der) {
            Ok(ee) => ee.valid_uri_names().map(str::to_string).collect(),
            Err(_) => Vec::new(),
        };
        self.names.iter().any(|n| match n {
            SubjectAltName::Dns(h) => {
                ServerName::try_from(h.as_str()).is_ok_and(|name| verify_server_name(cert, &name).is_ok())
            }
            SubjectAltName::Uri(u) => uris.iter().any(|presented| presented == u),
        })
    }
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(&cert, &self.roots, intermediates, now, self.algorithms.all)?;
        if self.matches(end_entity, &cert) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

    /// A CA and a certificate it signed carrying `sans`: (roots, leaf DER).
    fn ca_and_leaf(sans: Vec<SanType>) -> (RootCertStore, CertificateDer<'static>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let mut leaf_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf_params.subject_alt_names = sans;
        let leaf = leaf_params.signed_by(&KeyPair::generate().unwrap(), &issuer).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        (roots, leaf.der().clone())
    }

    fn verify(roots: RootCertStore, leaf: &CertificateDer<'_>, names: Vec<SubjectAltName>) -> Result<(), String> {
        let algorithms = crate::tls::provider().signature_verification_algorithms;
        let v = SanVerifier::new(roots, names, algorithms);
        let sni = ServerName::try_from("sni.example.com").unwrap();
        v.verify_server_cert(leaf, &[], &sni, &[], UnixTime::now()).map(|_| ()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_listed_dns_name_or_uri_passes_and_the_sni_alone_does_not() {
        let spiffe = "spiffe://abc.example.com/test-identity";
        let sans = || {
            vec![
                SanType::DnsName("abc.example.com".try_into().unwrap()),
                SanType::URI(spiffe.try_into().unwrap()),
                SanType::DnsName("*.wild.example.com".try_into().unwrap()),
            ]
        };
        let dns = |h: &str| SubjectAltName::Dns(h.into());
        let uri = |u: &str| SubjectAltName::Uri(u.into());
        let (roots, leaf) = ca_and_leaf(sans());
        assert_eq!(verify(roots.clone(), &leaf, vec![dns("abc.example.com")]), Ok(()));
        assert_eq!(verify(roots.clone(), &leaf, vec![uri(spiffe)]), Ok(()));
        assert_eq!(verify(roots.clone(), &leaf, vec![dns("x.wild.example.com")]), Ok(()), "wildcards");
        assert_eq!(verify(roots.clone(), &leaf, vec![dns("nope.example.com"), uri(spiffe)]), Ok(()), "any one");
        assert!(verify(roots.clone(), &leaf, vec![dns("sni.example.com")]).is_err(), "not a name it has");
        assert!(verify(roots.clone(), &leaf, vec![uri("spiffe://abc.example.com/other")]).is_err());
        assert!(verify(roots, &leaf, vec![dns("abc.example.com.evil")]).is_err());
        // Another CA: the chain fails whatever the names.
        let (other_roots, _) = ca_and_leaf(sans());
        assert!(verify(other_roots, &leaf, vec![dns("abc.example.com")]).is_err());
    }
}
