//! The Bloom filter of a sealed segment's key index (see `keys.rs`): kept
//! in memory while the segment is inside the dedupe window, so that most
//! lookups of a new key end here.

/// About 1% false positives with 6 probes in one 512-bit block.
const BITS_PER_KEY: u64 = 10;
const PROBES: u32 = 6;

/// A blocked Bloom filter: every probe of a key lands in one 64-byte block,
/// so a negative answer costs one cache miss. Written by hand because its
/// bytes are part of the on-disk format and must never change with a crate.
pub(super) struct Bloom {
    blocks: Vec<[u64; 8]>,
}

impl Bloom {
    pub(super) fn build(hashes: impl Iterator<Item = u64>, n: u64) -> Bloom {
        let blocks = (n * BITS_PER_KEY).div_ceil(512).max(1);
        let mut bloom = Bloom {
            blocks: vec![[0u64; 8]; usize::try_from(blocks).unwrap_or(1)],
        };
        for h in hashes {
            let (b, bits) = bloom.probes(h);
            for bit in bits {
                bloom.blocks[b][(bit / 64) as usize] |= 1 << (bit % 64);
            }
        }
        bloom
    }

    /// The block of `h` and the bits within it.
    fn probes(&self, h: u64) -> (usize, impl Iterator<Item = u32>) {
        // The high half picks the block (multiply-shift, no modulo bias);
        // a remix of the whole hash gives six 9-bit positions.
        let b = ((h >> 32) * self.blocks.len() as u64) >> 32;
        let mix = (h ^ (h >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (
            b as usize,
            (0..PROBES).map(move |i| ((mix >> (i * 9)) & 511) as u32),
        )
    }

    pub(super) fn may_contain(&self, h: u64) -> bool {
        let (b, mut bits) = self.probes(h);
        let block = &self.blocks[b];
        bits.all(|bit| block[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    pub(super) fn to_bytes(&self) -> Vec<u8> {
        self.blocks
            .iter()
            .flat_map(|b| b.iter().flat_map(|w| w.to_le_bytes()))
            .collect()
    }

    pub(super) fn from_bytes(bytes: &[u8]) -> Bloom {
        let blocks = bytes
            .chunks_exact(64)
            .map(|c| {
                let mut b = [0u64; 8];
                for (w, s) in b.iter_mut().zip(c.chunks_exact(8)) {
                    *w = u64::from_le_bytes(s.try_into().unwrap_or_default());
                }
                b
            })
            .collect();
        Bloom { blocks }
    }

    /// Its size in 64-byte blocks.
    pub(super) fn block_count(&self) -> usize {
        self.blocks.len()
    }
}
