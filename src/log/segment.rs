//! Sealed segments at open: an older meterd's single file sealed as the
//! first segment; each segment's positions taken from what was recorded
//! (its record file and its seal), never recounted from its lines; its key
//! index checked and rebuilt from the records when it is missing, damaged
//! or about other data. Also the writers of the `.times` and `.keys` files.

use std::fs::File;
use std::io;

use super::annotate;
use super::disk::Create;
use super::keys::{self, KeyEntry, Summary};
use super::names::{Names, KEYS};
use super::times::{self, Check, Commit, Times};

mod legacy;
mod open_sealed;
mod rebuild;

pub(super) use self::legacy::seal_legacy;
pub(super) use self::open_sealed::open_sealed;
pub(crate) use self::open_sealed::{recorded, Recorded};
pub(crate) use self::rebuild::reindex;

/// Writes a record file (format 2) through a synced temporary file.
pub(crate) fn write_times(
    names: &Names,
    path: &std::path::Path,
    first: u64,
    commits: &[Commit],
    checks: &[Check],
    now: i64,
) -> io::Result<()> {
    names.write_file(path, &times::encode(first, now, commits, checks))
}

/// Writes a sealed segment's key index from scanned `(hash, offset)` keys.
pub(crate) fn write_keys(
    names: &Names,
    data: &File,
    first: u64,
    count: u64,
    data_len: u64,
    commits: &[Commit],
    keyed: &[(u64, u64)],
) -> io::Result<Summary> {
    let summary = Summary {
        first,
        count,
        data_len,
        received_min: commits.first().map_or(0, |c| c.received),
        received_max: commits.last().map_or(0, |c| c.received),
        tail_hash: keys::tail_hash(data, data_len)?,
    };
    let mut entries: Vec<KeyEntry> = keyed
        .iter()
        .map(|&(hash, offset)| KeyEntry {
            hash,
            offset,
            received: times::received_at_offset(commits, offset).unwrap_or(summary.received_max),
        })
        .collect();
    keys::write(names, &names.sealed(first, KEYS), &summary, &mut entries)?;
    Ok(summary)
}

/// The commits and checks of a sealed segment of `count` records written in
/// `written_len` bytes: its record file's, cut to `count`, and where it
/// holds fewer (damaged, torn or missing) one more commit for the rest,
/// received at `received` (the newest receive time known), with unknown
/// checks.
pub(crate) fn sealed_layout(
    times: Option<Times>,
    count: u64,
    written_len: u64,
    received: i64,
) -> (Vec<Commit>, Vec<Check>) {
    let Times {
        mut commits,
        mut checks,
        ..
    } = times.unwrap_or_default();
    commits.retain(|c| c.end_count <= count && c.end_offset <= written_len);
    let have = commits.last().map_or(0, |c| c.end_count);
    if have < count {
        let received = commits
            .last()
            .map_or(received, |c| c.received.max(received));
        commits.push(Commit {
            end_count: count,
            end_offset: written_len.max(commits.last().map_or(0, |c| c.end_offset)),
            received,
        });
    }
    if !checks.is_empty() {
        checks.resize(usize::try_from(count).unwrap_or(0), Check::UNKNOWN);
    }
    (commits, checks)
}

pub(crate) fn refuse(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Cuts `data` back to `keep`, saving what is cut in `<stream>.damaged`.
pub(super) fn cut(names: &Names, data: &File, keep: u64, len: u64) -> io::Result<()> {
    if keep >= len {
        return Ok(());
    }
    let mut cut = vec![0u8; usize::try_from(len - keep).unwrap_or(0)];
    std::os::unix::fs::FileExt::read_exact_at(data, &mut cut, keep)?;
    let damaged = names.damaged();
    let out = names.create(&damaged, Create::Append)?;
    let path = names.active_data();
    let disk = &names.disk;
    disk.write(&out, &damaged, &cut)
        .and_then(|()| disk.sync(&out, &damaged))
        .map_err(|e| annotate(e, "write", &damaged))?;
    disk.set_len(data, &path, keep)
        .and_then(|()| disk.sync(data, &path))
        .map_err(|e| annotate(e, "cut", &path))?;
    tracing::warn!(
        stream = names.stream,
        cut_bytes = len - keep,
        kept_in = %damaged.display(),
        "cut bytes written after the last acknowledged record (a write a crash interrupted)"
    );
    Ok(())
}

pub(super) fn mtime_nanos(f: &File) -> Option<i64> {
    let m = f.metadata().ok()?.modified().ok()?;
    let d = m.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_nanos()).ok()
}
