//! Session-ticket keys from a Kubernetes Secret, so every replica seals and opens the same
//! tickets and a client resumes wherever the load balancer sends it. The Secret is watched:
//! a rotated key (new key first in `ticket.key`) takes effect without a restart.
//!
//! With rotation on, the leader keeps the Secret itself: it creates it with a random key
//! when it is missing, and on schedule puts a new key first, keeping as many older keys as
//! it takes to open every ticket still within its lifetime. Nothing outside (a chart
//! rendered again, a GitOps sync) has to hold key material.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::tls::{
    MAX_TICKET_LIFETIME, SharedTicketer, TICKET_KEY_LEN, TICKET_LIFETIME, TicketKeys, encode_ticket_keys,
    parse_ticket_keys, random_ticket_key,
};

/// The Secret data key holding the keys: one or more 48-byte keys, the first sealing.
pub const TICKET_KEY: &str = "ticket.key";

/// Keys from a Secret's data, or why there are none.
pub fn keys_from_secret(secret: &Secret) -> Result<TicketKeys, String> {
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(TICKET_KEY))
        .ok_or_else(|| format!("data.{TICKET_KEY:?} is missing"))?;
    parse_ticket_keys(&data.0).map_err(|e| format!("data.{TICKET_KEY:?}: {e}"))
}

/// Follows the Secret `namespace/name`, installing its keys into `ticketer` whenever it
/// changes. Until a valid Secret is seen the ticketer keeps its random start-up key
/// (resumption then works only on this replica); a bad or deleted Secret keeps the last
/// good keys.
pub async fn follow(client: Client, namespace: String, name: String, ticketer: Arc<SharedTicketer>) {
    let api = Api::<Secret>::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(api, config).default_backoff().applied_objects();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(secret) => match keys_from_secret(&secret)
                .and_then(|k| ticketer.set_keys(&k).map(|()| k.len()).map_err(|e| e.to_string()))
            {
                Ok(count) => {
                    tracing::info!(secret = %format!("{namespace}/{name}"), keys = count, "session-ticket keys loaded")
                }
                Err(e) => tracing::error!(
                    secret = %format!("{namespace}/{name}"), error = %e,
                    "session-ticket keys refused; the previous keys stay"
                ),
            },
            Err(e) => tracing::warn!(error = %e, "watching the session-ticket Secret failed; retrying"),
        }
    }
}

/// When the keys were last rotated (RFC 3339), on the Secret.
pub const ROTATED_AT: &str = "quic-ingress.dev/ticket-keys-rotated-at";

/// A new key every `interval`; older keys kept while tickets they sealed may be presented
/// (a ticket `lifetime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub interval: Duration,
    pub lifetime: Duration,
}

/// At most this many keys are kept (48 bytes each: 12 KiB, far below a Secret's 1 MiB).
/// A rotation every second with 12 h tickets would need 43,201 keys, 2 MiB, which the API
/// server refuses, so such settings are refused at start instead.
pub const MAX_KEPT_KEYS: usize = 256;

/// Why `--ticket-key-rotation` / `--ticket-lifetime` were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RotationError {
    #[error("--ticket-key-rotation {0:?}: at least 1s")]
    TooOften(Duration),
    #[error("--ticket-lifetime {0:?}: between 1s and 168h (7 days, RFC 8446)")]
    Lifetime(Duration),
    #[error(
        "--ticket-key-rotation {interval:?} with --ticket-lifetime {lifetime:?} keeps {keys} keys, more than {MAX_KEPT_KEYS}: rotate every {min:?} or less often, or shorten the lifetime"
    )]
    TooManyKeys { interval: Duration, lifetime: Duration, keys: usize, min: Duration },
}

/// The default ticket lifetime as a duration.
pub fn default_lifetime() -> Duration {
    Duration::from_secs(u64::from(TICKET_LIFETIME))
}

/// A ticket lifetime within what TLS 1.3 allows, in whole seconds.
pub fn check_lifetime(lifetime: Duration) -> Result<u32, RotationError> {
    match u32::try_from(lifetime.as_secs()) {
        Ok(secs) if (1..=MAX_TICKET_LIFETIME).contains(&secs) => Ok(secs),
        _ => Err(RotationError::Lifetime(lifetime)),
    }
}

impl Rotation {
    /// A rotation every `interval` for tickets kept `lifetime`, if the keys that needs fit.
    pub fn new(interval: Duration, lifetime: Duration) -> Result<Rotation, RotationError> {
        check_lifetime(lifetime)?;
        if interval < Duration::from_secs(1) {
            return Err(RotationError::TooOften(interval));
        }
        let rotation = Rotation { interval, lifetime };
        let keys = rotation.keep();
        if keys > MAX_KEPT_KEYS {
            let min = Duration::from_secs(lifetime.as_secs().div_ceil(MAX_KEPT_KEYS as u64 - 1));
            return Err(RotationError::TooManyKeys { interval, lifetime, keys, min });
        }
        Ok(rotation)
    }

    /// Keys kept: the sealing one plus enough older ones to cover a ticket's lifetime,
    /// since a key sealed tickets until the rotation after it.
    pub fn keep(&self) -> usize {
        let keep = 1 + self.lifetime.as_secs().div_ceil(self.interval.as_secs().max(1));
        usize::try_from(keep).unwrap_or(usize::MAX)
    }

    /// The keys after the rotation due at `now`, if one is: `fresh` first, then the newest
    /// of `current`, as many as `keep` allows. Not due while the last rotation is younger
    /// than the interval (a clock that went back counts as not due).
    pub fn next(
        &self,
        current: &[[u8; TICKET_KEY_LEN]],
        rotated_at: Option<SystemTime>,
        now: SystemTime,
        fresh: &[u8; TICKET_KEY_LEN],
    ) -> Option<TicketKeys> {
        let due = rotated_at.is_none_or(|at| now.duration_since(at).is_ok_and(|age| age >= self.interval));
        if !due {
            return None;
        }
        let mut keys = TicketKeys::new(vec![*fresh]);
        keys.extend(current.iter().take(self.keep() - 1));
        Some(keys)
    }

    /// How often the leader looks: a tenth of the interval, between 1 s and a minute.
    fn check_every(&self) -> Duration {
        (self.interval / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// Why a rotation pass did nothing.
#[derive(Debug, thiserror::Error)]
enum RotateError {
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Keys(String),
}

/// While this replica leads, keeps the Secret `namespace/name` rotated. Writes go with the
/// resourceVersion read, so two leaders for a moment cannot both rotate.
pub async fn rotate(
    client: Client,
    namespace: String,
    name: String,
    rotation: Rotation,
    mut leading: watch::Receiver<bool>,
) {
    let api = Api::<Secret>::namespaced(client, &namespace);
    let mut tick = tokio::time::interval(rotation.check_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // On schedule, and at once when this replica becomes the leader.
        tokio::select! {
            _ = tick.tick() => {}
            changed = leading.changed() => if changed.is_err() { return },
        }
        if !*leading.borrow_and_update() {
            continue;
        }
        match rotate_once(&api, &name, &rotation).await {
            Ok(Some(kept)) => {
                tracing::info!(secret = %format!("{namespace}/{name}"), keys = kept, "session-ticket keys rotated")
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(secret = %format!("{namespace}/{name}"), error = %e, "session-ticket key rotation failed; trying again")
            }
        }
    }
}

/// One pass: creates the Secret when missing, rotates it when due. Returns the number of
/// keys written, if anything was.
async fn rotate_once(api: &Api<Secret>, name: &str, rotation: &Rotation) -> Result<Option<usize>, RotateError> {
    let fresh = random_ticket_key().map_err(|e| RotateError::Keys(e.to_string()))?;
    let now = SystemTime::now();
    let existing = api.get_opt(name).await?;
    let (mut secret, current) = match existing {
        Some(secret) => {
            // Keys that cannot be read are left for a person to look at, not replaced.
            let current = keys_from_secret(&secret).map_err(RotateError::Keys)?;
            (secret, current)
        }
        None => {
            let meta = ObjectMeta { name: Some(name.to_string()), ..ObjectMeta::default() };
            (Secret { metadata: meta, type_: Some("Opaque".into()), ..Secret::default() }, TicketKeys::default())
        }
    };
    let rotated_at = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROTATED_AT))
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(SystemTime::from);
    let rotated_at = if current.is_empty() { None } else { rotated_at };
    let Some(keys) = rotation.next(&current, rotated_at, now, &fresh) else { return Ok(None) };
    let kept = keys.len();
    secret.metadata.annotations.get_or_insert_default().insert(
        ROTATED_AT.to_string(),
        k8s_openapi::jiff::Timestamp::try_from(now).map(|t| t.to_string()).unwrap_or_default(),
    );
    secret.data.get_or_insert_default().insert(TICKET_KEY.to_string(), ByteString(encode_ticket_keys(&keys).to_vec()));
    if secret.metadata.resource_version.is_some() {
        api.replace(name, &PostParams::default(), &secret).await?;
    } else {
        api.create(&PostParams::default(), &secret).await?;
    }
    Ok(Some(kept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(data: Option<(&str, Vec<u8>)>) -> Secret {
        Secret { data: data.map(|(k, v)| [(k.to_string(), ByteString(v))].into_iter().collect()), ..Secret::default() }
    }

    #[test]
    fn rotation_puts_a_new_key_first_and_keeps_enough_for_a_ticket_lifetime() {
        let hour = Duration::from_secs(3600);
        let rotation = Rotation::new(6 * hour, default_lifetime()).unwrap();
        assert_eq!(rotation.keep(), 3, "12 h tickets, a new key every 6 h: the sealer and two before it");
        assert_eq!(Rotation::new(12 * hour, default_lifetime()).unwrap().keep(), 2);
        let t0 = SystemTime::UNIX_EPOCH + 1000 * hour;
        let k = |b: u8| [b; TICKET_KEY_LEN];
        assert!(rotation.next(&[k(1)], Some(t0), t0 + hour, &k(9)).is_none(), "not due yet");
        assert!(rotation.next(&[k(1)], Some(t0 + hour), t0, &k(9)).is_none(), "a clock gone back is not due");
        let keys = rotation.next(&[k(3), k(2), k(1)], Some(t0), t0 + 6 * hour, &k(4)).unwrap();
        assert_eq!(*keys, vec![k(4), k(3), k(2)], "the oldest goes");
        let first = rotation.next(&[], None, t0, &k(1)).unwrap();
        assert_eq!(*first, vec![k(1)], "no keys yet: one is made at once");
    }

    #[test]
    fn rotations_that_would_keep_too_many_keys_or_tickets_beyond_a_week_are_refused() {
        let s = Duration::from_secs;
        assert_eq!(Rotation::new(s(2), s(10)).unwrap().keep(), 6, "short settings for tests are fine");
        let err = Rotation::new(s(1), default_lifetime()).unwrap_err();
        assert!(matches!(err, RotationError::TooManyKeys { keys: 43_201, .. }), "{err}");
        assert!(err.to_string().contains("170s"), "says how often is allowed: {err}");
        assert!(Rotation::new(s(170), default_lifetime()).is_ok_and(|r| r.keep() <= MAX_KEPT_KEYS));
        assert_eq!(
            Rotation::new(Duration::from_millis(500), s(10)),
            Err(RotationError::TooOften(Duration::from_millis(500)))
        );
        assert_eq!(Rotation::new(s(60), s(8 * 24 * 3600)), Err(RotationError::Lifetime(s(8 * 24 * 3600))));
        assert_eq!(check_lifetime(Duration::ZERO), Err(RotationError::Lifetime(Duration::ZERO)));
    }

    #[test]
    fn keys_come_from_the_ticket_key_entry() {
        let keys = keys_from_secret(&secret(Some((TICKET_KEY, vec![1; 96])))).unwrap();
        assert_eq!(keys.len(), 2);
    }

    #[test]
    fn a_missing_or_malformed_entry_names_it() {
        assert!(keys_from_secret(&secret(None)).unwrap_err().contains("ticket.key"));
        assert!(keys_from_secret(&secret(Some(("other", vec![1; 48])))).unwrap_err().contains("missing"));
        let err = keys_from_secret(&secret(Some((TICKET_KEY, vec![1; 50])))).unwrap_err();
        assert!(err.contains("ticket.key") && err.contains("50 bytes"), "{err}");
    }
}
