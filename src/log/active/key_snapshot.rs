//! The key snapshot of a clean shutdown: the active file's keys, written at
//! the close and read at the next start instead of the file.

use std::fs::File;
use std::io;

use crate::log::index::ActiveKeys;
use crate::log::keys::{self, KeyIndex, Summary};
use crate::log::names::Names;
use crate::log::times::{Commit, Times};

/// The keys of the active file from the snapshot a clean shutdown wrote,
/// if it describes exactly this file (same first position, length and last
/// bytes) and the record file covers all of it; `None` means: read the file.
pub(super) fn load_snapshot(
    names: &Names,
    data: &File,
    t: &Times,
    len: u64,
) -> Option<Vec<(u64, u64)>> {
    let path = names.active_keys();
    let index = KeyIndex::open(&path).ok()?;
    let s = index.summary;
    let last = t
        .commits
        .last()
        .map_or((0, 0), |c| (c.end_count, c.end_offset));
    let matches = s.first == t.first
        && s.data_len == len
        && (s.count, s.data_len) == last
        && keys::tail_hash(data, len).ok()? == s.tail_hash;
    if !matches {
        return None;
    }
    let all = index.read_all().ok()?;
    Some(all.into_iter().map(|k| (k.hash, k.offset)).collect())
}

/// Writes the active file's key index at a clean shutdown (see
/// [`load_snapshot`]). Best effort: without it the next start reads the file.
pub(in crate::log) fn save_snapshot(
    names: &Names,
    data: &File,
    first: u64,
    count: u64,
    len: u64,
    commits: &[Commit],
    keys: &ActiveKeys,
) -> io::Result<()> {
    let summary = Summary {
        first,
        count,
        data_len: len,
        received_min: commits.first().map_or(0, |c| c.received),
        received_max: commits.last().map_or(0, |c| c.received),
        tail_hash: keys::tail_hash(data, len)?,
    };
    keys::write(
        names,
        &names.active_keys(),
        &summary,
        &mut keys.entries(commits),
    )?;
    names.sync_dir()
}
