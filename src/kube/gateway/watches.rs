//! Watches of the Gateway API kinds (and of Namespaces, for `allowedRoutes` selectors, and
//! ConfigMaps, for BackendTLSPolicy CA bundles), started beside the others by
//! `kube::watches::Stores`. When the CRDs are not installed these watches fail like the
//! BackendGroup one: named in `/readyz`, retried, and the table is built without them.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::Notify;

use super::api::{BackendTLSPolicy, GRPCRoute, Gateway, GatewayClass, HTTPRoute, ReferenceGrant};
use super::model::GatewayWorld;
use crate::kube::cache::Cache;
use crate::kube::watches::{
    Board, Relevant, Scope, ScopedStore, hash_json, watch_kind, watch_kind_tracked, watch_scoped,
};

impl Relevant for GatewayClass {
    /// Status writes (ours) leave `generation` alone.
    fn fingerprint(&self) -> u64 {
        let m = &self.metadata;
        let spec = m.generation.is_none().then_some(&self.spec);
        hash_json(&(&m.uid, m.generation, spec), m.resource_version.as_deref())
    }
}

impl Relevant for Gateway {
    fn fingerprint(&self) -> u64 {
        let m = &self.metadata;
        let spec = m.generation.is_none().then_some(&self.spec);
        hash_json(&(&m.uid, m.generation, spec), m.resource_version.as_deref())
    }
}

impl Relevant for HTTPRoute {
    fn fingerprint(&self) -> u64 {
        let m = &self.metadata;
        let spec = m.generation.is_none().then_some(&self.spec);
        hash_json(&(&m.uid, m.generation, spec), m.resource_version.as_deref())
    }
}

impl Relevant for GRPCRoute {
    fn fingerprint(&self) -> u64 {
        let m = &self.metadata;
        let spec = m.generation.is_none().then_some(&self.spec);
        hash_json(&(&m.uid, m.generation, spec), m.resource_version.as_deref())
    }
}

impl Relevant for ReferenceGrant {
    /// No status subresource: the spec is the object.
    fn fingerprint(&self) -> u64 {
        let m = &self.metadata;
        hash_json(&(&m.uid, &self.spec), m.resource_version.as_deref())
    }
}

impl Relevant for BackendTLSPolicy {
    fn fingerprint(&self) -> u64 {
        let m = &self.metadata;
        let spec = m.generation.is_none().then_some(&self.spec);
        hash_json(&(&m.uid, m.generation, spec), m.resource_version.as_deref())
    }
}

impl Relevant for ConfigMap {
    /// Only the CA bundle a BackendTLSPolicy may read matters.
    fn fingerprint(&self) -> u64 {
        let m = &self.metadata;
        let ca = self.data.as_ref().and_then(|d| d.get(super::backend_tls::CA_KEY));
        hash_json(&(&m.uid, ca), m.resource_version.as_deref())
    }

    /// Every ConfigMap of the watched namespaces is stored, so all but the CA bundle is
    /// dropped: other tenants' configuration (and binary data) costs no memory here.
    fn trim_unread(&mut self) {
        self.binary_data = None;
        if let Some(data) = self.data.as_mut() {
            data.retain(|k, _| k == super::backend_tls::CA_KEY);
        }
        self.metadata.labels = None;
        self.metadata.annotations = None;
    }
}

impl Relevant for Namespace {
    /// Only labels matter (listener selectors); phase and status changes do not.
    fn fingerprint(&self) -> u64 {
        let m = &self.metadata;
        hash_json(&(&m.uid, &m.labels), m.resource_version.as_deref())
    }
}

/// Whether a GatewayClass names `controller_name`.
fn ours(controller_name: &str) -> impl Fn(&GatewayClass) -> bool + Send + 'static {
    let name = controller_name.to_string();
    move |class| class.spec.controller_name == name
}

/// The caches of the Gateway API kinds.
#[derive(Clone)]
pub struct GatewayStores {
    pub classes: Cache<GatewayClass>,
    pub gateways: ScopedStore<Gateway>,
    pub routes: ScopedStore<HTTPRoute>,
    pub grpc_routes: ScopedStore<GRPCRoute>,
    pub grants: ScopedStore<ReferenceGrant>,
    pub namespaces: Cache<Namespace>,
    pub backend_tls_policies: ScopedStore<BackendTLSPolicy>,
    /// For BackendTLSPolicy CA bundles (`ca.crt`).
    pub config_maps: ScopedStore<ConfigMap>,
}

impl GatewayStores {
    /// Only the GatewayClasses naming `controller_name` wake a rebuild: another
    /// controller's classes (and their Gateways) are not ours to serve.
    pub fn start(
        client: &kube::Client,
        scope: &Scope,
        controller_name: &str,
        changed: &Arc<Notify>,
        board: &Board,
    ) -> Self {
        let cfg = watcher::Config::default();
        // Watching one namespace, only its labels are needed; a field selector names one
        // object only, so several namespaces watch them all (labels only matter).
        let watched = scope.namespaces();
        let ns_cfg = match watched.iter().next() {
            Some(n) if watched.len() == 1 => cfg.clone().fields(&format!("metadata.name={n}")),
            _ => cfg.clone(),
        };
        let (c, b) = (changed, board);
        GatewayStores {
            classes: watch_kind_tracked(
                "GatewayClass",
                Api::all(client.clone()),
                cfg.clone(),
                c.clone(),
                b.clone(),
                ours(controller_name),
            ),
            gateways: watch_scoped("Gateway", client, scope, cfg.clone(), c.clone(), b.clone()),
            routes: watch_scoped("HTTPRoute", client, scope, cfg.clone(), c.clone(), b.clone()),
            grpc_routes: watch_scoped("GRPCRoute", client, scope, cfg.clone(), c.clone(), b.clone()),
            grants: watch_scoped("ReferenceGrant", client, scope, cfg.clone(), c.clone(), b.clone()),
            backend_tls_policies: watch_scoped("BackendTLSPolicy", client, scope, cfg.clone(), c.clone(), b.clone()),
            config_maps: watch_scoped("ConfigMap", client, scope, cfg, c.clone(), b.clone()),
            namespaces: watch_kind("Namespace", Api::all(client.clone()), ns_cfg, c.clone(), b.clone()),
        }
    }

    pub fn snapshot(&self) -> GatewayWorld {
        GatewayWorld {
            classes: self.classes.state(),
            gateways: self.gateways.state(),
            routes: self.routes.state(),
            grpc_routes: self.grpc_routes.state(),
            grants: self.grants.state(),
            namespaces: self.namespaces.state(),
            backend_tls_policies: self.backend_tls_policies.state(),
            config_maps: self.config_maps.state(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::gateway::api::{GatewayStatus, HTTPRouteStatus, RouteParentStatus};

    fn route(generation: i64, rv: &str) -> HTTPRoute {
        let mut r = HTTPRoute::new("web", Default::default());
        r.metadata.namespace = Some("shop".into());
        r.metadata.uid = Some("uid-1".into());
        r.metadata.generation = Some(generation);
        r.metadata.resource_version = Some(rv.into());
        r
    }

    #[test]
    fn status_writes_leave_gateway_api_fingerprints_alone() {
        let mut written = route(1, "2");
        written.status = Some(HTTPRouteStatus {
            parents: vec![RouteParentStatus { controller_name: "x".into(), ..Default::default() }],
        });
        assert_eq!(route(1, "1").fingerprint(), written.fingerprint(), "our own status write");
        assert_ne!(route(1, "1").fingerprint(), route(2, "3").fingerprint(), "a spec change");

        let mut gw = Gateway::new("gw", Default::default());
        gw.metadata.generation = Some(1);
        let before = gw.fingerprint();
        gw.status = Some(GatewayStatus::default());
        gw.metadata.resource_version = Some("9".into());
        assert_eq!(before, gw.fingerprint());

        let mut grpc = GRPCRoute::new("echo", Default::default());
        grpc.metadata.generation = Some(1);
        grpc.metadata.resource_version = Some("4".into());
        let before = grpc.fingerprint();
        grpc.status = Some(HTTPRouteStatus::default());
        grpc.metadata.resource_version = Some("5".into());
        assert_eq!(before, grpc.fingerprint(), "a GRPCRoute status write");
        grpc.metadata.generation = Some(2);
        assert_ne!(before, grpc.fingerprint(), "a GRPCRoute spec change");

        let mut ns = Namespace::default();
        ns.metadata.name = Some("shop".into());
        let plain = ns.fingerprint();
        ns.status = Some(Default::default());
        assert_eq!(plain, ns.fingerprint(), "namespace status");
        ns.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
        assert_ne!(plain, ns.fingerprint(), "labels select listeners");
    }

    #[test]
    fn another_controllers_gateway_classes_come_and_go_without_a_rebuild() {
        use crate::kube::gateway::GATEWAY_CONTROLLER_NAME;
        use crate::kube::gateway::api::GatewayClassSpec;
        use kube::runtime::watcher::Event;
        let class = |name: &str, controller: &str, generation: i64| {
            let mut c =
                GatewayClass::new(name, GatewayClassSpec { controller_name: controller.into(), ..Default::default() });
            c.metadata.uid = Some(format!("uid-{name}"));
            c.metadata.generation = Some(generation);
            c
        };
        let tracked = ours(GATEWAY_CONTROLLER_NAME);
        let c = Cache::default();
        let observe = |e: Event<GatewayClass>| c.apply(e, &tracked);
        observe(Event::Init);
        observe(Event::InitApply(class("theirs", "example.com/other", 1)));
        observe(Event::InitApply(class("quic", GATEWAY_CONTROLLER_NAME, 1)));
        assert!(observe(Event::InitDone), "the first list builds");
        assert!(!observe(Event::Apply(class("other", "example.com/other", 1))), "a foreign class created");
        assert!(!observe(Event::Apply(class("other", "example.com/other", 2))), "and changed");
        assert!(!observe(Event::Delete(class("other", "example.com/other", 2))), "and deleted");
        assert!(observe(Event::Apply(class("quic", GATEWAY_CONTROLLER_NAME, 2))), "ours changed");
        assert!(observe(Event::Apply(class("mine", GATEWAY_CONTROLLER_NAME, 1))), "ours created");
        assert!(observe(Event::Delete(class("mine", GATEWAY_CONTROLLER_NAME, 1))), "ours deleted");
        // A relist that differs only in foreign classes changes nothing.
        observe(Event::Init);
        observe(Event::InitApply(class("quic", GATEWAY_CONTROLLER_NAME, 2)));
        observe(Event::InitApply(class("new-foreign", "example.com/other", 1)));
        assert!(!observe(Event::InitDone));
    }

    #[test]
    fn only_a_ca_bundle_or_a_policy_spec_change_counts() {
        let mut cm = ConfigMap::default();
        cm.metadata.uid = Some("uid-cm".into());
        cm.data = Some([("ca.crt".to_string(), "PEM".to_string())].into());
        let before = cm.fingerprint();
        cm.data.as_mut().unwrap().insert("other".into(), "churn".into());
        cm.metadata.resource_version = Some("7".into());
        assert_eq!(before, cm.fingerprint(), "keys a policy never reads");
        cm.data.as_mut().unwrap().insert("ca.crt".into(), "NEW PEM".into());
        assert_ne!(before, cm.fingerprint(), "a rotated CA");
        cm.binary_data = Some([("blob".to_string(), Default::default())].into());
        cm.metadata.annotations = Some([("note".to_string(), "x".to_string())].into());
        crate::kube::watches::trim(&mut cm);
        assert_eq!(cm.data, Some([("ca.crt".to_string(), "NEW PEM".to_string())].into()), "only the bundle is kept");
        assert_eq!((cm.binary_data, cm.metadata.annotations), (None, None));

        let mut p = BackendTLSPolicy::new("p", Default::default());
        p.metadata.generation = Some(1);
        let before = p.fingerprint();
        p.status = Some(Default::default());
        p.metadata.resource_version = Some("3".into());
        assert_eq!(before, p.fingerprint(), "our own status write");
        p.metadata.generation = Some(2);
        assert_ne!(before, p.fingerprint(), "a spec change");
    }
}
