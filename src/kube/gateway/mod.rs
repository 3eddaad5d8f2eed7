//! Gateway API (gateway.networking.k8s.io, standard channel v1.6): GatewayClass, Gateway,
//! HTTPRoute, GRPCRoute (`grpc`), ReferenceGrant and BackendTLSPolicy (`backend_tls`) objects → a typed model (`model`), its status (`status`),
//! and the part of it today's route table can express (`table`, connected in
//! `kube::translate`).

pub mod addresses;
pub mod api;
pub mod backend_tls;
pub mod grpc;
pub mod model;
pub mod services;
pub mod status;
pub mod table;
pub mod watches;

pub use model::{GATEWAY_CONTROLLER_NAME, GatewayWorld, Model, ServedPorts};

/// What one translation did with each route's parents, for status.
#[derive(Debug, Default)]
pub struct GatewayTranslation {
    pub model: Model,
    /// Per route of `model.routes`, per parent of that route (shared, as the routes are).
    pub outcomes: Vec<std::sync::Arc<[ParentOutcome]>>,
    /// With per-Gateway addresses: the data-plane ports of the Gateways (by index into
    /// `model.gateways`) that have an address of their own (accepted, with a programmed
    /// listener and a free slot).
    pub ports: std::collections::BTreeMap<usize, addresses::GatewayPorts>,
}

/// How the rules of one route fared on one parent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParentOutcome {
    /// Rules with at least one entry in the table.
    pub served: std::collections::BTreeSet<usize>,
    /// Rules not served, with the reason (a condition reason) and what stopped them.
    pub dropped: std::collections::BTreeMap<usize, (&'static str, Vec<String>)>,
}

impl ParentOutcome {
    pub fn drop_rule(&mut self, rule: usize, reason: &'static str, message: String) {
        let entry = self.dropped.entry(rule).or_insert((reason, Vec::new()));
        if !entry.1.contains(&message) {
            entry.1.push(message);
        }
    }
}
