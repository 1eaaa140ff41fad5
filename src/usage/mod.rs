//! Billable usage from lifecycle entries: the pure engine behind
//! `LedgerService.Usage` (no I/O, no async). A reader pushes records in any
//! order, and the engine pairs starts with stops per (family, id) and cuts the
//! intervals into calendar buckets, exactly.
//!
//! ```text
//! let mut usage = Usage::new(Query::from_pb(&request, now)?)?;
//! for (position, received_at, entry) in log { usage.push(position, received_at, &entry)?; }
//! for id in usage.finish() { send(id.to_pb()); }   // ordered by family, id, bucket
//! ```
//!
//! # Semantics (PRODUCT.md "Pairing rules", and where it is silent)
//! - Records are paired per (family, id) in `emitted_at` order, ties by
//!   position; arrival order never matters.
//! - "Shape" means the fields the family bills (`events::Billed`): cpu and
//!   mem_bytes for compute, storage_bytes for storage. A start that differs
//!   only elsewhere is a `DuplicateStart`; a stop mismatches only on fields
//!   it gives (non-zero), since the Go encoding omits zero fields.
//! - The horizon is the earliest of `end`, `as_of` and `now`; nothing after
//!   it counts, whether or not an interval has a stop (a stop from a client
//!   clock ahead of ours does not bill the future).
//! - Buckets are clipped to `[start, end)`; a row's `open` says an interval
//!   was still running where the bucket's view ends (its end or the horizon).
//!
//! # Fast path
//! The fold state per (family, id) is just its open interval ([`OpenState`]);
//! a [`Checkpoint`] of every id's state at a time `T` seeds a query starting
//! at or after `T` ([`Usage::seed`]), which then needs only the records from
//! `T` on. See [`Checkpoint`] for the exact contract.

mod bucket;
mod decimal;
mod events;
mod ids;
mod pairing;
mod query;
mod report;
mod rows;
#[doc(hidden)]
pub mod synthetic;
#[cfg(test)]
mod tests;

pub use bucket::{time_zone, MAX_BUCKETS};
pub use decimal::Decimal;
pub use pairing::{AnomalyType, Checkpoint, Fold, OpenState, SeedError};
pub use query::{timestamp, Granularity, Query};
pub use report::{anomaly_to_pb_row, row_to_pb, Anomaly, IdRows, IdUsage, Report, Row, RowIter};

pub use events::EntryRef;
use events::{classify, Billed, Event, Groups, Interner};
use pairing::Open;

use crate::record::{Entry, Invalid};

/// A time as nanoseconds since the Unix epoch. Entries span years 0001 to
/// 9999, beyond what an `i64` of nanoseconds holds.
pub type UnixNanos = i128;

/// The families of lifecycle kinds that pair with each other. Ordered as the
/// answer is (and as the proto numbers them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// `vm.compute.*`, keyed by `vm_id`; bills cpu and mem_bytes.
    VmCompute,
    /// `vm.storage.*`, keyed by `vm_id`; bills storage_bytes.
    VmStorage,
    /// `snap.storage.*`, keyed by `snapshot_id`; bills storage_bytes.
    SnapStorage,
}

// === impl Family ===

impl Family {
    /// Every family, in answer order.
    pub const ALL: [Family; 3] = [Family::VmCompute, Family::VmStorage, Family::SnapStorage];

    fn index(self) -> usize {
        self as usize
    }
}

/// The usage engine for one query. Push every record the query may see (the
/// engine drops those that `as_of`, the filters or the range rule out), then
/// `finish`. Memory: about 40 bytes per kept record, plus one entry per
/// distinct (family, id) and hypervisor name.
#[derive(Debug)]
pub struct Usage {
    start: UnixNanos,
    end: UnixNanos,
    /// Earliest of end, as_of and now: nothing at or after it counts.
    horizon: UnixNanos,
    as_of: Option<UnixNanos>,
    bounds: Vec<UnixNanos>,
    families: [bool; 3],
    id: Option<String>,
    groups: Groups<Open>,
    hypervisors: Interner,
    /// `before` of the checkpoint this query was seeded with.
    checkpoint: Option<UnixNanos>,
    pushed: bool,
}

// === impl Usage ===

impl Usage {
    /// An engine for `query`, or the field that makes it unanswerable:
    /// `end_time` (not after `start_time`, or more than `i64::MAX` ns = 292
    /// years after it, since `running_nanos` is an int64), `start_time` /
    /// `end_time` (outside years -9999..=9999), `time_zone` (unknown), or
    /// `granularity` (more than [`MAX_BUCKETS`] buckets).
    pub fn new(query: Query) -> Result<Usage, Invalid> {
        for (field, t) in [("start_time", query.start), ("end_time", query.end)] {
            if jiff::Timestamp::from_nanosecond(t).is_err() {
                return Err(Invalid::new(field, "out of range"));
            }
        }
        if query.end <= query.start {
            return Err(Invalid::new("end_time", "must be after start_time"));
        }
        if query.end - query.start > i128::from(i64::MAX) {
            return Err(Invalid::new(
                "end_time",
                "must be at most 292 years (2^63 - 1 ns) after start_time",
            ));
        }
        let tz = bucket::time_zone(&query.time_zone)?;
        let bounds = bucket::boundaries(query.start, query.end, query.granularity, &tz)?;
        let mut families = [query.families.is_empty(); 3];
        for f in &query.families {
            families[f.index()] = true;
        }
        let horizon = query
            .end
            .min(query.now)
            .min(query.as_of.unwrap_or(query.end));
        Ok(Usage {
            start: query.start,
            end: query.end,
            horizon,
            as_of: query.as_of,
            bounds,
            families,
            id: query.id,
            groups: Groups::default(),
            hypervisors: Interner::default(),
            checkpoint: None,
            pushed: false,
        })
    }

    /// Starts every (family, id) from `checkpoint` instead of from nothing.
    /// Only before the first `push`, once, and with `checkpoint.before` at or
    /// before the query's start; then push only the records with
    /// `emitted_at >= checkpoint.before` (see [`Checkpoint`]).
    pub fn seed(&mut self, checkpoint: Checkpoint) -> Result<(), SeedError> {
        if self.pushed || self.checkpoint.is_some() {
            return Err(SeedError::NotFirst);
        }
        if checkpoint.before > self.start {
            return Err(SeedError::AfterStart {
                before: checkpoint.before,
                start: self.start,
            });
        }
        self.checkpoint = Some(checkpoint.before);
        let (families, id) = (self.families, self.id.as_deref());
        pairing::seed(
            &mut self.groups,
            &mut self.hypervisors,
            checkpoint,
            |f, i| families[f.index()] && id.is_none_or(|want| want == i),
        );
        Ok(())
    }

    /// Adds one record of the entries stream: its position, its receive time
    /// and the entry. Records may come in any order. Refuses only a record
    /// that a seeded checkpoint should have contained ([`SeedError::Stale`]).
    pub fn push(
        &mut self,
        position: u64,
        received_at: UnixNanos,
        entry: &Entry,
    ) -> Result<(), SeedError> {
        self.push_ref(position, received_at, EntryRef::from(entry))
    }

    /// [`push`](Self::push) of an entry's borrowed fields.
    pub fn push_ref(
        &mut self,
        position: u64,
        received_at: UnixNanos,
        entry: EntryRef<'_>,
    ) -> Result<(), SeedError> {
        if self.as_of.is_some_and(|as_of| received_at > as_of) {
            return Ok(());
        }
        let (family, start) = classify(entry.kind);
        let id = entry.id(family);
        if !self.families[family.index()] || self.id.as_deref().is_some_and(|want| want != id) {
            return Ok(());
        }
        let at = entry.emitted_at;
        if let Some(before) = self.checkpoint.filter(|&before| at < before) {
            return Err(SeedError::Stale {
                position,
                at,
                before,
            });
        }
        // A record after the end can only end or begin intervals after it:
        // nothing inside the range, and nothing the `open` flag can see
        // (an interval ended after the end is as open as one never ended).
        if at > self.end {
            return Ok(());
        }
        self.pushed = true;
        let hypervisor = self.hypervisors.intern(entry.hypervisor);
        let event = Event::new(
            at,
            position,
            start,
            Billed::of(family, &entry.shape),
            hypervisor,
        );
        self.groups.push(family, id, event);
        Ok(())
    }

    /// The answer, one (family, id) at a time in family, id order; each id's
    /// rows are computed when the iterator reaches it.
    pub fn finish(self) -> Report {
        let (keys, grouped) = self.groups.into_sorted();
        Report::new(
            keys,
            grouped,
            self.hypervisors,
            self.bounds,
            self.horizon,
            (self.start, self.end),
        )
    }
}
