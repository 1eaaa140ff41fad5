//! Connections as a cost: each holds a descriptor and HTTP/2 state, so
//! meterd bounds how many are open (`--max-connections`: beyond it a new
//! one is closed at once), how long one may take to start speaking HTTP/2
//! (`--handshake-timeout`: the client preface must arrive within it of the
//! accept, TLS handshake included), and how long one may stay open without
//! a call (`--idle-timeout`). A Tail follower is a call: its connection is
//! never idle while it follows.
//!
//! [`Conn`] wraps an accepted stream and enforces the timeouts from its
//! reads (hyper always has one pending); [`CallsLayer`] counts the calls
//! of each connection, which it finds through the connection's
//! `ConnectInfo` in the request's extensions.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::body::Body;
use tonic::transport::server::Connected;

use super::quiet::Quiet;
use crate::metrics::metrics;

/// The HTTP/2 client preface: `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_LEN: usize = 24;

static FULL: Quiet = Quiet::new("connections at --max-connections");

/// `--max-connections`, `--handshake-timeout`, `--idle-timeout`, over every
/// listener. Safe for concurrent use.
pub(crate) struct Limits {
    slots: Arc<Semaphore>,
    max: usize,
    handshake: Duration,
    idle: Option<Duration>,
}

impl Limits {
    pub(crate) fn new(max: usize, handshake: Duration, idle: Option<Duration>) -> Arc<Limits> {
        Arc::new(Limits {
            slots: Arc::new(Semaphore::new(max.max(1))),
            max: max.max(1),
            handshake,
            idle,
        })
    }

    /// A slot for a connection just accepted, or `None` at the cap: the
    /// caller closes the connection (counted, logged once per change of
    /// state).
    pub(crate) fn admit(&self) -> Option<Slot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                FULL.accepted();
                metrics().connections_open.inc();
                Some(Slot {
                    _permit: permit,
                    accepted: Instant::now(),
                })
            }
            Err(_) => {
                FULL.refused(&format_args!(
                    "{} connections open (--max-connections); closing new ones",
                    self.max
                ));
                metrics().connections_refused.inc();
                None
            }
        }
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        self.handshake
    }
}

/// One connection's place under `--max-connections`.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    accepted: Instant,
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics().connections_open.dec();
    }
}

/// The calls open on one connection, and since when it has had none.
#[derive(Default)]
pub(crate) struct Activity {
    open: AtomicUsize,
    state: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    since: Option<Instant>,
    /// The connection's reader, woken when its last call ends.
    reader: Option<Waker>,
}

impl Activity {
    fn call_started(&self) {
        self.open.fetch_add(1, Ordering::SeqCst);
    }

    fn call_ended(&self) {
        if self.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            s.since = Some(Instant::now());
            if let Some(w) = s.reader.take() {
                w.wake();
            }
        }
    }
}

/// What tonic puts in each request's extensions for a [`Conn`].
#[derive(Clone)]
pub(crate) struct ConnCalls(Arc<Activity>);

/// An accepted stream under the [`Limits`].
pub(crate) struct Conn<IO> {
    io: IO,
    _slot: Slot,
    activity: Arc<Activity>,
    /// Preface bytes still to come.
    preface_left: usize,
    /// The preface deadline, then the idle deadline.
    timer: Pin<Box<Sleep>>,
    idle: Option<Duration>,
}

impl<IO> Conn<IO> {
    pub(crate) fn new(io: IO, slot: Slot, limits: &Limits) -> Conn<IO> {
        let timer = Box::pin(tokio::time::sleep_until(slot.accepted + limits.handshake));
        let activity = Arc::new(Activity::default());
        activity
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .since = Some(slot.accepted);
        Conn {
            io,
            _slot: slot,
            activity,
            preface_left: PREFACE_LEN,
            timer,
            idle: limits.idle,
        }
    }

    /// With nothing to read: whether a deadline has passed, else arranges
    /// to be woken at the next one.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.preface_left > 0 {
            return self.timer.as_mut().poll(cx).is_ready().then(|| {
                metrics().connections_handshake_timed_out.inc();
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within --handshake-timeout",
                )
            });
        }
        let idle = self.idle?;
        let since = {
            let mut s = self
                .activity
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if self.activity.open.load(Ordering::SeqCst) > 0 {
                // Woken by the last call's end.
                s.reader = Some(cx.waker().clone());
                return None;
            }
            s.since?
        };
        let deadline = since + idle;
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            metrics().connections_idle_closed.inc();
            return Some(io::Error::new(
                io::ErrorKind::TimedOut,
                "no call within --idle-timeout",
            ));
        }
        None
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                this.preface_left = this.preface_left.saturating_sub(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(e) => {
                    tracing::debug!(error = %e, "closing a connection");
                    Poll::Ready(Err(e))
                }
                None => Poll::Pending,
            },
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO> Connected for Conn<IO> {
    type ConnectInfo = ConnCalls;
    fn connect_info(&self) -> ConnCalls {
        ConnCalls(self.activity.clone())
    }
}

/// Counts each call on its connection from its start to the end of its
/// response body (see the module doc).
#[derive(Clone, Copy)]
pub(crate) struct CallsLayer;

impl<S> tower::Layer<S> for CallsLayer {
    type Service = Calls<S>;
    fn layer(&self, inner: S) -> Calls<S> {
        Calls { inner }
    }
}

#[derive(Clone)]
pub(crate) struct Calls<S> {
    inner: S,
}

impl<S> tower::Service<http::Request<Body>> for Calls<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // Absent only for a stream that is not a `Conn` (none in meterd).
        let call = request
            .extensions()
            .get::<ConnCalls>()
            .cloned()
            .map(CallOpen::new);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(match call {
                Some(call) => response.map(|inner| Body::new(Counted { inner, _call: call })),
                None => response,
            })
        })
    }
}

/// One open call; ends when dropped.
struct CallOpen(Arc<Activity>);

impl CallOpen {
    fn new(calls: ConnCalls) -> CallOpen {
        calls.0.call_started();
        CallOpen(calls.0)
    }
}

impl Drop for CallOpen {
    fn drop(&mut self) {
        self.0.call_ended();
    }
}

/// A response body that keeps its call open until it is done or dropped.
struct Counted {
    inner: Body,
    _call: CallOpen,
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, tonic::Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
