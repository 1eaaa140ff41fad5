//! The JSONL ledger: idempotency across restarts, crash recovery of a torn
//! line, write failures answered UNAVAILABLE with recovery, fsync policies.

use std::sync::Arc;

use meterd::ledger::{Fsync, BATCHES_FILE, ENTRIES_FILE};
use meterd::pb::SubmitBatchRequest;
use meterd::server;
use meterd::sink::jsonl::JsonlSink;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::{
    batch, batches, emit_req, entries, field_values, health_status, ledger_config, vm_entry, Server,
};
use crate::submit_batch::{acks, submit_all};

#[tokio::test]
async fn duplicate_entry_id_and_batch_uuid_are_written_once_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::jsonl(dir.path()).await;
    let mut client = server.client().await;
    let first = client
        .emit(emit_req(vm_entry("vm-1", "evt-1")))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.duplicate);
    let again = client
        .emit(emit_req(vm_entry("vm-1", "evt-1")))
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate, "same id in the same run");
    let r = submit_all(
        &mut client,
        vec![SubmitBatchRequest::new(vec![batch("b-1", "m")])],
    )
    .await;
    assert_eq!(acks(&r[0], "m"), vec!["b-1"]);
    server.stop().await;

    let server = Server::jsonl(dir.path()).await;
    let mut client = server.client().await;
    let after = client
        .emit(emit_req(vm_entry("vm-1", "evt-1")))
        .await
        .unwrap()
        .into_inner();
    assert!(after.duplicate, "the id survives a restart");
    // Entries without an id are de-duplicated by content: the same entry
    // (same emitted_at) again is a duplicate, another one is written.
    let no_id = vm_entry("vm-1", "");
    let first = client.emit(emit_req(no_id.clone())).await.unwrap();
    assert!(!first.get_ref().duplicate);
    let again = client.emit(emit_req(no_id)).await.unwrap();
    assert!(again.get_ref().duplicate, "the same content is one record");
    client.emit(emit_req(vm_entry("vm-1", ""))).await.unwrap();
    let r = submit_all(
        &mut client,
        vec![
            SubmitBatchRequest::new(vec![batch("b-1", "m"), batch("b-2", "m")]),
            SubmitBatchRequest::new(vec![batch("b-2", "m")]),
        ],
    )
    .await;
    assert_eq!(
        acks(&r[0], "m"),
        vec!["b-1", "b-2"],
        "a re-sent batch is acked again"
    );
    assert_eq!(acks(&r[1], "m"), vec!["b-2"]);
    server.stop().await;

    let ids: Vec<_> = entries(dir.path())
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].clone())
        .collect();
    assert_eq!(
        ids,
        vec![
            serde_json::json!("evt-1"),
            serde_json::Value::Null,
            serde_json::Value::Null
        ]
    );
    let uuids = field_values(&batches(dir.path()), "uuid");
    assert_eq!(uuids, vec!["b-1", "b-2"]);
}

#[tokio::test]
async fn concurrent_duplicates_are_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::jsonl(dir.path()).await;
    let client = server.client().await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let mut c = client.clone();
        // 200 calls, 20 distinct ids, all at once.
        tasks.push(tokio::spawn(async move {
            c.emit(emit_req(vm_entry("vm-1", &format!("id-{}", i % 20))))
                .await
                .unwrap()
                .into_inner()
        }));
    }
    let mut duplicates = 0;
    for t in tasks {
        duplicates += usize::from(t.await.unwrap().duplicate);
    }
    assert_eq!(duplicates, 180);
    server.stop().await;
    assert_eq!(entries(dir.path()).len(), 20);
}

#[tokio::test]
async fn dedupe_window_is_measured_on_receive_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ledger_config(dir.path());
    cfg.dedupe_window = std::time::Duration::from_secs(1);
    // A backfilled entry: its own time is long outside the window, yet a
    // retry right after it was received is a duplicate.
    let old = meterd::record::time_to_timestamp(
        time::OffsetDateTime::now_utc() - std::time::Duration::from_secs(90 * 86400),
    );
    let mut stale = vm_entry("vm-1", "old-id");
    stale.emitted_at = Some(old);

    let sink = Arc::new(JsonlSink::open(cfg.clone()).await.unwrap());
    let server = Server::with_jsonl(sink, server::Config::default()).await;
    let mut client = server.client().await;
    assert!(
        !client
            .emit(emit_req(stale.clone()))
            .await
            .unwrap()
            .into_inner()
            .duplicate
    );
    assert!(
        client
            .emit(emit_req(stale.clone()))
            .await
            .unwrap()
            .into_inner()
            .duplicate
    );
    server.stop().await;

    let sink = Arc::new(JsonlSink::open(cfg).await.unwrap());
    let server = Server::with_jsonl(sink, server::Config::default()).await;
    let mut client = server.client().await;
    // The window is wall time since the record was received: wait it out.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = client.emit(emit_req(stale)).await.unwrap().into_inner();
    assert!(!r.duplicate, "outside the window an id is forgotten");
    server.stop().await;
    assert_eq!(entries(dir.path()).len(), 2);
}

#[tokio::test]
async fn a_backfilled_entry_and_batch_retried_after_a_restart_are_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let months_ago = meterd::record::time_to_timestamp(
        time::OffsetDateTime::now_utc() - std::time::Duration::from_secs(120 * 86400),
    );
    let mut entry = vm_entry("vm-1", "backfill-1");
    entry.emitted_at = Some(months_ago);
    let mut b = batch("b-backfill", "m");
    b.created = Some(months_ago);
    for m in &mut b.metrics {
        m.time = Some(months_ago);
    }
    for round in 0..2 {
        let server = Server::jsonl(dir.path()).await;
        let mut client = server.client().await;
        let r = client
            .emit(emit_req(entry.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.duplicate, round == 1, "round {round}");
        let resp = submit_all(&mut client, vec![SubmitBatchRequest::new(vec![b.clone()])]).await;
        assert_eq!(acks(&resp[0], "m"), vec!["b-backfill"]);
        server.stop().await;
    }
    assert_eq!(entries(dir.path()).len(), 1);
    assert_eq!(batches(dir.path()).len(), 1);
}

#[tokio::test]
async fn a_torn_last_line_is_cut_on_start() {
    let dir = tempfile::tempdir().unwrap();
    let when = (time::OffsetDateTime::now_utc() - std::time::Duration::from_secs(60))
        .replace_nanosecond(0)
        .unwrap();
    let when_text = when
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let good = format!("{{\"kind\":\"vm.compute.start\",\"vm_id\":\"vm-1\",\"shape\":{{}},\"emitted_at\":\"{when_text}\",\"id\":\"kept\"}}\n");
    std::fs::write(
        dir.path().join(ENTRIES_FILE),
        format!("{good}{{\"kind\":\"vm.comp"),
    )
    .unwrap();
    std::fs::write(dir.path().join(BATCHES_FILE), "{\"uuid\":\"torn").unwrap();

    let server = Server::jsonl(dir.path()).await;
    let mut client = server.client().await;
    let mut kept = vm_entry("vm-1", "kept");
    kept.emitted_at = Some(meterd::record::time_to_timestamp(when));
    // The index was rebuilt from the surviving line.
    assert!(
        client
            .emit(emit_req(kept))
            .await
            .unwrap()
            .into_inner()
            .duplicate
    );
    client
        .emit(emit_req(vm_entry("vm-2", "new")))
        .await
        .unwrap();
    submit_all(
        &mut client,
        vec![SubmitBatchRequest::new(vec![batch("b", "m")])],
    )
    .await;
    server.stop().await;

    let lines = entries(dir.path());
    assert_eq!(lines.len(), 2);
    assert_eq!(format!("{}\n", lines[0]), good);
    for l in lines.iter().chain(batches(dir.path()).iter()) {
        serde_json::from_str::<serde_json::Value>(l).expect("every line is whole JSON");
    }
    assert_eq!(batches(dir.path()).len(), 1);
}

#[tokio::test]
async fn a_failing_disk_answers_unavailable_flips_health_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let entries_path = dir.path().join(ENTRIES_FILE);
    std::os::unix::fs::symlink("/dev/full", &entries_path).unwrap();
    let server = Server::jsonl(dir.path()).await;
    let mut client = server.client().await;
    let mut health = server.health().await;
    assert_eq!(
        health_status(&mut health, "").await,
        ServingStatus::Serving as i32
    );

    let status = client
        .emit(emit_req(vm_entry("vm-1", "retry-me")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("No space left on device"),
        "{status:?}"
    );
    let mut not_serving = false;
    for _ in 0..100 {
        if health_status(&mut health, "metering.v1.MeteringService").await
            == ServingStatus::NotServing as i32
        {
            not_serving = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        not_serving,
        "health reports NOT_SERVING after a failed write"
    );
    assert_eq!(
        health_status(&mut health, "").await,
        ServingStatus::NotServing as i32
    );

    // The cause goes away: the next write reopens the file and succeeds, and
    // the failed id was left free so the client's retry is recorded.
    std::fs::remove_file(&entries_path).unwrap();
    let r = client
        .emit(emit_req(vm_entry("vm-1", "retry-me")))
        .await
        .expect("recovered")
        .into_inner();
    assert!(!r.duplicate, "a failed write leaves its id free");
    let mut serving = false;
    for _ in 0..100 {
        if health_status(&mut health, "").await == ServingStatus::Serving as i32 {
            serving = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(serving, "health returns to SERVING");
    server.stop().await;
    assert_eq!(entries(dir.path()).len(), 1);
}

#[tokio::test]
async fn a_failing_disk_ends_submit_batch_with_unavailable_and_nothing_acked() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/dev/full", dir.path().join(BATCHES_FILE)).unwrap();
    let server = Server::jsonl(dir.path()).await;
    let mut client = server.client().await;
    let mut responses = client
        .submit_batch(tokio_stream::iter(vec![SubmitBatchRequest::new(vec![
            batch("b-1", "m"),
        ])]))
        .await
        .unwrap()
        .into_inner();
    let status = responses
        .next()
        .await
        .expect("an answer")
        .expect_err("not acked");
    assert_eq!(status.code(), Code::Unavailable);

    std::fs::remove_file(dir.path().join(BATCHES_FILE)).unwrap();
    let r = submit_all(
        &mut client,
        vec![SubmitBatchRequest::new(vec![batch("b-1", "m")])],
    )
    .await;
    assert_eq!(
        acks(&r[0], "m"),
        vec!["b-1"],
        "the re-sent batch is written, not taken for a duplicate"
    );
    server.stop().await;
    assert_eq!(batches(dir.path()).len(), 1);
}

#[tokio::test]
async fn every_fsync_policy_records_every_acknowledged_entry() {
    for policy in [Fsync::Always, Fsync::Interval, Fsync::Never] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ledger_config(dir.path());
        cfg.fsync = policy;
        cfg.fsync_interval = std::time::Duration::from_millis(10);
        crate::sinks::exercise_jsonl(Arc::new(JsonlSink::open(cfg).await.unwrap())).await;
        assert_eq!(entries(dir.path()).len(), 200, "{policy:?}");
    }
}

#[tokio::test]
async fn ledger_files_are_private_and_the_directory_is_locked() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("nested/ledger");
    let server = Server::jsonl(&ledger).await;
    for f in [ENTRIES_FILE, BATCHES_FILE] {
        let mode = std::fs::metadata(ledger.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let err = match JsonlSink::open(ledger_config(&ledger)).await {
        Ok(_) => panic!("a second meterd must not open the same ledger"),
        Err(e) => e,
    };
    assert!(
        err.to_string().contains("in use by another meterd"),
        "{err}"
    );
    server.stop().await;
    JsonlSink::open(ledger_config(&ledger))
        .await
        .expect("free again after shutdown");
}

/// A ledger of the previous release (one file per stream) opens as is: the
/// first start seals it as segment 1, byte for byte, and its ids stay known.
#[tokio::test]
async fn a_ledger_of_the_previous_release_opens_and_keeps_deduping() {
    let dir = tempfile::tempdir().unwrap();
    let mut old_entries = String::new();
    for (i, (_, line)) in crate::common::vector_lines("entries").iter().enumerate() {
        let with_id = format!("{},\"id\":\"old-{i}\"}}", line.strip_suffix('}').unwrap());
        old_entries.push_str(&with_id);
        old_entries.push('\n');
    }
    let old_batch = crate::common::vector_lines("metric_batches")
        .into_iter()
        .find(|(_, l)| l.starts_with('{'))
        .unwrap()
        .1;
    let old_uuid = serde_json::from_str::<serde_json::Value>(&old_batch).unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(dir.path().join(ENTRIES_FILE), &old_entries).unwrap();
    std::fs::write(dir.path().join(BATCHES_FILE), format!("{old_batch}\n")).unwrap();

    let server = crate::common::Binary::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let sealed = dir.path().join("entries.00000000000000000001.jsonl");
    assert_eq!(std::fs::read_to_string(&sealed).unwrap(), old_entries);
    let r = client
        .emit(emit_req(vm_entry("vm-x", "old-0")))
        .await
        .unwrap()
        .into_inner();
    assert!(r.duplicate, "an id of the old file is still known");
    let mut again = batch(&old_uuid, "m");
    again.model_uuid = "m".into();
    submit_all(&mut client, vec![SubmitBatchRequest::new(vec![again])]).await;
    drop(server);
    assert_eq!(entries(dir.path()).len(), old_entries.lines().count());
    assert_eq!(
        batches(dir.path()).len(),
        1,
        "the old batch uuid is not written again"
    );
}

/// Dedupe holds across a seal, a restart, and a key index deleted by hand
/// (it is rebuilt from its segment).
#[tokio::test]
async fn dedupe_survives_a_seal_a_restart_and_a_deleted_index() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::common::Binary::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    client.emit(emit_req(vm_entry("vm-1", "a"))).await.unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    let keys = dir.path().join("entries.00000000000000000001.keys");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !keys.exists() {
        assert!(std::time::Instant::now() < deadline, "no seal after SIGHUP");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    client.emit(emit_req(vm_entry("vm-1", "b"))).await.unwrap();
    let mut server = server;
    assert!(server.terminate().success());
    std::fs::remove_file(&keys).unwrap();

    let server = crate::common::Binary::start(dir.path(), &[]).await;
    assert!(keys.exists(), "the index is rebuilt at start");
    let mut client = server.client().await;
    for id in ["a", "b"] {
        let r = client
            .emit(emit_req(vm_entry("vm-1", id)))
            .await
            .unwrap()
            .into_inner();
        assert!(r.duplicate, "{id}");
    }
    drop(server);
    assert_eq!(entries(dir.path()).len(), 2);
}
