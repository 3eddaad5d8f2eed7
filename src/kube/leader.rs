//! Leader election through a coordination.k8s.io Lease: one replica writes status and
//! Events; every replica serves traffic whatever it is.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;

const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// Keeps trying to hold `name`; publishes whether this replica leads.
pub async fn run(api: Api<Lease>, name: String, identity: String, leading: watch::Sender<bool>) {
    let mut last_renewed: Option<Instant> = None;
    loop {
        match try_acquire_or_renew(&api, &name, &identity).await {
            Ok(true) => last_renewed = Some(Instant::now()),
            Ok(false) => last_renewed = None,
            Err(e) => tracing::warn!(error = %e, lease = %name, "cannot renew the leader lease"),
        }
        // A leader that cannot renew steps down before its lease can pass to another replica.
        let is_leader = last_renewed.is_some_and(|t| t.elapsed() < LEASE_DURATION - RENEW_EVERY);
        leading.send_if_modified(|current| {
            let changed = *current != is_leader;
            if changed {
                tracing::info!(leader = is_leader, %identity, "leadership changed");
            }
            *current = is_leader;
            changed
        });
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

async fn try_acquire_or_renew(api: &Api<Lease>, name: &str, identity: &str) -> Result<bool, kube::Error> {
    let duration_secs = LEASE_DURATION.as_secs() as i32;
    let Some(mut lease) = api.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(name.to_string()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.to_string()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let expired = spec.renew_time.as_ref().is_none_or(|t| {
        let age = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
        age.as_secs() >= i64::from(spec.lease_duration_seconds.unwrap_or(duration_secs))
    });
    if holder != identity && !holder.is_empty() && !expired {
        return Ok(false);
    }
    if holder != identity {
        spec.holder_identity = Some(identity.to_string());
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(duration_secs);
    // The resourceVersion in `lease` makes this a compare-and-swap: a replica that lost a
    // race gets 409 and stays a follower.
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
