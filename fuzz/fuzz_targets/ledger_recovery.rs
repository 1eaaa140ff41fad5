//! Crash recovery on arbitrary file contents: opening a ledger whose files
//! hold these bytes must not panic; afterwards each file is empty or ends
//! with a newline (a torn tail is cut), and appending still works.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use meterd::ledger::{Fsync, Ledger, LedgerConfig, BATCHES_FILE, ENTRIES_FILE};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let split = data.len() / 2;
    std::fs::write(dir.path().join(ENTRIES_FILE), &data[..split]).expect("write");
    std::fs::write(dir.path().join(BATCHES_FILE), &data[split..]).expect("write");
    let config = LedgerConfig {
        dir: dir.path().to_path_buf(),
        fsync: Fsync::Never,
        fsync_interval: Duration::from_secs(1),
        dedupe_window: Duration::from_secs(7 * 24 * 3600),
    };
    let ledger = Ledger::open(&config);
    if ledger.is_ok() {
        for file in [ENTRIES_FILE, BATCHES_FILE] {
            let text = std::fs::read(dir.path().join(file)).expect("read");
            assert!(text.is_empty() || text.ends_with(b"\n"), "{file}: torn tail left");
        }
    }
});
