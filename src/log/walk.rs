//! Walking a segment's records by what its record file says (see
//! `times.rs`), never by counting newlines: record `i` is the `len` bytes
//! where the records before it end, and it is intact when they match its
//! check. So a lost newline, a flipped bit or a zeroed block damages only
//! the records it touches; the ones after keep their positions.
//!
//! When bytes were inserted or deleted, every later record sits a few bytes
//! away from where it was written: on a mismatch the walker looks for the
//! record's bytes within [`WINDOW`] bytes either side (a candidate ends
//! with a newline), and from a match on reads at the new
//! shift. A record not found there is reported damaged, and the walk goes
//! on with the next one: the walk always moves forward, one record at a
//! time, so it ends on any bytes at all.
//!
//! Records whose checks did not survive (a damaged group of the record
//! file) are read as the lines of their group's byte range, and only if the
//! range splits into exactly as many lines as the group holds; otherwise
//! each of them is reported damaged.

use std::fs::File;
use std::io;

use super::times::{Check, Commit};

mod scan;

pub(crate) use self::scan::read_at_most;

/// How far from its written place a record is looked for.
pub(crate) const WINDOW: u64 = 16 * 1024;
/// Candidates whose whole bytes are checked, at most, per search.
const MAX_CANDIDATES: usize = 256;
/// Bytes read ahead.
const CHUNK: usize = 256 * 1024;

/// Why a record cannot be given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// Its bytes do not match its check (changed, or moved out of reach).
    Mismatch,
    /// The file ends before it.
    Missing,
    /// Its check is lost and its group's bytes do not split into its records.
    Unchecked,
}

impl Damage {
    pub fn reason(self) -> &'static str {
        match self {
            Damage::Mismatch => "its bytes do not match the checksum written with it",
            Damage::Missing => "the file ends before it (truncated)",
            Damage::Unchecked => {
                "its checksum is lost and the bytes of its group do not split into its records"
            }
        }
    }
}

/// One step of a walk.
pub(crate) enum Item<'b> {
    Record {
        index: u64,
        /// Where it starts in the file.
        offset: u64,
        received: i64,
        /// The line with its `\n`.
        line: &'b [u8],
        /// False when its check was lost (the line is what its group's bytes say).
        checked: bool,
    },
    Damaged {
        index: u64,
        /// Where it should have started.
        offset: u64,
        damage: Damage,
    },
}

/// Where a walk stands: the next record and where it starts in the file.
/// Kept between walks over a growing segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// Index of the next record within the segment.
    pub index: u64,
    /// File offset where it starts.
    pub at: u64,
    /// File offset minus written offset (non-zero after inserted or
    /// deleted bytes).
    pub shift: i64,
}

impl Cursor {
    pub const START: Cursor = Cursor {
        index: 0,
        at: 0,
        shift: 0,
    };
}

/// The commits and checks a walk may read: the groups `commits`, starting
/// where the group before them ended (`start`: records, written bytes), and
/// the checks of their records (`checks[0]` is record `start.0`), empty
/// when none are known.
#[derive(Clone, Copy)]
pub(crate) struct Span<'a> {
    pub commits: &'a [Commit],
    pub start: (u64, u64),
    pub checks: &'a [Check],
    /// Whether records without a check may be given as their group's
    /// lines: only where nothing better was ever written (a record file of
    /// format 1), or the segment was proven whole against its seal. Else a
    /// record whose check is lost cannot be told from a damaged one, and is
    /// reported.
    pub trust_unchecked: bool,
}

impl Span<'_> {
    fn end_count(&self) -> u64 {
        self.commits.last().map_or(self.start.0, |c| c.end_count)
    }

    fn check(&self, index: u64) -> Check {
        usize::try_from(index - self.start.0)
            .ok()
            .and_then(|i| self.checks.get(i))
            .copied()
            .unwrap_or(Check::UNKNOWN)
    }

    /// (start count, start written offset) of group `g`.
    fn group_start(&self, g: usize) -> (u64, u64) {
        match g.checked_sub(1) {
            Some(p) => (self.commits[p].end_count, self.commits[p].end_offset),
            None => self.start,
        }
    }

    /// Whether every record of group `g` has a known check.
    fn group_checked(&self, g: usize) -> bool {
        let (from, _) = self.group_start(g);
        (from..self.commits[g].end_count).all(|i| self.check(i).is_known())
    }

    /// Where record `index` was written: group start plus the lengths of
    /// the records before it in its group (its group must be checked).
    fn written_offset(&self, g: usize, index: u64) -> u64 {
        let (from, offset) = self.group_start(g);
        (from..index).fold(offset, |o, i| o + u64::from(self.check(i).len))
    }
}

/// Walks the records of one segment from a cursor. Bounded: every call to
/// [`next`](Walker::next) moves past one record or ends the walk.
pub(crate) struct Walker<'a> {
    data: &'a File,
    span: Span<'a>,
    cursor: Cursor,
    group: usize,
    /// `buf` holds the file from `base`.
    buf: Vec<u8>,
    base: u64,
    /// A record given with its `\n` added (its file lost the last byte).
    fixed: Vec<u8>,
    /// The current group's lines may be given unchecked (its checks are
    /// lost and its bytes split into exactly its records); `None` until
    /// the group was looked at.
    unchecked_ok: Option<bool>,
}

impl<'a> Walker<'a> {
    /// A walk from `cursor` (whose index must lie in the span). A cursor
    /// that only knows its index gets its offset from the checks with
    /// [`Walker::seek`].
    pub fn new(data: &'a File, span: Span<'a>, cursor: Cursor) -> Walker<'a> {
        let group = span
            .commits
            .partition_point(|c| c.end_count <= cursor.index);
        Walker {
            data,
            span,
            cursor,
            group,
            buf: Vec::new(),
            base: 0,
            fixed: Vec::new(),
            unchecked_ok: None,
        }
    }

    /// A walk from record `index`, placed by the written offsets (with
    /// `shift`, as a walk before this one found it). Within a group whose
    /// checks are lost, the records before `index` are passed over.
    pub fn seek(data: &'a File, span: Span<'a>, index: u64, shift: i64) -> io::Result<Walker<'a>> {
        let mut w = Walker::new(
            data,
            span,
            Cursor {
                index,
                at: 0,
                shift,
            },
        );
        if w.group >= span.commits.len() {
            let end = span.commits.last().map_or(span.start.1, |c| c.end_offset);
            w.cursor.at = end.saturating_add_signed(shift);
            return Ok(w);
        }
        if span.group_checked(w.group) {
            w.cursor.at = span
                .written_offset(w.group, index)
                .saturating_add_signed(shift);
            return Ok(w);
        }
        let (from, offset) = span.group_start(w.group);
        w.cursor = Cursor {
            index: from,
            at: offset.saturating_add_signed(shift),
            shift,
        };
        while w.cursor.index < index {
            if w.next()?.is_none() {
                break;
            }
        }
        Ok(w)
    }

    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// The next record, or `None` at the end of the span.
    pub fn next(&mut self) -> io::Result<Option<Item<'_>>> {
        let index = self.cursor.index;
        if index >= self.span.end_count() {
            return Ok(None);
        }
        while self.span.commits[self.group].end_count <= index {
            self.group += 1;
            self.unchecked_ok = None;
        }
        let received = self.span.commits[self.group].received;
        let check = self.span.check(index);
        if check.is_known() {
            return self.checked(index, check, received);
        }
        self.unchecked(index, received)
    }

    fn checked(&mut self, index: u64, check: Check, received: i64) -> io::Result<Option<Item<'_>>> {
        let len = u64::from(check.len);
        let at = self.cursor.at;
        let written = at.saturating_add_signed(-self.cursor.shift);
        let mut found = None;
        if self.fetch(at, len)? && check.matches(self.slice(at, len)) {
            found = Some(at);
        } else if let Some(x) = self.search(at, check)? {
            found = Some(x);
        }
        let Some(x) = found else {
            self.cursor.index += 1;
            self.cursor.at = at + len;
            // A last record whose file lost only its final newline is
            // still whole: its check says so. It ends where the file does
            // (also when bytes before it moved it).
            let file_len = self.file_len()?;
            let start = (file_len + 1).saturating_sub(len);
            if self.is_last(index)
                && len > 1
                && start.abs_diff(at) <= WINDOW
                && self.fetch(start, len - 1)?
            {
                let mut line = self.slice(start, len - 1).to_vec();
                line.push(b'\n');
                if check.matches(&line) {
                    // It ends where the file does: nothing after it to cut.
                    self.cursor.at = file_len;
                    self.cursor.shift = (start as i64).wrapping_sub(written as i64);
                    self.fixed = line;
                    return Ok(Some(Item::Record {
                        index,
                        offset: start,
                        received,
                        line: &self.fixed,
                        checked: true,
                    }));
                }
            }
            let damage = if self.file_len()? < at + len {
                Damage::Missing
            } else {
                Damage::Mismatch
            };
            return Ok(Some(Item::Damaged {
                index,
                offset: at,
                damage,
            }));
        };
        self.cursor = Cursor {
            index: index + 1,
            at: x + len,
            shift: (x as i64).wrapping_sub(written as i64),
        };
        self.fetch(x, len)?;
        Ok(Some(Item::Record {
            index,
            offset: x,
            received,
            line: self.slice(x, len),
            checked: true,
        }))
    }

    fn is_last(&self, index: u64) -> bool {
        index + 1 == self.span.end_count()
    }

    /// A record of a group whose checks are lost: the next line, if the
    /// group's bytes split into exactly its records.
    fn unchecked(&mut self, index: u64, received: i64) -> io::Result<Option<Item<'_>>> {
        let (from, written_start) = self.span.group_start(self.group);
        let g = self.span.commits[self.group];
        let start = written_start.saturating_add_signed(self.cursor.shift);
        let end = g.end_offset.saturating_add_signed(self.cursor.shift);
        if self.unchecked_ok.is_none() {
            let lines = if self.span.trust_unchecked {
                self.count_lines(start, end)?
            } else {
                None
            };
            self.unchecked_ok = Some(lines == Some(g.end_count - from));
        }
        let at = self.cursor.at;
        if self.unchecked_ok == Some(true) {
            if let Some(nl) = self.find_newline(at, end)? {
                let len = nl + 1 - at;
                self.cursor.index += 1;
                self.cursor.at = nl + 1;
                self.fetch(at, len)?;
                return Ok(Some(Item::Record {
                    index,
                    offset: at,
                    received,
                    line: self.slice(at, len),
                    checked: false,
                }));
            }
        }
        self.cursor.index += 1;
        if self.cursor.index == g.end_count {
            self.cursor.at = end;
        }
        Ok(Some(Item::Damaged {
            index,
            offset: at,
            damage: Damage::Unchecked,
        }))
    }
}
