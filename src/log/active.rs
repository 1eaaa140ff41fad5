//! The active file at open. Its records are walked by its record file
//! (`entries.times`), so what was acknowledged is known exactly: bytes past
//! the last recorded group were never acknowledged and are cut (kept aside
//! in `entries.damaged`); nothing below it is ever cut. A file whose
//! records were damaged is sealed as it is, so that the damage stays where
//! it is, reported to every reader, and new records go to a fresh file.

use std::fs::File;
use std::io;

use sha2::{Digest as _, Sha256};

use super::chain::Head;
use super::disk::Create;
use super::index::{self, ActiveKeys, SealedKeys};
use super::keys::{self, KeyIndex, Summary};
use super::names::{Names, DATA, KEYS, TIMES};
use super::segment::{cut, mtime_nanos, write_keys, write_times};
use super::state::{Active, Sealed};
use super::times::{self, Check, Commit, Times};
use super::walk::Span;
use super::{annotate, LogConfig};

/// What the records of the active file turned out to be.
struct Recovered {
    first: u64,
    commits: Vec<Commit>,
    checks: Vec<Check>,
    count: u64,
    len: u64,
    keyed: Vec<(u64, u64)>,
    hash: Option<Sha256>,
    /// The record file must be written anew (format 1, a torn tail, lost).
    rewrite: bool,
    /// Damaged records (indexes), or records found away from their place:
    /// the file is sealed as it is.
    damaged: Vec<u64>,
    shifted_or_lost: bool,
}

/// Recovers the active file (see the module doc). Returns it, and the
/// segment it was sealed into when it held damage (with the new head).
pub(super) fn open_active(
    names: &Names,
    config: &LogConfig,
    expected_first: u64,
    now: i64,
    head: Option<Head>,
) -> io::Result<(Active, Option<(Sealed, Head)>)> {
    let data_path = names.active_data();
    let times_path = names.active_times();
    let created = std::fs::symlink_metadata(&data_path).is_err();
    let data = names.create(&data_path, Create::Append)?;
    let recorded = match times::read(&times_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(annotate(e, "read", &times_path)),
    };
    let times_file_len = std::fs::metadata(&times_path).map_or(0, |m| m.len());
    if let Some(first) = recorded.as_ref().map(|t| t.first).filter(|&f| f > 0) {
        if first < expected_first {
            return Err(super::segment::refuse(format!(
                "the log's files overlap: {} starts at position {first}, but the segments (or seals) beside it hold positions up to {}; move the one that does not belong out of {}",
                data_path.display(),
                expected_first - 1,
                names.dir.display()
            )));
        }
    }
    let r = recover(
        names,
        config,
        &data,
        recorded,
        times_file_len,
        expected_first,
        now,
    )?;
    // The snapshot describes exactly the file it was taken of; never used twice.
    let _ = names.remove(&names.active_keys());
    if !r.damaged.is_empty() || r.shifted_or_lost {
        let (sealed, head) = seal_as_is(names, config, data, &r, head, now)?;
        let active = fresh(names, r.first + r.count, now)?;
        return Ok((active, Some((sealed, head))));
    }
    if r.rewrite {
        write_times(names, &times_path, r.first, &r.commits, &r.checks, now)?;
    }
    if created || r.rewrite {
        names.sync_dir()?;
    }
    let times = names.create(&times_path, Create::Append)?;
    let times_len = times.metadata()?.len();
    let mut keys = ActiveKeys::with_capacity(r.keyed.len());
    for &(hash, offset) in &r.keyed {
        keys.insert_hashed(hash, offset, &data, r.len, config.key_of)?;
    }
    Ok((
        Active {
            first: r.first,
            data: std::sync::Arc::new(data),
            times: std::sync::Arc::new(times),
            count: r.count,
            len: r.len,
            times_len,
            commits: r.commits,
            checks: r.checks,
            keys,
            hash: r.hash,
        },
        None,
    ))
}

/// Reads the active file's records by its record file: the snapshot of a
/// clean shutdown when it matches, else a walk of every record.
fn recover(
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
        // No record file (deleted by hand): every whole line that is a
        // record counts, received at the file's last modification.
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
        return Ok(r);
    };
    let walk = |t: &Times| {
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
        let w = walk(&kept)?;
        let torn = is_torn_tail(data, &t.checks[kept.checks.len()..], w.end, len)?;
        if w.damaged.is_empty() && !w.shifted && w.end <= len && torn {
            tracing::warn!(
                stream = names.stream,
                file = %names.active_data().display(),
                positions = %format!("{}..={}", first + kept_count, first + t.count() - 1),
                "the record file names records whose data never reached the disk (a crash before their sync; with --fsync always they were never acknowledged); they are cut"
            );
            (t.commits, t.checks) = (kept.commits, kept.checks);
            walked = Some(w);
        }
    }
    let mut walked = match walked {
        Some(w) => w,
        None => walk(&t)?,
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
fn unsynced_groups(t: &Times, len: u64, fsync: super::Fsync) -> usize {
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
        n if fsync != super::Fsync::Always => n,
        _ => 0,
    }
}

/// Seals a damaged active file as it is (see the module doc).
fn seal_as_is(
    names: &Names,
    config: &LogConfig,
    data: File,
    r: &Recovered,
    head: Option<Head>,
    now: i64,
) -> io::Result<(Sealed, Head)> {
    let first = r.first;
    let len = data.metadata()?.len();
    let first_damaged = r.damaged.first().map(|i| first + i);
    tracing::warn!(
        stream = names.stream,
        file = %names.active_data().display(),
        damaged = r.damaged.len(),
        first_damaged,
        "the active file holds damaged records; sealed it as it is, so that readers get DATA_LOSS for them and new records go to a new file"
    );
    crate::metrics::metrics()
        .damaged_records
        .get_or_create(&crate::metrics::FileLabels {
            file: super::names::label(names.stream),
        })
        .inc_by(r.damaged.len() as u64);
    let summary = write_keys(names, &data, first, r.count, len, &r.commits, &r.keyed)?;
    let sha = super::chain::sha256_of(&data, len)?;
    let new_head = super::chain::write_seal(names, first, r.count, len, sha, head, now)?;
    names.sync_dir()?;
    names.rename(&names.active_times(), &names.sealed(first, TIMES))?;
    names.rename(&names.active_data(), &names.sealed(first, DATA))?;
    names.sync_dir()?;
    let cutoff = now.saturating_sub(super::state::window_nanos(config));
    let keys = if summary.received_max >= cutoff {
        let index = KeyIndex::open(&names.sealed(first, KEYS))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.0))?;
        Some(SealedKeys {
            index,
            data: File::open(names.sealed(first, DATA))?,
        })
    } else {
        None
    };
    let sealed = Sealed {
        summary,
        written_len: r.commits.last().map_or(0, |c| c.end_offset),
        bytes_before: 0,
        keys,
    };
    Ok((sealed, new_head))
}

/// A new, empty active file starting at `first`.
fn fresh(names: &Names, first: u64, now: i64) -> io::Result<Active> {
    let times_path = names.active_times();
    write_times(names, &times_path, first, &[], &[], now)?;
    let data = names.create(&names.active_data(), Create::Append)?;
    names.sync_dir()?;
    let times = names.create(&times_path, Create::Append)?;
    Ok(Active {
        first,
        data: std::sync::Arc::new(data),
        times: std::sync::Arc::new(times),
        count: 0,
        len: 0,
        times_len: times::HEADER as u64,
        commits: Vec::new(),
        checks: Vec::new(),
        keys: ActiveKeys::default(),
        hash: Some(Sha256::new()),
    })
}

/// The keys of the active file from the snapshot a clean shutdown wrote,
/// if it describes exactly this file (same first position, length and last
/// bytes) and the record file covers all of it; `None` means: read the file.
fn load_snapshot(names: &Names, data: &File, t: &Times, len: u64) -> Option<Vec<(u64, u64)>> {
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
pub(super) fn save_snapshot(
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
