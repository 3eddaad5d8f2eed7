//! TLS session resumption: single-use server-side sessions (which allow 0-RTT) or
//! stateless tickets sealed with keys shared by every replica (resumption behind a load
//! balancer, no 0-RTT).
//!
//! Why the two cannot be combined: rustls accepts early data only for sessions it stores
//! itself and removes on first use. That single use is what stops a captured ClientHello
//! from being replayed into 0-RTT on the same server; a stateless ticket can be presented
//! any number of times, so rustls refuses early data with one.

use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use zeroize::Zeroizing;

use crate::telemetry::metrics::Metrics;

/// Bytes in one ticket key: a 16-byte name (sent in clear in each ticket, so a replica
/// knows which key sealed it) and a 32-byte AES-256-GCM key.
pub const TICKET_KEY_LEN: usize = 48;
const NAME_LEN: usize = 16;
/// How long clients may keep a ticket (seconds); keys should live at least this long
/// after they stop being the first.
pub const TICKET_LIFETIME: u32 = 12 * 60 * 60;
/// The longest lifetime a TLS 1.3 ticket may have (RFC 8446, 4.6.1).
pub const MAX_TICKET_LIFETIME: u32 = 7 * 24 * 60 * 60;
/// Sessions remembered per replica for single-use resumption.
const SESSION_CACHE_SIZE: usize = 10_000;

/// How the listeners resume TLS sessions.
#[derive(Debug, Clone)]
pub enum Resumption {
    /// Sessions kept in memory and usable once; 0-RTT allowed when `early_data`.
    SingleUse { sessions: Arc<ServerSessionMemoryCache>, early_data: bool },
    /// Stateless tickets sealed with shared keys.
    SharedKeys(Arc<SharedTicketer>),
}

impl Resumption {
    pub fn single_use(early_data: bool) -> Self {
        Self::SingleUse { sessions: ServerSessionMemoryCache::new(SESSION_CACHE_SIZE), early_data }
    }

    /// Applies this mode to a listener's configuration, counting resumptions into
    /// `metrics`. `quic` listeners may accept early data; TCP ones never do (TLS 1.3 early
    /// data over TCP is not offered).
    pub fn apply(&self, config: &mut rustls::ServerConfig, quic: bool, metrics: &Metrics) {
        let counts = ResumptionCounts::new(metrics);
        match self {
            Self::SingleUse { sessions, early_data } => {
                config.session_storage = Arc::new(CountedSessions { inner: sessions.clone(), counts });
                // QUIC allows only 0 or the maximum; the amount is flow-controlled by QUIC.
                config.max_early_data_size = if quic && *early_data { u32::MAX } else { 0 };
            }
            Self::SharedKeys(ticketer) => {
                config.ticketer = Arc::new(CountedTickets { inner: ticketer.clone(), counts });
                config.max_early_data_size = 0;
            }
        }
    }

    pub fn early_data(&self) -> bool {
        matches!(self, Self::SingleUse { early_data: true, .. })
    }
}

/// Counts resumption attempts: the session was found, or the client's ticket is one this
/// replica cannot open (another replica's, expired, used already, or keys rotated away).
#[derive(Debug)]
struct ResumptionCounts {
    resumed: prometheus::IntCounter,
    unknown_ticket: prometheus::IntCounter,
}

impl ResumptionCounts {
    fn new(metrics: &Metrics) -> Self {
        Self {
            resumed: metrics.tls_resumptions.with_label_values(&["resumed"]),
            unknown_ticket: metrics.tls_resumptions.with_label_values(&["unknown_ticket"]),
        }
    }

    fn count<T>(&self, found: Option<T>) -> Option<T> {
        if found.is_some() { &self.resumed } else { &self.unknown_ticket }.inc();
        found
    }
}

/// The in-memory session cache, counting look-ups.
#[derive(Debug)]
struct CountedSessions {
    inner: Arc<ServerSessionMemoryCache>,
    counts: ResumptionCounts,
}

impl StoresServerSessions for CountedSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.counts.count(self.inner.get(key))
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.counts.count(self.inner.take(key))
    }

    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

/// Shared-key tickets, counting the ones opened and refused.
#[derive(Debug)]
struct CountedTickets {
    inner: Arc<SharedTicketer>,
    counts: ResumptionCounts,
}

impl ProducesTickets for CountedTickets {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.inner.encrypt(plain)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.counts.count(self.inner.decrypt(ticket))
    }
}

/// Why ticket keys were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketKeyError {
    #[error("no ticket key: expected one or more {TICKET_KEY_LEN}-byte keys (e.g. `openssl rand 48`)")]
    Empty,
    #[error(
        "{0} bytes is not a whole number of {TICKET_KEY_LEN}-byte keys (raw bytes, or their base64; e.g. `openssl rand 48`)"
    )]
    Length(usize),
}

/// Splits key material into keys: raw bytes or base64 text, a multiple of 48 bytes. The
/// first key seals new tickets; all of them open tickets, so keys can be rotated by
/// putting a new key first and dropping the oldest later.
pub fn parse_ticket_keys(material: &[u8]) -> Result<TicketKeys, TicketKeyError> {
    let text = Zeroizing::new(std::str::from_utf8(material).ok().map(|t| t.split_whitespace().collect::<String>()));
    let decoded =
        text.as_ref().and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok()).map(Zeroizing::new);
    let bytes = match decoded {
        Some(d) if !d.is_empty() && d.len() % TICKET_KEY_LEN == 0 => d,
        _ => Zeroizing::new(material.to_vec()),
    };
    if bytes.is_empty() {
        return Err(TicketKeyError::Empty);
    }
    if bytes.len() % TICKET_KEY_LEN != 0 {
        return Err(TicketKeyError::Length(bytes.len()));
    }
    Ok(Zeroizing::new(
        bytes
            .chunks_exact(TICKET_KEY_LEN)
            .map(|c| {
                let mut key = [0u8; TICKET_KEY_LEN];
                key.copy_from_slice(c);
                key
            })
            .collect(),
    ))
}

/// Ticket keys, wiped from memory when dropped.
pub type TicketKeys = Zeroizing<Vec<[u8; TICKET_KEY_LEN]>>;

/// Concatenates keys for storage (first seals), wiped when dropped.
pub fn encode_ticket_keys(keys: &[[u8; TICKET_KEY_LEN]]) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(keys.iter().flatten().copied().collect())
}

/// A new random key.
pub fn random_ticket_key() -> Result<Zeroizing<[u8; TICKET_KEY_LEN]>, TicketKeyError> {
    let mut key = Zeroizing::new([0u8; TICKET_KEY_LEN]);
    SystemRandom::new().fill(key.as_mut()).map_err(|_| TicketKeyError::Empty)?;
    Ok(key)
}

struct TicketKey {
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
}

impl TicketKey {
    fn new(material: &[u8; TICKET_KEY_LEN]) -> Option<Self> {
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(&material[..NAME_LEN]);
        let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &material[NAME_LEN..]).ok()?);
        Some(Self { name, aead })
    }
}

/// Seals tickets with the first key and opens them with any; keys can be replaced while
/// serving. A ticket is `name ‖ nonce ‖ AES-256-GCM(session)`, the name authenticated too.
pub struct SharedTicketer {
    keys: ArcSwap<Vec<TicketKey>>,
    random: SystemRandom,
    /// Seconds clients may keep a ticket (told to them in each ticket).
    lifetime: u32,
}

impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTicketer").field("keys", &self.keys.load().len()).finish()
    }
}

impl SharedTicketer {
    pub fn new(keys: &[[u8; TICKET_KEY_LEN]]) -> Result<Self, TicketKeyError> {
        let ticketer =
            Self { keys: ArcSwap::from_pointee(Vec::new()), random: SystemRandom::new(), lifetime: TICKET_LIFETIME };
        ticketer.set_keys(keys)?;
        Ok(ticketer)
    }

    /// Tickets from this ticketer may be kept `seconds` (at most a week, RFC 8446), not
    /// [`TICKET_LIFETIME`]; keys must then be kept that long after they stop sealing.
    pub fn with_lifetime(mut self, seconds: u32) -> Self {
        self.lifetime = seconds.clamp(1, MAX_TICKET_LIFETIME);
        self
    }

    /// A ticketer with one random key, until the shared keys arrive.
    pub fn ephemeral() -> Result<Self, TicketKeyError> {
        Self::new(&[*random_ticket_key()?])
    }

    /// Replaces the keys; tickets sealed with a key no longer listed stop resuming.
    pub fn set_keys(&self, keys: &[[u8; TICKET_KEY_LEN]]) -> Result<(), TicketKeyError> {
        let keys: Vec<TicketKey> = keys.iter().filter_map(TicketKey::new).collect();
        if keys.is_empty() {
            return Err(TicketKeyError::Empty);
        }
        self.keys.store(Arc::new(keys));
        Ok(())
    }
}

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.load();
        let key = keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(key.name), &mut sealed)
            .ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&key.name);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.open(ticket)
    }
}

impl SharedTicketer {
    fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let name = ticket.get(..NAME_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(ticket.get(NAME_LEN..NAME_LEN + NONCE_LEN)?).ok()?;
        let keys = self.keys.load();
        let key = keys.iter().find(|k| k.name == name)?;
        let mut sealed = ticket.get(NAME_LEN + NONCE_LEN..)?.to_vec();
        let plain = key.aead.open_in_place(nonce, Aad::from(key.name), &mut sealed).ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(fill: u8) -> [u8; TICKET_KEY_LEN] {
        let mut k = [fill; TICKET_KEY_LEN];
        k[0] = fill.wrapping_add(1); // names differ from the key bytes
        k
    }

    #[test]
    fn tickets_open_with_the_same_keys_on_another_replica() {
        let a = SharedTicketer::new(&[key(1)]).unwrap();
        let b = SharedTicketer::new(&[key(1)]).unwrap();
        let ticket = a.encrypt(b"session state").unwrap();
        assert_eq!(b.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        assert_ne!(&ticket[NAME_LEN + NONCE_LEN..][..13], b"session state", "the state is encrypted");
    }

    #[test]
    fn rotated_keys_still_open_old_tickets_until_dropped() {
        let t = SharedTicketer::new(&[key(1)]).unwrap();
        let old = t.encrypt(b"old").unwrap();
        t.set_keys(&[key(2), key(1)]).unwrap();
        assert_eq!(t.decrypt(&old).as_deref(), Some(&b"old"[..]));
        let new = t.encrypt(b"new").unwrap();
        assert_eq!(&new[..NAME_LEN], &key(2)[..NAME_LEN], "the first key seals");
        t.set_keys(&[key(2)]).unwrap();
        assert_eq!(t.decrypt(&old), None);
        assert_eq!(t.decrypt(&new).as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn tampered_truncated_or_foreign_tickets_are_refused() {
        let t = SharedTicketer::new(&[key(1)]).unwrap();
        let mut ticket = t.encrypt(b"state").unwrap();
        let last = ticket.len() - 1;
        ticket[last] ^= 1;
        assert_eq!(t.decrypt(&ticket), None);
        assert_eq!(t.decrypt(&ticket[..20]), None);
        assert_eq!(t.decrypt(b""), None);
        let other = SharedTicketer::new(&[key(7)]).unwrap();
        assert_eq!(other.decrypt(&t.encrypt(b"state").unwrap()), None);
    }

    #[test]
    fn key_material_is_raw_or_base64_in_whole_keys() {
        let two = [key(1), key(2)].concat();
        assert_eq!(*parse_ticket_keys(&two).unwrap(), vec![key(1), key(2)]);
        let text = base64::engine::general_purpose::STANDARD.encode(&two) + "\n";
        assert_eq!(*parse_ticket_keys(text.as_bytes()).unwrap(), vec![key(1), key(2)]);
        assert_eq!(parse_ticket_keys(b""), Err(TicketKeyError::Empty));
        assert_eq!(parse_ticket_keys(&[0u8; 47]), Err(TicketKeyError::Length(47)));
    }
}
