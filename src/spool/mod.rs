//! The durable spool under a forwarding sink: records wait here, on disk,
//! until the upstream acknowledges them.
//!
//! A spool is a ledger directory of its own (`<ledger>/spool/<sink>/`, with
//! the same group commit, crash recovery and dedupe index) plus, per file, a
//! cursor: the byte offset up to which everything has been delivered. A
//! record leaves the spool only when the cursor passes it, and the cursor
//! moves only on a positive upstream answer (an ack, or a permanent
//! rejection, which goes to `dead-letter.jsonl`). Once everything is
//! delivered the file is emptied. Memory stays bounded: the forwarder reads
//! one window at a time from disk.

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::ledger::{annotate, write_atomically, Journal, Ledger, LedgerConfig};
use crate::sink::Record;
use crate::wire::{decode_batch, decode_entry};

/// Most bytes read from a spool file at once.
pub const WINDOW_BYTES: u64 = 1 << 20;
/// Most records delivered upstream in one call.
pub const WINDOW_RECORDS: usize = 256;

/// Which of a spool's two files.
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

/// A spool directory: the journals and their cursors.
pub struct Spool {
    pub dir: PathBuf,
    pub ledger: std::sync::Arc<Ledger>,
}

/// Records read from a spool file, ready to deliver.
pub struct Window {
    /// Records in file order.
    pub records: Vec<Record>,
    /// Byte offset just past the last line read.
    pub end: u64,
    /// Lines that could not be read; they were moved to quarantine.
    pub quarantined: u64,
}

impl Spool {
    /// Opens (creating) a spool directory. Blocking.
    pub fn open(config: &LedgerConfig) -> io::Result<Spool> {
        let ledger = Ledger::open(config)?;
        Ok(Spool {
            dir: config.dir.clone(),
            ledger: std::sync::Arc::new(ledger),
        })
    }

    pub fn journal(&self, stream: Stream) -> &Journal {
        match stream {
            Stream::Entries => &self.ledger.entries,
            Stream::Batches => &self.ledger.batches,
        }
    }

    pub fn cursor_path(&self, stream: Stream) -> PathBuf {
        self.dir.join(format!("{}.cursor", stream.name()))
    }

    /// The delivered-through offset; 0 when none was stored. An offset past
    /// the end of the file can only be left by a crash during compaction,
    /// after the file was emptied: then it is 0.
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
        let len = self.journal(stream).durable_len();
        Ok(if stored > len { 0 } else { stored })
    }

    /// Complete lines in `[from, durable_len)`: the backlog. Blocking.
    pub fn count_lines(&self, stream: Stream, from: u64) -> io::Result<u64> {
        let journal = self.journal(stream);
        let mut f =
            std::fs::File::open(journal.path()).map_err(|e| annotate(e, "open", journal.path()))?;
        f.seek(SeekFrom::Start(from))?;
        let mut left = journal.durable_len().saturating_sub(from);
        let mut buf = vec![0u8; 64 * 1024];
        let mut lines = 0;
        while left > 0 {
            let n = f.read(&mut buf[..usize::try_from(left.min(64 * 1024)).unwrap_or(0)])?;
            if n == 0 {
                break;
            }
            lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            left -= n as u64;
        }
        Ok(lines)
    }

    pub fn store_cursor(&self, stream: Stream, offset: u64) -> io::Result<()> {
        write_atomically(&self.cursor_path(stream), format!("{offset}\n").as_bytes())
    }

    /// Reads up to a window of whole lines starting at `from`. Lines that do
    /// not decode are appended to `quarantine.jsonl` and skipped. Blocking.
    pub fn read(&self, stream: Stream, from: u64) -> io::Result<Window> {
        let journal = self.journal(stream);
        let len = journal.durable_len();
        let want = (len.saturating_sub(from)).min(WINDOW_BYTES);
        let mut buf = vec![0u8; usize::try_from(want).unwrap_or(0)];
        if want > 0 {
            let mut f = std::fs::File::open(journal.path())
                .map_err(|e| annotate(e, "open", journal.path()))?;
            f.seek(SeekFrom::Start(from))?;
            f.read_exact(&mut buf)?;
        }
        let mut window = Window {
            records: Vec::new(),
            end: from,
            quarantined: 0,
        };
        let mut offset = 0usize;
        while window.records.len() < WINDOW_RECORDS {
            let Some(nl) = buf[offset..].iter().position(|&b| b == b'\n') else {
                if offset == 0 && !buf.is_empty() && want == WINDOW_BYTES {
                    // A single line longer than the window: it cannot be a
                    // record meterd wrote within its limits.
                    self.quarantine(stream, &buf, "line longer than the spool window")?;
                    window.quarantined += 1;
                    offset = buf.len();
                }
                break;
            };
            let line = &buf[offset..offset + nl + 1];
            let decoded = match stream {
                Stream::Entries => decode_entry(line).map(Record::entry),
                Stream::Batches => decode_batch(line).map(Record::batch),
            };
            match decoded {
                Ok(r) => window.records.push(r),
                Err(e) => {
                    self.quarantine(stream, line, &e.to_string())?;
                    window.quarantined += 1;
                }
            }
            offset += nl + 1;
        }
        window.end = from + offset as u64;
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

    /// Records a record the upstream refused for good, with its reason.
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
