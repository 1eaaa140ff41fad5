//! What the writer holds of a stream once it is open: its sealed segments
//! and its active segment. Plain state, below the code that opens, appends
//! to and seals a stream.

use std::fs::File;

use sha2::Sha256;

use super::chain::Head;
use super::index::{ActiveKeys, SealedKeys};
use super::keys::Summary;
use super::times::{Check, Commit};
use super::LogConfig;

/// A sealed segment as the writer keeps it.
pub(crate) struct Sealed {
    pub summary: Summary,
    /// Bytes its records were written in, as recorded (its seal, or its
    /// record file); the file itself may have lost or gained some.
    pub written_len: u64,
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
    pub checks: Vec<Check>,
    pub keys: ActiveKeys,
    /// SHA-256 of `[0, len)`, when this process has seen every byte (it is
    /// `None` after a start that did not read the file; the seal reads it).
    pub hash: Option<Sha256>,
}

pub(crate) struct Opened {
    pub sealed: Vec<Sealed>,
    pub active: Active,
    pub active_bytes_before: u64,
    /// The newest seal of the stream.
    pub head: Option<Head>,
}

/// The dedupe window in nanoseconds.
pub(crate) fn window_nanos(config: &LogConfig) -> i64 {
    i64::try_from(config.dedupe_window.as_nanos()).unwrap_or(i64::MAX)
}
