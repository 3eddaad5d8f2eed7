//! Test helpers for cluster tests: a real control plane, namespaces and object builders.
