//! Filters and matches through a running standalone proxy, over HTTP/3 (the crate's own
//! client) and HTTP/2 (curl): header modifiers, a header match, a redirect, a rewrite the
//! real backend sees, a weighted split, and a CORS preflight answered by the proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use common::*;
use quic_ingress::client::RequestBody;

fn config(a: &Backend, b: &Backend) -> String {
    format!(
        r#"routes:
  - id: canary
    path: /api
    match: {{headers: [{{name: X-Canary, value: "yes"}}]}}
    backend_group: b
  - id: api
    path: /api
    backend_group: a
    filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {{set: [{{name: x-env, value: prod}}], remove: [x-secret]}}
      - type: ResponseHeaderModifier
        responseHeaderModifier: {{add: [{{name: x-served-by, value: quic-ingress}}]}}
  - id: old
    path: /old
    filters:
      - type: RequestRedirect
        requestRedirect: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /new}}, statusCode: 301}}
  - id: shop
    path: /shop
    backend_group: a
    filters:
      - type: URLRewrite
        urlRewrite: {{hostname: internal.example, path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}
  - id: split
    path: /split
    backend_refs: [{{name: a, weight: 3}}, {{name: b, weight: 1}}]
  - id: cors
    path: /cors
    backend_group: a
    filters:
      - type: CORS
        cors: {{allowOrigins: ["https://*.app.example"], allowMethods: [GET, PUT], allowHeaders: [x-token], maxAge: 600}}
backend_groups:
  - id: a
    backends: [{{url: "{}"}}]
  - id: b
    backends: [{{url: "{}"}}]
"#,
        a.url("http"),
        b.url("h2c")
    )
}

/// One request over HTTP/2 with curl: status, response headers (lower-case names), body.
fn h2(proxy: &Proxy, method: &str, path: &str, headers: &[&str]) -> (u16, http::HeaderMap, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sk", "--http2", "-D", "-", "-X", method, &proxy.https_url(path)]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    assert!(status_line.starts_with("HTTP/2"), "curl did not speak HTTP/2: {text}");
    let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut map = http::HeaderMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            map.append(http::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(), v.trim().parse().unwrap());
        }
    }
    (status, map, body.to_string())
}

fn h3_req(method: &str, path: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    let mut req = http::Request::builder().method(method).uri(format!("https://localhost{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(()).unwrap()
}

#[tokio::test]
async fn filters_and_matches_over_http3_and_http2() {
    let (a, b) = (Backend::start("a").await, Backend::start_with("b", "h2").await);
    let proxy = Proxy::start(&config(&a, &b)).await;
    let c = proxy.h3().await;

    // Header modifiers: the backend sees the request side, the client the response side.
    let ans = h3_send(&c, h3_req("GET", "/api/x", &[("x-env", "dev"), ("x-secret", "s")]), RequestBody::Empty).await;
    assert_eq!((ans.status, ans.backend()), (200, "a".to_string()));
    assert_eq!(ans.json()["headers"]["x-env"], "prod");
    assert!(ans.json()["headers"].get("x-secret").is_none(), "{}", ans.json());
    assert_eq!(ans.headers["x-served-by"], "quic-ingress");
    let (status, headers, body) = h2(&proxy, "GET", "/api/x", &["x-env: dev", "x-secret: s"]);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, j["headers"]["x-env"].as_str()), (200, Some("prod")));
    assert!(j["headers"].get("x-secret").is_none());
    assert_eq!(headers["x-served-by"], "quic-ingress");

    // A header match takes the same path elsewhere.
    let ans = h3_send(&c, h3_req("GET", "/api/x", &[("x-canary", "yes")]), RequestBody::Empty).await;
    assert_eq!(ans.backend(), "b");
    let j: serde_json::Value = serde_json::from_str(&h2(&proxy, "GET", "/api/x", &["X-Canary: yes"]).2).unwrap();
    assert_eq!(j["backend"], "b");

    // A redirect: the proxy answers, keeping the query.
    let ans = h3_get(&c, "localhost", "/old/page?q=1").await;
    assert_eq!(ans.status, 301);
    assert_eq!(ans.headers["location"], "https://localhost/new/page?q=1");
    let (status, headers, _) = h2(&proxy, "GET", "/old/page", &[]);
    assert_eq!(status, 301);
    assert_eq!(headers["location"], format!("https://127.0.0.1:{}/new/page", proxy.addr.port()));

    // A rewrite: the real backend gets the new path and host.
    let ans = h3_get(&c, "localhost", "/shop/cart?x=1").await;
    assert_eq!(ans.json()["path"], "/cart");
    assert_eq!(ans.json()["host"], "internal.example");
    let j: serde_json::Value = serde_json::from_str(&h2(&proxy, "GET", "/shop", &[]).2).unwrap();
    assert_eq!((j["path"].as_str(), j["host"].as_str()), (Some("/"), Some("internal.example")));

    // A 3:1 weighted split over real requests.
    let n = 200;
    let mut to_a = 0;
    for _ in 0..n {
        let ans = h3_get(&c, "localhost", "/split").await;
        assert_eq!(ans.status, 200);
        to_a += usize::from(ans.backend() == "a");
    }
    assert!((120..=180).contains(&to_a), "3:1 over {n} requests, a got {to_a}");

    // CORS: a preflight answered by the proxy (no backend body), an actual request marked.
    let preflight = [("origin", "https://web.app.example"), ("access-control-request-method", "PUT")];
    let ans = h3_send(&c, h3_req("OPTIONS", "/cors/item", &preflight), RequestBody::Empty).await;
    assert_eq!(ans.status, 200);
    assert_eq!(ans.headers["access-control-allow-origin"], "https://web.app.example");
    assert_eq!(ans.headers["access-control-allow-methods"], "GET, PUT");
    assert_eq!(ans.headers["access-control-max-age"], "600");
    assert!(ans.body.is_empty() && ans.backend().is_empty(), "no backend was asked");
    let (status, headers, body) = h2(
        &proxy,
        "OPTIONS",
        "/cors/item",
        &[
            "Origin: https://web.app.example",
            "Access-Control-Request-Method: PUT",
            "Access-Control-Request-Headers: x-token",
        ],
    );
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(headers["access-control-allow-headers"], "x-token");
    let (_, headers, _) = h2(&proxy, "GET", "/cors/item", &["Origin: https://web.app.example"]);
    assert_eq!(headers["access-control-allow-origin"], "https://web.app.example");
    let (_, headers, _) = h2(&proxy, "GET", "/cors/item", &["Origin: https://evil.example"]);
    assert!(!headers.contains_key("access-control-allow-origin"));
}
