//! `EmitBatch`: many entries in one call, each accepted or rejected on its
//! own. The accepted ones go to the sinks in one submit, so they share one
//! write (and one sync) and keep the request's order.

use std::sync::Arc;

use time::OffsetDateTime;

use super::inflight::Hold;
use super::status::Error;
use super::Shared;
use crate::metrics::{field_label, metrics, RecordLabels, RejectLabels, TypeLabels};
use crate::pb::{EmitBatchRequest, EmitBatchResponse, EntryResult};
use crate::record::{time_to_timestamp, Check, Entry, Invalid};
use crate::sink::{Outcome, Record};

pub(super) async fn emit_batch(
    shared: &Arc<Shared>,
    req: EmitBatchRequest,
    deadline: Option<tokio::time::Instant>,
    read: Option<Hold>,
) -> Result<EmitBatchResponse, Error> {
    check_size(shared, &req)?;
    let check = Check {
        limits: &shared.limits,
        now: OffsetDateTime::now_utc(),
    };
    let mut results = Vec::with_capacity(req.len());
    // Index in `results` and metric labels of each record handed to the sinks.
    let mut accepted = Vec::with_capacity(req.len());
    let mut records = Vec::with_capacity(req.len());
    for (i, pb) in req.into_positions().enumerate() {
        let Ok(pb) = pb.map_err(|e| reject_undecodable(&mut results, i, &e)) else {
            continue;
        };
        let checked = check.entry(pb);
        note_checked(checked, i, &mut results, &mut accepted, &mut records);
    }
    tracing::debug!(
        entries = results.len(),
        accepted = records.len(),
        "emit batch"
    );
    if records.is_empty() {
        return Ok(EmitBatchResponse { results });
    }

    let records: Arc<[Record]> = records.into();
    let held = shared.room(&records, deadline).await?;
    // The request's bytes counted in --max-in-flight-bytes until its
    // records counted in --max-queue-bytes.
    if let Some(read) = read {
        read.release();
    }
    let outcomes = shared.submit(records, held).await?;
    if outcomes.len() != accepted.len() {
        return Err(Error::Incomplete {
            answered: outcomes.len(),
            of: accepted.len(),
        });
    }
    apply_outcomes(&mut results, accepted, outcomes);
    Ok(EmitBatchResponse { results })
}

/// Refuses the whole call when it holds more entries than allowed.
fn check_size(shared: &Shared, req: &EmitBatchRequest) -> Result<(), Error> {
    let max = shared.limits.max_entries_per_request;
    if req.len() > max {
        // The whole call, before any entry is looked at: the sender must
        // split it, so no entry gets an answer of its own.
        count_rejected("entries");
        return Err(Invalid::new(
            "entries",
            format!(
                "{} entries exceed the limit of {max} per request (--max-entries-per-request)",
                req.len()
            ),
        )
        .into());
    }
    Ok(())
}

/// Records the check of entry `i`: its result, and when accepted, its
/// labels and record for the sinks.
fn note_checked(
    checked: Result<Entry, Invalid>,
    i: usize,
    results: &mut Vec<EntryResult>,
    accepted: &mut Vec<(usize, RecordLabels)>,
    records: &mut Vec<Record>,
) {
    match checked {
        Ok(entry) => {
            results.push(EntryResult {
                duplicate: false,
                emitted_at: Some(time_to_timestamp(entry.emitted_at)),
                rejected: String::new(),
            });
            accepted.push((
                i,
                RecordLabels {
                    r#type: "entry",
                    kind: entry.kind.as_str(),
                    reason: entry.reason.map_or("", |r| r.as_str()),
                },
            ));
            records.push(Record::entry(entry));
        }
        Err(invalid) => {
            let invalid = invalid.within(&format!("entries[{i}]"));
            tracing::debug!(%invalid, "entry rejected");
            count_rejected(&invalid.field);
            results.push(EntryResult {
                duplicate: false,
                emitted_at: None,
                rejected: invalid.to_string(),
            });
        }
    }
}

/// Updates the results of the accepted entries with the sinks' outcomes,
/// counting them.
fn apply_outcomes(
    results: &mut [EntryResult],
    accepted: Vec<(usize, RecordLabels)>,
    outcomes: Vec<Outcome>,
) {
    let m = metrics();
    for ((i, labels), outcome) in accepted.into_iter().zip(outcomes) {
        let Some(result) = results.get_mut(i) else {
            continue;
        };
        match outcome {
            Outcome::Written => {
                m.accepted.get_or_create(&labels).inc();
            }
            Outcome::Duplicate => {
                result.duplicate = true;
                m.duplicates
                    .get_or_create(&TypeLabels { r#type: "entry" })
                    .inc();
            }
            Outcome::Rejected(why) => {
                // A pass-through upstream refused it: reported like an entry
                // that broke a rule here.
                count_rejected("upstream");
                result.emitted_at = None;
                result.rejected = why.to_string();
            }
        }
    }
}

/// An entry that could not be decoded: rejected at its position, like one
/// that broke a rule.
fn reject_undecodable(results: &mut Vec<EntryResult>, i: usize, error: &str) {
    tracing::debug!(entry = i, error, "entry could not be decoded");
    count_rejected("undecodable");
    results.push(EntryResult {
        duplicate: false,
        emitted_at: None,
        rejected: format!("entries[{i}]: could not be decoded: {error}"),
    });
}

fn count_rejected(field: &str) {
    metrics()
        .rejected
        .get_or_create(&RejectLabels {
            r#type: "entry",
            field: field_label(field),
        })
        .inc();
}
