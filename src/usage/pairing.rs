//! The pairing rules, and the fold state they leave per (family, id): the
//! open interval, if any. `Checkpoint` and `Fold` make that state a value a
//! log can store and a later query can start from.

use std::collections::BTreeMap;

use super::events::{classify, Billed, EntryRef, Event, Groups, Interner};
use super::{Family, UnixNanos};
use crate::record::{Entry, Shape};

/// What went wrong while pairing one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnomalyType {
    /// A stop with nothing open: it bills nothing.
    OrphanStop,
    /// A start while an interval with the same billed shape is open: ignored.
    DuplicateStart,
    /// A start while an interval with another billed shape is open: the open
    /// interval ends there and the new one begins (a resize).
    StartWhileOpen,
    /// A stop whose given (non-zero) billed fields differ from the open
    /// interval's: it still ends the interval, and the start's shape is billed.
    StopShapeMismatch,
}

/// The open interval of one (family, id) after a fold: everything the fold
/// carries from one record to the next. No open interval is no state at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenState {
    /// `emitted_at` of the start that opened it, Unix nanoseconds.
    pub since: UnixNanos,
    /// The start's shape, reduced to the fields the family bills (the others
    /// are zero). This is the shape billed until the interval ends.
    pub shape: Shape,
    /// The start's hypervisor.
    pub hypervisor: String,
    /// The start's position in the entries stream.
    pub position: u64,
}

/// The fold state of every (family, id) after all records with
/// `emitted_at < before`, in pairing order (`emitted_at`, then position).
///
/// # Contract
/// A query `[start, end)` with `start >= before` that is seeded with this
/// checkpoint and then given every record with `emitted_at >= before` gives
/// exactly the answer of the full fold, provided the checkpoint was folded
/// from exactly the records the query would see with `emitted_at < before`:
/// with `as_of`, those received at or before it. A record received after the
/// checkpoint was made whose `emitted_at` is before `before` (a backfill)
/// makes it stale; the engine refuses such a record with
/// [`SeedError::Stale`], and the reader must then rebuild the checkpoint or
/// fall back to the full fold. Anomalies of records before `before` are not
/// needed: the query reports only those with `emitted_at >= start`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Exclusive bound on the `emitted_at` of the records folded in.
    pub before: UnixNanos,
    /// The open interval of every (family, id) that has one, by family then id.
    pub open: BTreeMap<(Family, String), OpenState>,
}

/// Why a checkpoint could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    /// The checkpoint covers records the query needs (its `before` is after
    /// the query's start, or after a later checkpoint's `before`).
    #[error("checkpoint before {before} is later than {start}")]
    AfterStart { before: UnixNanos, start: UnixNanos },
    /// A second checkpoint, or a checkpoint after records were pushed.
    #[error("a checkpoint must be given once, before any record")]
    NotFirst,
    /// A record the checkpoint should already contain.
    #[error("record at position {position} (emitted_at {at}) is before the checkpoint ({before}): the checkpoint is stale")]
    Stale {
        position: u64,
        at: UnixNanos,
        before: UnixNanos,
    },
}

/// The engine's own form of an open interval: the hypervisor interned.
#[derive(Clone, Copy, Debug)]
pub struct Open {
    pub since: UnixNanos,
    pub billed: Billed,
    pub hypervisor: u32,
    pub position: u64,
}

/// One paired interval `[since, until)`; `until` is `None` when nothing
/// ended it among the records given.
#[derive(Clone, Copy, Debug)]
pub struct Interval {
    pub since: UnixNanos,
    pub until: Option<UnixNanos>,
    pub billed: Billed,
    pub hypervisor: u32,
}

/// Applies the pairing rules to one (family, id)'s events, which must be in
/// pairing order, starting from `open`. Reports every interval (in time
/// order; the one still open last, with `until: None`) and every anomaly, and
/// returns the state left open.
pub fn pair(
    mut open: Option<Open>,
    events: &[Event],
    mut interval: impl FnMut(Interval),
    mut anomaly: impl FnMut(AnomalyType, &Event),
) -> Option<Open> {
    let close = |o: &Open, at| Interval {
        since: o.since,
        until: Some(at),
        billed: o.billed,
        hypervisor: o.hypervisor,
    };
    for e in events {
        let at = e.at();
        let opened = Open {
            since: at,
            billed: e.billed,
            hypervisor: e.hypervisor,
            position: e.position,
        };
        open = match (open, e.is_start()) {
            // Rule 1: a start opens an interval.
            (None, true) => Some(opened),
            // Rule 2: same shape, ignored; another shape, a resize.
            (Some(o), true) if o.billed == e.billed => {
                anomaly(AnomalyType::DuplicateStart, e);
                Some(o)
            }
            (Some(o), true) => {
                anomaly(AnomalyType::StartWhileOpen, e);
                interval(close(&o, at));
                Some(opened)
            }
            // Rule 3: any stop closes, whatever its reason; the start's
            // shape is billed even when the stop disagrees.
            (None, false) => {
                anomaly(AnomalyType::OrphanStop, e);
                None
            }
            (Some(o), false) => {
                if e.billed.mismatches(o.billed) {
                    anomaly(AnomalyType::StopShapeMismatch, e);
                }
                interval(close(&o, at));
                None
            }
        };
    }
    if let Some(o) = &open {
        interval(Interval {
            since: o.since,
            until: None,
            billed: o.billed,
            hypervisor: o.hypervisor,
        });
    }
    open
}

/// Puts a checkpoint's open intervals into `groups` as seeds, keeping only
/// the (family, id) that `keep` accepts.
pub fn seed(
    groups: &mut Groups<Open>,
    hypervisors: &mut Interner,
    checkpoint: Checkpoint,
    keep: impl Fn(Family, &str) -> bool,
) {
    let mut counts = [0usize; 3];
    for (family, _) in checkpoint.open.keys() {
        counts[family.index()] += 1;
    }
    for (family, n) in Family::ALL.into_iter().zip(counts) {
        groups.reserve(family, n);
    }
    for ((family, id), state) in checkpoint.open {
        if !keep(family, &id) {
            continue;
        }
        let open = Open {
            since: state.since,
            billed: Billed::of(family, &state.shape),
            hypervisor: hypervisors.intern(&state.hypervisor),
            position: state.position,
        };
        groups.seed(family, &id, open);
    }
}

/// Builds a [`Checkpoint`]: the fold of every record pushed with
/// `emitted_at < before`, optionally continuing an earlier checkpoint (so a
/// log can advance its checkpoints incrementally). Records are accepted in
/// any order.
#[derive(Debug)]
pub struct Fold {
    before: UnixNanos,
    /// `before` of the checkpoint this fold continues, if any.
    after: Option<UnixNanos>,
    /// Whether a record before `after` is ignored rather than refused.
    window: bool,
    groups: Groups<Open>,
    hypervisors: Interner,
}

// === impl Fold ===

impl Fold {
    /// A fold from nothing up to `before`.
    pub fn new(before: UnixNanos) -> Fold {
        Fold {
            before,
            after: None,
            window: false,
            groups: Groups::default(),
            hypervisors: Interner::default(),
        }
    }

    /// A fold that continues `checkpoint` up to `before`; it must then be
    /// given every record with `checkpoint.before <= emitted_at < before`.
    pub fn resume(checkpoint: Checkpoint, before: UnixNanos) -> Result<Fold, SeedError> {
        if checkpoint.before > before {
            return Err(SeedError::AfterStart {
                before: checkpoint.before,
                start: before,
            });
        }
        let mut fold = Fold::new(before);
        fold.after = Some(checkpoint.before);
        seed(
            &mut fold.groups,
            &mut fold.hypervisors,
            checkpoint,
            |_, _| true,
        );
        Ok(fold)
    }

    /// A fold of one window of time, `[checkpoint.before, before)`: as
    /// [`resume`](Self::resume), but a record before `checkpoint.before` is
    /// ignored rather than refused (it belongs to an earlier window). A
    /// builder whose records do not fit in memory at once folds them in
    /// consecutive windows, each over every record, and so holds one
    /// window's events at a time; the result is the same (the state at a
    /// window's end is the fold of every record before it).
    pub fn window(checkpoint: Checkpoint, before: UnixNanos) -> Result<Fold, SeedError> {
        let mut fold = Fold::resume(checkpoint, before)?;
        fold.window = true;
        Ok(fold)
    }

    /// Records held until `finish` (those pushed before `before`): what
    /// the fold's memory grows with, about 100 bytes each at most.
    pub fn held(&self) -> usize {
        self.groups.pushed()
    }

    /// Adds one record. Records at or after `before` are ignored; one before
    /// the resumed checkpoint is refused as [`SeedError::Stale`] (ignored by
    /// a [`window`](Self::window)).
    pub fn push(&mut self, position: u64, entry: &Entry) -> Result<(), SeedError> {
        self.push_ref(position, EntryRef::from(entry))
    }

    /// [`push`](Self::push) of an entry's borrowed fields.
    pub fn push_ref(&mut self, position: u64, entry: EntryRef<'_>) -> Result<(), SeedError> {
        let at = entry.emitted_at;
        if at >= self.before {
            return Ok(());
        }
        if let Some(after) = self.after.filter(|&after| at < after) {
            if self.window {
                return Ok(());
            }
            return Err(SeedError::Stale {
                position,
                at,
                before: after,
            });
        }
        let (family, start) = classify(entry.kind);
        let hypervisor = self.hypervisors.intern(entry.hypervisor);
        let event = Event::new(
            at,
            position,
            start,
            Billed::of(family, &entry.shape),
            hypervisor,
        );
        self.groups.push(family, entry.id(family), event);
        Ok(())
    }

    /// `before` of the checkpoint this fold will make.
    pub fn before(&self) -> UnixNanos {
        self.before
    }

    /// The checkpoint at `before`.
    pub fn finish(self) -> Checkpoint {
        let (keys, mut grouped) = self.groups.into_sorted();
        let mut open = BTreeMap::new();
        for (family, id, i) in keys {
            let (seed, events) = grouped.take(i);
            events.sort_unstable_by_key(Event::order);
            let end = pair(seed, events, |_| {}, |_, _| {});
            if let Some(o) = end {
                let state = OpenState {
                    since: o.since,
                    shape: o.billed.to_shape(family),
                    hypervisor: self.hypervisors.name(o.hypervisor).to_owned(),
                    position: o.position,
                };
                open.insert((family, id.into_string()), state);
            }
        }
        Checkpoint {
            before: self.before,
            open,
        }
    }
}
