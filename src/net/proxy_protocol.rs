//! The PROXY protocol header (HAProxy's spec, versions 2 and 1) that L4 load balancers put
//! before a TCP connection's bytes to say whose connection it is. A pure parser: the
//! listener reads bytes exactly as far as [`parse`] asks, so nothing after the header is
//! consumed, and decides itself whom to believe.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes every version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";
/// Version 1 lines are at most 107 bytes, CRLF included (the spec's bound).
const V1_MAX: usize = 107;
/// The shortest possible version 1 line, `PROXY UNKNOWN\r\n`.
const V1_MIN: usize = 15;
/// The largest version 2 header taken: addresses plus TLVs up to 4 KiB. The length field
/// allows 64 KiB; load balancers send a few hundred bytes at most, so more is a bug or an
/// attack, and it is refused before any of it is read.
pub const V2_MAX: usize = 16 + 4096;

/// A complete header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The client's address, when the header names one (`PROXY` over TCP/IPv4 or IPv6).
    /// `None` for `LOCAL` (the balancer's own health check), `UNKNOWN`, UNSPEC and UNIX:
    /// the connection's peer address is then the one to use.
    pub source: Option<SocketAddr>,
    /// The header's length in bytes: what to consume before the payload.
    pub len: usize,
}

/// What [`parse`] made of the bytes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    Complete(Header),
    /// Not enough bytes yet: read until the buffer holds at least this many. Never more
    /// than the header can be, so reading exactly that far never eats the payload.
    Incomplete {
        at_least: usize,
    },
}

/// Why the bytes are no PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("PROXY protocol version 2 header: unsupported version or command {0:#04x}")]
    VersionCommand(u8),
    #[error("PROXY protocol version 2 header: unknown address family or transport {0:#04x}")]
    Family(u8),
    #[error("PROXY protocol version 2 header of {0} bytes: more than accepted")]
    TooLong(usize),
    #[error("PROXY protocol header: addresses shorter than their family needs")]
    Truncated,
    #[error("PROXY protocol version 1 line: malformed")]
    V1Syntax,
}

/// Parses the start of a connection's bytes as a PROXY protocol header (v2, or v1 text).
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    // Six bytes tell the versions apart, and no header is shorter: ask for them first.
    if buf.len() < V1_PREFIX.len() {
        return if V2_SIGNATURE.starts_with(buf) || V1_PREFIX.starts_with(buf) {
            Ok(Parsed::Incomplete { at_least: V1_PREFIX.len() })
        } else {
            Err(ProxyHeaderError::Missing)
        };
    }
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return parse_v2(buf);
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        return parse_v1(buf);
    }
    Err(ProxyHeaderError::Missing)
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let Some(fixed) = buf.get(..16) else { return Ok(Parsed::Incomplete { at_least: 16 }) };
    let (ver_cmd, family) = (fixed[12], fixed[13]);
    let len = 16 + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    // Version 2; command LOCAL (0) or PROXY (1). Anything else must be refused.
    if ver_cmd >> 4 != 2 || ver_cmd & 0x0f > 1 {
        return Err(ProxyHeaderError::VersionCommand(ver_cmd));
    }
    // Family UNSPEC, INET, INET6, UNIX; transport UNSPEC, STREAM, DGRAM.
    if family >> 4 > 3 || family & 0x0f > 2 {
        return Err(ProxyHeaderError::Family(family));
    }
    if len > V2_MAX {
        return Err(ProxyHeaderError::TooLong(len));
    }
    let Some(body) = buf.get(16..len) else { return Ok(Parsed::Incomplete { at_least: len }) };
    let local = ver_cmd & 0x0f == 0;
    // The addresses come first; what follows them (TLVs) is skipped by `len`.
    let source = match family >> 4 {
        _ if local => None,
        1 => {
            let a = body.get(..12).ok_or(ProxyHeaderError::Truncated)?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([a[8], a[9]])))
        }
        2 => {
            let a = body.get(..36).ok_or(ProxyHeaderError::Truncated)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), u16::from_be_bytes([a[32], a[33]])))
        }
        // UNSPEC and UNIX: no address we can use; the peer's it is.
        _ => None,
    };
    Ok(Parsed::Complete(Header { source, len }))
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX {
            return Err(ProxyHeaderError::V1Syntax);
        }
        // One byte at a time past the shortest line: the CRLF may be the next two.
        return Ok(Parsed::Incomplete { at_least: (buf.len() + 1).max(V1_MIN) });
    };
    let len = end + 2;
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| ProxyHeaderError::V1Syntax)?;
    let mut fields = line.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(ProxyHeaderError::V1Syntax);
    }
    let v4 = match fields.next() {
        Some("TCP4") => true,
        Some("TCP6") => false,
        // Whatever follows UNKNOWN is ignored (the spec's rule).
        Some("UNKNOWN") => return Ok(Parsed::Complete(Header { source: None, len })),
        _ => return Err(ProxyHeaderError::V1Syntax),
    };
    let parts: Vec<&str> = fields.collect();
    let [src, dst, sport, dport] = parts[..] else { return Err(ProxyHeaderError::V1Syntax) };
    let src: IpAddr = src.parse().map_err(|_| ProxyHeaderError::V1Syntax)?;
    let dst: IpAddr = dst.parse().map_err(|_| ProxyHeaderError::V1Syntax)?;
    if src.is_ipv4() != v4 || dst.is_ipv4() != v4 {
        return Err(ProxyHeaderError::V1Syntax);
    }
    let port = |p: &str| p.parse::<u16>().ok().filter(|_| p.bytes().all(|b| b.is_ascii_digit()));
    let (Some(sport), Some(_)) = (port(sport), port(dport)) else { return Err(ProxyHeaderError::V1Syntax) };
    Ok(Parsed::Complete(Header { source: Some(SocketAddr::new(src, sport)), len }))
}

/// A version 2 header, for tests and tools: `PROXY` from `source` to `destination` (same
/// family) with `tlvs` appended, or `LOCAL` when `source` is `None`.
pub fn encode_v2(source: Option<SocketAddr>, destination: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    let mut body = Vec::new();
    let (cmd, family) = match (source, destination) {
        (Some(SocketAddr::V4(s)), SocketAddr::V4(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            body.extend_from_slice(&s.port().to_be_bytes());
            body.extend_from_slice(&d.port().to_be_bytes());
            (0x21, 0x11)
        }
        (Some(SocketAddr::V6(s)), SocketAddr::V6(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            body.extend_from_slice(&s.port().to_be_bytes());
            body.extend_from_slice(&d.port().to_be_bytes());
            (0x21, 0x21)
        }
        // LOCAL, or mixed families (not encodable): no addresses.
        _ => (0x20, 0x00),
    };
    body.extend_from_slice(tlvs);
    out.push(cmd);
    out.push(family);
    out.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Feeds `bytes` to the parser as the listener does: exactly as far as it asks.
    fn read_as_listener(bytes: &[u8]) -> Result<Header, ProxyHeaderError> {
        let mut want = 1;
        for _ in 0..bytes.len() + 2 {
            let buf = &bytes[..want.min(bytes.len())];
            match parse(buf)? {
                Parsed::Complete(h) => return Ok(h),
                Parsed::Incomplete { at_least } => {
                    assert!(at_least > buf.len(), "asks for more than it has");
                    assert!(at_least <= bytes.len(), "would read past the header: {at_least} > {}", bytes.len());
                    want = at_least;
                }
            }
        }
        panic!("no progress");
    }

    #[test]
    fn v2_ipv4_and_ipv6_name_the_source() {
        let h = encode_v2(Some(addr("203.0.113.7:51000")), addr("10.0.0.1:443"), &[]);
        assert_eq!(h.len(), 28);
        let mut bytes = h.clone();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let got = read_as_listener(&h).unwrap();
        assert_eq!(got, Header { source: Some(addr("203.0.113.7:51000")), len: 28 });
        assert_eq!(parse(&bytes).unwrap(), Parsed::Complete(got), "payload after it is left alone");

        let h6 = encode_v2(Some(addr("[2001:db8::7]:443")), addr("[2001:db8::1]:8443"), &[]);
        assert_eq!(read_as_listener(&h6).unwrap().source, Some(addr("[2001:db8::7]:443")));
    }

    #[test]
    fn v2_tlvs_are_skipped_and_local_unspec_unix_use_the_peer() {
        // An AWS-style TLV (type 0xEA, length 5) after the addresses.
        let tlv = [0xea, 0x00, 0x05, b'v', b'p', b'c', b'e', b'1'];
        let h = encode_v2(Some(addr("198.51.100.2:1000")), addr("10.0.0.1:443"), &tlv);
        assert_eq!(read_as_listener(&h).unwrap(), Header { source: Some(addr("198.51.100.2:1000")), len: 36 });

        let local = encode_v2(None, addr("10.0.0.1:443"), &[]);
        assert_eq!(read_as_listener(&local).unwrap(), Header { source: None, len: 16 });
        // LOCAL with addresses present anyway: still the peer.
        let mut local_inet = encode_v2(Some(addr("198.51.100.2:1000")), addr("10.0.0.1:443"), &[]);
        local_inet[12] = 0x20;
        assert_eq!(read_as_listener(&local_inet).unwrap().source, None);

        for family in [0x00, 0x31, 0x32] {
            let mut h = encode_v2(None, addr("10.0.0.1:443"), &[0u8; 216]);
            h[12] = 0x21;
            h[13] = family;
            assert_eq!(read_as_listener(&h).unwrap(), Header { source: None, len: 232 }, "{family:#x}");
        }
    }

    #[test]
    fn v2_refuses_what_it_cannot_believe() {
        let good = encode_v2(Some(addr("203.0.113.7:1")), addr("10.0.0.1:443"), &[]);
        let with = |i: usize, b: u8| {
            let mut h = good.clone();
            h[i] = b;
            h
        };
        assert_eq!(parse(&with(12, 0x11)), Err(ProxyHeaderError::VersionCommand(0x11)), "version 1 binary");
        assert_eq!(parse(&with(12, 0x22)), Err(ProxyHeaderError::VersionCommand(0x22)), "unknown command");
        assert_eq!(parse(&with(13, 0x41)), Err(ProxyHeaderError::Family(0x41)));
        assert_eq!(parse(&with(13, 0x13)), Err(ProxyHeaderError::Family(0x13)));
        // INET with fewer than 12 address bytes.
        let mut short = with(15, 8);
        short.truncate(24);
        assert_eq!(parse(&short), Err(ProxyHeaderError::Truncated));
        let mut huge = with(14, 0xff);
        huge[15] = 0xff;
        assert_eq!(parse(&huge[..16]), Err(ProxyHeaderError::TooLong(16 + 65535)), "refused from the fixed part");
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX\n"), Err(ProxyHeaderError::Missing));
    }

    #[test]
    fn anything_else_is_no_header() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyHeaderError::Missing));
        assert_eq!(parse(&[0x16, 0x03, 0x01]), Err(ProxyHeaderError::Missing), "a TLS ClientHello");
        assert_eq!(parse(b"PRI * HTTP/2.0"), Err(ProxyHeaderError::Missing), "an h2c preface");
        assert_eq!(parse(b""), Ok(Parsed::Incomplete { at_least: 6 }), "nothing yet");
        assert_eq!(parse(b"\r\n"), Ok(Parsed::Incomplete { at_least: 6 }));
        assert_eq!(parse(b"\r\n\r\n\0\r"), Ok(Parsed::Incomplete { at_least: 16 }));
    }

    #[test]
    fn v1_lines() {
        let h = read_as_listener(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n").unwrap();
        assert_eq!(h, Header { source: Some(addr("203.0.113.7:51000")), len: 43 });
        let h = read_as_listener(b"PROXY TCP6 2001:db8::7 2001:db8::1 1 443\r\n").unwrap();
        assert_eq!(h.source, Some(addr("[2001:db8::7]:1")));
        assert_eq!(read_as_listener(b"PROXY UNKNOWN\r\n").unwrap(), Header { source: None, len: 15 });
        assert_eq!(read_as_listener(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").unwrap().source, None);
        for bad in [
            &b"PROXY TCP4 203.0.113.7 10.0.0.1 51000\r\n"[..],
            b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",
            b"PROXY TCP6 203.0.113.7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 +1 2\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 70000 2\r\n",
            b"PROXY UDP4 203.0.113.7 10.0.0.1 1 2\r\n",
            b"PROXY  TCP4 203.0.113.7 10.0.0.1 1 2\r\n",
        ] {
            assert_eq!(read_as_listener(bad), Err(ProxyHeaderError::V1Syntax), "{}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 120]].concat();
        assert_eq!(read_as_listener(&long), Err(ProxyHeaderError::V1Syntax), "no CRLF within 107 bytes");
    }
}
