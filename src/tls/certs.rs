//! Server certificates: PEM loading and the self-signed development certificate. (The
//! per-table set chosen by SNI is `routes::CertSet`.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{TlsError, provider};

/// Loads a certificate chain and its private key from PEM files.
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| TlsError::File { path: p.display().to_string(), reason: e.to_string() })
    };
    certified_key_from_pem(&read(cert_path)?, &read(key_path)?)
}

/// Builds a certified key from PEM text (files, or a `kubernetes.io/tls` Secret).
pub fn certified_key_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Key(format!("certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::Key("no certificate in the certificate PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key(format!("private key PEM: {e}")))?;
    let signing = provider().key_provider.load_private_key(key).map_err(|e| TlsError::Key(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| TlsError::Key(format!("key does not match certificate: {e}")))?;
    Ok(Arc::new(certified))
}

/// A generated self-signed certificate, written to disk so clients can trust it.
pub struct DevCert {
    pub key: Arc<CertifiedKey>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// base64(sha256(SubjectPublicKeyInfo)), as Chromium's
    /// `--ignore-certificate-errors-spki-list` wants it.
    pub spki_sha256: String,
}

/// Where this process writes its development certificate; removed at exit.
pub fn dev_cert_dir() -> PathBuf {
    std::env::temp_dir().join(format!("quic-ingress-{}", std::process::id()))
}

/// Generates a self-signed certificate for `names` (plus localhost and loopback) into `dir`.
pub fn generate_dev_cert(names: &[String], dir: &Path) -> Result<DevCert, TlsError> {
    let gen_err = |e: &dyn std::fmt::Display| TlsError::Generate(e.to_string());
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    sans.extend(names.iter().filter(|n| !sans.contains(n)).cloned().collect::<Vec<_>>());
    let generated = rcgen::generate_simple_self_signed(sans).map_err(|e| gen_err(&e))?;
    {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| gen_err(&e))?;
        // The private key is readable by this user only.
        let mut key_file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join("dev-key.pem"))
            .map_err(|e| gen_err(&e))?;
        std::io::Write::write_all(&mut key_file, generated.signing_key.serialize_pem().as_bytes())
            .map_err(|e| gen_err(&e))?;
    }
    let cert_path = dir.join("dev-cert.pem");
    let key_path = dir.join("dev-key.pem");
    std::fs::write(&cert_path, generated.cert.pem()).map_err(|e| gen_err(&e))?;
    let spki = ring::digest::digest(
        &ring::digest::SHA256,
        &rcgen::PublicKeyData::subject_public_key_info(&generated.signing_key),
    );
    let key =
        certified_key_from_pem(generated.cert.pem().as_bytes(), generated.signing_key.serialize_pem().as_bytes())?;
    Ok(DevCert {
        key,
        cert_path,
        key_path,
        spki_sha256: base64::engine::general_purpose::STANDARD.encode(spki.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatched_or_garbage_pem_is_an_error() {
        let a = rcgen::generate_simple_self_signed(vec!["a".to_string()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b".to_string()]).unwrap();
        let err = certified_key_from_pem(a.cert.pem().as_bytes(), b.signing_key.serialize_pem().as_bytes());
        assert!(err.unwrap_err().to_string().contains("does not match"));
        assert!(certified_key_from_pem(b"nope", b"nope").is_err());
    }

    #[test]
    fn dev_cert_is_written_with_its_pin() {
        let dir = std::env::temp_dir().join(format!("qi-devcert-{}", std::process::id()));
        let dev = generate_dev_cert(&["api.example.com".into()], &dir).unwrap();
        assert!(dev.cert_path.exists() && dev.key_path.exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dev.key_path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(&dev.spki_sha256).unwrap().len(), 32);
        let _ = std::fs::remove_dir_all(dir);
    }
}
