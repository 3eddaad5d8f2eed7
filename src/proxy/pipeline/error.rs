//! The respond_error phase: why the proxy answered instead of a backend, and the status
//! and plain-text body each reason gets. Also how upstream send errors map to reasons.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::body::{ProxyBody, full};
use crate::upstream::SendError;

/// Why the proxy answered instead of the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// A path that cannot be normalised safely (an encoded slash, a bad escape).
    BadPath,
    NoRoute,
    NoHealthyBackend,
    PoolFull,
    Connect,
    ConnectTimeout,
    UpstreamTimeout,
    BadUpstream,
    /// An unsafe method in 0-RTT early data (RFC 8470): the client sends it again once the
    /// handshake is done.
    TooEarly,
    /// The request body is over the size limit.
    PayloadTooLarge,
    /// The route has no backend to send to: its weights are all 0, or the draw fell on a
    /// reference that did not resolve (Gateway API asks for 500 then).
    NoBackend,
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadPath => StatusCode::BAD_REQUEST,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoHealthyBackend | Self::PoolFull => StatusCode::SERVICE_UNAVAILABLE,
            Self::Connect | Self::BadUpstream => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout | Self::ConnectTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::TooEarly => StatusCode::TOO_EARLY,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NoBackend => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::BadPath => "the request path cannot be normalised safely (encoded slash, backslash or bad escape)",
            Self::NoRoute => "no route for this host and path",
            Self::NoHealthyBackend => "no healthy backend",
            Self::PoolFull => "backend connection limit reached",
            Self::Connect => "cannot connect to the backend",
            Self::UpstreamTimeout => "the backend did not answer in time",
            Self::ConnectTimeout => "connecting to the backend timed out",
            Self::BadUpstream => "bad response from the backend",
            Self::TooEarly => "this method is not accepted in TLS early data; send it again after the handshake",
            Self::PayloadTooLarge => "request body too large",
            Self::NoBackend => "the route has no usable backend",
        }
    }

    /// Nothing reached the backend, so any method may be sent elsewhere.
    pub fn nothing_sent(self) -> bool {
        matches!(self, Self::Connect | Self::ConnectTimeout | Self::PoolFull)
    }
}

/// The response the proxy sends for `err`: its status, a one-line reason, and
/// `Retry-After` on a 503.
pub fn respond_error(err: ProxyError) -> Response<ProxyBody> {
    let status = err.status();
    let mut resp = Response::new(full(format!("{} {}\n", status.as_u16(), err.message())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    resp
}

/// Maps a send error to the status the user sees: timeouts 504, everything else 502.
pub fn classify(e: &SendError) -> ProxyError {
    let e = match e {
        SendError::NotSent(_) => return ProxyError::Connect,
        SendError::ConnectTimeout => return ProxyError::ConnectTimeout,
        SendError::Broken(_) => return ProxyError::BadUpstream,
        SendError::Client(e) => e,
    };
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return if e.is_connect() { ProxyError::ConnectTimeout } else { ProxyError::UpstreamTimeout };
        }
        source = err.source();
    }
    if e.is_connect() { ProxyError::Connect } else { ProxyError::BadUpstream }
}

/// An error with its sources, for the log.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_status_and_503s_say_when_to_come_back() {
        for (err, status) in [
            (ProxyError::BadPath, 400),
            (ProxyError::NoRoute, 404),
            (ProxyError::NoHealthyBackend, 503),
            (ProxyError::PoolFull, 503),
            (ProxyError::Connect, 502),
            (ProxyError::BadUpstream, 502),
            (ProxyError::ConnectTimeout, 504),
            (ProxyError::UpstreamTimeout, 504),
            (ProxyError::TooEarly, 425),
            (ProxyError::NoBackend, 500),
        ] {
            let resp = respond_error(err);
            assert_eq!(resp.status().as_u16(), status, "{err:?}");
            assert_eq!(resp.headers().contains_key(header::RETRY_AFTER), status == 503, "{err:?}");
        }
    }

    #[test]
    fn send_errors_map_to_reasons() {
        assert_eq!(classify(&SendError::NotSent("refused".into())), ProxyError::Connect);
        assert_eq!(classify(&SendError::ConnectTimeout), ProxyError::ConnectTimeout);
        assert_eq!(classify(&SendError::Broken("reset".into())), ProxyError::BadUpstream);
    }
}
