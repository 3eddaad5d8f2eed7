//! Failover support: a request body that can be taken back if the upstream never read it,
//! and which methods may be retried after a response. (The per-group retry budget lives
//! with the group, in `upstream`.)

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Method;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, ProxyBody};

/// Methods that may be sent twice (RFC 9110 §9.2.2), so a 502/503 can be retried.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

/// A body handed to one upstream attempt. Until the attempt reads it, the body stays in a
/// shared slot and can be taken back for another attempt; once read, it is gone, so a body
/// that was (even partly) streamed upstream is never replayed.
pub struct Lent {
    slot: Arc<Mutex<Option<ProxyBody>>>,
    taken: Option<ProxyBody>,
}

/// The lender's side: take the body back if it was never read.
pub struct Lender(Arc<Mutex<Option<ProxyBody>>>);

pub fn lend(body: ProxyBody) -> (Lent, Lender) {
    let slot = Arc::new(Mutex::new(Some(body)));
    (Lent { slot: slot.clone(), taken: None }, Lender(slot))
}

impl Lender {
    /// The body, if the attempt never started reading it.
    pub fn take_back(self) -> Option<ProxyBody> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Lent {
    fn with_body<T>(&self, f: impl FnOnce(&ProxyBody) -> T, default: T) -> T {
        match &self.taken {
            Some(b) => f(b),
            None => self.slot.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(f).unwrap_or(default),
        }
    }
}

impl Body for Lent {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.taken.is_none() {
            // First read: the body now belongs to this attempt for good.
            this.taken = this.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
        match this.taken.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.with_body(|b| b.is_end_stream(), true)
    }

    fn size_hint(&self) -> SizeHint {
        self.with_body(|b| b.size_hint(), SizeHint::with_exact(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn an_unread_body_comes_back_and_a_read_one_does_not() {
        let (lent, lender) = lend(crate::body::full("payload"));
        assert_eq!(lent.size_hint().exact(), Some(7));
        drop(lent);
        let body = lender.take_back().expect("never read, so it can be replayed");
        assert_eq!(body.collect().await.unwrap().to_bytes(), "payload");

        let (mut lent, lender) = lend(crate::body::full("payload"));
        let _first = lent.frame().await;
        assert!(lender.take_back().is_none(), "a body that started streaming is never replayed");
    }

    #[test]
    fn idempotent_methods() {
        assert!(is_idempotent(&Method::GET) && is_idempotent(&Method::PUT) && is_idempotent(&Method::DELETE));
        assert!(!is_idempotent(&Method::POST) && !is_idempotent(&Method::PATCH));
    }
}
