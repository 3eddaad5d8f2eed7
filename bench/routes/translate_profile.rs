//! Route-table builds without an API server, for profiling (`perf record` on this binary):
//! a `World` of N Ingresses, each with its own Service and one-endpoint EndpointSlice, or of
//! N HTTPRoutes on one Gateway to one Service (the shapes bench-routes creates), translated
//! `ROUNDS` more times after the first. Prints the time per build. With `update`, each
//! round adds one Ingress (to Service `s0`) and builds as the controller does: an
//! incremental update of the previous table.
//!   cargo run --release --example translate-profile -- [N=10000] [ROUNDS=20] [ingress|httproute|update [TOUCHED=0]]

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use quic_ingress::kube::controller::build;
use quic_ingress::kube::records::{IngressRecord, ServiceRecord, SliceRecord};
use quic_ingress::kube::translate::{LastGoodCerts, Settings, translate};
use quic_ingress::kube::world::{SERVICE_NAME_LABEL, World};
use quic_ingress::telemetry::metrics::Metrics;
use quic_ingress::upstream::EndpointRegistry;

// The binary's allocator: a build is mostly allocation, so its cost depends on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn meta(name: &str, n: usize) -> ObjectMeta {
    let ts = k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + n as i64).unwrap_or_default();
    ObjectMeta {
        namespace: Some("bench".into()),
        name: Some(name.into()),
        uid: Some(format!("uid-{name}")),
        // As the API server writes it: with a version, the previous build's Service groups
        // are reused, as in a cluster.
        resource_version: Some(format!("{}", 1000 + n)),
        creation_timestamp: Some(Time(ts)),
        generation: Some(1),
        ..ObjectMeta::default()
    }
}

fn world(n: usize) -> World {
    let mut w = World::default();
    for i in 0..n {
        let svc = format!("s{i}");
        w.services.push(Arc::new(ServiceRecord::from(Service {
            metadata: meta(&svc, i),
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort { name: Some("http".into()), port: 80, ..ServicePort::default() }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        })));
        let mut m = meta(&format!("{svc}-1"), i);
        m.labels = Some([(SERVICE_NAME_LABEL.to_string(), svc.clone())].into());
        w.slices.push(Arc::new(SliceRecord::from(EndpointSlice {
            metadata: m,
            address_type: "IPv4".into(),
            endpoints: vec![Endpoint {
                addresses: vec![format!("10.231.{}.{}", (i / 250) % 250, i % 250 + 2)],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                ..Endpoint::default()
            }],
            ports: Some(vec![EndpointPort { name: Some("http".into()), port: Some(8080), ..EndpointPort::default() }]),
        })));
        w.ingresses.push(Arc::new(IngressRecord::from(Ingress {
            metadata: meta(&format!("i{i}"), i),
            spec: Some(IngressSpec {
                ingress_class_name: Some("quic".into()),
                rules: Some(vec![IngressRule {
                    host: Some(format!("i{i}.example.com")),
                    http: Some(HTTPIngressRuleValue {
                        paths: vec![HTTPIngressPath {
                            path: Some("/".into()),
                            path_type: "Prefix".into(),
                            backend: IngressBackend {
                                service: Some(IngressServiceBackend {
                                    name: svc,
                                    port: Some(ServiceBackendPort { number: Some(80), name: None }),
                                }),
                                resource: None,
                            },
                        }],
                    }),
                }]),
                ..IngressSpec::default()
            }),
            ..Ingress::default()
        })));
    }
    w
}

/// A Gateway API object of `kind` from its spec, with the metadata the API server writes.
fn gateway_object<T: serde::de::DeserializeOwned>(
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    n: usize,
    spec: serde_json::Value,
) -> anyhow::Result<Arc<T>> {
    let mut m = serde_json::to_value(meta(name, n))?;
    if namespace.is_none() {
        m.as_object_mut().map(|o| o.remove("namespace"));
    }
    let v =
        serde_json::json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": kind, "metadata": m, "spec": spec});
    Ok(Arc::new(serde_json::from_value(v)?))
}

/// One GatewayClass of ours, Gateway `bench/gw` with an HTTP listener on port 80, and `n`
/// HTTPRoutes, each of its own host, to Service `s0` (of `world(1)`).
fn httproute_world(n: usize) -> anyhow::Result<World> {
    let mut w = world(1);
    w.ingresses.clear();
    let g = &mut w.gateway;
    let controller = quic_ingress::kube::gateway::GATEWAY_CONTROLLER_NAME;
    g.classes.push(gateway_object("GatewayClass", None, "quic", 0, serde_json::json!({"controllerName": controller}))?);
    let listeners = serde_json::json!([{"name": "http", "port": 80, "protocol": "HTTP"}]);
    g.gateways.push(gateway_object(
        "Gateway",
        Some("bench"),
        "gw",
        0,
        serde_json::json!({"gatewayClassName": "quic", "listeners": listeners}),
    )?);
    for i in 0..n {
        let spec = serde_json::json!({
            "parentRefs": [{"name": "gw"}],
            "hostnames": [format!("r{i}.example.com")],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                       "backendRefs": [{"name": "s0", "port": 80}]}],
        });
        g.routes.push(gateway_object("HTTPRoute", Some("bench"), &format!("r{i}"), i + 1, spec)?);
    }
    Ok(w)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10_000);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);
    anyhow::ensure!(rounds >= 1, "ROUNDS must be at least 1");
    let kind = args.next().unwrap_or_else(|| "ingress".into());
    let mut settings = Settings::new("quic");
    let w = match kind.as_str() {
        "ingress" => world(n),
        "update" => {
            let touched = args.next().map(|a| a.parse()).transpose()?.unwrap_or(0);
            return updates(world(n), &settings, rounds, touched);
        }
        "httproute" => {
            settings.gateway_ports.http = Some(80);
            httproute_world(n)?
        }
        other => anyhow::bail!("{other}: expected ingress, httproute or update"),
    };
    let registry = EndpointRegistry::new(Arc::new(Metrics::new()?), None);
    let mut last_good = LastGoodCerts::default();
    let mut times = Vec::with_capacity(rounds);
    let mut first = None;
    let mut cpu_at_first = None;
    for g in 0..=rounds {
        let started = Instant::now();
        let t = translate(&w, &settings, &registry, &mut last_good, g as u64 + 1);
        let took = started.elapsed();
        anyhow::ensure!(t.table.route_count() >= n, "{} routes of {n}", t.table.route_count());
        // The first build compiles every Service group; the next ones reuse them.
        match first {
            None => {
                first = Some(took);
                cpu_at_first = Some(process_cpu()?);
            }
            Some(_) => times.push(took),
        }
    }
    // CPU time, unlike wall time, hardly moves with what else the machine runs.
    let cpu = process_cpu()? - cpu_at_first.unwrap_or_default();
    times.sort();
    println!("translate: {n} {kind}s, first build {:.1} ms", first.unwrap_or_default().as_secs_f64() * 1000.0);
    println!(
        "translate: {n} {kind}s, {rounds} more builds: median {:.1} ms, min {:.1} ms, max {:.1} ms",
        times[rounds / 2].as_secs_f64() * 1000.0,
        times[0].as_secs_f64() * 1000.0,
        times[rounds - 1].as_secs_f64() * 1000.0
    );
    println!(
        "translate: {n} {kind}s, CPU per build {:.1} ms (from /proc, {rounds} builds)",
        cpu * 1000.0 / rounds as f64
    );
    Ok(())
}

/// `rounds` updates after a full build of `w`, each for one new Ingress and `touched`
/// existing ones written again.
fn updates(mut w: World, settings: &Settings, rounds: usize, touched: usize) -> anyhow::Result<()> {
    let n = w.ingresses.len();
    let registry = EndpointRegistry::new(Arc::new(Metrics::new()?), None);
    let started = Instant::now();
    let (mut prev, mut last_good) =
        build(w.clone(), settings, &registry, LastGoodCerts::default(), None, 1).into_previous();
    println!("update: {n} Ingresses, full build {:.1} ms", started.elapsed().as_secs_f64() * 1000.0);
    let cpu_before = process_cpu()?;
    let mut times = Vec::with_capacity(rounds);
    for r in 0..rounds {
        let mut ing =
            IngressRecord::from(Ingress { metadata: meta(&format!("t{r}"), n + r), spec: None, status: None });
        ing.spec = w.ingresses[0].spec.clone();
        if let Some(rule) = ing.spec.as_mut().and_then(|s| s.rules.first_mut()) {
            rule.host = Some(format!("t{r}.example.com").into());
        }
        w.ingresses.push(Arc::new(ing));
        // As the status writer does: existing Ingresses written again (new objects, same spec).
        for k in 0..touched {
            let at = (r * 7919 + k * 104_729) % n;
            w.ingresses[at] = Arc::new(IngressRecord::clone(&w.ingresses[at]));
        }
        let started = Instant::now();
        let built = build(w.clone(), settings, &registry, last_good, Some(&mut prev), r as u64 + 2);
        times.push(started.elapsed());
        anyhow::ensure!(
            built.incremental == Some(1 + 2 * touched),
            "round {r}: {:?}, not an update",
            built.incremental
        );
        anyhow::ensure!(built.table.lookup(Some(&format!("t{r}.example.com")), "/").is_some(), "round {r}: not routed");
        (prev, last_good) = built.into_previous();
    }
    let cpu = process_cpu()? - cpu_before;
    times.sort();
    println!(
        "update: {n} Ingresses, {rounds} updates of one new Ingress and {touched} rewritten: median {:.2} ms, min {:.2} ms, max {:.2} ms, CPU per update {:.2} ms",
        times[rounds / 2].as_secs_f64() * 1000.0,
        times[0].as_secs_f64() * 1000.0,
        times[rounds - 1].as_secs_f64() * 1000.0,
        cpu * 1000.0 / rounds as f64
    );
    Ok(())
}

/// This process's user + system CPU seconds (`/proc/self/stat`, in clock ticks of 1/100 s).
fn process_cpu() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
    Ok((ticks(11) + ticks(12)) / 100.0)
}
