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
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::bloom::Bloom;

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

struct Header {
    summary: Summary,
    keys_n: u64,
    bloom_blocks: u64,
    fence_every: u64,
    bloom_crc: u32,
    fences_crc: u32,
}

fn parse_header(h: &[u8; HEADER]) -> Result<Header, Invalid> {
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or_default());
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap_or_default());
    if &h[0..8] != MAGIC {
        return Err(Invalid("not a key index".into()));
    }
    if crc32fast::hash(&h[..92]) != u32_at(92) {
        return Err(Invalid("header checksum mismatch".into()));
    }
    if u32_at(84) != 1 {
        return Err(Invalid(format!("unknown version {}", u32_at(84))));
    }
    let fence_every = u64::from(u32_at(72));
    if fence_every == 0 {
        return Err(Invalid("fence interval 0".into()));
    }
    Ok(Header {
        summary: Summary {
            first: u64_at(8),
            count: u64_at(16),
            data_len: u64_at(24),
            received_min: u64_at(32) as i64,
            received_max: u64_at(40) as i64,
            tail_hash: u64_at(64),
        },
        keys_n: u64_at(48),
        bloom_blocks: u64_at(56),
        fence_every,
        bloom_crc: u32_at(76),
        fences_crc: u32_at(80),
    })
}

/// Reads only the summary of an index (for segments outside the window).
pub(crate) fn read_summary(path: &Path) -> Result<Summary, Invalid> {
    let mut h = [0u8; HEADER];
    File::open(path)?.read_exact(&mut h)?;
    Ok(parse_header(&h)?.summary)
}

/// A loaded index: the filter and fences in memory, the keys on disk.
pub(crate) struct KeyIndex {
    file: File,
    keys_off: u64,
    keys_n: u64,
    fence_every: u64,
    /// First hash and CRC of each block of keys.
    fences: Vec<(u64, u32)>,
    bloom: Bloom,
    pub summary: Summary,
}

impl KeyIndex {
    /// Loads the filter and fences and checks them. Blocking.
    pub fn open(path: &Path) -> Result<KeyIndex, Invalid> {
        let mut file = File::open(path)?;
        let file_len = file.metadata()?.len();
        let mut h = [0u8; HEADER];
        file.read_exact(&mut h)?;
        let header = parse_header(&h)?;
        let fences_n = header.keys_n.div_ceil(header.fence_every);
        let bloom_len = header.bloom_blocks.saturating_mul(64);
        let fences_len = fences_n.saturating_mul(16);
        let keys_off = HEADER as u64 + bloom_len + fences_len;
        let expected = keys_off.saturating_add(header.keys_n.saturating_mul(ENTRY as u64));
        if file_len != expected || header.bloom_blocks == 0 {
            return Err(Invalid(format!(
                "length {file_len}, expected {expected} for {} keys",
                header.keys_n
            )));
        }
        let mut bloom_bytes =
            vec![0u8; usize::try_from(bloom_len).map_err(|e| Invalid(e.to_string()))?];
        file.read_exact(&mut bloom_bytes)?;
        if crc32fast::hash(&bloom_bytes) != header.bloom_crc {
            return Err(Invalid("filter checksum mismatch".into()));
        }
        let mut fence_bytes =
            vec![0u8; usize::try_from(fences_len).map_err(|e| Invalid(e.to_string()))?];
        file.read_exact(&mut fence_bytes)?;
        if crc32fast::hash(&fence_bytes) != header.fences_crc {
            return Err(Invalid("fence checksum mismatch".into()));
        }
        let fences = fence_bytes
            .chunks_exact(16)
            .map(|f| {
                (
                    u64::from_le_bytes(f[0..8].try_into().unwrap_or_default()),
                    u32::from_le_bytes(f[8..12].try_into().unwrap_or_default()),
                )
            })
            .collect();
        Ok(KeyIndex {
            file,
            keys_off,
            keys_n: header.keys_n,
            fence_every: header.fence_every,
            fences,
            bloom: Bloom::from_bytes(&bloom_bytes),
            summary: header.summary,
        })
    }

    /// Every key of the index, checking each block. Blocking.
    pub fn read_all(&self) -> Result<Vec<KeyEntry>, Invalid> {
        let mut all = Vec::with_capacity(usize::try_from(self.keys_n).unwrap_or(0));
        let mut buf = Vec::new();
        for (block, fence) in self.fences.iter().enumerate() {
            let start = block as u64 * self.fence_every;
            let n = (self.keys_n - start).min(self.fence_every);
            buf.resize(usize::try_from(n).unwrap_or(0) * ENTRY, 0);
            self.file
                .read_exact_at(&mut buf, self.keys_off + start * ENTRY as u64)?;
            if crc32fast::hash(&buf) != fence.1 {
                return Err(Invalid(format!("key block {block} checksum mismatch")));
            }
            all.extend(buf.chunks_exact(ENTRY).map(|e| KeyEntry {
                hash: u64::from_le_bytes(e[0..8].try_into().unwrap_or_default()),
                offset: u64::from_le_bytes(e[8..16].try_into().unwrap_or_default()),
                received: i64::from_le_bytes(e[16..24].try_into().unwrap_or_default()),
            }));
        }
        Ok(all)
    }

    /// Bytes held in memory.
    pub fn resident_bytes(&self) -> usize {
        self.bloom.block_count() * 64 + self.fences.len() * 16
    }

    /// Candidates for `hash`: `(offset, received)` of every record whose key
    /// has this hash. Blocking (reads a block on a filter hit).
    pub fn lookup(&self, hash: u64) -> Result<Vec<(u64, i64)>, Invalid> {
        let mut found = Vec::new();
        if !self.bloom.may_contain(hash) || self.fences.is_empty() {
            return Ok(found);
        }
        // Equal hashes may straddle a block boundary: start one block early.
        let mut block = self
            .fences
            .partition_point(|f| f.0 < hash)
            .saturating_sub(1);
        let mut buf = Vec::new();
        while block < self.fences.len() {
            let start = block as u64 * self.fence_every;
            let n = (self.keys_n - start).min(self.fence_every);
            buf.resize(usize::try_from(n).unwrap_or(0) * ENTRY, 0);
            self.file
                .read_exact_at(&mut buf, self.keys_off + start * ENTRY as u64)?;
            if crc32fast::hash(&buf) != self.fences[block].1 {
                return Err(Invalid(format!("key block {block} checksum mismatch")));
            }
            for e in buf.chunks_exact(ENTRY) {
                let h = u64::from_le_bytes(e[0..8].try_into().unwrap_or_default());
                if h > hash {
                    return Ok(found);
                }
                if h == hash {
                    found.push((
                        u64::from_le_bytes(e[8..16].try_into().unwrap_or_default()),
                        i64::from_le_bytes(e[16..24].try_into().unwrap_or_default()),
                    ));
                }
            }
            block += 1;
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::super::names::Names;
    use super::*;

    fn summary(count: u64) -> Summary {
        Summary {
            first: 1,
            count,
            data_len: 10,
            received_min: 1,
            received_max: 2,
            tail_hash: 3,
        }
    }

    #[test]
    fn every_key_is_found_and_few_others_are_candidates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.keys");
        let mut keys: Vec<KeyEntry> = (0..10_000u64)
            .map(|i| KeyEntry {
                hash: hash(&format!("key-{i}")),
                offset: i * 100,
                received: i as i64,
            })
            .collect();
        // Two records whose hashes collide, across a block boundary.
        let collide = keys[500].hash;
        for o in [1, 2, 3] {
            keys.push(KeyEntry {
                hash: collide,
                offset: o,
                received: 0,
            });
        }
        write(
            &Names::new(dir.path(), "entries"),
            &path,
            &summary(10_003),
            &mut keys,
        )
        .unwrap();
        let index = KeyIndex::open(&path).unwrap();
        assert_eq!(index.summary, summary(10_003));
        for i in 0..10_000u64 {
            let found = index.lookup(hash(&format!("key-{i}"))).unwrap();
            assert!(found.contains(&(i * 100, i as i64)), "key-{i}");
        }
        assert_eq!(index.lookup(collide).unwrap().len(), 4);
        let false_hits = (0..10_000)
            .filter(|i| {
                !index
                    .lookup(hash(&format!("other-{i}")))
                    .unwrap()
                    .is_empty()
            })
            .count();
        assert_eq!(false_hits, 0, "a hit is only ever an exact hash match");
        let filter_passes = (0..10_000)
            .filter(|i| index.bloom.may_contain(hash(&format!("other-{i}"))))
            .count();
        assert!(
            filter_passes < 300,
            "filter passed {filter_passes} of 10000"
        );
    }

    #[test]
    fn damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.keys");
        let mut keys: Vec<KeyEntry> = (0..1000u64)
            .map(|i| KeyEntry {
                hash: hash(&i.to_string()),
                offset: i,
                received: 0,
            })
            .collect();
        write(
            &Names::new(dir.path(), "entries"),
            &path,
            &summary(1000),
            &mut keys,
        )
        .unwrap();
        let clean = std::fs::read(&path).unwrap();
        // A flipped byte anywhere is caught: at open, or by the lookup that reads it.
        for at in [3, 50, HEADER + 5, clean.len() - 200, clean.len() - 1] {
            let mut bad = clean.clone();
            bad[at] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            let caught = match KeyIndex::open(&path) {
                Err(_) => true,
                Ok(index) => (0..1000u64).any(|i| index.lookup(hash(&i.to_string())).is_err()),
            };
            assert!(caught, "flip at {at}");
        }
        std::fs::write(&path, &clean[..clean.len() - 1]).unwrap();
        assert!(KeyIndex::open(&path).is_err());
    }

    #[test]
    fn an_empty_index_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.keys");
        write(
            &Names::new(dir.path(), "entries"),
            &path,
            &summary(4),
            &mut [],
        )
        .unwrap();
        let index = KeyIndex::open(&path).unwrap();
        assert!(index.lookup(hash("a")).unwrap().is_empty());
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
