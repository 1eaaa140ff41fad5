//! `EmitBatch` end to end: per-entry results in request order, bad entries
//! that change nothing, duplicates, the per-request limit, admission
//! control and metrics.

use meterd::pb::{self, EmitBatchRequest, SubmitBatchRequest};
use meterd::server;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::common::{emit_req, entries, field_values, free_port, vm_entry, Binary, Server};

fn request(entries: Vec<pb::Entry>) -> EmitBatchRequest {
    EmitBatchRequest::new(entries)
}

/// Entries without an id and without `emitted_at` are stamped with their
/// receive time, so each send is a new record, even when two identical
/// ones arrive in the same request (one instant) or the same nanosecond.
#[tokio::test]
async fn identical_entries_stamped_by_the_server_are_all_written() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::jsonl(dir.path()).await;
    let mut client = server.client().await;
    let mut stamped = vm_entry("vm-twice", "");
    stamped.emitted_at = None;
    let results = client
        .emit_batch(request(vec![stamped.clone(); 3]))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(
        results
            .iter()
            .all(|r| !r.duplicate && r.rejected.is_empty()),
        "{results:?}"
    );
    let times: std::collections::BTreeSet<_> = results
        .iter()
        .map(|r| r.emitted_at.map(|t| (t.seconds, t.nanos)))
        .collect();
    assert_eq!(times.len(), 3, "each one its own stamp: {results:?}");
    assert_eq!(entries(dir.path()).len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn each_entry_gets_its_own_result_and_bad_ones_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::jsonl(dir.path()).await;
    let mut client = server.client().await;
    // Recorded before: its second copy below is a duplicate.
    client
        .emit(emit_req(vm_entry("vm-seen", "seen-1")))
        .await
        .unwrap();

    let mut no_vm = vm_entry("", "bad-1");
    no_vm.vm_id.clear();
    let mut no_time = vm_entry("vm-stamped", "");
    no_time.emitted_at = None;
    let sent = vec![
        vm_entry("vm-a", "a-1"),
        no_vm,
        vm_entry("vm-seen", "seen-1"),
        no_time,
        pb::Entry {
            kind: 0,
            ..vm_entry("vm-bad-kind", "bad-2")
        },
        vm_entry("vm-b", "b-1"),
        // The same id twice in one request: written once.
        vm_entry("vm-b", "b-1"),
    ];
    let before = time::OffsetDateTime::now_utc();
    let results = client
        .emit_batch(request(sent.clone()))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), sent.len());

    let rejected: Vec<&str> = results.iter().map(|r| r.rejected.as_str()).collect();
    assert_eq!(rejected[0], "");
    assert!(
        rejected[1].starts_with("entries[1].vm_id: "),
        "{}",
        rejected[1]
    );
    assert!(
        rejected[4].starts_with("entries[4].kind: "),
        "{}",
        rejected[4]
    );
    for i in [0, 2, 3, 5, 6] {
        assert_eq!(rejected[i], "", "entry {i}");
        assert!(results[i].emitted_at.is_some(), "entry {i}");
    }
    for i in [1, 4] {
        assert!(results[i].emitted_at.is_none(), "entry {i}");
        assert!(!results[i].duplicate, "entry {i}");
    }
    let duplicates: Vec<bool> = results.iter().map(|r| r.duplicate).collect();
    assert_eq!(
        duplicates,
        vec![false, false, true, false, false, false, true]
    );
    assert_eq!(results[0].emitted_at, sent[0].emitted_at);
    // The unset time is stamped with the receive time, and returned.
    let stamped = meterd::record::timestamp_to_time(results[3].emitted_at.as_ref().unwrap())
        .expect("a valid stamped time");
    assert!(stamped >= before && stamped <= time::OffsetDateTime::now_utc());

    server.stop().await;
    assert_eq!(
        field_values(&entries(dir.path()), "vm_id"),
        vec!["vm-seen", "vm-a", "vm-stamped", "vm-b"],
        "good entries once each, in request order; bad ones nowhere"
    );
}

#[tokio::test]
async fn the_entries_limit_refuses_the_whole_request_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = server::Config::default();
    config.limits.max_entries_per_request = 3;
    let server = Server::jsonl_with(dir.path(), config).await;
    let mut client = server.client().await;

    let four: Vec<pb::Entry> = (0..4)
        .map(|i| vm_entry(&format!("vm-{i}"), &format!("over-{i}")))
        .collect();
    let status = client.emit_batch(request(four)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("entries: 4 entries exceed the limit of 3"),
        "{}",
        status.message()
    );

    // An empty request is fine: no results, nothing written.
    let empty = client.emit_batch(request(Vec::new())).await.unwrap();
    assert!(empty.into_inner().results.is_empty());

    // At the limit: accepted.
    let three: Vec<pb::Entry> = (0..3)
        .map(|i| vm_entry(&format!("vm-{i}"), &format!("ok-{i}")))
        .collect();
    let results = client
        .emit_batch(request(three))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(results
        .iter()
        .all(|r| r.rejected.is_empty() && !r.duplicate));
    server.stop().await;
    assert_eq!(
        field_values(&entries(dir.path()), "id"),
        vec!["ok-0", "ok-1", "ok-2"]
    );
}

#[tokio::test]
async fn emit_batch_takes_a_slot_under_max_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let config = server::Config {
        max_in_flight: 1,
        ..Default::default()
    };
    let server = Server::jsonl_with(dir.path(), config).await;
    let mut client = server.client().await;
    // An open stream holds the only slot.
    let (tx, rx) = mpsc::channel::<SubmitBatchRequest>(1);
    let _stream = client
        .clone()
        .submit_batch(ReceiverStream::new(rx))
        .await
        .expect("admitted")
        .into_inner();
    let status = client
        .emit_batch(request(vec![vm_entry("vm-1", "x")]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("--max-in-flight"), "{status:?}");
    drop(tx);
    drop(_stream);
    server.stop().await;
    assert!(entries(dir.path()).is_empty());
}

#[tokio::test]
async fn the_flag_and_the_metrics_of_emit_batch() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let bin = Binary::start(
        dir.path(),
        &[
            "--metrics-listen",
            &metrics_addr,
            "--max-entries-per-request",
            "2",
        ],
    )
    .await;
    let mut client = bin.client().await;
    let mut bad = vm_entry("", "m-bad");
    bad.vm_id.clear();
    let results = client
        .emit_batch(request(vec![vm_entry("vm-m", "m-1"), bad]))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results[0].rejected, "");
    assert!(results[1].rejected.starts_with("entries[1].vm_id"));
    client
        .emit_batch(request(vec![vm_entry("vm-m", "m-1")]))
        .await
        .unwrap();
    let status = client
        .emit_batch(request(vec![vm_entry("a", ""); 3]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let m = crate::ops::scrape(&metrics_addr).await;
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    assert_eq!(
        get(r#"meterd_requests_total{rpc="EmitBatch",code="OK"}"#),
        2.0,
        "{m:?}"
    );
    assert_eq!(
        get(r#"meterd_requests_total{rpc="EmitBatch",code="INVALID_ARGUMENT"}"#),
        1.0,
        "{m:?}"
    );
    assert_eq!(
        get(r#"meterd_records_accepted_total{type="entry",kind="vm.compute.start",reason="boot"}"#),
        1.0,
        "{m:?}"
    );
    assert_eq!(
        get(r#"meterd_duplicates_skipped_total{type="entry"}"#),
        1.0,
        "{m:?}"
    );
    assert_eq!(
        get(r#"meterd_records_rejected_total{type="entry",field="entries[].vm_id"}"#),
        1.0,
        "{m:?}"
    );
    assert_eq!(
        get(r#"meterd_records_rejected_total{type="entry",field="entries"}"#),
        1.0,
        "{m:?}"
    );
}
