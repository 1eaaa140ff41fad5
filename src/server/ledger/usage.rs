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
use crate::read::usage::answer;
use crate::usage::{Query, Usage};

/// Responses computed ahead of a client. The engine holds its records
/// anyway; this bounds only what waits to be sent.
const RESPONSE_BUFFER: usize = 4;
/// Rows and anomalies per response: about 200 bytes each, so a response
/// stays far below gRPC's usual 4 MiB limit.
const ITEMS_PER_RESPONSE: usize = 2000;

/// The response stream handed to tonic.
pub type ResponseStream = ReceiverStream<Result<UsageResponse, Status>>;

/// Checks the query (answering INVALID_ARGUMENT at once), then answers it
/// from a blocking task.
pub(super) fn usage(
    ledger: Arc<Ledger>,
    checkpoints: Arc<Checkpoints>,
    req: UsageRequest,
    admission: Admission,
) -> Result<ResponseStream, Status> {
    let now = i128::from(crate::log::now_nanos());
    let query = Query::from_pb(&req, now).map_err(status::invalid)?;
    // Checked here too, so that a bad range or time zone is refused before
    // the stream starts.
    Usage::new(query.clone()).map_err(status::invalid)?;
    let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
    tokio::task::spawn_blocking(move || {
        let code = match run(&ledger, &checkpoints, &query, &tx) {
            Ok(()) => tonic::Code::Ok,
            Err(s) => {
                let code = s.code();
                let _ = tx.blocking_send(Err(s));
                code
            }
        };
        count_rpc("Usage", code);
        drop(admission);
    });
    Ok(ReceiverStream::new(rx))
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
    let mut chunk = UsageResponse::default();
    for id in answer.report {
        let pb = id.to_pb();
        chunk.rows.extend(pb.rows);
        chunk.anomalies.extend(pb.anomalies);
        if chunk.rows.len() + chunk.anomalies.len() >= ITEMS_PER_RESPONSE
            && tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_err()
        {
            // The client has gone.
            return Err(Status::cancelled("client went away"));
        }
    }
    if (!chunk.rows.is_empty() || !chunk.anomalies.is_empty())
        && tx.blocking_send(Ok(chunk)).is_err()
    {
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
