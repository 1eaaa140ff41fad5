//! The usage fast path against the full fold, on random ledgers written as
//! segment files with chosen receive times: many seals, records emitted out
//! of order, some late by hours (so checkpoints go stale), some ahead of
//! their receive time, `as_of` in the past, filters, retention, and
//! checkpoint files that are missing or damaged.

use std::path::Path;

use time::OffsetDateTime;

use super::build::Checkpoints;
use super::checkpoint;
use super::usage::answer;
use super::Source;
use crate::log::testing::write_segment;
use crate::log::Snapshot;
use crate::record::{Entry, Kind, Shape};
use crate::usage::{Family, Granularity, IdUsage, Query, Usage};
use crate::wire;

const SEC: i128 = 1_000_000_000;
const HOUR: i128 = 3600 * SEC;

/// 2026-03-27T20:00:00Z: the ledgers span Berlin's spring-forward.
const BASE: i128 = 1_774_641_600 * SEC;

struct Ledger {
    /// (position, received, line); positions from 1.
    records: Vec<(u64, i64, Vec<u8>)>,
}

/// A random ledger: receive times rising about 10 minutes a record, each
/// record emitted shortly before it was received, some much earlier (late:
/// a sidecar's backlog) and a few a little after (a client clock ahead).
fn ledger(rng: &mut fastrand::Rng, n: usize) -> Ledger {
    let kinds = [
        Kind::VmComputeStart,
        Kind::VmComputeStop,
        Kind::VmStorageStart,
        Kind::VmStorageStop,
        Kind::SnapStorageStart,
        Kind::SnapStorageStop,
    ];
    let mut received = BASE;
    let records = (1..=n as u64)
        .map(|position| {
            received += i128::from(rng.i64(0..1200)) * SEC;
            let lag = match rng.u8(..100) {
                0..=91 => i128::from(rng.i64(0..120)) * SEC,
                92..=95 => i128::from(rng.i64(1..30)) * HOUR / 2,
                96..=97 => -i128::from(rng.i64(0..300)) * SEC,
                _ => 0,
            };
            // Whole minutes now and then, so that ties (broken by position) occur.
            let mut at = received - lag - i128::from(rng.u32(..1_000_000_000));
            if rng.u8(..4) == 0 {
                at -= at.rem_euclid(60 * SEC);
            }
            let mut kind = kinds[rng.usize(..kinds.len())];
            if rng.u8(..3) != 0 {
                kind = starts_of(kind);
            }
            let id = ["a", "b", "c", "d"][rng.usize(..4)].to_owned();
            let cpu = [1, 2, 0][rng.usize(..3)];
            let entry = Entry {
                kind,
                vm_id: if kind.is_vm() {
                    id.clone()
                } else {
                    String::new()
                },
                snapshot_id: if kind.is_vm() { String::new() } else { id },
                source_snapshot_id: String::new(),
                reason: None,
                hypervisor: ["ch-1", "ch-2"][rng.usize(..2)].into(),
                shape: Shape {
                    cpu,
                    mem_bytes: cpu << 30,
                    storage_bytes: (cpu + 1) << 33,
                },
                emitted_at: OffsetDateTime::from_unix_timestamp_nanos(at).unwrap(),
                id: String::new(),
            };
            let mut line = Vec::new();
            wire::entry_line(&entry, &mut line);
            (position, i64::try_from(received).unwrap(), line)
        })
        .collect();
    Ledger { records }
}

fn starts_of(kind: Kind) -> Kind {
    match kind {
        Kind::VmComputeStop => Kind::VmComputeStart,
        Kind::VmStorageStop => Kind::VmStorageStart,
        Kind::SnapStorageStop => Kind::SnapStorageStart,
        k => k,
    }
}

/// Writes the ledger as segments cut at random places (often after one or
/// two records), the last one active. Returns the sealed segments' firsts.
fn write(dir: &Path, rng: &mut fastrand::Rng, ledger: &Ledger) -> Vec<u64> {
    let mut firsts = Vec::new();
    let mut i = 0;
    let recs = &ledger.records;
    while i < recs.len() {
        let len = 1 + rng.usize(..12).min(recs.len() - i - 1);
        let sealed = i + len < recs.len() || rng.bool();
        let part = &recs[i..i + len];
        write_segment(
            dir,
            "entries",
            part[0].0,
            sealed,
            part.iter().map(|(_, r, l)| (l.as_slice(), *r)),
        )
        .unwrap();
        if sealed {
            firsts.push(part[0].0);
        }
        i += len;
    }
    firsts
}

/// The full fold over every retained record, through the slow decoder.
fn full(source: &dyn Source, q: &Query) -> Vec<IdUsage> {
    let mut usage = Usage::new(q.clone()).unwrap();
    let mut r = source.reader(0).unwrap();
    loop {
        let lines = r.read(1000, 1 << 20).unwrap();
        if lines.is_empty() {
            break;
        }
        for l in lines {
            let e = wire::decode_entry(&l.line).unwrap();
            usage.push(l.position, i128::from(l.received), &e).unwrap();
        }
    }
    usage.finish().collect()
}

fn random_query(rng: &mut fastrand::Rng, span: i128) -> Query {
    let start = BASE + i128::from(rng.i64(0..(span / SEC) as i64)) * SEC;
    let end = start + i128::from(rng.i64(1..2 * 86_400)) * SEC + i128::from(rng.u32(..1000));
    let families = match rng.u8(..6) {
        0 => vec![Family::VmCompute],
        1 => vec![Family::SnapStorage, Family::VmStorage],
        _ => Vec::new(),
    };
    Query {
        start,
        end,
        granularity: [
            Granularity::Whole,
            Granularity::Hour,
            Granularity::Day,
            Granularity::Month,
        ][rng.usize(..4)],
        time_zone: ["Europe/Berlin", "UTC"][rng.usize(..2)].into(),
        as_of: rng
            .bool()
            .then(|| BASE + i128::from(rng.i64(0..(span / SEC) as i64)) * SEC),
        families,
        id: (rng.u8(..5) == 0).then(|| "b".into()),
        now: BASE + span + i128::from(rng.i64(-6 * 3600..6 * 3600)) * SEC,
    }
}

#[test]
fn read_fast_path_equals_the_full_fold() {
    // How often the fast path was taken, skipped segments, and restarted.
    let (mut seeded, mut skipped, mut restarts, mut queries) = (0, 0, 0, 0);
    let (mut skipped_active, mut skipped_blocks) = (0, 0);
    // Checkpoints whose pending records are listed, and those with a range.
    let (mut listed, mut ranged) = (0, 0);
    for seed in 0..30u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let dir = tempfile::tempdir().unwrap();
        let n = rng.usize(1..300);
        let ledger = ledger(&mut rng, n);
        let span = ledger.records.last().map_or(0, |r| i128::from(r.1) - BASE);
        let firsts = write(dir.path(), &mut rng, &ledger);
        let mut check = |source: &Snapshot, build: bool, rng: &mut fastrand::Rng| {
            let upto = source.end();
            // One store, as a server keeps: what a query learns of the
            // active segment serves the next.
            let store = Checkpoints::new();
            for i in 0..15 {
                let plan = store.plan(source, build).unwrap();
                if build && i == 0 {
                    for m in plan.metas.iter().flatten() {
                        let path = source.checkpoint_path(m.first);
                        let body = checkpoint::read_body(&path, m).unwrap();
                        listed += usize::from(!body.pending.listed.is_empty());
                        ranged += usize::from(body.pending.rest_from.is_some());
                    }
                }
                let q = random_query(rng, span.max(HOUR));
                let got = answer(source, &plan, &q, upto).unwrap();
                if let Some(a) = got.active {
                    store.remember(a);
                }
                seeded += usize::from(got.stats.checkpoint.is_some());
                skipped += got.stats.skipped;
                skipped_blocks += got.stats.skipped_blocks;
                skipped_active += usize::from(got.stats.skipped_active > 0);
                restarts += got.stats.restarts;
                queries += 1;
                let fast: Vec<IdUsage> = got.report.collect();
                assert_eq!(fast, full(source, &q), "seed {seed}, {q:?}");
            }
        };
        let snap = Snapshot::open(dir.path(), "entries").unwrap();
        check(&snap, true, &mut rng);
        // The CLI form: some checkpoints missing or damaged, none written.
        for first in &firsts {
            let path = snap.checkpoint_path(*first);
            match rng.u8(..4) {
                0 => std::fs::remove_file(&path).unwrap(),
                1 => {
                    let mut b = std::fs::read(&path).unwrap();
                    let i = rng.usize(..b.len());
                    b[i] ^= 1;
                    std::fs::write(&path, b).unwrap();
                }
                _ => {}
            }
        }
        check(&snap, false, &mut rng);
        // Retention: the oldest segments go; the checkpoints that folded
        // them are stale and rebuilt.
        if firsts.len() > 2 {
            for first in &firsts[..2] {
                for ext in ["jsonl", "times"] {
                    std::fs::remove_file(dir.path().join(format!("entries.{first:020}.{ext}")))
                        .unwrap();
                }
            }
            let snap = Snapshot::open(dir.path(), "entries").unwrap();
            assert_eq!(snap.first(), firsts[2]);
            check(&snap, true, &mut rng);
        }
    }
    let windowed = super::build::WINDOWED.load(std::sync::atomic::Ordering::Relaxed);
    let summary = format!("fast path taken {seeded} times of {queries}, {skipped} segments and {skipped_blocks} records in blocks skipped, {restarts} restarts, active segment skipped {skipped_active} times; pending listed in {listed} checkpoints, ranged in {ranged}; {windowed} builds folded in windows");
    eprintln!("{summary}");
    assert!(
        seeded > queries / 4
            && skipped > 500
            && skipped_blocks > 50
            && skipped_active > 10
            && restarts > 5
            && listed > 50
            && ranged > 50
            && windowed > 50,
        "{summary}"
    );
}

#[test]
fn read_checkpoints_are_built_once_and_reused() {
    let mut rng = fastrand::Rng::with_seed(99);
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger(&mut rng, 200);
    let firsts = write(dir.path(), &mut rng, &ledger);
    let snap = Snapshot::open(dir.path(), "entries").unwrap();
    let store = Checkpoints::new();
    let plan = store.plan(&snap, true).unwrap();
    assert!(plan.metas.iter().all(Option::is_some));
    let modified = |f: &u64| {
        std::fs::metadata(snap.checkpoint_path(*f))
            .unwrap()
            .modified()
            .unwrap()
    };
    let before: Vec<_> = firsts.iter().map(modified).collect();
    let again = Checkpoints::new().plan(&snap, true).unwrap();
    assert_eq!(again.metas, plan.metas);
    assert_eq!(firsts.iter().map(modified).collect::<Vec<_>>(), before);
}

#[test]
fn read_a_segment_starting_exactly_at_the_end_is_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let line = |kind: Kind, at: i128| {
        let entry = Entry {
            kind,
            vm_id: "vm-1".into(),
            snapshot_id: String::new(),
            source_snapshot_id: String::new(),
            reason: None,
            hypervisor: "ch-1".into(),
            shape: Shape {
                cpu: 1,
                mem_bytes: 1 << 30,
                storage_bytes: 0,
            },
            emitted_at: OffsetDateTime::from_unix_timestamp_nanos(at).unwrap(),
            id: String::new(),
        };
        let mut l = Vec::new();
        wire::entry_line(&entry, &mut l);
        l
    };
    let end = BASE + 10 * HOUR;
    let start_line = line(Kind::VmComputeStart, BASE);
    let stop_line = line(Kind::VmComputeStop, end);
    let received = |t: i128| i64::try_from(t).unwrap();
    write_segment(
        dir.path(),
        "entries",
        1,
        true,
        [(start_line.as_slice(), received(BASE))],
    )
    .unwrap();
    write_segment(
        dir.path(),
        "entries",
        2,
        true,
        [(stop_line.as_slice(), received(end))],
    )
    .unwrap();
    let snap = Snapshot::open(dir.path(), "entries").unwrap();
    let plan = Checkpoints::new().plan(&snap, true).unwrap();
    let q = Query {
        start: BASE + 2 * HOUR,
        end,
        granularity: Granularity::Whole,
        time_zone: String::new(),
        as_of: None,
        families: Vec::new(),
        id: None,
        now: end + HOUR,
    };
    let got = answer(&snap, &plan, &q, snap.end()).unwrap();
    assert_eq!(got.stats.checkpoint, Some(1));
    assert_eq!(got.stats.skipped, 0);
    let fast: Vec<IdUsage> = got.report.collect();
    assert_eq!(fast, full(&snap, &q));
    assert!(
        !fast[0].rows[0].open,
        "the stop at the end closes the interval"
    );
}
