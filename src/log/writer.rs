//! The writer thread of one stream. It owns the files and the dedupe index,
//! so neither needs a lock: it drains every queued append, writes them with
//! one `write`, records the group's receive time, syncs once for the whole
//! group (group commit) and only then replies and tells readers. Between
//! groups it seals the active file, applies retention and releases what a
//! spool delivered. Blocking file I/O never runs on the async executor.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::{mpsc, oneshot};

use super::index::{self, LookupError, SealedKeys};
use super::keys::{self, KeyIndex, Summary};
use super::names::{DATA, KEYS, TIMES, USAGE};
use super::open::{self, Active, Opened, Sealed};
use super::times::{self, Commit};
use super::{
    annotate, now_nanos, sync_dir, ActiveMeta, Append, Appended, Fsync, LogConfig, LogError,
    LogRecord, SegmentView, Shared, View,
};

/// Most appends written and synced as one group; bounds the group buffer.
const MAX_GROUP_JOBS: usize = 512;

pub(crate) enum Msg<R> {
    Append(Append<R>),
    /// Periodic work: interval syncs, sealing by age, retention, and
    /// reopening after a failure (so health recovers with no client write).
    Tick,
    Seal(oneshot::Sender<Result<(), LogError>>),
    /// Spools: every record up to this position is delivered.
    Release(u64, oneshot::Sender<Result<(), LogError>>),
    Close(oneshot::Sender<Result<(), LogError>>),
}

pub(crate) struct Writer {
    config: LogConfig,
    shared: Arc<Shared>,
    /// `None` after a failure: the next group reopens the stream from disk,
    /// which is how the log recovers once the cause goes away.
    state: Option<State>,
    /// Written but not yet synced (interval and never policies).
    dirty: bool,
    buf: Vec<u8>,
    /// Receive times never go back, even if the clock does.
    last_received: i64,
    /// Logged once per change, not once per call.
    retention_blocked: bool,
}

struct State {
    sealed: Vec<Sealed>,
    active: Active,
    /// What readers see of the active segment.
    meta: Arc<ActiveMeta>,
}

// === impl Writer ===

impl Writer {
    pub fn new(config: LogConfig, shared: Arc<Shared>, opened: Opened) -> Writer {
        let mut w = Writer {
            config,
            shared,
            state: None,
            dirty: false,
            buf: Vec::with_capacity(64 * 1024),
            last_received: 0,
            retention_blocked: false,
        };
        w.install(opened);
        w
    }

    fn install(&mut self, opened: Opened) {
        let Opened {
            sealed,
            mut active,
            active_bytes_before,
        } = opened;
        if let Some(c) = active.commits.last() {
            self.last_received = self.last_received.max(c.received);
        }
        let meta = Arc::new(ActiveMeta {
            first: active.first,
            data: active.data.clone(),
            commits: RwLock::new(std::mem::take(&mut active.commits)),
            bytes_before: active_bytes_before,
        });
        let end = active.first + active.count - 1;
        self.state = Some(State {
            sealed,
            active,
            meta,
        });
        self.publish();
        self.shared.end.send_if_modified(|e| {
            let changed = *e != end;
            *e = end;
            changed
        });
        self.shared.set_healthy(true);
    }

    /// Shows the segments to readers.
    fn publish(&self) {
        let Some(st) = &self.state else { return };
        let filters: usize = st
            .sealed
            .iter()
            .filter_map(|s| s.keys.as_ref())
            .map(|k| k.index.resident_bytes())
            .sum();
        self.shared
            .filter_bytes
            .store(filters as u64, std::sync::atomic::Ordering::Relaxed);
        self.shared.active_keys.store(
            st.active.keys.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let view = View {
            sealed: st
                .sealed
                .iter()
                .map(|s| SegmentView {
                    summary: s.summary,
                    bytes_before: s.bytes_before,
                })
                .collect(),
            active: st.meta.clone(),
        };
        let bounds = (view.first(), view.active.first);
        *self
            .shared
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(view);
        self.shared.segments.send_if_modified(|b| {
            let changed = *b != bounds;
            *b = bounds;
            changed
        });
    }

    pub fn run<R: LogRecord>(mut self, mut rx: mpsc::UnboundedReceiver<Msg<R>>) {
        let mut jobs = Vec::with_capacity(MAX_GROUP_JOBS);
        while let Some(first) = rx.blocking_recv() {
            let mut msg = Some(first);
            let mut close = None;
            let mut seals = Vec::new();
            let mut releases = Vec::new();
            let mut tick = false;
            // Take everything already queued: one write and one sync serve
            // all of it.
            while let Some(m) = msg.take() {
                match m {
                    Msg::Append(job) => jobs.push(job),
                    Msg::Tick => tick = true,
                    Msg::Seal(reply) => seals.push(reply),
                    Msg::Release(upto, reply) => releases.push((upto, reply)),
                    Msg::Close(reply) => close = Some(reply),
                }
                if close.is_none() && jobs.len() < MAX_GROUP_JOBS {
                    msg = rx.try_recv().ok();
                }
            }
            if !jobs.is_empty() {
                self.commit(&mut jobs);
            }
            if tick {
                self.tick();
            }
            for reply in seals {
                let _ = reply.send(self.seal().map_err(|e| self.failed("seal", e)));
            }
            for (upto, reply) in releases {
                let _ = reply.send(self.release(upto).map_err(|e| LogError(e.to_string())));
            }
            if !tick && self.state.is_some() {
                self.maybe_seal();
            }
            if let Some(reply) = close {
                let _ = reply.send(self.sync().map_err(|e| LogError(e.to_string())));
                return;
            }
        }
        // Every handle is gone without a close: still leave nothing unsynced.
        let _ = self.sync();
    }

    fn window(&self) -> i64 {
        open::window_nanos(&self.config)
    }

    /// The receive time of the group being written: now, never earlier
    /// than the previous group's.
    fn next_received(&mut self) -> i64 {
        self.last_received = now_nanos().max(self.last_received);
        self.last_received
    }

    /// Writes one group and replies to each of its appends.
    fn commit<R: LogRecord>(&mut self, jobs: &mut Vec<Append<R>>) {
        if self.state.is_none() {
            if let Err(e) = self.reopen() {
                let err = self.failed("reopen", e);
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(err.clone()));
                }
                return;
            }
        }
        let received = self.next_received();
        let cutoff = received.saturating_sub(self.window());
        self.buf.clear();
        let mut outcomes: Vec<Result<Vec<Appended>, LogError>> = Vec::with_capacity(jobs.len());
        // Keys written by this group; they become "seen" only once durable.
        let mut pending: HashSet<&str> = HashSet::new();
        let mut new_keys: Vec<(&str, u64)> = Vec::new();
        let (base_count, base_len) = match &self.state {
            Some(st) => (st.active.count, st.active.len),
            None => (0, 0),
        };
        let mut written = 0u64;
        for job in jobs.iter() {
            let mark = (self.buf.len(), new_keys.len(), written);
            let mut out = Vec::with_capacity(job.select.len());
            let mut error = None;
            for &i in &job.select {
                let Some(r) = job.records.get(i) else {
                    continue;
                };
                if let Some(key) = r.key() {
                    if pending.contains(key) {
                        out.push(Appended::Duplicate);
                        continue;
                    }
                    match self.seen(key, cutoff) {
                        Ok(true) => {
                            out.push(Appended::Duplicate);
                            continue;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    }
                    pending.insert(key);
                    new_keys.push((key, base_len + self.buf.len() as u64));
                }
                self.buf.extend_from_slice(r.line());
                written += 1;
                let first = self.state.as_ref().map_or(1, |s| s.active.first);
                out.push(Appended::Written(first + base_count + written - 1));
            }
            match error {
                None => outcomes.push(Ok(out)),
                Some(e) => {
                    // Nothing of this append is written; its keys stay free.
                    self.buf.truncate(mark.0);
                    for (k, _) in new_keys.drain(mark.1..) {
                        pending.remove(k);
                    }
                    written = mark.2;
                    outcomes.push(Err(e));
                }
            }
        }

        if written > 0 {
            if let Err(e) = self.append(written, received) {
                let err = self.failed("write", e);
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(err.clone()));
                }
                return;
            }
            let key_of = self.config.key_of;
            if let Some(st) = &mut self.state {
                for (key, offset) in new_keys {
                    if let Err(e) =
                        st.active
                            .keys
                            .insert(key, offset, &st.active.data, st.active.len, key_of)
                    {
                        // The record is durable; only its index entry is
                        // missing. Reopening rebuilds the index from the file.
                        tracing::error!(stream = self.config.stream, error = %e, "indexing a written key failed; reopening the log");
                        self.state = None;
                        break;
                    }
                }
            }
            if let Some(st) = &self.state {
                self.shared.active_keys.store(
                    st.active.keys.len() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            let m = crate::metrics::metrics();
            m.ledger_bytes
                .get_or_create(&crate::metrics::FileLabels {
                    file: super::names::label(self.config.stream),
                })
                .inc_by(self.buf.len() as u64);
            m.group_records.observe(written as f64);
        }
        for (job, out) in jobs.drain(..).zip(outcomes) {
            let _ = job.reply.send(out);
        }
    }

    /// Whether `key` was received within the window; repairs a damaged
    /// sealed index once and asks again.
    fn seen(&mut self, key: &str, cutoff: i64) -> Result<bool, LogError> {
        for attempt in 0..2 {
            let Some(st) = &self.state else {
                return Err(LogError("log is not open".into()));
            };
            let commits = st
                .meta
                .commits
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let sealed: Vec<&SealedKeys> =
                st.sealed.iter().filter_map(|s| s.keys.as_ref()).collect();
            let result = index::seen(
                key,
                cutoff,
                &st.active.keys,
                &st.active.data,
                st.active.len,
                &commits,
                &sealed,
                self.config.key_of,
            );
            drop(commits);
            match result {
                Ok(seen) => return Ok(seen),
                Err(LookupError::Io(e)) => {
                    return Err(LogError(format!("reading the dedupe index failed: {e}")))
                }
                Err(LookupError::Damaged(first, why)) if attempt == 0 => {
                    self.repair_index(first, &why).map_err(|e| {
                        LogError(format!("rebuilding a damaged key index failed: {e}"))
                    })?;
                }
                Err(LookupError::Damaged(_, why)) => {
                    return Err(LogError(format!(
                        "key index still damaged after a rebuild: {why}"
                    )))
                }
            }
        }
        Err(LogError("key index damaged".into()))
    }

    fn repair_index(&mut self, first: u64, why: &str) -> io::Result<()> {
        let names = self.shared.names.clone();
        let Some(st) = &mut self.state else {
            return Ok(());
        };
        let Some(s) = st.sealed.iter_mut().find(|s| s.summary.first == first) else {
            return Ok(());
        };
        let data = File::open(names.sealed(first, DATA))?;
        let len = data.metadata()?.len();
        s.summary = open::rebuild(&names, &self.config, &data, first, len, why)?;
        let index = KeyIndex::open(&names.sealed(first, KEYS))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.0))?;
        s.keys = Some(SealedKeys { index, data });
        Ok(())
    }

    /// Appends the group buffer and its receive time, synced per policy.
    fn append(&mut self, written: u64, received: i64) -> io::Result<()> {
        let names = self.shared.names.clone();
        let Some(st) = &mut self.state else {
            return Err(io::Error::other("log is not open"));
        };
        let commit = Commit {
            end_count: st.active.count + written,
            end_offset: st.active.len + self.buf.len() as u64,
            received,
        };
        (&*st.active.data)
            .write_all(&self.buf)
            .map_err(|e| annotate(e, "write", &names.active_data()))?;
        (&st.active.times)
            .write_all(&times::commit(&commit))
            .map_err(|e| annotate(e, "write", &names.active_times()))?;
        self.dirty = true;
        if self.config.fsync == Fsync::Always {
            self.sync()?;
        }
        let Some(st) = &mut self.state else {
            return Err(io::Error::other("log is not open"));
        };
        st.active.count = commit.end_count;
        st.active.len = commit.end_offset;
        st.active.times_len += times::RECORD as u64;
        st.meta
            .commits
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(commit);
        let end = st.active.first + st.active.count - 1;
        self.shared.end.send_replace(end);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        if let Some(st) = &self.state {
            let started = std::time::Instant::now();
            let names = &self.shared.names;
            st.active
                .data
                .sync_data()
                .map_err(|e| annotate(e, "sync", &names.active_data()))?;
            st.active
                .times
                .sync_data()
                .map_err(|e| annotate(e, "sync", &names.active_times()))?;
            crate::metrics::metrics()
                .sync_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        self.dirty = false;
        Ok(())
    }

    /// After a failed write, sync or seal: cut whatever part of the group
    /// reached the files, so that they hold only acknowledged records, and
    /// drop the state so that the next write reopens from disk.
    fn failed(&mut self, what: &str, e: io::Error) -> LogError {
        if let Some(st) = self.state.take() {
            let regular = st
                .active
                .data
                .metadata()
                .map(|m| m.is_file())
                .unwrap_or(false);
            if regular {
                let cut = st
                    .active
                    .data
                    .set_len(st.active.len)
                    .and_then(|()| st.active.data.sync_all())
                    .and_then(|()| st.active.times.set_len(st.active.times_len))
                    .and_then(|()| st.active.times.sync_all());
                if let Err(e) = cut {
                    tracing::warn!(stream = self.config.stream, error = %e, "could not cut an unacknowledged write; the next open repairs the tail");
                }
            }
        }
        self.dirty = false;
        if self.shared.set_healthy(false) {
            tracing::error!(stream = self.config.stream, error = %e, "ledger {what} failed; refusing writes until it recovers");
        }
        LogError(format!("ledger {what} failed: {e}"))
    }

    fn reopen(&mut self) -> io::Result<()> {
        let opened = open::open(&self.config)?;
        self.install(opened);
        tracing::info!(
            stream = self.config.stream,
            "ledger reopened; writing again"
        );
        Ok(())
    }

    /// Periodic work between groups.
    fn tick(&mut self) {
        if self.state.is_none() {
            // Probe: the cause of the failure may have gone away.
            if self.reopen().is_err() {
                return;
            }
        }
        if self.config.fsync == Fsync::Interval {
            if let Err(e) = self.sync() {
                self.failed("sync", e);
                return;
            }
        }
        let now = now_nanos();
        let cutoff = now.saturating_sub(self.window());
        if let Some(st) = &mut self.state {
            for s in &mut st.sealed {
                if s.keys.is_some() && s.summary.received_max < cutoff {
                    s.keys = None; // out of the window: its filter is not needed
                }
            }
        }
        self.publish();
        self.maybe_seal();
        if let Err(e) = self.retain(now) {
            tracing::warn!(stream = self.config.stream, error = %e, "retention could not delete a segment");
        }
    }

    fn maybe_seal(&mut self) {
        let Some(st) = &self.state else { return };
        if st.active.count == 0 {
            return;
        }
        let oldest = st
            .meta
            .commits
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .first()
            .map_or(i64::MAX, |c| c.received);
        let age = u64::try_from(now_nanos().saturating_sub(oldest)).unwrap_or(0);
        let too_old = u128::from(age) >= self.config.segment_max_age.as_nanos();
        if st.active.len >= self.config.segment_max_bytes || too_old {
            if let Err(e) = self.seal() {
                self.failed("seal", e);
            }
        }
    }

    /// Seals the active file into a segment and starts a new one.
    fn seal(&mut self) -> io::Result<()> {
        self.sync()?;
        let names = self.shared.names.clone();
        let window = self.window();
        let Some(st) = &mut self.state else {
            return Err(io::Error::other("log is not open"));
        };
        if st.active.count == 0 {
            return Ok(());
        }
        let (first, count, len) = (st.active.first, st.active.count, st.active.len);
        let commits = st
            .meta
            .commits
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let summary = Summary {
            first,
            count,
            data_len: len,
            received_min: commits.first().map_or(0, |c| c.received),
            received_max: commits.last().map_or(0, |c| c.received),
            tail_hash: keys::tail_hash(&st.active.data, len)?,
        };
        let mut entries = st.active.keys.entries(&commits);
        // Derived and written first: a crash before the renames below leaves
        // an index without data, which the next open deletes.
        keys::write(&names.sealed(first, KEYS), &summary, &mut entries)?;
        sync_dir(&names.dir)?;
        // The times file moves first, then the data: an open that finds the
        // newest segment's times without its data finishes the rename.
        let rename = |from: std::path::PathBuf, to: std::path::PathBuf| {
            std::fs::rename(&from, &to).map_err(|e| annotate(e, "rename", &from))
        };
        rename(names.active_times(), names.sealed(first, TIMES))?;
        rename(names.active_data(), names.sealed(first, DATA))?;
        let next = first + count;
        open::write_times(&names.active_times(), next, &[], now_nanos())?;
        let data = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(names.active_data())
            .map_err(|e| annotate(e, "create", &names.active_data()))?;
        sync_dir(&names.dir)?;
        let times = OpenOptions::new()
            .append(true)
            .open(names.active_times())
            .map_err(|e| annotate(e, "open", &names.active_times()))?;

        let in_window = summary.received_max >= now_nanos().saturating_sub(window);
        let keys = if in_window {
            let index = KeyIndex::open(&names.sealed(first, KEYS))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.0))?;
            let sealed_data = File::open(names.sealed(first, DATA))?;
            Some(SealedKeys {
                index,
                data: sealed_data,
            })
        } else {
            None
        };
        let bytes_before = st.meta.bytes_before;
        st.sealed.push(Sealed {
            summary,
            bytes_before,
            keys,
        });
        let data = Arc::new(data);
        st.meta = Arc::new(ActiveMeta {
            first: next,
            data: data.clone(),
            commits: RwLock::new(Vec::new()),
            bytes_before: bytes_before + len,
        });
        st.active = Active {
            first: next,
            data,
            times,
            count: 0,
            len: 0,
            times_len: times::RECORD as u64,
            commits: Vec::new(),
            keys: Default::default(),
        };
        self.publish();
        tracing::debug!(
            stream = self.config.stream,
            first,
            count,
            bytes = len,
            "sealed a segment"
        );
        Ok(())
    }

    /// Deletes the oldest sealed segments that retention lets go, never one
    /// holding a record inside the dedupe window.
    fn retain(&mut self, now: i64) -> io::Result<()> {
        let (age, bytes) = (self.config.retention, self.config.retention_bytes);
        if age.is_none() && bytes.is_none() {
            return Ok(());
        }
        let cutoff = now.saturating_sub(self.window());
        let age_cutoff =
            age.map(|a| now.saturating_sub(i64::try_from(a.as_nanos()).unwrap_or(i64::MAX)));
        let mut deleted = false;
        while let Some(st) = &self.state {
            let Some(oldest) = st.sealed.first() else {
                break;
            };
            let total = st.meta.bytes_before + st.active.len - oldest.bytes_before;
            let too_old = age_cutoff.is_some_and(|c| oldest.summary.received_max < c);
            let too_big = bytes.is_some_and(|b| total > b);
            if !too_old && !too_big {
                self.retention_blocked = false;
                break;
            }
            if oldest.summary.received_max >= cutoff {
                if !self.retention_blocked {
                    tracing::warn!(stream = self.config.stream, total_bytes = total, "over --retention-bytes, but the oldest segment holds records inside the dedupe window; keeping it");
                    self.retention_blocked = true;
                }
                break;
            }
            self.delete_oldest()?;
            deleted = true;
        }
        if deleted {
            self.publish();
        }
        Ok(())
    }

    fn delete_oldest(&mut self) -> io::Result<()> {
        let names = self.shared.names.clone();
        let Some(st) = &mut self.state else {
            return Ok(());
        };
        if st.sealed.is_empty() {
            return Ok(());
        }
        let s = st.sealed.remove(0);
        let first = s.summary.first;
        // Data first: index, times and checkpoint files left without data
        // by a crash are deleted at the next open.
        for ext in [DATA, KEYS, TIMES, USAGE] {
            let path = names.sealed(first, ext);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(annotate(e, "delete", &path)),
            }
        }
        tracing::debug!(
            stream = self.config.stream,
            first,
            count = s.summary.count,
            "deleted a segment"
        );
        Ok(())
    }

    /// Spools: deletes the sealed segments whose records are all delivered.
    fn release(&mut self, upto: u64) -> io::Result<()> {
        let mut deleted = false;
        while let Some(s) = self.state.as_ref().and_then(|st| st.sealed.first()) {
            if s.summary.first + s.summary.count - 1 > upto {
                break;
            }
            self.delete_oldest()?;
            deleted = true;
        }
        if deleted {
            self.publish();
        }
        Ok(())
    }
}
