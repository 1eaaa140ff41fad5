//! The dedupe keys of the active segment, in memory: hash to offset, each
//! match confirmed against the stored line (see `index.rs` for the whole
//! index of a stream). Owned by the writer thread.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;

use hashbrown::HashTable;

use super::index::stored_key_is;
use super::keys::{self, KeyEntry};
use super::lines::line_at;
use super::times::{self, Commit};
use super::KeyOf;

/// Keys are xxh3 hashes already: hashing them again would be wasted work.
#[derive(Default)]
pub(crate) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Tables of the active segment's keys; a key's is chosen by bits 32..36
/// of its hash (the table itself places by the low bits and tags by the
/// top ones).
const SHARDS: usize = 16;

/// Keys of the active segment: 13 bytes a key (12 and the table's control
/// byte), not the key itself. A 64 MiB segment of small entries holds some
/// 300,000 keys, and this is most of what a busy meterd keeps in memory:
/// the offset is kept in 32 bits (a `far` map takes the rare records past
/// 4 GiB of one file), and the keys are spread over [`SHARDS`] tables so
/// that growing one, which holds the old and the new table at once, moves
/// a sixteenth of them, not all.
pub(crate) struct ActiveKeys {
    shards: Box<[HashTable<Slot>]>,
    /// Hash to offset for offsets past `u32::MAX`; such a hash is in no
    /// shard.
    far: HashMap<u64, u64, BuildHasherDefault<Prehashed>>,
    /// Keys whose hash collided with another key's (practically never used).
    collided: HashMap<Box<str>, u64>,
}

/// A key's hash (two words) and its record's offset.
#[derive(Clone, Copy)]
struct Slot([u32; 3]);

impl Slot {
    fn new(hash: u64, offset: u32) -> Slot {
        Slot([hash as u32, (hash >> 32) as u32, offset])
    }
    fn hash(&self) -> u64 {
        u64::from(self.0[0]) | (u64::from(self.0[1]) << 32)
    }
    fn offset(&self) -> u64 {
        u64::from(self.0[2])
    }
}

impl Default for ActiveKeys {
    fn default() -> Self {
        ActiveKeys::with_capacity(0)
    }
}

impl ActiveKeys {
    pub fn with_capacity(n: usize) -> ActiveKeys {
        ActiveKeys {
            shards: (0..SHARDS)
                .map(|_| HashTable::with_capacity(n.div_ceil(SHARDS)))
                .collect(),
            far: HashMap::default(),
            collided: HashMap::new(),
        }
    }

    fn shard(&self, hash: u64) -> &HashTable<Slot> {
        &self.shards[(hash >> 32) as usize % SHARDS]
    }

    /// The offset of the latest record whose key has this hash.
    fn get(&self, hash: u64) -> Option<u64> {
        if let Some(&offset) = self.far.get(&hash) {
            return Some(offset);
        }
        self.shard(hash)
            .find(hash, |s| s.hash() == hash)
            .map(Slot::offset)
    }

    /// Makes `offset` the latest record of this hash.
    fn set(&mut self, hash: u64, offset: u64) {
        let shard = &mut self.shards[(hash >> 32) as usize % SHARDS];
        match u32::try_from(offset) {
            Ok(small) => match shard.find_mut(hash, |s| s.hash() == hash) {
                Some(slot) => *slot = Slot::new(hash, small),
                None => {
                    shard.insert_unique(hash, Slot::new(hash, small), Slot::hash);
                }
            },
            Err(_) => {
                if let Ok(slot) = shard.find_entry(hash, |s| s.hash() == hash) {
                    slot.remove();
                }
                self.far.insert(hash, offset);
            }
        }
    }

    /// Remembers `key` at `offset`, replacing an older record of the same
    /// key. `data` is the active file, to tell a collision from the same key.
    pub fn insert(
        &mut self,
        key: &str,
        offset: u64,
        data: &File,
        len: u64,
        key_of: KeyOf,
    ) -> io::Result<()> {
        let h = keys::hash(key);
        match self.get(h) {
            None => self.set(h, offset),
            Some(old) => {
                let line = line_at(data, old, len)?;
                if stored_key_is(&line, key, key_of) {
                    self.set(h, offset);
                } else {
                    self.collided.insert(key.into(), offset);
                }
            }
        }
        Ok(())
    }

    /// [`insert`](Self::insert) for a key known only by hash and the line
    /// at `offset` (recovery scans keep no key strings).
    pub fn insert_hashed(
        &mut self,
        hash: u64,
        offset: u64,
        data: &File,
        len: u64,
        key_of: KeyOf,
    ) -> io::Result<()> {
        if self.get(hash).is_none() {
            self.set(hash, offset);
            return Ok(());
        }
        let line = line_at(data, offset, len)?;
        match key_of(&line) {
            Ok(Some(key)) => self.insert(&key, offset, data, len, key_of),
            _ => Ok(()),
        }
    }

    pub fn len(&self) -> usize {
        let shards: usize = self.shards.iter().map(HashTable::len).sum();
        shards + self.far.len() + self.collided.len()
    }

    /// The offset of the latest record with `key`, confirmed against the file.
    pub(super) fn find(
        &self,
        key: &str,
        data: &File,
        len: u64,
        key_of: KeyOf,
    ) -> io::Result<Option<u64>> {
        if let Some(offset) = self.get(keys::hash(key)) {
            if stored_key_is(&line_at(data, offset, len)?, key, key_of) {
                return Ok(Some(offset));
            }
        }
        Ok(self.collided.get(key).copied())
    }

    /// The keys as index entries, with their receive times.
    pub fn entries(&self, commits: &[Commit]) -> Vec<KeyEntry> {
        let mut out = Vec::with_capacity(self.len());
        let slots = self.shards.iter().flat_map(|t| t.iter().copied());
        extend_entries(&mut out, commits, slots.map(|s| (s.hash(), s.offset())));
        let far = self.far.iter().map(|(&hash, &offset)| (hash, offset));
        let collided = self.collided.iter().map(|(k, &o)| (keys::hash(k), o));
        extend_entries(&mut out, commits, far.chain(collided));
        out
    }

    /// [`entries`](Self::entries), emptying the tables one by one as it
    /// goes, so that a seal never holds all of them and all the entries at
    /// once.
    pub fn take_entries(&mut self, commits: &[Commit]) -> Vec<KeyEntry> {
        let mut out = Vec::with_capacity(self.len());
        for shard in self.shards.iter_mut() {
            let slots = std::mem::take(shard).into_iter();
            extend_entries(&mut out, commits, slots.map(|s| (s.hash(), s.offset())));
        }
        let far = std::mem::take(&mut self.far).into_iter();
        let collided = std::mem::take(&mut self.collided)
            .into_iter()
            .map(|(k, o)| (keys::hash(&k), o));
        extend_entries(&mut out, commits, far.chain(collided));
        out
    }
}

/// Appends `(hash, offset)` pairs as index entries, with the receive time
/// of each offset.
fn extend_entries(
    out: &mut Vec<KeyEntry>,
    commits: &[Commit],
    pairs: impl Iterator<Item = (u64, u64)>,
) {
    out.extend(pairs.map(|(hash, offset)| KeyEntry {
        hash,
        offset,
        received: times::received_at_offset(commits, offset).unwrap_or(0),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_keys_keep_the_latest_offset_below_and_beyond_4_gib() {
        let mut keys = ActiveKeys::default();
        let far = u64::from(u32::MAX) + 10;
        // Hashes that land in the same shard and in different ones.
        let hashes = [1u64, 2, 1 << 32, (3 << 32) | 1, u64::MAX];
        for (i, &h) in hashes.iter().enumerate() {
            keys.set(h, i as u64 * 100);
        }
        assert_eq!(keys.len(), hashes.len());
        for (i, &h) in hashes.iter().enumerate() {
            assert_eq!(keys.get(h), Some(i as u64 * 100), "hash {h:#x}");
        }
        // A later record of the same key past 4 GiB, then of another one.
        keys.set(2, far);
        keys.set(7, far + 500);
        assert_eq!(keys.get(2), Some(far));
        assert_eq!(keys.get(7), Some(far + 500));
        assert_eq!(keys.get(1), Some(0));
        assert_eq!(keys.get(3), None);
        assert_eq!(keys.len(), hashes.len() + 1);
        let sorted = |entries: Vec<KeyEntry>| {
            let mut pairs: Vec<(u64, u64)> = entries.iter().map(|e| (e.hash, e.offset)).collect();
            pairs.sort_unstable();
            pairs
        };
        let listed = sorted(keys.entries(&[]));
        assert_eq!(sorted(keys.take_entries(&[])), listed);
        assert_eq!(keys.len(), 0);
        assert_eq!(
            listed,
            vec![
                (1, 0),
                (2, far),
                (7, far + 500),
                (1 << 32, 200),
                ((3 << 32) | 1, 300),
                (u64::MAX, 400)
            ]
        );
    }

    #[test]
    fn active_keys_grow_to_many_keys() {
        let mut keys = ActiveKeys::with_capacity(10);
        let hash = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for i in 0..100_000u64 {
            keys.set(hash(i), i * 3);
        }
        assert_eq!(keys.len(), 100_000);
        assert!((0..100_000u64).all(|i| keys.get(hash(i)) == Some(i * 3)));
        assert_eq!(keys.get(hash(100_001)), None);
    }
}
