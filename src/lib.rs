//! quic-ingress: a Kubernetes ingress controller whose data plane serves HTTP/3 over QUIC.
//!
//! The one seam is the route table (`routes`): standalone YAML (`config`) compiles into
//! it; the data plane (`proxy`) serves from it and forwards to `upstream` endpoints.

pub mod body;
pub mod client;
pub mod config;
pub mod demo_backend;
pub mod kube;
pub mod net;
pub mod proxy;
pub mod routes;
pub mod serve;
pub mod telemetry;
pub mod tls;
pub mod upstream;

/// The layering README's Layout section describes, kept true: lower modules never import
/// upper ones, and no two modules import each other.
#[cfg(test)]
mod layers {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Lowest first: each may import only modules before it.
    const LOWER: &[&str] = &["body", "net", "telemetry", "tls", "upstream", "routes"];
    const UPPER: &[&str] = &["proxy", "config", "kube", "serve", "client", "demo_backend"];

    /// `crate::X` names in every file of module `module` (a file or a directory).
    fn imports(module: &str) -> BTreeSet<String> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src.join(format!("{module}.rs"))];
        let mut dirs = vec![src.join(module)];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() { dirs.push(path) } else { files.push(path) }
            }
        }
        let mut found = BTreeSet::new();
        for text in files.iter().filter_map(|f| std::fs::read_to_string(f).ok()) {
            for (i, _) in text.match_indices("crate::") {
                let name: String =
                    text[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if name != module && (LOWER.contains(&name.as_str()) || UPPER.contains(&name.as_str())) {
                    found.insert(name);
                }
            }
        }
        found
    }

    #[test]
    fn lower_modules_import_only_lower_ones_and_no_two_import_each_other() {
        let graph: BTreeMap<&str, BTreeSet<String>> = LOWER.iter().chain(UPPER).map(|m| (*m, imports(m))).collect();
        assert!(!graph["upstream"].is_empty() && !graph["proxy"].is_empty(), "the scan finds imports: {graph:?}");
        for (rank, module) in LOWER.iter().enumerate() {
            for dep in &graph[module] {
                let allowed = LOWER[..rank].contains(&dep.as_str());
                assert!(allowed, "{module} imports {dep}: a lower module imports only {:?}", &LOWER[..rank]);
            }
        }
        for (module, deps) in &graph {
            for dep in deps {
                assert!(!graph[dep.as_str()].contains(*module), "{module} and {dep} import each other");
            }
        }
    }
}
