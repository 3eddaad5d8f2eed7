//! Header rules applied at the proxy boundary: hop-by-hop stripping, `X-Forwarded-*`,
//! `Forwarded` and `X-Real-IP` (trusting only the proxies configured), and `x-request-id`.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

use crate::net::TrustedProxies;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Marks a request that arrived in TLS early data (RFC 8470); kept end to end.
pub static EARLY_DATA: HeaderName = HeaderName::from_static("early-data");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the headers that describe one connection (RFC 9110 §7.6.1), including those the
/// `Connection` header names. `te: trailers` is kept: HTTP/2 upstreams (gRPC) need it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        headers.remove(name);
    }
    let te_trailers_only =
        headers.get_all(header::TE).iter().all(|v| v.to_str().is_ok_and(|s| s.trim().eq_ignore_ascii_case("trailers")));
    if !te_trailers_only {
        headers.remove(header::TE);
    }
}

/// Sets the forwarding headers for the next hop. What a trusted proxy in front said is
/// kept and this hop appended (`X-Forwarded-For`, `Forwarded`); from anyone else those
/// claims are replaced by the peer itself, so a client cannot pose as another address.
/// `X-Real-IP` is the resolved client; `X-Forwarded-Proto` (`scheme`, `http` or `https`) and
/// `X-Forwarded-Host` are what this proxy received.
pub fn set_forwarded(headers: &mut HeaderMap, hop: &Hop, host: Option<&str>, scheme: &'static str) {
    let peer = hop.peer.to_string();
    // A trusted proxy's earlier hops come first; most requests have none, and pay for no
    // joined string then.
    let previous = |name: &HeaderName| hop.peer_trusted.then(|| joined(headers, name)).flatten();
    let xff = match previous(&X_FORWARDED_FOR) {
        Some(prev) => format!("{prev}, {peer}"),
        None => peer,
    };
    let element = forwarded_element(hop.peer, host, scheme);
    let forwarded = match previous(&FORWARDED) {
        Some(prev) => format!("{prev}, {element}"),
        None => element,
    };
    for (name, value) in [(&X_FORWARDED_FOR, xff), (&FORWARDED, forwarded), (&X_REAL_IP, hop.client.to_string())] {
        match HeaderValue::from_str(&value) {
            Ok(v) => headers.insert(name.clone(), v),
            Err(_) => headers.remove(name),
        };
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    match host.and_then(|h| HeaderValue::from_str(h).ok()) {
        Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

/// Every value of `name`, joined with ", "; `None` when there is nothing but blanks.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut joined = String::new();
    for v in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
        if !joined.is_empty() {
            joined.push_str(", ");
        }
        joined.push_str(v);
    }
    (!joined.trim().is_empty()).then_some(joined)
}

/// Who sent a request: the peer of the connection, whether it is a trusted proxy, and the
/// client address resolved through the trusted hops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    pub peer: IpAddr,
    pub peer_trusted: bool,
    pub client: IpAddr,
}

impl Hop {
    pub fn resolve(headers: &HeaderMap, peer: IpAddr, trusted: &TrustedProxies) -> Self {
        let forwarded_for = headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok());
        Self { peer, peer_trusted: trusted.trusts(peer), client: trusted.client(peer, forwarded_for) }
    }
}

/// This hop's `Forwarded` element (RFC 7239): `for` the peer, the host asked for, the scheme.
fn forwarded_element(peer: IpAddr, host: Option<&str>, scheme: &str) -> String {
    let node = match peer {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    match host.filter(|h| h.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')) {
        Some(h) => format!("for={node};host=\"{h}\";proto={scheme}"),
        None => format!("for={node};proto={scheme}"),
    }
}

/// The request's `x-request-id` if it has a usable one, otherwise a new one (set on the
/// headers too).
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID)
        && !v.is_empty()
        && v.len() <= 128
        && v.to_str().is_ok()
    {
        return v.clone();
    }
    // A v4 UUID from the thread's generator: `Uuid::new_v4` asks the kernel for every id.
    let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut buf = uuid::Uuid::encode_buffer();
    let id =
        HeaderValue::from_str(uuid.hyphenated().encode_lower(&mut buf)).unwrap_or(HeaderValue::from_static("invalid"));
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("te", "gzip"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn te_trailers_survives() {
        let mut h = headers(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get("te").unwrap(), "trailers");
    }

    fn hop(headers: &HeaderMap, peer: &str, trusted: &[&str]) -> Hop {
        let trusted = TrustedProxies::new(trusted.iter().map(|r| r.parse().unwrap()).collect());
        Hop::resolve(headers, peer.parse().unwrap(), &trusted)
    }

    #[test]
    fn from_a_trusted_proxy_forwarding_headers_are_appended_to() {
        let mut h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "http"),
            ("forwarded", "for=203.0.113.9"),
        ]);
        let from = hop(&h, "10.0.0.2", &["10.0.0.0/8"]);
        assert_eq!(from.client, "203.0.113.9".parse::<IpAddr>().unwrap());
        set_forwarded(&mut h, &from, Some("api.example.com"), "https");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.9, 10.0.0.2");
        assert_eq!(h.get("forwarded").unwrap(), "for=203.0.113.9, for=10.0.0.2;host=\"api.example.com\";proto=https");
        assert_eq!(h.get("x-real-ip").unwrap(), "203.0.113.9");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "api.example.com");
    }

    #[test]
    fn from_anyone_else_their_claims_are_replaced_by_the_peer() {
        let mut h =
            headers(&[("x-forwarded-for", "1.2.3.4"), ("x-real-ip", "1.2.3.4"), ("forwarded", "for=1.2.3.4;by=spoof")]);
        let from = hop(&h, "198.51.100.7", &["10.0.0.0/8"]);
        set_forwarded(&mut h, &from, None, "https");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "198.51.100.7");
        assert_eq!(h.get("forwarded").unwrap(), "for=198.51.100.7;proto=https");
        assert_eq!(h.get("x-real-ip").unwrap(), "198.51.100.7");
        assert!(!h.contains_key("x-forwarded-host"));
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, &hop(&HeaderMap::new(), "::1", &[]), None, "https");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "::1");
        assert_eq!(h.get("forwarded").unwrap(), "for=\"[::1]\";proto=https");
    }

    #[test]
    fn a_plaintext_request_says_http_whatever_the_client_claimed() {
        let mut h = headers(&[("x-forwarded-proto", "https")]);
        let from = hop(&h, "198.51.100.7", &[]);
        set_forwarded(&mut h, &from, Some("shop.example"), "http");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("forwarded").unwrap(), "for=198.51.100.7;host=\"shop.example\";proto=http");
    }

    #[test]
    fn request_id_is_kept_or_created() {
        let mut h = headers(&[("x-request-id", "abc")]);
        assert_eq!(ensure_request_id(&mut h), "abc");
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 36);
        let parsed = uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap();
        assert_eq!(parsed.get_version(), Some(uuid::Version::Random), "a v4 UUID");
        assert_ne!(ensure_request_id(&mut HeaderMap::new()), id, "each request gets its own");
        assert_eq!(h.get("x-request-id").unwrap(), &id);
        let mut h = headers(&[("x-request-id", "")]);
        assert_ne!(ensure_request_id(&mut h), "");
    }
}
