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

mod format;

pub(crate) use self::format::{encode, group, parse, read};

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
