//! Encoding and decoding the record file: the header, one group per group
//! commit, and the parser that reads both formats and skips over damage
//! (the layout is in the parent module's doc).

use std::fs::File;
use std::io::{self, Read as _};
use std::path::Path;

use super::{Check, Commit, Times, CHECK, COMMIT, HEADER};
use super::{TAG_COMMIT_1, TAG_COMMIT_2, TAG_HEADER_1, TAG_HEADER_2};

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
