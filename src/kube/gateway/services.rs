//! Per-Gateway Services (`--gateway-addresses per-gateway`): the leader keeps one Service
//! per Gateway with an address of its own (see `addresses`), in the namespace of the
//! published Service and with its type and selector, mapping the Gateway's listener ports
//! to the Gateway's data-plane ports. They are labelled as ours, and the ones no Gateway
//! needs any more are deleted (an ownerReference cannot point across namespaces). Every
//! replica watches them; their addresses are the Gateways' `status.addresses`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{Notify, watch};

use super::GatewayTranslation;
use super::addresses::{GatewayPorts, fnv1a};
use super::model::ServedPorts;
use crate::kube::status::{Feed, service_addresses};
use crate::kube::watches::WatchBackoff;

/// Marks a Service as a Gateway's, kept by the controller instance named in the value
/// (its `--ingress-class`, so two releases in one namespace keep apart).
pub const INSTANCE_LABEL: &str = "quic-ingress.dev/gateway-service";
/// The Gateway a Service is for, `namespace/name` (an annotation: names are too long for
/// label values).
pub const GATEWAY_ANNOTATION: &str = "quic-ingress.dev/gateway";
const FIELD_MANAGER: &str = "quic-ingress-gateway-services";
/// How often the Services are compared with what they should be, changes or not.
const RESYNC: Duration = Duration::from_secs(30);

/// Each Gateway's addresses, by `(namespace, name)`.
pub type Addresses = BTreeMap<(String, String), Vec<String>>;

/// The Service name of a Gateway: readable, at most 63 characters, unique by its hash.
pub fn service_name(namespace: &str, name: &str) -> String {
    let hash = fnv1a(format!("{namespace}/{name}").as_bytes());
    let readable: String = format!("gateway-{namespace}-{name}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(54)
        .collect();
    format!("{}-{:08x}", readable.trim_end_matches('-'), hash as u32)
}

/// The Services the Gateways of `t` with addresses of their own should have, in
/// `namespace`, like `template` (type, selector, external traffic policy).
pub fn desired(
    t: &GatewayTranslation,
    template: &Service,
    served: ServedPorts,
    instance: &str,
    namespace: &str,
) -> Vec<Service> {
    t.ports
        .iter()
        .filter_map(|(g, ports)| {
            let key = &t.model.gateways.get(*g)?.key;
            Some(gateway_service(&key.namespace, &key.name, *ports, template, served, instance, namespace))
        })
        .collect()
}

fn gateway_service(
    gw_namespace: &str,
    gw_name: &str,
    ports: GatewayPorts,
    template: &Service,
    served: ServedPorts,
    instance: &str,
    namespace: &str,
) -> Service {
    let port = |name: &str, port: u16, protocol: &str, target: u16| ServicePort {
        name: Some(name.to_string()),
        port: i32::from(port),
        protocol: Some(protocol.to_string()),
        target_port: Some(IntOrString::Int(i32::from(target))),
        ..ServicePort::default()
    };
    let mut service_ports = Vec::new();
    if let Some(https) = served.https {
        service_ports.push(port("https", https, "TCP", ports.tls));
        service_ports.push(port("quic", https, "UDP", ports.tls));
    }
    if let Some(http) = served.http {
        service_ports.push(port("http", http, "TCP", ports.plain));
    }
    let spec = template.spec.clone().unwrap_or_default();
    let type_ = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
    let external_traffic_policy = spec.external_traffic_policy.filter(|_| type_ != "ClusterIP");
    Service {
        metadata: ObjectMeta {
            name: Some(service_name(gw_namespace, gw_name)),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (INSTANCE_LABEL.to_string(), instance.to_string()),
                ("app.kubernetes.io/managed-by".to_string(), "quic-ingress".to_string()),
            ])),
            annotations: Some(BTreeMap::from([(GATEWAY_ANNOTATION.to_string(), format!("{gw_namespace}/{gw_name}"))])),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some(type_),
            selector: spec.selector,
            ports: Some(service_ports),
            external_traffic_policy,
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Whether `existing` already is `want` in everything we set.
fn up_to_date(existing: &Service, want: &Service) -> bool {
    let (e, w) = (existing.spec.clone().unwrap_or_default(), want.spec.clone().unwrap_or_default());
    let ports = |s: &ServiceSpec| {
        let mut ports: Vec<_> = s
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone(), p.port, p.protocol.clone(), p.target_port.clone()))
            .collect();
        ports.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        ports
    };
    e.type_ == w.type_
        && e.selector == w.selector
        && ports(&e) == ports(&w)
        && (w.external_traffic_policy.is_none() || e.external_traffic_policy == w.external_traffic_policy)
        && existing.annotations().get(GATEWAY_ANNOTATION) == want.annotations().get(GATEWAY_ANNOTATION)
}

/// Each Gateway's addresses, from the Services of `instance`.
pub fn addresses<'a>(services: impl IntoIterator<Item = &'a Service>, instance: &str) -> Addresses {
    services
        .into_iter()
        .filter(|s| s.labels().get(INSTANCE_LABEL).is_some_and(|v| v == instance))
        .filter_map(|s| {
            let (ns, name) = s.annotations().get(GATEWAY_ANNOTATION)?.split_once('/')?;
            Some(((ns.to_string(), name.to_string()), service_addresses(s)?))
        })
        .collect()
}

/// What the Service keeper needs.
pub struct Keeper {
    pub client: Client,
    /// Where the Services go: the published Service's namespace.
    pub namespace: String,
    /// `--ingress-class`: the value of [`INSTANCE_LABEL`].
    pub instance: String,
    pub served: ServedPorts,
    /// The published Service, whose type and selector the Gateways' Services copy.
    pub template: watch::Receiver<Option<Arc<Service>>>,
    pub feed: watch::Receiver<Arc<Feed>>,
    pub leading: watch::Receiver<bool>,
}

/// Watches the Gateways' Services (every replica) and keeps them (the leader); returns
/// the Gateways' addresses, kept current.
pub fn start(keeper: Keeper) -> watch::Receiver<Addresses> {
    let (tx, rx) = watch::channel(Addresses::new());
    let api: Api<Service> = Api::namespaced(keeper.client.clone(), &keeper.namespace);
    let cfg = watcher::Config::default().labels(&format!("{INSTANCE_LABEL}={}", keeper.instance));
    let (reader, writer) = reflector::store();
    let changed = Arc::new(Notify::new());
    let stream = reflector::reflector(writer, watcher(api.clone(), cfg)).backoff(WatchBackoff::default());
    let notify = changed.clone();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => notify.notify_one(),
                Err(e) => tracing::debug!(error = %e, "watching the Gateways' Services failed; retrying"),
            }
        }
    });
    tokio::spawn(keep(keeper, api, reader, changed, tx));
    rx
}

async fn keep(
    mut k: Keeper,
    api: Api<Service>,
    store: Store<Service>,
    changed: Arc<Notify>,
    tx: watch::Sender<Addresses>,
) {
    if store.wait_until_ready().await.is_err() {
        return;
    }
    // Nothing is deleted before the first translation says which Gateways there are.
    let mut built = false;
    let mut template_follows = true;
    let mut tick = tokio::time::interval(RESYNC);
    loop {
        tokio::select! {
            () = changed.notified() => {}
            _ = tick.tick() => {}
            r = k.feed.changed() => { if r.is_err() { return } built = true; }
            r = k.leading.changed() => if r.is_err() { return },
            r = k.template.changed(), if template_follows => template_follows = r.is_ok(),
        }
        let services = store.state();
        let now = addresses(services.iter().map(AsRef::as_ref), &k.instance);
        tx.send_if_modified(|old| {
            let changed = *old != now;
            *old = now;
            changed
        });
        if !built || !*k.leading.borrow() {
            continue;
        }
        let Some(template) = k.template.borrow().clone() else { continue };
        let feed = k.feed.borrow().clone();
        let want = desired(&feed.gateway, &template, k.served, &k.instance, &k.namespace);
        let wanted: BTreeSet<String> = want.iter().map(ResourceExt::name_any).collect();
        for svc in &want {
            let name = svc.name_any();
            if services.iter().any(|s| s.name_any() == name && up_to_date(s, svc)) {
                continue;
            }
            let params = PatchParams::apply(FIELD_MANAGER).force();
            match api.patch(&name, &params, &Patch::Apply(svc)).await {
                Ok(_) => tracing::info!(service = %name, "Gateway Service applied"),
                Err(e) => tracing::warn!(service = %name, error = %e, "cannot apply a Gateway's Service"),
            }
        }
        for svc in services.iter().filter(|s| !wanted.contains(&s.name_any())) {
            let name = svc.name_any();
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(service = %name, "Gateway Service deleted (no Gateway needs it)"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => tracing::warn!(service = %name, error = %e, "cannot delete a Gateway's Service"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::gateway::model::{GatewayImage, Model, ObjectKey};

    fn template(type_: &str) -> Service {
        Service {
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                selector: Some(BTreeMap::from([("app".to_string(), "quic-ingress".to_string())])),
                external_traffic_policy: Some("Local".into()),
                cluster_ip: Some("10.0.0.9".into()),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn translation(gateways: &[(&str, &str, Option<GatewayPorts>)]) -> GatewayTranslation {
        let images = gateways
            .iter()
            .map(|(ns, name, _)| GatewayImage {
                key: ObjectKey { namespace: ns.to_string(), name: name.to_string(), ..ObjectKey::default() },
                controller: crate::kube::gateway::GATEWAY_CONTROLLER_NAME.into(),
                refusal: None,
                listeners: vec![],
            })
            .collect();
        let ports = gateways.iter().enumerate().filter_map(|(i, (_, _, p))| p.map(|p| (i, p))).collect();
        GatewayTranslation { model: Model { gateways: images, ..Model::default() }, outcomes: vec![], ports }
    }

    const SERVED: ServedPorts = ServedPorts { https: Some(443), http: Some(80) };

    #[test]
    fn service_names_are_labels_unique_per_gateway() {
        let a = service_name("gateway-conformance-infra", "same-namespace");
        assert_eq!(a, format!("gateway-gateway-conformance-infra-same-namespace-{:08x}", a_hash()));
        let long = service_name(&"n".repeat(63), &"g.".repeat(100));
        assert!(
            long.len() <= 63 && long.starts_with("gateway-") && !long.contains('.') && !long.contains("--"),
            "{long}"
        );
        assert_ne!(service_name("a", "b-c"), service_name("a-b", "c"), "the hash tells apart what the name does not");
    }

    fn a_hash() -> u32 {
        fnv1a(b"gateway-conformance-infra/same-namespace") as u32
    }

    #[test]
    fn each_gateway_with_ports_gets_a_service_like_the_published_one() {
        let one = GatewayPorts { tls: 20010, plain: 20011 };
        let t = translation(&[("infra", "one", Some(one)), ("infra", "refused", None)]);
        let want = desired(&t, &template("LoadBalancer"), SERVED, "quic", "quic-ingress");
        assert_eq!(want.len(), 1, "a Gateway without ports gets no Service");
        let svc = &want[0];
        assert_eq!(svc.metadata.namespace.as_deref(), Some("quic-ingress"));
        assert_eq!(svc.labels().get(INSTANCE_LABEL).map(String::as_str), Some("quic"));
        assert_eq!(svc.annotations().get(GATEWAY_ANNOTATION).map(String::as_str), Some("infra/one"));
        let spec = svc.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.selector, template("x").spec.unwrap().selector, "the data-plane pods");
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(spec.cluster_ip, None, "the API server allocates its own");
        let ports: Vec<(i32, &str, IntOrString)> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| (p.port, p.protocol.as_deref().unwrap(), p.target_port.clone().unwrap()))
            .collect();
        assert_eq!(
            ports,
            [
                (443, "TCP", IntOrString::Int(20010)),
                (443, "UDP", IntOrString::Int(20010)),
                (80, "TCP", IntOrString::Int(20011))
            ]
        );
        let cluster = desired(&t, &template("ClusterIP"), ServedPorts { https: Some(443), http: None }, "quic", "ns");
        let spec = cluster[0].spec.as_ref().unwrap();
        assert_eq!(spec.external_traffic_policy, None, "ClusterIP Services take no traffic policy");
        assert_eq!(spec.ports.as_ref().unwrap().len(), 2, "no plaintext listener, no http port");
    }

    #[test]
    fn an_applied_service_is_up_to_date_until_what_we_set_differs() {
        let t = translation(&[("infra", "one", Some(GatewayPorts { tls: 20010, plain: 20011 }))]);
        let want = desired(&t, &template("ClusterIP"), SERVED, "quic", "ns").remove(0);
        let mut seen = want.clone();
        // What the API server adds is not a difference.
        let spec = seen.spec.as_mut().unwrap();
        spec.cluster_ip = Some("10.0.0.20".into());
        spec.session_affinity = Some("None".into());
        assert!(up_to_date(&seen, &want));
        let moved = desired(
            &translation(&[("infra", "one", Some(GatewayPorts { tls: 20012, plain: 20013 }))]),
            &template("ClusterIP"),
            SERVED,
            "quic",
            "ns",
        )
        .remove(0);
        assert!(!up_to_date(&seen, &moved), "new data-plane ports");
        assert!(!up_to_date(&seen, &desired(&t, &template("LoadBalancer"), SERVED, "quic", "ns").remove(0)));
    }

    #[test]
    fn addresses_are_read_from_our_services_only() {
        let t = translation(&[("infra", "one", Some(GatewayPorts { tls: 20010, plain: 20011 }))]);
        let mut ours = desired(&t, &template("ClusterIP"), SERVED, "quic", "ns").remove(0);
        ours.spec.as_mut().unwrap().cluster_ip = Some("10.0.0.20".into());
        let mut other = ours.clone();
        other.labels_mut().insert(INSTANCE_LABEL.into(), "other-class".into());
        other.annotations_mut().insert(GATEWAY_ANNOTATION.into(), "infra/two".into());
        let mut pending = ours.clone();
        pending.annotations_mut().insert(GATEWAY_ANNOTATION.into(), "infra/three".into());
        pending.spec.as_mut().unwrap().cluster_ip = None;
        let got = addresses([&ours, &other, &pending], "quic");
        assert_eq!(got, Addresses::from([(("infra".into(), "one".into()), vec!["10.0.0.20".to_string()])]));
    }
}
