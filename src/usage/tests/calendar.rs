//! Calendar buckets in IANA zones: DST days of 23 and 25 hours, hours across
//! the transitions, half-hour offsets, months, clipping to the range.
//! Europe/Berlin switches on 2026-03-29 (01:00Z, 02:00 → 03:00 local) and
//! 2026-10-25 (01:00Z, 03:00 → 02:00 local).

use super::*;

use Kind::*;

/// A VM running since long before and until long after `[start, end)`,
/// bucketed: (bucket_start, bucket_end, running_nanos, open) per row.
fn always_running(
    start: UnixNanos,
    end: UnixNanos,
    granularity: Granularity,
    tz: &str,
) -> Vec<(UnixNanos, UnixNanos, i128, bool)> {
    let recs = [
        rec(1, VmComputeStart, "vm-1", start - 40 * DAY, (1, GIB, 0)),
        rec(2, VmComputeStop, "vm-1", end + 40 * DAY, (1, GIB, 0)),
    ];
    let q = Query {
        granularity,
        time_zone: tz.into(),
        ..query(start, end)
    };
    only(&run(q, &recs))
        .rows
        .iter()
        .map(|r| {
            (
                r.bucket_start,
                r.bucket_end,
                i128::from(r.running_nanos),
                r.open,
            )
        })
        .collect()
}

/// The local wall-clock time of an instant, e.g. "2026-10-25T02:00:00+01:00".
fn local(at: UnixNanos, tz: &str) -> String {
    let ts = jiff::Timestamp::from_nanosecond(at).unwrap();
    let tz = jiff::tz::TimeZone::get(tz).unwrap();
    ts.to_zoned_datetime(tz)
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

#[test]
fn usage_berlin_day_in_late_march_has_23_hours() {
    let rows = always_running(
        t("2026-03-28T00:00:00+01:00"),
        t("2026-03-31T00:00:00+02:00"),
        Granularity::Day,
        "Europe/Berlin",
    );
    assert_eq!(
        rows,
        [
            (
                t("2026-03-27T23:00:00Z"),
                t("2026-03-28T23:00:00Z"),
                24 * HOUR,
                true
            ),
            (
                t("2026-03-28T23:00:00Z"),
                t("2026-03-29T22:00:00Z"),
                23 * HOUR,
                true
            ),
            (
                t("2026-03-29T22:00:00Z"),
                t("2026-03-30T22:00:00Z"),
                24 * HOUR,
                true
            ),
        ]
    );
}

#[test]
fn usage_berlin_day_in_late_october_has_25_hours() {
    let rows = always_running(
        t("2026-10-24T00:00:00+02:00"),
        t("2026-10-27T00:00:00+01:00"),
        Granularity::Day,
        "Europe/Berlin",
    );
    let hours: Vec<_> = rows.iter().map(|r| r.2 / HOUR).collect();
    assert_eq!(hours, [24, 25, 24]);
    assert_eq!(rows[1].0, t("2026-10-24T22:00:00Z"));
    assert_eq!(rows[1].1, t("2026-10-25T23:00:00Z"));
}

#[test]
fn usage_berlin_hours_across_spring_forward() {
    let rows = always_running(
        t("2026-03-29T00:00:00+01:00"),
        t("2026-03-29T05:00:00+02:00"),
        Granularity::Hour,
        "Europe/Berlin",
    );
    // Local 02:00 never happens: four buckets of one hour.
    let labels: Vec<_> = rows.iter().map(|r| local(r.0, "Europe/Berlin")).collect();
    assert_eq!(
        labels,
        [
            "2026-03-29T00:00:00+01:00",
            "2026-03-29T01:00:00+01:00",
            "2026-03-29T03:00:00+02:00",
            "2026-03-29T04:00:00+02:00",
        ]
    );
    assert!(rows.iter().all(|r| r.2 == HOUR && r.1 - r.0 == HOUR));
}

#[test]
fn usage_berlin_hours_across_fall_back() {
    let rows = always_running(
        t("2026-10-25T00:00:00+02:00"),
        t("2026-10-25T04:00:00+01:00"),
        Granularity::Hour,
        "Europe/Berlin",
    );
    // Local 02:00 happens twice: two buckets, one per offset.
    let labels: Vec<_> = rows.iter().map(|r| local(r.0, "Europe/Berlin")).collect();
    assert_eq!(
        labels,
        [
            "2026-10-25T00:00:00+02:00",
            "2026-10-25T01:00:00+02:00",
            "2026-10-25T02:00:00+02:00",
            "2026-10-25T02:00:00+01:00",
            "2026-10-25T03:00:00+01:00",
        ]
    );
    assert!(rows.iter().all(|r| r.2 == HOUR && r.1 - r.0 == HOUR));
}

#[test]
fn usage_hours_in_a_half_hour_zone_start_on_the_local_hour() {
    let rows = always_running(
        t("2026-05-01T00:00:00Z"),
        t("2026-05-01T03:00:00Z"),
        Granularity::Hour,
        "Asia/Kolkata",
    );
    let bounds: Vec<_> = rows.iter().map(|r| (r.0, r.1)).collect();
    // +05:30: local hours begin at :30 UTC; the ends are clipped to the range.
    assert_eq!(
        bounds,
        [
            (t("2026-05-01T00:00:00Z"), t("2026-05-01T00:30:00Z")),
            (t("2026-05-01T00:30:00Z"), t("2026-05-01T01:30:00Z")),
            (t("2026-05-01T01:30:00Z"), t("2026-05-01T02:30:00Z")),
            (t("2026-05-01T02:30:00Z"), t("2026-05-01T03:00:00Z")),
        ]
    );
}

#[test]
fn usage_month_buckets() {
    let rows = always_running(
        t("2026-01-01T00:00:00+01:00"),
        t("2026-04-01T00:00:00+02:00"),
        Granularity::Month,
        "Europe/Berlin",
    );
    let hours: Vec<_> = rows.iter().map(|r| r.2 / HOUR).collect();
    // March loses the hour of the spring-forward.
    assert_eq!(hours, [31 * 24, 28 * 24, 31 * 24 - 1]);
    assert_eq!(rows[2].0, t("2026-02-28T23:00:00Z"));

    // A range off the boundaries: first and last buckets clipped to it.
    let rows = always_running(
        t("2026-01-15T12:00:00Z"),
        t("2026-03-10T00:00:00Z"),
        Granularity::Month,
        "",
    );
    let bounds: Vec<_> = rows.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(
        bounds,
        [
            (t("2026-01-15T12:00:00Z"), t("2026-02-01T00:00:00Z")),
            (t("2026-02-01T00:00:00Z"), t("2026-03-01T00:00:00Z")),
            (t("2026-03-01T00:00:00Z"), t("2026-03-10T00:00:00Z")),
        ]
    );
}

#[test]
fn usage_open_marks_buckets_still_running_at_their_end() {
    let day = t("2026-05-01T00:00:00Z");
    let recs = [
        rec(1, VmComputeStart, "vm-1", day + 6 * HOUR, (1, GIB, 0)),
        rec(2, VmComputeStop, "vm-1", day + DAY + 6 * HOUR, (1, GIB, 0)),
        rec(3, VmStorageStart, "vm-1", day + 6 * HOUR, (0, 0, GIB)),
    ];
    let q = Query {
        granularity: Granularity::Day,
        now: day + 2 * DAY + 12 * HOUR,
        ..query(day, day + 5 * DAY)
    };
    let answer = run(q, &recs);
    let rows = |i: usize| -> Vec<(i128, bool)> {
        answer[i]
            .rows
            .iter()
            .map(|r| (i128::from(r.running_nanos) / HOUR, r.open))
            .collect()
    };
    // Compute: running past the end of day 1, stopped in day 2.
    assert_eq!(rows(0), [(18, true), (6, false)]);
    // Storage: never stopped; runs to now (day 3, 12:00), nothing after it.
    assert_eq!(rows(1), [(18, true), (24, true), (12, true)]);
}
