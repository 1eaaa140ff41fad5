//! Placing a reader: finding the segment that holds its next position, the
//! commits and checks a walk of that segment gets, and the place of the
//! record within it.

use std::fs::File;
use std::io;
use std::sync::{Arc, PoisonError};

use super::super::names::{Names, DATA, SEAL, TIMES};
use super::super::segment::sealed_layout;
use super::super::times::{self, Check, Commit};
use super::super::walk::{Cursor, Walker};
use super::super::SegmentView;
use super::{LogReader, Owned, Place, ReadError, SharedSpan};

impl LogReader {
    /// Finds the segment holding `next` and the place of its record. Moves
    /// past positions that no segment holds, saying so.
    pub(super) fn locate(&mut self) -> Result<(), ReadError> {
        loop {
            let view = self.shared.view();
            let first = view.first();
            if self.next < first {
                return Err(ReadError::Pruned { first });
            }
            let active = &view.active;
            let names = &self.shared.names;
            let i = view
                .sealed
                .partition_point(|s| s.summary.first <= self.next);
            let gap_end = view.sealed.get(i).map_or(active.first, |n| n.summary.first);
            let seg = i.checked_sub(1).and_then(|i| view.sealed.get(i));
            let inside = seg.is_some_and(|s| self.next < s.summary.first + s.summary.count);
            if self.next < active.first && !inside {
                // Positions between segments (a segment deleted by hand).
                let from = self.next;
                self.next = gap_end;
                return Err(ReadError::Missing {
                    stream: names.stream,
                    from,
                    to: gap_end - 1,
                    file: names.sealed(from, DATA),
                });
            }
            let place = match seg.filter(|_| self.next < active.first) {
                None => Place {
                    first: active.first,
                    data: active.data.clone(),
                    file: names.active_data(),
                    sealed: None,
                    active: Some(active.clone()),
                    cursor: Cursor::START,
                    bytes_before: active.bytes_before,
                },
                Some(seg) => {
                    let s = seg.summary;
                    let path = names.sealed(s.first, DATA);
                    let data = match File::open(&path) {
                        Ok(f) => f,
                        // Deleted by retention since the view was taken: look again.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            if Arc::ptr_eq(&view, &self.shared.view()) {
                                let from = self.next;
                                self.next = s.first + s.count;
                                if seal_remains(names, s.first) && from == first {
                                    return Err(ReadError::Pruned { first: self.next });
                                }
                                return Err(ReadError::Missing {
                                    stream: names.stream,
                                    from,
                                    to: s.first + s.count - 1,
                                    file: path,
                                });
                            }
                            continue;
                        }
                        Err(e) => return Err(ReadError::Io(e)),
                    };
                    let owned = self.sealed_span(s.first, || load_span(names, seg));
                    Place {
                        first: s.first,
                        data: Arc::new(data),
                        file: path,
                        sealed: Some(owned),
                        active: None,
                        cursor: Cursor::START,
                        bytes_before: seg.bytes_before,
                    }
                }
            };
            return self.seek_within(place);
        }
    }

    /// The commits and checks of the sealed segment at `first`: the copy
    /// another reader holds, or `load`ed (and then shared).
    fn sealed_span(&self, first: u64, load: impl FnOnce() -> Owned) -> Owned {
        let mut spans = self
            .shared
            .sealed_spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = spans.get(&first).and_then(SharedSpan::upgrade) {
            return held;
        }
        // Loaded under the lock: readers arriving together load it once.
        let owned = load();
        spans.retain(|_, s| s.commits.strong_count() > 0);
        spans.insert(first, SharedSpan::of(&owned));
        owned
    }

    /// Moves `place` to the record of `next`, placed by the written lengths.
    fn seek_within(&mut self, mut place: Place) -> Result<(), ReadError> {
        let index = self.next - place.first;
        let owned = place.span_from(index, usize::MAX);
        let w = Walker::seek(&place.data, owned.span(), index, 0)?;
        place.cursor = w.cursor();
        self.bytes_before = Some(place.bytes_before + place.cursor.at);
        self.at = Some(place);
        Ok(())
    }
}

/// Whether the seal of the segment at `first` is still there (retention
/// keeps seals: its records were retired, not lost).
fn seal_remains(names: &Names, first: u64) -> bool {
    names.sealed(first, SEAL).exists()
}

/// What [`LogReader::sealed_span`] loads for the sealed segment `seg`: the
/// commits and checks of its record file, laid out by its summary.
fn load_span(names: &Names, seg: &SegmentView) -> Owned {
    let s = seg.summary;
    let recorded = times::read(&names.sealed(s.first, TIMES)).ok().flatten();
    // A record file of an earlier meterd has no checks at all.
    let format_1 = recorded
        .as_ref()
        .is_some_and(|t| t.checks.is_empty() && t.count() > 0);
    let (commits, checks) = sealed_layout(recorded, s.count, seg.written_len, s.received_max);
    Owned {
        commits: commits.into(),
        checks: checks.into(),
        start: (0, 0),
        trust_unchecked: format_1,
    }
}

impl Place {
    /// The groups from the one holding the cursor's record on (at most `n`
    /// of them), with the checks of their records.
    pub(super) fn span(&self, n: usize) -> Owned {
        self.span_from(self.cursor.index, n)
    }

    /// A sealed segment's commits and checks, shared; a copy of the active
    /// one's range (the writer adds to those under locks that a reader must
    /// not hold while it reads the file). Checks are taken after commits:
    /// the writer adds them first, so they cover every commit seen.
    fn span_from(&self, index: u64, n: usize) -> Owned {
        match (&self.sealed, &self.active) {
            (Some(o), _) => o.clone(),
            (None, Some(a)) => {
                let guard = a.commits.read().unwrap_or_else(PoisonError::into_inner);
                let g = guard.partition_point(|c| c.end_count <= index);
                let range = g..guard.len().min(g.saturating_add(n.max(1)));
                let start = g
                    .checked_sub(1)
                    .map_or((0, 0), |p| (guard[p].end_count, guard[p].end_offset));
                let commits: Arc<[Commit]> = guard[range].into();
                drop(guard);
                let upto = commits.last().map_or(start.0, |c| c.end_count);
                let checks = a.checks.read().unwrap_or_else(PoisonError::into_inner);
                let lo = usize::try_from(start.0)
                    .unwrap_or(usize::MAX)
                    .min(checks.len());
                let hi = usize::try_from(upto)
                    .unwrap_or(usize::MAX)
                    .min(checks.len());
                let checks: Arc<[Check]> = checks[lo..hi.max(lo)].into();
                Owned {
                    commits,
                    checks,
                    start,
                    trust_unchecked: false,
                }
            }
            (None, None) => Owned {
                commits: Arc::from(Vec::new()),
                checks: Arc::from(Vec::new()),
                start: (0, 0),
                trust_unchecked: false,
            },
        }
    }
}
