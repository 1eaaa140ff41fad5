//! The log: an append-only stream of JSONL records in segments, under both
//! the ledger and every forwarding spool. It knows lines and their keys, not
//! what the records mean, and imports nothing from the rest of meterd.
//!
//! A stream `S` (`entries`, `batches`) in a directory is:
//! - `S.jsonl`, the active file, whose lines are byte-identical to the Go
//!   encoding, and `S.times`, the receive time of each of its group commits;
//! - sealed segments `S.<first position>.jsonl` (20 digits, so `ls` shows
//!   log order) with their `.times` and a derived key index `.keys`.
//!
//! Every record has a position: per stream, from 1, +1 per record, never
//! reused, derived from the file names and line order. Its receive time
//! (when meterd made it durable) drives the dedupe window and retention.
//! One writer thread per stream owns the files ([`writer`]); readers read
//! the files by position ([`LogReader`]) and are woken by the writer.

use std::borrow::Cow;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

mod active;
mod active_keys;
mod bloom;
pub mod chain;
mod config;
pub mod disk;
#[doc(hidden)]
pub mod fuzz;
mod index;
mod keys;
mod lines;
mod names;
mod open;
mod publish;
mod read_side;
mod reader;
mod recover;
mod seal;
mod segment;
mod snapshot;
mod state;
mod syncer;
#[doc(hidden)]
pub mod testing;
mod times;
pub mod verify;
mod walk;
mod writer;

#[cfg(test)]
mod crash_model;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_crash;
#[cfg(test)]
mod tests_damage;
#[cfg(test)]
mod tests_lifecycle;

pub use config::{Fsync, LogConfig};
pub use keys::Summary;
pub use reader::{LogLine, LogReader, ReadError, SeekError};
pub use snapshot::Snapshot;
pub use times::Commit;
pub use walk::Damage;

use chain::Head;
use times::Check;

use names::Names;
use writer::{Msg, Writer};

/// A line that is not a valid record.
#[derive(Debug)]
pub struct Unreadable;

/// A line's dedupe key (`None` when the record has none), or `Err` when the
/// line is not a valid record. Supplied by whoever knows the records.
pub type KeyOf = for<'a> fn(&'a [u8]) -> Result<Option<Cow<'a, str>>, Unreadable>;

/// What the log needs of a record: its encoded line and its dedupe key.
pub trait LogRecord: Send + Sync + 'static {
    fn key(&self) -> Option<&str>;
    /// The line, with its trailing `\n`.
    fn line(&self) -> &[u8];
}

/// What became of one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Written at this position.
    Written(u64),
    /// Its key was received within the window; not written again.
    Duplicate,
}

/// A failed append: nothing in it counts as written, and its keys stay free
/// so that a retry is written.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct LogError(pub String);

/// Records to append: those of `records` at the indexes in `select`, in order.
pub struct Append<R> {
    pub records: Arc<[R]>,
    pub select: Vec<usize>,
    /// One outcome per selected record, once the group is durable.
    pub reply: oneshot::Sender<Result<Vec<Appended>, LogError>>,
}

/// What the writer publishes to readers.
pub(crate) struct Shared {
    names: Names,
    view: Mutex<Arc<View>>,
    /// The last durable position (0 while the stream is empty).
    end: watch::Sender<u64>,
    healthy: watch::Sender<bool>,
    /// (first retained position, first position of the active segment):
    /// changes on a seal or a deletion. Readers that keep something per
    /// segment (usage checkpoints) wait on it.
    segments: watch::Sender<(u64, u64)>,
    /// Keys of the active segment, held in memory.
    active_keys: AtomicU64,
    /// Bytes of filters and fences of sealed segments inside the window.
    filter_bytes: AtomicU64,
    /// The newest seal.
    head: Mutex<Option<Head>>,
    /// Sealed segments' commits and checks that readers hold now, by first
    /// position: forty followers of one segment share one copy (a
    /// segment of small groups has some 10 MB of them).
    sealed_spans: Mutex<std::collections::HashMap<u64, reader::SharedSpan>>,
}

/// What a stream holds in memory for dedupe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub active_keys: u64,
    pub filter_bytes: u64,
    pub sealed_segments: usize,
}

impl Shared {
    /// Nothing shown yet: the writer installs what it opened (`data`, the
    /// active file, stands in until then).
    fn new(names: Names, data: Arc<std::fs::File>) -> Shared {
        let (end, _) = watch::channel(0);
        let (healthy, _) = watch::channel(true);
        let (segments, _) = watch::channel((0, 0));
        Shared {
            names,
            view: Mutex::new(Arc::new(View {
                sealed: Vec::new(),
                active: Arc::new(ActiveMeta {
                    first: 1,
                    data,
                    commits: RwLock::new(Vec::new()),
                    checks: RwLock::new(Vec::new()),
                    bytes_before: 0,
                }),
            })),
            end,
            healthy,
            segments,
            active_keys: AtomicU64::new(0),
            filter_bytes: AtomicU64::new(0),
            head: Mutex::new(None),
            sealed_spans: Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn view(&self) -> Arc<View> {
        self.view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Returns whether health changed.
    fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.send_if_modified(|h| {
            let changed = *h != healthy;
            *h = healthy;
            changed
        })
    }
}

/// The segments as readers see them; replaced whole on a seal or deletion.
pub(crate) struct View {
    sealed: Vec<SegmentView>,
    active: Arc<ActiveMeta>,
}

pub(crate) struct SegmentView {
    summary: Summary,
    /// Bytes its records were written in, as recorded.
    written_len: u64,
    bytes_before: u64,
}

/// The active segment as readers see it.
pub(crate) struct ActiveMeta {
    first: u64,
    data: Arc<File>,
    /// Grows with every durable group; complete once the segment is sealed.
    commits: RwLock<Vec<Commit>>,
    /// The check of every record; grows before `commits` does.
    checks: RwLock<Vec<Check>>,
    bytes_before: u64,
}

/// Handle to one stream and its writer thread. Safe for concurrent use.
///
/// The queue is unbounded so that [`Log::append`] can enqueue without
/// waiting, which keeps the file in the order of the calls. Every queued
/// append has a caller waiting for its reply, and callers are bounded
/// upstream (concurrent calls, per-stream pipeline depth).
pub struct Log<R> {
    /// Never blocks a sender (unbounded): see the note above.
    tx: std::sync::mpsc::Sender<Msg<R>>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

// === impl Log ===

impl<R: LogRecord> Log<R> {
    /// Opens (creating) a stream: finishes an interrupted seal, checks the
    /// sealed segments' indexes, recovers the active file, and starts the
    /// writer thread. Blocking.
    pub fn open(config: LogConfig) -> io::Result<Log<R>> {
        config
            .check()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let started = std::time::Instant::now();
        let opened = open::open(&config)?;
        let names = Names::of(&config);
        let shared = Arc::new(Shared::new(names, opened.active.data.clone()));
        let writer = Writer::new(config.clone(), shared.clone(), opened);
        tracing::debug!(stream = config.stream, elapsed = ?started.elapsed(), "log opened");
        let (tx, rx) = std::sync::mpsc::channel();
        let tick = if config.fsync == Fsync::Interval {
            config.fsync_interval.min(Duration::from_secs(1))
        } else {
            Duration::from_secs(1)
        };
        let thread = std::thread::Builder::new()
            .name(format!("log-{}", config.stream))
            .spawn(move || writer.run(rx, tick))?;
        Ok(Log {
            tx,
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues records without waiting; appends are written in the order
    /// they are queued. The reply arrives once the group is durable.
    pub fn append(&self, job: Append<R>) -> Result<(), LogError> {
        self.tx
            .send(Msg::Append(job))
            .map_err(|_| LogError("log is closed".into()))
    }

    async fn ask(
        &self,
        msg: impl FnOnce(oneshot::Sender<Result<(), LogError>>) -> Msg<R>,
    ) -> Result<(), LogError> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(msg(reply))
            .map_err(|_| LogError("log is closed".into()))?;
        done.await
            .unwrap_or_else(|_| Err(LogError("log writer stopped".into())))
    }

    /// Seals the active file now (if it holds anything).
    pub async fn seal(&self) -> Result<(), LogError> {
        self.ask(Msg::Seal).await
    }

    /// Spools: every record up to `upto` is delivered; sealed segments that
    /// hold nothing else are deleted.
    pub async fn release(&self, upto: u64) -> Result<(), LogError> {
        self.ask(|r| Msg::Release(upto, r)).await
    }

    /// Syncs everything written so far and stops the writer thread.
    pub async fn close(&self) -> Result<(), LogError> {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Msg::Close(reply)).is_err() {
            return Ok(()); // already closed
        }
        let result = done
            .await
            .unwrap_or_else(|_| Err(LogError("log writer stopped".into())));
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        result
    }
}

/// Now, in unix nanoseconds.
pub(crate) fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

pub fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Replaces `path` with `data` so that a crash leaves either the old or the
/// new content: write a temporary file, sync it, rename it over, sync the
/// directory. Blocking.
pub fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = names::temporary(path);
    let mut f = std::fs::OpenOptions::new()
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
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| annotate(e, "sync directory", dir))?;
    }
    Ok(())
}
