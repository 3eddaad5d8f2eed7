//! Reading a PROXY protocol header off a TCP connection from a trusted load balancer:
//! byte-exact (what follows is TLS or HTTP, and none of it may be eaten), within a
//! deadline, and bounded in size by the parser.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::net::proxy_protocol::{self, Header, Parsed, ProxyHeaderError};

/// Why a connection that had to start with a PROXY header is closed.
#[derive(Debug, thiserror::Error)]
pub enum HeaderReadError {
    #[error("no complete PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Invalid(#[from] ProxyHeaderError),
}

/// Reads one header from `stream`, asking it for no byte past the header's end.
pub async fn read<S: AsyncRead + Unpin>(stream: &mut S, deadline: Duration) -> Result<Header, HeaderReadError> {
    tokio::time::timeout(deadline, read_exact_header(stream)).await.map_err(|_| HeaderReadError::Timeout(deadline))?
}

async fn read_exact_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Header, HeaderReadError> {
    let mut buf = Vec::with_capacity(64);
    // Each round either completes, fails, or asks for strictly more bytes, never more
    // than `V2_MAX`: the loop ends.
    loop {
        match proxy_protocol::parse(&buf)? {
            Parsed::Complete(header) => return Ok(header),
            Parsed::Incomplete { at_least } => {
                let have = buf.len();
                if at_least <= have || at_least > proxy_protocol::V2_MAX {
                    return Err(ProxyHeaderError::TooLong(at_least).into());
                }
                buf.resize(at_least, 0);
                stream.read_exact(&mut buf[have..]).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::proxy_protocol::encode_v2;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn reads_the_header_and_leaves_the_payload() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let header = encode_v2(Some("203.0.113.7:4000".parse().unwrap()), "10.0.0.1:443".parse().unwrap(), &[]);
        client.write_all(&header).await.unwrap();
        client.write_all(b"\x16\x03\x01rest").await.unwrap();
        let got = read(&mut server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(got.source, Some("203.0.113.7:4000".parse().unwrap()));
        let mut rest = [0u8; 7];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"\x16\x03\x01rest");
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_header_times_out_and_garbage_fails_at_once() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"\r\n\r\n").await.unwrap();
        let err = read(&mut server, Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(err, HeaderReadError::Timeout(_)), "{err}");

        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let err = read(&mut server, Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(err, HeaderReadError::Invalid(ProxyHeaderError::Missing)), "{err}");

        let (client, mut server) = tokio::io::duplex(1024);
        drop(client);
        assert!(matches!(read(&mut server, Duration::from_secs(2)).await, Err(HeaderReadError::Io(_))));
    }
}
