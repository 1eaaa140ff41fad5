//! Entry points for the fuzz targets in `fuzz/`; not part of the API.

/// Reads a key index file with any content and looks hashes up in it:
/// an error is fine, a panic or a wrong "found" is not.
pub fn key_index(path: &std::path::Path, probes: &[u64]) {
    let _ = super::keys::read_summary(path);
    if let Ok(index) = super::keys::KeyIndex::open(path) {
        for &h in probes {
            if let Ok(found) = index.lookup(h) {
                // Candidates are only ever exact hash matches; offsets
                // are confirmed against the data by the caller.
                let _ = found;
            }
        }
    }
}

/// Decodes a receive-time file with any content.
pub fn times(bytes: &[u8]) {
    if let Some(t) = super::times::parse(bytes) {
        assert!(t.valid_len as usize <= bytes.len());
        assert!(t
            .commits
            .windows(2)
            .all(|w| w[0].end_count < w[1].end_count));
    }
}

/// A valid key index of `keys`, as a seed for the fuzzer.
pub fn write_key_index(path: &std::path::Path, keys: &[&str]) -> std::io::Result<()> {
    let mut entries: Vec<super::keys::KeyEntry> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| super::keys::KeyEntry {
            hash: super::keys::hash(k),
            offset: i as u64 * 100,
            received: i as i64,
        })
        .collect();
    let summary = super::Summary {
        first: 1,
        count: keys.len() as u64,
        data_len: keys.len() as u64 * 100,
        received_min: 0,
        received_max: keys.len() as i64,
        tail_hash: 0,
    };
    super::keys::write(path, &summary, &mut entries)
}

/// The stable hash of a key.
pub fn hash(key: &str) -> u64 {
    super::keys::hash(key)
}
