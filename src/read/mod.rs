//! What readers get from the log: [`tail`] turns records into `Tail`
//! responses, [`usage`] answers `Usage` queries over the entries stream,
//! fast, with the per-segment [`checkpoint`]s that [`build`] keeps.
//!
//! Both read the segment files through [`Source`]: the live [`Log`] of a
//! running meterd, or a [`Snapshot`] of a ledger directory that another
//! process may be writing (the `meterd usage --ledger` form).
//!
//! # The usage fast path
//! A query `[start, end)` must give exactly what folding every retained
//! entry would give, without reading a month of ledger for one day. For
//! that, each sealed segment `k` gets a checkpoint file (see [`checkpoint`]):
//! - `before_k` = the latest receive time up to the segment's end, minus
//!   [`build::SETTLE`] (clamped to never go back). Receive times are meterd's
//!   own clock, so this bound is immune to clients' clocks; it trails the
//!   data by an hour so that records emitted a little before others but
//!   received after the seal (clock skew between hosts, a short outage of a
//!   forwarding sidecar) are still after it;
//! - the engine's fold state at `before_k` of every record with position up
//!   to the segment's end (`usage::Checkpoint`), plus the positions of those
//!   records whose `emitted_at` is at or after `before_k` ("pending", about
//!   an hour of records), which the state leaves out: a list, and beyond
//!   64 Ki of them, a position from which every such record is pending
//!   ([`checkpoint::Pending`]). The records themselves are read back from
//!   the log, which holds them while the checkpoint is valid (see `from`
//!   below), so neither the file nor a builder's memory grows with them;
//! - the segment's `emitted_at` range and the latest receive time so far;
//! - a block index: the earliest `emitted_at` of every
//!   [`checkpoint::BLOCK`] records of the segment.
//!
//! A query chooses the latest checkpoint `k` with `before_k <= start`,
//! received entirely at or before `as_of` (when set), and no later sealed
//! segment holding a record emitted before `before_k`. It seeds the engine
//! with the state, reads and pushes the pending records, then the records
//! after the segment, skipping every later sealed segment whose earliest
//! `emitted_at` is after `end` (the engine ignores such records anyway),
//! and, in a segment that holds records from both sides of `end`, every
//! block whose earliest `emitted_at` is after it. A record after the
//! segment emitted before `before_k` (a late one in the active file)
//! makes the engine refuse the checkpoint (`SeedError::Stale`); the query
//! then starts again from an earlier checkpoint, or from nothing.
//!
//! The active segment has no checkpoint; a running meterd remembers, in
//! memory, the earliest `emitted_at` a query saw in it
//! ([`build::ActiveStats`]), so that later queries skip that part of it too
//! when it lies after their range (its durable records never change).
//!
//! A segment (or block) is skipped only when its earliest record is
//! strictly after `end`: a stop emitted exactly at `end` still decides that
//! the last bucket's interval is not `open`.
//!
//! Checkpoints fold only retained records (`from`, the first retained
//! position, is part of each), so that the answer is a function of what the
//! log holds: when retention deletes a segment, the chain is rebuilt.
//! A running meterd builds them lazily, off the writer thread: after each
//! seal in the background, or on the first query that finds one missing,
//! each one incrementally from the one before (`Fold::resume`). The
//! `--ledger` form writes nothing: it uses the checkpoints it finds valid
//! and reads the rest.
//!
//! [`Log`]: crate::log::Log
//! [`Snapshot`]: crate::log::Snapshot

use std::io;
use std::path::PathBuf;

use crate::log::{Log, LogReader, ReadError as LogReadError, SeekError, Snapshot, Summary};

pub mod build;
pub mod checkpoint;
mod pending;
mod scan;
pub mod tail;
pub mod usage;

#[cfg(test)]
mod tests;

/// A log to read: the live one of a running meterd, or a snapshot of a
/// directory. Safe for concurrent use.
pub trait Source: Send + Sync {
    /// A reader of the records after `after` (0: from the first retained).
    fn reader(&self, after: u64) -> Result<LogReader, SeekError>;
    /// The first retained position.
    fn first(&self) -> u64;
    /// The last durable position (0 when there is none).
    fn end(&self) -> u64;
    /// The sealed segments, oldest first.
    fn segments(&self) -> Vec<Summary>;
    /// Where the checkpoint of the sealed segment starting at `first` lives.
    fn checkpoint_path(&self, first: u64) -> PathBuf;
}

impl<R: Send + Sync> Source for Log<R> {
    fn reader(&self, after: u64) -> Result<LogReader, SeekError> {
        Log::reader(self, after)
    }
    fn first(&self) -> u64 {
        Log::first(self)
    }
    fn end(&self) -> u64 {
        Log::end(self)
    }
    fn segments(&self) -> Vec<Summary> {
        Log::segments(self)
    }
    fn checkpoint_path(&self, first: u64) -> PathBuf {
        Log::checkpoint_path(self, first)
    }
}

impl Source for Snapshot {
    fn reader(&self, after: u64) -> Result<LogReader, SeekError> {
        Snapshot::reader(self, after)
    }
    fn first(&self) -> u64 {
        Snapshot::first(self)
    }
    fn end(&self) -> u64 {
        Snapshot::end(self)
    }
    fn segments(&self) -> Vec<Summary> {
        Snapshot::segments(self)
    }
    fn checkpoint_path(&self, first: u64) -> PathBuf {
        Snapshot::checkpoint_path(self, first)
    }
}

/// Why reading the log failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Retention removed records that the read needed.
    #[error("records up to position {} were removed; the first available is {first}", first.saturating_sub(1))]
    Pruned { first: u64 },
    /// The read started past the end of the log.
    #[error("position {after} is beyond the end of the log ({end})")]
    Beyond { after: u64, end: u64 },
    /// A line of the log is not a record of its stream.
    #[error("the record at position {position} cannot be read: {reason}")]
    Damaged { position: u64, reason: String },
    /// Records the log cannot give: damaged on disk, or no file holds them
    /// (the message names stream, position and file).
    #[error("{0}")]
    DataLoss(String),
    #[error("reading the ledger: {0}")]
    Io(#[from] io::Error),
}

impl From<LogReadError> for ReadError {
    fn from(e: LogReadError) -> Self {
        match e {
            LogReadError::Pruned { first } => ReadError::Pruned { first },
            LogReadError::Io(e) => ReadError::Io(e),
            e @ (LogReadError::Damaged { .. } | LogReadError::Missing { .. }) => {
                ReadError::DataLoss(e.to_string())
            }
        }
    }
}

impl From<SeekError> for ReadError {
    fn from(e: SeekError) -> Self {
        match e {
            SeekError::Pruned { first } => ReadError::Pruned { first },
            SeekError::Beyond { after, end } => ReadError::Beyond { after, end },
        }
    }
}
