//! Kubernetes mode: the BackendGroup CRD, watches of the objects that make routes, their
//! translation into a `RouteTable`, and status written back.

pub mod cache;
pub mod controller;
pub mod crd;
pub mod delta;
pub mod endpoints;
pub mod gateway;
pub mod leader;
pub mod ownership;
pub mod policy;
pub mod records;
pub mod status;
pub mod ticket_keys;
pub mod translate;
pub mod watches;
pub mod world;
