//! Reading whole lines from a segment by byte offset, with positional reads
//! (`pread`), so that many readers can share one file handle and a line of
//! any length comes out whole.

use super::walk::read_at_most;
use std::fs::File;
use std::io;

/// First read size; a longer line grows the buffer as far as it needs.
const CHUNK: usize = 256 * 1024;

/// Reads the lines of `file` in `[from, end)` in order.
pub(crate) struct Lines<'f> {
    file: &'f File,
    /// File offset of `buf[0]`.
    base: u64,
    /// Offset up to which lines may be read.
    end: u64,
    buf: Vec<u8>,
    /// Next unread byte in `buf`.
    at: usize,
}

impl<'f> Lines<'f> {
    pub fn new(file: &'f File, from: u64, end: u64) -> Lines<'f> {
        Lines {
            file,
            base: from,
            end,
            buf: Vec::new(),
            at: 0,
        }
    }

    /// Offset of the next line.
    #[cfg(test)]
    pub fn offset(&self) -> u64 {
        self.base + self.at as u64
    }

    /// The next complete line (with its `\n`) and its offset; `None` at the
    /// end, or when what is left has no newline (a torn tail).
    pub fn next_line(&mut self) -> io::Result<Option<(u64, &[u8])>> {
        loop {
            if let Some(nl) = memchr::memchr(b'\n', &self.buf[self.at..]) {
                let start = self.at;
                self.at += nl + 1;
                return Ok(Some((self.base + start as u64, &self.buf[start..self.at])));
            }
            let filled_to = self.base + self.buf.len() as u64;
            if filled_to >= self.end {
                return Ok(None);
            }
            // Keep the partial line, drop what was consumed, read more.
            self.buf.drain(..self.at);
            self.base += self.at as u64;
            self.at = 0;
            let have = self.buf.len();
            let want = usize::try_from(self.end - filled_to)
                .unwrap_or(usize::MAX)
                .min(CHUNK.max(have));
            self.buf.resize(have + want, 0);
            let n = read_at_most(self.file, &mut self.buf[have..], filled_to)?;
            self.buf.truncate(have + n);
            if n == 0 {
                // The file is shorter than expected: what is left is torn.
                self.end = filled_to;
                return Ok(None);
            }
        }
    }
}

/// The line that starts at `offset` (with its `\n`), reading no further
/// than `end`. Errors when there is no complete line there.
pub(crate) fn line_at(file: &File, offset: u64, end: u64) -> io::Result<Vec<u8>> {
    let mut lines = Lines::new(file, offset, end);
    match lines.next_line()? {
        Some((_, line)) => Ok(line.to_vec()),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no complete line at offset {offset}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn lines_of_any_length_come_out_whole() {
        let mut f = tempfile::tempfile().unwrap();
        let long = "x".repeat(3 * CHUNK + 17);
        write!(f, "a\n{long}\nb\ntorn").unwrap();
        let len = f.metadata().unwrap().len();
        let mut lines = Lines::new(&f, 0, len);
        let mut got = Vec::new();
        while let Some((off, l)) = lines.next_line().unwrap() {
            got.push((off, l.len()));
        }
        assert_eq!(
            got,
            [(0, 2), (2, long.len() + 1), (long.len() as u64 + 3, 2)]
        );
        assert_eq!(lines.offset(), long.len() as u64 + 5);
        assert_eq!(line_at(&f, 2, len).unwrap().len(), long.len() + 1);
        assert!(line_at(&f, len - 4, len).is_err());
        // A limit inside a line hides it.
        let mut lines = Lines::new(&f, 0, 5);
        assert!(lines.next_line().unwrap().is_some());
        assert!(lines.next_line().unwrap().is_none());
    }
}
