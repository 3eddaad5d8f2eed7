//! Refuses oversized HTTP/3 frames before h3 buffers them. h3 0.0.8 keeps every byte of a
//! frame until its declared length has arrived and only then checks the field-section
//! size, so a HEADERS (or unknown) frame declaring 100 MiB would grow memory for as long
//! as the client keeps sending. This wraps the QUIC streams h3 reads from, reads each
//! frame header as it passes, and stops the stream as soon as a frame other than DATA
//! declares more than the limit. The bytes themselves pass through untouched.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};

use crate::telemetry::metrics::Metrics;

/// H3_EXCESSIVE_LOAD (RFC 9114 §8.1): the peer asked for more than we will hold.
const H3_EXCESSIVE_LOAD: u64 = 0x0107;
const FRAME_DATA: u64 = 0x0;
const STREAM_TYPE_CONTROL: u64 = 0x0;

// === FrameScanner ===

/// A frame longer than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("HTTP/3 frame of type {frame_type:#x} declares {length} bytes; at most {limit} are accepted")]
pub struct Oversized {
    pub frame_type: u64,
    pub length: u64,
    pub limit: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A unidirectional stream's type varint comes first.
    StreamType,
    /// Reading a frame header (type, length); `have` bytes of it are in `header`.
    Header,
    /// Skipping a frame's payload.
    Payload(u64),
    /// Not a stream of frames we look into (QPACK, unknown uni streams).
    Passthrough,
}

/// Follows the frame headers of one stream as its bytes go by.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    limit: u64,
    /// DATA frames (request bodies) are not limited here: they stream.
    data_unlimited: bool,
    state: State,
    header: [u8; 16],
    have: usize,
}

impl FrameScanner {
    /// For a request stream: frames from the first byte.
    pub fn request(limit: u64) -> Self {
        Self { limit, data_unlimited: true, state: State::Header, header: [0; 16], have: 0 }
    }

    /// For a unidirectional stream: its type first, then frames if it is the control stream.
    pub fn unidirectional(limit: u64) -> Self {
        Self { limit, data_unlimited: false, state: State::StreamType, header: [0; 16], have: 0 }
    }

    /// Looks at the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), Oversized> {
        while !data.is_empty() {
            match self.state {
                State::Passthrough => return Ok(()),
                State::Payload(remaining) => {
                    let n = remaining.min(data.len() as u64);
                    data = &data[n as usize..];
                    self.state = if n == remaining { State::Header } else { State::Payload(remaining - n) };
                }
                State::StreamType | State::Header => {
                    // Varints are at most 8 bytes, so a header fits in 16.
                    let room = self.header.len() - self.have;
                    let n = room.min(data.len());
                    self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                    let before = self.have;
                    self.have += n;
                    let Some((consumed, next)) = self.parse_header()? else {
                        data = &data[n..];
                        continue;
                    };
                    // Bytes past the header in what was just copied belong to the payload.
                    let used_now = consumed - before;
                    data = &data[used_now..];
                    self.have = 0;
                    self.state = next;
                }
            }
        }
        Ok(())
    }

    /// With a whole header buffered: how many bytes it took and the state after it.
    fn parse_header(&self) -> Result<Option<(usize, State)>, Oversized> {
        let buf = &self.header[..self.have];
        let Some((first, a)) = varint(buf) else { return Ok(None) };
        if self.state == State::StreamType {
            let next = if first == STREAM_TYPE_CONTROL { State::Header } else { State::Passthrough };
            return Ok(Some((a, next)));
        }
        let Some((length, b)) = varint(&buf[a..]) else { return Ok(None) };
        if !(self.data_unlimited && first == FRAME_DATA) && length > self.limit {
            return Err(Oversized { frame_type: first, length, limit: self.limit });
        }
        let next = if length == 0 { State::Header } else { State::Payload(length) };
        Ok(Some((a + b, next)))
    }
}

/// A QUIC varint at the start of `buf`, and its size; None until all of it is there.
fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let size = 1usize << (first >> 6);
    let bytes = buf.get(..size)?;
    let mut value = u64::from(first & 0x3f);
    for b in &bytes[1..] {
        value = (value << 8) | u64::from(*b);
    }
    Some((value, size))
}

// === Stream wrappers ===

/// A receive stream whose frames are checked before h3 sees them.
pub struct GuardedRecv<R> {
    inner: R,
    scanner: FrameScanner,
    metrics: Arc<Metrics>,
    refused: bool,
}

impl<R: quic::RecvStream<Buf = Bytes>> GuardedRecv<R> {
    fn new(inner: R, scanner: FrameScanner, metrics: Arc<Metrics>) -> Self {
        Self { inner, scanner, metrics, refused: false }
    }

    fn refused_error() -> StreamErrorIncoming {
        StreamErrorIncoming::StreamTerminated { error_code: H3_EXCESSIVE_LOAD }
    }
}

impl<R: quic::RecvStream<Buf = Bytes>> quic::RecvStream for GuardedRecv<R> {
    type Buf = Bytes;

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        if self.refused {
            return Poll::Ready(Err(Self::refused_error()));
        }
        let polled = self.inner.poll_data(cx);
        if let Poll::Ready(Ok(Some(data))) = &polled
            && let Err(e) = self.scanner.feed(data.chunk())
        {
            self.refused = true;
            self.metrics.limit_hit("header_size");
            tracing::info!(error = %e, stream = %self.inner.recv_id(), "refusing an oversized HTTP/3 frame");
            // Stop the client sending more: what it already sent is dropped by quinn.
            self.inner.stop_sending(H3_EXCESSIVE_LOAD);
            return Poll::Ready(Err(Self::refused_error()));
        }
        polled
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.inner.stop_sending(error_code);
    }

    fn recv_id(&self) -> StreamId {
        self.inner.recv_id()
    }
}

/// A request stream: both halves, the receiving one guarded.
pub struct GuardedBidi<B: Buf> {
    send: h3_quinn::SendStream<B>,
    recv: GuardedRecv<h3_quinn::RecvStream>,
}

impl<B: Buf> GuardedBidi<B> {
    fn new(stream: h3_quinn::BidiStream<B>, limit: u64, metrics: Arc<Metrics>) -> Self {
        let (send, recv) = quic::BidiStream::split(stream);
        Self { send, recv: GuardedRecv::new(recv, FrameScanner::request(limit), metrics) }
    }
}

impl<B: Buf> quic::BidiStream<B> for GuardedBidi<B> {
    type SendStream = h3_quinn::SendStream<B>;
    type RecvStream = GuardedRecv<h3_quinn::RecvStream>;

    fn split(self) -> (Self::SendStream, Self::RecvStream) {
        (self.send, self.recv)
    }
}

impl<B: Buf> quic::RecvStream for GuardedBidi<B> {
    type Buf = Bytes;

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        let polled = self.recv.poll_data(cx);
        if self.recv.refused {
            // Nothing will be answered on this stream: say so rather than leave it open.
            quic::SendStream::reset(&mut self.send, H3_EXCESSIVE_LOAD);
        }
        polled
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop_sending(error_code);
    }

    fn recv_id(&self) -> StreamId {
        self.recv.recv_id()
    }
}

impl<B: Buf> quic::SendStream<B> for GuardedBidi<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code);
    }

    fn send_id(&self) -> StreamId {
        self.send.send_id()
    }
}

// === Connection wrappers ===

/// Guards every stream opened or accepted through `O`: an h3-quinn connection, or its
/// opener (through which h3 opens its control and QPACK streams).
pub struct Guarded<O> {
    inner: O,
    limit: u64,
    metrics: Arc<Metrics>,
}

/// An h3-quinn connection whose incoming streams are guarded.
pub type GuardedConnection = Guarded<h3_quinn::Connection>;

/// Opens streams on a guarded connection.
pub type GuardedOpener = Guarded<h3_quinn::OpenStreams>;

impl GuardedConnection {
    /// Guards every stream of `conn` with frames of at most `limit` bytes (DATA excepted).
    pub fn new(conn: quinn::Connection, limit: u64, metrics: Arc<Metrics>) -> Self {
        Self { inner: h3_quinn::Connection::new(conn), limit, metrics }
    }
}

impl<O: Clone> Clone for Guarded<O> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), limit: self.limit, metrics: self.metrics.clone() }
    }
}

impl<B: Buf> quic::Connection<B> for GuardedConnection {
    type RecvStream = GuardedRecv<h3_quinn::RecvStream>;
    type OpenStreams = GuardedOpener;

    fn poll_accept_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Self::RecvStream, ConnectionErrorIncoming>> {
        let recv =
            std::task::ready!(<h3_quinn::Connection as quic::Connection<B>>::poll_accept_recv(&mut self.inner, cx))?;
        Poll::Ready(Ok(GuardedRecv::new(recv, FrameScanner::unidirectional(self.limit), self.metrics.clone())))
    }

    fn poll_accept_bidi(&mut self, cx: &mut Context<'_>) -> Poll<Result<Self::BidiStream, ConnectionErrorIncoming>> {
        let bidi =
            std::task::ready!(<h3_quinn::Connection as quic::Connection<B>>::poll_accept_bidi(&mut self.inner, cx))?;
        Poll::Ready(Ok(GuardedBidi::new(bidi, self.limit, self.metrics.clone())))
    }

    fn opener(&self) -> Self::OpenStreams {
        Guarded {
            inner: <h3_quinn::Connection as quic::Connection<B>>::opener(&self.inner),
            limit: self.limit,
            metrics: self.metrics.clone(),
        }
    }
}

impl<B, O> quic::OpenStreams<B> for Guarded<O>
where
    B: Buf,
    O: quic::OpenStreams<B, BidiStream = h3_quinn::BidiStream<B>, SendStream = h3_quinn::SendStream<B>>,
{
    type BidiStream = GuardedBidi<B>;
    type SendStream = h3_quinn::SendStream<B>;

    fn poll_open_bidi(&mut self, cx: &mut Context<'_>) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        let bidi = std::task::ready!(self.inner.poll_open_bidi(cx))?;
        Poll::Ready(Ok(GuardedBidi::new(bidi, self.limit, self.metrics.clone())))
    }

    fn poll_open_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        self.inner.poll_open_send(cx)
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        self.inner.close(code, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame header: type and length as QUIC varints (8-byte form for the length).
    fn header(frame_type: u8, length: u64) -> Vec<u8> {
        let mut out = vec![frame_type];
        out.extend_from_slice(&(length | 0xc000_0000_0000_0000).to_be_bytes());
        out
    }

    #[test]
    fn a_headers_frame_over_the_limit_is_refused_from_its_header_alone() {
        let mut s = FrameScanner::request(64 * 1024);
        let err = s.feed(&header(0x1, 100 << 20)).expect_err("refused before any payload");
        assert_eq!(err, Oversized { frame_type: 1, length: 100 << 20, limit: 64 * 1024 });
    }

    #[test]
    fn frames_within_the_limit_and_data_of_any_size_pass_even_split_byte_by_byte() {
        let mut stream = header(0x1, 3);
        stream.extend_from_slice(b"abc");
        stream.extend_from_slice(&header(0x0, 10 << 30));
        stream.extend_from_slice(b"body bytes");
        let mut s = FrameScanner::request(1024);
        for b in &stream {
            s.feed(std::slice::from_ref(b)).expect("allowed");
        }
        assert_eq!(s.state, State::Payload((10 << 30) - 10));
    }

    #[test]
    fn a_large_frame_after_a_small_one_in_the_same_chunk_is_caught() {
        let mut stream = vec![0x1, 0x02, b'h', b'i'];
        stream.extend_from_slice(&header(0x21, 5000));
        assert!(FrameScanner::request(1024).feed(&stream).is_err(), "an unknown frame type is limited too");
    }

    #[test]
    fn only_the_control_stream_is_looked_into() {
        let mut control = FrameScanner::unidirectional(1024);
        assert!(control.feed(&[0x00]).is_ok());
        assert!(control.feed(&header(0x4, 1 << 20)).is_err(), "a huge SETTINGS frame");
        let mut qpack = FrameScanner::unidirectional(1024);
        assert!(qpack.feed(&[0x02]).is_ok());
        assert!(qpack.feed(&header(0x4, 1 << 20)).is_ok(), "QPACK streams carry no frames");
    }

    #[test]
    fn varints_of_each_size() {
        assert_eq!(varint(&[0x25]), Some((37, 1)));
        assert_eq!(varint(&[0x7b, 0xbd]), Some((15293, 2)));
        assert_eq!(varint(&[0x9d, 0x7f, 0x3e, 0x7d]), Some((494878333, 4)));
        assert_eq!(varint(&[0xc2, 0x19, 0x7c, 0x5e]), None, "incomplete");
    }
}
