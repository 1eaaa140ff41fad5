//! Between groups, the writer seals the active file into a segment, lets
//! retention delete old segments and releases what a spool delivered. The
//! order of each step is what makes a crash at any point recoverable: see
//! `open.rs` for how each intermediate state is finished or undone.

use std::fs::File;
use std::io;
use std::sync::{Arc, PoisonError, RwLock};

use sha2::{Digest as _, Sha256};

use super::chain::{sha256_of, write_seal, Head};
use super::disk::Create;
use super::index::SealedKeys;
use super::keys::{self, KeyIndex, Summary};
use super::names::{Names, DATA, KEYS, SEAL, TIMES, USAGE};
use super::state::{Active, Sealed};
use super::times;
use super::writer::{State, Writer};
use super::{now_nanos, ActiveMeta};

// === impl Writer ===

impl Writer {
    pub(super) fn maybe_seal(&mut self) {
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
    pub(super) fn seal(&mut self) -> io::Result<()> {
        self.sync()?;
        let names = self.shared.names.clone();
        let window = self.window();
        let head = self.head;
        let Some(st) = &mut self.state else {
            return Err(io::Error::other("log is not open"));
        };
        if st.active.count == 0 {
            return Ok(());
        }
        let (first, count, len) = (st.active.first, st.active.count, st.active.len);
        let started = std::time::Instant::now();
        // The hash was kept while appending; only a file this process did
        // not read at its start is read now, once.
        let sha = match st.active.hash.take() {
            Some(h) => h.finalize().into(),
            None => sha256_of(&st.active.data, len)?,
        };
        // Read, not copied: only this thread changes them.
        let commits = st
            .meta
            .commits
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let summary = Summary {
            first,
            count,
            data_len: len,
            received_min: commits.first().map_or(0, |c| c.received),
            received_max: commits.last().map_or(0, |c| c.received),
            tail_hash: keys::tail_hash(&st.active.data, len)?,
        };
        // Taken: from here on, an error goes through `failed`, which drops
        // the active segment's state and rebuilds it from the disk.
        let mut entries = st.active.keys.take_entries(&commits);
        drop(commits);
        // Derived and written first: a crash before the renames below leaves
        // an index and a seal without data, which the next open deletes.
        keys::write(&names, &names.sealed(first, KEYS), &summary, &mut entries)?;
        drop(entries);
        let (new_head, next, data, times) = rename_sealed(&names, first, count, len, sha, head)?;

        let keys = sealed_keys(&names, first, &summary, window)?;
        start_next(st, summary, len, keys, next, data, times);
        self.set_head(Some(new_head));
        self.publish();
        crate::metrics::metrics()
            .seal_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            stream = self.config.stream,
            first,
            count,
            bytes = len,
            elapsed = ?started.elapsed(),
            "sealed a segment"
        );
        Ok(())
    }

    /// Deletes the oldest sealed segments that retention lets go, never one
    /// holding a record inside the dedupe window.
    pub(super) fn retain(&mut self, now: i64) -> io::Result<()> {
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
        // by a crash are deleted at the next open. The seal stays (the
        // chain stays checkable), except in a spool, which keeps no history.
        let seal = (!self.config.keep_seals).then_some(SEAL);
        for ext in [DATA, KEYS, TIMES, USAGE].into_iter().chain(seal) {
            names.remove(&names.sealed(first, ext))?;
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
    pub(super) fn release(&mut self, upto: u64) -> io::Result<()> {
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

/// Writes the seal and renames the active files into the segment, then
/// creates the next active files; returns the new head, the next active
/// file's first position, and its data and record files.
fn rename_sealed(
    names: &Names,
    first: u64,
    count: u64,
    len: u64,
    sha: [u8; 32],
    head: Option<Head>,
) -> io::Result<(Head, u64, File, File)> {
    let new_head = write_seal(names, first, count, len, sha, head, now_nanos())?;
    names.sync_dir()?;
    // The record file moves first, then the data: an open that finds the
    // newest segment's record file without its data finishes the rename.
    names.rename(&names.active_times(), &names.sealed(first, TIMES))?;
    names.rename(&names.active_data(), &names.sealed(first, DATA))?;
    let next = first + count;
    super::segment::write_times(names, &names.active_times(), next, &[], &[], now_nanos())?;
    let data = names.create(&names.active_data(), Create::Append)?;
    names.sync_dir()?;
    let times = names.create(&names.active_times(), Create::Append)?;
    Ok((new_head, next, data, times))
}

/// The new segment's keys, loaded when it is inside the dedupe window.
fn sealed_keys(
    names: &Names,
    first: u64,
    summary: &Summary,
    window: i64,
) -> io::Result<Option<SealedKeys>> {
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
    Ok(keys)
}

/// Adds the new segment to the writer's state and starts the next active
/// segment at `next`.
fn start_next(
    st: &mut State,
    summary: Summary,
    len: u64,
    keys: Option<SealedKeys>,
    next: u64,
    data: File,
    times: File,
) {
    let bytes_before = st.meta.bytes_before;
    st.sealed.push(Sealed {
        summary,
        written_len: len,
        bytes_before,
        keys,
    });
    let data = Arc::new(data);
    st.meta = Arc::new(ActiveMeta {
        first: next,
        data: data.clone(),
        commits: RwLock::new(Vec::new()),
        checks: RwLock::new(Vec::new()),
        bytes_before: bytes_before + len,
    });
    st.active = Active {
        first: next,
        data,
        times: Arc::new(times),
        count: 0,
        len: 0,
        times_len: times::HEADER as u64,
        commits: Vec::new(),
        checks: Vec::new(),
        keys: Default::default(),
        hash: Some(Sha256::new()),
    };
}
