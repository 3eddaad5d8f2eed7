//! `server.limits`: what one client (or a flood of them) may take of a replica — header
//! sizes and deadlines, handshakes and connections, flow-control windows, body sizes and
//! idle timeouts. Every field has a default that is safe on the internet; the controller
//! fills the same struct from its flags.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{FieldError, HumanDuration};

/// The largest header section a setting may allow. http's `HeaderMap` panics past about
/// 24,576 fields; each field counts at least 32 bytes (RFC 9114 §4.2.2), so 512 KiB stays
/// far below that whatever the client sends.
pub const MAX_HEADER_BYTES_CEILING: u64 = 512 * 1024;

/// Limits applied to every downstream connection and request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The largest request header section: HTTP/3 field section (refused as soon as a
    /// HEADERS frame declares more), HTTP/2 header list, HTTP/1.1 head.
    pub max_header_bytes: u64,
    /// From a stream or connection being ready to the request's headers having arrived.
    pub header_timeout: HumanDuration,
    /// QUIC and TLS-over-TCP handshakes must complete within this.
    pub handshake_timeout: HumanDuration,
    /// Send a stateless Retry (address validation, one extra round trip) to new clients
    /// once this many handshakes are in progress; 0 means always.
    pub retry_above_handshakes: u32,
    /// A file holding the key that seals Retry tokens (32 bytes or more, raw or base64),
    /// shared by replicas; without it each replica makes a random one at start.
    pub retry_token_key_file: Option<PathBuf>,
    /// Open connections (QUIC and TCP together), and from one IP address.
    pub max_connections: u32,
    pub max_connections_per_ip: u32,
    /// Handshakes in progress (QUIC and TCP together), and from one IP address.
    pub max_handshakes: u32,
    pub max_handshakes_per_ip: u32,
    /// QUIC flow control: bytes a client may have in flight on one stream, and on one
    /// connection (what the proxy buffers at most for a client that is not read).
    pub quic_stream_receive_window: u32,
    pub quic_connection_receive_window: u32,
    /// A connection with nothing in flight for this long is closed (QUIC idle timeout,
    /// HTTP/2 without streams).
    pub idle_timeout: HumanDuration,
    /// An HTTP/1.1 keep-alive connection waiting for its next request (no byte of it yet)
    /// is closed after this long. Once a request's first byte is in, `header_timeout` times
    /// the rest of its head.
    pub http1_keep_alive_idle: HumanDuration,
    /// HTTP/2 PING interval, and how long its answer may take before the connection is
    /// dropped.
    pub http2_keep_alive_interval: HumanDuration,
    pub http2_keep_alive_timeout: HumanDuration,
    /// A request body that sends nothing for this long is cut off.
    pub request_body_idle_timeout: HumanDuration,
    /// A client that takes nothing of the response for this long is dropped, and the
    /// backend connection it held is freed.
    pub response_write_timeout: HumanDuration,
    /// A WebSocket tunnel with no byte either way for this long is closed.
    pub upgrade_idle_timeout: HumanDuration,
    /// The largest request body (413 beyond it); a backend group may set its own.
    pub max_request_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            header_timeout: HumanDuration::secs(10),
            handshake_timeout: HumanDuration::secs(10),
            retry_above_handshakes: 128,
            retry_token_key_file: None,
            max_connections: 20_000,
            max_connections_per_ip: 500,
            max_handshakes: 2_000,
            max_handshakes_per_ip: 50,
            quic_stream_receive_window: 256 * 1024,
            quic_connection_receive_window: 4 * 1024 * 1024,
            idle_timeout: HumanDuration::secs(60),
            // ingress-nginx's keep-alive (75 s), and longer than the 60 s idle timeout of
            // common load balancers in front (AWS ALB, Azure), so one of them never reuses a
            // connection just as we close it.
            http1_keep_alive_idle: HumanDuration::secs(75),
            http2_keep_alive_interval: HumanDuration::secs(30),
            http2_keep_alive_timeout: HumanDuration::secs(20),
            request_body_idle_timeout: HumanDuration::secs(30),
            response_write_timeout: HumanDuration::secs(30),
            upgrade_idle_timeout: HumanDuration::secs(600),
            max_request_body_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// The longest any limit's duration may be: longer ones are mistakes, and would overflow
/// clocks further down.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

impl Limits {
    /// Every problem with the limits, each naming its field under `prefix` (like
    /// `server.limits`).
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut err = |field: &str, message: String| {
            errors.push(FieldError { field: format!("{prefix}.{field}"), message });
        };
        if !(1024..=MAX_HEADER_BYTES_CEILING).contains(&self.max_header_bytes) {
            err("max_header_bytes", format!("must be between 1024 and {MAX_HEADER_BYTES_CEILING}"));
        }
        let durations = [
            ("header_timeout", self.header_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
            ("http1_keep_alive_idle", self.http1_keep_alive_idle),
            ("http2_keep_alive_interval", self.http2_keep_alive_interval),
            ("http2_keep_alive_timeout", self.http2_keep_alive_timeout),
            ("request_body_idle_timeout", self.request_body_idle_timeout),
            ("response_write_timeout", self.response_write_timeout),
            ("upgrade_idle_timeout", self.upgrade_idle_timeout),
        ];
        for (field, d) in durations {
            if d.0.is_zero() || d.0 > MAX_DURATION {
                err(field, format!("{d} must be above 0 and at most 7 days"));
            }
        }
        let counts = [
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("max_handshakes", self.max_handshakes),
            ("max_handshakes_per_ip", self.max_handshakes_per_ip),
        ];
        for (field, n) in counts {
            if n == 0 {
                err(field, "must be at least 1".into());
            }
        }
        if self.max_connections_per_ip > self.max_connections {
            err("max_connections_per_ip", "must not be above max_connections".into());
        }
        if self.max_handshakes_per_ip > self.max_handshakes {
            err("max_handshakes_per_ip", "must not be above max_handshakes".into());
        }
        // Below one datagram's worth a stream cannot make progress; above 1 GiB the window
        // no longer bounds anything.
        for (field, w) in [
            ("quic_stream_receive_window", self.quic_stream_receive_window),
            ("quic_connection_receive_window", self.quic_connection_receive_window),
        ] {
            if !(16 * 1024..=1 << 30).contains(&w) {
                err(field, "must be between 16384 and 1073741824 bytes".into());
            }
        }
        if self.quic_stream_receive_window > self.quic_connection_receive_window {
            err("quic_stream_receive_window", "must not be above quic_connection_receive_window".into());
        }
        if self.max_request_body_bytes == 0 {
            err("max_request_body_bytes", "must be at least 1".into());
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(limits: &Limits) -> Vec<String> {
        limits.validate("server.limits").into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(fields(&Limits::default()), Vec::<String>::new());
    }

    #[test]
    fn each_bad_value_is_named() {
        let bad = Limits {
            max_header_bytes: 10 * 1024 * 1024,
            header_timeout: HumanDuration(Duration::ZERO),
            idle_timeout: HumanDuration(Duration::from_secs(365 * 24 * 3600)),
            max_connections: 10,
            max_connections_per_ip: 11,
            max_handshakes: 0,
            quic_stream_receive_window: 100,
            ..Limits::default()
        };
        assert_eq!(
            fields(&bad),
            [
                "server.limits.max_header_bytes",
                "server.limits.header_timeout",
                "server.limits.idle_timeout",
                "server.limits.max_handshakes",
                "server.limits.max_connections_per_ip",
                "server.limits.max_handshakes_per_ip",
                "server.limits.quic_stream_receive_window",
            ]
        );
    }
}
