//! Session-ticket key rotation end to end, on the real API server: two controller
//! replicas, as the chart runs them (its ServiceAccount, its arguments, a rotation every 2 s
//! and 10 s tickets), share the ticket-key Secret the leader keeps. A client's ticket from
//! one replica still resumes on the other after the key that sealed it was rotated out of
//! first place, and that key leaves the Secret once a ticket lifetime has passed, never
//! earlier.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use quic_ingress_e2e::chart::{ChartController, deployment_args, helm, service_account_kubeconfig};
use quic_ingress_e2e::controller::install_crd;
use quic_ingress_e2e::namespace::unique_name;
use quic_ingress_e2e::resumption::ResumingClient;
use quic_ingress_e2e::{TestEnv, TestNamespace, eventually};

const RELEASE: &str = "tickets";
const FULLNAME: &str = "tickets-quic-ingress";
const SECRET: &str = "tickets-quic-ingress-session-tickets";
const ROTATION: Duration = Duration::from_secs(2);
const LIFETIME: Duration = Duration::from_secs(10);
const ROTATED_AT: &str = "quic-ingress.dev/ticket-keys-rotated-at";

/// The Secret's keys (48 bytes each, the first sealing) and its rotation annotation.
async fn keys(secrets: &Api<Secret>) -> Result<Option<(Vec<Vec<u8>>, String)>> {
    let Some(secret) = secrets.get_opt(SECRET).await? else { return Ok(None) };
    let rotated = secret.metadata.annotations.as_ref().and_then(|a| a.get(ROTATED_AT)).cloned().unwrap_or_default();
    let Some(data) = secret.data.as_ref().and_then(|d| d.get("ticket.key")) else { return Ok(None) };
    ensure!(data.0.len() % 48 == 0, "ticket.key is {} bytes", data.0.len());
    Ok(Some((data.0.chunks(48).map(<[u8]>::to_vec).collect(), rotated)))
}

#[tokio::test]
async fn a_ticket_resumes_on_another_replica_across_a_rotation_and_its_key_goes_after_a_lifetime() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crd(env).await?;
    let ns = TestNamespace::new(env, "rotation").await?;
    helm(
        env,
        &[
            "install",
            RELEASE,
            "charts/quic-ingress",
            "-n",
            ns.name(),
            "--set",
            &format!("ingressClass.name={}", unique_name("quic-rotation")),
            "--set",
            &format!("controller.watchNamespaces={{{}}}", ns.name()),
            "--set",
            "sessionTickets.shared=true",
            "--set",
            &format!("sessionTickets.rotation={}s", ROTATION.as_secs()),
            "--set",
            &format!("sessionTickets.lifetime={}s", LIFETIME.as_secs()),
        ],
    )?;
    let admin = env.client()?;
    let args = deployment_args(&admin, ns.name(), FULLNAME).await?;
    ensure!(args.windows(2).any(|w| w == ["--ticket-lifetime", "10s"]), "{args:?}");
    let kubeconfig = service_account_kubeconfig(env, ns.name(), FULLNAME).await?;
    let a = ChartController::start(&args, &kubeconfig, ns.name(), "tickets-0").await?;
    let b = ChartController::start(&args, &kubeconfig, ns.name(), "tickets-1").await?;
    let secrets = Api::<Secret>::namespaced(admin, ns.name());
    let timeout = Duration::from_secs(30);
    eventually("the leader to create the ticket Secret", timeout, || keys(&secrets))
        .await
        .with_context(|| format!("{}\n{}", a.log_tail(20), b.log_tail(20)))?;
    for c in [&a, &b] {
        eventually("each replica to load the shared keys", timeout, || async {
            Ok(std::fs::read_to_string(c.log_path())?.contains("session-ticket keys loaded").then_some(()))
        })
        .await
        .with_context(|| c.log_tail(20))?;
    }

    // A full handshake at A leaves the client holding A's tickets; later ones are refused,
    // so the next handshake offers one of these.
    let client = ResumingClient::new()?;
    let first = client.connect(a.addr(), "localhost").await?;
    ensure!(!first.resumed, "the first handshake cannot resume");
    eventually("A's session tickets to arrive", Duration::from_secs(5), || async {
        Ok((client.tickets() > 0).then_some(()))
    })
    .await?;
    client.refuse_new_tickets();
    drop(first);
    // A sealed them with the Secret's first key at most: wait until that is first no longer.
    let (at_issue, _) = keys(&secrets).await?.context("the Secret is gone")?;
    let sealer = at_issue[0].clone();
    let demoted_at = eventually("a rotation", ROTATION * 5, || async {
        Ok(keys(&secrets).await?.filter(|(k, _)| k[0] != sealer && k.contains(&sealer)).map(|_| Instant::now()))
    })
    .await?;

    // At B, the ticket sealed with the rotated-out key resumes: the client says so.
    let at_b = client.connect(b.addr(), "localhost").await?;
    ensure!(at_b.resumed, "B did not resume a ticket sealed before the rotation\n{}", b.log_tail(20));
    let resumed = b.metric("quic_ingress_tls_resumptions_total{outcome=\"resumed\"}").await?;
    ensure!(resumed == 1.0, "B counted {resumed} resumptions");
    drop(at_b);

    // The sealer is kept while its tickets live, never more keys than that needs, and is
    // dropped after.
    let keep = 1 + LIFETIME.as_secs().div_ceil(ROTATION.as_secs()) as usize;
    let most_kept = std::cell::Cell::new(0);
    let (gone_at, rotations) = eventually("the rotated-out key to leave the Secret", LIFETIME * 4, || async {
        let (keys, rotated_at) = keys(&secrets).await?.context("the Secret is gone")?;
        most_kept.set(most_kept.get().max(keys.len()));
        Ok((!keys.contains(&sealer)).then(|| (Instant::now(), rotated_at)))
    })
    .await?;
    ensure!(most_kept.get() <= keep, "{} keys kept, at most {keep} needed", most_kept.get());
    let kept_for = gone_at - demoted_at;
    // Polls are at most 0.5 s apart, so the observed span may be short by that much.
    ensure!(
        kept_for + Duration::from_millis(600) >= LIFETIME,
        "the key went {kept_for:?} after it stopped sealing, before a ticket lifetime ({LIFETIME:?}); last rotation {rotations}"
    );
    println!("figure: a rotated-out ticket key stayed {:.1} s (lifetime {LIFETIME:?})", kept_for.as_secs_f64());

    drop((a, b));
    helm(env, &["uninstall", RELEASE, "-n", ns.name()])?;
    ns.cleanup().await
}
