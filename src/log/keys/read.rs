//! Reading a key index back: its summary alone (for segments outside the
//! window), or the loaded [`KeyIndex`], its filter and fences in memory,
//! and its lookups.

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::super::bloom::Bloom;
use super::{Invalid, KeyEntry, Summary, ENTRY, HEADER, MAGIC};

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
    use super::super::super::names::Names;
    use super::super::{hash, write};
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
