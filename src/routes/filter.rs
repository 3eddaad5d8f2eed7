//! Route filters: request and response changes compiled into a route when the table is
//! built (header changes, redirects, rewrites, CORS, ...) and applied in order by the
//! request pipeline's filter phase. A filter is data decided at build time (a header list,
//! a compiled pattern), never parsed per request.

/// One filter of a route. There are none yet: Gateway API filters, Ingress annotations and
/// BackendGroup fields will each compile to a variant here, so each behaviour is written
/// once, in the pipeline's filter phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {}
