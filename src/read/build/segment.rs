//! Building the checkpoint of one sealed segment from the one before it,
//! with the memory of its fold bounded: past [`FOLD_EVENTS`] events it folds
//! in windows of time, each reading only the blocks of the segment that
//! hold records of its window.

use super::super::checkpoint::{Blocks, Body, Meta, Pending};
use super::super::{pending, scan, ReadError, Source};
use super::{load, Plan, SETTLE};
use crate::usage::{Checkpoint, EntryRef, Fold, SeedError, UnixNanos};

/// Events a build's fold holds at most (about 90 bytes each with the
/// vector's slack and the sort's copy at the end, so some 86 MiB). Beyond,
/// it folds in windows of time (see [`build_one`]), each window decoding
/// the segment's blocks again. A segment of the default 64 MiB holds about
/// 300,000 entries and never needs windows; a previous release's single
/// 1 GiB file (5.4 M) takes about eight (14 CPU s once, instead of 2 s and
/// 520 MB in one pass; with 250,000 events per window: 29 windows, 50 s).
/// Tests use a tiny budget, so that their small segments often take that path.
#[cfg(not(test))]
const FOLD_EVENTS: usize = 1_000_000;
#[cfg(test)]
const FOLD_EVENTS: usize = 4;
/// Events per window: below [`FOLD_EVENTS`], since the windows are chosen
/// from samples.
const WINDOW_EVENTS: usize = FOLD_EVENTS * 3 / 4;
/// Builds that folded in windows, for the tests to check that they did.
#[cfg(test)]
pub static WINDOWED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// `emitted_at` samples kept to choose the windows (16 bytes each).
#[cfg(not(test))]
const SAMPLES: usize = 64 * 1024;
#[cfg(test)]
const SAMPLES: usize = 4;

/// Builds the checkpoint of segment `j` from the one of segment `j - 1`
/// (`base`), or, when a record of segment `j` was emitted before that one's
/// `before`, from an earlier one or from nothing.
///
/// Its memory is bounded whatever the segment: pending records are kept as
/// positions (see [`Pending`]), and the fold holds at most [`FOLD_EVENTS`]
/// events. When more records fold (the first start on one big segment of an
/// earlier release, or a backlog delivered at once), the first pass drops
/// its fold and samples their `emitted_at`; the build then folds them in
/// consecutive windows of time of about [`WINDOW_EVENTS`] records, each one
/// continuing the state of the one before ([`Fold::window`]) and reading
/// only the blocks of the segment that hold records of its window.
pub(super) fn build_one(
    source: &dyn Source,
    plan: &Plan,
    metas: &[Option<Meta>],
    j: usize,
    mut base: Option<(usize, Body)>,
) -> Result<(Meta, Blocks, Body), ReadError> {
    let seg = plan.segments[j];
    let last = seg.first + seg.count - 1;
    let (received_max, before) = bounds(metas, j, seg.received_max);
    loop {
        let (state, carried, after) = unpack_base(plan, base.take());
        let carried_before = state.as_ref().map(|s| s.before);
        let input = Input {
            source,
            carried: &carried,
            carried_before: carried_before.unwrap_or(before),
            after,
            first: seg.first,
            last,
        };
        // The base's state again for the windows, if they may be needed.
        let spare = (input.bound() > FOLD_EVENTS as u64).then(|| state.clone());
        let mut fold = Some(match state {
            Some(s) => Fold::resume(s, before).map_err(stale_chain)?,
            None => Fold::new(before),
        });
        let mut pending = Pending::default();
        let mut samples = Samples::default();
        let (mut min_emitted, mut max_emitted) = (UnixNanos::MAX, UnixNanos::MIN);
        let mut blocks = Blocks::default();
        // The latest `emitted_at` of each block, for the windows only.
        let mut block_max: Vec<UnixNanos> = Vec::new();
        let scanned = input.feed(None, |position, e| {
            let at = e.emitted_at;
            if let Some(index) = position.checked_sub(seg.first) {
                min_emitted = min_emitted.min(at);
                max_emitted = max_emitted.max(at);
                note_block(&mut blocks, &mut block_max, index, at);
            }
            if let Some(b) = carried_before.filter(|&b| at < b) {
                return Err(SeedError::Stale {
                    position,
                    at,
                    before: b,
                });
            }
            fold_one(&mut fold, &mut pending, &mut samples, before, position, e)
        })?;
        match scanned {
            Ok(()) => {
                let windows = (&blocks, block_max.as_slice());
                let state = finish_state(&input, fold, spare, samples, before, windows)?;
                let meta = Meta {
                    from: plan.from,
                    first: seg.first,
                    count: seg.count,
                    data_len: seg.data_len,
                    min_emitted,
                    max_emitted,
                    received_max,
                    before,
                };
                return Ok((meta, blocks, Body { state, pending }));
            }
            Err(SeedError::Stale { at, .. }) => {
                // Start again from the latest checkpoint before that record.
                base = rebase(source, plan, metas, j, at);
                tracing::debug!(first = seg.first, at, from = ?base.as_ref().map(|(i, _)| plan.segments[*i].first), "late record: usage checkpoint built from further back");
            }
            Err(e) => return Err(stale_chain(e)),
        }
    }
}

/// The latest receive time up to the end of segment `j` (whose own is
/// `seg_received_max`) and the `before` of its checkpoint.
fn bounds(metas: &[Option<Meta>], j: usize, seg_received_max: i64) -> (i64, UnixNanos) {
    let prior = j.checked_sub(1).and_then(|i| metas[i]);
    let received_max = prior.map_or(seg_received_max, |m| m.received_max.max(seg_received_max));
    let trailing = UnixNanos::from(received_max) - UnixNanos::from(SETTLE);
    let before = prior.map_or(trailing, |m| m.before.max(trailing));
    (received_max, before)
}

/// Keeps a record emitted at or after `before` as pending; otherwise
/// samples it and folds it, dropping the fold once it holds too many.
fn fold_one(
    fold: &mut Option<Fold>,
    pending: &mut Pending,
    samples: &mut Samples,
    before: UnixNanos,
    position: u64,
    e: EntryRef<'_>,
) -> Result<(), SeedError> {
    let at = e.emitted_at;
    if at >= before {
        pending.add(position);
        return Ok(());
    }
    samples.note(at);
    if let Some(f) = fold.as_mut() {
        f.push_ref(position, e)?;
        if f.held() > FOLD_EVENTS {
            *fold = None;
        }
    }
    Ok(())
}

/// The base's state, pending records and last position, or nothing and
/// the position before the first retained one.
fn unpack_base(plan: &Plan, base: Option<(usize, Body)>) -> (Option<Checkpoint>, Pending, u64) {
    match base {
        Some((i, body)) => {
            let s = plan.segments[i];
            (Some(body.state), body.pending, s.first + s.count - 1)
        }
        None => (None, Pending::default(), plan.from - 1),
    }
}

/// Notes `at`, the `emitted_at` of the record at `index` in the segment,
/// in `blocks` and in the latest `emitted_at` of its block.
fn note_block(blocks: &mut Blocks, block_max: &mut Vec<UnixNanos>, index: u64, at: UnixNanos) {
    blocks.note(index, at);
    let b = usize::try_from(index / blocks.per).unwrap_or(usize::MAX);
    match block_max.get_mut(b) {
        Some(m) => *m = (*m).max(at),
        None => block_max.push(at),
    }
}

/// The state of a build whose first pass succeeded: its fold's, or, when
/// that was dropped, the one folded in windows from `spare`.
fn finish_state(
    input: &Input<'_>,
    fold: Option<Fold>,
    spare: Option<Option<Checkpoint>>,
    samples: Samples,
    before: UnixNanos,
    blocks: (&Blocks, &[UnixNanos]),
) -> Result<Checkpoint, ReadError> {
    let state = match (fold, spare) {
        (Some(f), _) => f.finish(),
        (None, Some(spare)) => {
            let ends = samples.ends(before);
            #[cfg(test)]
            WINDOWED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(
                first = input.first,
                windows = ends.len(),
                "usage checkpoint folded in windows"
            );
            input.windows(spare, &ends, blocks)?
        }
        (None, None) => {
            return Err(stale_chain(SeedError::NotFirst));
        }
    };
    Ok(state)
}

/// The latest checkpoint before segment `j - 1` made before `at`, loaded,
/// to start a build again from.
fn rebase(
    source: &dyn Source,
    plan: &Plan,
    metas: &[Option<Meta>],
    j: usize,
    at: UnixNanos,
) -> Option<(usize, Body)> {
    (0..j.saturating_sub(1))
        .rev()
        .filter(|&i| metas[i].is_some_and(|m| m.before <= at))
        .find_map(|i| load(source, &plan.segments, metas, i).map(|b| (i, b)))
}

/// A window of time `[lo, hi)` to fold, with the segment's blocks and the
/// latest `emitted_at` of each, so that the blocks without a record of the
/// window are not read.
type Window<'a> = (UnixNanos, UnixNanos, (&'a Blocks, &'a [UnixNanos]));

/// What a build folds: the base's pending records (read back from the
/// log), then every record after the base's segment up to `last`, the end
/// of the segment starting at `first`.
struct Input<'a> {
    source: &'a dyn Source,
    carried: &'a Pending,
    carried_before: UnixNanos,
    after: u64,
    first: u64,
    last: u64,
}

impl Input<'_> {
    /// At most how many records [`feed`](Self::feed) gives.
    fn bound(&self) -> u64 {
        let listed = self.carried.listed.len() as u64;
        let ranged = self
            .carried
            .rest_from
            .map_or(0, |f| (self.after + 1).saturating_sub(f));
        listed + ranged + (self.last - self.after)
    }

    /// Calls `f` for every record, in position order; with `within` (a
    /// window `[lo, hi)` and the segment's blocks with their earliest and
    /// latest `emitted_at`), skips the segment's blocks that hold no record
    /// of the window.
    fn feed<E>(
        &self,
        within: Option<Window<'_>>,
        mut f: impl FnMut(u64, EntryRef<'_>) -> Result<(), E>,
    ) -> Result<Result<(), E>, ReadError> {
        let carried = pending::entries(
            self.source,
            self.carried,
            self.carried_before,
            self.after,
            |position, _, e| f(position, e),
        )?;
        if carried.is_err() {
            return Ok(carried);
        }
        let mut ranges = vec![(self.after, self.last)];
        if let Some((lo, hi, (blocks, max))) = within {
            ranges = vec![(self.after, self.first - 1)];
            for (b, (&min, &max)) in (0u64..).zip(blocks.min_emitted.iter().zip(max)) {
                if min >= hi || max < lo {
                    continue;
                }
                let (a, z) = (
                    self.first + b * blocks.per - 1,
                    self.first + (b + 1) * blocks.per - 1,
                );
                match ranges.last_mut() {
                    Some(r) if r.1 == a => r.1 = z.min(self.last),
                    _ => ranges.push((a, z.min(self.last))),
                }
            }
        }
        for (a, z) in ranges {
            let scanned = scan::entries(self.source, a, z, |position, _, e| f(position, e))?;
            if scanned.is_err() {
                return Ok(scanned);
            }
        }
        Ok(Ok(()))
    }

    /// The state at the last of `ends` (ascending), from `base` (the base's
    /// state, or nothing), folded one window of time at a time.
    fn windows(
        &self,
        base: Option<Checkpoint>,
        ends: &[UnixNanos],
        blocks: (&Blocks, &[UnixNanos]),
    ) -> Result<Checkpoint, ReadError> {
        let mut state = base;
        let mut lo = UnixNanos::MIN;
        for &end in ends {
            let mut fold = match state.take() {
                Some(s) => {
                    lo = s.before;
                    Fold::window(s, end).map_err(stale_chain)?
                }
                None => Fold::new(end),
            };
            self.feed(Some((lo, end, blocks)), |position, e| {
                fold.push_ref(position, e)
            })?
            .map_err(stale_chain)?;
            state = Some(fold.finish());
        }
        state.ok_or_else(|| stale_chain(SeedError::NotFirst))
    }
}

/// A sample of the `emitted_at` of the records a build folds: every
/// `every`-th one, `every` doubling whenever [`SAMPLES`] are kept.
struct Samples {
    every: u64,
    seen: u64,
    at: Vec<UnixNanos>,
}

impl Default for Samples {
    fn default() -> Self {
        Samples {
            every: 1,
            seen: 0,
            at: Vec::new(),
        }
    }
}

impl Samples {
    fn note(&mut self, at: UnixNanos) {
        if self.seen.is_multiple_of(self.every) {
            if self.at.len() == SAMPLES {
                let mut i = 0;
                self.at.retain(|_| {
                    i += 1;
                    i % 2 == 1
                });
                self.every *= 2;
            }
            if self.seen.is_multiple_of(self.every) {
                self.at.push(at);
            }
        }
        self.seen += 1;
    }

    /// The ends of windows of about [`WINDOW_EVENTS`] records each, the
    /// last one `before` (after every sample).
    fn ends(mut self, before: UnixNanos) -> Vec<UnixNanos> {
        self.at.sort_unstable();
        let step = usize::try_from(WINDOW_EVENTS as u64 / self.every)
            .unwrap_or(1)
            .max(1);
        let mut ends: Vec<UnixNanos> = self.at.iter().copied().skip(step).step_by(step).collect();
        ends.push(before);
        ends.dedup();
        ends
    }
}

/// A seed error where none can happen (a base's `before` is never after
/// the next one's); reported rather than unwrapped.
fn stale_chain(e: SeedError) -> ReadError {
    ReadError::Io(std::io::Error::other(format!(
        "usage checkpoint chain is inconsistent: {e}"
    )))
}
