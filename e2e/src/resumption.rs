//! A QUIC client that tells whether each handshake resumed a TLS session, from its own side:
//! a resumed TLS 1.3 handshake carries no certificate, so the certificate verifier is not
//! consulted. Its session tickets are the test's to hold: the oldest is offered first, and
//! new ones can be refused, so a ticket from one server can be presented to another later
//! (after a key rotation, say).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::{DigitallySignedStruct, NamedGroup, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// Accepts any certificate (the tests' servers are self-signed) and counts the calls: one
/// per full handshake.
#[derive(Debug)]
struct CountingVerifier {
    full_handshakes: AtomicUsize,
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for CountingVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.full_handshakes.fetch_add(1, Ordering::SeqCst);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// TLS 1.3 tickets in arrival order, for every server name alike.
#[derive(Debug, Default)]
struct Tickets {
    inner: Mutex<TicketsInner>,
}

#[derive(Debug, Default)]
struct TicketsInner {
    kept: VecDeque<Tls13ClientSessionValue>,
    refuse_new: bool,
    kx_hint: Option<NamedGroup>,
}

impl Tickets {
    fn with<T>(&self, f: impl FnOnce(&mut TicketsInner) -> T) -> T {
        // A poisoned lock means a panicking test thread; its data is still what it was.
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

impl ClientSessionStore for Tickets {
    fn set_kx_hint(&self, _server_name: ServerName<'static>, group: NamedGroup) {
        self.with(|t| t.kx_hint = Some(group));
    }

    fn kx_hint(&self, _server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(|t| t.kx_hint)
    }

    fn set_tls12_session(&self, _server_name: ServerName<'static>, _value: Tls12ClientSessionValue) {}

    fn tls12_session(&self, _server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _server_name: &ServerName<'static>) {}

    fn insert_tls13_ticket(&self, _server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.with(|t| {
            if !t.refuse_new {
                t.kept.push_back(value);
            }
        });
    }

    fn take_tls13_ticket(&self, _server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.with(|t| t.kept.pop_front())
    }
}

/// How one handshake went, as the client saw it.
pub struct Handshake {
    /// The server took the offered ticket (no certificate was sent).
    pub resumed: bool,
    /// Open until dropped (closed then, so the server sees a clean close).
    pub connection: quinn::Connection,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.connection.close(0u32.into(), b"done");
    }
}

/// HTTP/3 (ALPN h3) QUIC handshakes with one ticket store and one verifier.
pub struct ResumingClient {
    endpoint: quinn::Endpoint,
    verifier: Arc<CountingVerifier>,
    tickets: Arc<Tickets>,
}

impl ResumingClient {
    pub fn new() -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let schemes = provider.signature_verification_algorithms.supported_schemes();
        let verifier = Arc::new(CountingVerifier { full_handshakes: AtomicUsize::new(0), schemes });
        let tickets = Arc::new(Tickets::default());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        tls.resumption = rustls::client::Resumption::store(tickets.clone());
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        Ok(Self { endpoint, verifier, tickets })
    }

    /// A handshake with `addr` presenting `server_name`, offering the oldest ticket held.
    pub async fn connect(&self, addr: SocketAddr, server_name: &str) -> anyhow::Result<Handshake> {
        let before = self.verifier.full_handshakes.load(Ordering::SeqCst);
        let connecting = self.endpoint.connect(addr, server_name)?;
        let connection = tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .map_err(|_| anyhow!("QUIC handshake with {addr} timed out"))?
            .with_context(|| format!("QUIC handshake with {addr}"))?;
        let resumed = self.verifier.full_handshakes.load(Ordering::SeqCst) == before;
        Ok(Handshake { resumed, connection })
    }

    /// Session tickets held.
    pub fn tickets(&self) -> usize {
        self.tickets.with(|t| t.kept.len())
    }

    /// Keep the tickets held now, and drop those servers send from now on.
    pub fn refuse_new_tickets(&self) {
        self.tickets.with(|t| t.refuse_new = true);
    }
}
