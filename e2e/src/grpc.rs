//! gRPC in cluster tests without a gRPC library: the Gateway API suite's echo server
//! (`echo-basic` with `GRPC_ECHO_SERVER=1`, built by `make -f e2e/gateway.mk echo-basic`)
//! run in the test host, and unary calls made by hand: an HTTP POST of
//! `application/grpc` with `te: trailers` and one length-prefixed message, whose answer is
//! read as messages plus `grpc-status` from the trailers (or from the headers of a
//! trailers-only answer). A small protobuf reader decodes the echo server's answer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bytes::{Buf, Bytes};
use quic_ingress::client::ClientResponse;

use crate::netns::TestHost;
use crate::process::{TestProcess, log_path, repo_root};

/// Set by `make test-e2e`: the echo-basic binary.
pub const ECHO_BASIC_VAR: &str = "QUIC_INGRESS_ECHO_BASIC";

/// The echo service's full name and the path of its methods.
pub const ECHO_SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";

/// The echo-basic binary: `QUIC_INGRESS_ECHO_BASIC`, else what `make -f e2e/gateway.mk`
/// builds.
pub fn echo_basic_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os(ECHO_BASIC_VAR).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(bin));
    }
    let out = Command::new("make")
        .args(["-s", "--no-print-directory", "-f", "e2e/gateway.mk", "echo-basic-print-bin"])
        .current_dir(repo_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running make echo-basic-print-bin")?;
    if !out.status.success() {
        bail!("make echo-basic-print-bin failed ({})", out.status);
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// The suite's gRPC echo server in the test host, killed on drop.
pub struct GrpcEcho {
    pub addr: SocketAddr,
    _process: TestProcess,
}

impl GrpcEcho {
    /// Starts it on `port` of the test host as pod `pod` (echoed in every answer), and
    /// returns once it accepts connections.
    pub async fn start(host: &'static TestHost, port: u16, pod: &str) -> anyhow::Result<GrpcEcho> {
        let mut cmd = Command::new(echo_basic_bin()?);
        cmd.env("GRPC_ECHO_SERVER", "1").env("HTTP_PORT", port.to_string()).env("POD_NAME", pod);
        cmd.env("NAMESPACE", "e2e").env("SERVICE_NAME", pod);
        let mut process = host.spawn(&format!("grpc echo {pod}"), &cmd, &log_path(&format!("grpc-echo-{pod}"))?)?;
        let addr = SocketAddr::new(host.ip(), port);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            process.check_running()?;
            let connect = tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr)).await;
            if matches!(connect, Ok(Ok(_))) {
                return Ok(GrpcEcho { addr, _process: process });
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "grpc echo on {addr} not up in 10 s\n{}",
                process.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The request of a unary call to `/{service}/{method}` on `host` (its body: [`frame`]).
pub fn call(host: &str, service: &str, method: &str) -> anyhow::Result<http::Request<()>> {
    Ok(http::Request::post(format!("https://{host}/{service}/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?)
}

/// One gRPC message: uncompressed flag, 4-byte big-endian length, the message.
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.into()
}

/// The answer to a unary call.
#[derive(Debug)]
pub struct Reply {
    pub http_status: u16,
    pub version: http::Version,
    /// From the trailers, or the headers of a trailers-only answer.
    pub grpc_status: Option<String>,
    pub grpc_message: Option<String>,
    /// Whether `grpc-status` came in trailers (after the body), not headers.
    pub status_in_trailers: bool,
    pub messages: Vec<Bytes>,
}

/// Reads a call's answer: its length-prefixed messages and its status.
pub async fn reply(resp: ClientResponse) -> anyhow::Result<Reply> {
    let (http_status, version, headers) = (resp.status.as_u16(), resp.version, resp.headers.clone());
    let (body, trailers) = resp.bytes_and_trailers().await?;
    let get = |m: &http::HeaderMap, name: &str| m.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let in_trailers = trailers.as_ref().and_then(|t| get(t, "grpc-status"));
    let status_in_trailers = in_trailers.is_some();
    let grpc_status = in_trailers.or_else(|| get(&headers, "grpc-status"));
    let grpc_message = trailers.as_ref().and_then(|t| get(t, "grpc-message")).or_else(|| get(&headers, "grpc-message"));
    let mut messages = Vec::new();
    // An answer that is not gRPC (the proxy's 404, say) has a body of its own.
    let is_grpc = get(&headers, "content-type").is_some_and(|t| t.starts_with("application/grpc"));
    let mut rest = if is_grpc { body } else { Bytes::new() };
    while !rest.is_empty() {
        ensure!(rest.len() >= 5, "a truncated gRPC message prefix: {rest:?}");
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        rest.advance(5);
        ensure!(rest.len() >= len, "a gRPC message of {len} bytes with {} left", rest.len());
        messages.push(rest.split_to(len));
    }
    Ok(Reply { http_status, version, grpc_status, grpc_message, status_in_trailers, messages })
}

/// A protobuf field's value: a varint or length-delimited bytes (the wire types the echo
/// messages use; fixed-width ones are skipped).
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Varint(u64),
    Bytes(Bytes),
}

fn varint(buf: &mut Bytes) -> anyhow::Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        ensure!(buf.has_remaining(), "a truncated varint");
        let b = buf.get_u8();
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    bail!("a varint longer than 10 bytes")
}

/// The fields of one protobuf message, in order.
pub fn fields(mut buf: Bytes) -> anyhow::Result<Vec<(u64, Field)>> {
    let mut out = Vec::new();
    while buf.has_remaining() {
        let key = varint(&mut buf)?;
        let (number, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((number, Field::Varint(varint(&mut buf)?))),
            2 => {
                let len = varint(&mut buf)? as usize;
                ensure!(buf.remaining() >= len, "a field of {len} bytes with {} left", buf.remaining());
                out.push((number, Field::Bytes(buf.split_to(len))));
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                ensure!(buf.remaining() >= n, "a truncated fixed field");
                buf.advance(n);
            }
            w => bail!("protobuf wire type {w} is not read here"),
        }
    }
    Ok(out)
}

/// The first length-delimited field `number` of a message.
pub fn bytes_field(message: &Bytes, number: u64) -> anyhow::Result<Option<Bytes>> {
    Ok(fields(message.clone())?.into_iter().find_map(|(n, f)| match f {
        Field::Bytes(b) if n == number => Some(b),
        _ => None,
    }))
}

/// What the echo server says it saw: the `EchoResponse.assertions` fields
/// `fully_qualified_method`, `authority` and `context.pod`.
#[derive(Debug, PartialEq)]
pub struct Echoed {
    pub method: String,
    pub authority: String,
    pub pod: String,
}

pub fn echoed(response: &Bytes) -> anyhow::Result<Echoed> {
    let text = |b: Option<Bytes>| String::from_utf8_lossy(&b.unwrap_or_default()).into_owned();
    let assertions = bytes_field(response, 1)?.context("EchoResponse without assertions")?;
    let context = bytes_field(&assertions, 4)?.unwrap_or_default();
    Ok(Echoed {
        method: text(bytes_field(&assertions, 1)?),
        authority: text(bytes_field(&assertions, 3)?),
        pod: text(bytes_field(&context, 4)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_and_fields_read() {
        assert_eq!(&frame(b"ab")[..], &[0, 0, 0, 0, 2, b'a', b'b']);
        // Assertions { fully_qualified_method: "/s/m", authority: "h", context { pod: "p" } }
        let assertions = [&[0x0a, 4][..], b"/s/m", &[0x1a, 1], b"h", &[0x22, 3, 0x22, 1], b"p"].concat();
        let response = Bytes::from([&[0x0a, assertions.len() as u8][..], &assertions, &[0x10, 0x96, 0x01]].concat());
        let e = echoed(&response).unwrap();
        assert_eq!(e, Echoed { method: "/s/m".into(), authority: "h".into(), pod: "p".into() });
        assert_eq!(fields(response).unwrap()[1], (2, Field::Varint(150)));
        assert!(fields(Bytes::from_static(&[0x0a, 5, 1])).is_err(), "a length past the end");
    }
}
