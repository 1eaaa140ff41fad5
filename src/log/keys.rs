//! The key index of a sealed segment (`entries.00000000000000000001.keys`):
//! every dedupe key's hash with the offset and receive time of its record,
//! sorted by hash, plus a Bloom filter and a sparse fence table that stay in
//! memory while the segment is inside the dedupe window.
//!
//! A lookup costs one cache line of filter and, on a hit, one read of a
//! block of 128 entries; a hash match is only a candidate, which the caller
//! confirms against the key stored in the segment itself, so a collision can
//! never turn a new record into a "duplicate". The file is derived from the
//! segment and its receive times: when it is missing, does not match the
//! segment, or fails a checksum, it is rebuilt, never trusted over the data.
//!
//! Layout (little-endian): a 96-byte header, the filter (64-byte blocks), the
//! fences (16 bytes each: first hash of a block of keys and the block's CRC),
//! then the keys (24 bytes each: hash, offset, receive time).

use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::bloom::Bloom;

mod read;

pub(crate) use self::read::{read_summary, KeyIndex};

const MAGIC: &[u8; 8] = b"MTRKEYS1";
const HEADER: usize = 96;
/// Keys per fence block: one read of 3 KiB per filter hit.
const FENCE: usize = 128;
const ENTRY: usize = 24;

/// The stable 64-bit hash of a dedupe key. Stored on disk: never change it.
pub(crate) fn hash(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_bytes())
}

/// A hash of the last bytes of a segment, which ties an index to its data.
pub(crate) fn tail_hash(data: &File, data_len: u64) -> io::Result<u64> {
    let start = data_len.saturating_sub(4096);
    let mut buf = vec![0u8; usize::try_from(data_len - start).unwrap_or(0)];
    data.read_exact_at(&mut buf, start)?;
    Ok(xxhash_rust::xxh3::xxh3_64(&buf))
}

/// What a segment's index says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub first: u64,
    pub count: u64,
    pub data_len: u64,
    /// Receive times of the oldest and newest record (unix nanoseconds);
    /// both 0 for an empty segment.
    pub received_min: i64,
    pub received_max: i64,
    pub tail_hash: u64,
}

/// One key of the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct KeyEntry {
    pub hash: u64,
    pub offset: u64,
    pub received: i64,
}

/// Why an index cannot be used; the segment's index is rebuilt.
#[derive(Debug)]
pub(crate) struct Invalid(pub String);

impl From<io::Error> for Invalid {
    fn from(e: io::Error) -> Self {
        Invalid(e.to_string())
    }
}

/// Sorts `keys` and writes the index to `path` through a synced temporary
/// file, so that a crash leaves either no index or a whole one. The caller
/// syncs the directory. Blocking.
pub(crate) fn write(
    names: &super::names::Names,
    path: &Path,
    summary: &Summary,
    keys: &mut [KeyEntry],
) -> io::Result<()> {
    keys.sort_unstable();
    let bloom = Bloom::build(keys.iter().map(|k| k.hash), keys.len() as u64);
    // The table is written block by block from the sorted keys (twice
    // encoded: once for the fences' checksums, which precede it in the file,
    // once to write it) rather than built whole: a 64 MiB segment's keys
    // would otherwise take another 7 MB while the segment is sealed.
    let mut block_bytes = Vec::with_capacity(FENCE * ENTRY);
    let mut fences = Vec::with_capacity(keys.len().div_ceil(FENCE) * 16);
    for block in keys.chunks(FENCE) {
        encode_block(block, &mut block_bytes);
        fences.extend_from_slice(&block[0].hash.to_le_bytes());
        fences.extend_from_slice(&crc32fast::hash(&block_bytes).to_le_bytes());
        fences.extend_from_slice(&[0u8; 4]);
    }
    let bloom_bytes = bloom.to_bytes();
    let mut h = [0u8; HEADER];
    h[0..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&summary.first.to_le_bytes());
    h[16..24].copy_from_slice(&summary.count.to_le_bytes());
    h[24..32].copy_from_slice(&summary.data_len.to_le_bytes());
    h[32..40].copy_from_slice(&summary.received_min.to_le_bytes());
    h[40..48].copy_from_slice(&summary.received_max.to_le_bytes());
    h[48..56].copy_from_slice(&(keys.len() as u64).to_le_bytes());
    h[56..64].copy_from_slice(&(bloom.block_count() as u64).to_le_bytes());
    h[64..72].copy_from_slice(&summary.tail_hash.to_le_bytes());
    h[72..76].copy_from_slice(&(FENCE as u32).to_le_bytes());
    h[76..80].copy_from_slice(&crc32fast::hash(&bloom_bytes).to_le_bytes());
    h[80..84].copy_from_slice(&crc32fast::hash(&fences).to_le_bytes());
    h[84..88].copy_from_slice(&1u32.to_le_bytes());
    let crc = crc32fast::hash(&h[..92]);
    h[92..96].copy_from_slice(&crc.to_le_bytes());

    let tmp = super::names::temporary(path);
    let f = names.create(&tmp, super::disk::Create::Truncate)?;
    let mut w = io::BufWriter::with_capacity(
        1 << 20,
        super::disk::Writer {
            disk: &*names.disk,
            file: &f,
            path: &tmp,
        },
    );
    w.write_all(&h)?;
    w.write_all(&bloom_bytes)?;
    w.write_all(&fences)?;
    for block in keys.chunks(FENCE) {
        encode_block(block, &mut block_bytes);
        w.write_all(&block_bytes)?;
    }
    w.flush()?;
    drop(w);
    names.disk.sync(&f, &tmp)?;
    names.rename(&tmp, path)
}

/// The table bytes of one block of keys, in `out` (cleared first).
fn encode_block(block: &[KeyEntry], out: &mut Vec<u8>) {
    out.clear();
    for k in block {
        out.extend_from_slice(&k.hash.to_le_bytes());
        out.extend_from_slice(&k.offset.to_le_bytes());
        out.extend_from_slice(&k.received.to_le_bytes());
    }
}

/// `scripts/fuzz` seeds the key index fuzzer with valid files written here.
#[cfg(test)]
#[test]
fn writes_fuzz_seeds_when_asked() {
    let Some(dir) = std::env::var_os("METERD_FUZZ_SEED_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    for (name, keys) in [
        ("seed-3", &["a", "b", "k1"][..]),
        ("seed-0", &[][..]),
        (
            "seed-300",
            &(0..300)
                .map(|i| if i % 2 == 0 { "a" } else { "b" })
                .collect::<Vec<_>>()[..],
        ),
    ] {
        let path = dir.join(name);
        super::fuzz::write_key_index(&path, keys).unwrap();
        // The fuzz target reads its probes from the first 32 bytes.
        let mut bytes = vec![0u8; 32];
        bytes.extend(std::fs::read(&path).unwrap());
        std::fs::write(&path, bytes).unwrap();
    }
}
