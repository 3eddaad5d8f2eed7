//! Route-table builds without an API server, for profiling (`perf record` on this binary):
//! a `World` of N Ingresses, each with its own Service and one-endpoint EndpointSlice (the
//! shape bench-routes creates), translated `ROUNDS` times. Prints the time per build.
//!   cargo run --release --example translate-profile -- [N=10000] [ROUNDS=20]

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use quic_ingress::kube::translate::{LastGoodCerts, Settings, translate};
use quic_ingress::kube::world::{SERVICE_NAME_LABEL, World};
use quic_ingress::telemetry::metrics::Metrics;
use quic_ingress::upstream::EndpointRegistry;

fn meta(name: &str, n: usize) -> ObjectMeta {
    let ts = k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + n as i64).unwrap_or_default();
    ObjectMeta {
        namespace: Some("bench".into()),
        name: Some(name.into()),
        uid: Some(format!("uid-{name}")),
        creation_timestamp: Some(Time(ts)),
        generation: Some(1),
        ..ObjectMeta::default()
    }
}

fn world(n: usize) -> World {
    let mut w = World::default();
    for i in 0..n {
        let svc = format!("s{i}");
        w.services.push(Arc::new(Service {
            metadata: meta(&svc, i),
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort { name: Some("http".into()), port: 80, ..ServicePort::default() }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }));
        let mut m = meta(&format!("{svc}-1"), i);
        m.labels = Some([(SERVICE_NAME_LABEL.to_string(), svc.clone())].into());
        w.slices.push(Arc::new(EndpointSlice {
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
        }));
        w.ingresses.push(Arc::new(Ingress {
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
        }));
    }
    w
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10_000);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);
    let w = world(n);
    let settings = Settings::new("quic");
    let registry = EndpointRegistry::new(Arc::new(Metrics::new()?), None);
    let mut last_good = LastGoodCerts::default();
    let mut times = Vec::with_capacity(rounds);
    for g in 0..rounds {
        let started = Instant::now();
        let t = translate(&w, &settings, &registry, &mut last_good, g as u64 + 1);
        times.push(started.elapsed());
        anyhow::ensure!(t.table.route_count() >= n, "{} routes of {n}", t.table.route_count());
    }
    times.sort();
    println!(
        "translate: {n} Ingresses, {rounds} builds: median {:.1} ms, min {:.1} ms, max {:.1} ms",
        times[rounds / 2].as_secs_f64() * 1000.0,
        times[0].as_secs_f64() * 1000.0,
        times[rounds - 1].as_secs_f64() * 1000.0
    );
    Ok(())
}
