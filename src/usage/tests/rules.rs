//! PRODUCT.md's pairing rules, one hand-checked example each.

use super::*;
use crate::record::Reason;
use crate::usage::{Anomaly, AnomalyType, Decimal};

use Kind::*;

const COMPUTE: (i64, i64, i64) = (2, GIB, 0);

fn d(s: &str) -> String {
    s.to_owned()
}

fn anomalies(u: &IdUsage) -> Vec<(AnomalyType, u64)> {
    u.anomalies.iter().map(|a| (a.kind, a.position)).collect()
}

#[test]
fn usage_rule1_and_4_a_start_and_its_stop_bill_cpu_and_mem_times_time() {
    let t0 = t("2026-05-01T10:00:00Z");
    let recs = [
        rec(1, VmComputeStart, "vm-1", t0, COMPUTE),
        rec(2, VmComputeStop, "vm-1", t0 + HOUR, COMPUTE),
    ];
    let answer = run(query(t0 - DAY, t0 + DAY), &recs);
    let u = only(&answer);
    assert_eq!((u.family, u.id.as_str()), (Family::VmCompute, "vm-1"));
    let row = &u.rows[0];
    assert_eq!(row.running_nanos, 3_600_000_000_000);
    // 2 vCPUs for 3600 s; 1 GiB for 3600 s = 3600 × 1073741824.
    assert_eq!(row.vcpu_seconds.to_string(), d("7200"));
    assert_eq!(row.mem_byte_seconds.to_string(), d("3865470566400"));
    assert_eq!(row.storage_byte_seconds, Decimal::ZERO);
    assert_eq!((row.intervals, row.open), (1, false));
    assert_eq!(row.hypervisor, "ch-1");
    assert_eq!((row.bucket_start, row.bucket_end), (t0 - DAY, t0 + DAY));
    assert!(u.anomalies.is_empty());
}

#[test]
fn usage_rule4_storage_families_bill_storage_bytes_only() {
    let t0 = t("2026-05-01T10:00:00Z");
    let shape = (2, GIB, 10 * GIB);
    let recs = [
        rec(1, VmStorageStart, "vm-1", t0, shape),
        rec(2, VmStorageStop, "vm-1", t0 + MIN, shape),
        rec(3, SnapStorageStart, "snap-1", t0, shape),
        rec(4, SnapStorageStop, "snap-1", t0 + 2 * MIN, shape),
    ];
    let answer = run(query(t0, t0 + HOUR), &recs);
    assert_eq!(
        keys(&answer),
        [(Family::VmStorage, "vm-1"), (Family::SnapStorage, "snap-1")]
    );
    for (u, secs) in answer.iter().zip([60u64, 120]) {
        let row = &u.rows[0];
        assert_eq!(row.vcpu_seconds, Decimal::ZERO);
        assert_eq!(row.mem_byte_seconds, Decimal::ZERO);
        let want = 10 * 1_073_741_824 * secs;
        assert_eq!(row.storage_byte_seconds.to_string(), want.to_string());
    }
}

#[test]
fn usage_rule2_same_shape_start_is_a_duplicate_and_ignored() {
    let t0 = t("2026-05-01T10:00:00Z");
    let recs = [
        rec(1, VmComputeStart, "vm-1", t0, COMPUTE),
        // Same billed shape: the storage field is not billed for compute.
        rec_hv(
            2,
            VmComputeStart,
            "vm-1",
            t0 + 30 * MIN,
            (2, GIB, 5),
            "ch-2",
        ),
        rec(3, VmComputeStop, "vm-1", t0 + HOUR, COMPUTE),
    ];
    let answer = run(query(t0, t0 + DAY), &recs);
    let u = only(&answer);
    assert_eq!(
        u.anomalies,
        [Anomaly {
            kind: AnomalyType::DuplicateStart,
            at: t0 + 30 * MIN,
            position: 2
        }]
    );
    let row = &u.rows[0];
    assert_eq!(row.running_nanos, 3_600_000_000_000);
    assert_eq!(row.vcpu_seconds.to_string(), "7200");
    // Ignored entirely: the hypervisor stays the first start's.
    assert_eq!((row.intervals, row.hypervisor.as_str()), (1, "ch-1"));
}

#[test]
fn usage_rule2_another_shape_is_a_resize() {
    let t0 = t("2026-05-01T10:00:00Z");
    let recs = [
        rec(1, VmComputeStart, "vm-1", t0, COMPUTE),
        rec_hv(
            2,
            VmComputeStart,
            "vm-1",
            t0 + 30 * MIN,
            (4, 2 * GIB, 0),
            "ch-2",
        ),
        rec(3, VmComputeStop, "vm-1", t0 + HOUR, (4, 2 * GIB, 0)),
    ];
    let answer = run(query(t0, t0 + DAY), &recs);
    let u = only(&answer);
    assert_eq!(anomalies(u), [(AnomalyType::StartWhileOpen, 2)]);
    let row = &u.rows[0];
    assert_eq!(row.running_nanos, 3_600_000_000_000);
    // 2 × 1800 + 4 × 1800; 1 GiB × 1800 + 2 GiB × 1800 = 5400 × 1073741824.
    assert_eq!(row.vcpu_seconds.to_string(), "10800");
    assert_eq!(row.mem_byte_seconds.to_string(), "5798205849600");
    assert_eq!((row.intervals, row.hypervisor.as_str()), (2, "ch-2"));
}

#[test]
fn usage_rule3_any_reason_closes() {
    let t0 = t("2026-05-01T10:00:00Z");
    for reason in [
        Reason::Restore,
        Reason::StopCrash,
        Reason::VmRemove,
        Reason::Boot,
    ] {
        let mut stop = rec(2, VmStorageStop, "vm-1", t0 + HOUR, (0, 0, GIB));
        stop.entry.reason = Some(reason);
        let recs = [rec(1, VmStorageStart, "vm-1", t0, (0, 0, GIB)), stop];
        let answer = run(query(t0, t0 + DAY), &recs);
        let row = &only(&answer).rows[0];
        assert_eq!((row.running_nanos, row.open), (3_600_000_000_000, false));
    }
}

#[test]
fn usage_rule3_a_stop_with_nothing_open_is_an_orphan_and_bills_nothing() {
    let t0 = t("2026-05-01T10:00:00Z");
    let recs = [
        rec(1, VmComputeStart, "vm-1", t0, COMPUTE),
        rec(2, VmComputeStop, "vm-1", t0 + HOUR, COMPUTE),
        rec(3, VmComputeStop, "vm-1", t0 + 2 * HOUR, COMPUTE),
        rec(4, SnapStorageStop, "snap-9", t0, (0, 0, GIB)),
    ];
    let answer = run(query(t0, t0 + DAY), &recs);
    assert_eq!(
        keys(&answer),
        [(Family::VmCompute, "vm-1"), (Family::SnapStorage, "snap-9")]
    );
    assert_eq!(anomalies(&answer[0]), [(AnomalyType::OrphanStop, 3)]);
    assert_eq!(answer[0].rows[0].running_nanos, 3_600_000_000_000);
    assert_eq!(anomalies(&answer[1]), [(AnomalyType::OrphanStop, 4)]);
    assert!(answer[1].rows.is_empty());
}

#[test]
fn usage_rule3_stop_shape_mismatch_bills_the_start() {
    let t0 = t("2026-05-01T10:00:00Z");
    let cases = [
        // (stop shape, mismatch?)
        ((4, GIB, 0), true),
        ((2, 2 * GIB, 0), true),
        ((2, GIB, 0), false),
        // Zero fields are "not given" (the Go encoding omits them).
        ((0, 0, 0), false),
        ((2, 0, 0), false),
        ((0, GIB, 0), false),
        // A field compute does not bill.
        ((2, GIB, 7), false),
    ];
    for (shape, mismatch) in cases {
        let recs = [
            rec(1, VmComputeStart, "vm-1", t0, COMPUTE),
            rec(2, VmComputeStop, "vm-1", t0 + HOUR, shape),
        ];
        let answer = run(query(t0, t0 + DAY), &recs);
        let u = only(&answer);
        let want: &[_] = if mismatch {
            &[(AnomalyType::StopShapeMismatch, 2)]
        } else {
            &[]
        };
        assert_eq!(anomalies(u), want, "stop shape {shape:?}");
        assert_eq!(u.rows[0].vcpu_seconds.to_string(), "7200", "{shape:?}");
    }
    // Storage: one billed field.
    let recs = [
        rec(1, SnapStorageStart, "s", t0, (0, 0, 10 * GIB)),
        rec(2, SnapStorageStop, "s", t0 + SEC, (1, 1, 20 * GIB)),
    ];
    let answer = run(query(t0, t0 + DAY), &recs);
    let u = only(&answer);
    assert_eq!(anomalies(u), [(AnomalyType::StopShapeMismatch, 2)]);
    assert_eq!(u.rows[0].storage_byte_seconds.to_string(), "10737418240");
}

#[test]
fn usage_rule5_only_the_part_inside_the_range_counts() {
    let t0 = t("2026-05-01T10:00:00Z");
    let recs = [
        rec(1, VmComputeStart, "vm-1", t0 - HOUR, COMPUTE),
        rec(2, VmComputeStop, "vm-1", t0 + HOUR, COMPUTE),
    ];
    let answer = run(query(t0, t0 + 30 * MIN), &recs);
    let row = &only(&answer).rows[0];
    assert_eq!(row.running_nanos, 1_800_000_000_000);
    assert_eq!(row.vcpu_seconds.to_string(), "3600");
    // At the end of the range the interval was still running.
    assert_eq!((row.intervals, row.open), (1, true));
}

#[test]
fn usage_rule5_an_interval_with_no_stop_runs_to_the_earliest_of_end_as_of_and_now() {
    let t0 = t("2026-05-01T10:00:00Z");
    let recs = [rec(1, VmComputeStart, "vm-1", t0, COMPUTE)];
    let (start, end) = (t0 - HOUR, t0 + 3 * HOUR);
    let cases = [
        // (as_of, now, running hours)
        (None, end + DAY, 3),
        (None, t0 + HOUR, 1),
        (Some(t0 + 2 * HOUR), end + DAY, 2),
        (Some(t0 + 2 * HOUR), t0 + HOUR, 1),
    ];
    for (as_of, now, hours) in cases {
        let q = Query {
            as_of,
            now,
            ..query(start, end)
        };
        let answer = run(q, &recs);
        let row = &only(&answer).rows[0];
        assert_eq!(row.running_nanos as i128, hours * HOUR, "{as_of:?} {now}");
        assert!(row.open);
    }
    // Before the start nothing is visible.
    let q = Query {
        now: start - 1,
        ..query(start, end)
    };
    assert!(run(q, &recs).is_empty());
}

#[test]
fn usage_rule5_as_of_ignores_records_received_later() {
    let t0 = t("2026-05-01T10:00:00Z");
    let mut stop = rec(2, VmComputeStop, "vm-1", t0 + HOUR, COMPUTE);
    stop.received_at = t0 + 5 * HOUR;
    let recs = [rec(1, VmComputeStart, "vm-1", t0, COMPUTE), stop];
    let q = Query {
        as_of: Some(t0 + 3 * HOUR),
        ..query(t0, t0 + DAY)
    };
    let answer = run(q, &recs);
    let row = &only(&answer).rows[0];
    assert_eq!((row.running_nanos as i128, row.open), (3 * HOUR, true));
    let q = Query {
        as_of: Some(t0 + 5 * HOUR),
        ..query(t0, t0 + DAY)
    };
    let answer = run(q, &recs);
    let row = &only(&answer).rows[0];
    assert_eq!((row.running_nanos as i128, row.open), (HOUR, false));
}

#[test]
fn usage_rule6_anomalies_only_in_range_rows_only_with_time_or_open() {
    let t0 = t("2026-05-01T10:00:00Z");
    let recs = [
        // Before the range: an orphan stop, and an interval over before it.
        rec(1, VmComputeStop, "vm-1", t0 - 2 * HOUR, COMPUTE),
        rec(2, VmComputeStart, "vm-2", t0 - 2 * HOUR, COMPUTE),
        rec(3, VmComputeStop, "vm-2", t0 - HOUR, COMPUTE),
        // At the end (exclusive): an orphan not reported.
        rec(4, VmComputeStop, "vm-3", t0 + HOUR, COMPUTE),
        // In range: reported.
        rec(5, VmComputeStop, "vm-4", t0, COMPUTE),
        // A start and stop at the same instant: no time, no row.
        rec(6, VmStorageStart, "vm-5", t0 + MIN, (0, 0, GIB)),
        rec(7, VmStorageStop, "vm-5", t0 + MIN, (0, 0, GIB)),
    ];
    let answer = run(query(t0, t0 + HOUR), &recs);
    assert_eq!(keys(&answer), [(Family::VmCompute, "vm-4")]);
    assert_eq!(anomalies(&answer[0]), [(AnomalyType::OrphanStop, 5)]);
    assert!(answer[0].rows.is_empty());
}

#[test]
fn usage_ties_in_emitted_at_are_broken_by_position() {
    let t0 = t("2026-05-01T10:00:00Z");
    // Stop (position 3) before start (position 4) at the same instant: the
    // first interval closes, a new one opens. Pushed in reverse.
    let recs = [
        rec(4, VmComputeStart, "vm-1", t0 + HOUR, COMPUTE),
        rec(3, VmComputeStop, "vm-1", t0 + HOUR, COMPUTE),
        rec(1, VmComputeStart, "vm-1", t0, COMPUTE),
        rec(5, VmComputeStop, "vm-1", t0 + 2 * HOUR, COMPUTE),
    ];
    let answer = run(query(t0, t0 + DAY), &recs);
    let u = only(&answer);
    assert!(u.anomalies.is_empty());
    assert_eq!(u.rows[0].intervals, 2);
    // Start (position 3) before stop (position 4): a duplicate start, then the
    // stop closes the only interval.
    let recs = [
        rec(1, VmComputeStart, "vm-1", t0, COMPUTE),
        rec(3, VmComputeStart, "vm-1", t0 + HOUR, COMPUTE),
        rec(4, VmComputeStop, "vm-1", t0 + HOUR, COMPUTE),
        rec(5, VmComputeStop, "vm-1", t0 + 2 * HOUR, COMPUTE),
    ];
    let answer = run(query(t0, t0 + DAY), &recs);
    let u = only(&answer);
    assert_eq!(
        anomalies(u),
        [
            (AnomalyType::DuplicateStart, 3),
            (AnomalyType::OrphanStop, 5)
        ]
    );
    assert_eq!(u.rows[0].running_nanos as i128, HOUR);
}

#[test]
fn usage_families_and_id_filters() {
    let t0 = t("2026-05-01T10:00:00Z");
    let recs = [
        rec(1, VmComputeStart, "vm-1", t0, COMPUTE),
        rec(2, VmStorageStart, "vm-1", t0, (0, 0, GIB)),
        rec(3, VmComputeStart, "vm-2", t0, COMPUTE),
        rec(4, SnapStorageStart, "vm-1", t0, (0, 0, GIB)),
    ];
    let all = run(query(t0, t0 + HOUR), &recs);
    assert_eq!(
        keys(&all),
        [
            (Family::VmCompute, "vm-1"),
            (Family::VmCompute, "vm-2"),
            (Family::VmStorage, "vm-1"),
            (Family::SnapStorage, "vm-1"),
        ]
    );
    let q = Query {
        families: vec![Family::VmStorage, Family::SnapStorage],
        ..query(t0, t0 + HOUR)
    };
    assert_eq!(
        keys(&run(q, &recs)),
        [(Family::VmStorage, "vm-1"), (Family::SnapStorage, "vm-1")]
    );
    let q = Query {
        id: Some("vm-2".into()),
        ..query(t0, t0 + HOUR)
    };
    assert_eq!(keys(&run(q, &recs)), [(Family::VmCompute, "vm-2")]);
}
