//! TLS material: loading PEM files, generating the development certificate, and building
//! rustls configurations for the listeners and for upstream and CLI clients.

mod certs;
mod tickets;
mod verify;

pub use certs::{DevCert, certified_key_from_pem, dev_cert_dir, generate_dev_cert, load_certified_key};
pub use tickets::{
    MAX_TICKET_LIFETIME, Resumption, SharedTicketer, TICKET_KEY_LEN, TICKET_LIFETIME, TicketKeyError, TicketKeys,
    encode_ticket_keys, parse_ticket_keys, random_ticket_key,
};
pub use verify::insecure_client_config;

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("certificate and key: {0}")]
    Key(String),
    #[error("generating the development certificate: {0}")]
    Generate(String),
}

/// The ring provider, chosen explicitly so no process-wide default is needed.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Roots from a PEM bundle.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let file_err = |reason: String| TlsError::File { path: path.display().to_string(), reason };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| file_err(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| file_err(e.to_string()))?;
        roots.add(cert).map_err(|e| file_err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(file_err("no certificates found".into()));
    }
    Ok(roots)
}

/// Roots from PEM text (a CA bundle kept in a Secret); `what` names it in errors.
pub fn roots_from_pem(pem: &[u8], what: &str) -> Result<RootCertStore, TlsError> {
    let pem_err = |reason: String| TlsError::File { path: what.to_string(), reason };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| pem_err(e.to_string()))?;
        roots.add(cert).map_err(|e| pem_err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(pem_err("no certificates found".into()));
    }
    Ok(roots)
}

/// The operating system's trusted roots (unreadable ones are skipped).
pub fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    roots
}

/// A client configuration trusting `roots`, TLS 1.2 and 1.3.
pub fn client_config(roots: RootCertStore) -> Result<rustls::ClientConfig, TlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Key(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Server configuration for a listener: certificates chosen by SNI through `resolver`;
/// a QUIC listener (TLS 1.3 only) may take 0-RTT early data when `resumption` allows it.
pub fn server_config(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    alpn: &[&[u8]],
    quic: bool,
    resumption: &Resumption,
    metrics: &crate::telemetry::metrics::Metrics,
) -> Result<rustls::ServerConfig, TlsError> {
    let tls13_only = quic;
    let versions: &[&rustls::SupportedProtocolVersion] =
        if tls13_only { &[&rustls::version::TLS13] } else { rustls::DEFAULT_VERSIONS };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Key(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    resumption.apply(&mut config, quic, metrics);
    Ok(config)
}
