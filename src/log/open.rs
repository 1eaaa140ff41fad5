//! Opening a stream's files: finishing or undoing what a crash interrupted,
//! sealing the single file of an older meterd, checking the sealed segments
//! (rebuilding a key index that is missing or does not match its segment)
//! and recovering the active file. The data decides everything; indexes are
//! derived from it, and the receive times are trusted only where they agree
//! with it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt;

use super::index::{self, ActiveKeys, SealedKeys};
use super::keys::{self, KeyEntry, KeyIndex, Summary};
use super::names::{self, Names, DATA, KEYS, TIMES, USAGE};
use super::times::{self, Commit};
use super::{annotate, now_nanos, sync_dir, LogConfig};

/// A sealed segment as the writer keeps it.
pub(crate) struct Sealed {
    pub summary: Summary,
    /// Bytes of retained segments before this one since the log was opened.
    pub bytes_before: u64,
    /// Loaded while the segment is inside the dedupe window.
    pub keys: Option<SealedKeys>,
}

/// The active segment, recovered.
pub(crate) struct Active {
    pub first: u64,
    /// Shared with readers, who read it by offset.
    pub data: std::sync::Arc<File>,
    pub times: File,
    pub count: u64,
    pub len: u64,
    pub times_len: u64,
    pub commits: Vec<Commit>,
    pub keys: ActiveKeys,
}

pub(crate) struct Opened {
    pub sealed: Vec<Sealed>,
    pub active: Active,
    pub active_bytes_before: u64,
}

#[derive(Default)]
struct Found {
    data: bool,
    keys: bool,
    times: bool,
}

/// Opens (creating) one stream of a log directory. Blocking.
pub(crate) fn open(config: &LogConfig) -> io::Result<Opened> {
    let names = Names {
        dir: config.dir.clone(),
        stream: config.stream,
    };
    let now = now_nanos();
    let mut found: BTreeMap<u64, Found> = BTreeMap::new();
    for dirent in std::fs::read_dir(&names.dir).map_err(|e| annotate(e, "list", &names.dir))? {
        let dirent = dirent?;
        let name = dirent.file_name();
        let Some(name) = name.to_str() else { continue };
        if names.is_temporary(name) {
            // A write that never got renamed into place: never part of the log.
            let _ = std::fs::remove_file(dirent.path());
        } else if let Some((first, ext)) = names.parse_sealed(name) {
            let f = found.entry(first).or_default();
            match ext {
                DATA => f.data = true,
                KEYS => f.keys = true,
                TIMES => f.times = true,
                _ => {}
            }
        }
    }
    let active_data = names.active_data();
    let active_times = names.active_times();
    let has_active_times = active_times.exists();
    let has_active_data = std::fs::symlink_metadata(&active_data).is_ok();

    if !has_active_times && has_active_data {
        // A seal renames the times file first, then the data: finish it.
        let interrupted = found
            .iter()
            .next_back()
            .filter(|(_, f)| f.times && !f.data)
            .map(|(&first, _)| first);
        if let Some(first) = interrupted {
            let to = names.sealed(first, DATA);
            std::fs::rename(&active_data, &to).map_err(|e| annotate(e, "rename", &to))?;
            sync_dir(&names.dir)?;
            tracing::info!(
                stream = names.stream,
                first,
                "finished a segment seal interrupted by a crash"
            );
            if let Some(f) = found.get_mut(&first) {
                f.data = true;
            }
        }
    }
    // Index, times and checkpoint files whose data is gone: a deletion or
    // an abandoned seal that a crash interrupted. They describe nothing.
    found.retain(|&first, f| {
        if !f.data {
            for ext in [KEYS, TIMES, USAGE] {
                let _ = std::fs::remove_file(names.sealed(first, ext));
            }
        }
        f.data
    });
    let has_active_data = std::fs::symlink_metadata(&active_data).is_ok();
    if !has_active_times && found.is_empty() && has_active_data && is_nonempty_file(&active_data) {
        if let Some(first) = seal_legacy(&names, config, now)? {
            found.insert(
                first,
                Found {
                    data: true,
                    keys: true,
                    times: true,
                },
            );
        }
    }

    let cutoff = now.saturating_sub(window_nanos(config));
    let mut sealed: Vec<Sealed> = Vec::with_capacity(found.len());
    let mut bytes = 0u64;
    for (&first, f) in &found {
        let (summary, keys) = open_sealed(&names, config, first, f.keys, cutoff)?;
        if let Some(prev) = sealed.last() {
            let end = prev.summary.first + prev.summary.count;
            if end > first {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: segment {} ends at position {} but the next one starts at {first}: the log's files overlap",
                        names.dir.display(),
                        prev.summary.first,
                        end - 1
                    ),
                ));
            }
            if end < first {
                tracing::warn!(
                    stream = names.stream,
                    missing_from = end,
                    missing_to = first - 1,
                    "positions missing between two segments (deleted by hand?)"
                );
            }
        }
        sealed.push(Sealed {
            summary,
            bytes_before: bytes,
            keys,
        });
        bytes += summary.data_len;
    }
    let expected_first = sealed
        .last()
        .map_or(1, |s| s.summary.first + s.summary.count);
    let active = open_active(&names, config, expected_first, !sealed.is_empty(), now)?;
    Ok(Opened {
        sealed,
        active,
        active_bytes_before: bytes,
    })
}

fn is_nonempty_file(path: &std::path::Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > 0)
}

pub(crate) fn window_nanos(config: &LogConfig) -> i64 {
    i64::try_from(config.dedupe_window.as_nanos()).unwrap_or(i64::MAX)
}

/// The ledger of an earlier meterd: one file per stream, no receive times.
/// It becomes segment 1 as it is, its records received at the file's last
/// modification (so its ids stay remembered for a whole window from then).
/// `None` when it holds no record (it is then emptied and stays active).
fn seal_legacy(names: &Names, config: &LogConfig, now: i64) -> io::Result<Option<u64>> {
    let path = names.active_data();
    let data = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| annotate(e, "open", &path))?;
    let started = std::time::Instant::now();
    let len = data.metadata()?.len();
    let scanned = index::scan(&data, len, config.key_of, false, &[])?;
    // Cut a torn last line, and a tail of lines none of which is a record
    // (garbage that a power loss left, even if a newline follows it).
    let keep = trim_unreadable_tail(&data, scanned.end, config)?;
    let scanned = if keep < scanned.end {
        index::scan(&data, keep, config.key_of, false, &[])?
    } else {
        scanned
    };
    cut(names, &data, scanned.end, len)?;
    if scanned.count == 0 {
        return Ok(None);
    }
    let received = mtime_nanos(&data).unwrap_or(now).min(now);
    let first = 1;
    let commits = if scanned.count > 0 {
        vec![Commit {
            end_count: scanned.count,
            end_offset: scanned.end,
            received,
        }]
    } else {
        Vec::new()
    };
    write_times(&names.sealed(first, TIMES), first, &commits, now)?;
    write_keys(
        names,
        &data,
        first,
        scanned.count,
        scanned.end,
        &commits,
        &scanned.keyed,
    )?;
    let to = names.sealed(first, DATA);
    std::fs::rename(&path, &to).map_err(|e| annotate(e, "rename", &to))?;
    sync_dir(&names.dir)?;
    tracing::info!(
        stream = names.stream,
        records = scanned.count,
        unreadable = scanned.unreadable,
        elapsed = ?started.elapsed(),
        segment = %to.display(),
        "sealed the ledger file of an earlier meterd as the first segment; it is indexed once"
    );
    Ok(Some(first))
}

/// Where a tail of unreadable lines starts (the end when there is none).
fn trim_unreadable_tail(data: &File, end: u64, config: &LogConfig) -> io::Result<u64> {
    let mut lines = super::lines::Lines::new(data, 0, end);
    let mut keep = 0;
    while let Some((offset, line)) = lines.next_line()? {
        if (config.key_of)(line).is_ok() {
            keep = offset + line.len() as u64;
        }
    }
    Ok(keep)
}

/// Cuts `data` back to `keep`, saving what is cut in `<stream>.damaged`.
fn cut(names: &Names, data: &File, keep: u64, len: u64) -> io::Result<()> {
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

fn mtime_nanos(f: &File) -> Option<i64> {
    let m = f.metadata().ok()?.modified().ok()?;
    let d = m.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_nanos()).ok()
}

/// Writes a receive-time file through a synced temporary file.
pub(crate) fn write_times(
    path: &std::path::Path,
    first: u64,
    commits: &[Commit],
    now: i64,
) -> io::Result<()> {
    let mut bytes = Vec::with_capacity((commits.len() + 1) * times::RECORD);
    bytes.extend_from_slice(&times::header(first, now));
    for c in commits {
        bytes.extend_from_slice(&times::commit(c));
    }
    let tmp = names::temporary(path);
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| annotate(e, "create", &tmp))?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).map_err(|e| annotate(e, "rename", path))
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
    keys::write(&names.sealed(first, KEYS), &summary, &mut entries)?;
    Ok(summary)
}

/// Checks a sealed segment against its index, rebuilding the index when it
/// is missing, damaged or about other data; loads it when inside the window.
fn open_sealed(
    names: &Names,
    config: &LogConfig,
    first: u64,
    has_keys: bool,
    cutoff: i64,
) -> io::Result<(Summary, Option<SealedKeys>)> {
    let data_path = names.sealed(first, DATA);
    let data = File::open(&data_path).map_err(|e| annotate(e, "open", &data_path))?;
    let len = data.metadata()?.len();
    let keys_path = names.sealed(first, KEYS);
    let trusted = if has_keys {
        match keys::read_summary(&keys_path) {
            Ok(s)
                if s.first == first
                    && s.data_len == len
                    && s.tail_hash == keys::tail_hash(&data, len)? =>
            {
                Ok(s)
            }
            Ok(_) => Err("it describes other data".to_owned()),
            Err(e) => Err(e.0),
        }
    } else {
        Err("it is missing".to_owned())
    };
    let summary = match trusted {
        Ok(s) => s,
        Err(why) => rebuild(names, config, &data, first, len, &why)?,
    };
    if summary.received_max < cutoff {
        return Ok((summary, None));
    }
    let index = match KeyIndex::open(&keys_path) {
        Ok(i) => i,
        Err(e) => {
            rebuild(names, config, &data, first, len, &e.0)?;
            KeyIndex::open(&keys_path).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {}", keys_path.display(), e.0),
                )
            })?
        }
    };
    Ok((summary, Some(SealedKeys { index, data })))
}

/// Rebuilds a sealed segment's key index from its data and receive times.
pub(crate) fn rebuild(
    names: &Names,
    config: &LogConfig,
    data: &File,
    first: u64,
    len: u64,
    why: &str,
) -> io::Result<Summary> {
    let started = std::time::Instant::now();
    let times_path = names.sealed(first, TIMES);
    let recorded = times::read(&times_path).ok().flatten();
    let scanned = index::scan(
        data,
        len,
        config.key_of,
        false,
        recorded.as_ref().map_or(&[], |t| &t.commits),
    )?;
    let commits = match recorded {
        Some(t)
            if t.first == first
                && scanned.valid_commits == t.commits.len()
                && t.commits
                    .last()
                    .is_some_and(|c| c.end_offset == scanned.end) =>
        {
            t.commits
        }
        _ => {
            // The receive times are lost: the records count as received at
            // the segment's last modification, which keeps their keys in the
            // window at least as long as the truth would.
            let received = mtime_nanos(data).unwrap_or_else(now_nanos).min(now_nanos());
            tracing::warn!(stream = names.stream, first, "receive times of a segment are missing or damaged; using the file's modification time");
            let commits: Vec<Commit> = (scanned.count > 0)
                .then_some(Commit {
                    end_count: scanned.count,
                    end_offset: scanned.end,
                    received,
                })
                .into_iter()
                .collect();
            write_times(&times_path, first, &commits, now_nanos())?;
            commits
        }
    };
    let summary = write_keys(
        names,
        data,
        first,
        scanned.count,
        scanned.end,
        &commits,
        &scanned.keyed,
    )?;
    sync_dir(&names.dir)?;
    tracing::warn!(stream = names.stream, first, reason = why, elapsed = ?started.elapsed(), "rebuilt the key index of a segment from its data");
    Ok(summary)
}

/// Recovers the active file: cuts a damaged tail (the first line that is
/// not a record, and everything after it), keeps the receive times that
/// agree with the lines, and rebuilds the in-memory key index.
fn open_active(
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
    // A file that is not regular (a device, in failure tests) is not inspected.
    let (count, len, keyed) = if meta.is_file() {
        let len = meta.len();
        let scanned = index::scan(&data, len, config.key_of, true, &commits)?;
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
    let mut keys = ActiveKeys::default();
    for (hash, offset) in keyed {
        keys.insert_hashed(hash, offset, &data, len, config.key_of)?;
    }
    Ok(Active {
        first,
        data: std::sync::Arc::new(data),
        times,
        count,
        len,
        times_len,
        commits,
        keys,
    })
}
