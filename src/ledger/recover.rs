//! Crash recovery: cutting a torn last line, and rebuilding the dedupe index
//! by reading the ledger itself (the only source of truth).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::annotate;
use super::dedupe::Dedupe;

/// A line's dedupe key and record time (`None` when it has no key), or
/// `Err` when the line is not a valid record.
pub type KeyOf = fn(&[u8]) -> Result<Option<(Box<str>, OffsetDateTime)>, Unreadable>;

/// A ledger line that is not a valid record.
#[derive(Debug)]
pub struct Unreadable;

/// Opens (creating with mode 0600) a journal file for appending and cuts an
/// incomplete last line left by a crash. Returns the file and its length.
/// Files that are not regular (a device, in failure tests) are not inspected.
pub(crate) fn open_repaired(path: &Path) -> io::Result<(File, u64)> {
    let existed = path.exists();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| annotate(e, "open", path))?;
    if !existed {
        // Make the new directory entry durable too, or a crash could lose
        // the whole file along with records acknowledged in it.
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| annotate(e, "sync directory of", path))?;
        }
    }
    let meta = file.metadata().map_err(|e| annotate(e, "stat", path))?;
    if !meta.is_file() {
        return Ok((file, 0));
    }
    let len = meta.len();
    let keep = complete_prefix(&file, len).map_err(|e| annotate(e, "read", path))?;
    if keep < len {
        file.set_len(keep)
            .and_then(|()| file.sync_all())
            .map_err(|e| annotate(e, "cut torn line of", path))?;
        tracing::warn!(
            path = %path.display(),
            cut_bytes = len - keep,
            "cut an incomplete last line left by a crash"
        );
    }
    Ok((file, keep))
}

/// Length of the file up to and including its last newline.
fn complete_prefix(file: &File, len: u64) -> io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Figures from reading a journal at start-up.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub lines: u64,
    /// Lines that are not valid records; they are kept, and logged.
    pub unreadable: u64,
}

/// Reads every line of a journal and remembers the keys within the window.
pub(crate) fn scan(
    path: &Path,
    len: u64,
    key_of: KeyOf,
    index: &mut Dedupe,
    now: OffsetDateTime,
) -> io::Result<Scan> {
    let mut file = File::open(path).map_err(|e| annotate(e, "open", path))?;
    if !file.metadata()?.is_file() {
        return Ok(Scan::default());
    }
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::with_capacity(1 << 20, file.take(len));
    let mut line = Vec::with_capacity(1024);
    let mut scan = Scan::default();
    loop {
        line.clear();
        if reader
            .read_until(b'\n', &mut line)
            .map_err(|e| annotate(e, "read", path))?
            == 0
        {
            break;
        }
        scan.lines += 1;
        match key_of(&line) {
            Ok(Some((key, time))) => index.insert(key, time, now),
            Ok(None) => {}
            Err(Unreadable) => scan.unreadable += 1,
        }
    }
    Ok(scan)
}

#[derive(Deserialize)]
struct EntryKey<'a> {
    #[serde(borrow, default)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    emitted_at: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct BatchKey<'a> {
    #[serde(borrow)]
    uuid: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    created: std::borrow::Cow<'a, str>,
}

/// The `id` and `emitted_at` of an entry line. Accepts any RFC 3339 offset,
/// as Go writes the caller's zone.
pub fn entry_key(line: &[u8]) -> Result<Option<(Box<str>, OffsetDateTime)>, Unreadable> {
    let k: EntryKey = serde_json::from_slice(line).map_err(|_| Unreadable)?;
    let time = OffsetDateTime::parse(&k.emitted_at, &Rfc3339).map_err(|_| Unreadable)?;
    Ok(k.id.filter(|id| !id.is_empty()).map(|id| (id.into(), time)))
}

/// The `uuid` and `created` of a batch line.
pub fn batch_key(line: &[u8]) -> Result<Option<(Box<str>, OffsetDateTime)>, Unreadable> {
    let k: BatchKey = serde_json::from_slice(line).map_err(|_| Unreadable)?;
    let time = OffsetDateTime::parse(&k.created, &Rfc3339).map_err(|_| Unreadable)?;
    Ok(Some((k.uuid.into(), time)))
}
