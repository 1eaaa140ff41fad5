//! One compliance suite over every sink: a round trip, 200 concurrent writes
//! giving 200 records, and fan-out with a failing member.

use std::sync::Arc;

use meterd::pb::SubmitBatchRequest;
use meterd::server;
use meterd::sink::capture::CaptureSink;
use meterd::sink::fanout::Fanout;
use meterd::sink::jsonl::JsonlSink;
use meterd::sink::nop::NopSink;
use meterd::sink::stderr::StderrSink;
use meterd::sink::Sink;
use tonic::Code;

use crate::common::{batch, emit_req, entries, ledger_config, vm_entry, Server};
use crate::submit_batch::{acks, submit_all};

/// Emits 200 entries concurrently and one batch; every call must be acked.
pub async fn exercise(sink: Arc<dyn Sink>) {
    exercise_with(sink, None).await
}

/// [`exercise`] of a JSONL sink, its ledger served to readers.
pub async fn exercise_jsonl(sink: Arc<JsonlSink>) {
    let ledger = Some(sink.ledger().clone());
    exercise_with(sink, ledger).await
}

async fn exercise_with(sink: Arc<dyn Sink>, ledger: Option<Arc<meterd::ledger::Ledger>>) {
    let server = Server::with_sink_and_ledger(sink, ledger, server::Config::default()).await;
    let client = server.client().await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move {
                c.emit(emit_req(vm_entry(&format!("vm-{i}"), &format!("e-{i}"))))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().expect("acked");
    }
    let mut c = client.clone();
    let r = submit_all(
        &mut c,
        vec![SubmitBatchRequest::new(vec![batch("b-1", "m")])],
    )
    .await;
    assert_eq!(acks(&r[0], "m"), vec!["b-1"]);
    server.stop().await;
}

#[tokio::test]
async fn capture_keeps_every_record_with_the_ledger_bytes() {
    let capture = CaptureSink::new();
    exercise(Arc::new(capture.clone())).await;
    let lines = capture.lines();
    assert_eq!(lines.len(), 201);
    assert_eq!(
        lines.iter().filter(|l| l.starts_with(b"{\"kind\"")).count(),
        200
    );
    assert!(lines.iter().all(|l| l.ends_with(b"\n")));
    capture.reset();
    assert!(capture.lines().is_empty());
}

#[tokio::test]
async fn jsonl_nop_and_stderr_ack_every_record() {
    let dir = tempfile::tempdir().unwrap();
    exercise_jsonl(Arc::new(
        JsonlSink::open(ledger_config(dir.path())).await.unwrap(),
    ))
    .await;
    assert_eq!(entries(dir.path()).len(), 200);
    exercise(Arc::new(NopSink)).await;
    exercise(Arc::new(StderrSink)).await;
}

#[tokio::test]
async fn fanout_acks_once_every_sink_has_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let capture = CaptureSink::new();
    let jsonl = Arc::new(JsonlSink::open(ledger_config(dir.path())).await.unwrap());
    let ledger = Some(jsonl.ledger().clone());
    exercise_with(
        Arc::new(Fanout::new(vec![jsonl, Arc::new(capture.clone())])),
        ledger,
    )
    .await;
    let ledger: Vec<Vec<u8>> = entries(dir.path())
        .into_iter()
        .map(|l| format!("{l}\n").into_bytes())
        .collect();
    let captured: Vec<Vec<u8>> = capture
        .lines()
        .into_iter()
        .filter(|l| l.starts_with(b"{\"kind\""))
        .collect();
    let (mut a, mut b) = (ledger, captured);
    a.sort();
    b.sort();
    assert_eq!(a, b, "both sinks hold the same bytes");
}

#[tokio::test]
async fn fanout_with_a_failing_sink_answers_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/dev/full", dir.path().join(meterd::ledger::ENTRIES_FILE)).unwrap();
    let jsonl = Arc::new(JsonlSink::open(ledger_config(dir.path())).await.unwrap());
    let ledger = Some(jsonl.ledger().clone());
    let fanout = Arc::new(Fanout::new(vec![Arc::new(CaptureSink::new()), jsonl]));
    assert_eq!(fanout.name(), "capture+jsonl");
    let server = Server::with_sink_and_ledger(fanout, ledger, server::Config::default()).await;
    let mut client = server.client().await;
    let status = client
        .emit(emit_req(vm_entry("vm-1", "x")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    server.stop().await;
}

/// Two ledgers, the second on a failing disk: the call fails with the
/// failing sink's status while the first ledger has the records; once the
/// disk is fixed, the client's retry (same id, same uuid, and for an entry
/// without an id the same content) is written once in each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_partial_fan_out_failure_is_written_once_everywhere() {
    use meterd::ledger::{BATCHES_FILE, ENTRIES_FILE};
    use tonic_health::pb::health_check_response::ServingStatus;

    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for file in [ENTRIES_FILE, BATCHES_FILE] {
        std::os::unix::fs::symlink("/dev/full", second.path().join(file)).unwrap();
    }
    let other = format!("jsonl={}", second.path().display());
    let server =
        crate::common::Binary::start(first.path(), &["--sink", "jsonl", "--sink", &other]).await;
    let mut client = server.client().await;
    let with_id = vm_entry("vm-fan", "fan-1");
    // No id, and its own emitted_at: a retry is the same content.
    let without_id = vm_entry("vm-fan-noid", "");
    let batches = vec![SubmitBatchRequest::new(vec![batch("fan-b", "m")])];

    for entry in [&with_id, &without_id] {
        let s = client.emit(emit_req(entry.clone())).await.unwrap_err();
        assert_eq!(s.code(), Code::Unavailable, "{s:?}");
        assert!(s.message().contains("No space left on device"), "{s:?}");
    }
    let s = client
        .submit_batch(tokio_stream::iter(batches.clone()))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    // Written where the write succeeded.
    assert_eq!(entries(first.path()).len(), 2);
    assert_eq!(crate::common::batches(first.path()).len(), 1);

    // The disk is fixed; the failed sink's probe brings health back.
    for file in [ENTRIES_FILE, BATCHES_FILE] {
        std::fs::remove_file(second.path().join(file)).unwrap();
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        crate::common::channel(server.addr).await,
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while crate::common::health_status(&mut health, "").await != ServingStatus::Serving as i32 {
        assert!(
            std::time::Instant::now() < deadline,
            "health never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Twice: the first retry completes the fan-out, the second changes nothing.
    for _ in 0..2 {
        for entry in [&with_id, &without_id] {
            let r = client.emit(emit_req(entry.clone())).await.unwrap();
            assert!(r.get_ref().duplicate, "the first ledger had it already");
        }
        let r = submit_all(&mut client, batches.clone()).await;
        assert_eq!(acks(&r[0], "m"), vec!["fan-b"]);
    }
    for dir in [first.path(), second.path()] {
        let lines = entries(dir);
        assert_eq!(
            crate::common::field_values(&lines, "vm_id"),
            vec!["vm-fan", "vm-fan-noid"],
            "{}",
            dir.display()
        );
        // The line is what the client sent: no id is added to it.
        assert!(!lines[1].contains("\"id\""), "{}", lines[1]);
        assert_eq!(
            crate::common::field_values(&crate::common::batches(dir), "uuid"),
            vec!["fan-b"]
        );
    }
}
