//! A synthetic ledger pushed through the engine, for timing it:
//! `cargo test --release --lib usage_synthetic_5m -- --ignored --nocapture`.

use std::fmt::Write as _;

use time::OffsetDateTime;

use super::{Granularity, Query, UnixNanos, Usage};
use crate::record::{Entry, Kind, Shape};

const SEC: UnixNanos = 1_000_000_000;
/// 2026-03-01T00:00:00Z: the month includes Berlin's spring-forward.
const BASE: UnixNanos = 1_772_323_200 * SEC;
const MONTH: UnixNanos = 31 * 86_400 * SEC;

/// Pushes `records` lifecycle entries over `ids` VMs (compute and storage,
/// alternating start and stop per VM, an occasional resize, duplicate,
/// orphan or mismatch) through
/// a one-month query with day buckets in Europe/Berlin, in log order, and
/// returns (rows, anomalies). Entries are generated one at a time into one
/// reused `Entry`, so the only memory that grows is the engine's.
#[doc(hidden)]
pub fn fold(records: u64, ids: u64, seed: u64) -> (usize, usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let ids = ids.max(1);
    let query = Query {
        start: BASE,
        end: BASE + MONTH,
        granularity: Granularity::Day,
        time_zone: "Europe/Berlin".into(),
        as_of: None,
        families: Vec::new(),
        id: None,
        now: BASE + MONTH,
    };
    let Ok(mut usage) = Usage::new(query) else {
        return (0, 0);
    };
    let mut running = vec![false; usize::try_from(ids * 2).unwrap_or(0)];
    let mut entry = Entry {
        kind: Kind::VmComputeStart,
        vm_id: String::new(),
        snapshot_id: String::new(),
        source_snapshot_id: String::new(),
        reason: None,
        hypervisor: String::new(),
        shape: Shape::default(),
        emitted_at: OffsetDateTime::UNIX_EPOCH,
        id: String::new(),
    };
    let step = MONTH / UnixNanos::from(records.max(1));
    for position in 1..=records {
        let vm = rng.u64(..ids);
        let storage = rng.u8(..4) == 0;
        let slot = &mut running[usize::try_from(vm * 2 + u64::from(storage)).unwrap_or(0)];
        // Mostly well-formed lifecycles; one in 50 records breaks the pattern.
        let start = if rng.u8(..50) == 0 {
            rng.bool()
        } else {
            !*slot
        };
        *slot = start;
        entry.kind = match (storage, start) {
            (false, true) => Kind::VmComputeStart,
            (false, false) => Kind::VmComputeStop,
            (true, true) => Kind::VmStorageStart,
            (true, false) => Kind::VmStorageStop,
        };
        entry.vm_id.clear();
        let _ = write!(entry.vm_id, "vm-{vm:08}");
        entry.hypervisor.clear();
        let _ = write!(entry.hypervisor, "host-{:03}", vm % 200);
        // Each VM keeps its shape; one record in 100 doubles the cpu (a
        // resize on a start, a shape mismatch on a stop).
        let cpu = (1 << (vm % 4)) * if rng.u8(..100) == 0 { 2 } else { 1 };
        entry.shape = Shape {
            cpu,
            mem_bytes: (1 << 30) * (1 << (vm % 4)),
            storage_bytes: (10 << 30) * (1 + (vm % 8) as i64),
        };
        let at = BASE + UnixNanos::from(position) * step + UnixNanos::from(rng.u32(..1_000_000));
        entry.emitted_at =
            OffsetDateTime::from_unix_timestamp_nanos(at).unwrap_or(entry.emitted_at);
        // Unseeded, so push cannot fail.
        let _ = usage.push(position, at + SEC, &entry);
    }
    usage.finish().fold((0, 0), |(rows, anomalies), u| {
        (rows + u.rows.len(), anomalies + u.anomalies.len())
    })
}
