//! Reading a stream by position, for spools and `Tail`. A reader sees only
//! durable records (the writer publishes a group after its sync), reads
//! whole lines of any length straight from the segment files (so a slow
//! reader holds no queue and never slows the writer), and moves from one
//! segment to the next across seals.

use std::fs::File;
use std::io;
use std::sync::{Arc, PoisonError};

use super::lines::Lines;
use super::names::{DATA, TIMES};
use super::times::{self, Commit};
use super::{ActiveMeta, Shared, View};

/// One record as read from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub position: u64,
    /// When the record became durable: unix nanoseconds.
    pub received: i64,
    /// The ledger line, with its `\n`.
    pub line: Vec<u8>,
}

/// Why a reader cannot start where it was asked to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SeekError {
    /// Retention (or a spool's delivery) removed the records asked for.
    #[error("records up to position {} were removed; the first available is {first}", first - 1)]
    Pruned { first: u64 },
    /// The position is past the last durable record.
    #[error("position {after} is beyond the end of the log ({end})")]
    Beyond { after: u64, end: u64 },
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Retention removed the segment under the reader.
    #[error("records were removed while reading; the first available is {first}")]
    Pruned { first: u64 },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A position in the log and the segment it lies in.
pub struct LogReader {
    shared: Arc<Shared>,
    /// The next position to read.
    next: u64,
    at: Option<Place>,
    /// Bytes before `next` (see [`LogReader::bytes_before`]), once known.
    bytes_before: Option<u64>,
}

struct Place {
    first: u64,
    data: Arc<File>,
    /// A sealed segment's receive times, read once from its times file;
    /// `None` for the active segment, whose times the writer shares.
    sealed: Option<Arc<[Commit]>>,
    active: Option<Arc<ActiveMeta>>,
    /// Index of `next` within the segment, and its byte offset.
    index: u64,
    offset: u64,
    bytes_before: u64,
}

impl LogReader {
    /// A reader of the records after `after` (0: from the first retained).
    pub(crate) fn new(shared: Arc<Shared>, after: u64) -> Result<LogReader, SeekError> {
        let end = *shared.end.borrow();
        if after > end {
            return Err(SeekError::Beyond { after, end });
        }
        let first = shared.view().first();
        if after == 0 || after + 1 >= first {
            Ok(LogReader {
                shared,
                next: (after + 1).max(first),
                at: None,
                bytes_before: None,
            })
        } else {
            Err(SeekError::Pruned { first })
        }
    }

    /// The next position this reader will return.
    pub fn next_position(&self) -> u64 {
        self.next
    }

    /// Bytes of the log before the next record, counted from the first
    /// segment retained when the log was opened: what a spool has delivered.
    pub fn bytes_before(&self) -> Option<u64> {
        self.bytes_before
    }

    /// Finds the next record's place now (reads happen lazily otherwise)
    /// and returns [`bytes_before`](Self::bytes_before). Blocking.
    pub fn locate_now(&mut self) -> Result<u64, ReadError> {
        if self.at.is_none() {
            self.locate()?;
        }
        Ok(self.bytes_before.unwrap_or(0))
    }

    /// Reads up to `max_records` durable records, and stops once `max_bytes`
    /// are reached (but always returns a whole first record, however long).
    /// Empty when the reader is at the end. Blocking.
    pub fn read(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogLine>, ReadError> {
        let mut out = Vec::new();
        self.visit(max_records, max_bytes, |position, received, line| {
            out.push(LogLine {
                position,
                received,
                line: line.to_vec(),
            });
        })?;
        Ok(out)
    }

    /// As [`read`](Self::read), but lends each record to `f` (position,
    /// receive time, line with its `\n`) instead of copying it: scans that
    /// look at every record allocate nothing per record. Returns how many
    /// records were visited. Blocking.
    pub fn visit(
        &mut self,
        max_records: usize,
        max_bytes: usize,
        mut f: impl FnMut(u64, i64, &[u8]),
    ) -> Result<usize, ReadError> {
        let mut n = 0usize;
        let mut bytes = 0usize;
        while n < max_records && bytes < max_bytes {
            if self.next > *self.shared.end.borrow() {
                break;
            }
            if self.at.is_none() {
                self.locate()?;
            }
            let Some(place) = self.at.as_mut() else { break };
            let want = max_records - n;
            let (all, range) = place.commits_from(place.index, want);
            let commits = &all[range];
            let Some(last) = commits.last() else {
                // This segment has nothing more: move on if it was sealed.
                let view = self.shared.view();
                let sealed = place.sealed.is_some() || view.active.first != place.first;
                if !sealed {
                    break;
                }
                self.at = None;
                continue;
            };
            let mut group = 0;
            let mut lines = Lines::new(&place.data, place.offset, last.end_offset);
            while n < max_records && bytes < max_bytes {
                let Some((_, line)) = lines.next_line()? else {
                    if place.offset < last.end_offset {
                        return Err(ReadError::Io(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "segment {} is shorter than its receive times say",
                                place.first
                            ),
                        )));
                    }
                    break;
                };
                while group < commits.len() && commits[group].end_count <= place.index {
                    group += 1;
                }
                let received = commits.get(group).map_or(0, |c| c.received);
                f(self.next, received, line);
                n += 1;
                bytes += line.len();
                place.index += 1;
                place.offset += line.len() as u64;
                self.next += 1;
                self.bytes_before = Some(place.bytes_before + place.offset);
            }
        }
        Ok(n)
    }

    /// Finds the segment holding `next` and the offset of its line.
    fn locate(&mut self) -> Result<(), ReadError> {
        loop {
            let view = self.shared.view();
            let first = view.first();
            if self.next < first {
                return Err(ReadError::Pruned { first });
            }
            let active = &view.active;
            if self.next >= active.first {
                let place = Place {
                    first: active.first,
                    data: active.data.clone(),
                    sealed: None,
                    active: Some(active.clone()),
                    index: 0,
                    offset: 0,
                    bytes_before: active.bytes_before,
                };
                return self.seek_within(place);
            }
            let i = view
                .sealed
                .partition_point(|s| s.summary.first <= self.next)
                .saturating_sub(1);
            let Some(seg) = view.sealed.get(i) else {
                return Err(ReadError::Pruned { first });
            };
            let s = seg.summary;
            if self.next >= s.first + s.count {
                // Positions missing between segments (deleted by hand).
                self.next = view
                    .sealed
                    .get(i + 1)
                    .map_or(active.first, |n| n.summary.first);
                continue;
            }
            let names = &self.shared.names;
            let data = match File::open(names.sealed(s.first, DATA)) {
                Ok(f) => f,
                // Deleted by retention since the view was taken: look again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if Arc::ptr_eq(&view, &self.shared.view()) {
                        return Err(ReadError::Pruned {
                            first: s.first + s.count,
                        });
                    }
                    continue;
                }
                Err(e) => return Err(ReadError::Io(e)),
            };
            let commits = match times::read(&names.sealed(s.first, TIMES)) {
                Ok(Some(t))
                    if t.commits.last().map(|c| (c.end_count, c.end_offset))
                        == Some((s.count, s.data_len)) =>
                {
                    t.commits
                }
                // Damaged receive times: the whole segment at its newest.
                _ => vec![Commit {
                    end_count: s.count,
                    end_offset: s.data_len,
                    received: s.received_max,
                }],
            };
            let place = Place {
                first: s.first,
                data: Arc::new(data),
                sealed: Some(commits.into()),
                active: None,
                index: 0,
                offset: 0,
                bytes_before: seg.bytes_before,
            };
            return self.seek_within(place);
        }
    }

    /// Moves `place` to the line of `next`: to the start of its group by the
    /// receive times, then line by line.
    fn seek_within(&mut self, mut place: Place) -> Result<(), ReadError> {
        let index = self.next - place.first;
        let (start_count, start_offset) = {
            let guard;
            let commits: &[Commit] = match (&place.sealed, &place.active) {
                (Some(c), _) => c,
                (None, Some(a)) => {
                    guard = a.commits.read().unwrap_or_else(PoisonError::into_inner);
                    &guard
                }
                (None, None) => &[],
            };
            match times::group_of(commits, index) {
                Some(0) | None if commits.is_empty() => (0, 0),
                Some(0) => (0, 0),
                Some(g) => (commits[g - 1].end_count, commits[g - 1].end_offset),
                None => commits
                    .last()
                    .map_or((0, 0), |c| (c.end_count, c.end_offset)),
            }
        };
        place.index = start_count;
        place.offset = start_offset;
        if index > start_count {
            let mut lines = Lines::new(&place.data, start_offset, u64::MAX);
            while place.index < index {
                let Some((_, line)) = lines.next_line()? else {
                    return Err(ReadError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("position {} is not in segment {}", self.next, place.first),
                    )));
                };
                place.index += 1;
                place.offset += line.len() as u64;
            }
        }
        self.bytes_before = Some(place.bytes_before + place.offset);
        self.at = Some(place);
        Ok(())
    }
}

impl Place {
    /// Up to `n` commits from the group holding `index` on: a range of a
    /// sealed segment's commits, shared, or a copy of the active one's (the
    /// writer adds to those under a lock that a reader must not hold while
    /// it reads the file).
    fn commits_from(&self, index: u64, n: usize) -> (Arc<[Commit]>, std::ops::Range<usize>) {
        let range = |commits: &[Commit]| {
            let g = commits.partition_point(|c| c.end_count <= index);
            g..commits.len().min(g + n.max(1))
        };
        match (&self.sealed, &self.active) {
            (Some(c), _) => (c.clone(), range(c)),
            (None, Some(a)) => {
                let guard = a.commits.read().unwrap_or_else(PoisonError::into_inner);
                let copy: Arc<[Commit]> = guard[range(&guard)].into();
                let len = copy.len();
                (copy, 0..len)
            }
            (None, None) => (Arc::from(Vec::new()), 0..0),
        }
    }
}

impl View {
    /// The first retained position.
    pub(crate) fn first(&self) -> u64 {
        self.sealed
            .first()
            .map_or(self.active.first, |s| s.summary.first)
    }
}
