//! `LedgerService.Tail`: reading a stream from a position, resuming across
//! restarts and seals, retention, bad requests, following, the kinds filter.

use std::time::Duration;

use meterd::ledger::Fsync;
use meterd::pb::{self, tail_record::Record, Kind, SubmitBatchRequest, TailRequest};
use meterd::server;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::{
    batch, batches, emit_req, entries, health_status, ledger_config, tail_all, tail_entries,
    vm_entry, wait_until, Binary, Client, Server,
};
use crate::submit_batch::submit_all;

async fn emit_n(client: &mut Client, prefix: &str, n: usize) {
    for i in 0..n {
        client
            .emit(emit_req(vm_entry(
                &format!("vm-{i}"),
                &format!("{prefix}-{i}"),
            )))
            .await
            .unwrap();
    }
}

/// Positions and lines of every record in the responses.
fn records(resps: &[pb::TailResponse]) -> Vec<(u64, String)> {
    resps
        .iter()
        .flat_map(|r| &r.records)
        .map(|r| (r.position, String::from_utf8(r.line.clone()).unwrap()))
        .collect()
}

#[tokio::test]
async fn tail_from_zero_and_from_the_middle_gives_the_ledger_lines_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = ledger_config(dir.path());
    // A few records per segment: the reads cross seals.
    ledger.segment_max_bytes = 600;
    let server = Server::with_ledger(ledger, server::Config::default()).await;
    let mut client = server.client().await;
    emit_n(&mut client, "a", 10).await;
    let lines = entries(dir.path());
    assert_eq!(lines.len(), 10);
    assert!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".keys"))
            .count()
            >= 2,
        "segments were sealed"
    );

    // Health lists the reader service.
    let mut health = server.health().await;
    assert_eq!(
        health_status(&mut health, "metering.v1.LedgerService").await,
        ServingStatus::Serving as i32
    );
    let mut reader = server.reader().await;
    let all = tail_all(&mut reader, tail_entries(0)).await;
    let want: Vec<(u64, String)> = (1..=10).zip(lines.iter().cloned()).collect();
    assert_eq!(records(&all), want);
    let last = all.last().unwrap();
    assert_eq!((last.position, last.caught_up), (10, true));
    for r in all.iter().flat_map(|r| &r.records) {
        let Some(Record::Entry(e)) = &r.record else {
            panic!("an entry record: {r:?}")
        };
        assert_eq!(e.id, format!("a-{}", r.position - 1));
        assert!(r.received_at.as_ref().is_some_and(|t| t.seconds > 0));
    }

    let middle = tail_all(&mut reader, tail_entries(4)).await;
    assert_eq!(records(&middle), want[4..]);
    // At the end: one response that says so, with nothing in it.
    let end = tail_all(&mut reader, tail_entries(10)).await;
    assert_eq!(end.len(), 1);
    assert!(end[0].records.is_empty() && end[0].caught_up && end[0].position == 10);
    server.stop().await;
}

#[tokio::test]
async fn tail_resumes_without_gap_or_duplicate_across_a_seal_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let server = Binary::start(&ledger, &[]).await;
    let mut client = server.client().await;
    emit_n(&mut client, "one", 3).await;
    let mut reader = server.reader().await;
    let first = records(&tail_all(&mut reader, tail_entries(0)).await);
    assert_eq!(first.len(), 3);

    // SIGHUP seals the active file: the next read starts in a new segment.
    server.signal("HUP");
    let sealed = ledger.join("entries.00000000000000000001.jsonl");
    wait_until("the seal after SIGHUP", || sealed.exists()).await;
    emit_n(&mut client, "two", 2).await;
    let second = records(&tail_all(&mut reader, tail_entries(3)).await);
    assert_eq!(second.iter().map(|r| r.0).collect::<Vec<_>>(), [4, 5]);

    // A restart: positions go on, the resumed read sees exactly what is new.
    let addr = server.addr;
    drop(server);
    let server = Binary::start_at(addr, &ledger, &[]).await;
    let mut client = server.client().await;
    emit_n(&mut client, "three", 2).await;
    let mut reader = server.reader().await;
    let third = records(&tail_all(&mut reader, tail_entries(5)).await);
    assert_eq!(third.iter().map(|r| r.0).collect::<Vec<_>>(), [6, 7]);

    let mut seen: Vec<String> = first.into_iter().map(|r| r.1).collect();
    seen.extend(second.into_iter().map(|r| r.1));
    seen.extend(third.into_iter().map(|r| r.1));
    assert_eq!(seen, entries(&ledger), "resumed reads add up to the ledger");
}

#[tokio::test]
async fn tail_after_retention_is_out_of_range_naming_the_first_available_position() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let server = Binary::start(
        &ledger,
        &[
            "--retention-bytes",
            "1",
            "--dedupe-window",
            "1s",
            "--segment-max-bytes",
            "300",
        ],
    )
    .await;
    let mut client = server.client().await;
    emit_n(&mut client, "r", 6).await;
    // Retention runs once a second and keeps what is inside the window.
    let first_segment = ledger.join("entries.00000000000000000001.jsonl");
    wait_until("retention to delete the first segment", || {
        !first_segment.exists()
    })
    .await;
    // One record after the deletion, so that the active segment has one.
    client
        .emit(emit_req(vm_entry("vm-7", "r-7")))
        .await
        .unwrap();
    let mut reader = server.reader().await;
    let from_start = tail_all(&mut reader, tail_entries(0)).await;
    let first = from_start
        .iter()
        .flat_map(|r| &r.records)
        .map(|r| r.position)
        .min()
        .unwrap();
    assert!(first > 1, "after = 0 starts at the first retained record");

    let status = reader.tail(tail_entries(1)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let named: u64 = status
        .message()
        .split("first available position is ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no position in {:?}", status.message()));
    // Retention may have moved on since the read above, never back.
    assert!(named >= first, "{named} < {first}");
    // Resuming where the message says works.
    let resumed = tail_all(&mut reader, tail_entries(named - 1)).await;
    assert_eq!(
        resumed
            .iter()
            .flat_map(|r| &r.records)
            .next()
            .unwrap()
            .position,
        named
    );
}

#[tokio::test]
async fn tail_refuses_bad_requests_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::jsonl(dir.path()).await;
    let mut client = server.client().await;
    emit_n(&mut client, "x", 2).await;
    let mut reader = server.reader().await;
    let cases = [
        (
            tail_entries(3),
            Code::InvalidArgument,
            "after: position 3 is beyond the end",
        ),
        (
            TailRequest::default(),
            Code::InvalidArgument,
            "stream: must be set",
        ),
        (
            TailRequest {
                stream: pb::Stream::Batches as i32,
                kinds: vec![Kind::VmComputeStart as i32],
                ..Default::default()
            },
            Code::InvalidArgument,
            "kinds: filters entries only",
        ),
        (
            TailRequest {
                kinds: vec![Kind::VmComputeStart as i32, 0],
                ..tail_entries(0)
            },
            Code::InvalidArgument,
            "kinds[1]: must not be KIND_UNSPECIFIED",
        ),
    ];
    for (req, code, message) in cases {
        let status = reader.tail(req.clone()).await.unwrap_err();
        assert_eq!(status.code(), code, "{req:?}: {status:?}");
        assert!(
            status.message().starts_with(message),
            "{req:?}: {}",
            status.message()
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn follow_is_woken_by_new_writes_and_ends_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::jsonl(dir.path()).await;
    let mut client = server.client().await;
    emit_n(&mut client, "f", 2).await;
    let mut reader = server.reader().await;
    let mut stream = reader
        .tail(TailRequest {
            follow: true,
            ..tail_entries(0)
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    loop {
        let r = next(&mut stream).await.unwrap().unwrap();
        got.extend(r.records.iter().map(|r| r.position));
        if r.caught_up {
            break;
        }
    }
    assert_eq!(got, [1, 2]);
    // The call stays open; a write wakes it.
    client
        .emit(emit_req(vm_entry("vm-9", "f-late")))
        .await
        .unwrap();
    let r = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(
        r.records.iter().map(|r| r.position).collect::<Vec<_>>(),
        [3]
    );
    assert!(r.caught_up && r.position == 3);
    // Shutdown ends the call with UNAVAILABLE, saying where to resume.
    let stopping = tokio::spawn(server.stop());
    let end = next(&mut stream).await.unwrap_err();
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(
        end.message().contains("resume with after = 3"),
        "{}",
        end.message()
    );
    stopping.await.unwrap();
}

/// The next message of a stream; a guard against a hang, not a measure.
async fn next(
    stream: &mut tonic::Streaming<pb::TailResponse>,
) -> Result<Option<pb::TailResponse>, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("a response within 20 s")
}

#[tokio::test]
async fn the_kinds_filter_skips_records_but_position_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::jsonl(dir.path()).await;
    let mut client = server.client().await;
    let kinds = [
        Kind::VmComputeStart,
        Kind::VmStorageStart,
        Kind::VmComputeStop,
        Kind::VmComputeStart,
        Kind::VmStorageStop,
    ];
    for (i, k) in kinds.iter().enumerate() {
        let mut e = vm_entry("vm-1", &format!("k-{i}"));
        e.kind = *k as i32;
        client.emit(emit_req(e)).await.unwrap();
    }
    let mut reader = server.reader().await;
    let resps = tail_all(
        &mut reader,
        TailRequest {
            kinds: vec![Kind::VmComputeStart as i32],
            ..tail_entries(0)
        },
    )
    .await;
    let positions: Vec<u64> = resps
        .iter()
        .flat_map(|r| &r.records)
        .map(|r| r.position)
        .collect();
    assert_eq!(positions, [1, 4]);
    let last = resps.last().unwrap();
    assert_eq!(
        (last.position, last.caught_up),
        (5, true),
        "the filtered tail still counts"
    );
    // Resuming from there finds nothing more, and says so.
    let again = tail_all(&mut reader, tail_entries(last.position)).await;
    assert!(again.iter().all(|r| r.records.is_empty()));
    server.stop().await;
}

#[tokio::test]
async fn batches_come_whole_with_their_credentials_in_bounded_responses() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = ledger_config(dir.path());
    ledger.fsync = Fsync::Never;
    let server = Server::with_ledger(ledger, server::Config::default()).await;
    let mut client = server.client().await;
    // Enough batches that one response cannot hold them all.
    let requests: Vec<SubmitBatchRequest> = (0..3)
        .map(|r| {
            SubmitBatchRequest::new(
                (0..700)
                    .map(|i| batch(&format!("b-{r}-{i}"), "model-1"))
                    .collect(),
            )
        })
        .collect();
    submit_all(&mut client, requests).await;
    let lines = batches(dir.path());
    assert_eq!(lines.len(), 2100);
    let mut reader = server.reader().await;
    let resps = tail_all(
        &mut reader,
        TailRequest {
            stream: pb::Stream::Batches as i32,
            ..Default::default()
        },
    )
    .await;
    assert!(resps.len() > 1, "cut into several responses");
    let caught: Vec<bool> = resps.iter().map(|r| r.caught_up).collect();
    assert!(caught[..caught.len() - 1].iter().all(|c| !c) && caught[caught.len() - 1]);
    let got: Vec<String> = records(&resps).into_iter().map(|r| r.1).collect();
    assert_eq!(got, lines);
    let first = &resps[0].records[0];
    let Some(Record::Batch(b)) = &first.record else {
        panic!("a batch record")
    };
    assert_eq!(
        b.credentials, b"secret-macaroon",
        "credentials are part of the record"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_server_without_a_ledger_says_so() {
    let sink = std::sync::Arc::new(meterd::sink::capture::CaptureSink::new());
    let server = Server::with_sink(sink, server::Config::default()).await;
    let mut health = server.health().await;
    assert_eq!(
        health_status(&mut health, "metering.v1.LedgerService").await,
        ServingStatus::NotServing as i32
    );
    let mut reader = server.reader().await;
    let status = reader.tail(tail_entries(0)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("no ledger"),
        "{}",
        status.message()
    );
    server.stop().await;
}
