//! A map from ids to slot indexes tuned for the usage scan, which looks an
//! id up for every record: ids up to [`INLINE`] bytes (UUIDs with a prefix)
//! are stored inside the table itself, so that confirming a hit compares
//! bytes in the bucket the probe already loaded, instead of following a
//! pointer to a string elsewhere on the heap; the hash is FxHash, cheap for
//! short keys (a lookup is always confirmed by comparing the whole id, so a
//! weak hash costs speed, never correctness).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use rustc_hash::FxBuildHasher;

/// Longest id stored inline: a table entry is then 56 bytes with its value.
const INLINE: usize = 47;

#[derive(Clone, Copy)]
struct Short {
    len: u8,
    bytes: [u8; INLINE],
}

impl Short {
    fn new(id: &str) -> Option<Short> {
        let len = u8::try_from(id.len())
            .ok()
            .filter(|&l| usize::from(l) <= INLINE)?;
        let mut bytes = [0u8; INLINE];
        bytes[..id.len()].copy_from_slice(id.as_bytes());
        Some(Short { len, bytes })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

// Hash and equality as the byte slice's, so that a lookup can borrow the
// caller's `&[u8]` without building a key.
impl Hash for Short {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq for Short {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Short {}

impl Borrow<[u8]> for Short {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::fmt::Debug for Short {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        String::from_utf8_lossy(self.as_bytes()).fmt(f)
    }
}

/// Ids to slot indexes. Looking up a known id allocates nothing.
#[derive(Debug, Default)]
pub struct IdMap {
    short: HashMap<Short, usize, FxBuildHasher>,
    long: HashMap<Box<[u8]>, usize, FxBuildHasher>,
}

impl IdMap {
    pub fn get(&self, id: &str) -> Option<usize> {
        if id.len() <= INLINE {
            self.short.get(id.as_bytes()).copied()
        } else {
            self.long.get(id.as_bytes()).copied()
        }
    }

    pub fn insert(&mut self, id: &str, slot: usize) {
        match Short::new(id) {
            Some(s) => {
                self.short.insert(s, slot);
            }
            None => {
                self.long.insert(id.as_bytes().into(), slot);
            }
        }
    }

    /// Every id with its slot, in byte order of the ids.
    pub fn into_sorted(self) -> Vec<(Box<str>, usize)> {
        // Every key came in as a `&str`, so it is UTF-8.
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned().into_boxed_str();
        let mut all: Vec<(Box<str>, usize)> = self
            .short
            .into_iter()
            .map(|(k, v)| (text(k.as_bytes()), v))
            .chain(self.long.into_iter().map(|(k, v)| (text(&k), v)))
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
            assert_eq!(m.get(id), None);
            m.insert(id, i);
            assert_eq!(m.get(id), Some(i));
        }
        assert_eq!(m.get("c"), None);
        assert_eq!(m.get(&"x".repeat(INLINE)), None);
        let sorted: Vec<_> = m.into_sorted().into_iter().map(|(_, i)| i).collect();
        assert_eq!(sorted, [1, 4, 0, 2, 3]);
    }
}
