//! The walker's reads of the file: its read-ahead buffer, the newline scans
//! over a group's bytes, and the search near its written place for a record
//! whose bytes moved.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::super::times::Check;
use super::{Walker, CHUNK, MAX_CANDIDATES, WINDOW};

impl Walker<'_> {
    /// Lines in `[start, end)` when it ends with a newline; `None` when not.
    pub(super) fn count_lines(&mut self, start: u64, end: u64) -> io::Result<Option<u64>> {
        if end <= start || self.file_len()? < end {
            return Ok(None);
        }
        let mut n = 0u64;
        let mut at = start;
        let mut last = 0u8;
        while at < end {
            let want = (end - at).min(CHUNK as u64);
            if !self.fetch(at, want)? {
                return Ok(None);
            }
            let s = self.slice(at, want);
            n += memchr::memchr_iter(b'\n', s).count() as u64;
            last = s[s.len() - 1];
            at += want;
        }
        Ok((last == b'\n').then_some(n))
    }

    pub(super) fn find_newline(&mut self, from: u64, end: u64) -> io::Result<Option<u64>> {
        let mut at = from;
        while at < end {
            let want = (end - at).min(CHUNK as u64);
            if !self.fetch(at, want)? {
                return Ok(None);
            }
            if let Some(i) = memchr::memchr(b'\n', self.slice(at, want)) {
                return Ok(Some(at + i as u64));
            }
            at += want;
        }
        Ok(None)
    }

    /// Where the bytes of `check` are, near `around`: the nearest start
    /// whose `len` bytes end with a newline (every record does) and match.
    /// Candidates are found by their ending newline, so garbage before a
    /// record does not hide it.
    pub(super) fn search(&mut self, around: u64, check: Check) -> io::Result<Option<u64>> {
        let len = u64::from(check.len);
        let end_at = around + len - 1;
        let lo = end_at.saturating_sub(WINDOW);
        let hi = end_at.saturating_add(WINDOW).min(self.file_len()?);
        if hi <= lo {
            return Ok(None);
        }
        let mut window = vec![0u8; usize::try_from(hi - lo).unwrap_or(0)];
        let n = read_at_most(self.data, &mut window, lo)?;
        window.truncate(n);
        let mut starts: Vec<u64> = memchr::memchr_iter(b'\n', &window)
            .filter_map(|i| (lo + i as u64 + 1).checked_sub(len))
            .filter(|&s| s != around)
            .collect();
        starts.sort_by_key(|&s| s.abs_diff(around));
        for s in starts.into_iter().take(MAX_CANDIDATES) {
            if self.fetch(s, len)? && check.matches(self.slice(s, len)) {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    pub(super) fn file_len(&self) -> io::Result<u64> {
        Ok(self.data.metadata()?.len())
    }

    /// Makes `buf` hold `[at, at + len)`; false when the file is shorter.
    pub(super) fn fetch(&mut self, at: u64, len: u64) -> io::Result<bool> {
        let end = at.saturating_add(len);
        let have_end = self.base + self.buf.len() as u64;
        if at >= self.base && end <= have_end {
            return Ok(true);
        }
        // Read ahead, but not past what the span holds (a walk of a few
        // records reads a few records).
        let span_end = self
            .span
            .commits
            .last()
            .map_or(self.span.start.1, |c| c.end_offset)
            .saturating_add_signed(self.cursor.shift);
        let ahead = span_end.saturating_sub(at).min(CHUNK as u64);
        let want = usize::try_from(len.max(ahead)).unwrap_or(usize::MAX);
        self.buf.resize(want, 0);
        let n = read_at_most(self.data, &mut self.buf, at)?;
        self.buf.truncate(n);
        self.base = at;
        Ok(n as u64 >= len)
    }

    pub(super) fn slice(&self, at: u64, len: u64) -> &[u8] {
        let from = (at - self.base) as usize;
        &self.buf[from..from + len as usize]
    }
}

/// Fills as much of `buf` as the file has at `offset`.
pub(crate) fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
