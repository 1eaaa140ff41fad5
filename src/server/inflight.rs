//! The byte budget of request messages read from the network and not yet
//! queued for the sinks (`--max-in-flight-bytes`), over every SubmitBatch
//! and EmitBatch call at once.
//!
//! tonic reads a whole message into memory before decoding it, and a
//! decoded request waits for room in `--max-queue-bytes` before its records
//! count there: hundreds of streams sending the largest messages would each
//! hold one in memory. This layer wraps the request body and reads the gRPC
//! framing as it passes (a 5-byte header: flag and length). Before the
//! bytes that start a message go on, the message's length is taken from the
//! budget; while none is free the body does not yield, tonic does not read,
//! and HTTP/2 flow control stops the client: what waits stays in the
//! client, not in meterd. The bytes are given back when the call's records
//! have room in the queue (the handler drops the [`Hold`]), when the next
//! message of the stream starts, or when the body ends.
//!
//! A message that cannot get room within [`WAIT`], or whose bytes do not
//! all arrive within `--message-read-timeout` of its start (a sender that
//! takes room and trickles), fails its call with RESOURCE_EXHAUSTED.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::Status;

use super::quiet::Quiet;
use crate::metrics::metrics;

/// How long a message waits for room before its call is refused, as a call
/// waits for queue room (`budget::QUEUE_WAIT`).
const WAIT: Duration = super::budget::QUEUE_WAIT;

/// Logged once per change of state.
static FULL: Quiet = Quiet::new("in-flight bytes full");
static SLOW: Quiet = Quiet::new("request messages arriving too slowly");

/// `--max-in-flight-bytes` and `--message-read-timeout`. Safe for
/// concurrent use.
pub(crate) struct Budget {
    room: Arc<Semaphore>,
    /// In bytes; at most `u32::MAX` (what one acquire can ask for).
    limit: u32,
    /// Messages declared larger are not counted: tonic refuses them on
    /// their header (`--max-message-bytes`), before reading them.
    max_message: u32,
    read_timeout: Duration,
}

impl Budget {
    pub(crate) fn new(limit: u64, max_message: usize, read_timeout: Duration) -> Arc<Budget> {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX).max(1);
        Arc::new(Budget {
            room: Arc::new(Semaphore::new(limit as usize)),
            limit,
            max_message: u32::try_from(max_message).unwrap_or(u32::MAX),
            read_timeout,
        })
    }

    /// Whether calls of `path` are counted: the two that carry many records.
    fn counts(path: &str) -> bool {
        matches!(
            path,
            "/metering.v1.MeteringService/SubmitBatch" | "/metering.v1.MeteringService/EmitBatch"
        )
    }
}

/// The room one call holds for the message it is reading; shared between
/// the body and the request's extensions, so that the handler can give it
/// back once its records have room in the queue.
#[derive(Clone, Default)]
pub(crate) struct Hold(Arc<Mutex<Option<Room>>>);

impl Hold {
    fn set(&self, room: Option<Room>) {
        // The old room is dropped (given back) outside the lock.
        let old = std::mem::replace(
            &mut *self.0.lock().unwrap_or_else(PoisonError::into_inner),
            room,
        );
        drop(old);
    }

    /// Gives the room back now.
    pub(crate) fn release(&self) {
        self.set(None);
    }
}

/// Taken bytes; given back when dropped.
struct Room {
    _permit: OwnedSemaphorePermit,
    bytes: u32,
}

impl Drop for Room {
    fn drop(&mut self) {
        metrics().in_flight_bytes.dec_by(i64::from(self.bytes));
    }
}

/// The tower layer (see the module doc).
#[derive(Clone)]
pub(crate) struct Layer(pub(crate) Arc<Budget>);

impl<S> tower::Layer<S> for Layer {
    type Service = Service<S>;
    fn layer(&self, inner: S) -> Service<S> {
        Service {
            inner,
            budget: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Service<S> {
    inner: S,
    budget: Arc<Budget>,
}

impl<S> tower::Service<http::Request<Body>> for Service<S>
where
    S: tower::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> S::Future {
        if !Budget::counts(request.uri().path()) {
            return self.inner.call(request);
        }
        let hold = Hold::default();
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(hold.clone());
        let body = Body::new(Counted {
            inner: body,
            budget: self.budget.clone(),
            hold,
            framing: Framing::default(),
            waiting: None,
            read_by: None,
        });
        self.inner.call(http::Request::from_parts(parts, body))
    }
}

/// Where the body is in the gRPC framing.
#[derive(Default)]
struct Framing {
    header: [u8; 5],
    /// Header bytes seen of the next message.
    have: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
}

impl Framing {
    /// Reads `chunk`; returns the bytes of the messages that start in it
    /// (those whose header completes in it), counting only those tonic will
    /// read.
    fn scan(&mut self, chunk: &[u8], max_message: u32) -> u64 {
        let mut starting = 0u64;
        let mut i = 0;
        while i < chunk.len() {
            if self.remaining > 0 {
                let take = self.remaining.min((chunk.len() - i) as u64);
                self.remaining -= take;
                // `take` is at most what is left of the chunk.
                i += usize::try_from(take).unwrap_or(chunk.len() - i);
                continue;
            }
            self.header[self.have] = chunk[i];
            self.have += 1;
            i += 1;
            if self.have == self.header.len() {
                self.have = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                self.remaining = u64::from(len);
                if len <= max_message {
                    starting += u64::from(len);
                }
            }
        }
        starting
    }

    /// Whether a message has started and not all of its bytes are in.
    fn mid_message(&self) -> bool {
        self.remaining > 0 || self.have > 0
    }
}

type Acquire = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

/// A request body whose messages take room from the [`Budget`].
struct Counted {
    inner: Body,
    budget: Arc<Budget>,
    hold: Hold,
    framing: Framing,
    /// A chunk that starts a message, held until its room is taken.
    waiting: Option<(Frame<Bytes>, u32, Acquire)>,
    /// When the current message must be in whole.
    read_by: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Counted {
    fn took(&mut self, permit: OwnedSemaphorePermit, bytes: u32) {
        metrics().in_flight_bytes.inc_by(i64::from(bytes));
        FULL.accepted();
        self.hold.set(Some(Room {
            _permit: permit,
            bytes,
        }));
    }

    fn full(&self) -> Status {
        let e = format!(
            "in-flight bytes full: request messages being read reached --max-in-flight-bytes ({} bytes) and no room came free within {}; retry with backoff",
            self.budget.limit,
            humantime::format_duration(WAIT)
        );
        FULL.refused(&e);
        metrics().in_flight_refused.inc();
        Status::resource_exhausted(e)
    }

    fn too_slow(&self) -> Status {
        let e = format!(
            "the request message did not arrive whole within --message-read-timeout ({}) of its start",
            humantime::format_duration(self.budget.read_timeout)
        );
        SLOW.refused(&e);
        metrics().in_flight_refused.inc();
        Status::resource_exhausted(e)
    }

    /// A frame read from the client: passes on at once, or waits for room
    /// when a message starts in it.
    fn frame(&mut self, frame: Frame<Bytes>) -> Option<Frame<Bytes>> {
        let Some(data) = frame.data_ref() else {
            return Some(frame);
        };
        let starting = self.framing.scan(data, self.budget.max_message);
        if starting == 0 {
            return Some(frame);
        }
        // The previous message of this stream has been read whole: its
        // room goes back before this one waits for its own.
        self.hold.release();
        let cost = u32::try_from(starting)
            .unwrap_or(u32::MAX)
            .min(self.budget.limit);
        if let Ok(permit) = self.budget.room.clone().try_acquire_many_owned(cost) {
            self.took(permit, cost);
            self.started();
            return Some(frame);
        }
        let room = self.budget.room.clone();
        let acquire: Acquire = Box::pin(async move {
            tokio::time::timeout(WAIT, room.acquire_many_owned(cost))
                .await
                .ok()
                // The semaphore is never closed.
                .and_then(Result::ok)
        });
        self.waiting = Some((frame, cost, acquire));
        None
    }

    /// After a message's room is taken: its bytes must follow in time.
    fn started(&mut self) {
        self.read_by = self
            .framing
            .mid_message()
            .then(|| Box::pin(tokio::time::sleep(self.budget.read_timeout)));
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if let Some((_, cost, acquire)) = &mut this.waiting {
                let cost = *cost;
                let permit = ready!(acquire.as_mut().poll(cx));
                let Some((frame, ..)) = this.waiting.take() else {
                    continue;
                };
                return match permit {
                    Some(permit) => {
                        this.took(permit, cost);
                        this.started();
                        Poll::Ready(Some(Ok(frame)))
                    }
                    None => Poll::Ready(Some(Err(this.full()))),
                };
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(frame) = this.frame(frame) {
                        if !this.framing.mid_message() {
                            this.read_by = None;
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                }
                Poll::Ready(None) => {
                    this.hold.release();
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => {
                    if let Some(read_by) = &mut this.read_by {
                        ready!(read_by.as_mut().poll(cx));
                        this.read_by = None;
                        return Poll::Ready(Some(Err(this.too_slow())));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.waiting.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut f = vec![0u8];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend(std::iter::repeat_n(7u8, len as usize));
        f
    }

    #[test]
    fn messages_are_counted_where_their_header_completes() {
        let mut stream = frame(10);
        stream.extend(frame(3));
        stream.extend(frame(100));
        let mut f = Framing::default();
        // Chunks that cut headers and bodies anywhere.
        assert_eq!(f.scan(&stream[..3], u32::MAX), 0);
        assert!(f.mid_message());
        assert_eq!(f.scan(&stream[3..20], u32::MAX), 10 + 3);
        assert_eq!(f.scan(&stream[20..28], u32::MAX), 100);
        assert_eq!(f.scan(&stream[28..], u32::MAX), 0);
        assert!(!f.mid_message());
    }

    #[test]
    fn messages_over_the_size_limit_are_not_counted() {
        let mut f = Framing::default();
        assert_eq!(f.scan(&frame(50), 10), 0);
        assert_eq!(f.scan(&frame(5), 10), 5);
    }

    #[test]
    fn an_empty_message_ends_at_its_header() {
        let mut f = Framing::default();
        assert_eq!(f.scan(&frame(0), u32::MAX), 0);
        assert!(!f.mid_message());
    }
}
