//! The dedupe index of one stream: which keys the log holds within the
//! window, measured on receive time. The active segment's keys are in memory
//! (hash to offset); each sealed segment inside the window has its key index
//! on disk and only its filter in memory. Every hash match is confirmed
//! against the key in the stored line, so a collision is never a duplicate.
//! Owned by the writer thread.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;

use super::keys::{self, KeyEntry, KeyIndex, Summary};
use super::lines::line_at;
use super::times::{self, Commit};
use super::{KeyOf, Unreadable};

/// Keys are xxh3 hashes already: hashing them again would be wasted work.
#[derive(Default)]
pub(crate) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Keys of the active segment: 16 bytes a key, not the key itself.
#[derive(Default)]
pub(crate) struct ActiveKeys {
    /// Hash to the offset of the latest record with a key of that hash.
    by_hash: HashMap<u64, u64, BuildHasherDefault<Prehashed>>,
    /// Keys whose hash collided with another key's (practically never used).
    collided: HashMap<Box<str>, u64>,
}

impl ActiveKeys {
    pub fn with_capacity(n: usize) -> ActiveKeys {
        ActiveKeys {
            by_hash: HashMap::with_capacity_and_hasher(n, Default::default()),
            collided: HashMap::new(),
        }
    }

    /// Remembers `key` at `offset`, replacing an older record of the same
    /// key. `data` is the active file, to tell a collision from the same key.
    pub fn insert(
        &mut self,
        key: &str,
        offset: u64,
        data: &File,
        len: u64,
        key_of: KeyOf,
    ) -> io::Result<()> {
        let h = keys::hash(key);
        match self.by_hash.get(&h).copied() {
            None => {
                self.by_hash.insert(h, offset);
            }
            Some(old) => {
                let line = line_at(data, old, len)?;
                if stored_key_is(&line, key, key_of) {
                    self.by_hash.insert(h, offset);
                } else {
                    self.collided.insert(key.into(), offset);
                }
            }
        }
        Ok(())
    }

    /// [`insert`](Self::insert) for a key known only by hash and the line
    /// at `offset` (recovery scans keep no key strings).
    pub fn insert_hashed(
        &mut self,
        hash: u64,
        offset: u64,
        data: &File,
        len: u64,
        key_of: KeyOf,
    ) -> io::Result<()> {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.by_hash.entry(hash) {
            slot.insert(offset);
            return Ok(());
        }
        let line = line_at(data, offset, len)?;
        match key_of(&line) {
            Ok(Some(key)) => self.insert(&key, offset, data, len, key_of),
            _ => Ok(()),
        }
    }

    pub fn len(&self) -> usize {
        self.by_hash.len() + self.collided.len()
    }

    /// The offset of the latest record with `key`, confirmed against the file.
    fn find(&self, key: &str, data: &File, len: u64, key_of: KeyOf) -> io::Result<Option<u64>> {
        if let Some(&offset) = self.by_hash.get(&keys::hash(key)) {
            if stored_key_is(&line_at(data, offset, len)?, key, key_of) {
                return Ok(Some(offset));
            }
        }
        Ok(self.collided.get(key).copied())
    }

    /// The keys as index entries, with their receive times.
    pub fn entries(&self, commits: &[Commit]) -> Vec<KeyEntry> {
        let received = |offset| times::received_at_offset(commits, offset).unwrap_or(0);
        self.by_hash
            .iter()
            .map(|(&hash, &offset)| (hash, offset))
            .chain(self.collided.iter().map(|(k, &o)| (keys::hash(k), o)))
            .map(|(hash, offset)| KeyEntry {
                hash,
                offset,
                received: received(offset),
            })
            .collect()
    }
}

/// Whether the line at hand holds `key`. An unreadable line holds no key.
fn stored_key_is(line: &[u8], key: &str, key_of: KeyOf) -> bool {
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
