//! The pipeline's request rewriting (path normalisation, hop-by-hop stripping,
//! X-Forwarded-*, upgrades, authority) over arbitrary requests: never panics, and no
//! hop-by-hop header survives except a WebSocket upgrade to an HTTP/1.1 backend.
//!
//! Input: first byte picks the endpoint protocol and flags, then lines: the first is
//! `METHOD URI`, the others `name: value` headers.
#![no_main]

use http::header;
use libfuzzer_sys::fuzz_target;
use quic_ingress::proxy::fuzz_hooks::rewrite_request;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut lines = rest.split(|&b| b == b'\n');
    let Some(first) = lines.next() else { return };
    let mut parts = first.splitn(2, |&b| b == b' ');
    let (Some(method), Some(uri)) = (parts.next(), parts.next()) else { return };
    let Ok(method) = http::Method::from_bytes(method) else { return };
    let Ok(uri) = http::Uri::try_from(uri) else { return };
    let mut req = http::Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = if flags & 0x10 != 0 { http::Version::HTTP_11 } else { http::Version::HTTP_2 };
    for line in lines.take(64) {
        let mut kv = line.splitn(2, |&b| b == b':');
        let (Some(k), Some(v)) = (kv.next(), kv.next()) else { continue };
        let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k), http::HeaderValue::from_bytes(v.trim_ascii())) else {
            continue;
        };
        req.headers_mut().append(k, v);
    }
    let client = ([203, 0, 113, flags], 40000).into();
    let Some(out) = rewrite_request(req, flags & 3, client, flags & 4 != 0, flags & 8 != 0) else { return };
    let h = out.headers();
    for name in [header::TRANSFER_ENCODING, header::PROXY_AUTHORIZATION, header::TRAILER] {
        assert!(!h.contains_key(&name), "{name} passed upstream");
    }
    if let Some(up) = h.get(header::UPGRADE) {
        assert_eq!(up, "websocket", "only WebSocket upgrades pass");
    }
    assert!(h.contains_key("x-forwarded-for"));
    assert!(out.uri().path().starts_with('/') || out.uri().path() == "*");
});
