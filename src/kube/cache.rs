//! The store each watch keeps its objects in, and the change detector beside it, as one
//! table: each entry is the object and the fingerprint of what translation reads of it.
//!
//! It replaces kube's reflector store plus a separate `(namespace, name) -> fingerprint`
//! map. Both keyed every object by copies of its names: the store by an `ObjectRef` (name,
//! namespace, uid and resourceVersion copied), the detector by a `(String, String)`. At
//! 10,000 Ingresses with their Services and slices those keys were about a third of what
//! the stores held. Here an entry is found by hashing the names inside the object itself,
//! so an object costs its `Arc` and 24 bytes of table.

use std::hash::BuildHasher;
use std::sync::{Arc, PoisonError, RwLock};

use hashbrown::HashTable;
use kube::Resource;
use kube::runtime::watcher::Event;

use super::watches::Relevant;

/// One kind's objects (of one watch), shared by the watch task that writes them and the
/// builds that read them.
pub struct Cache<K> {
    inner: Arc<RwLock<Objects<K>>>,
}

impl<K> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<K> Default for Cache<K> {
    fn default() -> Self {
        Self {
            inner: Arc::new(RwLock::new(Objects {
                hasher: std::hash::RandomState::new(),
                live: HashTable::new(),
                relisting: None,
                listed: false,
            })),
        }
    }
}

struct Objects<K> {
    hasher: std::hash::RandomState,
    live: HashTable<Entry<K>>,
    /// A relist under way: the objects listed so far. The live set keeps serving until
    /// the list is done, as kube's store does.
    relisting: Option<HashTable<Entry<K>>>,
    /// A list has completed once (so the first one always counts as a change).
    listed: bool,
}

struct Entry<K> {
    obj: Arc<K>,
    /// What translation reads of it; `None` for an object kept but not tracked (another
    /// controller's GatewayClass): it comes, changes and goes without a rebuild.
    fingerprint: Option<u64>,
}

/// The names a cached object is found by: its namespace ("" when cluster-scoped) and name.
pub trait Named {
    fn names(&self) -> (&str, &str);
}

impl<K: Resource> Named for K {
    fn names(&self) -> (&str, &str) {
        let meta = self.meta();
        (meta.namespace.as_deref().unwrap_or(""), meta.name.as_deref().unwrap_or(""))
    }
}

fn names<K: Named>(obj: &K) -> (&str, &str) {
    obj.names()
}

fn hash_of(hasher: &std::hash::RandomState, names: (&str, &str)) -> u64 {
    hasher.hash_one(names)
}

/// Whether an entry holds the object named `key`.
fn named<K: Named>(key: (&str, &str)) -> impl Fn(&Entry<K>) -> bool {
    move |e| names(e.obj.as_ref()) == key
}

/// Puts `entry` in `table` in place of the one of the same names; returns that one.
fn put<K: Named>(
    hasher: &std::hash::RandomState,
    table: &mut HashTable<Entry<K>>,
    entry: Entry<K>,
) -> Option<Entry<K>> {
    let key = names(entry.obj.as_ref());
    let hash = hash_of(hasher, key);
    match table.find_mut(hash, named(key)) {
        Some(slot) => Some(std::mem::replace(slot, entry)),
        None => {
            table.insert_unique(hash, entry, |e| hash_of(hasher, names(e.obj.as_ref())));
            None
        }
    }
}

fn take<K: Named>(
    hasher: &std::hash::RandomState,
    table: &mut HashTable<Entry<K>>,
    key: (&str, &str),
) -> Option<Entry<K>> {
    let hash = hash_of(hasher, key);
    table.find_entry(hash, named(key)).ok().map(|found| found.remove().0)
}

/// Whether two listings hold the same tracked objects with the same fingerprints.
fn same_tracked<K: Named>(hasher: &std::hash::RandomState, a: &HashTable<Entry<K>>, b: &HashTable<Entry<K>>) -> bool {
    let tracked = |t: &HashTable<Entry<K>>| t.iter().filter(|e| e.fingerprint.is_some()).count();
    tracked(a) == tracked(b)
        && a.iter().filter(|e| e.fingerprint.is_some()).all(|e| {
            let key = names(e.obj.as_ref());
            b.find(hash_of(hasher, key), named(key)).is_some_and(|o| o.fingerprint == e.fingerprint)
        })
}

impl<K: Named + Relevant> Cache<K> {
    /// Applies one watch event; returns whether it changed what translation reads
    /// (every object tracked).
    pub fn observe(&self, event: Event<K>) -> bool {
        self.apply(event, &|_| true)
    }

    /// Applies one watch event, for a kind of which translation reads only the objects
    /// `tracked` says. Returns whether it changed what translation reads: a tracked object
    /// created, changed in what it reads, or deleted (or one no longer tracked); a relist
    /// whose tracked set differs from what was known (the first list always does, so the
    /// first table is built).
    pub fn apply(&self, event: Event<K>, tracked: &dyn Fn(&K) -> bool) -> bool {
        let entry = |obj: K| {
            let fingerprint = tracked(&obj).then(|| obj.fingerprint());
            Entry { obj: Arc::new(obj), fingerprint }
        };
        let mut objects = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let Objects { hasher, live, relisting, listed } = &mut *objects;
        match event {
            Event::Apply(obj) => {
                let new = entry(obj);
                let fingerprint = new.fingerprint;
                let old = put(hasher, live, new).and_then(|old| old.fingerprint);
                old != fingerprint
            }
            Event::Delete(obj) => take(hasher, live, names(&obj)).is_some_and(|old| old.fingerprint.is_some()),
            Event::Init => {
                *relisting = Some(HashTable::new());
                false
            }
            Event::InitApply(obj) => {
                put(hasher, relisting.get_or_insert_with(HashTable::new), entry(obj));
                false
            }
            Event::InitDone => {
                let relisted = relisting.take().unwrap_or_default();
                let changed = !*listed || !same_tracked(hasher, &relisted, live);
                *live = relisted;
                *listed = true;
                changed
            }
        }
    }
}

impl<K: Named> Cache<K> {
    /// Every object.
    pub fn state(&self) -> Vec<Arc<K>> {
        let objects = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        objects.live.iter().map(|e| e.obj.clone()).collect()
    }

    /// The object of `namespace` ("" for a cluster-scoped kind) named `name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let objects = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let key = (namespace, name);
        objects.live.find(hash_of(&objects.hasher, key), named(key)).map(|e| e.obj.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn secret(ns: &str, name: &str, data: &[u8]) -> Secret {
        Secret {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some(ns.into()), ..ObjectMeta::default() },
            data: Some([("tls.crt".into(), k8s_openapi::ByteString(data.to_vec()))].into()),
            ..Secret::default()
        }
    }

    fn data(cache: &Cache<Secret>, ns: &str, name: &str) -> Option<Vec<u8>> {
        cache.get(ns, name).and_then(|s| s.data.as_ref()?.get("tls.crt").map(|b| b.0.clone()))
    }

    #[test]
    fn objects_are_found_by_namespace_and_name_and_replaced_in_place() {
        let cache = Cache::default();
        cache.observe(Event::Apply(secret("a", "x", b"1")));
        cache.observe(Event::Apply(secret("b", "x", b"2")));
        cache.observe(Event::Apply(secret("a", "x", b"3")));
        assert_eq!(cache.state().len(), 2);
        assert_eq!(data(&cache, "a", "x"), Some(b"3".to_vec()));
        assert_eq!(data(&cache, "b", "x"), Some(b"2".to_vec()));
        assert_eq!(data(&cache, "c", "x"), None);
        assert!(cache.observe(Event::Delete(secret("a", "x", b""))));
        assert_eq!((cache.state().len(), data(&cache, "a", "x")), (1, None));
    }

    #[test]
    fn a_relist_replaces_the_objects_when_done_and_serves_the_old_ones_until_then() {
        let cache = Cache::default();
        cache.observe(Event::Init);
        cache.observe(Event::InitApply(secret("a", "x", b"1")));
        assert!(cache.state().is_empty(), "nothing is served before the first list is done");
        assert!(cache.observe(Event::InitDone));
        cache.observe(Event::Init);
        cache.observe(Event::InitApply(secret("a", "y", b"2")));
        assert_eq!(data(&cache, "a", "x"), Some(b"1".to_vec()), "the old set serves during a relist");
        assert!(cache.observe(Event::InitDone), "x went, y came");
        assert_eq!((data(&cache, "a", "x"), data(&cache, "a", "y")), (None, Some(b"2".to_vec())));
        cache.observe(Event::Init);
        cache.observe(Event::InitApply(secret("a", "y", b"2")));
        assert!(!cache.observe(Event::InitDone), "the same set again");
    }

    #[test]
    fn untracked_objects_are_kept_but_change_nothing() {
        let cache = Cache::default();
        let tracked = |s: &Secret| s.metadata.namespace.as_deref() == Some("ours");
        assert!(!cache.apply(Event::Apply(secret("theirs", "x", b"1")), &tracked));
        assert!(cache.get("theirs", "x").is_some(), "kept");
        assert!(!cache.apply(Event::Delete(secret("theirs", "x", b"1")), &tracked));
        assert!(cache.apply(Event::Apply(secret("ours", "x", b"1")), &tracked));
        assert!(!cache.apply(Event::Apply(secret("ours", "x", b"1")), &tracked), "the same again");
    }
}
