//! The answer of a usage query, one (family, id) at a time, and its
//! protobuf form.

use super::decimal::Decimal;
use super::events::{Event, Grouped, Interner, Key};
use super::pairing::{pair, AnomalyType, Open};
use super::query::timestamp;
use super::rows::{Acc, Cutter};
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
/// paired when reached; [`Report::next_id`] gives its rows as they are cut,
/// the `Iterator` all of them at once.
#[derive(Debug)]
pub struct Report {
    keys: std::vec::IntoIter<Key>,
    grouped: Grouped<Open>,
    hypervisors: Interner,
    bounds: Vec<UnixNanos>,
    horizon: UnixNanos,
    /// `[start, end)`: anomalies are reported only for records in it.
    range: (UnixNanos, UnixNanos),
}

/// One (family, id) of the answer whose rows are cut as they are taken:
/// memory for one row at a time, whatever the range and granularity.
pub struct IdRows<'a> {
    pub family: Family,
    pub id: Box<str>,
    /// In pairing order.
    pub anomalies: Vec<Anomaly>,
    /// In bucket order.
    pub rows: RowIter<'a>,
}

/// The rows of an [`IdRows`].
pub struct RowIter<'a> {
    cutter: Cutter<'a>,
    bounds: &'a [UnixNanos],
    hypervisors: &'a Interner,
}

impl Iterator for RowIter<'_> {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        let a: Acc = self.cutter.next()?;
        Some(Row {
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
    }
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
        }
    }

    /// The next (family, id), paired; its rows are cut as they are taken.
    /// An id may have neither rows nor anomalies.
    pub fn next_id(&mut self) -> Option<IdRows<'_>> {
        let (family, id, i) = self.keys.next()?;
        let (seed, events) = self.grouped.take(i);
        events.sort_unstable_by_key(Event::order);
        let (start, end) = self.range;
        let mut intervals = Vec::new();
        let mut anomalies = Vec::new();
        pair(
            seed,
            events,
            |iv| intervals.push(iv),
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
        Some(IdRows {
            family,
            id,
            anomalies,
            rows: RowIter {
                cutter: Cutter::new(family, &self.bounds, self.horizon, intervals),
                bounds: &self.bounds,
                hypervisors: &self.hypervisors,
            },
        })
    }
}

impl Iterator for Report {
    type Item = IdUsage;

    fn next(&mut self) -> Option<IdUsage> {
        loop {
            let id = self.next_id()?;
            let usage = IdUsage {
                family: id.family,
                id: id.id.into_string(),
                rows: id.rows.collect(),
                anomalies: id.anomalies,
            };
            if !usage.rows.is_empty() || !usage.anomalies.is_empty() {
                return Some(usage);
            }
        }
    }
}

/// One row in its protobuf form.
pub fn row_to_pb(family: Family, id: &str, r: &Row) -> pb::UsageRow {
    pb::UsageRow {
        family: family_to_pb(family) as i32,
        id: id.to_owned(),
        hypervisor: r.hypervisor.clone(),
        bucket_start: Some(timestamp(r.bucket_start)),
        bucket_end: Some(timestamp(r.bucket_end)),
        running_nanos: r.running_nanos,
        vcpu_seconds: r.vcpu_seconds.text(),
        mem_byte_seconds: r.mem_byte_seconds.text(),
        storage_byte_seconds: r.storage_byte_seconds.text(),
        intervals: r.intervals,
        open: r.open,
    }
}

/// One anomaly in its protobuf form.
pub fn anomaly_to_pb_row(family: Family, id: &str, a: &Anomaly) -> pb::UsageAnomaly {
    pb::UsageAnomaly {
        r#type: anomaly_to_pb(a.kind) as i32,
        family: family_to_pb(family) as i32,
        id: id.to_owned(),
        at: Some(timestamp(a.at)),
        position: a.position,
    }
}

// === impl IdUsage ===

impl IdUsage {
    /// The protobuf rows and anomalies of this (family, id); a server sends
    /// them as they come, several ids to a `UsageResponse`.
    pub fn to_pb(&self) -> pb::UsageResponse {
        pb::UsageResponse {
            rows: self
                .rows
                .iter()
                .map(|r| row_to_pb(self.family, &self.id, r))
                .collect(),
            anomalies: self
                .anomalies
                .iter()
                .map(|a| anomaly_to_pb_row(self.family, &self.id, a))
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
