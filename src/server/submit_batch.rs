//! `SubmitBatch`: the Juju collector exchange over a bidirectional stream.
//!
//! A reader task validates each request, takes room for its records in
//! `--max-queue-bytes` and starts its write at once; a responder task awaits
//! the writes in request order and sends one response per request. Both
//! hand-offs are bounded channels, and the reader stops reading while it
//! waits for room, so a client that pipelines faster than the disk, or stops
//! reading, is slowed down rather than allowed to grow server memory. No
//! room within the wait ends the stream with RESOURCE_EXHAUSTED, after the
//! responses to the requests before it.

use std::collections::BTreeMap;
use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::inflight::Hold;
use super::status::Error;
use super::{count_rpc, Admission, Shared};
use crate::metrics::{field_label, metrics, RecordLabels, RejectLabels, TypeLabels};
use crate::pb::{
    EnvResponse, ModelStatus, RejectedBatch, SubmitBatchRequest, SubmitBatchResponse, UnitStatus,
};
use crate::record::Check;
use crate::sink::{Outcome, Record, SinkFuture};

/// Requests of one stream whose writes may be under way at once.
const PIPELINE_DEPTH: usize = 32;
/// Responses the client has not read yet before the stream stops reading requests.
const RESPONSE_BUFFER: usize = 16;

/// The response stream handed to tonic.
pub type ResponseStream = ReceiverStream<Result<SubmitBatchResponse, Status>>;

/// One request on its way through: what was rejected, and the write of the rest.
struct InFlight {
    rejected: Vec<RejectedBatch>,
    /// (index in the request, batch uuid, model uuid) of each record in the
    /// write, in order.
    accepted: Vec<(usize, String, String)>,
    write: Option<SinkFuture<Vec<Outcome>>>,
}

/// Serves one stream; `admission` holds its `--max-in-flight` slot until the
/// stream ends.
pub(super) fn submit_batch(
    shared: Arc<Shared>,
    mut inbound: Streaming<SubmitBatchRequest>,
    admission: Admission,
    deadline: Option<tokio::time::Instant>,
    read: Option<Hold>,
) -> ResponseStream {
    let (pending_tx, mut pending_rx) = mpsc::channel::<Result<InFlight, Status>>(PIPELINE_DEPTH);
    let (out_tx, out_rx) = mpsc::channel(RESPONSE_BUFFER);

    let reader_shared = shared.clone();
    tokio::spawn(async move {
        loop {
            let item = match inbound.message().await {
                Ok(Some(req)) => {
                    let started = start(&reader_shared, req, deadline).await;
                    // Its records have room in the queue (or were rejected):
                    // its bytes no longer count in --max-in-flight-bytes.
                    if let Some(read) = &read {
                        read.release();
                    }
                    started.map_err(Status::from)
                }
                Ok(None) => break,
                Err(status) => Err(status),
            };
            let failed = item.is_err();
            // A failed send means the responder is gone (client left or the
            // stream already ended with an error).
            if pending_tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });

    tokio::spawn(async move {
        let mut code = tonic::Code::Ok;
        while let Some(item) = pending_rx.recv().await {
            let response = match item {
                Ok(in_flight) => finish(&shared, in_flight).await,
                Err(status) => Err(status),
            };
            if let Err(status) = &response {
                code = status.code();
            }
            if out_tx.send(response).await.is_err() {
                code = tonic::Code::Cancelled;
                break;
            }
            if code != tonic::Code::Ok {
                break;
            }
        }
        count_rpc("SubmitBatch", code);
        drop(admission);
    });

    ReceiverStream::new(out_rx)
}

/// Validates a request's batches and queues the accepted ones for writing,
/// so the ledger keeps the stream's order. Fails only when no room for
/// them came free in time.
async fn start(
    shared: &Arc<Shared>,
    req: SubmitBatchRequest,
    deadline: Option<tokio::time::Instant>,
) -> Result<InFlight, Error> {
    let limits = &shared.limits;
    let mut rejected = Vec::new();
    let mut accepted = Vec::new();
    let mut records = Vec::with_capacity(req.len());

    if req.len() > limits.max_batches_per_request {
        let reason = format!(
            "batches: {} batches exceed the limit of {} per request",
            req.len(),
            limits.max_batches_per_request
        );
        for (i, b) in req.into_positions().enumerate() {
            count_rejected("batches");
            let (uuid, model_uuid) = b.map(|b| (b.uuid, b.model_uuid)).unwrap_or_default();
            rejected.push(rejection(i, uuid, model_uuid, reason.clone()));
        }
    } else {
        let check = Check {
            limits,
            now: OffsetDateTime::now_utc(),
        };
        let keep_bodies = shared.sink.needs_body();
        for (i, pb) in req.into_positions().enumerate() {
            let pb = match pb {
                Ok(pb) => pb,
                Err(error) => {
                    // Its uuid is in the bytes that could not be decoded.
                    tracing::debug!(batch = i, %error, "batch could not be decoded");
                    count_rejected("undecodable");
                    let reason = format!("could not be decoded: {error}");
                    rejected.push(rejection(i, String::new(), String::new(), reason));
                    continue;
                }
            };
            let (uuid, model_uuid) = (pb.uuid.clone(), pb.model_uuid.clone());
            match check.batch(pb) {
                Ok(batch) => {
                    tracing::debug!(uuid = %batch.uuid, model_uuid = %batch.model_uuid, unit = %batch.unit_name, metrics = batch.metrics.len(), "batch accepted");
                    accepted.push((i, uuid, model_uuid));
                    let record = Record::batch(batch);
                    records.push(if keep_bodies {
                        record
                    } else {
                        record.without_body()
                    });
                }
                Err(invalid) => {
                    tracing::debug!(%uuid, %invalid, "batch rejected");
                    count_rejected(&invalid.field);
                    rejected.push(rejection(i, uuid, model_uuid, invalid.to_string()));
                }
            }
        }
    }

    let write = if records.is_empty() {
        None
    } else {
        let records: Arc<[crate::sink::Record]> = records.into();
        let held = shared.room(&records, deadline).await?;
        Some(Box::pin(shared.submit(records, held)) as _)
    };
    Ok(InFlight {
        rejected,
        accepted,
        write,
    })
}

/// Waits for a request's write and builds its response: acks grouped by
/// model uuid, as the Juju collector answers.
async fn finish(shared: &Shared, mut in_flight: InFlight) -> Result<SubmitBatchResponse, Status> {
    let mut env_responses: BTreeMap<String, EnvResponse> = BTreeMap::new();
    let mut new_grace_period = None;
    // Counted once per request: a labelled counter's lookup hashes and
    // compares its labels, 4.5 % of SubmitBatch's CPU when done per batch.
    let (mut written, mut duplicates) = (0u64, 0u64);
    if let Some(write) = in_flight.write {
        let outcomes = write.await.map_err(|e| Status::from(Error::Sink(e)))?;
        // Written and duplicate batches are both acknowledged: a re-sent
        // batch must be acked again so that its sender can forget it.
        for ((index, uuid, model_uuid), outcome) in in_flight.accepted.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Written => written += 1,
                Outcome::Duplicate => duplicates += 1,
                Outcome::Rejected(why) => {
                    // A pass-through upstream refused it: reported like a
                    // batch that broke a rule here.
                    count_rejected("upstream");
                    in_flight
                        .rejected
                        .push(rejection(index, uuid, model_uuid, why.to_string()));
                    continue;
                }
            }
            let env = env_responses.entry(model_uuid).or_insert_with_key(|model| {
                // Statuses from a collector upstream, relayed as a Juju
                // controller would.
                let relay = shared.sink.relay(model).unwrap_or_default();
                if let Some(grace) = relay.new_grace_period {
                    new_grace_period = prost_types::Duration::try_from(grace).ok();
                }
                EnvResponse {
                    acks: Vec::new(),
                    model_status: Some(ModelStatus {
                        status: relay.model_status.status,
                        info: relay.model_status.info,
                    }),
                    unit_statuses: relay
                        .unit_statuses
                        .into_iter()
                        .map(|(unit, s)| {
                            (
                                unit,
                                UnitStatus {
                                    status: s.status,
                                    info: s.info,
                                },
                            )
                        })
                        .collect(),
                }
            });
            if !env.acks.contains(&uuid) {
                env.acks.push(uuid);
            }
        }
    }
    count_accepted(written, duplicates);
    Ok(SubmitBatchResponse {
        uuid: uuid::Uuid::new_v4().to_string(),
        env_responses,
        new_grace_period,
        rejected: {
            in_flight.rejected.sort_by_key(|r| r.index);
            in_flight.rejected
        },
    })
}

/// Counts the batches of one request that were written and those that
/// were duplicates.
fn count_accepted(written: u64, duplicates: u64) {
    let m = metrics();
    if written > 0 {
        m.accepted
            .get_or_create(&RecordLabels {
                r#type: "batch",
                kind: "",
                reason: "",
            })
            .inc_by(written);
    }
    if duplicates > 0 {
        m.duplicates
            .get_or_create(&TypeLabels { r#type: "batch" })
            .inc_by(duplicates);
    }
}

/// Counts a rejected batch under its field, with indexes dropped.
fn count_rejected(field: &str) {
    metrics()
        .rejected
        .get_or_create(&RejectLabels {
            r#type: "batch",
            field: field_label(field),
        })
        .inc();
}

fn rejection(index: usize, uuid: String, model_uuid: String, reason: String) -> RejectedBatch {
    RejectedBatch {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        uuid,
        model_uuid,
        reason,
    }
}
