//! The receive-time file beside each segment (`entries.times`,
//! `entries.00000000000000000001.times`): a header with the segment's first
//! position, then one record per group commit saying how many records and
//! bytes the segment held once that group was durable, and when.
//!
//! It is the one thing about a record that its ledger line cannot say (the
//! lines stay byte-identical to the Go encoding), so it is written with the
//! data and synced with it. Every record is 32 bytes with its own CRC, so a
//! torn or damaged tail is recognised and cut.

use std::fs::File;
use std::io::{self, Read as _};
use std::path::Path;

/// Bytes per record, header included.
pub(crate) const RECORD: usize = 32;
const TAG_HEADER: u32 = 0x4d54_4831; // "MTH1"
const TAG_COMMIT: u32 = 0x4d54_4331; // "MTC1"

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

/// A decoded receive-time file.
#[derive(Debug)]
pub(crate) struct Times {
    /// First position of the segment, from the header.
    pub first: u64,
    pub commits: Vec<Commit>,
    /// Length of the valid prefix; anything after it is damage.
    pub valid_len: u64,
}

pub(crate) fn header(first: u64, created: i64) -> [u8; RECORD] {
    encode(first, 0, created, TAG_HEADER)
}

pub(crate) fn commit(c: &Commit) -> [u8; RECORD] {
    encode(c.end_count, c.end_offset, c.received, TAG_COMMIT)
}

fn encode(a: u64, b: u64, c: i64, tag: u32) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[0..8].copy_from_slice(&a.to_le_bytes());
    r[8..16].copy_from_slice(&b.to_le_bytes());
    r[16..24].copy_from_slice(&c.to_le_bytes());
    r[24..28].copy_from_slice(&tag.to_le_bytes());
    let crc = crc32fast::hash(&r[..28]);
    r[28..32].copy_from_slice(&crc.to_le_bytes());
    r
}

fn decode(r: &[u8]) -> Option<(u64, u64, i64, u32)> {
    let word = |i: usize| r.get(i..i + 8).and_then(|s| s.try_into().ok());
    let crc = u32::from_le_bytes(r.get(28..32)?.try_into().ok()?);
    if crc32fast::hash(r.get(..28)?) != crc {
        return None;
    }
    Some((
        u64::from_le_bytes(word(0)?),
        u64::from_le_bytes(word(8)?),
        i64::from_le_bytes(word(16)?),
        u32::from_le_bytes(r.get(24..28)?.try_into().ok()?),
    ))
}

/// Decodes a receive-time file. `None` when the header itself is unreadable;
/// otherwise the commits up to the first damaged, torn or out-of-order record.
pub(crate) fn parse(bytes: &[u8]) -> Option<Times> {
    let (first, _, _, tag) = decode(bytes.get(..RECORD)?)?;
    if tag != TAG_HEADER || first == 0 {
        return None;
    }
    let mut commits: Vec<Commit> = Vec::with_capacity(bytes.len() / RECORD);
    let mut valid_len = RECORD as u64;
    for r in bytes[RECORD..].chunks_exact(RECORD) {
        let Some((end_count, end_offset, received, TAG_COMMIT)) = decode(r) else {
            break;
        };
        let c = Commit {
            end_count,
            end_offset,
            received,
        };
        if let Some(prev) = commits.last() {
            // Groups only ever grow the segment, and receive times never go back.
            if c.end_count <= prev.end_count
                || c.end_offset <= prev.end_offset
                || c.received < prev.received
            {
                break;
            }
        }
        commits.push(c);
        valid_len += RECORD as u64;
    }
    Some(Times {
        first,
        commits,
        valid_len,
    })
}

/// Reads and decodes a receive-time file. Blocking.
pub(crate) fn read(path: &Path) -> io::Result<Option<Times>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(parse(&bytes))
}

/// Index of the group that holds the record at `index` (0-based within the
/// segment), or `None` past the last commit.
pub(crate) fn group_of(commits: &[Commit], index: u64) -> Option<usize> {
    let g = commits.partition_point(|c| c.end_count <= index);
    (g < commits.len()).then_some(g)
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

    #[test]
    fn round_trip_and_damage_is_cut() {
        let mut bytes = header(7, 1).to_vec();
        for x in [c(1, 10, 5), c(3, 30, 5), c(4, 41, 9)] {
            bytes.extend_from_slice(&commit(&x));
        }
        let t = parse(&bytes).unwrap();
        assert_eq!(t.first, 7);
        assert_eq!(t.commits.len(), 3);
        assert_eq!(t.valid_len, bytes.len() as u64);

        // A torn last record and a flipped bit both end the valid prefix.
        let torn = &bytes[..bytes.len() - 5];
        assert_eq!(parse(torn).unwrap().commits.len(), 2);
        let mut flipped = bytes.clone();
        flipped[RECORD * 2 + 3] ^= 1;
        let t = parse(&flipped).unwrap();
        assert_eq!(t.commits.len(), 1);
        assert_eq!(t.valid_len, 2 * RECORD as u64);
        // Zeros, as delayed allocation leaves after a power loss, are damage too.
        let mut zeros = bytes[..RECORD * 2].to_vec();
        zeros.extend_from_slice(&[0u8; RECORD * 2]);
        assert_eq!(parse(&zeros).unwrap().commits.len(), 1);
        assert!(parse(&[0u8; RECORD]).is_none());
    }

    #[test]
    fn lookups() {
        let commits = [c(2, 20, 100), c(5, 50, 200)];
        assert_eq!(group_of(&commits, 0), Some(0));
        assert_eq!(group_of(&commits, 1), Some(0));
        assert_eq!(group_of(&commits, 2), Some(1));
        assert_eq!(group_of(&commits, 5), None);
        assert_eq!(received_at_offset(&commits, 0), Some(100));
        assert_eq!(received_at_offset(&commits, 19), Some(100));
        assert_eq!(received_at_offset(&commits, 20), Some(200));
        assert_eq!(received_at_offset(&commits, 50), None);
    }
}
