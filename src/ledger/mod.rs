//! The append-only JSONL ledger: a directory with `entries.jsonl` and
//! `batches.jsonl`, each written by one [`Journal`] with group commit, crash
//! recovery and a dedupe index derived from the file itself.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

mod dedupe;
mod journal;
mod recover;

pub use journal::{Job, Journal, JournalError};
pub use recover::{batch_key, entry_key};

/// File of lifecycle entries, byte-compatible with the Go package's file backend.
pub const ENTRIES_FILE: &str = "entries.jsonl";
/// File of metric batches, one Go `json.Marshal` of a MetricBatch per line.
pub const BATCHES_FILE: &str = "batches.jsonl";
/// Held with an exclusive lock while a meterd owns the directory.
const LOCK_FILE: &str = ".lock";

/// When writes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// Synced before the ack; concurrent writers share one sync (group commit).
    Always,
    /// Acked once written; synced every `fsync_interval`.
    Interval,
    /// Acked once written; synced only at shutdown.
    Never,
}

impl std::fmt::Display for Fsync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fsync::Always => "always",
            Fsync::Interval => "interval",
            Fsync::Never => "never",
        })
    }
}

impl FromStr for Fsync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Fsync::Always),
            "interval" => Ok(Fsync::Interval),
            "never" => Ok(Fsync::Never),
            _ => Err(format!(
                "unknown fsync policy {s:?} (expected always, interval or never)"
            )),
        }
    }
}

/// How a ledger is opened.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    pub dir: PathBuf,
    pub fsync: Fsync,
    pub fsync_interval: Duration,
    /// Keys whose record time is within this window of now are remembered.
    pub dedupe_window: Duration,
}

/// The two journals of a ledger directory. Holds the directory lock.
pub struct Ledger {
    pub entries: Journal,
    pub batches: Journal,
    _lock: File,
}

impl Ledger {
    /// Creates the directory (mode 0700) if needed, takes its lock, repairs a
    /// torn last line in each file and rebuilds the dedupe index. Blocking.
    pub fn open(config: &LedgerConfig) -> io::Result<Ledger> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.dir)
            .map_err(|e| annotate(e, "create ledger directory", &config.dir))?;
        let lock_path = config.dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| annotate(e, "open", &lock_path))?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "ledger {} is in use by another meterd",
                    config.dir.display()
                ),
            ),
            std::fs::TryLockError::Error(e) => annotate(e, "lock", &lock_path),
        })?;
        // The two files are repaired and scanned at the same time: on a
        // large ledger the scan is most of the start-up time.
        let (entries, batches) = std::thread::scope(|s| {
            let entries = s.spawn(|| Journal::open(config, ENTRIES_FILE, entry_key));
            let batches = Journal::open(config, BATCHES_FILE, batch_key);
            (entries.join(), batches)
        });
        let entries =
            entries.map_err(|_| io::Error::other("scanning entries.jsonl panicked"))??;
        let batches = batches?;
        Ok(Ledger {
            entries,
            batches,
            _lock: lock,
        })
    }
}

/// Replaces `path` with `data` so that a crash leaves either the old or the
/// new content: write a temporary file, sync it, rename it over, sync the
/// directory.
pub fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| annotate(e, "create", &tmp))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).map_err(|e| annotate(e, "rename", path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}
