//! quic-ingress: a Kubernetes ingress controller whose data plane serves HTTP/3 over QUIC.
//!
//! The one seam is the route table (`routes`): standalone YAML (`config`) compiles into
//! it; the data plane (`proxy`) serves from it and forwards to `upstream` endpoints.

pub mod body;
pub mod client;
pub mod config;
pub mod demo_backend;
pub mod kube;
pub mod proxy;
pub mod routes;
pub mod serve;
pub mod telemetry;
pub mod tls;
pub mod upstream;
