//! translate: arbitrary Kubernetes objects (JSON: `{"ingresses": [...], "classes": [...],
//! "services": [...], "slices": [...], "secrets": [...], "groups": [...]}`) become a route
//! table, or problems, without a panic.
#![no_main]

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use libfuzzer_sys::fuzz_target;
use quic_ingress::kube::crd::BackendGroup;
use quic_ingress::kube::records::{IngressRecord, ServiceRecord, SliceRecord};
use quic_ingress::kube::translate::{LastGoodCerts, Settings, translate};
use quic_ingress::kube::world::World;
use quic_ingress::upstream::EndpointRegistry;

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Objects {
    ingresses: Vec<Ingress>,
    classes: Vec<IngressClass>,
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    secrets: Vec<Secret>,
    groups: Vec<BackendGroup>,
}

fn arcs<T>(v: Vec<T>) -> Vec<Arc<T>> {
    v.into_iter().map(Arc::new).collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(objects) = serde_json::from_slice::<Objects>(data) else { return };
    let world = World {
        // The caches keep Ingresses, Services and slices as records; the fuzzer feeds the
        // objects the API server would send through the same conversion.
        ingresses: objects.ingresses.into_iter().map(|i| Arc::new(IngressRecord::from(i))).collect(),
        classes: arcs(objects.classes),
        services: objects.services.into_iter().map(|s| Arc::new(ServiceRecord::from(s))).collect(),
        slices: objects.slices.into_iter().map(|s| Arc::new(SliceRecord::from(s))).collect(),
        secrets: arcs(objects.secrets),
        groups: arcs(objects.groups),
        gateway: Default::default(),
    };
    let settings = Settings::new("quic");
    let registry = EndpointRegistry::default();
    let t = translate(&world, &settings, &registry, &mut LastGoodCerts::default(), 1);
    let _ = t.table.lookup(Some("a.example.com"), "/");
});
