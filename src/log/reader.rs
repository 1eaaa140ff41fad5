//! Reading a stream by position, for spools, `Tail` and `Usage`. A reader
//! sees only durable records (the writer publishes a group after its sync),
//! reads them straight from the segment files by what their record files
//! say (`walk.rs`: every record checked against its checksum), so a slow
//! reader holds no queue and never slows the writer, and moves from one
//! segment to the next across seals.
//!
//! A record that is damaged on disk, or positions whose segment is gone,
//! end a read with [`ReadError::Damaged`] or [`ReadError::Missing`] after
//! every intact record before them; the reader has then moved past them,
//! so that the next read goes on with the intact records behind.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::times::{Check, Commit};
use super::walk::{Cursor, Damage, Item, Span, Walker};
use super::{ActiveMeta, Shared, View};

mod place;

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
    /// A record whose bytes on disk are damaged; the reader is past it.
    #[error("stream {stream}: the record at position {position} in {} is damaged: {}", file_name(.file), .damage.reason())]
    Damaged {
        stream: &'static str,
        position: u64,
        file: PathBuf,
        damage: Damage,
        /// The bytes found where it should be (at most its length).
        raw: Vec<u8>,
    },
    /// Positions that no segment holds (a segment file is gone); the
    /// reader is past them.
    #[error("stream {stream}: positions {from}..{to} are missing: no file holds them ({} is gone)", file_name(.file))]
    Missing {
        stream: &'static str,
        from: u64,
        to: u64,
        file: PathBuf,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// A position in the log and the segment it lies in.
pub struct LogReader {
    shared: Arc<Shared>,
    /// The next position to read.
    next: u64,
    at: Option<Place>,
    /// Bytes before `next` (see [`LogReader::bytes_before`]), once known.
    bytes_before: Option<u64>,
    /// Damage met after some records were given: the next read returns it.
    pending: Option<ReadError>,
}

struct Place {
    first: u64,
    data: Arc<File>,
    file: PathBuf,
    /// A sealed segment's commits and checks, read once from its record
    /// file; `None` for the active segment, whose the writer shares.
    sealed: Option<Owned>,
    active: Option<Arc<ActiveMeta>>,
    cursor: Cursor,
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
                pending: None,
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
    /// records were visited; damage after at least one record is returned
    /// by the next call. Blocking.
    pub fn visit(
        &mut self,
        max_records: usize,
        max_bytes: usize,
        mut f: impl FnMut(u64, i64, &[u8]),
    ) -> Result<usize, ReadError> {
        let mut n = 0usize;
        let mut bytes = 0usize;
        while n < max_records && bytes < max_bytes {
            if let Some(e) = self.pending.take() {
                if n > 0 {
                    self.pending = Some(e);
                    break;
                }
                return Err(e);
            }
            if self.next > *self.shared.end.borrow() {
                break;
            }
            if self.at.is_none() {
                if let Err(e) = self.locate() {
                    self.pending = Some(e);
                    continue;
                }
            }
            let Some(place) = self.at.as_mut() else { break };
            let stream = self.shared.names.stream;
            let data = place.data.clone();
            let owned = place.span(max_records - n);
            let span = owned.span();
            if owned
                .commits
                .last()
                .is_none_or(|c| c.end_count <= place.cursor.index)
            {
                // This segment has nothing more: move on if it was sealed.
                let view = self.shared.view();
                let sealed = place.sealed.is_some() || view.active.first != place.first;
                if !sealed {
                    break;
                }
                self.at = None;
                continue;
            }
            let mut walker = Walker::new(&data, span, place.cursor);
            while n < max_records && bytes < max_bytes {
                match walker.next()? {
                    None => break,
                    Some(Item::Record { received, line, .. }) => {
                        f(self.next, received, line);
                        n += 1;
                        bytes += line.len();
                        self.next += 1;
                    }
                    Some(Item::Damaged { offset, damage, .. }) => {
                        let len = usize::try_from(walker.cursor().at.saturating_sub(offset))
                            .unwrap_or(0)
                            .min(64 << 20);
                        let mut raw = vec![0u8; len];
                        let got = super::walk::read_at_most(&data, &mut raw, offset)?;
                        raw.truncate(got);
                        self.pending = Some(ReadError::Damaged {
                            stream,
                            position: self.next,
                            file: place.file.clone(),
                            damage,
                            raw,
                        });
                        self.next += 1;
                        break;
                    }
                }
            }
            place.cursor = walker.cursor();
            self.bytes_before = Some(place.bytes_before + place.cursor.at);
        }
        Ok(n)
    }
}

/// A sealed segment's [`Owned`] as long as some reader holds it.
pub(crate) struct SharedSpan {
    pub(super) commits: std::sync::Weak<[Commit]>,
    checks: std::sync::Weak<[Check]>,
    trust_unchecked: bool,
}

impl SharedSpan {
    fn of(o: &Owned) -> SharedSpan {
        SharedSpan {
            commits: Arc::downgrade(&o.commits),
            checks: Arc::downgrade(&o.checks),
            trust_unchecked: o.trust_unchecked,
        }
    }

    fn upgrade(&self) -> Option<Owned> {
        Some(Owned {
            commits: self.commits.upgrade()?,
            checks: self.checks.upgrade()?,
            start: (0, 0),
            trust_unchecked: self.trust_unchecked,
        })
    }
}

/// A [`Span`] that owns its commits and checks (shared for a sealed
/// segment, a copy of a range for the active one).
#[derive(Clone)]
struct Owned {
    commits: Arc<[Commit]>,
    checks: Arc<[Check]>,
    start: (u64, u64),
    trust_unchecked: bool,
}

impl Owned {
    fn span(&self) -> Span<'_> {
        Span {
            commits: &self.commits,
            start: self.start,
            checks: &self.checks,
            trust_unchecked: self.trust_unchecked,
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
