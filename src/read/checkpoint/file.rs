//! A checkpoint file's layout, writing and checked reading.
//!
//! Layout: a fixed header ([`Meta`], with its own CRC, so a query can choose
//! among checkpoints by reading headers only), then the block index
//! ([`Blocks`]: the earliest `emitted_at` of every [`BLOCK`](super::BLOCK) records of the
//! segment, so that a query reads only the blocks that can change its
//! answer) with its length and CRC, then the body's length, the body
//! ([`Body`]: the open intervals and the positions of the pending records)
//! and its CRC.
//! Integers are little-endian; strings are a u32 length and UTF-8 bytes.
//!
//! The magic names the version: a file of another version (`MTU1` had no
//! block index, `MTU2` held copies of the pending records where `MTU3`
//! holds their positions) reads as missing, so it is rebuilt (or, in the `--ledger`
//! form, not used).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read as _, Seek as _};
use std::path::Path;

use super::{Blocks, Body, Meta, Pending};
use crate::record::Shape;
use crate::usage::{Checkpoint, Family, OpenState, UnixNanos};

const MAGIC: [u8; 4] = *b"MTU3";
/// Magic, four u64, three i128, one i64, CRC.
const HEADER_LEN: usize = 4 + 4 * 8 + 3 * 16 + 8 + 4;
/// A checkpoint body larger than this is treated as damage, not read.
const MAX_BODY: u64 = 1 << 32;

/// Writes a checkpoint so that a crash leaves the old file or the new one.
/// Blocking.
pub fn write(path: &Path, meta: &Meta, blocks: &Blocks, body: &Body) -> io::Result<()> {
    let mut out = Vec::with_capacity(HEADER_LEN + 64 + body.pending.listed.len() * 8);
    out.extend_from_slice(&MAGIC);
    for v in [meta.from, meta.first, meta.count, meta.data_len] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in [meta.min_emitted, meta.max_emitted, meta.before] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&meta.received_max.to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());

    let mut x = Vec::with_capacity(8 + blocks.min_emitted.len() * 16);
    put_u64(&mut x, blocks.per);
    for m in &blocks.min_emitted {
        x.extend_from_slice(&m.to_le_bytes());
    }
    section(&mut out, &x);

    let mut b = Vec::new();
    put_u64(&mut b, body.state.open.len() as u64);
    for ((family, id), s) in &body.state.open {
        b.push(Family::ALL.iter().position(|f| f == family).unwrap_or(0) as u8);
        put_str(&mut b, id);
        b.extend_from_slice(&s.since.to_le_bytes());
        put_shape(&mut b, &s.shape);
        put_str(&mut b, &s.hypervisor);
        put_u64(&mut b, s.position);
    }
    // 0: no range (positions start at 1).
    put_u64(&mut b, body.pending.rest_from.unwrap_or(0));
    put_u64(&mut b, body.pending.listed.len() as u64);
    for p in &body.pending.listed {
        put_u64(&mut b, *p);
    }
    section(&mut out, &b);
    crate::log::write_atomically(path, &out)
}

/// Appends a section: its length, its bytes, their CRC.
fn section(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
    out.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
}

/// The header of a checkpoint file; `None` when it is missing or damaged.
/// Blocking.
pub fn read_meta(path: &Path) -> Option<Meta> {
    let mut header = [0u8; HEADER_LEN];
    File::open(path).ok()?.read_exact(&mut header).ok()?;
    decode_meta(&header)
}

fn decode_meta(h: &[u8; HEADER_LEN]) -> Option<Meta> {
    let (fields, crc) = h.split_at(HEADER_LEN - 4);
    if fields[..4] != MAGIC || crc32fast::hash(fields).to_le_bytes() != crc {
        return None;
    }
    let mut r = Cursor(&fields[4..]);
    Some(Meta {
        from: r.u64()?,
        first: r.u64()?,
        count: r.u64()?,
        data_len: r.u64()?,
        min_emitted: r.i128()?,
        max_emitted: r.i128()?,
        before: r.i128()?,
        received_max: r.i64()?,
    })
}

/// The block index of a checkpoint, if its file still holds `meta` and an
/// intact index of the right length. Blocking.
pub fn read_blocks(path: &Path, meta: &Meta) -> io::Result<Blocks> {
    let mut f = open_checked(path, meta)?;
    let x = read_section(&mut f, path)?;
    let (per, x) = x
        .split_first_chunk::<8>()
        .map(|(per, rest)| (u64::from_le_bytes(*per), rest))
        .ok_or_else(|| damaged(path, "block index too short"))?;
    let min_emitted: Vec<UnixNanos> = x
        .chunks_exact(16)
        .map(|c| {
            let mut b = [0u8; 16];
            b.copy_from_slice(c);
            i128::from_le_bytes(b)
        })
        .collect();
    if per == 0 || x.len() % 16 != 0 || min_emitted.len() as u64 != meta.count.div_ceil(per) {
        return Err(damaged(path, "block index of the wrong length"));
    }
    Ok(Blocks { per, min_emitted })
}

/// The whole checkpoint, if its file still holds `meta` and an intact body.
/// Blocking.
pub fn read_body(path: &Path, meta: &Meta) -> io::Result<Body> {
    let mut f = open_checked(path, meta)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    // Past the block index and its CRC.
    let skip = u64::from_le_bytes(len)
        .checked_add(4)
        .and_then(|n| i64::try_from(n).ok())
        .ok_or_else(|| damaged(path, "implausible block index length"))?;
    f.seek(io::SeekFrom::Current(skip))?;
    let body = read_section(&mut f, path)?;
    decode_body(&body, meta).ok_or_else(|| damaged(path, "undecodable body"))
}

fn damaged(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("checkpoint {}: {what}", path.display()),
    )
}

/// The file, past a header that must still be `meta`'s.
fn open_checked(path: &Path, meta: &Meta) -> io::Result<File> {
    let mut f = File::open(path)?;
    let mut header = [0u8; HEADER_LEN];
    f.read_exact(&mut header)?;
    if decode_meta(&header).as_ref() != Some(meta) {
        return Err(damaged(path, "replaced since its header was read"));
    }
    Ok(f)
}

/// The next section's bytes, checked against its CRC.
fn read_section(f: &mut File, path: &Path) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_BODY {
        return Err(damaged(path, "implausible section length"));
    }
    let mut b = vec![0u8; usize::try_from(len).map_err(|_| damaged(path, "section length"))? + 4];
    f.read_exact(&mut b)?;
    let crc = b.split_off(b.len() - 4);
    if crc32fast::hash(&b).to_le_bytes()[..] != crc[..] {
        return Err(damaged(path, "section checksum mismatch"));
    }
    Ok(b)
}

fn decode_body(b: &[u8], meta: &Meta) -> Option<Body> {
    let mut r = Cursor(b);
    let n = r.u64()?;
    // Bounded by the bytes left, so a damaged count cannot reserve much.
    let mut open = Vec::with_capacity(usize::try_from(n).ok()?.min(b.len() / 32));
    for _ in 0..n {
        let family = *Family::ALL.get(usize::from(r.u8()?))?;
        let id = r.string()?;
        let state = OpenState {
            since: r.i128()?,
            shape: r.shape()?,
            hypervisor: r.string()?,
            position: r.u64()?,
        };
        open.push(((family, id), state));
    }
    // Written in key order, so this is the bulk build of a sorted sequence,
    // not one search per insert.
    let open: BTreeMap<_, _> = open.into_iter().collect();
    // Every pending position lies in [meta.from, the segment's end], the
    // listed ones ascending and before the range: anything else is damage
    // (a reader would otherwise read records the checkpoint never meant).
    let (lo, hi) = (meta.from, meta.first + meta.count.checked_sub(1)?);
    let rest_from = match r.u64()? {
        0 => None,
        p => Some(Some(p).filter(|p| (lo..=hi).contains(p))?),
    };
    let n = r.u64()?;
    if n.checked_mul(8)? != r.0.len() as u64 {
        return None;
    }
    let mut listed = Vec::with_capacity(usize::try_from(n).ok()?);
    let mut floor = lo;
    for _ in 0..n {
        let p = r.u64()?;
        if p < floor || p > hi || rest_from.is_some_and(|f| p >= f) {
            return None;
        }
        listed.push(p);
        floor = p + 1;
    }
    r.0.is_empty().then_some(Body {
        state: Checkpoint {
            before: meta.before,
            open,
        },
        pending: Pending { listed, rest_from },
    })
}

fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    // Ids and names are bounded by the ledger's limits, far below 4 GiB.
    b.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_shape(b: &mut Vec<u8>, s: &Shape) {
    for v in [s.cpu, s.mem_bytes, s.storage_bytes] {
        b.extend_from_slice(&v.to_le_bytes());
    }
}

/// Reads little-endian values off the front of a slice.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_le_bytes)
    }
    fn i128(&mut self) -> Option<i128> {
        self.take().map(i128::from_le_bytes)
    }
    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(u32::from_le_bytes(self.take()?)).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(s.to_vec()).ok()
    }
    fn shape(&mut self) -> Option<Shape> {
        Some(Shape {
            cpu: self.i64()?,
            mem_bytes: self.i64()?,
            storage_bytes: self.i64()?,
        })
    }
}

#[cfg(test)]
mod tests;
