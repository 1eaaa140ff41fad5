//! A map from ids to slot indexes tuned for the usage scan, which looks an
//! id up for every record of a month of ledger, in a table of some 60,000
//! ids that does not fit the caches.
//!
//! - Ids up to [`INLINE`] bytes (UUIDs with a prefix) are stored inside
//!   the table, one 64-byte bucket each (one cache line), so that confirming
//!   a hit compares bytes the probe already loaded instead of following a
//!   pointer to a string elsewhere on the heap. Longer ids go to an
//!   ordinary map.
//! - The caller hashes the id ([`hash`]) before it looks it up, so that it
//!   can [`prefetch`](IdMap::prefetch) the bucket a few records ahead (see
//!   `events::Groups`): the lookups then overlap their cache misses instead
//!   of waiting for each one.
//! - The hash is FxHash with a final multiply, cheap for short keys: a
//!   lookup is always confirmed by comparing the whole id, so a weak hash
//!   costs speed, never correctness.

use std::collections::HashMap;
use std::hash::Hasher as _;

use rustc_hash::{FxBuildHasher, FxHasher};

/// Longest id stored inline: a bucket is then exactly one cache line.
pub const INLINE: usize = 55;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Bucket {
    /// The hash's low half with its lowest bit set; 0 marks an empty bucket.
    tag: u32,
    slot: u32,
    len: u8,
    bytes: [u8; INLINE],
}

const EMPTY: Bucket = Bucket {
    tag: 0,
    slot: 0,
    len: 0,
    bytes: [0; INLINE],
};

/// The hash [`IdMap`] takes with an id.
pub fn hash(id: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(id);
    // Fx leaves the low bits weak; the table indexes by the high bits of
    // this product, which depend on all of them.
    h.finish().wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn tag(hash: u64) -> u32 {
    (hash as u32) | 1
}

/// Ids to slot indexes. Looking up a known id allocates nothing.
pub struct IdMap {
    /// Open addressing with linear probing, a power of two long, at most
    /// half full (so a probe mostly ends in its first bucket).
    table: Vec<Bucket>,
    /// 64 minus log2 of the table's length: a hash's bucket is `hash >> shift`.
    shift: u32,
    len: usize,
    long: HashMap<Box<[u8]>, u32, FxBuildHasher>,
}

impl Default for IdMap {
    fn default() -> Self {
        IdMap {
            table: vec![EMPTY; 16],
            shift: 60,
            len: 0,
            long: HashMap::default(),
        }
    }
}

impl std::fmt::Debug for IdMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdMap")
            .field("len", &(self.len + self.long.len()))
            .finish_non_exhaustive()
    }
}

impl IdMap {
    fn index(&self, hash: u64) -> usize {
        (hash >> self.shift) as usize
    }

    /// Asks the CPU to load the bucket of `hash` into the cache, so that a
    /// lookup a little later finds it there.
    pub fn prefetch(&self, hash: u64) {
        #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let p = self.table.as_ptr().wrapping_add(self.index(hash));
            // SAFETY: a prefetch is a hint that never faults and reads
            // nothing into the program (the index is in the table anyway);
            // the instruction needs SSE, which the cfg above requires.
            unsafe { _mm_prefetch::<{ _MM_HINT_T0 }>(p.cast::<i8>()) };
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
        let _ = hash;
    }

    /// The slot of `id`, whose [`hash`] is `hash`.
    pub fn get(&self, id: &[u8], hash: u64) -> Option<u32> {
        if id.len() > INLINE {
            return self.long.get(id).copied();
        }
        let mask = self.table.len() - 1;
        let tag = tag(hash);
        let mut i = self.index(hash);
        loop {
            let b = &self.table[i];
            if b.tag == 0 {
                return None;
            }
            if b.tag == tag && usize::from(b.len) == id.len() && b.bytes[..id.len()] == *id {
                return Some(b.slot);
            }
            i = (i + 1) & mask;
        }
    }

    /// Makes room for `more` ids, so that adding them does not grow the
    /// table step by step (each step rehashes every id).
    pub fn reserve(&mut self, more: usize) {
        while (self.len + more) * 2 > self.table.len() {
            self.grow();
        }
    }

    /// Adds `id` (not yet in the map) with its slot.
    pub fn insert(&mut self, id: &[u8], hash: u64, slot: u32) {
        if id.len() > INLINE {
            self.long.insert(id.into(), slot);
            return;
        }
        if (self.len + 1) * 2 > self.table.len() {
            self.grow();
        }
        let mut bytes = [0u8; INLINE];
        bytes[..id.len()].copy_from_slice(id);
        self.place(Bucket {
            tag: tag(hash),
            slot,
            // At most INLINE, checked above.
            len: id.len() as u8,
            bytes,
        });
        self.len += 1;
    }

    /// Puts a bucket in the first free place from its hash's.
    fn place(&mut self, bucket: Bucket) {
        let mask = self.table.len() - 1;
        let h = hash(&bucket.bytes[..usize::from(bucket.len)]);
        let mut i = self.index(h);
        while self.table[i].tag != 0 {
            i = (i + 1) & mask;
        }
        self.table[i] = bucket;
    }

    fn grow(&mut self) {
        let bigger = vec![EMPTY; self.table.len() * 2];
        let old = std::mem::replace(&mut self.table, bigger);
        self.shift -= 1;
        for b in old.into_iter().filter(|b| b.tag != 0) {
            self.place(b);
        }
    }

    /// Every id with its slot, in byte order of the ids.
    pub fn into_sorted(self) -> Vec<(Box<str>, usize)> {
        // Every key came in as a `&str`, so it is UTF-8.
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned().into_boxed_str();
        let mut all: Vec<(Box<str>, usize)> = self
            .table
            .iter()
            .filter(|b| b.tag != 0)
            .map(|b| (text(&b.bytes[..usize::from(b.len)]), b.slot as usize))
            .chain(self.long.iter().map(|(k, &v)| (text(k), v as usize)))
            .collect();
        all.sort_unstable();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_ids_are_kept_apart_and_sorted() {
        let mut m = IdMap::default();
        let long = "x".repeat(INLINE + 1);
        let edge = "y".repeat(INLINE);
        for (i, id) in ["b", "", &long, &edge, "a"].into_iter().enumerate() {
            let h = hash(id.as_bytes());
            assert_eq!(m.get(id.as_bytes(), h), None);
            m.insert(id.as_bytes(), h, i as u32);
            assert_eq!(m.get(id.as_bytes(), h), Some(i as u32));
        }
        assert_eq!(m.get(b"c", hash(b"c")), None);
        let short = "x".repeat(INLINE);
        assert_eq!(m.get(short.as_bytes(), hash(short.as_bytes())), None);
        let sorted: Vec<_> = m.into_sorted().into_iter().map(|(_, i)| i).collect();
        assert_eq!(sorted, [1, 4, 0, 2, 3]);
    }

    #[test]
    fn grows_and_keeps_every_id() {
        let mut m = IdMap::default();
        let ids: Vec<String> = (0..5000).map(|i| format!("vm-{i:08x}")).collect();
        for (i, id) in ids.iter().enumerate() {
            m.insert(id.as_bytes(), hash(id.as_bytes()), i as u32);
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(m.get(id.as_bytes(), hash(id.as_bytes())), Some(i as u32));
            m.prefetch(hash(id.as_bytes()));
        }
        // A colliding hash still finds nothing that is not there.
        assert_eq!(m.get(b"vm-nope", hash(ids[0].as_bytes())), None);
        assert_eq!(m.into_sorted().len(), ids.len());
    }
}
