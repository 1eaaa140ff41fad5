//! Sealed segments at open: an older meterd's single file sealed as the
//! first segment, each segment checked against its key index, and the index
//! rebuilt from the data and receive times when it is missing, damaged or
//! about other data. Also the writers of the `.times` and `.keys` files.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt;

use super::active::{cut, mtime_nanos};
use super::index::{self, SealedKeys};
use super::keys::{self, KeyEntry, KeyIndex, Summary};
use super::names::{self, Names, DATA, KEYS, TIMES};
use super::times::{self, Commit};
use super::{annotate, now_nanos, sync_dir, LogConfig};

/// The ledger of an earlier meterd: one file per stream, no receive times.
/// It becomes segment 1 as it is, its records received at the file's last
/// modification (so its ids stay remembered for a whole window from then).
/// `None` when it holds no record (it is then emptied and stays active).
pub(super) fn seal_legacy(names: &Names, config: &LogConfig, now: i64) -> io::Result<Option<u64>> {
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
pub(super) fn open_sealed(
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
