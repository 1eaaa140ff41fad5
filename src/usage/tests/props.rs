//! Properties over random ledgers (seeded, so failures reproduce): arrival
//! order never matters, buckets add up to the whole range, a checkpoint of a
//! prefix seeds the same answer as the full fold, and `as_of` answers do not
//! change as the ledger grows.

use super::*;
use crate::usage::{Checkpoint, Decimal, Fold, SeedError};

use Kind::*;

const SEEDS: u64 = 60;

/// A random ledger over a few ids, times around `base` (spanning a Berlin
/// DST change), with odd nanoseconds, duplicates, orphans and resizes.
fn ledger(rng: &mut fastrand::Rng, base: UnixNanos) -> Vec<Rec> {
    let kinds = [
        VmComputeStart,
        VmComputeStop,
        VmStorageStart,
        VmStorageStop,
        SnapStorageStart,
        SnapStorageStop,
    ];
    let shapes = [
        (1, GIB, 10 * GIB),
        (2, 2 * GIB, 10 * GIB),
        (2, 2 * GIB, 20 * GIB),
        (0, 0, 0),
    ];
    let n = rng.usize(0..80);
    let mut positions: Vec<u64> = (1..=n as u64).collect();
    rng.shuffle(&mut positions);
    positions
        .into_iter()
        .map(|position| {
            let kind = kinds[rng.usize(..kinds.len())];
            // Starts more often than stops, so intervals stay open a while.
            let kind = if rng.u8(..3) == 0 {
                kind
            } else {
                starts_of(kind)
            };
            let id = ["a", "b", "c"][rng.usize(..3)];
            // Whole hours now and then, so that ties (broken by position) occur.
            let at = if rng.u8(..3) == 0 {
                base + i128::from(rng.i64(0..96)) * HOUR
            } else {
                base + i128::from(rng.i64(0..4 * 86_400)) * SEC
                    + i128::from(rng.u32(..1_000_000_000))
            };
            let hv = ["ch-1", "ch-2"][rng.usize(..2)];
            let mut r = rec_hv(
                position,
                kind,
                id,
                at,
                shapes[rng.usize(..shapes.len())],
                hv,
            );
            r.received_at = at + i128::from(rng.i64(0..6 * 3600)) * SEC;
            r
        })
        .collect()
}

fn starts_of(kind: Kind) -> Kind {
    match kind {
        VmComputeStop => VmComputeStart,
        VmStorageStop => VmStorageStart,
        SnapStorageStop => SnapStorageStart,
        k => k,
    }
}

fn base() -> UnixNanos {
    t("2026-03-27T20:00:00Z")
}

/// A query over a random part of the ledger's time span.
fn random_query(rng: &mut fastrand::Rng) -> Query {
    let start = base() + i128::from(rng.i64(0..2 * 86_400)) * SEC;
    let end = start + i128::from(rng.i64(1..3 * 86_400)) * SEC + i128::from(rng.u32(..1000));
    Query {
        now: base() + i128::from(rng.i64(0..5 * 86_400)) * SEC,
        as_of: rng
            .bool()
            .then(|| base() + i128::from(rng.i64(0..5 * 86_400)) * SEC),
        ..query(start, end)
    }
}

#[test]
fn usage_arrival_order_never_changes_the_answer() {
    // (rows, open rows, anomalies) seen, to show the ledgers are not trivial.
    let mut seen = (0, 0, 0);
    for seed in 0..SEEDS {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut recs = ledger(&mut rng, base());
        let q = Query {
            granularity: Granularity::Hour,
            time_zone: "Europe/Berlin".into(),
            ..random_query(&mut rng)
        };
        let want = run(q.clone(), &recs);
        for u in &want {
            seen.0 += u.rows.len();
            seen.1 += u.rows.iter().filter(|r| r.open).count();
            seen.2 += u.anomalies.len();
        }
        for _ in 0..4 {
            rng.shuffle(&mut recs);
            assert_eq!(run(q.clone(), &recs), want, "seed {seed}");
        }
    }
    assert!(seen.0 > 1000 && seen.1 > 100 && seen.2 > 100, "{seen:?}");
}

/// Per (family, id): total running nanos, the three byte-seconds, anomalies.
type Totals = Vec<(Family, String, i128, [Decimal; 3], usize)>;

fn totals(answer: &[IdUsage]) -> Totals {
    answer
        .iter()
        .map(|u| {
            let mut nanos = 0;
            let mut sums = [Decimal::ZERO; 3];
            for r in &u.rows {
                nanos += i128::from(r.running_nanos);
                sums[0] += r.vcpu_seconds;
                sums[1] += r.mem_byte_seconds;
                sums[2] += r.storage_byte_seconds;
            }
            (u.family, u.id.clone(), nanos, sums, u.anomalies.len())
        })
        .collect()
}

#[test]
fn usage_buckets_add_up_to_the_whole_range() {
    for seed in 0..SEEDS {
        let mut rng = fastrand::Rng::with_seed(seed);
        let recs = ledger(&mut rng, base());
        let q = random_query(&mut rng);
        let whole = run(q.clone(), &recs);
        for (granularity, tz) in [
            (Granularity::Hour, "Europe/Berlin"),
            (Granularity::Day, "Europe/Berlin"),
            (Granularity::Day, "America/New_York"),
            (Granularity::Month, "Asia/Kolkata"),
        ] {
            let q = Query {
                granularity,
                time_zone: tz.into(),
                ..q.clone()
            };
            let bucketed = run(q, &recs);
            assert_eq!(
                totals(&bucketed),
                totals(&whole),
                "seed {seed} {granularity:?} {tz}"
            );
            // Anomalies do not depend on buckets.
            for (b, w) in bucketed.iter().zip(&whole) {
                assert_eq!(b.anomalies, w.anomalies, "seed {seed}");
            }
            // Rows are in bucket order, inside the range, never overlapping.
            for u in &bucketed {
                for pair in u.rows.windows(2) {
                    assert!(pair[0].bucket_end <= pair[1].bucket_start);
                }
            }
        }
    }
}

#[test]
fn usage_checkpoint_of_a_prefix_seeds_the_same_answer() {
    let mut seeded_ids = 0;
    for seed in 0..SEEDS {
        let mut rng = fastrand::Rng::with_seed(seed);
        let recs = ledger(&mut rng, base());
        let q = Query {
            as_of: None,
            granularity: Granularity::Day,
            time_zone: "Europe/Berlin".into(),
            ..random_query(&mut rng)
        };
        let before = q.start - i128::from(rng.i64(0..86_400)) * SEC;
        let at = |r: &Rec| r.entry.emitted_at.unix_timestamp_nanos();

        let mut fold = Fold::new(before);
        for r in &recs {
            fold.push(r.position, &r.entry).unwrap();
        }
        let checkpoint = fold.finish();
        seeded_ids += checkpoint.open.len();

        let mut usage = Usage::new(q.clone()).unwrap();
        usage.seed(checkpoint).unwrap();
        for r in recs.iter().filter(|r| at(r) >= before) {
            usage.push(r.position, r.received_at, &r.entry).unwrap();
        }
        let seeded: Vec<_> = usage.finish().collect();
        assert_eq!(seeded, run(q, &recs), "seed {seed}");
    }
    assert!(seeded_ids > SEEDS as usize, "checkpoints were mostly empty");
}

#[test]
fn usage_checkpoints_advance_incrementally() {
    for seed in 0..SEEDS {
        let mut rng = fastrand::Rng::with_seed(seed);
        let recs = ledger(&mut rng, base());
        let t1 = base() + i128::from(rng.i64(0..2 * 86_400)) * SEC;
        let t2 = t1 + i128::from(rng.i64(0..2 * 86_400)) * SEC;
        let fold_all = |before, from: Option<Checkpoint>| -> Checkpoint {
            let after = from.as_ref().map_or(i128::MIN, |c| c.before);
            let mut fold = match from {
                Some(c) => Fold::resume(c, before).unwrap(),
                None => Fold::new(before),
            };
            for r in &recs {
                if r.entry.emitted_at.unix_timestamp_nanos() >= after {
                    fold.push(r.position, &r.entry).unwrap();
                }
            }
            fold.finish()
        };
        let direct = fold_all(t2, None);
        let stepped = fold_all(t2, Some(fold_all(t1, None)));
        assert_eq!(stepped, direct, "seed {seed}");
    }
}

#[test]
fn usage_checkpoints_fold_in_windows() {
    for seed in 0..SEEDS {
        let mut rng = fastrand::Rng::with_seed(seed);
        let recs = ledger(&mut rng, base());
        let before = base() + i128::from(rng.i64(0..3 * 86_400)) * SEC;
        let fold_all = |mut fold: Fold| {
            for r in &recs {
                fold.push(r.position, &r.entry).unwrap();
            }
            fold
        };
        let direct = fold_all(Fold::new(before)).finish();
        // Random window ends, some equal to records' times, some repeated.
        let mut ends: Vec<i128> = (0..rng.usize(0..6))
            .map(|_| match rng.u8(..3) {
                0 if !recs.is_empty() => recs[rng.usize(..recs.len())]
                    .entry
                    .emitted_at
                    .unix_timestamp_nanos()
                    .min(before),
                _ => before - i128::from(rng.i64(0..3 * 86_400)) * SEC,
            })
            .collect();
        ends.sort_unstable();
        ends.push(before);
        let mut state = fold_all(Fold::new(ends[0])).finish();
        for &end in &ends[1..] {
            state = fold_all(Fold::window(state, end).unwrap()).finish();
        }
        assert_eq!(state, direct, "seed {seed}, windows ending {ends:?}");
    }
}

#[test]
fn usage_a_stale_checkpoint_is_refused() {
    let t0 = t("2026-05-01T10:00:00Z");
    let checkpoint = Checkpoint {
        before: t0,
        ..Default::default()
    };
    let late = rec(9, VmComputeStop, "vm-1", t0 - 1, (1, GIB, 0));
    let mut usage = Usage::new(query(t0, t0 + DAY)).unwrap();
    usage.seed(checkpoint.clone()).unwrap();
    assert_eq!(
        usage.push(9, t0 + DAY, &late.entry),
        Err(SeedError::Stale {
            position: 9,
            at: t0 - 1,
            before: t0
        })
    );
    assert_eq!(usage.seed(checkpoint.clone()), Err(SeedError::NotFirst));
    // A checkpoint after the start would miss records the query needs.
    let mut usage = Usage::new(query(t0 - 1, t0 + DAY)).unwrap();
    assert!(matches!(
        usage.seed(checkpoint),
        Err(SeedError::AfterStart { .. })
    ));
}

#[test]
fn usage_as_of_answers_are_reproducible_as_the_ledger_grows() {
    for seed in 0..SEEDS {
        let mut rng = fastrand::Rng::with_seed(seed);
        let recs = ledger(&mut rng, base());
        let q = Query {
            granularity: Granularity::Day,
            ..random_query(&mut rng)
        };
        let as_of = q.as_of.unwrap_or(q.now);
        let q = Query {
            as_of: Some(as_of),
            now: as_of + i128::from(rng.i64(0..86_400)) * SEC,
            ..q
        };
        // What had arrived by as_of, asked then...
        let then: Vec<_> = recs
            .iter()
            .filter(|r| r.received_at <= as_of)
            .cloned()
            .collect();
        let first = run(
            Query {
                now: as_of,
                ..q.clone()
            },
            &then,
        );
        // ...and the whole ledger, asked later.
        let later = run(
            Query {
                now: q.now + 30 * DAY,
                ..q
            },
            &recs,
        );
        assert_eq!(later, first, "seed {seed}");
    }
}
