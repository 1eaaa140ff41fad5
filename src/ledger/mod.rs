//! The ledger: a directory holding two logs, `entries` and `batches` (see
//! [`crate::log`]), whose active files `entries.jsonl` and `batches.jsonl`
//! are byte-compatible with the Go package's file backend. This module
//! knows what the lines are: it tells the log where a line's dedupe key is.

use std::borrow::Cow;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use crate::log::{annotate, write_atomically, Fsync};
use crate::log::{KeyOf, Log, LogConfig, LogRecord, Unreadable};
use crate::wire::{content_key, Record};

/// Active file of lifecycle entries, byte-compatible with the Go package's file backend.
pub const ENTRIES_FILE: &str = "entries.jsonl";
/// Active file of metric batches, one Go `json.Marshal` of a MetricBatch per line.
pub const BATCHES_FILE: &str = "batches.jsonl";
/// Held with an exclusive lock while a meterd owns the directory.
const LOCK_FILE: &str = ".lock";

/// How a ledger (or a spool) is opened.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    pub dir: PathBuf,
    pub fsync: Fsync,
    pub fsync_interval: Duration,
    /// Keys received within this window are remembered.
    pub dedupe_window: Duration,
    /// The active files are sealed into segments at this size...
    pub segment_max_bytes: u64,
    /// ...or at this age of their oldest record.
    pub segment_max_age: Duration,
    /// Sealed segments older than this are deleted (never inside the window).
    pub retention: Option<Duration>,
    /// Oldest sealed segments are deleted while a stream is larger.
    pub retention_bytes: Option<u64>,
    /// Seals outlive their segments (false for a spool: see `LogConfig`).
    pub keep_seals: bool,
}

impl LedgerConfig {
    /// A ledger in `dir` with the defaults of `meterd serve`.
    pub fn new(dir: impl Into<PathBuf>) -> LedgerConfig {
        LedgerConfig {
            dir: dir.into(),
            fsync: Fsync::Always,
            fsync_interval: Duration::from_secs(1),
            dedupe_window: Duration::from_secs(7 * 24 * 3600),
            segment_max_bytes: 64 << 20,
            segment_max_age: Duration::from_secs(24 * 3600),
            retention: None,
            retention_bytes: None,
            keep_seals: true,
        }
    }

    /// The configuration of one stream's log.
    pub fn stream(&self, stream: &'static str, key_of: KeyOf) -> LogConfig {
        let trusted_key_of: Option<KeyOf> = match stream {
            "entries" => Some(entry_key_fast),
            "batches" => Some(batch_key_fast),
            _ => None,
        };
        LogConfig {
            dir: self.dir.clone(),
            stream,
            fsync: self.fsync,
            fsync_interval: self.fsync_interval,
            dedupe_window: self.dedupe_window,
            segment_max_bytes: self.segment_max_bytes,
            segment_max_age: self.segment_max_age,
            retention: self.retention,
            retention_bytes: self.retention_bytes,
            key_of,
            trusted_key_of,
            keep_seals: self.keep_seals,
            disk: Default::default(),
        }
    }

    /// Refuses settings that cannot work (a retention shorter than the window).
    pub fn check(&self) -> Result<(), String> {
        self.stream("entries", entry_key).check()
    }
}

/// The two logs of a ledger directory. Holds the directory lock.
pub struct Ledger {
    pub entries: Log<Record>,
    pub batches: Log<Record>,
    _lock: File,
}

impl Ledger {
    /// Creates the directory (mode 0700) if needed, takes its lock and opens
    /// both logs (recovering them after a crash). Blocking.
    pub fn open(config: &LedgerConfig) -> io::Result<Ledger> {
        config
            .check()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
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
        // Both streams are opened at once: after a crash or on the first
        // start over an older ledger, their scans are most of the start-up.
        let (entries, batches) = std::thread::scope(|s| {
            let entries = s.spawn(|| Log::open(config.stream("entries", entry_key)));
            let batches = Log::open(config.stream("batches", batch_key));
            (entries.join(), batches)
        });
        let entries = entries.map_err(|_| io::Error::other("opening entries panicked"))??;
        Ok(Ledger {
            entries,
            batches: batches?,
            _lock: lock,
        })
    }
}

#[derive(Deserialize)]
struct EntryKey<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[allow(dead_code)]
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[allow(dead_code)]
    #[serde(borrow)]
    emitted_at: Cow<'a, str>,
}

#[derive(Deserialize)]
struct BatchKey<'a> {
    #[serde(borrow)]
    uuid: Cow<'a, str>,
    #[allow(dead_code)]
    #[serde(borrow)]
    created: Cow<'a, str>,
}

/// The key of an entry line: its `id`, or for an entry without one its
/// [`content_key`] (as the edge gave it); `Err` when the line is not an
/// entry.
pub fn entry_key(line: &[u8]) -> Result<Option<Cow<'_, str>>, Unreadable> {
    let k: EntryKey = serde_json::from_slice(line).map_err(|_| Unreadable)?;
    Ok(Some(
        k.id.filter(|id| !id.is_empty())
            .unwrap_or_else(|| Cow::Owned(content_key(line).into())),
    ))
}

/// The `uuid` of a batch line; `Err` when the line is not a batch.
pub fn batch_key(line: &[u8]) -> Result<Option<Cow<'_, str>>, Unreadable> {
    let k: BatchKey = serde_json::from_slice(line).map_err(|_| Unreadable)?;
    Ok(Some(k.uuid))
}

/// The `id` of an entry line meterd wrote itself: the last `,"id":"` of the
/// line is the entry's (a `"` inside a string value is always escaped, and
/// `shape` has no `id`). Falls back to [`entry_key`] for an id with escapes.
fn entry_key_fast(line: &[u8]) -> Result<Option<Cow<'_, str>>, Unreadable> {
    const ID: &[u8] = b",\"id\":\"";
    let Some(at) = memchr::memmem::rfind(line, ID) else {
        return Ok(Some(Cow::Owned(content_key(line).into())));
    };
    let rest = &line[at + ID.len()..];
    match memchr::memchr2(b'"', b'\\', rest) {
        Some(end) if rest[end] == b'"' && end > 0 => std::str::from_utf8(&rest[..end])
            .map(|id| Some(Cow::Borrowed(id)))
            .map_err(|_| Unreadable),
        _ => entry_key(line),
    }
}

/// The `uuid` of a batch line meterd wrote itself: its first field.
fn batch_key_fast(line: &[u8]) -> Result<Option<Cow<'_, str>>, Unreadable> {
    const UUID: &[u8] = b"{\"uuid\":\"";
    let Some(rest) = line.strip_prefix(UUID) else {
        return batch_key(line);
    };
    match memchr::memchr2(b'"', b'\\', rest) {
        Some(end) if rest[end] == b'"' => std::str::from_utf8(&rest[..end])
            .map(|id| Some(Cow::Borrowed(id)))
            .map_err(|_| Unreadable),
        _ => batch_key(line),
    }
}

/// How a log of the ledger sees a record: its dedupe key and its line.
/// Here rather than beside `Record`, so that the record type imports
/// nothing of the layers that store it.
impl LogRecord for Record {
    fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    fn line(&self) -> &[u8] {
        &self.line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_keys_agree_with_the_careful_ones() {
        let lines: [&[u8]; 6] = [
            br#"{"kind":"vm.compute.start","vm_id":"v","shape":{},"emitted_at":"2026-01-01T00:00:00Z","id":"k-1"}"#,
            br#"{"kind":"vm.compute.start","vm_id":"v","shape":{},"emitted_at":"2026-01-01T00:00:00Z"}"#,
            br#"{"kind":"vm.compute.start","hypervisor":"x\",\"id\":\"fake","shape":{},"emitted_at":"2026-01-01T00:00:00Z","id":"real"}"#,
            br#"{"kind":"vm.compute.start","shape":{},"emitted_at":"2026-01-01T00:00:00Z","id":"a\u003cb"}"#,
            br#"{"kind":"vm.compute.start","shape":{},"emitted_at":"2026-01-01T00:00:00Z","id":""}"#,
            br#"{"kind":"vm.compute.start","hypervisor":"x\",\"id\":\"fake","shape":{},"emitted_at":"2026-01-01T00:00:00Z"}"#,
        ];
        for line in lines {
            assert_eq!(
                entry_key_fast(line).ok(),
                entry_key(line).ok(),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        let b: &[u8] = br#"{"uuid":"u-1","env-uuid":"m","created":"2026-01-01T00:00:00Z"}"#;
        assert_eq!(batch_key_fast(b).ok(), batch_key(b).ok());
        let b: &[u8] = br#"{"uuid":"u\u003c1","env-uuid":"m","created":"2026-01-01T00:00:00Z"}"#;
        assert_eq!(batch_key_fast(b).ok(), batch_key(b).ok());
    }
}
