//! Answering a usage query over the entries stream: seeded from the best
//! checkpoint (see the module doc of `crate::read`), reading only what can
//! change the answer, and falling back to earlier checkpoints, then to the
//! full fold, when a late record makes a checkpoint stale.

use crate::record::Invalid;
use crate::usage::{Query, Report, SeedError, UnixNanos, Usage};

use super::build::{ActiveStats, Plan};
use super::checkpoint::{self, Meta};
use super::{pending, scan, ReadError, Source};

/// How a query was answered (for logs, tests and the benchmark).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// First position of the segment whose checkpoint seeded the answer;
    /// `None` for the full fold.
    pub checkpoint: Option<u64>,
    /// Records read from the log (pending records of the checkpoint included).
    pub records: u64,
    /// Sealed segments not read because they lie wholly after the range.
    pub skipped: usize,
    /// Records of the other sealed segments not read because their blocks
    /// lie wholly after the range (see [`checkpoint::Blocks`]).
    pub skipped_blocks: u64,
    /// Records of the active segment not read for the same reason.
    pub skipped_active: u64,
    /// Times a stale checkpoint made the query start again.
    pub restarts: usize,
}

/// The answer and how it was reached.
#[derive(Debug)]
pub struct Answer {
    pub report: Report,
    pub stats: Stats,
    /// What this query learned of the active segment, for the next one
    /// (see [`ActiveStats`]).
    pub active: Option<ActiveStats>,
}

/// Why a query has no answer.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The query itself breaks a rule (the field is named).
    #[error("{0}")]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    Read(#[from] ReadError),
}

/// Answers `query` over the records up to position `upto` (taken before
/// `plan`, so that every segment of the plan holds records up to it).
/// Exactly the full fold of the records from `plan.from` to `upto`.
/// Blocking.
pub fn answer(
    source: &dyn Source,
    plan: &Plan,
    query: &Query,
    upto: u64,
) -> Result<Answer, AnswerError> {
    let n = plan.segments.len();
    let suffix_min = suffix_min(plan);
    let mut excluded = vec![false; n];
    let mut limit = UnixNanos::MAX;
    let mut stats = Stats::default();
    loop {
        let best = best_checkpoint(plan, query, &suffix_min, &excluded, limit);
        let mut usage = Usage::new(query.clone())?;
        stats.records = 0;
        stats.skipped = 0;
        stats.skipped_blocks = 0;
        let mut after = plan.from - 1;
        stats.checkpoint = None;
        if let Some((k, meta)) = best.and_then(|k| Some((k, plan.metas[k]?))) {
            let Some(seeded) = seed(source, &meta, &mut usage, &mut stats)? else {
                excluded[k] = true;
                continue;
            };
            after = seeded;
        }
        stats.skipped_active = 0;
        let (ranges, at) = plan_ranges(source, plan, query, after, &mut stats);
        let mut scanned = scan_ranges(source, ranges, upto, &mut usage, &mut stats)?;
        // The active segment: skip what an earlier query saw of it when
        // all of that lies after the range, and learn the rest.
        let mut active = None;
        if scanned.is_ok() && at < upto {
            (scanned, active) = scan_active(source, plan, query, at, upto, &mut usage, &mut stats)?;
        }
        match scanned {
            Ok(()) => {
                return Ok(Answer {
                    report: usage.finish(),
                    stats,
                    active,
                })
            }
            Err(SeedError::Stale { at, position, .. }) => {
                tracing::debug!(
                    position,
                    at,
                    "late record: usage starts again from an earlier checkpoint"
                );
                limit = at;
                stats.restarts += 1;
            }
            Err(e) => return Err(inconsistent(e).into()),
        }
    }
}

/// The earliest `emitted_at` known in segments `j..`, for every `j`.
fn suffix_min(plan: &Plan) -> Vec<UnixNanos> {
    let n = plan.segments.len();
    // suffix_min[j]: the earliest emitted_at known in segments j.. (segments
    // without a checkpoint count as unknown, left to the engine's check).
    let mut suffix_min = vec![UnixNanos::MAX; n + 1];
    for j in (0..n).rev() {
        let own = plan.metas[j].map_or(UnixNanos::MAX, |m| m.min_emitted);
        suffix_min[j] = suffix_min[j + 1].min(own);
    }
    suffix_min
}

/// The latest segment whose checkpoint can seed the answer, if any.
fn best_checkpoint(
    plan: &Plan,
    query: &Query,
    suffix_min: &[UnixNanos],
    excluded: &[bool],
    limit: UnixNanos,
) -> Option<usize> {
    let n = plan.segments.len();
    (0..n).rev().find(|&k| {
        plan.metas[k].is_some_and(|m| {
            !excluded[k]
                && m.before <= query.start
                && m.before <= limit
                && query
                    .as_of
                    .is_none_or(|a| UnixNanos::from(m.received_max) <= a)
                && suffix_min[k + 1] >= m.before
        })
    })
}

/// Seeds `usage` from the checkpoint `meta` and its pending records;
/// returns the last position it covers, or `None` when it is unreadable.
fn seed(
    source: &dyn Source,
    meta: &Meta,
    usage: &mut Usage,
    stats: &mut Stats,
) -> Result<Option<u64>, AnswerError> {
    let path = source.checkpoint_path(meta.first);
    let body = match checkpoint::read_body(&path, meta) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "usage checkpoint unreadable; using another");
            return Ok(None);
        }
    };
    usage.seed(body.state).map_err(inconsistent)?;
    let after = meta.first + meta.count - 1;
    // Pending records are at or after `before`: never stale.
    let records = &mut stats.records;
    pending::entries(
        source,
        &body.pending,
        meta.before,
        after,
        |position, received, e| {
            *records += 1;
            usage.push_ref(position, UnixNanos::from(received), e)
        },
    )?
    .map_err(inconsistent)?;
    stats.checkpoint = Some(meta.first);
    Ok(Some(after))
}

/// Appends `(a, b)` to `ranges`, merging it with the last one when they touch.
fn extend(a: u64, b: u64, ranges: &mut Vec<(u64, u64)>) {
    match ranges.last_mut() {
        Some(last) if last.1 == a => last.1 = b,
        _ => ranges.push((a, b)),
    }
}

/// The ranges of sealed segments after `after` to read, skipping segments
/// and blocks that lie wholly after the query's range; also returns the
/// last position of the sealed segments.
fn plan_ranges(
    source: &dyn Source,
    plan: &Plan,
    query: &Query,
    after: u64,
    stats: &mut Stats,
) -> (Vec<(u64, u64)>, u64) {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut at = after;
    for (j, s) in plan.segments.iter().enumerate() {
        let seg_last = s.first + s.count - 1;
        if seg_last <= after {
            continue;
        }
        match plan.metas[j] {
            Some(m) if m.min_emitted > query.end => stats.skipped += 1,
            // Some of it lies after the range: its block index says which.
            Some(m) if m.max_emitted > query.end => {
                let path = source.checkpoint_path(m.first);
                match checkpoint::read_blocks(&path, &m) {
                    Ok(blocks) => {
                        let per = blocks.per;
                        for (b, &min) in (0u64..).zip(&blocks.min_emitted) {
                            let lo = if b == 0 { at } else { s.first + b * per - 1 };
                            let hi = (s.first + (b + 1) * per - 1).min(seg_last);
                            if min > query.end {
                                stats.skipped_blocks += hi - lo;
                            } else {
                                extend(lo, hi, &mut ranges);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "usage block index unreadable; reading the whole segment");
                        extend(at, seg_last, &mut ranges);
                    }
                }
            }
            _ => extend(at, seg_last, &mut ranges),
        }
        at = seg_last;
    }
    (ranges, at)
}

/// Folds the records of `ranges` (cut at `upto`) into `usage`, stopping at
/// the first one that does not fit.
fn scan_ranges(
    source: &dyn Source,
    ranges: Vec<(u64, u64)>,
    upto: u64,
    usage: &mut Usage,
    stats: &mut Stats,
) -> Result<Result<(), SeedError>, ReadError> {
    let mut scanned = Ok(());
    for (a, b) in ranges {
        let b = b.min(upto);
        let records = &mut stats.records;
        scanned = scan::entries(source, a, b, |position, received, e| {
            *records += 1;
            usage.push_ref(position, UnixNanos::from(received), e)
        })?;
        if scanned.is_err() {
            break;
        }
    }
    Ok(scanned)
}

/// Folds the records of the active segment after `at` up to `upto` into
/// `usage`, and what it learned of that segment.
fn scan_active(
    source: &dyn Source,
    plan: &Plan,
    query: &Query,
    at: u64,
    upto: u64,
    usage: &mut Usage,
    stats: &mut Stats,
) -> Result<(Result<(), SeedError>, Option<ActiveStats>), ReadError> {
    let known = plan
        .active
        .filter(|s| s.first == at + 1 && s.first == plan.active_first && s.upto <= upto);
    let (mut from, mut min) = (at, UnixNanos::MAX);
    if let Some(s) = known.filter(|s| s.min_emitted > query.end) {
        stats.skipped_active = s.upto - at;
        (from, min) = (s.upto, s.min_emitted);
    }
    let records = &mut stats.records;
    let scanned = scan::entries(source, from, upto, |position, received, e| {
        *records += 1;
        min = min.min(e.emitted_at);
        usage.push_ref(position, UnixNanos::from(received), e)
    })?;
    let active = (at + 1 == plan.active_first).then_some(ActiveStats {
        first: at + 1,
        upto,
        min_emitted: min,
    });
    Ok((scanned, active))
}

/// A seed error that the plan rules out; reported rather than unwrapped.
fn inconsistent(e: SeedError) -> ReadError {
    ReadError::Io(std::io::Error::other(format!(
        "usage checkpoint does not fit the query: {e}"
    )))
}

/// Sends the answer as protobuf responses of at most `items` rows and
/// anomalies each, cutting rows only as responses are sent: memory for one
/// response, whatever the range and granularity. `send` returns false when
/// nobody takes responses any more; then so does this. Blocking when
/// `send` is.
pub fn responses(
    mut report: Report,
    items: usize,
    mut send: impl FnMut(crate::pb::UsageResponse) -> bool,
) -> bool {
    use crate::usage::{anomaly_to_pb_row, row_to_pb};
    let mut chunk = crate::pb::UsageResponse::default();
    let full = |c: &crate::pb::UsageResponse| c.rows.len() + c.anomalies.len() >= items;
    while let Some(id) = report.next_id() {
        for row in id.rows {
            chunk.rows.push(row_to_pb(id.family, &id.id, &row));
            if full(&chunk) && !send(std::mem::take(&mut chunk)) {
                return false;
            }
        }
        for a in &id.anomalies {
            chunk
                .anomalies
                .push(anomaly_to_pb_row(id.family, &id.id, a));
            if full(&chunk) && !send(std::mem::take(&mut chunk)) {
                return false;
            }
        }
    }
    chunk.rows.is_empty() && chunk.anomalies.is_empty() || send(chunk)
}
