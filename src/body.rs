//! Body types shared by listeners, the pipeline and upstream clients: one boxed streaming
//! body, and a wrapper that keeps something alive (a connection slot) until a body ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The streaming body type on both sides of the proxy.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(data: impl Into<Bytes>) -> ProxyBody {
    Full::new(data.into()).map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any body whose errors convert into `BoxError`.
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

pin_project_lite::pin_project! {
    /// A body that owns `guard` until the body is dropped.
    pub struct Guarded<B, G> {
        #[pin]
        inner: B,
        guard: G,
    }
}

impl<B, G> Guarded<B, G> {
    pub fn new(inner: B, guard: G) -> Self {
        Self { inner, guard }
    }
}

impl<B: Body, G> Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// Fails a body that sends nothing for `idle`: a stalled peer must not hold a stream
    /// (and a connection slot) forever.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        #[pin]
        timer: tokio::time::Sleep,
        idle: std::time::Duration,
        // The clock starts at the first poll: a body may wait (for a connection slot)
        // before anyone reads it, and that wait is not the peer's silence.
        armed: bool,
        // Counted when the timer fires (a `quic_ingress_limit_hits_total` series).
        counted: Option<prometheus::IntCounter>,
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: std::time::Duration) -> Self {
        Self { inner, timer: tokio::time::sleep(idle), idle, armed: false, counted: None }
    }

    /// Counts a timeout on `counter`.
    pub fn on_timeout(mut self, counter: prometheus::IntCounter) -> Self {
        self.counted = Some(counter);
        self
    }
}

/// The error an idle body ends with.
#[derive(Debug, thiserror::Error)]
#[error("no data for {0:?}")]
pub struct IdleError(pub std::time::Duration);

impl<B> Body for IdleTimeout<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        if !*this.armed {
            *this.armed = true;
            this.timer.as_mut().reset(tokio::time::Instant::now() + *this.idle);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + *this.idle;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.timer.poll(cx) {
                Poll::Ready(()) => {
                    if let Some(counter) = this.counted.take() {
                        counter.inc();
                    }
                    Poll::Ready(Some(Err(Box::new(IdleError(*this.idle)))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// Fails a body once it has carried more than `limit` bytes, and says so in `exceeded`
    /// so the proxy can answer 413 instead of a generic upstream error.
    pub struct SizeLimit<B> {
        #[pin]
        inner: B,
        remaining: u64,
        limit: u64,
        exceeded: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }
}

impl<B> SizeLimit<B> {
    pub fn new(inner: B, limit: u64, exceeded: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        Self { inner, remaining: limit, limit, exceeded }
    }
}

/// The error a body over its size limit ends with.
#[derive(Debug, thiserror::Error)]
#[error("request body over {0} bytes")]
pub struct TooLarge(pub u64);

impl<B> Body for SizeLimit<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(other) => return Poll::Ready(other.map(|r| r.map_err(Into::into))),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > *this.remaining {
                this.exceeded.store(true, std::sync::atomic::Ordering::Release);
                return Poll::Ready(Some(Err(Box::new(TooLarge(*this.limit)))));
            }
            *this.remaining -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === Stall watchdog ===

/// What a watched body and its watchdog share.
struct Watched<B> {
    inner: Option<B>,
    /// Since when the consumer owes us a poll: from the start (the response was handed over),
    /// and after each frame; None while the consumer waits on the backend.
    handed_out: Option<tokio::time::Instant>,
    /// The watchdog dropped the body.
    stalled: bool,
}

/// A response body dropped (with whatever it holds: the backend connection and its slot)
/// when its consumer stops taking frames for `limit`, even if nobody polls it again: an
/// HTTP/2 client that withholds WINDOW_UPDATE on one stream never lets hyper poll that
/// stream's body, so a timer inside the body could not fire. Time the backend takes is
/// not counted: only the wait after a frame was handed out.
pub struct StallWatch<B> {
    shared: std::sync::Arc<std::sync::Mutex<Watched<B>>>,
}

impl<B: Send + 'static> StallWatch<B> {
    /// Watches `inner`; `on_stall` runs once if the watchdog drops it.
    pub fn new(inner: B, limit: std::time::Duration, on_stall: impl FnOnce() + Send + 'static) -> Self {
        let shared = std::sync::Arc::new(std::sync::Mutex::new(Watched {
            inner: Some(inner),
            handed_out: Some(tokio::time::Instant::now()),
            stalled: false,
        }));
        let weak = std::sync::Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut wake = tokio::time::Instant::now() + limit;
            loop {
                tokio::time::sleep_until(wake).await;
                let Some(shared) = weak.upgrade() else { return };
                let mut w = shared.lock().unwrap_or_else(|p| p.into_inner());
                if w.inner.is_none() {
                    return;
                }
                match w.handed_out {
                    Some(at) if at.elapsed() >= limit => {
                        w.inner = None;
                        w.stalled = true;
                        drop(w);
                        on_stall();
                        return;
                    }
                    Some(at) => wake = at + limit,
                    None => wake = tokio::time::Instant::now() + limit,
                }
            }
        });
        Self { shared }
    }
}

impl<B> Body for StallWatch<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut w = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let Some(inner) = w.inner.as_mut() else {
            return if w.stalled {
                Poll::Ready(Some(Err("the client stopped taking the response".into())))
            } else {
                Poll::Ready(None)
            };
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(frame)) => {
                w.handed_out = Some(tokio::time::Instant::now());
                Poll::Ready(Some(frame.map_err(Into::into)))
            }
            Poll::Ready(None) => {
                w.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                // Waiting on the backend, not on the client.
                w.handed_out = None;
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let w = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        w.inner.as_ref().is_none_or(|b| b.is_end_stream()) && !w.stalled
    }

    fn size_hint(&self) -> SizeHint {
        let w = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        w.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_body_fails_after_the_idle_timeout() {
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let silent = http_body_util::StreamBody::new(tokio_stream_from(rx));
        let mut body = Box::pin(IdleTimeout::new(silent, std::time::Duration::from_secs(5)));
        let err = body.as_mut().frame().await.expect("a frame").expect_err("an idle error");
        assert!(err.to_string().contains("no data for 5s"));
    }

    #[tokio::test]
    async fn a_body_over_its_limit_fails_and_says_so() {
        let exceeded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let body = SizeLimit::new(full("0123456789"), 4, exceeded.clone());
        let Err(err) = body.collect().await else { panic!("a body over its limit must fail") };
        assert!(err.to_string().contains("over 4 bytes"));
        assert!(exceeded.load(std::sync::atomic::Ordering::Acquire));
        let fits = SizeLimit::new(full("0123"), 4, Default::default());
        assert_eq!(fits.collect().await.unwrap().to_bytes(), "0123");
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_clock_starts_when_the_body_is_first_read() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let mut body = Box::pin(IdleTimeout::new(
            http_body_util::StreamBody::new(tokio_stream_from(rx)),
            std::time::Duration::from_secs(5),
        ));
        // Unread for longer than the timeout (waiting for a slot, say).
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
        let first = body.as_mut().frame().await.expect("a frame");
        assert!(first.is_ok(), "the wait before the first read does not count");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_whose_consumer_stops_is_dropped_but_a_slow_backend_is_not_a_stall() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = dropped.clone();
        let inner = http_body_util::StreamBody::new(tokio_stream_from(rx));
        let mut body = StallWatch::new(inner, std::time::Duration::from_secs(5), move || {
            flag.store(true, std::sync::atomic::Ordering::SeqCst)
        });
        // The backend is slow: the consumer waits on us, which is no stall.
        let waiting = tokio::time::timeout(std::time::Duration::from_secs(20), body.frame()).await;
        assert!(waiting.is_err() && !dropped.load(std::sync::atomic::Ordering::SeqCst));
        tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
        assert!(body.frame().await.expect("a frame").is_ok());
        // Now the consumer takes a frame and does not come back.
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst), "dropped after 5s without the consumer");
        assert!(tx.is_closed(), "the inner body (and what it holds) is gone");
        assert!(body.frame().await.expect("an error").is_err());
    }

    fn tokio_stream_from<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
