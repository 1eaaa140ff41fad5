//! The group-commit append path: a group's appends checked against the
//! dedupe window, written with one `write`, recorded and synced, then
//! indexed and answered.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::sync::PoisonError;

use sha2::Digest as _;

use super::Writer;
use crate::log::index::{self, LookupError, SealedKeys};
use crate::log::keys::KeyIndex;
use crate::log::names::{DATA, KEYS};
use crate::log::times::{self, Check, Commit};
use crate::log::{annotate, now_nanos, Append, Appended, Fsync, LogError, LogRecord};

impl Writer {
    /// The receive time of the group being written: now, never earlier
    /// than the previous group's.
    fn next_received(&mut self) -> i64 {
        self.last_received = now_nanos().max(self.last_received);
        self.last_received
    }

    /// Writes one group and replies to each of its appends.
    pub(super) fn commit<R: LogRecord>(&mut self, jobs: &mut Vec<Append<R>>) {
        if self.state.is_none() {
            if let Err(e) = self.reopen(false) {
                let err = match self.failure.clone() {
                    // Still the episode's cause: the same answer, no new log line.
                    Some(cause) => cause,
                    None => self.failed("reopen", e),
                };
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(err.clone()));
                }
                return;
            }
        }
        let received = self.next_received();
        let cutoff = received.saturating_sub(self.window());
        let Staged {
            outcomes,
            new_keys,
            written,
        } = self.stage(jobs, cutoff);

        if written > 0 {
            if let Err(e) = self.append(written, received) {
                let err = self.failed("write", e);
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(err.clone()));
                }
                return;
            }
            self.index_written(new_keys, written);
        }
        for (job, out) in jobs.drain(..).zip(outcomes) {
            // The records go before the reply: the caller still holds them
            // and frees them on its own thread, so their memory never
            // crosses to this one (cross-thread frees cost every allocator).
            let Append { records, reply, .. } = job;
            drop(records);
            let _ = reply.send(out);
        }
    }

    /// Puts the group's new records in the group buffer, with their checks,
    /// and decides each selected record's outcome; a key already seen in
    /// the window (or earlier in the group) is a duplicate and not written.
    fn stage<'j, R: LogRecord>(&mut self, jobs: &'j [Append<R>], cutoff: i64) -> Staged<'j> {
        self.buf.clear();
        self.group_checks.clear();
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
            let mark = (
                self.buf.len(),
                new_keys.len(),
                written,
                self.group_checks.len(),
            );
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
                self.group_checks.push(Check::of(r.line()));
                written += 1;
                let first = self.state.as_ref().map_or(1, |s| s.active.first);
                out.push(Appended::Written(first + base_count + written - 1));
            }
            match error {
                None => outcomes.push(Ok(out)),
                Some(e) => {
                    // Nothing of this append is written; its keys stay free.
                    self.buf.truncate(mark.0);
                    self.group_checks.truncate(mark.3);
                    for (k, _) in new_keys.drain(mark.1..) {
                        pending.remove(k);
                    }
                    written = mark.2;
                    outcomes.push(Err(e));
                }
            }
        }
        Staged {
            outcomes,
            new_keys,
            written,
        }
    }

    /// Once the group's `written` records are durable: their keys go into
    /// the active file's index, and the group is counted.
    fn index_written(&mut self, new_keys: Vec<(&str, u64)>, written: u64) {
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
                file: crate::log::names::label(self.config.stream),
            })
            .inc_by(self.buf.len() as u64);
        m.group_records.observe(written as f64);
        self.healthy_again();
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
        s.summary = crate::log::segment::reindex(&names, &self.config, first, why)?;
        let data = File::open(names.sealed(first, DATA))?;
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
        self.times_buf.clear();
        times::group(
            st.active.first,
            &commit,
            &self.group_checks,
            &mut self.times_buf,
        );
        let (data_path, times_path) = (names.active_data(), names.active_times());
        names
            .disk
            .write(&st.active.data, &data_path, &self.buf)
            .map_err(|e| annotate(e, "write", &data_path))?;
        names
            .disk
            .write(&st.active.times, &times_path, &self.times_buf)
            .map_err(|e| annotate(e, "write", &times_path))?;
        // Hashed as written, so that the seal reads nothing again.
        if let Some(h) = &mut st.active.hash {
            h.update(&self.buf);
        }
        self.dirty = true;
        if self.config.fsync == Fsync::Always {
            self.sync()?;
        }
        let Some(st) = &mut self.state else {
            return Err(io::Error::other("log is not open"));
        };
        st.active.count = commit.end_count;
        st.active.len = commit.end_offset;
        st.active.times_len += self.times_buf.len() as u64;
        // Checks before the commit: a reader that sees a commit finds the
        // checks of its records.
        st.meta
            .checks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(&self.group_checks);
        st.meta
            .commits
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(commit);
        let end = st.active.first + st.active.count - 1;
        self.shared.end.send_replace(end);
        Ok(())
    }
}

/// A staged group: one outcome per append, the keys written with their
/// offsets in the active file, and how many records were written.
struct Staged<'j> {
    outcomes: Vec<Result<Vec<Appended>, LogError>>,
    new_keys: Vec<(&'j str, u64)>,
    written: u64,
}
