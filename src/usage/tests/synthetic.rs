//! The synthetic ledger of `usage::synthetic`: small always, 5 M on demand
//! (`cargo test --release --lib usage_synthetic_5m -- --ignored --nocapture`).

use std::time::Instant;

use crate::usage::synthetic;

#[test]
fn usage_synthetic_small() {
    let (rows, anomalies) = synthetic::fold(20_000, 500, 1);
    // 500 VMs (compute and storage) over 31 days in day buckets.
    assert!(rows > 500 && rows <= 1000 * 31, "{rows}");
    assert!(anomalies > 0);
}

#[test]
#[ignore = "timing: 5 M records"]
fn usage_synthetic_5m() {
    let started = Instant::now();
    let (rows, anomalies) = synthetic::fold(5_000_000, 100_000, 1);
    eprintln!(
        "5 M records, 100 k VMs: {rows} rows, {anomalies} anomalies in {:?}",
        started.elapsed()
    );
}
