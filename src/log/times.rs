//! The record file beside each segment (`entries.times`,
//! `entries.00000000000000000001.times`): a header with the segment's first
//! position, then one group per group commit saying how many records and
//! bytes the segment held once that group was durable, when, and for each
//! record of the group its length and CRC-32 (its *check*).
//!
//! It is what the ledger lines cannot say about themselves (the lines stay
//! byte-identical to the Go encoding): receive times, where each record
//! starts and ends, and whether its bytes are still the ones written. It is
//! written with the data and synced with it, so a record is acknowledged
//! only once its check is durable too. Positions come from here (the
//! header's first position, the groups' counts), never from counting
//! newlines, so damage in one segment never moves another's positions.
//!
//! Format 2 (`MTH2`), little-endian:
//! - header, 32 bytes: first position, format (2), created (unix ns),
//!   tag, CRC of the 28 bytes before it;
//! - per group, a 48-byte commit: records and bytes in the segment once the
//!   group was written, receive time, the segment's first position again
//!   (so that a damaged header loses no position), `n` (records in the
//!   group), CRC of the checks, tag, CRC of the 44 bytes before it; then `n`
//!   checks of 8 bytes (length with the `\n`, CRC-32 of the line).
//!
//! Every group says where it starts (its end minus its own records), so a
//! damaged group is skipped over: the parser finds the next valid one, and
//! the records in between keep their positions with an unknown check.
//! Format 1 (`MTH1`, earlier meterd) has 32-byte commits and no checks; it
//! is read as is.

use std::fs::File;
use std::io::{self, Read as _};
use std::path::Path;

/// Bytes of the header (and of a format-1 commit).
pub(crate) const HEADER: usize = 32;
/// Bytes of a format-2 commit, before its checks.
pub(crate) const COMMIT: usize = 48;
/// Bytes of one check.
pub(crate) const CHECK: usize = 8;
const TAG_HEADER_1: u32 = 0x4d54_4831; // "MTH1"
const TAG_COMMIT_1: u32 = 0x4d54_4331; // "MTC1"
const TAG_HEADER_2: u32 = 0x4d54_4832; // "MTH2"
const TAG_COMMIT_2: u32 = 0x4d54_4332; // "MTC2"

/// The state of a segment after one group commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Records in the segment once this group was written.
    pub end_count: u64,
    /// Bytes in the segment once this group was written.
    pub end_offset: u64,
    /// When the group became durable: unix nanoseconds.
    pub received: i64,
}

/// What is known of one record's bytes: their length (with the `\n`) and
/// CRC-32. A length of 0 means unknown (its group's checks did not survive,
/// or the file is of format 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Check {
    pub len: u32,
    pub crc: u32,
}

impl Check {
    pub const UNKNOWN: Check = Check { len: 0, crc: 0 };

    /// The check of a line (with its `\n`). Lines are at most a message in
    /// size, far below 4 GiB; a longer one would be refused before this.
    pub fn of(line: &[u8]) -> Check {
        Check {
            len: u32::try_from(line.len()).unwrap_or(u32::MAX),
            crc: crc32fast::hash(line),
        }
    }

    pub fn is_known(&self) -> bool {
        self.len != 0
    }

    /// Whether `line` is the record this check was taken of.
    pub fn matches(&self, line: &[u8]) -> bool {
        self.is_known() && line.len() == self.len as usize && crc32fast::hash(line) == self.crc
    }
}

/// A decoded record file.
#[derive(Debug, Default)]
pub(crate) struct Times {
    /// First position of the segment, from the header.
    pub first: u64,
    pub commits: Vec<Commit>,
    /// One per record (format 2; [`Check::UNKNOWN`] in groups that were
    /// skipped over); empty for format 1.
    pub checks: Vec<Check>,
    /// Length of the valid prefix: up to the end of the last valid group.
    pub valid_len: u64,
    /// Groups that were damaged and skipped over.
    pub lost_groups: u64,
    /// Length of the file: more than `valid_len` when its tail is torn or
    /// damaged.
    pub len: u64,
}

impl Times {
    /// Records in the segment by these times.
    pub fn count(&self) -> u64 {
        self.commits.last().map_or(0, |c| c.end_count)
    }

    /// Whether every record has a known check.
    pub fn fully_checked(&self) -> bool {
        self.checks.len() as u64 == self.count() && self.checks.iter().all(Check::is_known)
    }
}

/// The header of a format-2 file.
pub(crate) fn header(first: u64, created: i64) -> [u8; HEADER] {
    let mut r = [0u8; HEADER];
    r[0..8].copy_from_slice(&first.to_le_bytes());
    r[8..16].copy_from_slice(&2u64.to_le_bytes());
    r[16..24].copy_from_slice(&created.to_le_bytes());
    r[24..28].copy_from_slice(&TAG_HEADER_2.to_le_bytes());
    let crc = crc32fast::hash(&r[..28]);
    r[28..32].copy_from_slice(&crc.to_le_bytes());
    r
}

/// Appends one group of the segment starting at `first` (its commit, then
/// its records' checks) to `out`.
pub(crate) fn group(first: u64, c: &Commit, checks: &[Check], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + COMMIT + checks.len() * CHECK, 0);
    let (head, body) = out[start..].split_at_mut(COMMIT);
    for (k, dst) in checks.iter().zip(body.chunks_exact_mut(CHECK)) {
        dst[0..4].copy_from_slice(&k.len.to_le_bytes());
        dst[4..8].copy_from_slice(&k.crc.to_le_bytes());
    }
    let checks_crc = crc32fast::hash(body);
    head[0..8].copy_from_slice(&c.end_count.to_le_bytes());
    head[8..16].copy_from_slice(&c.end_offset.to_le_bytes());
    head[16..24].copy_from_slice(&c.received.to_le_bytes());
    head[24..32].copy_from_slice(&first.to_le_bytes());
    let n = u32::try_from(checks.len()).unwrap_or(u32::MAX);
    head[32..36].copy_from_slice(&n.to_le_bytes());
    head[36..40].copy_from_slice(&checks_crc.to_le_bytes());
    head[40..44].copy_from_slice(&TAG_COMMIT_2.to_le_bytes());
    let crc = crc32fast::hash(&head[..44]);
    head[44..48].copy_from_slice(&crc.to_le_bytes());
}

/// A whole format-2 file: the header and one group per commit, `checks`
/// holding every record's check in order.
pub(crate) fn encode(first: u64, created: i64, commits: &[Commit], checks: &[Check]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + commits.len() * COMMIT + checks.len() * CHECK);
    out.extend_from_slice(&header(first, created));
    let mut from = 0u64;
    for c in commits {
        let lo = usize::try_from(from)
            .unwrap_or(usize::MAX)
            .min(checks.len());
        let hi = usize::try_from(c.end_count)
            .unwrap_or(usize::MAX)
            .min(checks.len());
        group(first, c, &checks[lo..hi.max(lo)], &mut out);
        from = c.end_count;
    }
    out
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?))
}

/// Decodes a record file. A damaged header leaves `first` 0 (unknown:
/// the caller knows it from elsewhere) and the groups are still read;
/// `None` when there is neither a header nor a group.
pub(crate) fn parse(bytes: &[u8]) -> Option<Times> {
    let mut t = parse_any(bytes)?;
    t.len = bytes.len() as u64;
    Some(t)
}

fn parse_any(bytes: &[u8]) -> Option<Times> {
    let h = bytes.get(..HEADER)?;
    let valid = u32_at(h, 28).is_some_and(|crc| crc32fast::hash(&h[..28]) == crc);
    let first = if valid { u64_at(h, 0)? } else { 0 };
    match u32_at(h, 24)? {
        TAG_HEADER_1 if valid && first > 0 => Some(parse_1(first, bytes)),
        TAG_HEADER_2 if valid && first > 0 => Some(parse_2(first, bytes)),
        _ => {
            let t = parse_2(0, bytes);
            (!t.commits.is_empty()).then_some(t)
        }
    }
}

/// Format 1: fixed 32-byte commits, up to the first damaged one.
fn parse_1(first: u64, bytes: &[u8]) -> Times {
    let mut t = Times {
        first,
        valid_len: HEADER as u64,
        ..Times::default()
    };
    for r in bytes[HEADER..].chunks_exact(HEADER) {
        let ok = u32_at(r, 28).is_some_and(|crc| crc32fast::hash(&r[..28]) == crc)
            && u32_at(r, 24) == Some(TAG_COMMIT_1);
        if !ok {
            break;
        }
        let c = Commit {
            end_count: u64_at(r, 0).unwrap_or(0),
            end_offset: u64_at(r, 8).unwrap_or(0),
            received: u64_at(r, 16).unwrap_or(0) as i64,
        };
        if let Some(prev) = t.commits.last() {
            // Groups only ever grow the segment, and receive times never go back.
            if c.end_count <= prev.end_count
                || c.end_offset <= prev.end_offset
                || c.received < prev.received
            {
                break;
            }
        } else if c.end_count == 0 || c.end_offset == 0 {
            break;
        }
        t.commits.push(c);
        t.valid_len += HEADER as u64;
    }
    t
}

/// One valid format-2 group at `at`: its commit, where it starts (records,
/// bytes), its checks' bytes and its length in the file.
struct Group<'a> {
    commit: Commit,
    /// The segment's first position, as the group says it.
    first: u64,
    start_count: u64,
    start_offset: u64,
    checks: &'a [u8],
    len: usize,
}

fn group_at(bytes: &[u8], at: usize) -> Option<Group<'_>> {
    let head = bytes.get(at..at.checked_add(COMMIT)?)?;
    if u32_at(head, 40)? != TAG_COMMIT_2 || crc32fast::hash(&head[..44]) != u32_at(head, 44)? {
        return None;
    }
    let n = u32_at(head, 32)? as usize;
    let body_at = at + COMMIT;
    let checks = bytes.get(body_at..body_at.checked_add(n.checked_mul(CHECK)?)?)?;
    if n == 0 || crc32fast::hash(checks) != u32_at(head, 36)? {
        return None;
    }
    let commit = Commit {
        end_count: u64_at(head, 0)?,
        end_offset: u64_at(head, 8)?,
        received: u64_at(head, 16)? as i64,
    };
    let mut group_bytes = 0u64;
    for k in checks.chunks_exact(CHECK) {
        let len = u64::from(u32_at(k, 0)?);
        if len == 0 {
            return None;
        }
        group_bytes += len;
    }
    Some(Group {
        commit,
        first: u64_at(head, 24)?,
        start_count: commit.end_count.checked_sub(n as u64)?,
        start_offset: commit.end_offset.checked_sub(group_bytes)?,
        checks,
        len: COMMIT + n * CHECK,
    })
}

/// Format 2: every valid group in order. A damaged group is skipped over
/// (the next valid group that starts at or after the last one's end is
/// found byte by byte); its records get a commit of their own, received
/// when the next group was, with unknown checks. A torn or damaged tail
/// with no valid group after it ends the file.
fn parse_2(first: u64, bytes: &[u8]) -> Times {
    let mut t = Times {
        first,
        valid_len: HEADER as u64,
        ..Times::default()
    };
    let mut at = HEADER;
    let (mut end_count, mut end_offset, mut received) = (0u64, 0u64, i64::MIN);
    while at < bytes.len() {
        let fits = |g: &Group<'_>| {
            (t.first == 0 || g.first == t.first)
                && g.start_count >= end_count
                && g.start_offset >= end_offset
                && (g.start_count > end_count) == (g.start_offset > end_offset)
                && g.commit.received >= received
        };
        let found = match group_at(bytes, at).filter(fits) {
            Some(g) => Some((at, g)),
            None => (at + 1..bytes.len().saturating_sub(COMMIT - 1))
                .filter(|&p| u32_at(bytes, p + 40) == Some(TAG_COMMIT_2))
                .find_map(|p| group_at(bytes, p).filter(fits).map(|g| (p, g))),
        };
        let Some((p, g)) = found else { break };
        if t.first == 0 {
            // The header was damaged: every group names the first position.
            t.first = g.first;
        }
        if p != at || g.start_count > end_count {
            t.lost_groups += 1;
        }
        if g.start_count > end_count {
            // Records whose group was lost: their place is known from the
            // groups around them, their bytes can no longer be checked.
            t.checks.extend(std::iter::repeat_n(
                Check::UNKNOWN,
                (g.start_count - end_count) as usize,
            ));
            t.commits.push(Commit {
                end_count: g.start_count,
                end_offset: g.start_offset,
                received: g.commit.received,
            });
        }
        t.checks.extend(g.checks.chunks_exact(CHECK).map(|k| Check {
            len: u32_at(k, 0).unwrap_or(0),
            crc: u32_at(k, 4).unwrap_or(0),
        }));
        t.commits.push(g.commit);
        (end_count, end_offset, received) =
            (g.commit.end_count, g.commit.end_offset, g.commit.received);
        at = p + g.len;
        t.valid_len = at as u64;
    }
    t
}

/// Reads and decodes a record file. Blocking.
pub(crate) fn read(path: &Path) -> io::Result<Option<Times>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(parse(&bytes))
}

/// When the record starting at byte `offset` was received.
pub(crate) fn received_at_offset(commits: &[Commit], offset: u64) -> Option<i64> {
    let g = commits.partition_point(|c| c.end_offset <= offset);
    commits.get(g).map(|c| c.received)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(end_count: u64, end_offset: u64, received: i64) -> Commit {
        Commit {
            end_count,
            end_offset,
            received,
        }
    }

    fn k(len: u32, crc: u32) -> Check {
        Check { len, crc }
    }

    /// Three groups: 1 record of 10 bytes, 2 of 10, 1 of 11.
    fn sample() -> (Vec<Commit>, Vec<Check>, Vec<u8>) {
        let commits = vec![c(1, 10, 5), c(3, 30, 5), c(4, 41, 9)];
        let checks = vec![k(10, 1), k(10, 2), k(10, 3), k(11, 4)];
        let bytes = encode(7, 1, &commits, &checks);
        (commits, checks, bytes)
    }

    #[test]
    fn round_trip_and_a_torn_tail_is_cut() {
        let (commits, checks, bytes) = sample();
        let t = parse(&bytes).unwrap();
        assert_eq!(t.first, 7);
        assert_eq!(t.commits, commits);
        assert_eq!(t.checks, checks);
        assert_eq!(t.valid_len, bytes.len() as u64);
        assert!(t.fully_checked());
        assert_eq!(t.lost_groups, 0);

        // A torn last group ends the valid prefix.
        let torn = &bytes[..bytes.len() - 5];
        let t = parse(torn).unwrap();
        assert_eq!(t.commits.len(), 2);
        assert_eq!(t.checks.len(), 3);
        // Zeros, as delayed allocation leaves after a power loss, are damage too.
        let mut zeros = bytes[..HEADER + COMMIT + CHECK].to_vec();
        zeros.extend_from_slice(&[0u8; 200]);
        assert_eq!(parse(&zeros).unwrap().commits.len(), 1);
        assert!(parse(&[0u8; HEADER]).is_none());
        // A damaged header: the groups are still read, and name the first
        // position too.
        let mut head = bytes.clone();
        head[2] ^= 1;
        let t = parse(&head).unwrap();
        assert_eq!((t.first, t.count()), (7, 4));
    }

    #[test]
    fn a_damaged_group_in_the_middle_is_skipped_over_keeping_positions() {
        let (_, _, bytes) = sample();
        // Flip a bit in the second group's commit, then in one of its checks.
        let second = HEADER + COMMIT + CHECK;
        for at in [second + 3, second + COMMIT + 5] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 1;
            let t = parse(&damaged).unwrap();
            assert_eq!(t.lost_groups, 1, "flip at {at}");
            // The lost group becomes a commit of its own with unknown checks,
            // received when the group after it was.
            assert_eq!(t.commits, [c(1, 10, 5), c(3, 30, 9), c(4, 41, 9)]);
            assert_eq!(
                t.checks,
                [k(10, 1), Check::UNKNOWN, Check::UNKNOWN, k(11, 4)]
            );
            assert!(!t.fully_checked());
            assert_eq!(t.valid_len, bytes.len() as u64);
        }
        // A byte inserted inside the file: the groups after it are found again.
        let mut inserted = bytes.clone();
        inserted.insert(second + 7, 0xAA);
        let t = parse(&inserted).unwrap();
        assert_eq!(t.count(), 4);
        assert_eq!(t.checks[3], k(11, 4));
    }

    #[test]
    fn format_1_is_read_without_checks() {
        let mut bytes = Vec::new();
        let enc = |a: u64, b: u64, x: i64, tag: u32| {
            let mut r = [0u8; HEADER];
            r[0..8].copy_from_slice(&a.to_le_bytes());
            r[8..16].copy_from_slice(&b.to_le_bytes());
            r[16..24].copy_from_slice(&x.to_le_bytes());
            r[24..28].copy_from_slice(&tag.to_le_bytes());
            let crc = crc32fast::hash(&r[..28]);
            r[28..32].copy_from_slice(&crc.to_le_bytes());
            r
        };
        bytes.extend_from_slice(&enc(7, 0, 1, TAG_HEADER_1));
        bytes.extend_from_slice(&enc(2, 20, 5, TAG_COMMIT_1));
        bytes.extend_from_slice(&enc(3, 31, 6, TAG_COMMIT_1));
        let t = parse(&bytes).unwrap();
        assert_eq!((t.first, t.count(), t.checks.len()), (7, 3, 0));
        assert!(!t.fully_checked());
        let mut flipped = bytes.clone();
        flipped[HEADER * 2 + 3] ^= 1;
        assert_eq!(parse(&flipped).unwrap().commits.len(), 1);
    }

    #[test]
    fn checks_tell_a_record_from_a_damaged_one() {
        let line = b"{\"a\":1}\n";
        let check = Check::of(line);
        assert!(check.matches(line));
        assert!(!check.matches(b"{\"a\":2}\n"));
        assert!(!check.matches(b"{\"a\":1}\x0b"));
        assert!(!Check::UNKNOWN.matches(b""));
    }

    #[test]
    fn lookups() {
        let commits = [c(2, 20, 100), c(5, 50, 200)];
        assert_eq!(received_at_offset(&commits, 0), Some(100));
        assert_eq!(received_at_offset(&commits, 19), Some(100));
        assert_eq!(received_at_offset(&commits, 20), Some(200));
        assert_eq!(received_at_offset(&commits, 50), None);
    }
}
