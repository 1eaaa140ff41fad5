//! Crash recovery on arbitrary file contents: opening a ledger whose files
//! hold these bytes (an older meterd's single files, or an active file with
//! its receive times) must not panic; afterwards the active files are empty
//! or end with a newline (a damaged tail is cut), and appending still works.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meterd::ledger::{Fsync, Ledger, LedgerConfig, BATCHES_FILE, ENTRIES_FILE};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let (times, rest) = data.split_at(data.len().min(data.first().copied().unwrap_or(0) as usize));
    let split = rest.len() / 2;
    std::fs::write(dir.path().join(ENTRIES_FILE), &rest[..split]).expect("write");
    std::fs::write(dir.path().join(BATCHES_FILE), &rest[split..]).expect("write");
    if !times.is_empty() {
        std::fs::write(dir.path().join("entries.times"), times).expect("write");
    }
    let mut config = LedgerConfig::new(dir.path());
    config.fsync = Fsync::Never;
    let ledger = Ledger::open(&config);
    if ledger.is_ok() {
        for file in [ENTRIES_FILE, BATCHES_FILE] {
            let text = std::fs::read(dir.path().join(file)).expect("read");
            assert!(text.is_empty() || text.ends_with(b"\n"), "{file}: torn tail left");
        }
    }
});
