//! GRPCRoute in the model: what a gRPC method match means as an HTTP path (gRPC calls are
//! HTTP/2 POSTs to `/{service}/{method}`), which filters a GRPCRoute may use, that its
//! backends are spoken to as h2c whatever their Service says, and the spec's rule that an
//! HTTPRoute and a GRPCRoute may not share a hostname on one listener.

use super::api::GRPCMethodMatch;
use super::model::{Attachment, Filter, PathMatch, RouteImage, RouteKind, intersect};

/// How a backend's endpoints are spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendProtocol {
    /// As the Service port's `appProtocol` says (HTTP/1.1 when unset).
    #[default]
    AppProtocol,
    /// HTTP/2 with prior knowledge: gRPC needs HTTP/2, and a Service port rarely says
    /// `appProtocol: kubernetes.io/h2c` (the spec lets the route type decide).
    H2c,
}

/// The protocol backends of a `kind` route are reached with.
pub fn backend_protocol(kind: RouteKind) -> BackendProtocol {
    match kind {
        RouteKind::Http => BackendProtocol::AppProtocol,
        RouteKind::Grpc => BackendProtocol::H2c,
    }
}

/// The path a gRPC method match selects: Exact service and method → that one path;
/// service only → every method of the service; neither → every path. A method without a
/// service, and the RegularExpression type, are RegularExpression paths.
pub fn method_path(m: Option<&GRPCMethodMatch>) -> PathMatch {
    let Some(m) = m else { return PathMatch::Prefix("/".into()) };
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    if m.type_.as_deref() == Some("RegularExpression") {
        return PathMatch::RegularExpression(format!("/{}/{}", service.unwrap_or("[^/]+"), method.unwrap_or("[^/]+")));
    }
    match (service, method) {
        (Some(s), Some(m)) => PathMatch::Exact(format!("/{s}/{m}")),
        (Some(s), None) => PathMatch::Prefix(format!("/{s}/")),
        // The service is one path segment of any value: a regular expression escaping the
        // method name (gRPC names are letters, digits and `_`, so the escape is for safety).
        (None, Some(m)) => PathMatch::RegularExpression(format!("/[^/]+/{}", regex_escape(m))),
        (None, None) => PathMatch::Prefix("/".into()),
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// GRPCRoute filters are RequestHeaderModifier, ResponseHeaderModifier, RequestMirror and
/// ExtensionRef; any other type is not one (kept by name, so it is refused, not served).
pub fn filter_allowed(f: Filter) -> Filter {
    match f {
        Filter::RequestHeaderModifier(_)
        | Filter::ResponseHeaderModifier(_)
        | Filter::RequestMirror { .. }
        | Filter::ExtensionRef(_)
        | Filter::Invalid(_) => f,
        other => Filter::Invalid(format!("{} (not a GRPCRoute filter)", other.type_name())),
    }
}

/// Whether two attachments' host lists share a host (`None`: any host).
fn hosts_intersect(a: &[Option<String>], b: &[Option<String>]) -> bool {
    a.iter().any(|x| {
        b.iter().any(|y| match (x, y) {
            (None, _) | (_, None) => true,
            (Some(x), Some(y)) => !intersect(Some(x), std::slice::from_ref(y)).is_empty(),
        })
    })
}

/// The spec (GRPCRouteSpec.hostnames): when an HTTPRoute and a GRPCRoute attached to one
/// listener share a hostname, exactly one is accepted there: the oldest, then the first
/// by namespace/name (the order of `routes`). The other loses that listener; a parent
/// left with no listener is `Accepted=False`. The spec names no reason;
/// `NotAllowedByListeners` is the spec's reason for a listener refusing a route.
pub fn refuse_kind_conflicts(routes: &mut [RouteImage]) {
    /// A route kept on a listener: its hosts there, and `namespace/name`.
    type Kept = (Vec<Option<String>>, String);
    // Per (gateway, listener, kind): the routes kept there so far. By kind, so a route is
    // compared only with the routes of the other kind (with 10,000 HTTPRoutes and no
    // GRPCRoute, comparing each with every other took a quarter of a table build).
    let mut kept: std::collections::HashMap<(usize, usize, RouteKind), Vec<Kept>> = Default::default();
    for route in routes.iter_mut() {
        let kind = route.object.kind();
        let rival_kind = match kind {
            RouteKind::Http => RouteKind::Grpc,
            RouteKind::Grpc => RouteKind::Http,
        };
        let me = format!("{}/{}", route.key.namespace, route.key.name);
        for parent in &mut route.parents {
            let Ok(attachments) = &mut parent.attached else { continue };
            let mut refused = Vec::new();
            attachments.retain(|a: &Attachment| {
                let rivals = kept.get(&(parent.gateway, a.listener, rival_kind));
                match rivals.and_then(|r| r.iter().find(|(hosts, _)| hosts_intersect(hosts, &a.hosts))) {
                    Some((_, name)) => {
                        refused.push(format!("{} {name}", rival_kind.name()));
                        false
                    }
                    None => {
                        kept.entry((parent.gateway, a.listener, kind)).or_default().push((a.hosts.clone(), me.clone()));
                        true
                    }
                }
            });
            if attachments.is_empty() {
                parent.attached = Err((
                    "NotAllowedByListeners",
                    format!(
                        "the listener already serves these hostnames for the older {}; an HTTPRoute and a GRPCRoute may not share a hostname on one listener",
                        refused.join(", ")
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(service: Option<&str>, method: Option<&str>) -> GRPCMethodMatch {
        GRPCMethodMatch { type_: None, service: service.map(Into::into), method: method.map(Into::into) }
    }

    #[test]
    fn method_matches_map_to_the_paths_grpc_calls_use() {
        let m = exact(Some("grpc.health.v1.Health"), Some("Check"));
        assert_eq!(method_path(Some(&m)), PathMatch::Exact("/grpc.health.v1.Health/Check".into()));
        let s = exact(Some("echo.Echo"), None);
        assert_eq!(method_path(Some(&s)), PathMatch::Prefix("/echo.Echo/".into()));
        assert_eq!(method_path(None), PathMatch::Prefix("/".into()));
        assert_eq!(method_path(Some(&exact(Some(""), Some("")))), PathMatch::Prefix("/".into()));
        // A method of any service: one segment of any value, so a regular expression.
        assert_eq!(method_path(Some(&exact(None, Some("Echo")))), PathMatch::RegularExpression("/[^/]+/Echo".into()));
        let mut re = exact(Some("echo\\..*"), None);
        re.type_ = Some("RegularExpression".into());
        assert_eq!(method_path(Some(&re)), PathMatch::RegularExpression("/echo\\..*/[^/]+".into()));
        assert_eq!(regex_escape("a.b"), "a\\.b");
    }

    #[test]
    fn only_grpc_filter_types_pass_and_backends_are_h2c() {
        let kept = filter_allowed(Filter::Invalid("RequestHeaderModifier".into()));
        assert_eq!(kept, Filter::Invalid("RequestHeaderModifier".into()));
        let redirect = filter_allowed(Filter::RequestRedirect(Default::default()));
        assert_eq!(redirect, Filter::Invalid("RequestRedirect (not a GRPCRoute filter)".into()));
        assert_eq!(backend_protocol(RouteKind::Grpc), BackendProtocol::H2c);
        assert_eq!(backend_protocol(RouteKind::Http), BackendProtocol::AppProtocol);
    }

    #[test]
    fn host_lists_intersect_by_name_wildcard_or_any_host() {
        let h = |v: &[&str]| v.iter().map(|x| Some(x.to_string())).collect::<Vec<_>>();
        assert!(hosts_intersect(&h(&["a.example.com"]), &h(&["b.example.com", "a.example.com"])));
        assert!(!hosts_intersect(&h(&["a.example.com"]), &h(&["b.example.com"])));
        assert!(hosts_intersect(&h(&["*.example.com"]), &h(&["x.y.example.com"])));
        assert!(hosts_intersect(&[None], &h(&["b.example.com"])));
    }
}
