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
    let server = Server::with_sink(sink, server::Config::default()).await;
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
        vec![SubmitBatchRequest {
            batches: vec![batch("b-1", "m")],
        }],
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
    exercise(Arc::new(
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
    exercise(Arc::new(Fanout::new(vec![
        jsonl,
        Arc::new(capture.clone()),
    ])))
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
    let fanout = Arc::new(Fanout::new(vec![Arc::new(CaptureSink::new()), jsonl]));
    assert_eq!(fanout.name(), "capture+jsonl");
    let server = Server::with_sink(fanout, server::Config::default()).await;
    let mut client = server.client().await;
    let status = client
        .emit(emit_req(vm_entry("vm-1", "x")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    server.stop().await;
}
