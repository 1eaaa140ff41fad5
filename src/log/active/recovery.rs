//! Recovering the active file's records at open: by the snapshot of a
//! clean shutdown when it matches, else by a walk of its record file, with
//! what a crash left unacknowledged at its end cut.

use std::fs::File;
use std::io;

use sha2::{Digest as _, Sha256};

use super::key_snapshot::load_snapshot;
use crate::log::index::{self, Walked};
use crate::log::names::Names;
use crate::log::segment::{cut, mtime_nanos};
use crate::log::times::{Check, Commit, Times};
use crate::log::walk::Span;
use crate::log::{Fsync, LogConfig};

/// What the records of the active file turned out to be.
pub(super) struct Recovered {
    pub(super) first: u64,
    pub(super) commits: Vec<Commit>,
    pub(super) checks: Vec<Check>,
    pub(super) count: u64,
    pub(super) len: u64,
    pub(super) keyed: Vec<(u64, u64)>,
    pub(super) hash: Option<Sha256>,
    /// The record file must be written anew (format 1, a torn tail, lost).
    pub(super) rewrite: bool,
    /// Damaged records (indexes), or records found away from their place:
    /// the file is sealed as it is.
    pub(super) damaged: Vec<u64>,
    pub(super) shifted_or_lost: bool,
}

/// Reads the active file's records by its record file: the snapshot of a
/// clean shutdown when it matches, else a walk of every record.
pub(super) fn recover(
    names: &Names,
    config: &LogConfig,
    data: &File,
    recorded: Option<Times>,
    times_file_len: u64,
    expected_first: u64,
    now: i64,
) -> io::Result<Recovered> {
    let meta = data.metadata()?;
    let first = recorded
        .as_ref()
        .map(|t| t.first)
        .filter(|&f| f > 0)
        .unwrap_or(expected_first);
    let mut r = Recovered {
        first,
        commits: Vec::new(),
        checks: Vec::new(),
        count: 0,
        len: 0,
        keyed: Vec::new(),
        hash: Some(Sha256::new()),
        rewrite: false,
        damaged: Vec::new(),
        shifted_or_lost: false,
    };
    if !meta.is_file() {
        // Not a regular file (a device, in failure tests): not inspected.
        r.rewrite = recorded.is_none_or(|t| t.count() > 0);
        return Ok(r);
    }
    let len = meta.len();
    let Some(t) = recorded else {
        return scan_unrecorded(names, config, data, len, now, r);
    };
    let unsynced = unsynced_groups(&t, len, config.fsync);
    let whole =
        unsynced == 0 && t.valid_len == times_file_len && t.lost_groups == 0 && t.fully_checked();
    r.rewrite = !whole || t.first == 0;
    r.shifted_or_lost = t.lost_groups > 0;
    if whole {
        if let Some(keyed) = load_snapshot(names, data, &t, len) {
            r.count = t.count();
            r.len = t.commits.last().map_or(0, |c| c.end_offset);
            (r.commits, r.checks, r.keyed) = (t.commits, t.checks, keyed);
            r.hash = None;
            return Ok(r);
        }
    }
    let mut t = t;
    let mut walked = None;
    if unsynced > 0 {
        walked = drop_unsynced(names, config, data, &mut t, unsynced, first, len)?;
    }
    let mut walked = match walked {
        Some(w) => w,
        None => walk(data, config, &t)?,
    };
    // Past the last recorded group: written, never acknowledged.
    cut(names, data, walked.end, len)?;
    r.count = walked.count;
    r.len = walked.end.min(len);
    r.hash = walked.hasher.take();
    // Records found away from their place, or a file shorter than its
    // records (a last record that lost only its newline): sealed as is,
    // where the walk finds them, never appended to.
    r.shifted_or_lost |= walked.shifted || walked.end > len;
    r.commits = t.commits;
    (r.checks, r.keyed, r.damaged) = (walked.checks, walked.keyed, walked.damaged);
    Ok(r)
}

/// The active file without a record file (deleted by hand): every whole
/// line that is a record counts, received at the file's last modification.
fn scan_unrecorded(
    names: &Names,
    config: &LogConfig,
    data: &File,
    len: u64,
    now: i64,
    mut r: Recovered,
) -> io::Result<Recovered> {
    let scanned = index::scan(data, len, config.key_of, true, &[])?;
    cut(names, data, scanned.end, len)?;
    if scanned.count > 0 {
        r.commits.push(Commit {
            end_count: scanned.count,
            end_offset: scanned.end,
            received: mtime_nanos(data).unwrap_or(now).min(now),
        });
    }
    r.checks = scanned.checks;
    (r.count, r.len, r.keyed) = (scanned.count, scanned.end, scanned.keyed);
    r.hash = None;
    r.rewrite = true;
    Ok(r)
}

/// Walks the records of `data` by the record file `t`.
fn walk(data: &File, config: &LogConfig, t: &Times) -> io::Result<Walked> {
    index::walk_records(
        data,
        Span {
            commits: &t.commits,
            start: (0, 0),
            checks: &t.checks,
            // A record file of format 1 has no checks: its lines are
            // what an earlier meterd acknowledged.
            trust_unchecked: t.checks.is_empty(),
        },
        config.key_of,
        config.trusted_key_of,
    )
}

/// The last `unsynced` groups of `t` (see [`unsynced_groups`]) dropped from
/// it, and the walk of the groups before them, when that is what a crash
/// left; `None`, and `t` as it was, when it is damage.
fn drop_unsynced(
    names: &Names,
    config: &LogConfig,
    data: &File,
    t: &mut Times,
    unsynced: usize,
    first: u64,
    len: u64,
) -> io::Result<Option<Walked>> {
    // Their record reached the disk, their data did not: the two files
    // are synced together, and a crash came before the sync ended (with
    // `always`, before the reply), if everything before them is whole
    // and in its place and what is there of them a torn prefix (else
    // this is damage, and is reported as such).
    let keep = t.commits.len() - unsynced;
    let kept_count = keep.checked_sub(1).map_or(0, |i| t.commits[i].end_count);
    let kept = Times {
        commits: t.commits[..keep].to_vec(),
        checks: t.checks[..(kept_count as usize).min(t.checks.len())].to_vec(),
        ..Times::default()
    };
    let w = walk(data, config, &kept)?;
    let torn = is_torn_tail(data, &t.checks[kept.checks.len()..], w.end, len)?;
    if w.damaged.is_empty() && !w.shifted && w.end <= len && torn {
        tracing::warn!(
            stream = names.stream,
            file = %names.active_data().display(),
            positions = %format!("{}..={}", first + kept_count, first + t.count() - 1),
            "the record file names records whose data never reached the disk (a crash before their sync; with --fsync always they were never acknowledged); they are cut"
        );
        (t.commits, t.checks) = (kept.commits, kept.checks);
        return Ok(Some(w));
    }
    Ok(None)
}

/// Whether `[from, len)` of `data` is what a crash leaves of the records
/// of `checks` written from `from`: each record that fits whole is intact,
/// the one after it may be torn. Bytes deleted or changed in the middle are
/// damage, not a crash. Blocking.
fn is_torn_tail(data: &File, checks: &[Check], from: u64, len: u64) -> io::Result<bool> {
    let mut at = from;
    for c in checks {
        let end = at + u64::from(c.len);
        if end > len {
            return Ok(true);
        }
        let mut bytes = vec![0u8; c.len as usize];
        std::os::unix::fs::FileExt::read_exact_at(data, &mut bytes, at)?;
        if !c.matches(&bytes) {
            return Ok(false);
        }
        at = end;
    }
    Ok(true)
}

/// How many groups at the end of the record file describe data that the
/// data file does not hold, when that is what a crash leaves. The writer syncs the data and the record file of a group at the
/// same time and acknowledges after both, so with `fsync always` only the
/// last group can be unsynced: more missing is damage (and is reported).
fn unsynced_groups(t: &Times, len: u64, fsync: Fsync) -> usize {
    if t.lost_groups > 0 {
        return 0;
    }
    let beyond = t
        .commits
        .iter()
        .rev()
        .take_while(|c| c.end_offset > len)
        .count();
    match beyond {
        1 => 1,
        n if fsync != Fsync::Always => n,
        _ => 0,
    }
}
