//! Exact decimals, the largest sums, query validation and the protobuf edge.

use super::*;
use crate::pb;
use crate::usage::{timestamp, Decimal, MAX_BUCKETS};

use Kind::*;

#[test]
fn usage_decimal_formatting() {
    let cases: [(u128, &str); 7] = [
        (0, "0"),
        (1, "0.000000001"),
        (1_000_000_000, "1"),
        (1_500_000_000, "1.5"),
        (1_073_741_824, "1.073741824"),
        (10_000_000_010, "10.00000001"),
        (u128::MAX, "340282366920938463463374607431.768211455"),
    ];
    for (nano_units, want) in cases {
        assert_eq!(Decimal(nano_units).to_string(), want);
    }
}

#[test]
fn usage_one_gib_for_one_nanosecond() {
    let t0 = t("2026-05-01T10:00:00Z");
    let recs = [
        rec(1, VmStorageStart, "vm-1", t0, (0, 0, GIB)),
        rec(2, VmStorageStop, "vm-1", t0 + 1, (0, 0, GIB)),
    ];
    let answer = run(query(t0, t0 + SEC), &recs);
    let row = &only(&answer).rows[0];
    assert_eq!(row.running_nanos, 1);
    assert_eq!(row.storage_byte_seconds.to_string(), "1.073741824");
    assert_eq!(only(&answer).to_pb().rows[0].vcpu_seconds, "0");
}

#[test]
fn usage_sixteen_tib_for_thirty_one_days() {
    let t0 = t("2026-01-01T00:00:00Z");
    let tib16 = 16 << 40;
    let recs = [
        rec(1, VmStorageStart, "vm-1", t0, (0, 0, tib16)),
        rec(2, VmStorageStop, "vm-1", t0 + 31 * DAY, (0, 0, tib16)),
    ];
    let answer = run(query(t0, t0 + 31 * DAY), &recs);
    let row = &only(&answer).rows[0];
    // 17592186044416 bytes × 2678400 s (about 4.7 × 10¹⁹).
    assert_eq!(row.storage_byte_seconds.to_string(), "47118911101363814400");
    assert_eq!(row.running_nanos, 2_678_400_000_000_000);
}

#[test]
fn usage_largest_possible_sum_does_not_overflow() {
    // The longest range (i64::MAX ns, about 292 years), the largest shape
    // (i64::MAX everywhere) running all of it, in two intervals (a resize of
    // an unbilled field is a duplicate, so resize cpu by one).
    let start = t("1900-01-01T00:00:00Z");
    let end = start + i128::from(i64::MAX);
    let max = i64::MAX;
    let mid = start + i128::from(i64::MAX / 2);
    let recs = [
        rec(1, VmComputeStart, "vm-1", start, (max - 1, max, max)),
        rec(2, VmComputeStart, "vm-1", mid, (max, max, max)),
        rec(3, VmStorageStart, "vm-1", start, (max, max, max)),
    ];
    let answer = run(query(start, end), &recs);
    assert_eq!(answer.len(), 2);
    let m = u128::from(i64::MAX.unsigned_abs());
    let compute = &answer[0].rows[0];
    assert_eq!(compute.running_nanos, i64::MAX);
    assert_eq!(compute.intervals, 2);
    let first = u128::from(i64::MAX.unsigned_abs() / 2);
    let cpu = (m - 1) * first + m * (m - first);
    assert_eq!(compute.vcpu_seconds, Decimal(cpu));
    assert_eq!(compute.mem_byte_seconds, Decimal(m * m));
    let storage = &answer[1].rows[0];
    assert_eq!(storage.storage_byte_seconds, Decimal(m * m));
    // (2^63 - 1)^2 / 10^9, exact.
    assert_eq!(
        storage.storage_byte_seconds.to_string(),
        "85070591730234615847396907784.232501249"
    );
}

#[test]
fn usage_query_rules_name_the_field() {
    let t0 = t("2026-05-01T10:00:00Z");
    let field = |q: Query| Usage::new(q).map(|_| ()).unwrap_err().field;
    assert_eq!(field(query(t0, t0)), "end_time");
    assert_eq!(field(query(t0, t0 - 1)), "end_time");
    assert_eq!(field(query(t0, t0 + i128::from(i64::MAX) + 1)), "end_time");
    assert_eq!(field(query(i128::MIN, t0)), "start_time");
    let q = Query {
        time_zone: "Mars/Olympus_Mons".into(),
        ..query(t0, t0 + DAY)
    };
    assert_eq!(field(q), "time_zone");
    let hours = i128::try_from(MAX_BUCKETS).unwrap() + 1;
    let q = Query {
        granularity: Granularity::Hour,
        ..query(t0, t0 + hours * HOUR)
    };
    assert_eq!(field(q), "granularity");
    // Exactly the limit is fine.
    let q = Query {
        granularity: Granularity::Hour,
        ..query(t0, t0 + (hours - 1) * HOUR)
    };
    assert!(Usage::new(q).is_ok());
}

fn request() -> pb::UsageRequest {
    pb::UsageRequest {
        start_time: Some(timestamp(t("2026-05-01T00:00:00Z"))),
        end_time: Some(timestamp(t("2026-06-01T00:00:00Z"))),
        granularity: pb::Granularity::Day as i32,
        time_zone: "Europe/Berlin".into(),
        as_of: Some(timestamp(t("2026-06-02T00:00:00Z"))),
        families: vec![pb::Family::VmStorage as i32],
        id: "vm-1".into(),
    }
}

#[test]
fn usage_query_from_pb() {
    let now = t("2026-07-01T00:00:00Z");
    let q = Query::from_pb(&request(), now).unwrap();
    assert_eq!(
        q,
        Query {
            start: t("2026-05-01T00:00:00Z"),
            end: t("2026-06-01T00:00:00Z"),
            granularity: Granularity::Day,
            time_zone: "Europe/Berlin".into(),
            as_of: Some(t("2026-06-02T00:00:00Z")),
            families: vec![Family::VmStorage],
            id: Some("vm-1".into()),
            now,
        }
    );
    let q = Query::from_pb(
        &pb::UsageRequest {
            as_of: None,
            id: String::new(),
            families: vec![],
            ..request()
        },
        now,
    )
    .unwrap();
    assert_eq!((q.as_of, q.id, q.families), (None, None, vec![]));
}

#[test]
fn usage_query_from_pb_names_the_field() {
    let bad = prost_types::Timestamp {
        seconds: 0,
        nanos: -1,
    };
    let cases = [
        (
            pb::UsageRequest {
                start_time: None,
                ..request()
            },
            "start_time",
        ),
        (
            pb::UsageRequest {
                end_time: Some(bad),
                ..request()
            },
            "end_time",
        ),
        (
            pb::UsageRequest {
                as_of: Some(bad),
                ..request()
            },
            "as_of",
        ),
        (
            pb::UsageRequest {
                granularity: 17,
                ..request()
            },
            "granularity",
        ),
        (
            pb::UsageRequest {
                families: vec![1, 0],
                ..request()
            },
            "families[1]",
        ),
        (
            pb::UsageRequest {
                families: vec![9],
                ..request()
            },
            "families[0]",
        ),
    ];
    for (req, field) in cases {
        let err = Query::from_pb(&req, 0).unwrap_err();
        assert_eq!(err.field, field, "{err}");
    }
}

#[test]
fn usage_to_pb() {
    let t0 = t("2026-05-01T10:00:00Z");
    let recs = [
        rec(1, VmComputeStart, "vm-1", t0, (2, GIB, 0)),
        rec(2, VmComputeStop, "vm-1", t0 + HOUR, (2, GIB, 0)),
        rec(3, VmComputeStop, "vm-1", t0 + 2 * HOUR, (2, GIB, 0)),
    ];
    let answer = run(query(t0, t0 + DAY), &recs);
    let resp = only(&answer).to_pb();
    assert_eq!(
        resp.rows,
        [pb::UsageRow {
            family: pb::Family::VmCompute as i32,
            id: "vm-1".into(),
            hypervisor: "ch-1".into(),
            bucket_start: Some(timestamp(t0)),
            bucket_end: Some(timestamp(t0 + DAY)),
            running_nanos: 3_600_000_000_000,
            vcpu_seconds: "7200".into(),
            mem_byte_seconds: "3865470566400".into(),
            storage_byte_seconds: "0".into(),
            intervals: 1,
            open: false,
        }]
    );
    assert_eq!(
        resp.anomalies,
        [pb::UsageAnomaly {
            r#type: pb::AnomalyType::OrphanStop as i32,
            family: pb::Family::VmCompute as i32,
            id: "vm-1".into(),
            at: Some(timestamp(t0 + 2 * HOUR)),
            position: 3,
        }]
    );
}

#[test]
fn usage_descriptor_set_serves_ledger_service() {
    use prost::Message as _;
    let fds = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let ledger = fds
        .file
        .iter()
        .find(|f| f.name() == "metering/v1/ledger.proto")
        .expect("ledger.proto in the descriptor set");
    let service = &ledger.service[0];
    assert_eq!(service.name(), "LedgerService");
    let methods: Vec<_> = service.method.iter().map(|m| m.name()).collect();
    assert_eq!(methods, ["Tail", "Usage", "Head"]);
}
