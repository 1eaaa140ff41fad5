//! `Usage`: one blocking task plans the query (building any missing usage
//! checkpoint first), folds, and sends the answer in chunks as the engine
//! produces it, one (family, id) at a time; plus the background task that
//! writes checkpoints after each seal.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::super::{count_rpc, status, Admission};
use crate::ledger::Ledger;
use crate::pb::{UsageRequest, UsageResponse};
use crate::read::build::Checkpoints;
use crate::read::usage::{answer, responses};
use crate::usage::{Query, Usage};

/// Responses computed ahead of a client. The engine holds its records
/// anyway; this bounds only what waits to be sent.
const RESPONSE_BUFFER: usize = 2;
/// Rows and anomalies per response: about 200 bytes each encoded, so a
/// response stays far below gRPC's usual 4 MiB limit, and what a call holds
/// for a slow client (about three responses) stays well under a MiB.
const ITEMS_PER_RESPONSE: usize = 1000;
/// How long a Usage call waits for one of `--max-usage-calls` to end.
pub(super) const USAGE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The response stream handed to tonic.
pub type ResponseStream = ReceiverStream<Result<UsageResponse, Status>>;

/// Checks the query (answering INVALID_ARGUMENT at once), then answers it
/// from a blocking task.
pub(super) fn usage(
    ledger: Arc<Ledger>,
    checkpoints: Arc<Checkpoints>,
    req: UsageRequest,
    admission: Admission,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Result<ResponseStream, Status> {
    let now = i128::from(crate::log::now_nanos());
    let query = Query::from_pb(&req, now).map_err(status::invalid)?;
    // Checked here too, so that a bad range or time zone is refused before
    // the stream starts.
    Usage::new(query.clone()).map_err(status::invalid)?;
    let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
    // A thread of its own, at a lower priority: a query computes on one CPU
    // for as long as it takes, and writers must not wait for it.
    let spawned = std::thread::Builder::new()
        .name("meterd-usage".into())
        .spawn(move || {
            yield_to_writers();
            let code = match run(&ledger, &checkpoints, &query, &tx) {
                Ok(()) => tonic::Code::Ok,
                Err(s) => {
                    let code = s.code();
                    let _ = tx.blocking_send(Err(s));
                    code
                }
            };
            count_rpc("Usage", code);
            drop(slot);
            drop(admission);
        });
    match spawned {
        Ok(_) => Ok(ReceiverStream::new(rx)),
        Err(e) => Err(Status::resource_exhausted(format!(
            "cannot start a thread for the usage query: {e}"
        ))),
    }
}

/// Nice value of the threads that answer Usage: under CPU contention the
/// scheduler gives writers (nice 0) most of the time.
const READER_NICE: libc::c_int = 10;

/// Lowers the calling thread's priority (Linux keeps a nice value per
/// thread). A failure only leaves it where it was.
fn yield_to_writers() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread; no memory is shared.
    unsafe {
        let tid = libc::gettid();
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, READER_NICE);
    }
}

fn run(
    ledger: &Ledger,
    checkpoints: &Checkpoints,
    query: &Query,
    tx: &mpsc::Sender<Result<UsageResponse, Status>>,
) -> Result<(), Status> {
    let log = &ledger.entries;
    let started = std::time::Instant::now();
    let upto = log.end();
    let plan = checkpoints.plan(log, true).map_err(status::usage_read)?;
    let answer = answer(log, &plan, query, upto).map_err(status::usage)?;
    tracing::debug!(stats = ?answer.stats, elapsed = ?started.elapsed(), "usage answered");
    let sent = responses(answer.report, ITEMS_PER_RESPONSE, |r| {
        tx.blocking_send(Ok(r)).is_ok()
    });
    if !sent {
        return Err(Status::cancelled("client went away"));
    }
    Ok(())
}

/// Writes the checkpoint of each newly sealed segment of the entries stream
/// in the background, so that queries find them ready. A failure is logged
/// once (and its recovery once); queries build what is missing themselves.
pub(super) fn spawn_checkpointer(
    ledger: Arc<Ledger>,
    checkpoints: Arc<Checkpoints>,
    stop: CancellationToken,
) {
    let mut seals = ledger.entries.watch_segments();
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::select! {
                changed = seals.changed() => if changed.is_err() { return },
                () = stop.cancelled() => return,
            }
            let (l, c) = (ledger.clone(), checkpoints.clone());
            let built =
                tokio::task::spawn_blocking(move || c.plan(&l.entries, true).map(|_| ())).await;
            match built {
                Ok(Ok(())) if failing => {
                    failing = false;
                    tracing::info!("usage checkpoints written again");
                }
                Ok(Ok(())) => {}
                Ok(Err(e)) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "usage checkpoints could not be written; queries will read more of the ledger");
                }
                Ok(Err(_)) => {}
                Err(e) => tracing::warn!(error = %e, "usage checkpoint task failed"),
            }
        }
    });
}
