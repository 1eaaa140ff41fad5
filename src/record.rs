//! The domain records (`Entry`, `MetricBatch`) and the one place where
//! protobuf input is validated. Nothing past [`Check`] ever sees a bad record.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use time::OffsetDateTime;

use crate::pb;

mod check;
mod names;

pub use check::Check;
pub use names::{Kind, Reason};

/// Resources at an endpoint; all values are non-negative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    pub cpu: i64,
    pub mem_bytes: i64,
    pub storage_bytes: i64,
}

/// One validated lifecycle event. Empty strings mean "not set" (Go's omitempty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub vm_id: String,
    pub snapshot_id: String,
    pub source_snapshot_id: String,
    pub reason: Option<Reason>,
    pub hypervisor: String,
    pub shape: Shape,
    /// Always UTC.
    pub emitted_at: OffsetDateTime,
    /// Idempotency key; empty when the caller gave none.
    pub id: String,
}

/// One validated measurement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metric {
    pub key: String,
    pub value: String,
    pub time: OffsetDateTime,
    pub labels: BTreeMap<String, String>,
}

/// One validated Juju metric batch. Its `Debug` output redacts the credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct MetricBatch {
    pub uuid: String,
    pub model_uuid: String,
    pub model_name: String,
    pub unit_name: String,
    pub charm_url: String,
    pub created: OffsetDateTime,
    pub metrics: Vec<Metric>,
    pub credentials: Vec<u8>,
    pub reseller_credentials: Vec<u8>,
    pub sla_credentials: Vec<u8>,
}

impl fmt::Debug for MetricBatch {
    // Credentials must never reach logs or error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricBatch")
            .field("uuid", &self.uuid)
            .field("model_uuid", &self.model_uuid)
            .field("model_name", &self.model_name)
            .field("unit_name", &self.unit_name)
            .field("charm_url", &self.charm_url)
            .field("created", &self.created)
            .field("metrics", &self.metrics.len())
            .field("credentials", &"<redacted>")
            .finish()
    }
}

/// Size and count limits, enforced before any work is done.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest id (vm_id, snapshot_id, entry id, batch uuid, model uuid), in bytes.
    pub max_id_len: usize,
    /// Longest other string (hypervisor, names, metric keys, values, labels), in bytes.
    pub max_string_len: usize,
    /// Most batches in one SubmitBatchRequest.
    pub max_batches_per_request: usize,
    /// Most entries in one EmitBatchRequest.
    pub max_entries_per_request: usize,
    /// Most metrics in one batch.
    pub max_metrics_per_batch: usize,
    /// Most labels on one metric.
    pub max_labels_per_metric: usize,
    /// Largest credential field, in bytes.
    pub max_credential_bytes: usize,
    /// How far in the future a timestamp may be before it is rejected.
    pub max_clock_skew: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_id_len: 256,
            max_string_len: 4096,
            max_batches_per_request: 1000,
            max_entries_per_request: 1000,
            max_metrics_per_batch: 10_000,
            max_labels_per_metric: 64,
            max_credential_bytes: 64 * 1024,
            max_clock_skew: Duration::from_secs(300),
        }
    }
}

/// A rule broken by one field. Displays as `field: rule`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub rule: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            rule: rule.into(),
        }
    }

    /// Prefixes the field path, e.g. `key` becomes `metrics[2].key`.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.rule)
    }
}

impl std::error::Error for Invalid {}

/// Converts a protobuf Timestamp within the range the JSON encoding can
/// represent (years 0001..=9999), or `None`.
pub fn timestamp_to_time(ts: &prost_types::Timestamp) -> Option<OffsetDateTime> {
    /// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
    const SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;
    if !SECONDS.contains(&ts.seconds) || !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    // Seconds and nanoseconds apart: no 128-bit arithmetic on every metric.
    OffsetDateTime::from_unix_timestamp(ts.seconds)
        .ok()?
        .replace_nanosecond(u32::try_from(ts.nanos).ok()?)
        .ok()
}

/// The protobuf Timestamp of a time.
pub fn time_to_timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    }
}

// === impl From<&Entry> for pb::Entry ===

impl From<&Entry> for pb::Entry {
    /// The protobuf form of a validated entry, for forwarding upstream.
    fn from(e: &Entry) -> pb::Entry {
        pb::Entry {
            kind: e.kind.to_pb() as i32,
            vm_id: e.vm_id.clone(),
            snapshot_id: e.snapshot_id.clone(),
            source_snapshot_id: e.source_snapshot_id.clone(),
            reason: e.reason.map_or(pb::Reason::Unspecified, Reason::to_pb) as i32,
            hypervisor: e.hypervisor.clone(),
            shape: Some(pb::Shape {
                cpu: e.shape.cpu,
                mem_bytes: e.shape.mem_bytes,
                storage_bytes: e.shape.storage_bytes,
            }),
            emitted_at: Some(time_to_timestamp(e.emitted_at)),
            id: e.id.clone(),
        }
    }
}

impl From<&MetricBatch> for pb::MetricBatch {
    /// The protobuf form of a validated batch, for forwarding upstream.
    fn from(b: &MetricBatch) -> pb::MetricBatch {
        pb::MetricBatch {
            uuid: b.uuid.clone(),
            model_uuid: b.model_uuid.clone(),
            model_name: b.model_name.clone(),
            unit_name: b.unit_name.clone(),
            charm_url: b.charm_url.clone(),
            created: Some(time_to_timestamp(b.created)),
            metrics: b
                .metrics
                .iter()
                .map(|m| pb::Metric {
                    key: m.key.clone(),
                    value: m.value.clone(),
                    time: Some(time_to_timestamp(m.time)),
                    labels: m.labels.clone(),
                })
                .collect(),
            credentials: b.credentials.clone(),
            reseller_credentials: b.reseller_credentials.clone(),
            sla_credentials: b.sla_credentials.clone(),
        }
    }
}
