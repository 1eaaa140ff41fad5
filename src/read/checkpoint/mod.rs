//! The usage checkpoint of a sealed segment, `entries.<first>.usage`
//! beside `entries.<first>.jsonl`: the fold state of every record up to the
//! segment's end ([`Body`]), what it describes ([`Meta`]) and where in the
//! segment a query may start reading ([`Blocks`]). Derived data: written
//! through a synced temporary file and a rename, checked against the segment
//! it describes (and against the log's first retained position) before it is
//! used, and rebuilt from the log whenever it is missing, damaged or stale.
//! It is never a second source of truth. The bytes on disk: [`file`].

mod file;

pub use file::{read_blocks, read_body, read_meta, write};

use crate::usage::{Checkpoint, UnixNanos};

/// Records per block of the block index: about ten minutes of a busy
/// ledger's records, so skipping the blocks after a range wastes little
/// reading, while the index stays small (16 bytes per block). Tests use
/// small blocks, so that their small segments have several. The file says
/// which size it was written with.
#[cfg(not(test))]
pub const BLOCK: u64 = 1024;
#[cfg(test)]
pub const BLOCK: u64 = 3;

/// What a checkpoint says about its segment and the log up to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// The log's first retained position when the checkpoint was built: it
    /// folds the records from there, so retention makes it stale.
    pub from: u64,
    /// The segment it belongs to: first position, records, data bytes.
    pub first: u64,
    pub count: u64,
    pub data_len: u64,
    /// The range of `emitted_at` among the segment's own records, so that a
    /// query can skip a segment that lies wholly after its end.
    pub min_emitted: UnixNanos,
    pub max_emitted: UnixNanos,
    /// The latest receive time of any record up to the segment's end: the
    /// checkpoint serves a query with `as_of` only at or after it.
    pub received_max: i64,
    /// The checkpoint's `before` (see [`crate::usage::Checkpoint`]).
    pub before: UnixNanos,
}

/// The fold state at `before` of every record up to the segment's end, and
/// which records have `emitted_at >= before` (the state leaves them out).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Body {
    pub state: Checkpoint,
    /// The records it leaves out, by position.
    pub pending: Pending,
}

/// The earliest `emitted_at` of each [`BLOCK`] records of a segment (the
/// last block may be shorter): a query skips the blocks whose earliest
/// record is after its end, as it skips whole segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocks {
    /// Records per block (at least 1).
    pub per: u64,
    pub min_emitted: Vec<UnixNanos>,
}

// === impl Blocks ===

impl Default for Blocks {
    fn default() -> Self {
        Blocks {
            per: BLOCK,
            min_emitted: Vec::new(),
        }
    }
}

impl Blocks {
    /// Notes the `emitted_at` of the record at `index` in the segment.
    /// Records come in order, so a new block starts with its first record.
    pub fn note(&mut self, index: u64, emitted_at: UnixNanos) {
        let b = usize::try_from(index / self.per).unwrap_or(usize::MAX);
        if b == self.min_emitted.len() {
            self.min_emitted.push(emitted_at);
        } else if let Some(m) = self.min_emitted.get_mut(b) {
            *m = (*m).min(emitted_at);
        }
    }
}

/// Which records up to the segment's end have `emitted_at` at or after the
/// checkpoint's `before` (the "pending" ones, which the state leaves out):
/// their positions, not copies. They are in the log already, and a reader
/// reads them from there (see `crate::read::pending`); they are never
/// pruned while the checkpoint is valid, since it folds every record from
/// its `Meta::from`.
///
/// Under steady load nearly every record of the last hour is pending, so
/// beyond [`MAX_LISTED`] positions the list gives way to a range: every
/// record from `rest_from` to the segment's end whose `emitted_at` is at or
/// after `before` is pending too. The list keeps the earlier ones (a record
/// emitted far in the future stays pending from checkpoint to checkpoint
/// without making every later one read the log from it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Ascending, all before `rest_from` (when set).
    pub listed: Vec<u64>,
    pub rest_from: Option<u64>,
}

/// Positions a [`Pending`] lists at most (8 bytes each, in memory and in
/// the file). Tests use a tiny list, so that their pending records often
/// take the range form.
#[cfg(not(test))]
pub const MAX_LISTED: usize = 64 * 1024;
#[cfg(test)]
pub const MAX_LISTED: usize = 2;

// === impl Pending ===

impl Pending {
    /// Adds the position of a pending record; positions come in ascending
    /// order. Past [`MAX_LISTED`], the later half of the list becomes the
    /// range, which then covers every later position.
    pub fn add(&mut self, position: u64) {
        if self.rest_from.is_some() {
            return;
        }
        self.listed.push(position);
        if self.listed.len() > MAX_LISTED {
            let keep = self.listed.len() / 2;
            self.rest_from = Some(self.listed[keep]);
            self.listed.truncate(keep);
            self.listed.shrink_to_fit();
        }
    }

    /// Whether no record is pending.
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty() && self.rest_from.is_none()
    }
}
