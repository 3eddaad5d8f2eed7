//! Test helpers for cluster tests: a real control plane, namespaces and object builders.
//!
//! A test binary gets one control plane, shared by its tests ([`TestEnv::shared`]): either
//! a local kube-apiserver with etcd started from the `testenv` binary (see
//! `e2e/README.md`), or a cluster named by `QUIC_INGRESS_TEST_KUBECONFIG`. Each test works
//! in its own [`TestNamespace`] and builds objects with the builders in [`objects`].
//!
//! Tests of the controller run it as a process ([`Controller`], as the unprivileged
//! `controller` identity with [`ControllerRbac`]) and send it HTTP/3 requests; backends
//! that EndpointSlices name run in the test binary's network namespace ([`TestHost`],
//! [`Backend::start_in`]), since the API server refuses loopback endpoints and tests may
//! not send traffic to the machine's own address. [`TestEnv::start_private`] gives a test a
//! control plane of its own to stop and restart.
//!
//! ```no_run
//! use quic_ingress_e2e::{objects::service, TestEnv, TestNamespace};
//! # async fn demo() -> anyhow::Result<()> {
//! let env = TestEnv::shared().await?;
//! let ns = TestNamespace::new(env, "demo").await?;
//! ns.create(&service("web").port("http", 8080).build()).await?;
//! ns.cleanup().await?;
//! # Ok(())
//! # }
//! ```

pub mod backend;
pub mod chart;
pub mod controller;
pub mod env;
pub mod gateway;
pub mod grpc;
pub mod load;
pub mod namespace;
pub mod netns;
pub mod node;
pub mod objects;
pub mod process;
pub mod propagation;
pub mod relay;
pub mod resumption;
pub mod tls_echo;
pub mod wait;

pub use backend::Backend;
pub use controller::{Controller, ControllerRbac};
pub use env::{PrivateTestEnv, TestEnv};
pub use namespace::TestNamespace;
pub use netns::TestHost;
pub use wait::eventually;

/// The identities a local control plane knows, by user name. Against any other cluster
/// they are reached by impersonation from the admin kubeconfig.
pub mod identity {
    /// In group `system:masters`: may do anything.
    pub const ADMIN: &str = "admin";
    /// No groups and no bindings: RBAC forbids everything but discovery.
    pub const NOBODY: &str = "nobody";
    /// No groups and no bindings until a test binds a role to it; the identity the
    /// controller under test runs as.
    pub const CONTROLLER: &str = "controller";
}
