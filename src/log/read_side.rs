//! The read side of a [`Log`] handle: readers, positions, watches and
//! what the stream holds, all from what the writer published.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use tokio::sync::watch;

use super::chain::Head;
use super::names;
use super::{Log, LogReader, SeekError, Stats, Summary};

// === impl Log ===

impl<R> Log<R> {
    /// A reader of the durable records after `after` (0: from the first
    /// retained one).
    pub fn reader(&self, after: u64) -> Result<LogReader, SeekError> {
        LogReader::new(self.shared.clone(), after)
    }

    /// The first retained position (the next one to be written when the
    /// stream holds nothing).
    pub fn first(&self) -> u64 {
        self.shared.view().first()
    }

    /// The last durable position; 0 while nothing was ever written.
    pub fn end(&self) -> u64 {
        *self.shared.end.borrow()
    }

    /// Changes whenever records become durable: followers wait on it.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.end.subscribe()
    }

    /// Changes whenever a segment is sealed or deleted: (first retained
    /// position, first position of the active segment).
    pub fn watch_segments(&self) -> watch::Receiver<(u64, u64)> {
        self.shared.segments.subscribe()
    }

    /// The usage checkpoint file of the sealed segment starting at `first`
    /// (derived data of `crate::read`, deleted with its segment).
    pub fn checkpoint_path(&self, first: u64) -> PathBuf {
        self.shared.names.sealed(first, names::USAGE)
    }

    /// Changes when writing fails or recovers (the writer probes a failed
    /// disk every second, so this recovers with no client write).
    pub fn health(&self) -> watch::Receiver<bool> {
        self.shared.healthy.subscribe()
    }

    /// Bytes in the retained segments since the log was opened (the same
    /// origin as [`LogReader::bytes_before`]).
    pub fn bytes_end(&self) -> u64 {
        let view = self.shared.view();
        let len = view
            .active
            .commits
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .map_or(0, |c| c.end_offset);
        view.active.bytes_before + len
    }

    /// What the stream holds in memory for dedupe.
    pub fn stats(&self) -> Stats {
        Stats {
            active_keys: self.shared.active_keys.load(Ordering::Relaxed),
            filter_bytes: self.shared.filter_bytes.load(Ordering::Relaxed),
            sealed_segments: self.shared.view().sealed.len(),
        }
    }

    /// The sealed segments, oldest first.
    pub fn segments(&self) -> Vec<Summary> {
        self.shared
            .view()
            .sealed
            .iter()
            .map(|s| s.summary)
            .collect()
    }

    /// The path of the active file.
    pub fn path(&self) -> PathBuf {
        self.shared.names.active_data()
    }

    /// The newest seal of the stream (`None` before the first seal).
    pub fn head(&self) -> Option<Head> {
        *self
            .shared
            .head
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
