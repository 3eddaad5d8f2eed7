//! The keys that seal QUIC Retry tokens (and NEW_TOKEN address-validation tokens), read
//! from a file the replicas share. Several keys rotate as the ticket keys do: the first
//! seals, all open. A client that got a Retry from one replica may send its retried
//! Initial to another (a load balancer not hashing on the 4-tuple); that replica must open
//! the token, because the client accepts only one Retry per attempt (RFC 9000
//! §17.2.5.2): a token it cannot open would cost the connection, not another Retry.

use std::sync::Arc;

use base64::Engine;
use quinn_proto::crypto::{AeadKey, CryptoError, HandshakeTokenKey};
use ring::hkdf;

/// The shortest key accepted, in bytes (HKDF input key material).
pub const MIN_KEY_LEN: usize = 32;

/// Why a key file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("{0} bytes; at least {MIN_KEY_LEN} are needed")]
    TooShort(usize),
}

/// Splits key material into keys. One key: the whole file, raw bytes or base64 text. Several:
/// one base64 key per line, the first sealing new tokens.
pub fn parse_keys(material: &[u8]) -> Result<Vec<Vec<u8>>, KeyFileError> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s.trim()).ok();
    if let Ok(text) = std::str::from_utf8(material) {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.len() > 1 {
            let keys: Option<Vec<Vec<u8>>> = lines.iter().map(|l| b64(l)).collect();
            if let Some(keys) = keys {
                return match keys.iter().find(|k| k.len() < MIN_KEY_LEN) {
                    Some(short) => Err(KeyFileError::TooShort(short.len())),
                    None => Ok(keys),
                };
            }
        }
    }
    let one = std::str::from_utf8(material).ok().and_then(b64).unwrap_or_else(|| material.to_vec());
    if one.len() < MIN_KEY_LEN {
        return Err(KeyFileError::TooShort(one.len()));
    }
    Ok(vec![one])
}

/// Token keys: the first seals, every one opens.
pub struct TokenKeys {
    keys: Arc<[hkdf::Prk]>,
}

impl TokenKeys {
    /// None without keys.
    pub fn new(keys: &[Vec<u8>]) -> Option<Self> {
        if keys.is_empty() {
            return None;
        }
        let keys = keys.iter().map(|k| hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, k)).collect();
        Some(Self { keys })
    }
}

impl HandshakeTokenKey for TokenKeys {
    fn aead_from_hkdf(&self, random_bytes: &[u8]) -> Box<dyn AeadKey> {
        // The AEAD keys are derived when used: sealing needs only the first.
        Box::new(Candidates { keys: self.keys.clone(), random_bytes: random_bytes.to_vec() })
    }
}

/// The AEAD keys one token's random bytes derive, one per token key.
struct Candidates {
    keys: Arc<[hkdf::Prk]>,
    random_bytes: Vec<u8>,
}

impl Candidates {
    fn derive(&self, key: &hkdf::Prk) -> Box<dyn AeadKey> {
        key.aead_from_hkdf(&self.random_bytes)
    }
}

impl AeadKey for Candidates {
    fn seal(&self, data: &mut Vec<u8>, additional_data: &[u8]) -> Result<(), CryptoError> {
        let first = self.keys.first().ok_or(CryptoError)?;
        self.derive(first).seal(data, additional_data)
    }

    fn open<'a>(&self, data: &'a mut [u8], additional_data: &[u8]) -> Result<&'a mut [u8], CryptoError> {
        let Some((last, others)) = self.keys.split_last() else { return Err(CryptoError) };
        // Opening works in place and leaves `data` unspecified on failure: try the others on
        // a copy, the last on the token itself.
        for key in others {
            let mut copy = data.to_vec();
            if let Ok(plain) = self.derive(key).open(&mut copy, additional_data) {
                let n = plain.len();
                data[..n].copy_from_slice(plain);
                return Ok(&mut data[..n]);
            }
        }
        self.derive(last).open(data, additional_data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(fills: &[u8]) -> TokenKeys {
        TokenKeys::new(&fills.iter().map(|f| vec![*f; 32]).collect::<Vec<_>>()).unwrap()
    }

    fn seal(keys: &TokenKeys, plain: &[u8]) -> Vec<u8> {
        let mut data = plain.to_vec();
        keys.aead_from_hkdf(b"nonce-bytes-0123").seal(&mut data, &[]).unwrap();
        data
    }

    fn opens(keys: &TokenKeys, sealed: &[u8]) -> Option<Vec<u8>> {
        let mut data = sealed.to_vec();
        keys.aead_from_hkdf(b"nonce-bytes-0123").open(&mut data, &[]).ok().map(|p| p.to_vec())
    }

    #[test]
    fn the_first_key_seals_and_every_key_opens() {
        let old = seal(&keys(&[1]), b"token");
        let rotated = keys(&[2, 1]);
        assert_eq!(opens(&rotated, &old).as_deref(), Some(&b"token"[..]), "a token of the old key");
        let new = seal(&rotated, b"token");
        assert_eq!(opens(&keys(&[2]), &new).as_deref(), Some(&b"token"[..]), "sealed with the first");
        assert_eq!(opens(&keys(&[1]), &new), None, "not with the second");
        assert_eq!(opens(&keys(&[3, 4]), &old), None, "a key no replica has any more");
    }

    #[test]
    fn a_tampered_token_opens_with_no_key() {
        let mut sealed = seal(&keys(&[1]), b"token");
        sealed[0] ^= 1;
        assert_eq!(opens(&keys(&[2, 1]), &sealed), None);
    }

    #[test]
    fn key_files_hold_one_key_raw_or_base64_or_one_base64_key_per_line() {
        let b64 = |k: &[u8]| base64::engine::general_purpose::STANDARD.encode(k);
        let (k1, k2) = (vec![1u8; 32], vec![2u8; 40]);
        assert_eq!(parse_keys(&k1).unwrap(), vec![k1.clone()], "raw");
        assert_eq!(parse_keys(format!("{}\n", b64(&k1)).as_bytes()).unwrap(), vec![k1.clone()], "base64");
        let two = format!("{}\n{}\n", b64(&k2), b64(&k1));
        assert_eq!(parse_keys(two.as_bytes()).unwrap(), [k2, k1], "one per line, in order");
        assert_eq!(parse_keys(&[7u8; 31]), Err(KeyFileError::TooShort(31)));
        let short_line = format!("{}\n{}\n", b64(&[1u8; 32]), b64(&[2u8; 8]));
        assert_eq!(parse_keys(short_line.as_bytes()), Err(KeyFileError::TooShort(8)));
    }
}
