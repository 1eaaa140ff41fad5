//! The answer of a usage query, one (family, id) at a time, and its
//! protobuf form.

use super::decimal::Decimal;
use super::events::{Event, Grouped, Interner, Key};
use super::pairing::{pair, AnomalyType, Open};
use super::query::timestamp;
use super::rows::{Acc, Rows};
use super::{Family, UnixNanos};
use crate::pb;

/// The usage of one (family, id) in one bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Start of the bucket (the calendar boundary, or the range's start).
    pub bucket_start: UnixNanos,
    /// End of the bucket, exclusive (the calendar boundary, or the range's end).
    pub bucket_end: UnixNanos,
    /// Hypervisor of the latest start among the bucket's intervals.
    pub hypervisor: String,
    /// Nanoseconds covered by intervals inside the bucket, up to the horizon.
    pub running_nanos: i64,
    pub vcpu_seconds: Decimal,
    pub mem_byte_seconds: Decimal,
    pub storage_byte_seconds: Decimal,
    /// Intervals that overlap the visible part of the bucket.
    pub intervals: u32,
    /// An interval was still running where the bucket's view ends.
    pub open: bool,
}

/// One record that could not be paired cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: AnomalyType,
    /// The record's `emitted_at`.
    pub at: UnixNanos,
    pub position: u64,
}

/// Everything the answer says about one (family, id): its rows in bucket
/// order, its anomalies in pairing order. Never both empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdUsage {
    pub family: Family,
    pub id: String,
    pub rows: Vec<Row>,
    pub anomalies: Vec<Anomaly>,
}

/// The answer, as an iterator in family, id order. Each (family, id) is
/// paired and bucketed when reached.
#[derive(Debug)]
pub struct Report {
    keys: std::vec::IntoIter<Key>,
    grouped: Grouped<Open>,
    hypervisors: Interner,
    bounds: Vec<UnixNanos>,
    horizon: UnixNanos,
    /// `[start, end)`: anomalies are reported only for records in it.
    range: (UnixNanos, UnixNanos),
    /// The rows of the id being computed, reused from one id to the next.
    scratch: Vec<Acc>,
}

// === impl Report ===

impl Report {
    pub(super) fn new(
        keys: Vec<Key>,
        grouped: Grouped<Open>,
        hypervisors: Interner,
        bounds: Vec<UnixNanos>,
        horizon: UnixNanos,
        range: (UnixNanos, UnixNanos),
    ) -> Report {
        Report {
            keys: keys.into_iter(),
            grouped,
            hypervisors,
            bounds,
            horizon,
            range,
            scratch: Vec::new(),
        }
    }

    fn compute(&mut self, family: Family, id: Box<str>, i: usize) -> IdUsage {
        let (seed, events) = self.grouped.take(i);
        events.sort_unstable_by_key(Event::order);
        let (start, end) = self.range;
        let buf = std::mem::take(&mut self.scratch);
        let mut rows = Rows::new(family, &self.bounds, self.horizon, buf);
        let mut anomalies = Vec::new();
        pair(
            seed,
            events,
            |iv| rows.add(iv),
            |kind, e: &Event| {
                if (start..end).contains(&e.at()) {
                    anomalies.push(Anomaly {
                        kind,
                        at: e.at(),
                        position: e.position,
                    });
                }
            },
        );
        let accs = rows.finish();
        let rows = accs
            .iter()
            .map(|a| Row {
                bucket_start: self.bounds[a.bucket],
                bucket_end: self.bounds[a.bucket + 1],
                hypervisor: self.hypervisors.name(a.hypervisor).to_owned(),
                // At most the range's length, which Usage::new bounds by i64::MAX.
                running_nanos: i64::try_from(a.nanos).unwrap_or(i64::MAX),
                vcpu_seconds: a.vcpu,
                mem_byte_seconds: a.mem,
                storage_byte_seconds: a.storage,
                intervals: a.intervals,
                open: a.open,
            })
            .collect();
        self.scratch = accs;
        IdUsage {
            family,
            id: id.into_string(),
            rows,
            anomalies,
        }
    }
}

impl Iterator for Report {
    type Item = IdUsage;

    fn next(&mut self) -> Option<IdUsage> {
        loop {
            let (family, id, i) = self.keys.next()?;
            let usage = self.compute(family, id, i);
            if !usage.rows.is_empty() || !usage.anomalies.is_empty() {
                return Some(usage);
            }
        }
    }
}

// === impl IdUsage ===

impl IdUsage {
    /// The protobuf rows and anomalies of this (family, id); a server sends
    /// them as they come, several ids to a `UsageResponse`.
    pub fn to_pb(&self) -> pb::UsageResponse {
        let family = family_to_pb(self.family) as i32;
        pb::UsageResponse {
            rows: self
                .rows
                .iter()
                .map(|r| pb::UsageRow {
                    family,
                    id: self.id.clone(),
                    hypervisor: r.hypervisor.clone(),
                    bucket_start: Some(timestamp(r.bucket_start)),
                    bucket_end: Some(timestamp(r.bucket_end)),
                    running_nanos: r.running_nanos,
                    vcpu_seconds: r.vcpu_seconds.text(),
                    mem_byte_seconds: r.mem_byte_seconds.text(),
                    storage_byte_seconds: r.storage_byte_seconds.text(),
                    intervals: r.intervals,
                    open: r.open,
                })
                .collect(),
            anomalies: self
                .anomalies
                .iter()
                .map(|a| pb::UsageAnomaly {
                    r#type: anomaly_to_pb(a.kind) as i32,
                    family,
                    id: self.id.clone(),
                    at: Some(timestamp(a.at)),
                    position: a.position,
                })
                .collect(),
        }
    }
}

fn family_to_pb(f: Family) -> pb::Family {
    match f {
        Family::VmCompute => pb::Family::VmCompute,
        Family::VmStorage => pb::Family::VmStorage,
        Family::SnapStorage => pb::Family::SnapStorage,
    }
}

fn anomaly_to_pb(t: AnomalyType) -> pb::AnomalyType {
    match t {
        AnomalyType::OrphanStop => pb::AnomalyType::OrphanStop,
        AnomalyType::DuplicateStart => pb::AnomalyType::DuplicateStart,
        AnomalyType::StartWhileOpen => pb::AnomalyType::StartWhileOpen,
        AnomalyType::StopShapeMismatch => pb::AnomalyType::StopShapeMismatch,
    }
}
