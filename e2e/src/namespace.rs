//! A namespace of its own for each test, deleted when the test is done.

use std::collections::hash_map::RandomState;
use std::fmt::Debug;
use std::hash::BuildHasher;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, Config, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::TestEnv;

/// Set to keep test namespaces for inspection after the tests.
pub const KEEP_NAMESPACES_VAR: &str = "QUIC_INGRESS_TEST_KEEP_NAMESPACES";

/// Label on every test namespace, to find leftovers on a shared cluster.
pub const TEST_NAMESPACE_LABEL: &str = "quic-ingress.dev/e2e";

/// A uniquely named namespace with an admin client.
///
/// Call [`TestNamespace::cleanup`] at the end of a test to see deletion errors; a namespace
/// that is only dropped (a failing test) is deleted on a helper thread, best effort.
/// On testenv the namespace then stays `Terminating` (there is no namespace controller),
/// which is harmless: the control plane is thrown away with the test binary.
pub struct TestNamespace {
    name: String,
    client: Client,
    /// For the delete on drop, which runs on its own runtime and so needs its own client.
    config: Config,
    done: bool,
}

impl TestNamespace {
    /// Creates `<prefix>-<random>` and returns once the server has it.
    pub async fn new(env: &TestEnv, prefix: &str) -> anyhow::Result<Self> {
        let client = env.client()?;
        let name = unique_name(prefix);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(TestNamespace { name, client, config: env.config().clone(), done: false })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The admin client this namespace was created with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// An API for a namespaced kind in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Creates `obj` in this namespace (its own namespace field, if any, is ignored).
    pub async fn create<K>(&self, obj: &K) -> anyhow::Result<K>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + Debug,
        K::DynamicType: Default,
    {
        let mut obj = obj.clone();
        obj.meta_mut().namespace = Some(self.name.clone());
        let name = obj.meta().name.clone().unwrap_or_default();
        self.api::<K>()
            .create(&PostParams::default(), &obj)
            .await
            .with_context(|| format!("creating {} {}/{name}", K::kind(&K::DynamicType::default()), self.name))
    }

    /// Creates or updates `obj` in this namespace with a forced server-side apply (field
    /// manager `quic-ingress-e2e`), like `kubectl apply --server-side --force-conflicts`.
    pub async fn apply<K>(&self, obj: &K) -> anyhow::Result<K>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + Debug,
        K::DynamicType: Default,
    {
        let mut obj = obj.clone();
        obj.meta_mut().namespace = Some(self.name.clone());
        obj.meta_mut().resource_version = None;
        let name = obj.meta().name.clone().unwrap_or_default();
        self.api::<K>()
            .patch(&name, &PatchParams::apply("quic-ingress-e2e").force(), &Patch::Apply(&obj))
            .await
            .with_context(|| format!("applying {} {}/{name}", K::kind(&K::DynamicType::default()), self.name))
    }

    /// Deletes an object of this namespace (foreground, so it is gone when watchers see it).
    pub async fn delete<K>(&self, name: &str) -> anyhow::Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        self.api::<K>()
            .delete(name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting {} {}/{name}", K::kind(&K::DynamicType::default()), self.name))?;
        Ok(())
    }

    /// Deletes the namespace and reports failure.
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        self.done = true;
        if keep() {
            eprintln!("quic-ingress-e2e: keeping namespace {}", self.name);
            return Ok(());
        }
        delete(self.client.clone(), &self.name).await
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.done || keep() {
            return;
        }
        let name = std::mem::take(&mut self.name);
        let config = self.config.clone();
        // Drop may run inside a runtime that is shutting down (a panicking test), so the
        // delete gets a thread and runtime of its own; joining makes it finish before the
        // test binary can exit.
        let worker = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let client = Client::try_from(config)?;
                tokio::time::timeout(Duration::from_secs(10), delete(client, &name)).await?
            })
        });
        if let Ok(Err(e)) = worker.join() {
            eprintln!("quic-ingress-e2e: namespace cleanup failed: {e:#}");
        }
    }
}

async fn delete(client: Client, name: &str) -> anyhow::Result<()> {
    match Api::<Namespace>::all(client).delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting namespace {name}")),
    }
}

fn keep() -> bool {
    std::env::var_os(KEEP_NAMESPACES_VAR).is_some_and(|v| !v.is_empty() && v != "0")
}

/// `<prefix>-<6 random base-36 characters>`, cut to a valid DNS label. The std hasher
/// is seeded randomly per process, which is all the randomness this needs.
pub fn unique_name(prefix: &str) -> String {
    let mut prefix: String =
        prefix.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    prefix.truncate(63 - 7);
    let prefix = prefix.trim_matches('-');
    let mut n = RandomState::new().hash_one(std::time::SystemTime::now());
    let mut suffix = String::new();
    for _ in 0..6 {
        suffix.push(char::from_digit((n % 36) as u32, 36).unwrap_or('x'));
        n /= 36;
    }
    if prefix.is_empty() { format!("t-{suffix}") } else { format!("{prefix}-{suffix}") }
}
