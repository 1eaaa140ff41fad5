//! `Tail`: a lazy stream. The next chunk is read (on a blocking thread)
//! only when tonic asks for the next response, which it does only when
//! HTTP/2 has room to send it; once caught up the stream waits for the
//! writer to say that more records are durable (`Log::subscribe`), not
//! polling. So a follower that stops reading costs one response in
//! HTTP/2's send buffer and nothing read ahead, however far behind it is;
//! the log's writer never waits for readers.

use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::super::{count_rpc, status, Admission};
use crate::ledger::Ledger;
use crate::log::{Log, LogReader};
use crate::pb::{TailRequest, TailResponse};
use crate::read::tail::{chunk, Request, Stream};
use crate::wire::Record;

/// The response stream handed to tonic.
pub type ResponseStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<TailResponse, Status>> + Send>>;

fn log_of(ledger: &Ledger, stream: Stream) -> &Log<Record> {
    match stream {
        Stream::Entries => &ledger.entries,
        Stream::Batches => &ledger.batches,
    }
}

/// Checks the request, places the reader (answering OUT_OF_RANGE or
/// INVALID_ARGUMENT at once), then streams.
pub(super) fn tail(
    ledger: Arc<Ledger>,
    req: TailRequest,
    admission: Admission,
    stop: CancellationToken,
) -> Result<ResponseStream, Status> {
    let req = Request::from_pb(&req).map_err(status::invalid)?;
    let log = log_of(&ledger, req.stream);
    let reader = log.reader(req.after).map_err(status::tail_seek)?;
    let changes = log.subscribe();
    let follower = Follower {
        ledger,
        req: Arc::new(req),
        reader: Some(reader),
        changes,
        stop,
        last_sent: None,
        ending: None,
        call: Call {
            code: tonic::Code::Cancelled,
            _admission: admission,
        },
    };
    Ok(Box::pin(futures_util::stream::unfold(
        follower,
        |mut f| async move { f.next().await.map(|item| (item, f)) },
    )))
}

/// Counts the call when it ends, however it ends: dropped by tonic before
/// its end means the client left.
struct Call {
    code: tonic::Code,
    _admission: Admission,
}

impl Drop for Call {
    fn drop(&mut self) {
        count_rpc("Tail", self.code);
    }
}

/// One Tail call between responses.
struct Follower {
    ledger: Arc<Ledger>,
    req: Arc<Request>,
    reader: Option<LogReader>,
    changes: tokio::sync::watch::Receiver<u64>,
    stop: CancellationToken,
    /// (position, caught_up) of the last response, so that a wake-up that
    /// brings nothing new sends nothing.
    last_sent: Option<(u64, bool)>,
    /// What the call ends with after the response just sent: `None` goes
    /// on, `Some(None)` ends cleanly, `Some(Some(status))` with an error.
    ending: Option<Option<Status>>,
    call: Call,
}

impl Follower {
    /// The next response, or the end of the call.
    async fn next(&mut self) -> Option<Result<TailResponse, Status>> {
        if let Some(ending) = self.ending.take() {
            // Ended: nothing after this.
            self.ending = Some(None);
            return ending.map(|s| {
                self.call.code = s.code();
                Err(s)
            });
        }
        loop {
            // Seen before reading: a commit during the read wakes the wait below.
            self.changes.borrow_and_update();
            let chunk = match self.read().await {
                Ok(chunk) => chunk,
                Err(s) => return Some(Err(self.end(s))),
            };
            let resp = chunk.response;
            let caught_up = resp.caught_up;
            let key = (resp.position, caught_up);
            let fresh = !resp.records.is_empty() || self.last_sent != Some(key);
            if let Some(damage) = chunk.damage {
                let s = status::tail_read(damage);
                if !fresh {
                    return Some(Err(self.end(s)));
                }
                self.ending = Some(Some(s));
            } else if caught_up && !self.req.follow {
                self.call.code = tonic::Code::Ok;
                self.ending = Some(None);
            }
            if fresh {
                self.last_sent = Some(key);
                return Some(Ok(resp));
            }
            if self.ending.is_some() {
                return None;
            }
            if !caught_up {
                continue;
            }
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        self.call.code = tonic::Code::Ok;
                        return None;
                    }
                }
                () = self.stop.cancelled() => {
                    let position = self.last_sent.map_or(self.req.after, |(p, _)| p);
                    return Some(Err(self.end(status::shutting_down(position))));
                }
            }
        }
    }

    /// Ends the call with `s`.
    fn end(&mut self, s: Status) -> Status {
        self.call.code = s.code();
        self.ending = Some(None);
        s
    }

    /// Reads the next chunk on a blocking thread.
    async fn read(&mut self) -> Result<crate::read::tail::Chunk, Status> {
        let Some(mut r) = self.reader.take() else {
            return Err(Status::internal("tail reader lost"));
        };
        let (l, q) = (self.ledger.clone(), self.req.clone());
        let (r, got) = tokio::task::spawn_blocking(move || {
            let got = chunk(log_of(&l, q.stream), &mut r, &q);
            (r, got)
        })
        .await
        .map_err(|e| Status::internal(format!("tail reader failed: {e}")))?;
        self.reader = Some(r);
        got.map_err(status::tail_read)
    }
}
