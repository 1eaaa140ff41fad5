//! `Emit`: one entry, validated at the edge and recorded by the sinks.

use std::sync::Arc;

use time::OffsetDateTime;

use super::status::Error;
use super::Shared;
use crate::metrics::{field_label, metrics, RecordLabels, RejectLabels, TypeLabels};
use crate::pb::{EmitRequest, EmitResponse};
use crate::record::{time_to_timestamp, Check, Invalid};
use crate::sink::{Outcome, Record};

pub(super) async fn emit(
    shared: &Arc<Shared>,
    req: EmitRequest,
    deadline: Option<tokio::time::Instant>,
) -> Result<EmitResponse, Error> {
    let check = Check {
        limits: &shared.limits,
        now: OffsetDateTime::now_utc(),
    };
    let entry = req
        .entry
        .ok_or_else(|| Invalid::new("entry", "must be set"))
        .and_then(|pb| check.entry(pb).map_err(|e| e.within("entry")))
        .inspect_err(|e| {
            metrics()
                .rejected
                .get_or_create(&RejectLabels {
                    r#type: "entry",
                    field: field_label(&e.field),
                })
                .inc();
        })?;
    let labels = RecordLabels {
        r#type: "entry",
        kind: entry.kind.as_str(),
        reason: entry.reason.map_or("", |r| r.as_str()),
    };
    let emitted_at = time_to_timestamp(entry.emitted_at);
    tracing::debug!(kind = entry.kind.as_str(), vm_id = %entry.vm_id, snapshot_id = %entry.snapshot_id, id = %entry.id, "emit");

    let records: Arc<[Record]> = Arc::from([Record::entry(entry)]);
    let held = shared.room(&records, deadline).await?;
    let outcomes = shared.submit(records, held).await?;
    if let Some(Outcome::Rejected(why)) = outcomes.first() {
        metrics()
            .rejected
            .get_or_create(&RejectLabels {
                r#type: "entry",
                field: "upstream",
            })
            .inc();
        return Err(Error::Rejected(why.to_string()));
    }
    let duplicate = outcomes.first() == Some(&Outcome::Duplicate);
    if duplicate {
        metrics()
            .duplicates
            .get_or_create(&TypeLabels { r#type: "entry" })
            .inc();
    } else {
        metrics().accepted.get_or_create(&labels).inc();
    }
    Ok(EmitResponse {
        duplicate,
        emitted_at: Some(emitted_at),
    })
}
