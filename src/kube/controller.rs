//! `quic-ingress controller`: watches the cluster through reflectors, rebuilds the route
//! table when something relevant changes (debounced), and hot-swaps it into the data plane
//! running in the same process. Status is written by the elected leader only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::crd::BackendGroup as BackendGroupCr;
use super::status::{self, Feed, Publish};
use super::translate::{LastGoodCerts, Settings, translate};
use super::world::World;
use crate::proxy::{DataPlane, ListenError, ListenOptions};
use crate::routes::RouteTable;
use crate::telemetry::admin::{self, Readiness};
use crate::telemetry::metrics::Metrics;
use crate::tls::{self, CertSet, TlsError};
use crate::upstream::{EndpointRegistry, HealthChecker};
use prometheus::IntCounterVec;

/// Quiet time that ends a burst of watch events before a rebuild.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// A steady stream of events still rebuilds at least this often.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// Command-line settings of the controller.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub kubeconfig: Option<PathBuf>,
    pub ingress_class: String,
    pub namespace: Option<String>,
    pub publish: Publish,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub alt_svc_port: Option<u16>,
    pub default_cert: Option<(PathBuf, PathBuf)>,
    pub drain_timeout: Duration,
    /// Serve safe methods from 0-RTT early data.
    pub early_data: bool,
    /// QUIC congestion control.
    pub congestion: crate::config::CongestionControl,
    /// `namespace/name` of a Secret with session-ticket keys shared by the replicas.
    pub ticket_key_secret: Option<(String, String)>,
    /// What one client may take of the data plane (the `--limit-*` flags).
    pub limits: crate::config::Limits,
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot bind the admin address {addr}: {source}")]
    Admin { addr: SocketAddr, source: std::io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(String),
    #[error("metrics: {0}")]
    Metrics(String),
}

impl ControllerError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Kubeconfig(_) | Self::Tls(_) => 2,
            _ => 1,
        }
    }
}

async fn client(kubeconfig: Option<&PathBuf>) -> Result<Client, ControllerError> {
    let err = |e: &dyn std::fmt::Display| ControllerError::Kubeconfig(e.to_string());
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(&format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| err(&e))?
        }
        None => kube::Config::infer().await.map_err(|e| err(&e))?,
    };
    Client::try_from(config).map_err(|e| err(&e))
}

/// The reflector stores of everything translation reads.
struct Stores {
    ingresses: Store<Ingress>,
    classes: Store<IngressClass>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    secrets: Store<Secret>,
    groups: Store<BackendGroupCr>,
}

impl Stores {
    fn start(client: &Client, namespace: Option<&str>, changed: Arc<Notify>, metrics: &Metrics) -> Self {
        let cfg = watcher::Config::default();
        let events = &metrics.watch_events;
        Self {
            ingresses: watch_kind(scoped(client, namespace), cfg.clone(), changed.clone(), events),
            classes: watch_kind(Api::all(client.clone()), cfg.clone(), changed.clone(), events),
            services: watch_kind(scoped(client, namespace), cfg.clone(), changed.clone(), events),
            slices: watch_kind(scoped(client, namespace), cfg.clone(), changed.clone(), events),
            // Only TLS Secrets matter; the field selector keeps the rest out of memory.
            secrets: watch_kind(
                scoped(client, namespace),
                cfg.clone().fields("type=kubernetes.io/tls"),
                changed.clone(),
                events,
            ),
            groups: watch_kind(scoped(client, namespace), cfg, changed, events),
        }
    }

    async fn wait_ready(&self) {
        let _ = futures::join!(
            self.ingresses.wait_until_ready(),
            self.classes.wait_until_ready(),
            self.services.wait_until_ready(),
            self.slices.wait_until_ready(),
            self.secrets.wait_until_ready(),
            self.groups.wait_until_ready(),
        );
    }

    fn snapshot(&self) -> World {
        World {
            ingresses: self.ingresses.state(),
            classes: self.classes.state(),
            services: self.services.state(),
            slices: self.slices.state(),
            secrets: self.secrets.state(),
            groups: self.groups.state(),
        }
    }
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Starts a reflector for `K`; every event wakes the rebuild loop. The watcher retries with
/// backoff forever, so a lost API server is reconnected to and re-listed when it returns,
/// while the store keeps the last state it saw.
fn watch_kind<K>(api: Api<K>, cfg: watcher::Config, changed: Arc<Notify>, events: &IntCounterVec) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let counted = events.with_label_values(&[kind.as_str()]);
    let stream = reflector::reflector(writer, watcher(api, cfg)).backoff(WatchBackoff::default());
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    counted.inc();
                    changed.notify_one()
                }
                Err(e) => tracing::warn!(%kind, error = %e, "watch failed; retrying"),
            }
        }
    });
    reader
}

/// Watch retry delays: 0.5 s doubling up to 5 s (kube's default goes to 30 s), so watches
/// resume within seconds of the API server coming back. Reset after each success.
struct WatchBackoff {
    next: Duration,
}

const WATCH_RETRY_MIN: Duration = Duration::from_millis(500);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(5);

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: WATCH_RETRY_MIN }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(WATCH_RETRY_MAX);
        Some(delay)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = WATCH_RETRY_MIN;
    }
}

/// Runs the controller until SIGTERM or SIGINT.
pub async fn run(opts: ControllerOptions) -> Result<(), ControllerError> {
    let client = client(opts.kubeconfig.as_ref()).await?;
    let default_cert = match &opts.default_cert {
        Some((cert, key)) => tls::load_certified_key(cert, key)?,
        None => {
            let dev = tls::generate_dev_cert(&[], &tls::dev_cert_dir())?;
            tracing::info!(cert_file = %dev.cert_path.display(), spki_sha256 = %dev.spki_sha256, "default certificate is self-signed");
            dev.key
        }
    };
    let tables = crate::proxy::tables(RouteTable::empty(CertSet::with_default(default_cert.clone())));
    let ready = Arc::new(Readiness::default());
    let stop_admin = CancellationToken::new();
    let metrics = Arc::new(Metrics::new().map_err(|e| ControllerError::Metrics(e.to_string()))?);
    admin::start(
        opts.admin_listen,
        crate::proxy::routes_view(&tables),
        ready.clone(),
        metrics.clone(),
        stop_admin.clone(),
    )
    .await
    .map_err(|source| ControllerError::Admin { addr: opts.admin_listen, source })?;
    let resumption = match &opts.ticket_key_secret {
        Some((namespace, name)) => {
            let ticketer = Arc::new(tls::SharedTicketer::ephemeral().map_err(|e| TlsError::Key(e.to_string()))?);
            tokio::spawn(super::ticket_keys::follow(client.clone(), namespace.clone(), name.clone(), ticketer.clone()));
            tls::Resumption::SharedKeys(ticketer)
        }
        None => tls::Resumption::single_use(opts.early_data),
    };
    let listen = ListenOptions {
        address: opts.listen,
        alt_svc_port: opts.alt_svc_port,
        congestion: opts.congestion,
        resumption,
        limits: opts.limits.clone(),
    };
    let plane = DataPlane::start(&listen, tables.clone(), metrics.clone()).await?;

    let changed = Arc::new(Notify::new());
    let stores = Stores::start(&client, opts.namespace.as_deref(), changed.clone(), &metrics);
    let (feed_tx, feed_rx) = watch::channel(Arc::new(Feed::default()));
    let (transitions_tx, transitions_rx) = mpsc::unbounded_channel();
    let settings = Settings { ingress_class: opts.ingress_class.clone(), default_cert: Some(default_cert) };

    // Leader election and status.
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id()));
    let lease_ns = opts
        .namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| client.default_namespace().to_string());
    let (leading_tx, leading_rx) = watch::channel(false);
    let lease_name = format!("quic-ingress-{}", opts.ingress_class);
    tokio::spawn(super::leader::run(
        Api::<Lease>::namespaced(client.clone(), &lease_ns),
        lease_name,
        identity.clone(),
        leading_tx,
    ));
    let reporter = Reporter { controller: "quic-ingress".into(), instance: Some(identity) };
    tokio::spawn(status::run(client.clone(), reporter, opts.publish.clone(), leading_rx, feed_rx, transitions_rx));

    let registry = EndpointRegistry::new(metrics, Some(transitions_tx));
    let rebuild = tokio::spawn(rebuild_loop(stores, changed, settings, tables, ready.clone(), feed_tx, registry));

    crate::serve::wait_for_termination().await.map_err(|e| ControllerError::Signals(e.to_string()))?;
    ready.set(false);
    rebuild.abort();
    tracing::info!(timeout = ?opts.drain_timeout, "shutting down: draining in-flight requests");
    plane.shutdown(opts.drain_timeout).await;
    stop_admin.cancel();
    let _ = std::fs::remove_dir_all(tls::dev_cert_dir());
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "quic-ingress".into())
}

async fn rebuild_loop(
    stores: Stores,
    changed: Arc<Notify>,
    settings: Settings,
    tables: crate::proxy::Tables,
    ready: Arc<Readiness>,
    feed: watch::Sender<Arc<Feed>>,
    registry: EndpointRegistry,
) {
    let mut last_good = LastGoodCerts::default();
    let mut checker = HealthChecker::new(registry.metrics().clone());
    let mut generation = 0u64;
    tracing::info!("waiting for the initial list of watched objects");
    stores.wait_ready().await;
    loop {
        // Debounce: rebuild once a burst of events has been quiet for DEBOUNCE.
        let burst_start = Instant::now();
        while burst_start.elapsed() < MAX_DEBOUNCE {
            if tokio::time::timeout(DEBOUNCE, changed.notified()).await.is_err() {
                break;
            }
        }
        generation += 1;
        let started = Instant::now();
        let world = stores.snapshot();
        let t = translate(&world, &settings, &registry, &mut last_good, generation);
        for p in &t.problems {
            tracing::info!(kind = p.kind, namespace = %p.namespace, name = %p.name, reason = p.reason, error = %p.message, "skipping part of an object");
        }
        checker.sync(t.table.groups());
        let routes = t.table.route_count();
        let invalid_groups = t
            .problems
            .iter()
            .filter(|p| p.reason == "InvalidBackendGroup")
            .map(|p| {
                let generation = world
                    .groups
                    .iter()
                    .find(|g| g.namespace().as_deref() == Some(p.namespace.as_str()) && g.name_any() == p.name)
                    .and_then(|g| g.metadata.generation);
                (p.namespace.clone(), p.name.clone(), generation, p.message.clone())
            })
            .collect();
        let served: std::collections::HashSet<(String, String)> = t.served_ingresses.into_iter().collect();
        let (mut ingresses, mut released) = (Vec::new(), Vec::new());
        for i in &world.ingresses {
            let key = (i.namespace().unwrap_or_default(), i.name_any());
            let current = status::current_lb(i);
            if served.contains(&key) {
                ingresses.push((key.0, key.1, current));
            } else if !current.is_empty() {
                // Another class's now, or no class: ours to clear if it shows our address.
                released.push((key.0, key.1, current));
            }
        }
        registry.metrics().record_table(t.table.generation, routes, started.elapsed());
        tables.store(Arc::new(t.table));
        // burst_start is when the first event of this burst woke the loop.
        registry.metrics().change_to_serving.observe(burst_start.elapsed().as_secs_f64());
        ready.set(true);
        tracing::info!(
            generation,
            routes,
            problems = t.problems.len(),
            build_ms = started.elapsed().as_secs_f64() * 1000.0,
            "route table published"
        );
        feed.send_replace(Arc::new(Feed {
            problems: t.problems,
            groups: t.groups,
            ingresses,
            released,
            invalid_groups,
        }));
        changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;

    #[test]
    fn watch_retries_back_off_to_five_seconds_and_reset() {
        let mut b = WatchBackoff::default();
        let delays: Vec<u64> = (0..6).filter_map(|_| b.next()).map(|d| d.as_millis() as u64).collect();
        assert_eq!(delays, vec![500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(500)));
    }
}
