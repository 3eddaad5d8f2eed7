//! `quic-ingress controller`: watches the cluster through reflectors, rebuilds the route
//! table when something it is built from changes (at once; changes that come while a build
//! runs are folded into one next build; status writes do not count), off the data plane's
//! worker threads, and hot-swaps it into the data plane running in the same process.
//! Status is written by the elected leader only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::delta::{self, ByName, HostClaims, Previous};
use super::status::{self, Feed, Publish};
use super::translate::{LastGoodCerts, Settings, translate};
use super::watches::{self, Board, Stores};
use super::world::World;
use crate::proxy::{DataPlane, ListenError, ListenOptions};
use crate::routes::CertSet;
use crate::routes::RouteTable;
use crate::telemetry::admin::{self, Readiness};
use crate::telemetry::metrics::Metrics;
use crate::tls::{self, TlsError};
use crate::upstream::{EndpointRegistry, HealthChecker};

/// How long the first table waits for a watch that fails (a CRD not installed, a kind
/// RBAC forbids) before it is built without that kind; a transient error is usually over
/// by the first retry.
const INITIAL_LIST_GRACE: Duration = Duration::from_secs(3);

/// Command-line settings of the controller.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub kubeconfig: Option<PathBuf>,
    pub ingress_class: String,
    /// `--namespace`: the namespaces watched (every one by default).
    pub scope: watches::Scope,
    /// `--lease-namespace`: where the leader-election Lease lives.
    pub lease_namespace: Option<String>,
    pub publish: Publish,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub alt_svc_port: Option<u16>,
    /// The port clients reach the plaintext listener on, if there is one.
    pub http_service_port: Option<u16>,
    /// `--gateway-http-over-h3`: Gateway HTTP listeners' routes on the TLS listeners too.
    pub gateway_http_over_h3: bool,
    /// `--gateway-controller-name`.
    pub gateway_controller_name: String,
    /// `--gateway-addresses per-gateway` with `--gateway-port-range`; `None`: shared.
    pub gateway_port_range: Option<super::gateway::addresses::PortRange>,
    pub default_cert: Option<(PathBuf, PathBuf)>,
    pub drain_timeout: Duration,
    /// Serve safe methods from 0-RTT early data.
    pub early_data: bool,
    /// QUIC congestion control.
    pub congestion: crate::config::CongestionControl,
    /// `namespace/name` of a Secret with session-ticket keys shared by the replicas.
    pub ticket_key_secret: Option<(String, String)>,
    /// `--host-ownership`.
    pub host_ownership: super::ownership::HostOwnership,
    /// Where static BackendGroup URLs may point (`--service-cidr`, `--pod-cidr`,
    /// `--allow-backend-cidr`).
    pub backend_policy: super::policy::BackendPolicy,
    /// Proxies in front whose forwarding headers are believed.
    pub trusted_proxies: crate::net::TrustedProxies,
    /// Serve `/debug/routes` to any peer, not only loopback ones.
    pub debug_routes_from_anywhere: bool,
    /// The leader keeps the ticket-key Secret (creates it, rotates it) on this schedule.
    pub ticket_key_rotation: Option<super::ticket_keys::Rotation>,
    /// Seconds clients may keep a shared-key ticket (`--ticket-lifetime`).
    pub ticket_lifetime: u32,
    /// What one client may take of the data plane (the `--limit-*` flags).
    pub limits: crate::config::Limits,
    /// `--http-listen` and `--proxy-protocol`.
    pub tcp: crate::proxy::TcpOptions,
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
    #[error("cannot start the route table builder thread: {0}")]
    Builder(std::io::Error),
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
        crate::proxy::debug_routes(&tables, opts.debug_routes_from_anywhere),
        ready.clone(),
        metrics.clone(),
        stop_admin.clone(),
    )
    .await
    .map_err(|source| ControllerError::Admin { addr: opts.admin_listen, source })?;
    let resumption = match &opts.ticket_key_secret {
        Some((namespace, name)) => {
            let ticketer = tls::SharedTicketer::ephemeral().map_err(|e| TlsError::Key(e.to_string()))?;
            let ticketer = Arc::new(ticketer.with_lifetime(opts.ticket_lifetime));
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
        trusted_proxies: opts.trusted_proxies.clone(),
        limits: opts.limits.clone(),
        tcp: opts.tcp.clone(),
    };
    let plane = DataPlane::start(&listen, tables.clone(), metrics.clone()).await?;

    let changed = Arc::new(Notify::new());
    let board = Board::new(metrics.clone());
    let stores = Stores::start(&client, &opts.scope, &opts.gateway_controller_name, changed.clone(), &board);
    let published = status::follow_published(&client, &opts.publish, &board);
    tokio::spawn(report_watches(board.clone(), ready.clone(), metrics.clone()));
    let (feed_tx, feed_rx) = watch::channel(Arc::new(Feed::default()));
    let (transitions_tx, transitions_rx) = mpsc::unbounded_channel();
    let settings = Settings {
        ingress_class: opts.ingress_class.clone(),
        default_cert: Some(default_cert),
        host_ownership: opts.host_ownership,
        watch_namespaces: opts.scope.namespaces(),
        backend_policy: opts.backend_policy.clone(),
        gateway_ports: super::gateway::ServedPorts {
            https: Some(opts.alt_svc_port.unwrap_or(opts.listen.port())),
            http: opts.http_service_port,
        },
        gateway_http_over_h3: opts.gateway_http_over_h3,
        gateway_controller_name: opts.gateway_controller_name.clone(),
        gateway_port_range: opts.gateway_port_range,
    };

    // Leader election and status.
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id()));
    let lease_ns = lease_namespace(
        opts.lease_namespace.as_deref(),
        &opts.scope,
        std::env::var("POD_NAMESPACE").ok(),
        client.default_namespace(),
    );
    let (leading_tx, leading_rx) = watch::channel(false);
    let lease_name = format!("quic-ingress-{}", opts.ingress_class);
    tokio::spawn(super::leader::run(
        Api::<Lease>::namespaced(client.clone(), &lease_ns),
        lease_name,
        identity.clone(),
        leading_tx,
    ));
    if let (Some((namespace, name)), Some(rotation)) = (&opts.ticket_key_secret, opts.ticket_key_rotation) {
        tokio::spawn(super::ticket_keys::rotate(
            client.clone(),
            namespace.clone(),
            name.clone(),
            rotation,
            leading_rx.clone(),
        ));
    }
    let reporter = Reporter { controller: "quic-ingress".into(), instance: Some(identity) };
    let gateway_addresses = match (&opts.gateway_port_range, &opts.publish) {
        (Some(_), Publish::Service(namespace, _)) => {
            Some(super::gateway::services::start(super::gateway::services::Keeper {
                client: client.clone(),
                namespace: namespace.clone(),
                instance: opts.ingress_class.clone(),
                served: settings.gateway_ports,
                template: published.service.clone(),
                feed: feed_rx.clone(),
                leading: leading_rx.clone(),
            }))
        }
        _ => None,
    };
    let sources = status::Sources {
        published: published.addresses,
        ingresses: stores.ingresses.clone(),
        gateway: stores.gateway.clone(),
        gateway_addresses,
    };
    tokio::spawn(status::run(client.clone(), reporter, sources, leading_rx, feed_rx, transitions_rx));

    let registry = Arc::new(EndpointRegistry::new(metrics, Some(transitions_tx)));
    let builder = BuildThread::start().map_err(ControllerError::Builder)?;
    let publisher = Publisher { tables, scoped: plane.scoped_listeners() };
    let rebuild = tokio::spawn(rebuild_loop(
        stores,
        board,
        changed,
        settings,
        publisher,
        ready.clone(),
        feed_tx,
        registry,
        builder,
    ));

    crate::serve::wait_for_termination().await.map_err(|e| ControllerError::Signals(e.to_string()))?;
    ready.set(false);
    rebuild.abort();
    tracing::info!(timeout = ?opts.drain_timeout, "shutting down: draining in-flight requests");
    plane.shutdown(opts.drain_timeout).await;
    stop_admin.cancel();
    let _ = std::fs::remove_dir_all(tls::dev_cert_dir());
    Ok(())
}

/// Where the Lease goes: `--lease-namespace`; else the one namespace watched (where it
/// always was with a single `--namespace`, so an upgrade elects no second leader); else
/// the pod's own namespace; else the kubeconfig's.
fn lease_namespace(flag: Option<&str>, scope: &watches::Scope, pod: Option<String>, default: &str) -> String {
    let only = match scope {
        watches::Scope::Namespaces(set) if set.len() == 1 => set.first().cloned(),
        _ => None,
    };
    flag.map(str::to_string).or(only).or(pod).unwrap_or_else(|| default.to_string())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "quic-ingress".into())
}

/// Keeps `/readyz`, the `watch_failing` gauge and the log in step with the watch board:
/// the log says when a watch starts failing (and what is served meanwhile) and when it
/// works again.
async fn report_watches(board: Board, ready: Arc<Readiness>, metrics: Arc<Metrics>) {
    let mut rx = board.subscribe();
    let mut failing: std::collections::BTreeSet<&'static str> = Default::default();
    loop {
        let now = Instant::now();
        let statuses = rx.borrow_and_update().clone();
        for (kind, s) in &statuses {
            let error = s.failing(now);
            metrics.watch_failing.with_label_values(&[kind]).set(i64::from(error.is_some()));
            match error {
                Some(error) if failing.insert(kind) => {
                    let serving = if s.listed { "the last objects seen" } else { "without them" };
                    tracing::warn!(%kind, %error, "watch failing; serving {serving} and retrying");
                }
                None if failing.remove(kind) => tracing::info!(%kind, "watch works again"),
                _ => {}
            }
        }
        ready.set_degraded(watches::failing_report(&statuses, now));
        let decay = watches::next_decay(&statuses, now);
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            () = sleep_until_or_forever(decay) => {}
        }
    }
}

async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Waits until the first table can be built (see [`watches::initial_lists_settled`]).
async fn wait_for_initial_lists(board: &Board) {
    let mut rx = board.subscribe();
    let grace_ends = tokio::time::Instant::now() + INITIAL_LIST_GRACE;
    loop {
        let grace_over = tokio::time::Instant::now() >= grace_ends;
        if watches::initial_lists_settled(&rx.borrow_and_update(), grace_over) {
            return;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            () = tokio::time::sleep_until(grace_ends), if !grace_over => {}
        }
    }
}

/// One table build: translation plus what status needs from it. Pure CPU work on owned
/// data, so it runs on the builder thread and a large build never holds a data-plane worker.
pub struct Built {
    pub table: RouteTable,
    /// Its problems are `feed.problems`.
    pub feed: Feed,
    pub claims: HostClaims,
    /// What the build read, for the next one to start from.
    pub world: World,
    pub last_good: LastGoodCerts,
    pub build: Duration,
    /// `Some(n)`: an update of the previous table for `n` changed Ingress versions.
    pub incremental: Option<usize>,
    /// What the update looked its Ingresses' backends up in, for the next one.
    pub by_name: Option<Arc<ByName>>,
}

impl Built {
    /// Where the next build starts from, and the certificate memory it takes.
    pub fn into_previous(self) -> (Previous, LastGoodCerts) {
        let Built { table, feed, claims, world, last_good, by_name, .. } = self;
        let by_name = by_name.map(std::sync::OnceLock::from).unwrap_or_default();
        (Previous { world, table: Arc::new(table), feed: Arc::new(feed), claims, by_name }, last_good)
    }
}

/// One build of `world`, as the controller makes it: an update of `previous` where the
/// change allows one (`delta`), else a full translation.
pub fn build(
    world: World,
    settings: &Settings,
    registry: &EndpointRegistry,
    mut last_good: LastGoodCerts,
    previous: Option<&mut Previous>,
    generation: u64,
) -> Built {
    let started = Instant::now();
    let update = previous.and_then(|p| delta::update(p, &world, settings, registry, &mut last_good, generation));
    if let Some(u) = update {
        return Built {
            table: u.table,
            feed: u.feed,
            claims: u.claims,
            world,
            last_good,
            build: started.elapsed(),
            incremental: Some(u.changed),
            by_name: Some(u.by_name),
        };
    }
    let mut t = translate(&world, settings, registry, &mut last_good, generation);
    let invalid_groups = std::mem::take(&mut t.refused_groups);
    let served = std::mem::take(&mut t.served_ingresses);
    let serving: std::collections::HashSet<(&str, &str)> =
        served.iter().map(|(n, m)| (n.as_str(), m.as_str())).collect();
    let unserved = world
        .ingresses
        .iter()
        .filter(|i| !serving.contains(&(i.meta.namespace(), i.meta.name())))
        .map(|i| (i.meta.namespace().to_string(), i.meta.name().to_string()))
        .collect();
    drop(serving);
    let feed = Feed {
        problems: std::mem::take(&mut t.problems),
        groups: std::mem::take(&mut t.groups),
        served,
        unserved,
        invalid_groups,
        gateway: Arc::new(std::mem::take(&mut t.gateway)),
    };
    Built {
        table: t.table,
        feed,
        claims: t.claims,
        world,
        last_good,
        build: started.elapsed(),
        incremental: None,
        by_name: None,
    }
}

/// How long the builder thread is idle before it returns freed pages: builds in a burst of
/// changes reuse them (faulting fresh pages in cost a build about a third more CPU).
const PURGE_AFTER: Duration = Duration::from_secs(1);

type Job = Box<dyn FnOnce() + Send>;

/// The builder's next job; `None` once the sender is gone. Idle for [`PURGE_AFTER`], it
/// first returns the pages the last builds freed (old tables, the worlds they were built
/// from): mimalloc purges a thread's freed pages only when that thread next allocates,
/// and this one sleeps until the next change. At 100,000 endpoints a replica kept about
/// 200 MiB that way (bench/README.md).
fn next_job(queue: &std::sync::mpsc::Receiver<Job>) -> Option<Job> {
    match queue.recv_timeout(PURGE_AFTER) {
        Ok(job) => Some(job),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            heap_purge::purge();
            queue.recv().ok()
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
    }
}

/// The one thread table builds run on: off the data plane's workers, and always the same
/// thread, so every table is allocated from (and freed to) one malloc arena. On the
/// blocking pool each build (and each drop of an old table) could land on another thread
/// and arena, and the replica kept several tables' worth of freed memory.
struct BuildThread {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl BuildThread {
    fn start() -> std::io::Result<Self> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new().name("route-table".into()).spawn(move || {
            while let Some(job) = next_job(&queue) {
                // A panic is a bug in one build: the thread lives on for the next one, and
                // the caller sees the job's result dropped.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        })?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the thread; `None` if it panicked.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs.send(Box::new(move || drop(tx.send(f())))).ok()?;
        rx.await.ok()
    }

    /// Frees `value` on the thread, where it was most likely allocated.
    fn free<T: Send + 'static>(&self, value: T) {
        let _ = self.jobs.send(Box::new(move || drop(value)));
    }
}

/// When to build: at once the first time, then on the first change after the previous
/// build ended, never waiting for a quiet period. Any number of changes while a build runs
/// wake exactly one next build (a `Notify` holds a single permit).
struct Wakes<'a> {
    changed: &'a Notify,
    started: bool,
}

/// What started a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// The first table.
    Start,
    /// A change while nothing was being built: it came a moment ago.
    Idle,
    /// A change while the previous build ran: it came after that build read the stores.
    DuringBuild,
}

impl<'a> Wakes<'a> {
    fn new(changed: &'a Notify) -> Self {
        Self { changed, started: false }
    }

    /// Waits for the next build; the caller reads the stores right after.
    async fn next(&mut self) -> Wake {
        let wake = if std::mem::replace(&mut self.started, true) {
            let waiting = Instant::now();
            self.changed.notified().await;
            // A permit left by a change during the build answers at once.
            if waiting.elapsed() < Duration::from_millis(1) { Wake::DuringBuild } else { Wake::Idle }
        } else {
            Wake::Start
        };
        // What the build about to start reads is already in the stores (a watch writes its
        // store before it notifies), so a change notified before now needs no build of its
        // own: drop its permit.
        let _ = self.changed.notified().now_or_never();
        wake
    }
}

/// Where tables go: the data plane's tables, and its scoped ports' listeners.
struct Publisher {
    tables: crate::proxy::Tables,
    scoped: crate::proxy::ScopedListeners,
}

#[allow(clippy::too_many_arguments)]
async fn rebuild_loop(
    stores: Stores,
    board: Board,
    changed: Arc<Notify>,
    settings: Settings,
    publisher: Publisher,
    ready: Arc<Readiness>,
    feed: watch::Sender<Arc<Feed>>,
    registry: Arc<EndpointRegistry>,
    builder: BuildThread,
) {
    let settings = Arc::new(settings);
    let mut last_good = LastGoodCerts::default();
    let mut checker = HealthChecker::new(registry.metrics().clone());
    let mut generation = 0u64;
    tracing::info!("waiting for the initial list of watched objects");
    wait_for_initial_lists(&board).await;
    let mut wakes = Wakes::new(&changed);
    // When the previous build read the stores: the earliest a change it missed came.
    let mut last_snapshot = Instant::now();
    let mut previous: Option<Previous> = None;
    loop {
        let wake = wakes.next().await;
        let woke = Instant::now();
        let change_at = if wake == Wake::DuringBuild { last_snapshot } else { woke };
        last_snapshot = woke;
        generation += 1;
        let world = stores.snapshot();
        let (settings_b, registry_b) = (settings.clone(), registry.clone());
        let kept = std::mem::take(&mut last_good);
        let mut prev = previous.take();
        let job = builder.run(move || {
            let built = build(world, &settings_b, &registry_b, kept, prev.as_mut(), generation);
            // The previous build's world and table go here, off the data plane's workers.
            drop(prev);
            built
        });
        let Some(built) = job.await else {
            // A panic in translation is a bug; the last table keeps serving, and the
            // next change tries again from empty certificate memory and a full build.
            tracing::error!(generation, "route table build failed; the previous table stays");
            continue;
        };
        let (build, incremental) = (built.build, built.incremental);
        let (next, kept) = built.into_previous();
        last_good = kept;
        for p in &next.feed.problems {
            tracing::info!(kind = p.kind, namespace = %p.namespace, name = %p.name, reason = p.reason, error = %p.message, "skipping part of an object");
        }
        let table = &next.table;
        checker.sync(table.groups());
        let routes = table.route_count();
        let problems = next.feed.problems.len();
        let metrics = registry.metrics();
        metrics.record_table(table.generation, routes, build);
        metrics.route_table_rebuilds.inc();
        let old_table = publisher.tables.swap(table.clone());
        // After the swap: a new port's first request finds its routes.
        publisher.scoped.sync(table.scoped_ports());
        metrics.change_to_serving.observe(change_at.elapsed().as_secs_f64());
        ready.set(true);
        let build_ms = build.as_secs_f64() * 1000.0;
        match incremental {
            Some(changed) => tracing::info!(generation, routes, problems, build_ms, changed, "route table updated"),
            None => tracing::info!(generation, routes, problems, build_ms, "route table published"),
        }
        let old_feed = feed.send_replace(next.feed.clone());
        previous = Some(next);
        // Freeing a large table (and the feed built with it) is work too: not on a
        // data-plane worker.
        builder.free((old_table, old_feed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use watches::Scope;

    #[test]
    fn the_lease_stays_in_a_single_watched_namespace_unless_told_otherwise() {
        let one = Scope::from_names(["team-a"]).unwrap();
        let two = Scope::from_names(["team-a", "team-b"]).unwrap();
        let pod = || Some("ingress".to_string());
        assert_eq!(lease_namespace(None, &one, pod(), "default"), "team-a", "as with --namespace before");
        assert_eq!(lease_namespace(Some("ingress"), &one, pod(), "default"), "ingress");
        assert_eq!(lease_namespace(None, &two, pod(), "default"), "ingress", "several: the pod's namespace");
        assert_eq!(lease_namespace(None, &Scope::Cluster, None, "default"), "default");
    }

    #[test]
    fn the_first_build_starts_at_once_and_changes_during_a_build_make_exactly_one_more() {
        let changed = Notify::new();
        let mut wakes = Wakes::new(&changed);
        assert_eq!(wakes.next().now_or_never(), Some(Wake::Start), "no waiting for the first table");
        // Changes while the first build runs (the initial list's included).
        for _ in 0..5 {
            changed.notify_one();
        }
        assert_eq!(wakes.next().now_or_never(), Some(Wake::DuringBuild), "the next build starts at once");
        assert_eq!(wakes.next().now_or_never(), None, "five changes, one build");
        changed.notify_one();
        assert!(wakes.next().now_or_never().is_some(), "a later change builds again");
    }

    #[test]
    fn a_change_the_next_build_will_read_anyway_makes_no_build_of_its_own() {
        let changed = Notify::new();
        let mut wakes = Wakes::new(&changed);
        // The initial list notified before the first build read the stores.
        changed.notify_one();
        assert_eq!(wakes.next().now_or_never(), Some(Wake::Start));
        assert_eq!(wakes.next().now_or_never(), None, "the first build saw that change");
    }
}
