//! `LedgerService.Usage` end to end: DST day buckets in Europe/Berlin,
//! anomalies with their positions, `as_of` answers that do not change as
//! the ledger grows, bad queries, checkpoints on a sealed ledger, and the
//! `meterd usage` command line over gRPC and over a ledger directory.

use std::path::Path;
use std::process::Command;

use meterd::pb::{AnomalyType, Family, Granularity, Kind, UsageAnomaly, UsageRequest, UsageRow};
use tonic::Code;

use crate::common::{
    emit_req, entry_at, meterd_bin, tail_all, tail_entries, ts, Binary, Client, Reader, Server,
};

const GIB: i64 = 1 << 30;
const HOUR: i64 = 3_600_000_000_000;

/// A VM booted on Saturday, running across Berlin's spring-forward night
/// and stopped on Monday; its volume never deleted; an orphan stop; a
/// snapshot that lived three hours across the change; a resize.
type Step = (Kind, &'static str, &'static str, (i64, i64, i64));

const SCENARIO: &[Step] = &[
    (
        Kind::VmComputeStart,
        "vm-1",
        "2026-03-28T12:00:00+01:00",
        (2, 4 * GIB, 0),
    ),
    (
        Kind::VmStorageStart,
        "vm-1",
        "2026-03-28T12:00:00+01:00",
        (0, 0, 20 * GIB),
    ),
    (
        Kind::VmComputeStop,
        "vm-2",
        "2026-03-29T10:00:00+02:00",
        (0, 0, 0),
    ),
    (
        Kind::VmComputeStop,
        "vm-1",
        "2026-03-30T12:00:00+02:00",
        (2, 4 * GIB, 0),
    ),
    (
        Kind::SnapStorageStart,
        "snap-1",
        "2026-03-29T00:30:00+01:00",
        (0, 0, GIB),
    ),
    (
        Kind::SnapStorageStop,
        "snap-1",
        "2026-03-29T04:30:00+02:00",
        (0, 0, 0),
    ),
    (
        Kind::VmComputeStart,
        "vm-3",
        "2026-03-29T08:00:00+02:00",
        (1, GIB, 0),
    ),
    (
        Kind::VmComputeStart,
        "vm-3",
        "2026-03-29T09:00:00+02:00",
        (2, 2 * GIB, 0),
    ),
    (
        Kind::VmComputeStop,
        "vm-3",
        "2026-03-29T10:00:00+02:00",
        (0, 0, 0),
    ),
];

async fn emit_scenario(client: &mut Client) {
    for (kind, id, at, shape) in SCENARIO {
        client
            .emit(emit_req(entry_at(*kind, id, at, *shape)))
            .await
            .unwrap();
    }
}

/// Saturday to Monday, in Berlin days.
fn three_days() -> UsageRequest {
    UsageRequest {
        start_time: Some(ts("2026-03-28T00:00:00+01:00")),
        end_time: Some(ts("2026-03-31T00:00:00+02:00")),
        granularity: Granularity::Day as i32,
        time_zone: "Europe/Berlin".into(),
        ..Default::default()
    }
}

/// Every row and anomaly of a Usage call.
async fn usage(reader: &mut Reader, req: UsageRequest) -> (Vec<UsageRow>, Vec<UsageAnomaly>) {
    let mut stream = reader.usage(req).await.expect("usage").into_inner();
    let (mut rows, mut anomalies) = (Vec::new(), Vec::new());
    while let Some(r) = stream.message().await.expect("usage message") {
        rows.extend(r.rows);
        anomalies.extend(r.anomalies);
    }
    (rows, anomalies)
}

fn row<'a>(rows: &'a [UsageRow], family: Family, id: &str, day: &str) -> &'a UsageRow {
    rows.iter()
        .find(|r| r.family == family as i32 && r.id == id && r.bucket_start == Some(ts(day)))
        .unwrap_or_else(|| panic!("no row {family:?} {id} {day} in {rows:#?}"))
}

#[tokio::test]
async fn usage_pairs_across_a_dst_change_in_berlin_day_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::jsonl(dir.path()).await;
    let mut client = server.client().await;
    emit_scenario(&mut client).await;
    let mut reader = server.reader().await;
    let (rows, anomalies) = usage(&mut reader, three_days()).await;

    let sat = "2026-03-28T00:00:00+01:00";
    let sun = "2026-03-29T00:00:00+01:00";
    let mon = "2026-03-30T00:00:00+02:00";
    // Sunday has 23 hours; the VM ran all of it.
    let r = row(&rows, Family::VmCompute, "vm-1", sun);
    assert_eq!(r.bucket_end, Some(ts(mon)));
    assert_eq!(r.running_nanos, 23 * HOUR);
    assert_eq!(r.vcpu_seconds, (2 * 23 * 3600).to_string());
    assert_eq!(r.mem_byte_seconds, (4 * GIB * 23 * 3600).to_string());
    assert_eq!(
        (r.intervals, r.open, r.hypervisor.as_str()),
        (1, true, "ch-1")
    );
    let r = row(&rows, Family::VmCompute, "vm-1", sat);
    assert_eq!((r.running_nanos, r.open), (12 * HOUR, true));
    let r = row(&rows, Family::VmCompute, "vm-1", mon);
    assert_eq!((r.running_nanos, r.open), (12 * HOUR, false));
    // The volume was never deleted: open in every bucket, to the range's end.
    let r = row(&rows, Family::VmStorage, "vm-1", mon);
    assert_eq!((r.running_nanos, r.open), (24 * HOUR, true));
    assert_eq!(r.storage_byte_seconds, (20 * GIB * 24 * 3600).to_string());
    // 00:30 CET to 04:30 CEST is three hours.
    let r = row(&rows, Family::SnapStorage, "snap-1", sun);
    assert_eq!((r.running_nanos, r.open), (3 * HOUR, false));
    // A resize: two intervals, each billed at its own shape.
    let r = row(&rows, Family::VmCompute, "vm-3", sun);
    assert_eq!((r.running_nanos, r.intervals), (2 * HOUR, 2));
    assert_eq!(r.vcpu_seconds, (3600 + 2 * 3600).to_string());
    // Rows come by family, id, bucket.
    let order: Vec<(i32, String, i64)> = rows
        .iter()
        .map(|r| (r.family, r.id.clone(), r.bucket_start.unwrap().seconds))
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);

    let got: Vec<(i32, &str, u64)> = anomalies
        .iter()
        .map(|a| (a.r#type, a.id.as_str(), a.position))
        .collect();
    assert_eq!(
        got,
        [
            (AnomalyType::OrphanStop as i32, "vm-2", 3),
            (AnomalyType::StartWhileOpen as i32, "vm-3", 8),
        ]
    );
    assert_eq!(anomalies[0].at, Some(ts("2026-03-29T10:00:00+02:00")));
    server.stop().await;
}

#[tokio::test]
async fn an_as_of_answer_does_not_change_as_the_ledger_grows() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::jsonl(dir.path()).await;
    let mut client = server.client().await;
    emit_scenario(&mut client).await;
    let mut reader = server.reader().await;
    let before = usage(&mut reader, three_days()).await;
    // The receive time of the last record: the answer as of then.
    let tail = tail_all(&mut reader, tail_entries(0)).await;
    let last = tail.iter().flat_map(|r| &r.records).last().unwrap();
    let as_of = last.received_at;

    // The volume is deleted on Monday morning, and a backfill arrives.
    client
        .emit(emit_req(entry_at(
            Kind::VmStorageStop,
            "vm-1",
            "2026-03-30T06:00:00+02:00",
            (0, 0, 0),
        )))
        .await
        .unwrap();
    let now = usage(&mut reader, three_days()).await;
    assert_ne!(now, before, "the stop changes the answer");
    let reproduced = usage(
        &mut reader,
        UsageRequest {
            as_of,
            ..three_days()
        },
    )
    .await;
    assert_eq!(
        reproduced, before,
        "as of the earlier receive time, the earlier answer"
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_queries_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::jsonl(dir.path()).await;
    let mut reader = server.reader().await;
    let cases = [
        (
            UsageRequest {
                start_time: None,
                ..three_days()
            },
            "start_time: must be set",
        ),
        (
            UsageRequest {
                end_time: Some(ts("2026-03-27T00:00:00Z")),
                ..three_days()
            },
            "end_time: must be after start_time",
        ),
        (
            UsageRequest {
                time_zone: "Mars/Olympus_Mons".into(),
                ..three_days()
            },
            "time_zone: unknown IANA time zone",
        ),
        (
            UsageRequest {
                families: vec![Family::VmCompute as i32, 0],
                ..three_days()
            },
            "families[1]: must not be FAMILY_UNSPECIFIED",
        ),
        (
            UsageRequest {
                granularity: 9,
                ..three_days()
            },
            "granularity: unknown value 9",
        ),
        (
            UsageRequest {
                granularity: Granularity::Hour as i32,
                end_time: Some(ts("2040-01-01T00:00:00Z")),
                ..three_days()
            },
            "granularity: the range spans more than",
        ),
    ];
    for (req, message) in cases {
        let status = reader.usage(req.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{req:?}");
        assert!(
            status.message().starts_with(message),
            "{}",
            status.message()
        );
    }
    server.stop().await;
}

/// Runs `meterd ARGS...`; returns stdout, panicking with stderr on failure.
fn meterd_ok(args: &[&str]) -> String {
    let out = Command::new(meterd_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "meterd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn cli_usage(source: &[&str], format: &str) -> String {
    let mut args = vec!["usage"];
    args.extend_from_slice(source);
    args.extend_from_slice(&[
        "--from",
        "2026-03-28",
        "--to",
        "2026-03-31",
        "--granularity",
        "day",
        "--time-zone",
        "Europe/Berlin",
        "--format",
        format,
    ]);
    meterd_ok(&args)
}

fn usage_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".usage")
        })
        .count()
}

#[tokio::test]
async fn the_cli_answers_from_the_server_and_from_the_ledger_directory_alike() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    // Tiny segments: the scenario spans several, and queries use checkpoints.
    let server = Binary::start(&ledger, &["--segment-max-bytes", "400"]).await;
    let mut client = server.client().await;
    emit_scenario(&mut client).await;
    let addr = server.addr.to_string();

    let remote = cli_usage(&["--addr", &addr], "jsonl");
    assert!(
        usage_files(&ledger) >= 2,
        "the query wrote checkpoints of the sealed segments"
    );
    // Beside the running server, with its checkpoints, and without them.
    let local = cli_usage(&["--ledger", ledger.to_str().unwrap()], "jsonl");
    assert_eq!(local, remote);
    for e in std::fs::read_dir(&ledger).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "usage") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let bare = cli_usage(&["--ledger", ledger.to_str().unwrap()], "jsonl");
    assert_eq!(bare, remote);
    assert_eq!(usage_files(&ledger), 0, "the --ledger form writes nothing");

    let lines: Vec<serde_json::Value> = remote
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sunday = lines
        .iter()
        .find(|v| {
            v["type"] == "usage"
                && v["id"] == "vm-1"
                && v["family"] == "vm.compute"
                && v["bucket_start"] == "2026-03-29T00:00:00+01:00"
        })
        .expect("vm-1's Sunday");
    assert_eq!(sunday["bucket_end"], "2026-03-30T00:00:00+02:00");
    assert_eq!(sunday["running_nanos"], 23 * HOUR);
    assert!(lines
        .iter()
        .any(|v| v["type"] == "anomaly" && v["anomaly"] == "orphan-stop" && v["position"] == 3));

    let table = cli_usage(&["--addr", &addr], "table");
    let mut text = table.lines();
    let header = text.next().unwrap();
    assert!(
        header.starts_with("FAMILY") && header.contains("BUCKET START"),
        "{table}"
    );
    let sunday_line = table
        .lines()
        .find(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && cols[..3] == ["vm.compute", "vm-1", "2026-03-29T00:00:00+01:00"]
        })
        .unwrap_or_else(|| panic!("{table}"));
    assert!(sunday_line.contains("23:00:00"), "{sunday_line}");
    // Columns line up: every row is as wide as the header up to OPEN.
    let open_at = header.find("OPEN").unwrap();
    assert!(table
        .lines()
        .take_while(|l| !l.is_empty())
        .all(|l| l.len() <= open_at + 4));
    let anomalies = table
        .split("\nanomalies:\n")
        .nth(1)
        .expect("anomalies after the rows");
    assert!(
        anomalies
            .lines()
            .any(|l| l.starts_with("orphan-stop") && l.trim_end().ends_with(" 3")),
        "{anomalies}"
    );

    let csv = cli_usage(&["--ledger", ledger.to_str().unwrap()], "csv");
    let mut csv_lines = csv.lines();
    assert_eq!(
        csv_lines.next().unwrap(),
        "record,family,id,hypervisor,bucket_start,bucket_end,running_nanos,vcpu_seconds,mem_byte_seconds,storage_byte_seconds,intervals,open,anomaly,at,position"
    );
    assert_eq!(csv_lines.count(), lines.len());
}

/// `meterd usage --format csv`: ids and hypervisors are client data; one
/// that a spreadsheet would run as a formula is written as text.
#[tokio::test]
async fn csv_cells_that_a_spreadsheet_would_run_are_written_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let server = Binary::start(&ledger, &[]).await;
    let mut client = server.client().await;
    let ids = [
        "=HYPERLINK(\"http://127.0.0.1/x\",\"y\")",
        "+1+1",
        "-2",
        "@SUM(A1)",
        "plain-vm",
    ];
    for id in ids {
        for (kind, at) in [
            (Kind::VmComputeStart, "2026-03-28T10:00:00Z"),
            (Kind::VmComputeStop, "2026-03-28T11:00:00Z"),
        ] {
            client
                .emit(emit_req(entry_at(kind, id, at, (1, GIB, 0))))
                .await
                .unwrap();
        }
    }
    let csv = meterd_ok(&[
        "usage",
        "--ledger",
        ledger.to_str().unwrap(),
        "--from",
        "2026-03-28T00:00:00Z",
        "--to",
        "2026-03-29T00:00:00Z",
        "--format",
        "csv",
    ]);
    for cell in [
        "\"'=HYPERLINK(\"\"http://127.0.0.1/x\"\",\"\"y\"\")\"",
        "\"'+1+1\"",
        "\"'-2\"",
        "\"'@SUM(A1)\"",
        ",plain-vm,",
    ] {
        assert!(csv.contains(cell), "{cell} in {csv}");
    }
    // No line has a cell that starts a formula.
    for line in csv.lines() {
        for cell in line.split(',') {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t']),
                "{cell} in {line}"
            );
        }
    }
}
