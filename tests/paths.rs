//! Path normalisation through a running proxy: the traversal corpus of issue 11 against a
//! `/public` and an `/admin` rule, over HTTP/3 and over HTTP/1.1 (curl `--path-as-is`, so
//! the client sends the path exactly as written).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use common::*;

fn two_routes(public: &Backend, admin: &Backend) -> String {
    format!(
        "routes:
  - {{id: public, path: /public, path_type: Prefix, backend_group: public}}
  - {{id: admin, path: /admin, path_type: Prefix, backend_group: admin}}
backend_groups:
  - id: public
    backends: [{{url: \"{}\"}}]
  - id: admin
    backends: [{{url: \"{}\"}}]
",
        public.url("http"),
        admin.url("http")
    )
}

/// What each path of the corpus must do: (path, status, backend, path the backend gets).
const CORPUS: &[(&str, u16, &str, &str)] = &[
    ("/public/../admin", 200, "admin", "/admin"),
    ("/public/%2e%2e/admin", 200, "admin", "/admin"),
    ("/public/..%2fadmin", 400, "", ""),
    ("//admin", 200, "admin", "/admin"),
    ("/public/./x//y", 200, "public", "/public/x/y"),
    ("/%70ublic/%7Euser", 200, "public", "/public/~user"),
];

#[tokio::test]
async fn traversals_reach_the_route_of_the_path_the_backend_gets() {
    let (public, admin) = (Backend::start("public").await, Backend::start("admin").await);
    let proxy = Proxy::start(&two_routes(&public, &admin)).await;
    let c = proxy.h3().await;
    for &(path, status, backend, seen) in CORPUS {
        let a = h3_get(&c, "localhost", path).await;
        assert_eq!(a.status, status, "HTTP/3 {path}");
        if status == 200 {
            assert_eq!(a.backend(), backend, "HTTP/3 {path}");
            assert_eq!(a.json()["path"], seen, "HTTP/3 {path}");
        }
    }
    for &(path, status, backend, seen) in CORPUS {
        let out = std::process::Command::new("curl")
            .args(["-sk", "--http1.1", "--path-as-is", "-w", "\n%{http_code}", &proxy.https_url(path)])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        assert_eq!(code, status.to_string(), "HTTP/1.1 {path}: {text}");
        if status == 200 {
            let j: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            assert_eq!((j["backend"].as_str(), j["path"].as_str()), (Some(backend), Some(seen)), "HTTP/1.1 {path}");
        }
    }
    // The proxy still serves after the refused ones.
    assert_eq!(h3_get(&c, "localhost", "/public").await.status, 200);
    // A normal request after the corpus, from the same process.
    assert_eq!(h3_get(&c, "localhost", "/public/ok").await.status, 200);
    proxy.proc.assert_rss_under(96, "the traversal corpus");
}
