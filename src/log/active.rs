//! The active file at open: read to its last valid line, a damaged tail
//! cut (and kept aside), the receive times kept where they agree with the
//! lines, and the in-memory key index rebuilt.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt;

use super::index::{self, ActiveKeys};
use super::keys::{self, KeyIndex, Summary};
use super::names::Names;
use super::open::Active;
use super::segment::write_times;
use super::times::{self, Commit};
use super::{annotate, sync_dir, LogConfig};

/// Recovers the active file: cuts a damaged tail (the first line that is
/// not a record, and everything after it), keeps the receive times that
/// agree with the lines, and rebuilds the in-memory key index.
pub(super) fn open_active(
    names: &Names,
    config: &LogConfig,
    expected_first: u64,
    has_sealed: bool,
    now: i64,
) -> io::Result<Active> {
    let data_path = names.active_data();
    let times_path = names.active_times();
    let created = std::fs::symlink_metadata(&data_path).is_err();
    let data = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(&data_path)
        .map_err(|e| annotate(e, "open", &data_path))?;
    let recorded = match times::read(&times_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(annotate(e, "read", &times_path)),
    };
    let (first, mut commits, rewrite) = match recorded {
        Some(t) if t.first == expected_first || (!has_sealed && t.first > expected_first) => {
            let rewrite =
                t.valid_len != std::fs::metadata(&times_path).map(|m| m.len()).unwrap_or(0);
            (t.first, t.commits, rewrite)
        }
        Some(t) => {
            tracing::warn!(
                stream = names.stream,
                recorded = t.first,
                expected = expected_first,
                "the active file's first position disagrees with the segments; using the segments'"
            );
            (expected_first, Vec::new(), true)
        }
        None => (expected_first, Vec::new(), true),
    };
    let meta = data.metadata()?;
    let mut rewrite = rewrite;
    let snapshot = if meta.is_file() && !rewrite {
        load_snapshot(names, &data, first, meta.len(), &commits)
    } else {
        None
    };
    // The snapshot describes exactly this file; it is never used twice.
    let _ = std::fs::remove_file(names.active_keys());
    // A file that is not regular (a device, in failure tests) is not inspected.
    let (count, len, keyed) = if let Some(keyed) = snapshot {
        let last = commits.last().copied().unwrap_or(Commit {
            end_count: 0,
            end_offset: 0,
            received: 0,
        });
        (last.end_count, last.end_offset, keyed)
    } else if meta.is_file() {
        let len = meta.len();
        // Lines under a commit record were written and synced by the log
        // itself: their keys are read the fast way. The commits are checked
        // against the lines as the scan goes; if they disagree, every line
        // is read again the careful way.
        let claimed = commits.last().map_or(0, |c| c.end_offset);
        let trusted = config.trusted_key_of.map(|f| (f, claimed));
        let mut scanned = index::scan_with(&data, len, config.key_of, trusted, true, &commits)?;
        if trusted.is_some() && scanned.valid_commits < commits.len() {
            scanned = index::scan(&data, len, config.key_of, true, &commits)?;
        }
        cut(names, &data, scanned.end, len)?;
        // Keep the commits that agree with the lines; the rest describe
        // data that did not survive.
        if scanned.valid_commits < commits.len() {
            commits.truncate(scanned.valid_commits);
            rewrite = true;
        }
        (scanned.count, scanned.end, scanned.keyed)
    } else {
        rewrite |= !commits.is_empty();
        commits.clear();
        (0, 0, Vec::new())
    };
    let last = commits.last().copied();
    if count > last.map_or(0, |c| c.end_count) {
        // Lines whose group's receive time did not survive: received at the
        // file's last modification, never earlier than the group before.
        let floor = last.map_or(i64::MIN, |c| c.received);
        let received = mtime_nanos(&data).unwrap_or(now).min(now).max(floor);
        commits.push(Commit {
            end_count: count,
            end_offset: len,
            received,
        });
        rewrite = true;
    }
    if rewrite {
        write_times(&times_path, first, &commits, now)?;
    }
    if created || rewrite {
        sync_dir(&names.dir)?;
    }
    let times = OpenOptions::new()
        .append(true)
        .open(&times_path)
        .map_err(|e| annotate(e, "open", &times_path))?;
    let times_len = times.metadata()?.len();
    let mut keys = ActiveKeys::with_capacity(keyed.len());
    for (hash, offset) in keyed {
        keys.insert_hashed(hash, offset, &data, len, config.key_of)?;
    }
    Ok(Active {
        first,
        data: std::sync::Arc::new(data),
        times: std::sync::Arc::new(times),
        count,
        len,
        times_len,
        commits,
        keys,
    })
}

/// The keys of the active file from the snapshot a clean shutdown wrote,
/// if it describes exactly this file (same first position, length and last
/// bytes) and the receive times cover all of it; `None` means: read the file.
fn load_snapshot(
    names: &Names,
    data: &File,
    first: u64,
    len: u64,
    commits: &[Commit],
) -> Option<Vec<(u64, u64)>> {
    let path = names.active_keys();
    let index = KeyIndex::open(&path).ok()?;
    let s = index.summary;
    let last = commits
        .last()
        .map_or((0, 0), |c| (c.end_count, c.end_offset));
    let matches = s.first == first
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
    keys::write(&names.active_keys(), &summary, &mut keys.entries(commits))?;
    sync_dir(&names.dir)
}

/// Cuts `data` back to `keep`, saving what is cut in `<stream>.damaged`.
pub(super) fn cut(names: &Names, data: &File, keep: u64, len: u64) -> io::Result<()> {
    if keep >= len {
        return Ok(());
    }
    let mut cut = vec![0u8; usize::try_from(len - keep).unwrap_or(0)];
    std::os::unix::fs::FileExt::read_exact_at(data, &mut cut, keep)?;
    let damaged = names.damaged();
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&damaged)
        .map_err(|e| annotate(e, "open", &damaged))?;
    out.write_all(&cut)?;
    out.sync_all()?;
    data.set_len(keep)?;
    data.sync_all()?;
    tracing::warn!(
        stream = names.stream,
        cut_bytes = len - keep,
        kept_in = %damaged.display(),
        "cut a damaged or incomplete tail left by a crash"
    );
    Ok(())
}

pub(super) fn mtime_nanos(f: &File) -> Option<i64> {
    let m = f.metadata().ok()?.modified().ok()?;
    let d = m.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_nanos()).ok()
}
