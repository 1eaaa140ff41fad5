//! The segment key index reader on arbitrary file contents: opening and
//! looking up must never panic (a damaged index is reported and rebuilt by
//! the log, never trusted). The first bytes pick the probes; the rest is
//! the file. Seeded with valid indexes by scripts/fuzz.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("entries.00000000000000000001.keys");
    let (probes, file) = data.split_at(data.len().min(32));
    std::fs::write(&path, file).expect("write");
    let mut hashes: Vec<u64> = probes
        .chunks(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect();
    hashes.extend(["a", "b", "k1"].map(meterd::log::fuzz::hash));
    meterd::log::fuzz::key_index(&path, &hashes);
    meterd::log::fuzz::times(file);
});
