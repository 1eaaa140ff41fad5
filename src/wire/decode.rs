//! Reading the Go-compatible JSON back into records: for spools, which keep
//! records as ledger lines until an upstream takes them. Accepts any RFC 3339
//! zone offset (Go writes the caller's zone) and normalizes to UTC.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use crate::record::{Entry, Kind, Metric, MetricBatch, Reason, Shape};

/// A line that is not a record meterd could have written.
#[derive(Debug, thiserror::Error)]
#[error("unreadable record: {0}")]
pub struct DecodeError(pub(super) String);

#[derive(Deserialize)]
struct GoEntry {
    kind: String,
    #[serde(default)]
    vm_id: String,
    #[serde(default)]
    snapshot_id: String,
    #[serde(default)]
    source_snapshot_id: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    hypervisor: String,
    #[serde(default)]
    shape: GoShape,
    emitted_at: String,
    #[serde(default)]
    id: String,
}

#[derive(Default, Deserialize)]
struct GoShape {
    #[serde(default)]
    cpu: i64,
    #[serde(default)]
    mem_bytes: i64,
    #[serde(default)]
    storage_bytes: i64,
}

#[derive(Deserialize)]
struct GoBatch {
    uuid: String,
    #[serde(rename = "env-uuid")]
    model_uuid: String,
    #[serde(rename = "model-name", default)]
    model_name: String,
    #[serde(rename = "unit-name", default)]
    unit_name: String,
    #[serde(rename = "charm-url", default)]
    charm_url: String,
    created: String,
    #[serde(default)]
    metrics: Option<Vec<GoMetric>>,
    #[serde(default)]
    credentials: Option<String>,
    #[serde(rename = "reseller-credentials", default)]
    reseller_credentials: Option<String>,
    #[serde(rename = "sla-credentials", default)]
    sla_credentials: Option<String>,
}

#[derive(Deserialize)]
struct GoMetric {
    key: String,
    value: String,
    time: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

const KINDS: [Kind; 6] = [
    Kind::VmComputeStart,
    Kind::VmComputeStop,
    Kind::VmStorageStart,
    Kind::VmStorageStop,
    Kind::SnapStorageStart,
    Kind::SnapStorageStop,
];

const REASONS: [Reason; 9] = [
    Reason::Boot,
    Reason::Restart,
    Reason::Clone,
    Reason::Restore,
    Reason::HibernateWake,
    Reason::StopUser,
    Reason::StopCrash,
    Reason::VmRemove,
    Reason::SnapRemove,
];

/// The kind a wire name stands for.
pub(super) fn kind_of(name: &str) -> Result<Kind, DecodeError> {
    KINDS
        .into_iter()
        .find(|k| k.as_str() == name)
        .ok_or_else(|| DecodeError(format!("unknown kind {name:?}")))
}

/// Whether a non-empty reason is one the Go package defines.
pub(super) fn reason_known(name: &str) -> bool {
    REASONS.iter().any(|r| r.as_str() == name)
}

/// Parses one entry line.
pub fn decode_entry(line: &[u8]) -> Result<Entry, DecodeError> {
    let g: GoEntry = serde_json::from_slice(line).map_err(|e| DecodeError(e.to_string()))?;
    let kind = Kind::from_wire(&g.kind)
        .ok_or_else(|| DecodeError(format!("unknown kind {:?}", g.kind)))?;
    let reason = if g.reason.is_empty() {
        None
    } else {
        Some(
            Reason::from_wire(&g.reason)
                .ok_or_else(|| DecodeError(format!("unknown reason {:?}", g.reason)))?,
        )
    };
    Ok(Entry {
        kind,
        vm_id: g.vm_id,
        snapshot_id: g.snapshot_id,
        source_snapshot_id: g.source_snapshot_id,
        reason,
        hypervisor: g.hypervisor,
        shape: Shape {
            cpu: g.shape.cpu,
            mem_bytes: g.shape.mem_bytes,
            storage_bytes: g.shape.storage_bytes,
        },
        emitted_at: time(&g.emitted_at)?,
        id: g.id,
    })
}

/// Parses one batch line (Go's `json.Marshal` of a MetricBatch).
pub fn decode_batch(line: &[u8]) -> Result<MetricBatch, DecodeError> {
    let g: GoBatch = serde_json::from_slice(line).map_err(|e| DecodeError(e.to_string()))?;
    let metrics = g
        .metrics
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            Ok(Metric {
                key: m.key,
                value: m.value,
                time: time(&m.time)?,
                labels: m.labels.unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    Ok(MetricBatch {
        uuid: g.uuid,
        model_uuid: g.model_uuid,
        model_name: g.model_name,
        unit_name: g.unit_name,
        charm_url: g.charm_url,
        created: time(&g.created)?,
        metrics,
        credentials: bytes(g.credentials)?,
        reseller_credentials: bytes(g.reseller_credentials)?,
        sla_credentials: bytes(g.sla_credentials)?,
    })
}

pub(super) fn time(s: &str) -> Result<OffsetDateTime, DecodeError> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map(|t| t.to_offset(UtcOffset::UTC))
        .map_err(|e| DecodeError(format!("time {s:?}: {e}")))
}

fn bytes(b: Option<String>) -> Result<Vec<u8>, DecodeError> {
    match b {
        None => Ok(Vec::new()),
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| DecodeError(format!("base64: {e}"))),
    }
}
