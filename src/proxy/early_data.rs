//! 0-RTT: which requests arrived as early data, and whether clients' early data was
//! accepted.
//!
//! A request read before its connection's handshake completed may be a replay (RFC 8470):
//! whoever captured a client's first flight can send it again, but can never complete the
//! handshake. So "early" here means "the handshake had not completed when the request's
//! stream was accepted" (the test quinn's own `RecvStream::is_0rtt` makes), which covers
//! every replay, and costs at worst an `Early-Data: 1` header or a 425 on a request that
//! raced the client's Finished message.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::FutureExt;
use futures::future::Shared;
use quinn::crypto::{self, ExportKeyingMaterialError, KeyPair, Keys, PacketKey, Session, UnsupportedVersion};
use quinn::{ConnectionId, Side, ZeroRttAccepted};
use quinn_proto::TransportError;
use quinn_proto::transport_parameters::TransportParameters;

use crate::telemetry::metrics::Metrics;

/// Methods forwarded when they arrive in early data; RFC 8470 leaves the choice to the
/// server, and only these are safe to run twice.
pub fn safe_in_early_data(method: &http::Method) -> bool {
    matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS)
}

/// A connection's handshake, as seen from its requests.
#[derive(Clone)]
pub struct Handshake(Option<Shared<ZeroRttAccepted>>);

impl Handshake {
    /// A handshake still going on; `done` resolves when it completes or fails. (Its value
    /// means nothing on a server: quinn resolves it `false` either way.)
    pub fn pending(done: ZeroRttAccepted) -> Self {
        Self(Some(done.shared()))
    }

    /// A handshake that has already completed.
    pub fn completed() -> Self {
        Self(None)
    }

    /// True once the client's Finished has been verified (or the connection is gone).
    /// Polls without waiting; quinn signals completion while processing the packet that
    /// completes the handshake, before any stream opened after it.
    pub fn complete(&self) -> bool {
        self.0.as_ref().is_none_or(|done| done.clone().now_or_never().is_some())
    }

    /// Waits until the handshake has completed or failed.
    pub async fn finished(&self) {
        if let Some(done) = &self.0 {
            done.clone().await;
        }
    }
}

/// The QUIC TLS configuration, wrapped to count 0-RTT offers and their outcome.
pub struct ObservedServerCrypto {
    pub inner: Arc<dyn crypto::ServerConfig>,
    pub metrics: Arc<Metrics>,
}

impl crypto::ServerConfig for ObservedServerCrypto {
    fn initial_keys(&self, version: u32, dst_cid: &ConnectionId) -> Result<Keys, UnsupportedVersion> {
        self.inner.initial_keys(version, dst_cid)
    }

    fn retry_tag(&self, version: u32, orig_dst_cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        self.inner.retry_tag(version, orig_dst_cid, packet)
    }

    fn start_session(self: Arc<Self>, version: u32, params: &TransportParameters) -> Box<dyn Session> {
        Box::new(ObservedSession {
            metrics: self.metrics.clone(),
            inner: self.inner.clone().start_session(version, params),
            hello: Vec::new(),
            offered: None,
            recorded: AtomicBool::new(false),
        })
    }
}

/// The largest ClientHello read looking for the early-data extension.
const MAX_HELLO: usize = 16 * 1024;

/// A server TLS session that notes whether the ClientHello offered early data, and counts
/// the outcome when quinn asks for 0-RTT keys (once, right after the ClientHello).
struct ObservedSession {
    inner: Box<dyn Session>,
    metrics: Arc<Metrics>,
    hello: Vec<u8>,
    offered: Option<bool>,
    recorded: AtomicBool,
}

impl Session for ObservedSession {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        self.inner.initial_keys(dst_cid, side)
    }

    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        self.inner.handshake_data()
    }

    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        self.inner.peer_identity()
    }

    fn early_crypto(&self) -> Option<(Box<dyn crypto::HeaderKey>, Box<dyn PacketKey>)> {
        let keys = self.inner.early_crypto();
        if self.offered == Some(true) && !self.recorded.swap(true, Ordering::Relaxed) {
            let outcome = if keys.is_some() { "accepted" } else { "rejected" };
            self.metrics.quic_zero_rtt.with_label_values(&[outcome]).inc();
        }
        keys
    }

    fn early_data_accepted(&self) -> Option<bool> {
        self.inner.early_data_accepted()
    }

    fn is_handshaking(&self) -> bool {
        self.inner.is_handshaking()
    }

    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        if self.offered.is_none() && self.hello.len() + buf.len() <= MAX_HELLO {
            self.hello.extend_from_slice(buf);
            self.offered = offers_early_data(&self.hello);
            if self.offered.is_some() {
                self.hello = Vec::new();
            }
        }
        self.inner.read_handshake(buf)
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        self.inner.transport_parameters()
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        self.inner.write_handshake(buf)
    }

    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn PacketKey>>> {
        self.inner.next_1rtt_keys()
    }

    fn is_valid_retry(&self, orig_dst_cid: &ConnectionId, header: &[u8], payload: &[u8]) -> bool {
        self.inner.is_valid_retry(orig_dst_cid, header, payload)
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        self.inner.export_keying_material(output, label, context)
    }
}

/// TLS extension number of `early_data` (RFC 8446 §4.2).
const EARLY_DATA_EXTENSION: u16 = 42;

/// Whether a ClientHello (the start of the client's handshake stream) offers early data;
/// `None` while the message is incomplete. Anything that is not a ClientHello is `false`.
pub fn offers_early_data(stream: &[u8]) -> Option<bool> {
    let mut r = Reader(stream);
    if r.u8()? != 1 {
        return Some(false);
    }
    let len = r.u24()?;
    let mut body = Reader(r.take(len)?);
    Some(hello_extensions(&mut body).is_some_and(|exts| exts.contains(&EARLY_DATA_EXTENSION)))
}

/// The extension numbers of a complete ClientHello body.
fn hello_extensions(body: &mut Reader<'_>) -> Option<Vec<u16>> {
    body.take(2 + 32)?; // legacy_version, random
    let session_id = body.u8()? as usize;
    body.take(session_id)?;
    let suites = body.u16()? as usize;
    body.take(suites)?;
    let compression = body.u8()? as usize;
    body.take(compression)?;
    let ext_len = body.u16()? as usize;
    let mut exts = Reader(body.take(ext_len)?);
    let mut found = Vec::new();
    while !exts.0.is_empty() {
        found.push(exts.u16()?);
        let len = exts.u16()? as usize;
        exts.take(len)?;
    }
    Some(found)
}

/// A cursor over bytes; every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3).map(|b| (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello handshake message with these extensions (empty bodies).
    fn client_hello(extensions: &[u16]) -> Vec<u8> {
        let mut exts = Vec::new();
        for e in extensions {
            exts.extend_from_slice(&e.to_be_bytes());
            exts.extend_from_slice(&0u16.to_be_bytes());
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut msg = vec![1];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn finds_the_early_data_extension_among_others() {
        assert_eq!(offers_early_data(&client_hello(&[0, 16, 42, 43])), Some(true));
        assert_eq!(offers_early_data(&client_hello(&[0, 16, 43])), Some(false));
        assert_eq!(offers_early_data(&client_hello(&[])), Some(false));
    }

    #[test]
    fn waits_for_the_whole_message_across_crypto_frames() {
        let hello = client_hello(&[0, 42]);
        for cut in [0, 1, 3, 4, 40, hello.len() - 1] {
            assert_eq!(offers_early_data(&hello[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn anything_else_is_not_an_offer() {
        assert_eq!(offers_early_data(&[2, 0, 0, 0]), Some(false), "a ServerHello");
        // A length that lies about its contents.
        let mut bad = client_hello(&[42]);
        let n = bad.len();
        bad[n - 3] = 0xff; // the extension claims more bytes than the message holds
        assert_eq!(offers_early_data(&bad), Some(false));
    }

    #[test]
    fn a_real_rustls_client_hello_without_a_ticket_offers_nothing() {
        let mut config = crate::tls::insecure_client_config().unwrap();
        config.alpn_protocols = vec![b"h3".to_vec()];
        config.enable_early_data = true;
        let name = rustls_pki_types::ServerName::try_from("example.com").unwrap();
        let mut conn =
            rustls::quic::ClientConnection::new(Arc::new(config), rustls::quic::Version::V1, name, vec![0x01, 0x00])
                .unwrap();
        let mut hello = Vec::new();
        conn.write_hs(&mut hello);
        assert_eq!(offers_early_data(&hello), Some(false));
        assert_eq!(offers_early_data(&hello[..hello.len() / 2]), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parser() {
        for len in 0..300 {
            for _ in 0..20 {
                let bytes: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
                let _ = offers_early_data(&bytes);
                let mut hello = bytes.clone();
                if let Some(first) = hello.first_mut() {
                    *first = 1; // claims to be a ClientHello
                }
                let _ = offers_early_data(&hello);
            }
        }
    }

    #[test]
    fn only_safe_methods_are_forwarded_early() {
        for m in ["GET", "HEAD", "OPTIONS"] {
            assert!(safe_in_early_data(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PUT", "DELETE", "PATCH", "CONNECT"] {
            assert!(!safe_in_early_data(&m.parse().unwrap()), "{m}");
        }
    }
}
