//! Keeping a usage checkpoint beside every sealed segment of the entries
//! stream: finding the valid ones, and building the missing ones in log
//! order, each from the one before it. See the module doc of `crate::read`
//! for what a checkpoint holds and why.

mod segment;

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::log::Summary;
use crate::usage::UnixNanos;

use super::checkpoint::{self, Body, Meta};
use super::{ReadError, Source};

use segment::build_one;
#[cfg(test)]
pub use segment::WINDOWED;

/// How far a checkpoint's `before` trails the latest receive time of its
/// segment, in nanoseconds: one hour. A record received after the segment
/// was sealed but emitted more than this before the segment's last receive
/// time makes the checkpoint stale for queries that reach it (they then use
/// an earlier one); a longer wait keeps more records pending in each file.
pub const SETTLE: i64 = 3600 * 1_000_000_000;

/// The sealed segments of a log and the valid checkpoint of each, if any.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The first retained position: what every checkpoint folds from.
    pub from: u64,
    pub segments: Vec<Summary>,
    /// One per segment.
    pub metas: Vec<Option<Meta>>,
    /// The first position of the active segment.
    pub active_first: u64,
    /// What an earlier query learned of the active segment, if it is still
    /// the same segment.
    pub active: Option<ActiveStats>,
}

/// What a query learned of the active segment: the earliest `emitted_at`
/// of its records from `first` up to `upto`. Kept in memory only (the
/// active file grows, but its durable records never change), so that the
/// next query can skip that part when it lies wholly after its range,
/// as it skips sealed segments by their checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveStats {
    pub first: u64,
    pub upto: u64,
    pub min_emitted: UnixNanos,
}

/// The checkpoints of one log: a cache of the valid headers, and the lock
/// that lets one builder run at a time. Safe for concurrent use.
#[derive(Default)]
pub struct Checkpoints {
    known: Mutex<HashMap<u64, Meta>>,
    active: Mutex<Option<ActiveStats>>,
}

impl Checkpoints {
    pub fn new() -> Checkpoints {
        Checkpoints::default()
    }

    /// Keeps what a query learned of the active segment (the most recent
    /// knowledge wins).
    pub fn remember(&self, stats: ActiveStats) {
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        if active.is_none_or(|a| a.first != stats.first || a.upto < stats.upto) {
            *active = Some(stats);
        }
    }

    /// The plan of the log as it is now. With `build`, first writes every
    /// missing or stale checkpoint (holding the lock, so that concurrent
    /// queries wait for one builder instead of repeating its work); without,
    /// writes nothing and leaves those segments without one. Blocking.
    pub fn plan(&self, source: &dyn Source, build: bool) -> Result<Plan, ReadError> {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        let segments = source.segments();
        let from = segments.first().map_or_else(|| source.first(), |s| s.first);
        let valid = |m: &Meta, s: &Summary| {
            m.from == from && m.first == s.first && m.count == s.count && m.data_len == s.data_len
        };
        known.retain(|first, m| segments.iter().any(|s| s.first == *first && valid(m, s)));
        let mut metas: Vec<Option<Meta>> = segments
            .iter()
            .map(|s| {
                known.get(&s.first).copied().or_else(|| {
                    let m = checkpoint::read_meta(&source.checkpoint_path(s.first))
                        .filter(|m| valid(m, s))?;
                    known.insert(s.first, m);
                    Some(m)
                })
            })
            .collect();
        let active_first = segments
            .last()
            .map_or_else(|| source.first(), |s| s.first + s.count);
        let active = *self.active.lock().unwrap_or_else(PoisonError::into_inner);
        let mut plan = Plan {
            from,
            segments,
            metas: Vec::new(),
            active_first,
            active: active.filter(|a| a.first == active_first),
        };
        if !build {
            plan.metas = metas;
            return Ok(plan);
        }
        // The chain's last link, kept so the next build needs no reload.
        let mut last: Option<(usize, Body)> = None;
        while let Some(j) = metas.iter().position(Option::is_none) {
            let base = match j.checked_sub(1) {
                None => None,
                Some(i) => match last.take().filter(|(k, _)| *k == i) {
                    Some((_, body)) => Some((i, body)),
                    None => match load(source, &plan.segments, &metas, i) {
                        Some(body) => Some((i, body)),
                        None => {
                            // Damaged since its header was read: rebuild it.
                            metas[i] = None;
                            known.remove(&plan.segments[i].first);
                            continue;
                        }
                    },
                },
            };
            let (meta, blocks, body) = build_one(source, &plan, &metas, j, base)?;
            let path = source.checkpoint_path(meta.first);
            checkpoint::write(&path, &meta, &blocks, &body)?;
            tracing::debug!(
                first = meta.first,
                records = meta.count,
                open = body.state.open.len(),
                pending_listed = body.pending.listed.len(),
                pending_from = ?body.pending.rest_from,
                "usage checkpoint written"
            );
            known.insert(meta.first, meta);
            metas[j] = Some(meta);
            last = Some((j, body));
        }
        plan.metas = metas;
        Ok(plan)
    }
}

/// The body of segment `i`'s checkpoint, if its file is intact.
fn load(
    source: &dyn Source,
    segments: &[Summary],
    metas: &[Option<Meta>],
    i: usize,
) -> Option<Body> {
    let meta = metas.get(i).copied().flatten()?;
    let path = source.checkpoint_path(segments[i].first);
    checkpoint::read_body(&path, &meta)
        .inspect_err(|e| tracing::warn!(error = %e, "usage checkpoint unreadable; rebuilding it"))
        .ok()
}
