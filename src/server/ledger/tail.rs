//! `Tail`: a task reads the stream in chunks on a blocking thread, sends
//! them through a bounded channel, and once caught up waits for the writer
//! to say that more records are durable (`Log::subscribe`), not polling.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::super::{count_rpc, status, Admission};
use crate::ledger::Ledger;
use crate::log::{Log, LogReader};
use crate::pb::{TailRequest, TailResponse};
use crate::read::tail::{chunk, Request, Stream};
use crate::record::Record;

/// Responses read ahead of a client. Each is at most about 1.3 MiB (see
/// `read::tail::MAX_BYTES`), so a client that stops reading holds a few MiB
/// and then its reader waits; the log's writer never waits for readers.
const RESPONSE_BUFFER: usize = 4;

/// The response stream handed to tonic.
pub type ResponseStream = ReceiverStream<Result<TailResponse, Status>>;

fn log_of(ledger: &Ledger, stream: Stream) -> &Log<Record> {
    match stream {
        Stream::Entries => &ledger.entries,
        Stream::Batches => &ledger.batches,
    }
}

/// Checks the request, places the reader (answering OUT_OF_RANGE or
/// INVALID_ARGUMENT at once), then streams from a task.
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
    let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
    tokio::spawn(async move {
        let code = follow(ledger, req, reader, changes, &tx, stop).await;
        count_rpc("Tail", code);
        drop(admission);
    });
    Ok(ReceiverStream::new(rx))
}

/// Sends chunks until the end (or forever, following); returns the code
/// the call ended with.
async fn follow(
    ledger: Arc<Ledger>,
    req: Request,
    reader: LogReader,
    mut changes: tokio::sync::watch::Receiver<u64>,
    tx: &mpsc::Sender<Result<TailResponse, Status>>,
    stop: CancellationToken,
) -> tonic::Code {
    let req = Arc::new(req);
    let mut reader = Some(reader);
    // (position, caught_up) of the last response, so that a wake-up that
    // brings nothing new sends nothing.
    let mut last_sent: Option<(u64, bool)> = None;
    loop {
        // Seen before reading: a commit during the read wakes the wait below.
        changes.borrow_and_update();
        let Some(mut r) = reader.take() else {
            return tonic::Code::Internal;
        };
        let (l, q) = (ledger.clone(), req.clone());
        let read = tokio::task::spawn_blocking(move || {
            let got = chunk(log_of(&l, q.stream), &mut r, &q);
            (r, got)
        })
        .await;
        let (r, got) = match read {
            Ok(v) => v,
            Err(e) => {
                let _ = tx
                    .send(Err(Status::internal(format!("tail reader failed: {e}"))))
                    .await;
                return tonic::Code::Internal;
            }
        };
        reader = Some(r);
        let chunk = match got {
            Ok(c) => c,
            Err(e) => {
                let s = status::tail_read(e);
                let code = s.code();
                let _ = tx.send(Err(s)).await;
                return code;
            }
        };
        let resp = chunk.response;
        let caught_up = resp.caught_up;
        let key = (resp.position, caught_up);
        if !resp.records.is_empty() || last_sent != Some(key) {
            last_sent = Some(key);
            if tx.send(Ok(resp)).await.is_err() {
                return tonic::Code::Cancelled;
            }
        }
        if let Some(damage) = chunk.damage {
            let s = status::tail_read(damage);
            let code = s.code();
            let _ = tx.send(Err(s)).await;
            return code;
        }
        if !caught_up {
            continue;
        }
        if !req.follow {
            return tonic::Code::Ok;
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return tonic::Code::Ok;
                }
            }
            () = tx.closed() => return tonic::Code::Cancelled,
            () = stop.cancelled() => {
                let position = last_sent.map_or(req.after, |(p, _)| p);
                let _ = tx.send(Err(status::shutting_down(position))).await;
                return tonic::Code::Unavailable;
            }
        }
    }
}
