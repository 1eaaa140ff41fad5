//! Writing a log directory with chosen receive times, for tests and
//! benchmarks (a live writer stamps its own clock, so it cannot make a month
//! of history in a second). Not part of the API.

use std::fs::File;
use std::io::{self, BufWriter, Write as _};
use std::path::Path;

use super::names::{Names, DATA, TIMES};
use super::segment::write_times;
use super::times::{Check, Commit};

/// Writes one segment of `stream` in `dir` starting at position `first`:
/// sealed (`S.<first>.jsonl`, `.times`) or the active file (`S.jsonl`,
/// `S.times`). Each record is a line (with its `\n`) and its receive time;
/// consecutive records with the same receive time form one group commit.
/// Returns how many records were written. Blocking.
pub fn write_segment<'a>(
    dir: &Path,
    stream: &'static str,
    first: u64,
    sealed: bool,
    records: impl IntoIterator<Item = (&'a [u8], i64)>,
) -> io::Result<u64> {
    let names = Names::new(dir, stream);
    let (data_path, times_path) = if sealed {
        (names.sealed(first, DATA), names.sealed(first, TIMES))
    } else {
        (names.active_data(), names.active_times())
    };
    let mut data = BufWriter::with_capacity(1 << 20, File::create(&data_path)?);
    let mut commits: Vec<Commit> = Vec::new();
    let mut checks: Vec<Check> = Vec::new();
    let (mut count, mut len) = (0u64, 0u64);
    for (line, received) in records {
        data.write_all(line)?;
        checks.push(Check::of(line));
        count += 1;
        len += line.len() as u64;
        match commits.last_mut() {
            Some(c) if c.received == received => {
                c.end_count = count;
                c.end_offset = len;
            }
            _ => commits.push(Commit {
                end_count: count,
                end_offset: len,
                received,
            }),
        }
    }
    data.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    write_times(
        &names,
        &times_path,
        first,
        &commits,
        &checks,
        super::now_nanos(),
    )?;
    Ok(count)
}
