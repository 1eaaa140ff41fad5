//! Opening a stream's files: finishing or undoing what a crash interrupted,
//! sealing the single file of an older meterd, taking each sealed
//! segment's positions from what was recorded (refusing files that
//! overlap or name other positions), and recovering the active file.
//! Indexes are derived from the records and rebuilt when they disagree.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use super::active::open_active;
use super::chain::{self, Head, Seal};
use super::names::{Names, DATA, KEYS, SEAL, TIMES, USAGE};
use super::segment::{open_sealed, refuse, seal_legacy};
use super::state::{window_nanos, Opened, Sealed};
use super::times::{self};
use super::{annotate, now_nanos, LogConfig};

#[derive(Default)]
struct Found {
    data: bool,
    keys: bool,
    times: bool,
    seal: bool,
}

/// Opens (creating) one stream of a log directory. Blocking.
pub(crate) fn open(config: &LogConfig) -> io::Result<Opened> {
    let names = Names::of(config);
    let now = now_nanos();
    let mut found = scan(&names)?;
    let active_data = names.active_data();
    let active_times = names.active_times();
    let has_active_times = active_times.exists();
    let has_active_data = std::fs::symlink_metadata(&active_data).is_ok();

    if !has_active_times && has_active_data {
        finish_interrupted_seal(&names, &mut found, &active_data)?;
    }
    // A seal is written before its segment is renamed into place: one at or
    // past the active file's first position is of a seal that a crash cut
    // short, and describes nothing yet.
    let active_first = times::read(&active_times)
        .ok()
        .flatten()
        .map(|t| t.first)
        .filter(|&f| f > 0);
    if let Some(active_first) = active_first {
        drop_cut_short_seals(&names, &mut found, active_first);
    }
    let used_upto = used_upto(&names, &found, active_first);
    drop_orphans(&names, &mut found);
    seal_legacy_file(
        &names,
        config,
        now,
        &mut found,
        has_active_times,
        &active_data,
    )?;

    let seals = read_seals(&names, &found)?;
    let mut head = seals.values().next_back().map(|(_, h)| *h);
    let (mut sealed, mut bytes) = open_segments(&names, config, now, &found, &seals, &mut head)?;
    // Positions recorded as used: by the segments, and by the newest seal
    // (its segment may be gone).
    let expected_first = sealed
        .last()
        .map_or(1, |s| s.summary.first + s.summary.count)
        .max(head.map_or(1, |h| h.last + 1))
        .max(used_upto + 1);
    let (active, as_is) = open_active(&names, config, expected_first, now, head)?;
    if let Some(s) = as_is {
        head = Some(s.1);
        let mut s = s.0;
        s.bytes_before = bytes;
        bytes += s.summary.data_len;
        sealed.push(s);
    }
    if active.first < expected_first {
        let (last_first, last) = sealed.last().map_or((0, expected_first - 1), |s| {
            (s.summary.first, s.summary.first + s.summary.count - 1)
        });
        return Err(overlap(
            &names,
            last_first,
            last,
            &names.active_data(),
            active.first,
        ));
    }
    Ok(Opened {
        sealed,
        active,
        active_bytes_before: bytes,
        head,
    })
}

/// Lists the stream's sealed files by first position, deleting temporaries.
fn scan(names: &Names) -> io::Result<BTreeMap<u64, Found>> {
    let mut found: BTreeMap<u64, Found> = BTreeMap::new();
    for dirent in std::fs::read_dir(&names.dir).map_err(|e| annotate(e, "list", &names.dir))? {
        let dirent = dirent?;
        let name = dirent.file_name();
        let Some(name) = name.to_str() else { continue };
        if names.is_temporary(name) {
            // A write that never got renamed into place: never part of the log.
            let _ = names.remove(&dirent.path());
        } else if let Some((first, ext)) = names.parse_sealed(name) {
            let f = found.entry(first).or_default();
            match ext {
                DATA => f.data = true,
                KEYS => f.keys = true,
                TIMES => f.times = true,
                SEAL => f.seal = true,
                _ => {}
            }
        }
    }
    Ok(found)
}

/// Finishes a seal that a crash interrupted between its two renames.
fn finish_interrupted_seal(
    names: &Names,
    found: &mut BTreeMap<u64, Found>,
    active_data: &Path,
) -> io::Result<()> {
    // A seal renames the record file first, then the data: finish it.
    let interrupted = found
        .iter()
        .rfind(|(_, f)| f.data || f.times)
        .filter(|(_, f)| f.times && !f.data)
        .map(|(&first, _)| first);
    if let Some(first) = interrupted {
        let to = names.sealed(first, DATA);
        names.rename(active_data, &to)?;
        names.sync_dir()?;
        tracing::info!(
            stream = names.stream,
            first,
            "finished a segment seal interrupted by a crash"
        );
        if let Some(f) = found.get_mut(&first) {
            f.data = true;
        }
    }
    Ok(())
}

/// Deletes the seals, at or past the active file's first position, of a
/// seal that a crash cut short.
fn drop_cut_short_seals(names: &Names, found: &mut BTreeMap<u64, Found>, active_first: u64) {
    for (&first, f) in found.iter_mut() {
        if f.seal && !f.data && !f.times && first >= active_first {
            let _ = names.remove(&names.sealed(first, SEAL));
            f.seal = false;
        }
    }
}

/// The last position that files without data show was used.
fn used_upto(names: &Names, found: &BTreeMap<u64, Found>, active_first: Option<u64>) -> u64 {
    // Positions that files without data still show were used: a record
    // file's, a key index's, and a seal's name (its content may be damaged). No position
    // they cover is given out again.
    let mut used_upto = 0u64;
    for (&first, f) in found.iter().filter(|(_, f)| !f.data) {
        if active_first.is_some_and(|a| first >= a) {
            // Written by a seal that a crash cut short: nothing yet.
            continue;
        }
        if f.seal {
            used_upto = used_upto.max(first);
        }
        if f.keys {
            if let Ok(k) = super::keys::read_summary(&names.sealed(first, KEYS)) {
                if k.first == first && k.count > 0 {
                    used_upto = used_upto.max(first + k.count - 1);
                }
            }
        }
        if f.times {
            if let Ok(Some(t)) = times::read(&names.sealed(first, TIMES)) {
                if t.first == first {
                    used_upto = used_upto.max((first + t.count()).saturating_sub(1));
                }
            }
        }
    }
    used_upto
}

/// Deletes the derived files of segments whose data is gone.
fn drop_orphans(names: &Names, found: &mut BTreeMap<u64, Found>) {
    // Index, record and checkpoint files whose data is gone: a deletion or
    // an abandoned seal that a crash interrupted. They describe nothing.
    // Seals stay: retention keeps them, so that the chain stays whole.
    found.retain(|&first, f| {
        if !f.data {
            for ext in [KEYS, TIMES, USAGE] {
                let _ = names.remove(&names.sealed(first, ext));
            }
        }
        f.data || f.seal
    });
}

/// Seals the single file of an older meterd, when that is all there is.
fn seal_legacy_file(
    names: &Names,
    config: &LogConfig,
    now: i64,
    found: &mut BTreeMap<u64, Found>,
    has_active_times: bool,
    active_data: &Path,
) -> io::Result<()> {
    let has_active_data = std::fs::symlink_metadata(active_data).is_ok();
    if !has_active_times && found.is_empty() && has_active_data && is_nonempty_file(active_data) {
        if let Some(first) = seal_legacy(names, config, now)? {
            found.insert(
                first,
                Found {
                    data: true,
                    keys: true,
                    times: true,
                    seal: true,
                },
            );
        }
    }
    Ok(())
}

/// Opens the sealed segments in order, checking that they do not overlap;
/// returns them and the bytes they hold, and updates `head`.
fn open_segments(
    names: &Names,
    config: &LogConfig,
    now: i64,
    found: &BTreeMap<u64, Found>,
    seals: &BTreeMap<u64, (Option<Seal>, Head)>,
    head: &mut Option<Head>,
) -> io::Result<(Vec<Sealed>, u64)> {
    // The first start over segments sealed before seals existed: each gets
    // one, in order, so that the chain starts with the oldest retained.
    let backfill = seals.is_empty();

    let cutoff = now.saturating_sub(window_nanos(config));
    let mut sealed: Vec<Sealed> = Vec::with_capacity(found.len());
    let mut bytes = 0u64;
    for (&first, f) in found.iter().filter(|(_, f)| f.data) {
        let seal = seals.get(&first).and_then(|(s, _)| s.clone());
        let (mut s, new_head) = open_sealed(
            names,
            config,
            first,
            f.keys,
            seal,
            cutoff,
            backfill.then_some(*head),
        )?;
        if new_head.is_some() {
            *head = new_head;
        }
        if let Some(prev) = sealed.last() {
            let end = prev.summary.first + prev.summary.count;
            if end > first {
                return Err(overlap(
                    names,
                    prev.summary.first,
                    end - 1,
                    &names.sealed(first, DATA),
                    first,
                ));
            }
            if end < first {
                tracing::warn!(
                    stream = names.stream,
                    missing_from = end,
                    missing_to = first - 1,
                    "positions missing between two segments (deleted by hand?); readers get DATA_LOSS for them"
                );
            }
        }
        s.bytes_before = bytes;
        bytes += s.summary.data_len;
        sealed.push(s);
    }
    Ok((sealed, bytes))
}

fn overlap(
    names: &Names,
    prev_first: u64,
    prev_last: u64,
    next: &std::path::Path,
    next_first: u64,
) -> io::Error {
    refuse(format!(
        "the log's files overlap: {} holds positions {prev_first}..{prev_last}, but {} starts at position {next_first}; move the one that does not belong out of {}",
        names.sealed(prev_first, DATA).display(),
        next.display(),
        names.dir.display(),
    ))
}

/// Every seal of the stream, by first position, with its link (the hash of
/// its bytes, whether or not they parse). A seal that does not parse is
/// kept as evidence and reported by `meterd verify`.
fn read_seals(
    names: &Names,
    found: &BTreeMap<u64, Found>,
) -> io::Result<BTreeMap<u64, (Option<Seal>, Head)>> {
    let mut seals = BTreeMap::new();
    for (&first, _) in found.iter().filter(|(_, f)| f.seal) {
        let path = names.sealed(first, SEAL);
        let (seal, link) = chain::read(&path).map_err(|e| annotate(e, "read", &path))?;
        let seal = match seal {
            Ok(s) => Some(s),
            Err(why) => {
                tracing::warn!(stream = names.stream, seal = %path.display(), error = %why, "a seal file cannot be read; `meterd verify` reports it");
                None
            }
        };
        let last = seal.as_ref().map_or(0, |s| s.last);
        seals.insert(first, (seal, Head { last, hash: link }));
    }
    Ok(seals)
}

fn is_nonempty_file(path: &std::path::Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > 0)
}
