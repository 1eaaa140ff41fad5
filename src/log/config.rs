//! How a stream is opened ([`LogConfig`]) and when its writes reach the
//! disk ([`Fsync`]).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::KeyOf;

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

/// How one stream is opened.
#[derive(Clone, Debug)]
pub struct LogConfig {
    pub dir: PathBuf,
    /// `entries` or `batches`: the files' names.
    pub stream: &'static str,
    pub fsync: Fsync,
    pub fsync_interval: Duration,
    /// Keys received within this window are remembered.
    pub dedupe_window: Duration,
    /// The active file is sealed once it holds this many bytes...
    pub segment_max_bytes: u64,
    /// ...or once its oldest record is this old.
    pub segment_max_age: Duration,
    /// Sealed segments whose newest record is older are deleted.
    pub retention: Option<Duration>,
    /// Oldest sealed segments are deleted while the stream is larger.
    pub retention_bytes: Option<u64>,
    pub key_of: KeyOf,
    /// A faster `key_of` for lines the log wrote and committed itself (it
    /// may skip validating the rest of the line); used at start-up, where
    /// reading the active file's keys is most of the time.
    pub trusted_key_of: Option<KeyOf>,
    /// Seals stay when retention deletes their segments (a ledger: the chain
    /// stays checkable); a spool, which keeps no history, deletes them.
    pub keep_seals: bool,
    /// Through which the files are changed (the file system; tests record
    /// or fail changes here).
    pub disk: super::disk::DiskRef,
}

impl LogConfig {
    /// Refuses a retention that would delete records inside the dedupe
    /// window: their ids would be forgotten early.
    pub fn check(&self) -> Result<(), String> {
        if let Some(r) = self.retention {
            if r < self.dedupe_window {
                return Err(format!(
                    "--retention {} is shorter than --dedupe-window {}: records would be deleted while their ids must still be remembered",
                    humantime::format_duration(r),
                    humantime::format_duration(self.dedupe_window)
                ));
            }
        }
        if self.segment_max_bytes == 0 {
            return Err("--segment-max-bytes must be more than 0".into());
        }
        if self.segment_max_age.is_zero() {
            return Err("--segment-max-age must be more than 0".into());
        }
        Ok(())
    }
}
