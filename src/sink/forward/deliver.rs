//! Delivery of spooled windows to an upstream, for the forwarder.
//!
//! Several requests are in flight at once (on one HTTP/2 connection for
//! gRPC), but answers are applied in spool order: a window is handed back
//! only once every record in it has a final answer (delivered or
//! dead-lettered), so the cursor never passes a record that may still need
//! sending. What a failed request means is decided by [`super::verdict`]:
//! a request the upstream finds too large is split (and the upstream's own
//! limit, when it names one, is used for every later request), a refused
//! request is split until the refused record is alone, and anything else
//! backs off and retries, one request at a time until the upstream answers
//! again.
//!
//! Only the forwarder's task touches a [`Pipeline`], so it needs no lock.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::verdict::{UpstreamError, Verdict};
use super::{Backoff, Upstream};
use crate::metrics::ForwardLabels;
use crate::sink::Record;

mod answers;
mod pass_through;
#[cfg(test)]
mod tests;

pub use pass_through::deliver_now;

/// The final answer for one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Acknowledged (or already there) upstream.
    Delivered,
    /// Refused for good: goes to the dead-letter file with the reason.
    DeadLetter(String),
}

/// A window whose records all have a final answer.
pub struct Done {
    pub records: Arc<[Record]>,
    pub decisions: Vec<Decision>,
    /// The window's last position (as given to [`Pipeline::push`]).
    pub end: u64,
}

/// One window on its way.
struct Window {
    id: u64,
    records: Arc<[Record]>,
    decisions: Vec<Option<Decision>>,
    end: u64,
    open: usize,
}

/// A run of records of one window, sent as one request.
struct Chunk {
    window: u64,
    start: usize,
    len: usize,
    in_flight: bool,
}

/// (window, start of the chunk, epoch the request was sent in, answer).
type Answer = (u64, usize, u64, Result<Vec<Verdict>, UpstreamError>);

/// Windows being delivered, oldest first.
pub struct Pipeline {
    upstream: Arc<dyn Upstream>,
    /// Requests in flight at once.
    depth: usize,
    windows: VecDeque<Window>,
    chunks: VecDeque<Chunk>,
    in_flight: FuturesUnordered<Pin<Box<dyn Future<Output = Answer> + Send>>>,
    next_window: u64,
    /// Most records per request, once the upstream said so.
    limit: Option<usize>,
    backoff: Backoff,
    /// No request is started before this (backing off).
    resume_at: Option<Instant>,
    /// After a failure: one request at a time until one is answered.
    probing: bool,
    /// Whether the upstream answers; logs say only when this flips.
    up: bool,
    /// Counts the flips to "down". Only an answer to a request sent in the
    /// current epoch flips the state: with several in flight, a late answer
    /// to one sent before an outage says nothing about now.
    epoch: u64,
    name: String,
    labels: ForwardLabels,
}

// === impl Pipeline ===

impl Pipeline {
    pub fn new(
        upstream: Arc<dyn Upstream>,
        depth: usize,
        retry_max: Duration,
        name: String,
        labels: ForwardLabels,
    ) -> Pipeline {
        Pipeline {
            upstream,
            depth: depth.max(1),
            windows: VecDeque::new(),
            chunks: VecDeque::new(),
            in_flight: FuturesUnordered::new(),
            next_window: 0,
            limit: None,
            backoff: Backoff::new(retry_max),
            resume_at: None,
            probing: false,
            up: true,
            epoch: 0,
            name,
            labels,
        }
    }

    /// Whether another window may be added: one more than the requests in
    /// flight, so that the next is ready when one finishes, and memory
    /// stays bounded by a few windows.
    pub fn wants_more(&self) -> bool {
        self.windows.len() <= self.depth
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Adds a window read from the spool (records in spool order, `end` its
    /// last position, handed back in [`Done::end`]). An empty window is done
    /// at once.
    pub fn push(&mut self, records: Vec<Record>, end: u64) {
        let id = self.next_window;
        self.next_window += 1;
        let n = records.len();
        self.chunks
            .extend(chunks_of(id, 0, n, self.limit.unwrap_or(n.max(1))));
        self.windows.push_back(Window {
            id,
            records: records.into(),
            decisions: vec![None; n],
            end,
            open: n,
        });
    }

    /// The oldest window once every record in it has a final answer; `None`
    /// when `stop` is cancelled first (what is in flight is dropped, and its
    /// records stay spooled).
    pub async fn next(&mut self, stop: &CancellationToken) -> Option<Done> {
        loop {
            if self.windows.front().is_some_and(|w| w.open == 0) {
                let w = self.windows.pop_front()?;
                // The next requests go out while the caller records this
                // window (dead letters, the cursor's sync).
                self.start_requests();
                return Some(Done {
                    records: w.records,
                    decisions: w.decisions.into_iter().flatten().collect(),
                    end: w.end,
                });
            }
            self.start_requests();
            let resume_at = self.resume_at;
            tokio::select! {
                Some((window, start, epoch, answer)) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.apply(window, start, epoch, answer);
                }
                () = sleep_until(resume_at), if resume_at.is_some() => self.resume_at = None,
                () = stop.cancelled() => return None,
            }
        }
    }

    /// Starts waiting chunks, in order, up to the allowed number in flight.
    fn start_requests(&mut self) {
        if self.resume_at.is_some() {
            return;
        }
        let allowed = if self.probing { 1 } else { self.depth };
        let mut running = self.in_flight.len();
        for chunk in self.chunks.iter_mut() {
            if running >= allowed {
                break;
            }
            if chunk.in_flight {
                continue;
            }
            let Some(w) = self.windows.iter().find(|w| w.id == chunk.window) else {
                continue;
            };
            let records: Arc<[Record]> = if chunk.start == 0 && chunk.len == w.records.len() {
                w.records.clone()
            } else {
                w.records[chunk.start..chunk.start + chunk.len].into()
            };
            chunk.in_flight = true;
            running += 1;
            // A task of its own, so that the request makes progress while
            // this pipeline is not being polled; aborted if dropped (stop).
            let call = Running(tokio::spawn(self.upstream.deliver(records)));
            let (window, start, epoch) = (chunk.window, chunk.start, self.epoch);
            self.in_flight.push(Box::pin(async move {
                let answer = match call.await {
                    Ok(answer) => answer,
                    Err(e) => Err(UpstreamError::transient(format!(
                        "delivery task failed: {e}"
                    ))),
                };
                (window, start, epoch, answer)
            }));
        }
    }
}

/// A spawned delivery, aborted when dropped.
struct Running(tokio::task::JoinHandle<Result<Vec<Verdict>, UpstreamError>>);

impl Future for Running {
    type Output = Result<Result<Vec<Verdict>, UpstreamError>, tokio::task::JoinError>;
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `[start, start + len)` of a window cut into chunks of at most `size`.
fn chunks_of(window: u64, start: usize, len: usize, size: usize) -> Vec<Chunk> {
    let size = size.max(1);
    (start..start + len)
        .step_by(size)
        .map(|at| Chunk {
            window,
            start: at,
            len: size.min(start + len - at),
            in_flight: false,
        })
        .collect()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
