//! Session-ticket keys from a Kubernetes Secret, so every replica seals and opens the same
//! tickets and a client resumes wherever the load balancer sends it. The Secret is watched:
//! a rotated key (new key first in `ticket.key`) takes effect without a restart.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::tls::{SharedTicketer, parse_ticket_keys};

/// The Secret data key holding the keys: one or more 48-byte keys, the first sealing.
pub const TICKET_KEY: &str = "ticket.key";

/// Keys from a Secret's data, or why there are none.
pub fn keys_from_secret(secret: &Secret) -> Result<Vec<[u8; crate::tls::TICKET_KEY_LEN]>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(data: Option<(&str, Vec<u8>)>) -> Secret {
        Secret { data: data.map(|(k, v)| [(k.to_string(), ByteString(v))].into_iter().collect()), ..Secret::default() }
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
