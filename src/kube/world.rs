//! The watched objects at one moment, with the look-ups translation needs. Built from the
//! reflector stores before each translation; pure data, so tests build it by hand.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::IngressClass;

use super::cache::Named;
use super::crd::BackendGroup;
use super::records::{IngressRecord, ServiceRecord, SliceRecord};

/// The label EndpointSlices carry to name their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Everything the controller watches.
#[derive(Default, Clone)]
pub struct World {
    pub ingresses: Vec<Arc<IngressRecord>>,
    pub classes: Vec<Arc<IngressClass>>,
    pub services: Vec<Arc<ServiceRecord>>,
    pub slices: Vec<Arc<SliceRecord>>,
    pub secrets: Vec<Arc<Secret>>,
    pub groups: Vec<Arc<BackendGroup>>,
    /// Gateway API objects (and Namespaces, for listener selectors).
    pub gateway: super::gateway::GatewayWorld,
}

/// `World` indexed by namespace and name.
pub struct Indexed<'a> {
    pub services: HashMap<(&'a str, &'a str), &'a ServiceRecord>,
    /// A Service's slices, by the Service's namespace and name.
    pub slices: HashMap<(&'a str, &'a str), Vec<&'a SliceRecord>>,
    pub secrets: HashMap<(&'a str, &'a str), &'a Secret>,
    pub groups: HashMap<(&'a str, &'a str), &'a BackendGroup>,
}

fn key<K: Named>(obj: &K) -> (&str, &str) {
    obj.names()
}

impl World {
    pub fn index(&self) -> Indexed<'_> {
        let mut slices: HashMap<(&str, &str), Vec<&SliceRecord>> = HashMap::new();
        for s in self.slices.iter().filter(|s| !s.service.is_empty()) {
            slices.entry((s.meta.namespace(), &s.service)).or_default().push(s);
        }
        Indexed {
            services: self.services.iter().map(|s| (key(s.as_ref()), s.as_ref())).collect(),
            slices,
            secrets: self.secrets.iter().map(|s| (key(s.as_ref()), s.as_ref())).collect(),
            groups: self.groups.iter().map(|g| (key(g.as_ref()), g.as_ref())).collect(),
        }
    }
}
