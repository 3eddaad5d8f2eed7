//! The controller's watches: one watch per kind (and per watched namespace, when the
//! controller is scoped to some) that wakes the rebuild loop only when something
//! translation reads has changed (not on status writes, the leader's own included), and a board of which watches work, so that one failing watch (a CRD not
//! installed, a kind RBAC forbids) neither stops the others nor goes unnoticed.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};

use super::cache::{Cache, Named};
use super::crd::BackendGroup;
use super::records::{IngressRecord, ServiceRecord, SliceRecord};
use crate::telemetry::metrics::Metrics;

/// A watch that has listed once counts as failing while its errors are this recent: kube's
/// watcher does not say when a retried watch works again, but a failing one errs at least
/// every `WATCH_RETRY_MAX`.
const FAILING_WINDOW: Duration = Duration::from_secs(15);

/// Watch retry delays: 0.5 s doubling up to 5 s (kube's default goes to 30 s), so watches
/// resume within seconds of the API server coming back, and a CRD installed later is seen
/// within 5 s. Reset after each success.
pub struct WatchBackoff {
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

// === Relevance ===

/// The part of an object that translation (or status) reads, as a hash: two versions with
/// the same fingerprint build the same table. Status, resourceVersion, managedFields and
/// unrelated labels are left out, so status writes wake nothing.
pub trait Relevant {
    fn fingerprint(&self) -> u64;

    /// Drops fields of this kind that neither translation nor status reads, before the
    /// object is stored (see [`trim`]).
    fn trim_unread(&mut self) {}
}

/// The annotation `kubectl apply` (client side) keeps a whole copy of the object in.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Makes a watched object smaller before its cache stores it: managedFields (a tree of
/// every field each writer set, often larger than the spec), `kubectl apply`'s copy of the
/// object, and what [`Relevant::trim_unread`] drops. Stores hold every object of every
/// watched kind for the life of the process, so this is most of a replica's memory at
/// scale. Change detection sees the trimmed object, so what is trimmed must never matter.
pub fn trim<K: Resource + Relevant + Clone>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    // Nothing reads who owns an object or what holds up its deletion.
    meta.owner_references = None;
    meta.finalizers = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
    obj.trim_unread();
    // A clone holds exactly what it needs: deserialized lists keep the spare capacity they
    // grew by, and what was trimmed leaves holes. kube's reflector stored a clone too; this
    // is the same one copy per event.
    *obj = obj.clone();
}

/// Hashes the JSON form of `value` without building it in memory.
pub(crate) fn hash_json<T: Serialize>(value: &T, resource_version: Option<&str>) -> u64 {
    struct Sink(std::collections::hash_map::DefaultHasher);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.write(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut sink = Sink(std::collections::hash_map::DefaultHasher::new());
    if serde_json::to_writer(&mut sink, value).is_err() {
        // Cannot happen for API types; if it did, every new version counts as a change.
        sink.0.write(resource_version.map(str::as_bytes).unwrap_or_default());
    }
    sink.0.finish()
}

impl Relevant for IngressClass {
    /// The default-class annotation matters and does not bump `generation`. Classes are few
    /// and small, so the spec itself is compared.
    fn fingerprint(&self) -> u64 {
        let m = &self.metadata;
        hash_json(&(&m.uid, &m.annotations, &self.spec), m.resource_version.as_deref())
    }
}

impl Relevant for BackendGroup {
    /// Status writes (every 30 s per group, by the leader) leave `generation` alone.
    fn fingerprint(&self) -> u64 {
        let m = &self.metadata;
        let spec = m.generation.is_none().then_some(&self.spec);
        hash_json(&(&m.uid, m.generation, &m.annotations, spec), m.resource_version.as_deref())
    }
}

/// What a cache keeps of a watched object of kind `K`: the object itself, trimmed (see
/// [`trim`]), or a lean record of it (`records.rs`).
pub trait Keep<K> {
    fn keep(obj: K) -> Self;
}

impl<K: Resource + Relevant + Clone> Keep<K> for K {
    fn keep(mut obj: K) -> K {
        trim(&mut obj);
        obj
    }
}

impl Keep<Ingress> for IngressRecord {
    fn keep(obj: Ingress) -> Self {
        obj.into()
    }
}

impl Keep<Service> for ServiceRecord {
    fn keep(obj: Service) -> Self {
        obj.into()
    }
}

impl Keep<EndpointSlice> for SliceRecord {
    fn keep(obj: EndpointSlice) -> Self {
        obj.into()
    }
}

/// The event with its object kept as the cache keeps it.
fn kept<K, S: Keep<K>>(event: watcher::Event<K>) -> watcher::Event<S> {
    use watcher::Event::*;
    match event {
        Apply(obj) => Apply(S::keep(obj)),
        Delete(obj) => Delete(S::keep(obj)),
        Init => Init,
        InitApply(obj) => InitApply(S::keep(obj)),
        InitDone => InitDone,
    }
}

impl Relevant for Secret {
    fn fingerprint(&self) -> u64 {
        let m = &self.metadata;
        hash_json(&(&m.uid, &self.type_, &self.data, &self.string_data), m.resource_version.as_deref())
    }
}

// === The board ===

/// How one watch is doing.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchStatus {
    /// Whether the route table is built from this kind (the published Service is not).
    pub feeds_table: bool,
    /// An initial list has completed at least once.
    pub listed: bool,
    /// The last error since the last event, and when.
    pub error: Option<(Instant, String)>,
}

impl WatchStatus {
    /// The error that makes this watch count as failing now, if any.
    pub fn failing(&self, now: Instant) -> Option<&str> {
        match &self.error {
            Some((at, e)) if !self.listed || now.saturating_duration_since(*at) < FAILING_WINDOW => Some(e),
            _ => None,
        }
    }

    /// When a failing watch that has listed stops counting as failing if no error comes.
    fn failing_until(&self) -> Option<Instant> {
        match &self.error {
            Some((at, _)) if self.listed => Some(*at + FAILING_WINDOW),
            _ => None,
        }
    }
}

/// Every watch's status by kind, shared by the watch tasks, the rebuild loop and the
/// readiness reporter, with the metrics the watches record into.
#[derive(Clone)]
pub struct Board {
    statuses: Arc<watch::Sender<BTreeMap<&'static str, WatchStatus>>>,
    metrics: Arc<Metrics>,
}

impl Board {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { statuses: Arc::new(watch::channel(BTreeMap::new()).0), metrics }
    }

    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<&'static str, WatchStatus>> {
        self.statuses.subscribe()
    }

    pub fn register(&self, kind: &'static str, feeds_table: bool) {
        self.statuses.send_modify(|m| {
            m.insert(kind, WatchStatus { feeds_table, listed: false, error: None });
        });
        self.metrics.watch_failing.with_label_values(&[kind]).set(0);
    }

    /// An object or the end of a list arrived: the watch works.
    pub fn ok(&self, kind: &'static str, listed: bool) {
        self.statuses.send_if_modified(|m| match m.get_mut(kind) {
            Some(s) if s.error.is_some() || (listed && !s.listed) => {
                s.error = None;
                s.listed |= listed;
                true
            }
            _ => false,
        });
    }

    pub fn failed(&self, kind: &'static str, error: String) {
        self.metrics.watch_errors.with_label_values(&[kind]).inc();
        self.statuses.send_modify(|m| {
            if let Some(s) = m.get_mut(kind) {
                s.error = Some((Instant::now(), error));
            }
        });
    }

    /// The health of a kind watched in parts (one watch per namespace), as folded by
    /// [`PartsHealth`]; subscribers wake only when it changed.
    fn set(&self, kind: &'static str, listed: bool, error: Option<(Instant, String)>) {
        self.statuses.send_if_modified(|m| match m.get_mut(kind) {
            Some(s) if s.listed != listed || s.error != error => {
                s.listed = listed;
                s.error = error;
                true
            }
            _ => false,
        });
    }
}

/// Whether the first table can be built: every watch the table needs has listed, or, once
/// `grace_over`, has listed or failed (a missing CRD must not hold up the other kinds),
/// with at least one listed (with none, the API server is unreachable and nothing is known).
pub fn initial_lists_settled(statuses: &BTreeMap<&'static str, WatchStatus>, grace_over: bool) -> bool {
    let table: Vec<&WatchStatus> = statuses.values().filter(|s| s.feeds_table).collect();
    table.iter().all(|s| s.listed)
        || (grace_over && table.iter().all(|s| s.listed || s.error.is_some()) && table.iter().any(|s| s.listed))
}

/// One line per failing watch, for `/readyz` and the log.
pub fn failing_report(statuses: &BTreeMap<&'static str, WatchStatus>, now: Instant) -> Vec<String> {
    statuses
        .iter()
        .filter_map(|(kind, s)| {
            let error = s.failing(now)?;
            let effect = match (s.feeds_table, s.listed) {
                (true, false) => format!("routes are built without {kind} objects"),
                (true, true) => format!("serving the last {kind} objects seen"),
                (false, _) => "Ingress status is not updated".to_string(),
            };
            Some(format!("{kind} watch failing ({effect}): {error}"))
        })
        .collect()
}

/// When the report can next change without an event: the earliest decay of a failing watch.
pub fn next_decay(statuses: &BTreeMap<&'static str, WatchStatus>, now: Instant) -> Option<Instant> {
    statuses.values().filter_map(WatchStatus::failing_until).filter(|t| *t > now).min()
}

// === Scope ===

/// Where the namespaced kinds are watched: every namespace (one cluster-wide watch per
/// kind, which needs cluster-wide RBAC), or the namespaces listed (one watch per kind and
/// namespace, merged into one store, since the API has no multi-namespace list: RBAC
/// then needs Roles in those namespaces only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    #[default]
    Cluster,
    Namespaces(BTreeSet<String>),
}

/// Why `--namespace` values were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScopeError {
    #[error("--namespace: an empty namespace name (in a comma list?)")]
    Empty,
    #[error("--namespace {0:?}: not a namespace name (lower-case letters, digits and '-', at most 63)")]
    Invalid(String),
}

impl Scope {
    /// The scope of `--namespace` values (repeated or comma-separated): none is every
    /// namespace; duplicates collapse.
    pub fn from_names<I, S>(names: I) -> Result<Scope, ScopeError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = BTreeSet::new();
        for name in names {
            let name = name.as_ref().trim();
            if name.is_empty() {
                return Err(ScopeError::Empty);
            }
            if !is_dns_label(name) {
                return Err(ScopeError::Invalid(name.to_string()));
            }
            set.insert(name.to_string());
        }
        Ok(if set.is_empty() { Scope::Cluster } else { Scope::Namespaces(set) })
    }

    /// The namespaces watched; empty for the whole cluster.
    pub fn namespaces(&self) -> BTreeSet<String> {
        match self {
            Scope::Cluster => BTreeSet::new(),
            Scope::Namespaces(set) => set.clone(),
        }
    }

    /// One API per watch: the cluster-wide one, or one per namespace.
    fn apis<K>(&self, client: &kube::Client) -> Vec<(Option<String>, Api<K>)>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Scope::Cluster => vec![(None, Api::all(client.clone()))],
            Scope::Namespaces(set) => {
                set.iter().map(|ns| (Some(ns.clone()), Api::namespaced(client.clone(), ns))).collect()
            }
        }
    }
}

/// RFC 1123 label, as namespace names are.
fn is_dns_label(s: &str) -> bool {
    s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The caches of one kind: one per watch (namespace), read as one.
pub struct ScopedStore<K> {
    parts: Vec<(Option<String>, Cache<K>)>,
}

impl<K> Clone for ScopedStore<K> {
    fn clone(&self) -> Self {
        Self { parts: self.parts.clone() }
    }
}

impl<K: Named> ScopedStore<K> {
    /// Every object of every watch.
    pub fn state(&self) -> Vec<Arc<K>> {
        match self.parts.as_slice() {
            [(_, one)] => one.state(),
            parts => parts.iter().flat_map(|(_, s)| s.state()).collect(),
        }
    }

    /// The object `namespace`/`name`, from the cache of its namespace (or the cluster-wide one).
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.parts
            .iter()
            .filter(|(ns, _)| ns.as_deref().is_none_or(|ns| ns == namespace))
            .find_map(|(_, s)| s.get(namespace, name))
    }
}

/// The health of one kind watched in several namespaces, folded into the one status the
/// board keeps per kind: listed once every namespace has listed; failing with the latest
/// error of any namespace whose last word was an error, naming that namespace. With one
/// watch this is exactly that watch's health.
#[derive(Debug, Clone, PartialEq)]
struct PartsHealth {
    parts: Vec<PartHealth>,
}

/// One watch of a kind: its namespace (none: cluster-wide), whether it has listed, and its
/// last error since its last event.
#[derive(Debug, Clone, PartialEq)]
struct PartHealth {
    namespace: Option<String>,
    listed: bool,
    error: Option<(Instant, String)>,
}

impl PartsHealth {
    fn new(namespaces: impl IntoIterator<Item = Option<String>>) -> Self {
        Self {
            parts: namespaces
                .into_iter()
                .map(|namespace| PartHealth { namespace, listed: false, error: None })
                .collect(),
        }
    }

    /// An object or the end of a list arrived in watch `i`: it works.
    fn ok(&mut self, i: usize, listed: bool) {
        if let Some(part) = self.parts.get_mut(i) {
            part.listed |= listed;
            part.error = None;
        }
    }

    fn failed(&mut self, i: usize, at: Instant, error: String) {
        if let Some(part) = self.parts.get_mut(i) {
            part.error = Some((at, error));
        }
    }

    /// `(listed, error)` of the kind.
    fn status(&self) -> (bool, Option<(Instant, String)>) {
        let listed = self.parts.iter().all(|p| p.listed);
        let error = self
            .parts
            .iter()
            .filter_map(|p| p.error.as_ref().map(|(at, e)| (&p.namespace, *at, e)))
            .max_by_key(|(_, at, _)| *at)
            .map(|(ns, at, e)| match ns {
                Some(ns) => (at, format!("namespace {ns}: {e}")),
                None => (at, e.clone()),
            });
        (listed, error)
    }
}

// === Watch tasks ===

/// Starts a watch of `K` into a [`Cache`]; relevant changes (per [`Cache::apply`]) wake
/// `changed`, and the watch's health goes to `board` under `kind`. The watcher retries with
/// backoff forever, so a lost API server is reconnected to and re-listed when it returns
/// (the cache keeps the last state it saw), and a kind not served yet (CRD missing) is
/// picked up once it is.
pub fn watch_kind<K>(
    kind: &'static str,
    api: Api<K>,
    cfg: watcher::Config,
    changed: Arc<Notify>,
    board: Board,
) -> Cache<K>
where
    K: Resource + Relevant + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    watch_kind_tracked(kind, api, cfg, changed, board, |_| true)
}

/// [`watch_kind`] for a kind of which only the objects `tracked` says wake a rebuild; the
/// cache holds them all.
pub fn watch_kind_tracked<K>(
    kind: &'static str,
    api: Api<K>,
    cfg: watcher::Config,
    changed: Arc<Notify>,
    board: Board,
    tracked: impl Fn(&K) -> bool + Send + 'static,
) -> Cache<K>
where
    K: Resource + Relevant + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let mut store = watch_parts::<K, K>(kind, vec![(None, api)], cfg, changed, board, tracked);
    match store.parts.pop() {
        Some((_, one)) => one,
        // watch_parts makes one cache per API given.
        None => Cache::default(),
    }
}

/// A namespaced kind the API serves, as the watches of [`watch_scoped`] need it.
pub trait NamespacedKind:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType: Default>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> NamespacedKind for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType: Default>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// [`watch_kind`] for a namespaced kind, over `scope`: one watch per namespace listed,
/// read as one store, with one health on the board.
pub fn watch_scoped<K: NamespacedKind + Relevant>(
    kind: &'static str,
    client: &kube::Client,
    scope: &Scope,
    cfg: watcher::Config,
    changed: Arc<Notify>,
    board: Board,
) -> ScopedStore<K> {
    watch_scoped_as::<K, K>(kind, client, scope, cfg, changed, board)
}

/// [`watch_scoped`] for a kind whose cache keeps `S`, a lean record of each object.
pub fn watch_scoped_as<K: NamespacedKind, S: Keep<K> + Named + Relevant + Send + Sync + 'static>(
    kind: &'static str,
    client: &kube::Client,
    scope: &Scope,
    cfg: watcher::Config,
    changed: Arc<Notify>,
    board: Board,
) -> ScopedStore<S> {
    watch_parts(kind, scope.apis(client), cfg, changed, board, |_: &S| true)
}

/// One task for every watch of `kind`: their events are merged (each watch keeps its own
/// cache, since each lists and relists on its own).
fn watch_parts<K, S>(
    kind: &'static str,
    apis: Vec<(Option<String>, Api<K>)>,
    cfg: watcher::Config,
    changed: Arc<Notify>,
    board: Board,
    tracked: impl Fn(&S) -> bool + Send + 'static,
) -> ScopedStore<S>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    S: Keep<K> + Named + Relevant + Send + Sync + 'static,
{
    board.register(kind, true);
    let mut parts = Vec::with_capacity(apis.len());
    let mut streams = Vec::with_capacity(apis.len());
    for (i, (namespace, api)) in apis.into_iter().enumerate() {
        let stream = watcher(api, cfg.clone())
            .backoff(WatchBackoff::default())
            .map(move |event| (i, event.map(kept::<K, S>)))
            .boxed();
        streams.push(stream);
        parts.push((namespace, Cache::default()));
    }
    let caches: Vec<Cache<S>> = parts.iter().map(|(_, c)| c.clone()).collect();
    let mut health = PartsHealth::new(parts.iter().map(|(ns, _)| ns.clone()));
    let metrics = &board.metrics;
    let (events, changes_seen, errors) = (
        metrics.watch_events.with_label_values(&[kind]),
        metrics.watch_changes.with_label_values(&[kind]),
        metrics.watch_errors.with_label_values(&[kind]),
    );
    tokio::spawn(async move {
        let mut merged = futures::stream::select_all(streams);
        while let Some((i, event)) = merged.next().await {
            match event {
                Ok(event) => {
                    events.inc();
                    // Init only says a list is about to be tried; it may still fail.
                    if !matches!(event, watcher::Event::Init) {
                        health.ok(i, matches!(event, watcher::Event::InitDone));
                    }
                    if caches.get(i).is_some_and(|c| c.apply(event, &tracked)) {
                        changes_seen.inc();
                        changed.notify_one();
                    }
                }
                Err(e) => {
                    tracing::debug!(%kind, error = %e, "watch failed; retrying");
                    errors.inc();
                    health.failed(i, Instant::now(), e.to_string());
                }
            }
            let (listed, error) = health.status();
            board.set(kind, listed, error);
        }
    });
    ScopedStore { parts }
}

/// The six kinds translation reads.
pub struct Stores {
    pub ingresses: ScopedStore<IngressRecord>,
    pub classes: Cache<IngressClass>,
    pub services: ScopedStore<ServiceRecord>,
    pub slices: ScopedStore<SliceRecord>,
    pub secrets: ScopedStore<Secret>,
    pub groups: ScopedStore<BackendGroup>,
    pub gateway: super::gateway::watches::GatewayStores,
}

impl Stores {
    /// `gateway_controller_name`: the GatewayClasses served are those naming it.
    pub fn start(
        client: &kube::Client,
        scope: &Scope,
        gateway_controller_name: &str,
        changed: Arc<Notify>,
        board: &Board,
    ) -> Self {
        let cfg = watcher::Config::default();
        let (c, b) = (&changed, board);
        Self {
            ingresses: watch_scoped_as::<Ingress, _>("Ingress", client, scope, cfg.clone(), c.clone(), b.clone()),
            // IngressClasses are cluster-scoped whatever the scope.
            classes: watch_kind("IngressClass", Api::all(client.clone()), cfg.clone(), c.clone(), b.clone()),
            services: watch_scoped_as::<Service, _>("Service", client, scope, cfg.clone(), c.clone(), b.clone()),
            slices: watch_scoped_as::<EndpointSlice, _>(
                "EndpointSlice",
                client,
                scope,
                cfg.clone(),
                c.clone(),
                b.clone(),
            ),
            // Only TLS Secrets matter; the field selector keeps the rest out of memory
            // (it filters what is sent, not what RBAC allows: the scope does that).
            secrets: watch_scoped(
                "Secret",
                client,
                scope,
                cfg.clone().fields("type=kubernetes.io/tls"),
                c.clone(),
                b.clone(),
            ),
            groups: watch_scoped("BackendGroup", client, scope, cfg, c.clone(), b.clone()),
            gateway: super::gateway::watches::GatewayStores::start(client, scope, gateway_controller_name, c, b),
        }
    }

    pub fn snapshot(&self) -> super::world::World {
        super::world::World {
            ingresses: self.ingresses.state(),
            classes: self.classes.state(),
            services: self.services.state(),
            slices: self.slices.state(),
            secrets: self.secrets.state(),
            groups: self.groups.state(),
            gateway: self.gateway.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::ResourceExt;
    use kube::runtime::utils::Backoff;
    use watcher::Event;

    #[test]
    fn watch_retries_back_off_to_five_seconds_and_reset() {
        let mut b = WatchBackoff::default();
        let delays: Vec<u64> = (0..6).filter_map(|_| b.next()).map(|d| d.as_millis() as u64).collect();
        assert_eq!(delays, vec![500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(500)));
    }

    fn ingress(name: &str, generation: i64) -> Ingress {
        Ingress {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                generation: Some(generation),
                resource_version: Some("1".into()),
                ..ObjectMeta::default()
            },
            ..Ingress::default()
        }
    }

    fn with_lb_status(mut i: Ingress, ip: &str, rv: &str) -> Ingress {
        use k8s_openapi::api::networking::v1::{IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus};
        i.metadata.resource_version = Some(rv.into());
        i.status = Some(IngressStatus {
            load_balancer: Some(IngressLoadBalancerStatus {
                ingress: Some(vec![IngressLoadBalancerIngress { ip: Some(ip.into()), ..Default::default() }]),
            }),
        });
        i
    }

    /// `event` seen by a cache of Ingresses, as the watch keeps them.
    fn observe(cache: &Cache<IngressRecord>, event: Event<Ingress>) -> bool {
        cache.observe(kept(event))
    }

    fn listed(cache: &Cache<IngressRecord>, objs: Vec<Ingress>) -> bool {
        let mut changed = observe(cache, Event::Init);
        for o in objs {
            changed |= observe(cache, Event::InitApply(o));
        }
        changed | observe(cache, Event::InitDone)
    }

    #[test]
    fn status_writes_change_nothing_and_spec_or_annotation_changes_do() {
        let c = Cache::default();
        assert!(listed(&c, vec![ingress("a", 1)]), "the first list builds the first table");
        assert!(!observe(&c, Event::Apply(with_lb_status(ingress("a", 1), "192.0.2.10", "2"))), "status write");
        assert!(observe(&c, Event::Apply(ingress("a", 2))), "spec change (generation)");
        let mut annotated = ingress("a", 2);
        annotated.metadata.annotations = Some([("kubernetes.io/ingress.class".into(), "other".into())].into());
        assert!(observe(&c, Event::Apply(annotated.clone())), "class annotation");
        assert!(!observe(&c, Event::Apply(annotated)), "the same again");
        assert!(observe(&c, Event::Apply(ingress("b", 1))), "a new object");
        assert!(observe(&c, Event::Delete(ingress("b", 1))), "a deletion");
        assert!(!observe(&c, Event::Delete(ingress("never-seen", 1))), "deleting what was never known");
    }

    #[test]
    fn a_relist_changes_something_only_when_the_set_differs() {
        let c = Cache::default();
        let mut a = ingress("a", 1);
        a.metadata.annotations = Some([("k".into(), "v".into())].into());
        assert!(listed(&c, vec![a.clone(), ingress("b", 1)]));
        // After a watch expired: the same objects, newer resourceVersions and status.
        assert!(!listed(&c, vec![with_lb_status(a.clone(), "192.0.2.10", "9"), ingress("b", 1)]));
        assert!(listed(&c, vec![a.clone()]), "b was deleted while the watch was down");
        assert!(listed(&c, vec![a, ingress("c", 1)]), "c was created while the watch was down");
        // Re-created under the same name: a new uid, a new object.
        let mut again = ingress("c", 1);
        again.metadata.uid = Some("uid-c-2".into());
        assert!(observe(&c, Event::Apply(again)));
    }

    #[test]
    fn the_default_class_annotation_of_an_ingress_class_is_a_change() {
        let class = |default: &str, rv: &str| IngressClass {
            metadata: ObjectMeta {
                name: Some("quic".into()),
                generation: Some(1),
                resource_version: Some(rv.into()),
                annotations: Some([("ingressclass.kubernetes.io/is-default-class".into(), default.into())].into()),
                ..ObjectMeta::default()
            },
            ..IngressClass::default()
        };
        assert_eq!(class("true", "1").fingerprint(), class("true", "2").fingerprint());
        assert_ne!(class("true", "1").fingerprint(), class("false", "2").fingerprint());
    }

    #[test]
    fn objects_without_generation_are_compared_by_spec() {
        use k8s_openapi::api::networking::v1::IngressSpec;
        let mut a = ingress("a", 1);
        a.metadata.generation = None;
        let mut b = a.clone();
        b.spec = Some(IngressSpec { ingress_class_name: Some("quic".into()), ..IngressSpec::default() });
        let print = |i: Ingress| IngressRecord::from(i).fingerprint();
        assert_ne!(print(a.clone()), print(b));
        assert_eq!(print(a.clone()), print(with_lb_status(a, "192.0.2.1", "7")));
    }

    #[test]
    fn secrets_are_compared_by_their_data() {
        let secret = |data: &[u8], rv: &str| Secret {
            metadata: ObjectMeta { name: Some("s".into()), resource_version: Some(rv.into()), ..ObjectMeta::default() },
            type_: Some("kubernetes.io/tls".into()),
            data: Some([("tls.crt".into(), k8s_openapi::ByteString(data.to_vec()))].into()),
            ..Secret::default()
        };
        assert_eq!(secret(b"x", "1").fingerprint(), secret(b"x", "2").fingerprint());
        assert_ne!(secret(b"x", "1").fingerprint(), secret(b"y", "1").fingerprint());
    }

    #[test]
    fn stored_objects_lose_managed_fields_and_the_last_applied_copy_but_keep_what_is_read() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
        let managed = Some(vec![ManagedFieldsEntry {
            manager: Some("kubectl".into()),
            fields_v1: Some(FieldsV1(serde_json::json!({"f:spec": {"f:rules": {}}}))),
            ..ManagedFieldsEntry::default()
        }]);
        let annotations = Some(
            [
                (LAST_APPLIED.to_string(), "{\"apiVersion\":\"networking.k8s.io/v1\"}".to_string()),
                ("kubernetes.io/ingress.class".to_string(), "quic".to_string()),
            ]
            .into(),
        );
        // Kept whole (trimmed), as Secrets and BackendGroups are.
        let mut secret = Secret::default();
        secret.metadata.managed_fields = managed.clone();
        secret.metadata.annotations = annotations.clone();
        trim(&mut secret);
        assert_eq!(secret.metadata.managed_fields, None);
        assert_eq!(secret.annotations().keys().collect::<Vec<_>>(), ["kubernetes.io/ingress.class"]);

        // Kept as a record, as Ingresses are.
        let mut i = with_lb_status(ingress("a", 3), "192.0.2.10", "7");
        i.metadata.managed_fields = managed;
        i.metadata.annotations = annotations;
        i.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        let kept = IngressRecord::keep(i.clone());
        assert_eq!(kept.annotation(LAST_APPLIED), None);
        assert_eq!(kept.annotation("kubernetes.io/ingress.class"), Some("quic"), "the class annotation is read");
        assert_eq!(&*kept.load_balancer, ["192.0.2.10".into()], "the status writer compares the address written");
        assert_eq!(kept.meta.version(), Some(("uid-a", "7")));
        assert_eq!((kept.spec, kept.generation), (i.spec.map(Into::into), i.metadata.generation));
    }

    fn status(feeds_table: bool, listed: bool, error: Option<Instant>) -> WatchStatus {
        WatchStatus { feeds_table, listed, error: error.map(|at| (at, "404 page not found".into())) }
    }

    #[test]
    fn the_first_table_waits_for_every_list_or_a_failure_after_the_grace() {
        let now = Instant::now();
        let mut m = BTreeMap::new();
        m.insert("Ingress", status(true, true, None));
        m.insert("BackendGroup", status(true, false, None));
        m.insert("PublishedService", status(false, false, None));
        assert!(!initial_lists_settled(&m, true), "BackendGroup has neither listed nor failed");
        m.insert("BackendGroup", status(true, false, Some(now)));
        assert!(!initial_lists_settled(&m, false), "a failure may be transient: wait for the grace");
        assert!(initial_lists_settled(&m, true), "the CRD is missing: build without BackendGroups");
        m.insert("Ingress", status(true, false, Some(now)));
        assert!(!initial_lists_settled(&m, true), "nothing listed: the API server is unreachable");
        m.insert("Ingress", status(true, true, None));
        m.insert("BackendGroup", status(true, true, None));
        assert!(initial_lists_settled(&m, false), "the published Service does not hold up the table");
    }

    #[test]
    fn failing_watches_are_reported_until_their_errors_stop() {
        let start = Instant::now();
        let mut m = BTreeMap::new();
        m.insert("BackendGroup", status(true, false, Some(start)));
        m.insert("Service", status(true, true, Some(start)));
        m.insert("Ingress", status(true, true, None));
        let report = failing_report(&m, start);
        assert_eq!(report.len(), 2, "{report:?}");
        assert!(
            report[0].starts_with("BackendGroup watch failing (routes are built without BackendGroup objects)")
                && report[0].ends_with("404 page not found"),
            "{report:?}"
        );
        assert!(report[1].contains("serving the last Service objects seen"), "{report:?}");
        // A watch that has listed recovers silently; its errors age out.
        assert_eq!(next_decay(&m, start), Some(start + FAILING_WINDOW));
        let later = start + FAILING_WINDOW;
        assert_eq!(failing_report(&m, later).len(), 1, "one that never listed is failing until it lists");
        assert_eq!(next_decay(&m, later), None);
    }

    #[test]
    fn namespaces_come_repeated_or_comma_separated_and_none_means_the_cluster() {
        assert_eq!(Scope::from_names(Vec::<String>::new()), Ok(Scope::Cluster));
        let scope = Scope::from_names(["team-b", "team-a", " team-b"]).unwrap();
        assert_eq!(scope, Scope::Namespaces(["team-a".to_string(), "team-b".to_string()].into()));
        assert_eq!(scope.namespaces().len(), 2, "duplicates collapse");
        assert_eq!(Scope::from_names(["a", ""]), Err(ScopeError::Empty), "`--namespace a,` is a mistake");
        for bad in ["Team-A", "team/a", "-a", &"a".repeat(64)] {
            assert_eq!(Scope::from_names([bad]), Err(ScopeError::Invalid(bad.to_string())), "{bad}");
        }
    }

    #[test]
    fn a_kind_watched_in_several_namespaces_has_listed_when_all_have_and_fails_when_one_does() {
        let t0 = Instant::now();
        let mut h = PartsHealth::new([Some("team-a".to_string()), Some("team-b".to_string())]);
        assert_eq!(h.status(), (false, None));
        h.ok(0, true);
        assert_eq!(h.status(), (false, None), "team-b has not listed yet");
        h.failed(1, t0, "403 Forbidden".into());
        let (listed, error) = h.status();
        assert!(!listed);
        assert_eq!(error, Some((t0, "namespace team-b: 403 Forbidden".to_string())), "names the namespace");
        h.ok(0, false);
        assert!(h.status().1.is_some(), "an event in team-a does not clear team-b's error");
        h.ok(1, true);
        assert_eq!(h.status(), (true, None));
        // A failure after listing keeps the kind listed (the store serves what it saw).
        h.failed(0, t0 + Duration::from_secs(1), "connection refused".into());
        assert_eq!(
            h.status(),
            (true, Some((t0 + Duration::from_secs(1), "namespace team-a: connection refused".into())))
        );
    }

    #[test]
    fn one_cluster_wide_watch_reports_its_own_error_unchanged() {
        let t0 = Instant::now();
        let mut h = PartsHealth::new([None]);
        h.failed(0, t0, "404 page not found".into());
        assert_eq!(h.status(), (false, Some((t0, "404 page not found".into()))));
        h.ok(0, true);
        assert_eq!(h.status(), (true, None));
    }

    #[test]
    fn a_scoped_store_reads_every_namespace_as_one() {
        let part = |ns: &str, names: &[&str]| {
            let cache = Cache::default();
            for name in names {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        namespace: Some(ns.into()),
                        ..ObjectMeta::default()
                    },
                    ..Secret::default()
                };
                cache.observe(Event::Apply(secret));
            }
            (Some(ns.to_string()), cache)
        };
        let store = ScopedStore { parts: vec![part("team-a", &["a1", "a2"]), part("team-b", &["b1"])] };
        let mut names: Vec<String> = store.state().iter().map(|s| s.name_any()).collect();
        names.sort();
        assert_eq!(names, ["a1", "a2", "b1"]);
        assert!(store.get("team-b", "b1").is_some());
        assert!(store.get("team-a", "b1").is_none(), "looked up in its own namespace");
    }
}
