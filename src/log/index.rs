//! The dedupe index of one stream: which keys the log holds within the
//! window, measured on receive time. The active segment's keys are in memory
//! (hash to offset, `active_keys.rs`); each sealed segment inside the window has its key index
//! on disk and only its filter in memory. Every hash match is confirmed
//! against the key in the stored line, so a collision is never a duplicate.
//! Owned by the writer thread.

use std::fs::File;
use std::io;

pub(crate) use super::active_keys::ActiveKeys;
use super::keys::{self, KeyIndex, Summary};
use super::lines::line_at;
use super::times::{self, Check, Commit};
use super::walk::{Cursor, Item, Span, Walker};
use super::{KeyOf, Unreadable};
use sha2::{Digest as _, Sha256};

impl Walked {
    /// The SHA-256 of `[0, end)`, when known.
    pub fn sha256(&self) -> Option<[u8; 32]> {
        self.hasher.clone().map(|h| h.finalize().into())
    }
}

/// Whether the line at hand holds `key`. An unreadable line holds no key.
pub(super) fn stored_key_is(line: &[u8], key: &str, key_of: KeyOf) -> bool {
    matches!(key_of(line), Ok(Some(k)) if k == key)
}

/// A sealed segment inside the dedupe window.
pub(crate) struct SealedKeys {
    pub index: KeyIndex,
    pub data: File,
}

/// Why a lookup could not answer.
pub(crate) enum LookupError {
    Io(io::Error),
    /// The key index of the sealed segment starting at this position is
    /// damaged: rebuild it from the segment and ask again.
    Damaged(u64, String),
}

impl From<io::Error> for LookupError {
    fn from(e: io::Error) -> Self {
        LookupError::Io(e)
    }
}

/// Whether a record with `key` was received at or after `cutoff` (unix
/// nanoseconds), in the active segment or a sealed one (newest first).
#[allow(clippy::too_many_arguments)]
pub(crate) fn seen(
    key: &str,
    cutoff: i64,
    active: &ActiveKeys,
    active_data: &File,
    active_len: u64,
    commits: &[Commit],
    sealed: &[&SealedKeys],
    key_of: KeyOf,
) -> Result<bool, LookupError> {
    if let Some(offset) = active.find(key, active_data, active_len, key_of)? {
        // Only the latest record of a key is indexed: if it is outside the
        // window, so is every earlier one.
        if times::received_at_offset(commits, offset).is_some_and(|r| r >= cutoff) {
            return Ok(true);
        }
    }
    let hash = keys::hash(key);
    for s in sealed.iter().rev() {
        let summary: &Summary = &s.index.summary;
        if summary.received_max < cutoff {
            break; // older segments are older still
        }
        let candidates = s
            .index
            .lookup(hash)
            .map_err(|e| LookupError::Damaged(summary.first, e.0))?;
        for (offset, received) in candidates {
            if received < cutoff {
                continue;
            }
            let line = line_at(&s.data, offset, summary.data_len).map_err(|e| {
                LookupError::Damaged(summary.first, format!("offset {offset}: {e}"))
            })?;
            if stored_key_is(&line, key, key_of) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// What a walk of a segment's records (by its record file) found.
pub(crate) struct Walked {
    /// Records walked, damaged ones included (the span's count).
    pub count: u64,
    /// File offset just past the last record.
    pub end: u64,
    /// `(hash, offset)` of every keyed intact record, in file order.
    pub keyed: Vec<(u64, u64)>,
    /// Indexes (within the segment) of the records that are damaged.
    pub damaged: Vec<u64>,
    /// Each record's check: the recorded one, or taken from the line where
    /// it was lost and the line was read unchecked.
    pub checks: Vec<Check>,
    /// Records found away from where they were written (bytes inserted or
    /// deleted before them).
    pub shifted: bool,
    /// SHA-256 of `[0, end)` so far, when the records fill it without a gap.
    pub hasher: Option<Sha256>,
}

/// Walks every record of a segment by its record file, for its keys and
/// checks (see `walk.rs`). Records whose check is known are keyed with the
/// faster `trusted` key reader when given. Blocking.
pub(crate) fn walk_records(
    data: &File,
    span: Span<'_>,
    key_of: KeyOf,
    trusted: Option<KeyOf>,
) -> io::Result<Walked> {
    let mut w = Walker::new(data, span, Cursor::START);
    let count = span.commits.last().map_or(0, |c| c.end_count);
    let mut out = Walked {
        count,
        end: 0,
        keyed: Vec::new(),
        damaged: Vec::new(),
        checks: Vec::with_capacity(usize::try_from(count).unwrap_or(0)),
        shifted: false,
        hasher: None,
    };
    let mut hasher = Some(Sha256::new());
    let mut expected_at = 0u64;
    while let Some(item) = w.next()? {
        match item {
            Item::Record {
                offset,
                line,
                checked,
                index,
                ..
            } => {
                let read_key = match trusted {
                    Some(fast) if checked => fast,
                    _ => key_of,
                };
                match read_key(line) {
                    Ok(Some(k)) => out.keyed.push((keys::hash(&k), offset)),
                    Ok(None) => {}
                    Err(Unreadable) => {}
                }
                out.checks.push(if checked {
                    span_check(&span, index)
                } else {
                    Check::of(line)
                });
                if offset != expected_at {
                    hasher = None;
                }
                if let Some(h) = &mut hasher {
                    h.update(line);
                }
                expected_at = offset + line.len() as u64;
            }
            Item::Damaged { index, .. } => {
                out.damaged.push(index);
                out.checks.push(span_check(&span, index));
                hasher = None;
            }
        }
    }
    out.end = w.cursor().at;
    out.shifted = w.cursor().shift != 0;
    // A record given with its lost newline added is not what the file holds.
    if expected_at != out.end || data.metadata()?.len() < out.end {
        hasher = None;
    }
    out.hasher = hasher;
    Ok(out)
}

fn span_check(span: &Span<'_>, index: u64) -> Check {
    usize::try_from(index - span.start.0)
        .ok()
        .and_then(|i| span.checks.get(i))
        .copied()
        .unwrap_or(Check::UNKNOWN)
}

/// What a scan of a segment's lines found.
pub(crate) struct Scanned {
    pub count: u64,
    /// Offset just past the last line taken.
    pub end: u64,
    /// `(hash, offset)` of every keyed line, in file order.
    pub keyed: Vec<(u64, u64)>,
    /// Lines that are not valid records (kept, when not stopping at them).
    pub unreadable: u64,
    /// How many of the given commits land on line ends with the right count.
    pub valid_commits: usize,
    /// The check of every line taken.
    pub checks: Vec<Check>,
}

/// Reads a segment's lines for its key index. Stops at the first unreadable
/// line when `stop_at_unreadable` (the active file, which only meterd
/// writes: such a line is damage), else counts and keeps it (a ledger of an
/// older meterd or another tool). Checks `commits` against the lines as it
/// goes: a commit is valid when it ends on a line end holding as many lines
/// as it says, and so are all before it. Blocking.
pub(crate) fn scan(
    data: &File,
    len: u64,
    key_of: KeyOf,
    stop_at_unreadable: bool,
    commits: &[Commit],
) -> io::Result<Scanned> {
    scan_with(data, len, key_of, None, stop_at_unreadable, commits)
}

/// [`scan`], reading the keys of lines that end at or before `trusted.1`
/// with the faster `trusted.0` (lines the log wrote and committed itself).
pub(crate) fn scan_with(
    data: &File,
    len: u64,
    key_of: KeyOf,
    trusted: Option<(KeyOf, u64)>,
    stop_at_unreadable: bool,
    commits: &[Commit],
) -> io::Result<Scanned> {
    let mut lines = super::lines::Lines::new(data, 0, len);
    let mut s = Scanned {
        count: 0,
        end: 0,
        keyed: Vec::new(),
        unreadable: 0,
        valid_commits: 0,
        checks: Vec::new(),
    };
    let mut commits_ok = true;
    while let Some((offset, line)) = lines.next_line()? {
        let read_key = match trusted {
            Some((fast, upto)) if offset + line.len() as u64 <= upto => fast,
            _ => key_of,
        };
        match read_key(line) {
            Ok(Some(k)) => s.keyed.push((keys::hash(&k), offset)),
            Ok(None) => {}
            Err(Unreadable) if stop_at_unreadable => break,
            Err(Unreadable) => s.unreadable += 1,
        }
        s.count += 1;
        s.end = offset + line.len() as u64;
        s.checks.push(Check::of(line));
        while commits_ok {
            match commits.get(s.valid_commits) {
                Some(c) if c.end_offset == s.end && c.end_count == s.count => {
                    s.valid_commits += 1;
                }
                Some(c) if c.end_offset < s.end || c.end_count <= s.count => {
                    commits_ok = false;
                }
                _ => break,
            }
        }
    }
    Ok(s)
}
