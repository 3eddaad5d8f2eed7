//! What one replica's Kubernetes state holds in memory at scale, without an API server, for
//! a heap profiler. N Ingresses (each with its own Service and one-endpoint EndpointSlice,
//! all at one address: the shape bench-routes creates), or S Services of E endpoints (all
//! addresses distinct), written as the API server returns them, go through the
//! controller's trimming into the watch caches (`kube::cache`, with the fingerprints the
//! watches keep); `table` then translates them twice into a route table and the endpoint
//! registry (the second build reuses the first's Service groups and frees its table, as
//! the rebuild loop does); `served` adds the metric series one request on each route
//! makes. It stops after the phase asked for and exits without freeing anything, so under
//! heaptrack (this program keeps the system allocator) "leaked" is what that phase holds,
//! by allocation site. Prints RSS after each phase.
//!   cargo build --release --example memory-profile
//!   heaptrack target/release/examples/memory-profile ingresses 10000 table
//!   heaptrack_print -F stacks.txt --flamegraph-cost-type leaked heaptrack.memory-profile.*.zst

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::watcher::Event;
use quic_ingress::kube::cache::{Cache, Named};
use quic_ingress::kube::records::{IngressRecord, ServiceRecord, SliceRecord};
use quic_ingress::kube::translate::{LastGoodCerts, Settings, Translation, translate};
use quic_ingress::kube::watches::{Keep, Relevant};
use quic_ingress::kube::world::World;
use quic_ingress::telemetry::metrics::Metrics;
use quic_ingress::upstream::EndpointRegistry;
use serde_json::{Value, json};

const NAMESPACE: &str = "bench-ing-4f2a1";

/// What the API server adds to every object's metadata.
fn meta(name: &str, rv: &mut u64, extra: Value) -> Value {
    *rv += 1;
    let mut m = json!({
        "name": name,
        "namespace": NAMESPACE,
        "uid": uuid::Uuid::new_v4().to_string(),
        "resourceVersion": rv.to_string(),
        "creationTimestamp": "2026-12-01T16:00:00Z",
    });
    if let (Some(m), Value::Object(extra)) = (m.as_object_mut(), extra) {
        m.extend(extra);
    }
    m
}

fn ingress(n: usize, rv: &mut u64) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": meta(&format!("i{n}"), rv, json!({"generation": 1})),
        "spec": {"ingressClassName": "quic", "rules": [{"host": format!("i{n}.example.com"), "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": format!("s{n}"), "port": {"number": 80}}}}
        ]}}]},
        "status": {"loadBalancer": {}},
    })
}

/// A headless Service with its API defaults, as bench-routes creates them.
fn service(name: &str, rv: &mut u64) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": meta(name, rv, json!({})),
        "spec": {
            "clusterIP": "None", "clusterIPs": ["None"], "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None", "type": "ClusterIP",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80}],
        },
        "status": {"loadBalancer": {}},
    })
}

fn slice(service: &str, first: usize, count: usize, rv: &mut u64) -> Value {
    let endpoints: Vec<Value> = (first..first + count)
        .map(|id| {
            json!({
                "addresses": [format!("10.{}.{}.{}", 200 + id / 65_536, (id / 256) % 256, id % 256)],
                "conditions": {"ready": true, "serving": true, "terminating": false},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": meta(&format!("{service}-1"), rv, json!({"generation": 1, "labels": {
            "kubernetes.io/service-name": service,
            "endpointslice.kubernetes.io/managed-by": "quic-ingress-e2e",
        }})),
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
}

/// One kind's cache, fed as a watch feeds it: objects of kind `K` kept as `S`.
struct Kind<K, S = K> {
    store: Cache<S>,
    kind: std::marker::PhantomData<K>,
}

impl<K, S> Kind<K, S>
where
    K: serde::de::DeserializeOwned,
    S: Keep<K> + Named + Relevant,
{
    fn new() -> Self {
        Self { store: Cache::default(), kind: std::marker::PhantomData }
    }

    fn apply(&mut self, json: Value) -> anyhow::Result<()> {
        let obj: K = serde_json::from_value(json)?;
        self.store.observe(Event::Apply(S::keep(obj)));
        Ok(())
    }
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: memory-profile (ingresses N | endpoints SxE) (stores | table | served)";
    let (shape, size, phase) = match args.as_slice() {
        [shape, size, phase] => (shape.as_str(), size.as_str(), phase.as_str()),
        _ => anyhow::bail!(usage),
    };
    anyhow::ensure!(matches!(phase, "stores" | "table" | "served"), usage);
    println!("empty: RSS {:.1} MiB", rss_mib());

    let (mut ingresses, mut services, mut slices) = (
        Kind::<Ingress, IngressRecord>::new(),
        Kind::<Service, ServiceRecord>::new(),
        Kind::<EndpointSlice, SliceRecord>::new(),
    );
    let mut rv = 1_000_000;
    let objects = match shape {
        "ingresses" => {
            let n: usize = size.parse()?;
            for i in 0..n {
                let svc = format!("s{i}");
                ingresses.apply(ingress(i, &mut rv))?;
                services.apply(service(&svc, &mut rv))?;
                // bench-routes points every slice at its one demo backend.
                slices.apply(slice(&svc, 0, 1, &mut rv))?;
            }
            format!("{n} Ingresses, each with a Service and a one-endpoint EndpointSlice (one address)")
        }
        "endpoints" => {
            let (s, e) = size.split_once('x').ok_or_else(|| anyhow::anyhow!(usage))?;
            let (s, e): (usize, usize) = (s.parse()?, e.parse()?);
            for i in 0..s {
                let svc = format!("s{i}");
                ingresses.apply(ingress(i, &mut rv))?;
                services.apply(service(&svc, &mut rv))?;
                slices.apply(slice(&svc, i * e, e, &mut rv))?;
            }
            format!("{s} Ingresses and Services with {e} endpoints each")
        }
        _ => anyhow::bail!(usage),
    };
    println!("{objects} in the stores: RSS {:.1} MiB", rss_mib());
    let world = || World {
        ingresses: ingresses.store.state(),
        services: services.store.state(),
        slices: slices.store.state(),
        ..World::default()
    };
    let mut held: Vec<Translation> = Vec::new();
    if phase != "stores" {
        let settings = Settings::new("quic");
        let metrics = Arc::new(Metrics::new()?);
        let registry = EndpointRegistry::new(metrics.clone(), None);
        let mut last_good = LastGoodCerts::default();
        let first = translate(&world(), &settings, &registry, &mut last_good, 1);
        let second = translate(&world(), &settings, &registry, &mut last_good, 2);
        drop(first);
        println!(
            "table of {} routes, {} live endpoints: RSS {:.1} MiB",
            second.table.route_count(),
            registry.live_count(),
            rss_mib()
        );
        if phase == "served" {
            // The series one request makes, as the pipeline records it (finish.rs).
            for route in second.table.routes() {
                metrics.http_requests.with_label_values(&["GET", "200", "10.200.0.0:8080", &route.id]).inc();
                metrics.http_request_duration.with_label_values(&[&route.id]).observe(0.001);
            }
            println!("one request's series on every route: RSS {:.1} MiB", rss_mib());
        }
        held.push(second);
        // Held to the end with the table, as the controller holds them.
        std::mem::forget((registry, last_good));
    }
    // Exit without freeing: what is still allocated is what the phase holds.
    std::mem::forget((held, ingresses, services, slices));
    std::process::exit(0)
}
