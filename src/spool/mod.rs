//! The durable spool under a forwarding sink: records wait here, on disk,
//! until the upstream acknowledges them.
//!
//! A spool is a ledger directory of its own (`<spool-dir>/<sink>/`: the same
//! log, group commit, crash recovery and dedupe index) plus, per stream, a
//! cursor: the last position delivered, stored through a synced rename. The
//! cursor moves only on a final upstream answer (an ack, or a permanent
//! rejection, which goes to `dead-letter.jsonl`); sealed segments whose
//! records are all delivered are deleted. Reading is by whole line, so any
//! record the spool accepted is forwarded whole, and memory stays bounded:
//! the forwarder reads one window at a time from disk.

use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::ledger::{annotate, write_atomically, Ledger, LedgerConfig};
use crate::log::{Log, LogLine, LogReader, ReadError};
use crate::wire::Record;
use crate::wire::{decode_batch, decode_entry};

/// Most bytes read for one window (a longer record still comes whole).
pub const WINDOW_BYTES: usize = 1 << 20;
/// Most records delivered upstream in one window.
pub const WINDOW_RECORDS: usize = 256;
/// Spool segments are small, so that delivered records leave the disk soon.
pub const SEGMENT_BYTES: u64 = 4 << 20;

/// Which of a spool's two streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Entries,
    Batches,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Entries => "entries",
            Stream::Batches => "batches",
        }
    }
}

/// A spool directory: the logs and their cursors.
pub struct Spool {
    pub dir: PathBuf,
    pub ledger: Arc<Ledger>,
}

/// Records read from a spool, ready to deliver.
pub struct Window {
    /// `(position, record)` in log order.
    pub records: Vec<(u64, Record)>,
    /// The last position read (delivered once every record has an answer).
    pub last: Option<u64>,
    /// Receive time of the oldest record, unix nanoseconds.
    pub oldest_received: Option<i64>,
    /// Lines that could not be decoded; they were moved to quarantine.
    pub quarantined: u64,
}

impl Spool {
    /// Opens (creating) a spool directory. Blocking.
    pub fn open(config: &LedgerConfig) -> io::Result<Spool> {
        let mut config = config.clone();
        config.segment_max_bytes = config.segment_max_bytes.min(SEGMENT_BYTES);
        // A spool keeps what is not delivered, whatever its age.
        config.retention = None;
        config.retention_bytes = None;
        config.keep_seals = false;
        let ledger = Ledger::open(&config)?;
        Ok(Spool {
            dir: config.dir.clone(),
            ledger: Arc::new(ledger),
        })
    }

    pub fn log(&self, stream: Stream) -> &Log<Record> {
        match stream {
            Stream::Entries => &self.ledger.entries,
            Stream::Batches => &self.ledger.batches,
        }
    }

    pub fn cursor_path(&self, stream: Stream) -> PathBuf {
        self.dir.join(format!("{}.cursor", stream.name()))
    }

    /// The last delivered position; 0 when none was stored. Blocking.
    pub fn load_cursor(&self, stream: Stream) -> io::Result<u64> {
        let path = self.cursor_path(stream);
        let stored = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("cursor {}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(annotate(e, "read", &path)),
        };
        let log = self.log(stream);
        if stored > log.end() {
            // Only possible if the spool's files were removed by hand:
            // deliver all that is there again rather than skip a record.
            tracing::warn!(spool = %self.dir.display(), stream = stream.name(), cursor = stored, end = log.end(), "spool cursor is past the end of its log; delivering from the start");
            return Ok(0);
        }
        Ok(stored.max(log.first().saturating_sub(1)))
    }

    /// Stores the last delivered position. Blocking.
    pub fn store_cursor(&self, stream: Stream, position: u64) -> io::Result<()> {
        write_atomically(
            &self.cursor_path(stream),
            format!("{position}\n").as_bytes(),
        )
    }

    /// Reads the next window at `reader`. Lines that do not decode are
    /// appended to `quarantine.jsonl` and skipped. Blocking.
    pub fn read(&self, stream: Stream, reader: &mut LogReader) -> io::Result<Window> {
        let lines = match reader.read(WINDOW_RECORDS, WINDOW_BYTES) {
            Ok(lines) => lines,
            Err(ReadError::Io(e)) => return Err(e),
            Err(e @ ReadError::Pruned { .. }) => return Err(io::Error::other(e.to_string())),
            // Damaged on disk (or gone): set aside, and delivery goes on
            // with the records behind it (the reader is past it).
            Err(e @ (ReadError::Damaged { .. } | ReadError::Missing { .. })) => {
                let (raw, records) = match &e {
                    ReadError::Damaged { raw, .. } => (raw.as_slice(), 1),
                    ReadError::Missing { from, to, .. } => (&[][..], to - from + 1),
                    _ => (&[][..], 0),
                };
                self.quarantine(stream, raw, &e.to_string())?;
                return Ok(Window {
                    records: Vec::new(),
                    last: Some(reader.next_position() - 1),
                    oldest_received: None,
                    quarantined: records,
                });
            }
        };
        let mut window = Window {
            records: Vec::with_capacity(lines.len()),
            last: lines.last().map(|l| l.position),
            oldest_received: lines.first().map(|l| l.received),
            quarantined: 0,
        };
        for LogLine { position, line, .. } in lines {
            let decoded = match stream {
                Stream::Entries => decode_entry(&line).map(Record::entry),
                Stream::Batches => decode_batch(&line).map(Record::batch),
            };
            match decoded {
                Ok(r) => window.records.push((position, r)),
                Err(e) => {
                    self.quarantine(stream, &line, &e.to_string())?;
                    window.quarantined += 1;
                }
            }
        }
        Ok(window)
    }

    fn quarantine(&self, stream: Stream, line: &[u8], why: &str) -> io::Result<()> {
        tracing::error!(spool = %self.dir.display(), stream = stream.name(), %why, "unreadable spool record moved to quarantine.jsonl");
        let mut out = Vec::with_capacity(line.len() + 64);
        out.extend_from_slice(b"{\"stream\":");
        crate::wire::string(stream.name(), &mut out);
        out.extend_from_slice(b",\"reason\":");
        crate::wire::string(why, &mut out);
        out.extend_from_slice(b",\"line\":");
        crate::wire::string(
            String::from_utf8_lossy(line).trim_end_matches('\n'),
            &mut out,
        );
        out.extend_from_slice(b"}\n");
        append_synced(&self.dir.join("quarantine.jsonl"), &out)
    }

    /// Records a record the upstream refused for good, with its reason. Blocking.
    pub fn dead_letter(&self, record: &Record, why: &str) -> io::Result<()> {
        let mut out = Vec::with_capacity(record.line.len() + 64);
        out.extend_from_slice(b"{\"reason\":");
        crate::wire::string(why, &mut out);
        out.extend_from_slice(b",\"record\":");
        out.extend_from_slice(record.line.strip_suffix(b"\n").unwrap_or(&record.line));
        out.extend_from_slice(b"}\n");
        append_synced(&self.dir.join("dead-letter.jsonl"), &out)
    }
}

fn append_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| annotate(e, "open", path))?;
    f.write_all(data)?;
    f.sync_data()
}
