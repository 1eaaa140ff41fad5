//! Opening a stream's files: finishing or undoing what a crash interrupted,
//! sealing the single file of an older meterd, checking the sealed segments
//! (rebuilding a key index that is missing or does not match its segment)
//! and recovering the active file. The data decides everything; indexes are
//! derived from it, and the receive times are trusted only where they agree
//! with it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;

use super::active::open_active;
use super::index::{ActiveKeys, SealedKeys};
use super::keys::Summary;
use super::names::{Names, DATA, KEYS, TIMES, USAGE};
use super::segment::{open_sealed, seal_legacy};
use super::times::Commit;
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
    /// Shared with the sync helper thread.
    pub times: std::sync::Arc<File>,
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
