//! One append-only JSONL file and the thread that writes it.
//!
//! Callers serialize their records before they get here; a single writer
//! thread per file drains every pending job, appends them with one `write`,
//! syncs once for the whole group (group commit) and only then replies. The
//! thread owns the file and the dedupe index, so neither needs a lock, and
//! blocking file I/O never runs on the async executor.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::dedupe::Dedupe;
use super::recover::{self, KeyOf};
use super::{annotate, Fsync, LedgerConfig};
use crate::sink::{Outcome, Record};

/// Most jobs written and synced as one group; bounds the group buffer.
const MAX_GROUP_JOBS: usize = 512;

/// A write that failed: nothing in the job counts as recorded, and its keys
/// stay free so that a retry is written.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct JournalError(pub String);

/// Which records of a job this journal takes, and where their outcomes go.
pub struct Job {
    pub records: Arc<[Record]>,
    /// Indexes into `records`, in order.
    pub select: Vec<usize>,
    pub reply: oneshot::Sender<Result<Vec<Outcome>, JournalError>>,
}

enum Msg {
    Write(Job),
    /// Interval policy: sync if anything was written since the last sync.
    Tick,
    /// Spools: if the file holds nothing beyond `upto` (everything was
    /// delivered), empty it and store cursor 0 at `cursor`, before any new
    /// append can land. Replies whether it did.
    Compact {
        upto: u64,
        cursor: PathBuf,
        reply: oneshot::Sender<Result<bool, JournalError>>,
    },
    /// Sync and close the file; the next write opens the path anew.
    Reopen(oneshot::Sender<Result<(), JournalError>>),
    /// Sync and stop the thread.
    Close(oneshot::Sender<Result<(), JournalError>>),
}

/// Handle to a journal's writer thread. Safe for concurrent use.
///
/// The queue is unbounded so that [`Journal::write`] can enqueue without
/// waiting, which keeps the file in the order of the calls. It stays small
/// all the same: every job has a caller waiting for its reply, and callers
/// are bounded upstream (per-stream pipeline depth, concurrent calls).
pub struct Journal {
    tx: mpsc::UnboundedSender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
    state: Arc<Shared>,
    path: PathBuf,
}

/// What the writer thread publishes for readers of the file (spools).
struct Shared {
    /// Length of the file up to its last acknowledged line.
    len: AtomicU64,
    /// Woken after every commit that appended something (one permit is kept
    /// when nobody waits, so a reader never misses an append).
    appended: tokio::sync::Notify,
}

// === impl Journal ===

impl Journal {
    /// Opens `dir/name`, repairs its tail, rebuilds its dedupe index and
    /// starts its writer thread. Blocking.
    pub(crate) fn open(
        config: &LedgerConfig,
        name: &'static str,
        key_of: KeyOf,
    ) -> io::Result<Journal> {
        let path = config.dir.join(name);
        let (file, len) = recover::open_repaired(&path)?;
        let mut index = Dedupe::new(config.dedupe_window);
        let started = std::time::Instant::now();
        let scan = recover::scan(&path, len, key_of, &mut index, OffsetDateTime::now_utc())?;
        if scan.unreadable > 0 {
            tracing::warn!(path = %path.display(), lines = scan.unreadable, "ledger has lines that are not valid records; kept as they are");
        }
        let elapsed = started.elapsed();
        if elapsed >= std::time::Duration::from_secs(1) {
            // Worth knowing when a restart is slow: the scan grows with the file.
            tracing::info!(path = %path.display(), lines = scan.lines, keys = index.len(), ?elapsed, "ledger scanned");
        } else {
            tracing::debug!(path = %path.display(), lines = scan.lines, keys = index.len(), ?elapsed, "ledger scanned");
        }

        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(Shared {
            len: AtomicU64::new(len),
            appended: tokio::sync::Notify::new(),
        });
        let writer = Writer {
            state: state.clone(),
            path: path.clone(),
            label: name,
            file: Some(file),
            len,
            fsync: config.fsync,
            dirty: false,
            index,
            buf: Vec::with_capacity(64 * 1024),
        };
        let thread = std::thread::Builder::new()
            .name(format!("ledger-{name}"))
            .spawn(move || writer.run(rx))?;
        if config.fsync == Fsync::Interval {
            spawn_ticker(tx.downgrade(), config.fsync_interval)?;
        }
        Ok(Journal {
            tx,
            thread: Mutex::new(Some(thread)),
            state,
            path,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Length of the file up to its last acknowledged (durable per policy)
    /// line: readers may read up to here and never see a partial line.
    pub fn durable_len(&self) -> u64 {
        self.state.len.load(Ordering::Acquire)
    }

    /// Resolves after the next commit that appends something.
    pub async fn appended(&self) {
        self.state.appended.notified().await;
    }

    /// Empties the file if nothing was appended beyond `upto`, writing
    /// cursor 0 to `cursor` before any later append. Returns whether it did.
    pub async fn compact(&self, upto: u64, cursor: PathBuf) -> Result<bool, JournalError> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(Msg::Compact {
                upto,
                cursor,
                reply,
            })
            .map_err(|_| JournalError("ledger is closed".into()))?;
        done.await
            .unwrap_or_else(|_| Err(JournalError("ledger writer stopped".into())))
    }

    /// Queues a job without waiting; jobs are written in the order they are
    /// queued. Its reply arrives once the group it joins is durable.
    pub fn write(&self, job: Job) -> Result<(), JournalError> {
        self.tx
            .send(Msg::Write(job))
            .map_err(|_| JournalError("ledger is closed".into()))
    }

    /// Syncs and closes the file, so that the next write opens the path
    /// anew: after a rotation renamed the file, new records go to a new one.
    /// The dedupe index keeps the keys of the renamed file until restart.
    pub async fn reopen(&self) -> Result<(), JournalError> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(Msg::Reopen(reply))
            .map_err(|_| JournalError("ledger is closed".into()))?;
        done.await
            .unwrap_or_else(|_| Err(JournalError("ledger writer stopped".into())))
    }

    /// Syncs everything written so far and stops the writer thread.
    pub async fn close(&self) -> Result<(), JournalError> {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Msg::Close(reply)).is_err() {
            return Ok(()); // already closed
        }
        let result = done
            .await
            .unwrap_or_else(|_| Err(JournalError("ledger writer stopped".into())));
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

fn spawn_ticker(tx: mpsc::WeakUnboundedSender<Msg>, every: Duration) -> io::Result<()> {
    std::thread::Builder::new()
        .name("ledger-fsync-ticker".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            // Ends once the journal is gone.
            let Some(tx) = tx.upgrade() else { return };
            if tx.send(Msg::Tick).is_err() {
                return;
            }
        })?;
    Ok(())
}

/// The writer thread's state.
struct Writer {
    state: Arc<Shared>,
    path: PathBuf,
    /// The file's metrics label.
    label: &'static str,
    /// `None` after a failure: the next write reopens (and repairs) the file,
    /// which is how the ledger recovers once the cause goes away.
    file: Option<File>,
    /// Length of the file up to its last acknowledged line.
    len: u64,
    fsync: Fsync,
    /// Written but not yet synced (interval and never policies).
    dirty: bool,
    index: Dedupe,
    buf: Vec<u8>,
}

// === impl Writer ===

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut jobs = Vec::with_capacity(MAX_GROUP_JOBS);
        while let Some(first) = rx.blocking_recv() {
            let mut msg = Some(first);
            let mut close = None;
            let mut reopen = Vec::new();
            let mut compact = Vec::new();
            let mut tick = false;
            // Take everything already queued: one write and one sync serve
            // all of it.
            while let Some(m) = msg.take() {
                match m {
                    Msg::Write(job) => jobs.push(job),
                    Msg::Tick => tick = true,
                    Msg::Reopen(reply) => reopen.push(reply),
                    Msg::Compact {
                        upto,
                        cursor,
                        reply,
                    } => compact.push((upto, cursor, reply)),
                    Msg::Close(reply) => close = Some(reply),
                }
                if close.is_none() && jobs.len() < MAX_GROUP_JOBS {
                    msg = rx.try_recv().ok();
                }
            }
            if !jobs.is_empty() {
                self.commit(&mut jobs);
            }
            if tick && self.dirty {
                if let Err(e) = self.sync() {
                    tracing::error!(path = %self.path.display(), error = %e, "periodic ledger sync failed");
                    self.fail();
                }
            }
            for (upto, cursor, reply) in compact.drain(..) {
                let _ = reply.send(self.compact(upto, &cursor));
            }
            if !reopen.is_empty() {
                let result = if self.dirty { self.sync() } else { Ok(()) }
                    .map_err(|e| JournalError(e.to_string()));
                // Dropping the handle closes it; `append` opens the path anew.
                self.file = None;
                for reply in reopen {
                    let _ = reply.send(result.clone());
                }
            }
            if let Some(reply) = close {
                let result = if self.dirty { self.sync() } else { Ok(()) };
                let _ = reply.send(result.map_err(|e| JournalError(e.to_string())));
                return;
            }
        }
        // Every handle is gone without a close: still leave nothing unsynced.
        if self.dirty {
            let _ = self.sync();
        }
    }

    /// Writes one group and replies to each of its jobs.
    fn commit(&mut self, jobs: &mut Vec<Job>) {
        let now = OffsetDateTime::now_utc();
        self.buf.clear();
        // Keys written by this group; they become "seen" only once durable.
        let mut pending: HashMap<&str, OffsetDateTime> = HashMap::new();
        let mut outcomes: Vec<Vec<Outcome>> = Vec::with_capacity(jobs.len());
        let mut written = 0usize;
        for job in jobs.iter() {
            let mut out = Vec::with_capacity(job.select.len());
            for &i in &job.select {
                let Some(r) = job.records.get(i) else {
                    continue;
                };
                if let Some(key) = r.key.as_deref() {
                    if self.index.contains(key) || pending.contains_key(key) {
                        out.push(Outcome::Duplicate);
                        continue;
                    }
                    pending.insert(key, r.time);
                }
                self.buf.extend_from_slice(&r.line);
                written += 1;
                out.push(Outcome::Written);
            }
            outcomes.push(out);
        }

        let result = if self.buf.is_empty() {
            Ok(())
        } else {
            self.append()
        };
        match result {
            Ok(()) => {
                let m = crate::metrics::metrics();
                m.ledger_bytes
                    .get_or_create(&crate::metrics::FileLabels { file: self.label })
                    .inc_by(self.buf.len() as u64);
                m.group_records.observe(written as f64);
                self.state.len.store(self.len, Ordering::Release);
                if written > 0 {
                    self.state.appended.notify_one();
                }
                for (key, time) in pending {
                    self.index.insert(key.into(), time, now);
                }
                self.index.sweep(now);
                for (job, out) in jobs.drain(..).zip(outcomes) {
                    let _ = job.reply.send(Ok(out));
                }
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "ledger write failed");
                self.fail();
                let err = JournalError(format!("ledger write failed: {e}"));
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
        }
    }

    fn compact(&mut self, upto: u64, cursor: &std::path::Path) -> Result<bool, JournalError> {
        if self.len != upto || self.len == 0 {
            return Ok(false);
        }
        let result = (|| -> io::Result<()> {
            let file = match self.file.take() {
                Some(f) => f,
                None => recover::open_repaired(&self.path)?.0,
            };
            file.set_len(0)?;
            file.sync_all()?;
            self.file = Some(file);
            // Written here, before any later append, so that a crash can never
            // leave an old cursor pointing into new records.
            super::write_atomically(cursor, b"0\n")
        })();
        match result {
            Ok(()) => {
                self.len = 0;
                self.dirty = false;
                self.state.len.store(0, Ordering::Release);
                Ok(true)
            }
            Err(e) => {
                self.fail();
                Err(JournalError(format!(
                    "compact {}: {e}",
                    self.path.display()
                )))
            }
        }
    }

    /// Appends the group buffer and syncs it per policy.
    fn append(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            let (file, len) = recover::open_repaired(&self.path)?;
            self.file = Some(file);
            self.len = len;
            tracing::info!(path = %self.path.display(), "ledger reopened");
        }
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("ledger file is not open"));
        };
        file.write_all(&self.buf)
            .map_err(|e| annotate(e, "write", &self.path))?;
        self.dirty = true;
        if self.fsync == Fsync::Always {
            self.sync()?;
        }
        self.len += self.buf.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if let Some(file) = &self.file {
            let started = std::time::Instant::now();
            file.sync_data()
                .map_err(|e| annotate(e, "sync", &self.path))?;
            crate::metrics::metrics()
                .sync_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        self.dirty = false;
        Ok(())
    }

    /// After a failed write or sync: cut whatever part of the group reached
    /// the file, so that the ledger holds only acknowledged records, and
    /// drop the handle so that the next write starts from a fresh open.
    fn fail(&mut self) {
        if let Some(file) = self.file.take() {
            if file.metadata().map(|m| m.is_file()).unwrap_or(false) {
                if let Err(e) = file.set_len(self.len).and_then(|()| file.sync_all()) {
                    tracing::warn!(path = %self.path.display(), error = %e, "could not cut an unacknowledged write; the next open repairs the tail");
                }
            }
        }
        self.dirty = false;
    }
}
