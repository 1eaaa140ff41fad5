//! Forwarding through the durable spool: a sidecar meterd chained to an
//! aggregator meterd, both real binaries on loopback, with outages of either.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meterd::pb::SubmitBatchRequest;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::Code;

use crate::common::{batch, batches, emit_req, entries, free_port, vm_entry, Binary, Client};

/// What the clients of the sidecar got acknowledged.
#[derive(Default)]
struct Acked {
    /// vm_id of each acknowledged entry (unique per entry; half carry no id).
    entries: Mutex<HashSet<String>>,
    batches: Mutex<HashSet<String>>,
}

/// Steady Emit and SubmitBatch load on `addr` until `stop` is set or the
/// server goes away. `tag` keeps the records of several runs apart.
fn start_load(
    addr: SocketAddr,
    tag: &str,
    stop: Arc<AtomicBool>,
    acked: Arc<Acked>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (stop, acked, tag) = (stop.clone(), acked.clone(), tag.to_owned());
        tasks.push(tokio::spawn(async move {
            let Ok(mut client) = try_connect(addr).await else {
                return;
            };
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let vm = format!("{tag}-vm-{w}-{i}");
                // Half the entries carry no idempotency id: the spool must
                // still deliver them exactly once.
                let id = if i % 2 == 0 {
                    format!("{tag}-e-{w}-{i}")
                } else {
                    String::new()
                };
                match client.emit(emit_req(vm_entry(&vm, &id))).await {
                    Ok(_) => {
                        acked.entries.lock().unwrap().insert(vm);
                    }
                    // The server went away (a kill -9 in the test).
                    Err(s)
                        if matches!(
                            s.code(),
                            Code::Unavailable | Code::Unknown | Code::Cancelled
                        ) =>
                    {
                        break
                    }
                    Err(s) => panic!("emit {vm}: {s:?}"),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    let tag = tag.to_owned();
    tasks.push(tokio::spawn(async move {
        let Ok(mut client) = try_connect(addr).await else {
            return;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let sender = tokio::spawn(async move {
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let req = SubmitBatchRequest::new(vec![
                    batch(&format!("{tag}-b-{i}-x"), "model-a"),
                    batch(&format!("{tag}-b-{i}-y"), "model-b"),
                ]);
                if tx.send(req).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        if let Ok(resp) = client.submit_batch(ReceiverStream::new(rx)).await {
            let mut resp = resp.into_inner();
            while let Some(Ok(r)) = resp.next().await {
                assert!(r.rejected.is_empty(), "{:?}", r.rejected);
                let mut a = acked.batches.lock().unwrap();
                for env in r.env_responses.values() {
                    a.extend(env.acks.iter().cloned());
                }
            }
        }
        sender.abort();
    }));
    tasks
}

async fn try_connect(addr: SocketAddr) -> Result<Client, tonic::transport::Error> {
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await?;
    Ok(meterd::pb::metering_service_client::MeteringServiceClient::new(ch))
}

pub(crate) fn counts(lines: &[String], field: &str) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("torn or bad line {l:?}: {e}"));
        if let Some(k) = v[field].as_str() {
            *c.entry(k.to_owned()).or_insert(0) += 1;
        }
    }
    c
}

/// The sidecar's spool directory for a grpc upstream at `upstream`.
pub(crate) fn spool_dir(sidecar_ledger: &Path, upstream: SocketAddr) -> PathBuf {
    sidecar_ledger
        .join("spool")
        .join(meterd::sink::forward::spool_name(
            "grpc",
            &upstream.to_string(),
        ))
}

/// Waits until the aggregator holds every acknowledged record and the
/// sidecar's spool is empty, then checks that each is there exactly once.
async fn assert_delivered_once(aggregator: &Path, spool: &Path, acked: &Acked) {
    let want_entries = acked.entries.lock().unwrap().clone();
    let want_batches = acked.batches.lock().unwrap().clone();
    assert!(
        want_entries.len() > 50,
        "too little load: {}",
        want_entries.len()
    );
    assert!(
        want_batches.len() > 20,
        "too little load: {}",
        want_batches.len()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let e = counts(&entries(aggregator), "vm_id");
        let b = counts(&batches(aggregator), "uuid");
        let all_there = want_entries.iter().all(|k| e.contains_key(k))
            && want_batches.iter().all(|k| b.contains_key(k));
        let spool_empty = crate::common::spool_pending(spool) == 0;
        if all_there && spool_empty {
            for (k, n) in e.iter().chain(b.iter()) {
                assert_eq!(*n, 1, "{k} is in the aggregator's ledger {n} times");
            }
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not drained: {} of {} entries, {} of {} batches at the aggregator; spool empty: {spool_empty}",
            want_entries.iter().filter(|k| e.contains_key(*k)).count(),
            want_entries.len(),
            want_batches.iter().filter(|k| b.contains_key(*k)).count(),
            want_batches.len(),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (with a deadline) until the clients got at least `entries` entries
/// and `batches` batches acknowledged in all, counting from now plus what
/// they had: load is measured in acks, never in time.
async fn until_acked(acked: &Acked, entries: usize, batches: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (e, b) = (
            acked.entries.lock().unwrap().len(),
            acked.batches.lock().unwrap().len(),
        );
        if e >= entries && b >= batches {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: only {e} entries and {b} batches acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn grpc_sink(upstream: SocketAddr) -> String {
    format!("grpc={upstream}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chained_meterd_delivers_everything_once_across_an_aggregator_outage() {
    let (agg_dir, side_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut aggregator = Binary::start(agg_dir.path(), &[]).await;
    let agg_addr = aggregator.addr;
    let sink = grpc_sink(agg_addr);
    let sidecar = Binary::start(
        side_dir.path(),
        &["--sink", &sink, "--forward-retry-max", "300ms"],
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Acked::default());
    let load = start_load(sidecar.addr, "outage", stop.clone(), acked.clone());
    until_acked(&acked, 30, 10, "before the outage").await;

    // The aggregator dies hard; the sidecar keeps acknowledging from its spool.
    aggregator.kill9();
    let entries_before = acked.entries.lock().unwrap().len();
    let batches_before = acked.batches.lock().unwrap().len();
    until_acked(
        &acked,
        entries_before + 30,
        batches_before + 10,
        "the sidecar stopped acknowledging while its upstream was down",
    )
    .await;
    let spool = spool_dir(side_dir.path(), agg_addr);
    assert!(
        crate::common::spool_pending(&spool) > 0,
        "nothing spooled during the outage"
    );

    let _aggregator = Binary::start_at(agg_addr, agg_dir.path(), &[]).await;
    let (e, b) = (
        acked.entries.lock().unwrap().len(),
        acked.batches.lock().unwrap().len(),
    );
    until_acked(&acked, e + 20, b + 5, "after the aggregator came back").await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_delivered_once(agg_dir.path(), &spool, &acked).await;

    // One log line per state change, not one per retry.
    let log = sidecar.log_text();
    let unreachable = log.matches("upstream unreachable").count();
    assert!(
        (1..=2).contains(&unreachable),
        "{unreachable} 'unreachable' lines:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sidecar_killed_mid_stream_delivers_its_spool_after_restart() {
    let (agg_dir, side_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let _aggregator = Binary::start(agg_dir.path(), &[]).await;
    let sink = grpc_sink(_aggregator.addr);
    // A slow upstream path (long backoff) keeps a backlog in the spool when
    // the sidecar is killed.
    let mut sidecar = Binary::start(side_dir.path(), &["--sink", &sink]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Acked::default());
    let load = start_load(sidecar.addr, "kill", stop.clone(), acked.clone());
    until_acked(&acked, 60, 25, "before the kill").await;
    sidecar.kill9();
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }

    // Same ledger (and so the same spool), a new port.
    let sidecar = Binary::start(side_dir.path(), &["--sink", &sink]).await;
    let spool = spool_dir(side_dir.path(), _aggregator.addr);
    assert_delivered_once(agg_dir.path(), &spool, &acked).await;

    // And it keeps forwarding new records.
    let mut client = sidecar.client().await;
    client
        .emit(emit_req(vm_entry("after-restart", "after-1")))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !entries(agg_dir.path())
        .iter()
        .any(|l| l.contains("after-restart"))
    {
        assert!(
            Instant::now() < deadline,
            "new record not forwarded after restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_spool_refuses_new_records_then_drains() {
    let (agg_dir, side_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The aggregator is not there yet.
    let agg_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let sink = grpc_sink(agg_addr);
    let sidecar = Binary::start(
        side_dir.path(),
        &[
            "--sink",
            &sink,
            "--spool-max-bytes",
            "64KiB",
            "--forward-retry-max",
            "200ms",
            // The order is asserted below: one request at a time.
            "--forward-in-flight",
            "1",
        ],
    )
    .await;
    let mut client = sidecar.client().await;

    let mut acked = Vec::new();
    let mut refusal = None;
    for i in 0..10_000 {
        let vm = format!("cap-vm-{i}");
        match client
            .emit(emit_req(vm_entry(&vm, &format!("cap-{i}"))))
            .await
        {
            Ok(_) => acked.push(vm),
            Err(s) => {
                refusal = Some(s);
                break;
            }
        }
    }
    let refusal = refusal.expect("the spool cap was never reached");
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(
        refusal.message().contains("spool full"),
        "{}",
        refusal.message()
    );
    assert!(
        refusal.message().contains("--spool-max-bytes"),
        "{}",
        refusal.message()
    );
    assert!(
        acked.len() > 50,
        "only {} records fit in 64KiB",
        acked.len()
    );

    // Health says so, for the writer service and the server.
    crate::passthrough::wait_health(
        sidecar.addr,
        tonic_health::pb::health_check_response::ServingStatus::NotServing,
        Duration::from_secs(5),
    )
    .await;

    // Refused calls keep being refused and cost no memory.
    let rss_before = sidecar.rss_kib();
    for i in 0..2000 {
        let s = client
            .emit(emit_req(vm_entry("refused", &format!("refused-{i}"))))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::ResourceExhausted);
    }
    let rss_after = sidecar.rss_kib();
    assert!(
        rss_after < rss_before + 8 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB while refusing"
    );
    // Logged once per change of state, with counts, never once per call.
    let log = sidecar.log_text();
    assert!(
        log.lines().count() < 30,
        "{} log lines for 2,000 refused calls:\n{log}",
        log.lines().count()
    );
    assert!(log.contains("refusing calls"), "{log}");

    // The upstream returns: the backlog drains, in order, and writes resume.
    let _aggregator = Binary::start_at(agg_addr, agg_dir.path(), &[]).await;
    let spool = spool_dir(side_dir.path(), agg_addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = crate::common::field_values(&entries(agg_dir.path()), "vm_id");
        if got.len() >= acked.len() && crate::common::spool_pending(&spool) == 0 {
            assert_eq!(
                got, acked,
                "the aggregator must hold the backlog once, in order"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "backlog not drained: {} of {}",
            got.len(),
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Health comes back by itself once delivery made room.
    crate::passthrough::wait_health(
        sidecar.addr,
        tonic_health::pb::health_check_response::ServingStatus::Serving,
        Duration::from_secs(5),
    )
    .await;
    client
        .emit(emit_req(vm_entry("after-drain", "after-drain")))
        .await
        .expect("writes resume once the spool has room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_acks_only_what_the_upstream_acked() {
    let (agg_dir, side_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let agg_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let sink = grpc_sink(agg_addr);
    let sidecar = Binary::start(
        side_dir.path(),
        &[
            "--sink",
            &sink,
            "--forward-mode",
            "pass-through",
            "--upstream-timeout",
            "2s",
        ],
    )
    .await;
    let mut client = sidecar.client().await;

    // Upstream down: the client is told, nothing is kept locally.
    let s = client
        .emit(emit_req(vm_entry("pt-vm-0", "pt-0")))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(
        !side_dir.path().join("spool").exists(),
        "pass-through must keep no spool"
    );

    let _aggregator = Binary::start_at(agg_addr, agg_dir.path(), &[]).await;
    // An ack means the aggregator has it already.
    let resp = client
        .emit(emit_req(vm_entry("pt-vm-1", "pt-1")))
        .await
        .unwrap();
    assert!(!resp.get_ref().duplicate);
    assert_eq!(
        crate::common::field_values(&entries(agg_dir.path()), "vm_id"),
        vec!["pt-vm-1"]
    );
    // The upstream's dedupe answers through the sidecar.
    let resp = client
        .emit(emit_req(vm_entry("pt-vm-1", "pt-1")))
        .await
        .unwrap();
    assert!(resp.get_ref().duplicate);
    let mut stream = client
        .submit_batch(tokio_stream::iter(vec![SubmitBatchRequest::new(vec![
            batch("pt-b-1", "model-a"),
        ])]))
        .await
        .unwrap()
        .into_inner();
    let r = stream.next().await.unwrap().unwrap();
    assert_eq!(r.env_responses["model-a"].acks, vec!["pt-b-1"]);
    assert_eq!(
        crate::common::field_values(&batches(agg_dir.path()), "uuid"),
        vec!["pt-b-1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_upstream_rejects_go_to_the_dead_letter_file() {
    let (agg_dir, side_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The aggregator is stricter than the sidecar: one metric per batch.
    let aggregator = Binary::start(agg_dir.path(), &["--max-metrics-per-batch", "1"]).await;
    let sink = grpc_sink(aggregator.addr);
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let sidecar = Binary::start(
        side_dir.path(),
        &["--sink", &sink, "--metrics-listen", &metrics_addr],
    )
    .await;
    let mut client = sidecar.client().await;

    let mut too_big = batch("dl-big", "model-a");
    too_big.metrics.push(too_big.metrics[0].clone());
    let requests = vec![
        SubmitBatchRequest::new(vec![batch("dl-ok-1", "model-a"), too_big]),
        SubmitBatchRequest::new(vec![batch("dl-ok-2", "model-a")]),
    ];
    let mut stream = client
        .submit_batch(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    // The sidecar's own limits accept all three: they are spooled and acked.
    let mut acks = Vec::new();
    while let Some(r) = stream.next().await {
        acks.extend(r.unwrap().env_responses["model-a"].acks.clone());
    }
    assert_eq!(acks, vec!["dl-ok-1", "dl-big", "dl-ok-2"]);

    let spool = spool_dir(side_dir.path(), aggregator.addr);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let delivered = crate::common::field_values(&batches(agg_dir.path()), "uuid");
        if delivered.len() == 2 && crate::common::spool_pending(&spool) == 0 {
            // The rejected batch did not block the one behind it.
            assert_eq!(delivered, vec!["dl-ok-1", "dl-ok-2"]);
            break;
        }
        assert!(Instant::now() < deadline, "delivered {delivered:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = crate::common::ledger_lines(&spool, "dead-letter.jsonl");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let v: serde_json::Value = serde_json::from_str(&dead[0]).unwrap();
    assert_eq!(v["record"]["uuid"], "dl-big");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("metrics"), "{reason}");

    let m = crate::ops::scrape(&metrics_addr).await;
    let series =
        |name: &str| format!("meterd_forward_{name}{{sink=\"{sink}\",stream=\"batches\"}}");
    assert_eq!(m.get(&series("dead_lettered_total")), Some(&1.0), "{m:?}");
    assert_eq!(m.get(&series("delivered_total")), Some(&2.0), "{m:?}");
    assert_eq!(m.get(&series("backlog_records")), Some(&0.0), "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_spool_record_is_quarantined_and_the_rest_flows() {
    let (agg_dir, side_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let aggregator = Binary::start(agg_dir.path(), &[]).await;
    let spool = spool_dir(side_dir.path(), aggregator.addr);
    std::fs::create_dir_all(&spool).unwrap();
    let good = crate::common::vector_lines("entries");
    let (first, second) = (&good[0].1, &good[1].1);
    std::fs::write(
        spool.join("entries.jsonl"),
        format!(
            "{first}\n{{\"kind\":\"vm.compute.start\",\"vm_id\":12}}\nnot json at all\n{second}\n"
        ),
    )
    .unwrap();

    let sink = grpc_sink(aggregator.addr);
    let sidecar = Binary::start(side_dir.path(), &["--sink", &sink]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while entries(agg_dir.path()).len() < 2 {
        assert!(Instant::now() < deadline, "spool not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = entries(agg_dir.path());
    assert_eq!(delivered.len(), 2);
    let quarantined = crate::common::ledger_lines(&spool, "quarantine.jsonl");
    assert_eq!(quarantined.len(), 2, "{quarantined:?}");
    assert!(quarantined[1].contains("not json at all"));
    assert!(sidecar.log_text().contains("quarantine"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_relays_the_upstreams_rejections() {
    let (agg_dir, side_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Stricter than the sidecar: one metric per batch, short strings.
    let aggregator = Binary::start(
        agg_dir.path(),
        &["--max-metrics-per-batch", "1", "--max-string-len", "8"],
    )
    .await;
    let sink = grpc_sink(aggregator.addr);
    let sidecar = Binary::start(
        side_dir.path(),
        &["--sink", &sink, "--forward-mode", "pass-through"],
    )
    .await;
    let mut client = sidecar.client().await;

    // vm_entry's hypervisor "cloud-hypervisor" is longer than 8 bytes.
    let s = client
        .emit(emit_req(vm_entry("pt-vm", "pt-e")))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("entry.hypervisor"), "{}", s.message());

    let mut too_big = batch("pt-big", "model-a");
    too_big.metrics.push(too_big.metrics[0].clone());
    let mut ok = batch("pt-ok", "model-a");
    ok.unit_name = "pg/0".into();
    ok.model_name = "prod".into();
    ok.charm_url = "ch:pg".into();
    ok.metrics[0].key = "conns".into();
    let mut ok2 = ok.clone();
    ok2.uuid = "pt-ok-2".into();
    let mut stream = client
        .submit_batch(tokio_stream::iter(vec![
            SubmitBatchRequest::new(vec![too_big, ok]),
            SubmitBatchRequest::new(vec![ok2]),
        ]))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.env_responses["model-a"].acks, vec!["pt-ok"]);
    assert_eq!(first.rejected.len(), 1, "{:?}", first.rejected);
    assert_eq!(first.rejected[0].index, 0);
    assert_eq!(first.rejected[0].uuid, "pt-big");
    assert!(
        first.rejected[0].reason.contains("metrics"),
        "{}",
        first.rejected[0].reason
    );
    // The stream goes on.
    let second = stream.next().await.unwrap().unwrap();
    assert_eq!(second.env_responses["model-a"].acks, vec!["pt-ok-2"]);
    assert!(entries(agg_dir.path()).is_empty());
    // Pass-through forwards a stream's requests as they come, concurrently:
    // each arrives once, in either order.
    let mut got = crate::common::field_values(&batches(agg_dir.path()), "uuid");
    got.sort();
    assert_eq!(got, vec!["pt-ok", "pt-ok-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_keeps_records_spooled_until_the_right_one_is_given() {
    let (agg_dir, side_dir, spools) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let tokens = agg_dir.path().with_extension("tokens");
    std::fs::write(&tokens, "right-token\n").unwrap();
    let aggregator = Binary::start(
        agg_dir.path(),
        &["--auth-token-file", tokens.to_str().unwrap()],
    )
    .await;
    let sink = grpc_sink(aggregator.addr);
    let wrong = side_dir.path().with_extension("wrong");
    std::fs::write(&wrong, "wrong-token\n").unwrap();
    let spool_parent = spools.path().to_str().unwrap();
    let common = [
        "--sink",
        sink.as_str(),
        "--spool-dir",
        spool_parent,
        "--forward-retry-max",
        "200ms",
    ];

    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut args = common.to_vec();
    args.extend([
        "--upstream-token-file",
        wrong.to_str().unwrap(),
        "--metrics-listen",
        &metrics_addr,
    ]);
    let mut sidecar = Binary::start(side_dir.path(), &args).await;
    let mut client = sidecar.client().await;
    client
        .emit(emit_req(vm_entry("tok-vm", "tok-1")))
        .await
        .unwrap();
    // UNAUTHENTICATED is not a verdict on the record: it stays spooled,
    // it is not dead-lettered. Two refused attempts mean the first answer
    // was acted on.
    let retries = format!("meterd_forward_retries_total{{sink=\"{sink}\",stream=\"entries\"}}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while crate::ops::scrape(&metrics_addr)
        .await
        .get(&retries)
        .is_none_or(|n| *n < 2.0)
    {
        assert!(
            Instant::now() < deadline,
            "the upstream was never tried twice"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(entries(agg_dir.path()).is_empty());
    let spool = spools.path().join(meterd::sink::forward::spool_name(
        "grpc",
        &aggregator.addr.to_string(),
    ));
    assert!(
        crate::common::spool_pending(&spool) > 0,
        "the record left the spool"
    );
    assert!(!spool.join("dead-letter.jsonl").exists());
    assert!(sidecar.log_text().contains("Unauthenticated"));
    assert!(
        !sidecar.log_text().contains("wrong-token"),
        "a credential reached the log"
    );
    assert_eq!(sidecar.terminate().code(), Some(0));

    let right = side_dir.path().with_extension("right");
    std::fs::write(&right, "right-token\n").unwrap();
    let mut args = common.to_vec();
    args.extend(["--upstream-token-file", right.to_str().unwrap()]);
    let _sidecar = Binary::start(side_dir.path(), &args).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while entries(agg_dir.path()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "not delivered with the right token"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        crate::common::field_values(&entries(agg_dir.path()), "id"),
        vec!["tok-1"]
    );
}

/// A batch whose ledger line is 2 MiB (well inside the default limits) is
/// forwarded whole: the spool reads by line, not by fixed windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_mib_batch_acked_by_a_sidecar_arrives_once_whole() {
    let (agg_dir, side_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let aggregator = Binary::start(agg_dir.path(), &[]).await;
    let sidecar = Binary::start(side_dir.path(), &["--sink", &grpc_sink(aggregator.addr)]).await;
    let mut big = batch("big-batch", "m");
    let template = big.metrics[0].clone();
    big.metrics = (0..1000)
        .map(|i| {
            let mut m = template.clone();
            m.key = format!("metric-{i}");
            m.value = "7".repeat(2100);
            m
        })
        .collect();
    let mut client = sidecar.client().await;
    let resp = crate::submit_batch::submit_all(
        &mut client,
        vec![SubmitBatchRequest::new(vec![
            big,
            batch("small-after", "m"),
        ])],
    )
    .await;
    assert_eq!(
        crate::submit_batch::acks(&resp[0], "m"),
        vec!["big-batch", "small-after"]
    );
    let spool = spool_dir(side_dir.path(), aggregator.addr);
    let line_len = crate::common::ledger_lines(&spool, "batches.jsonl")
        .first()
        .map(String::len)
        .unwrap_or_default();
    assert!(line_len > 2 << 20, "the spooled line is {line_len} bytes");
    let deadline = Instant::now() + Duration::from_secs(30);
    while crate::common::spool_pending(&spool) > 0 || batches(agg_dir.path()).len() < 2 {
        assert!(Instant::now() < deadline, "not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = batches(agg_dir.path());
    assert_eq!(counts(&got, "uuid").get("big-batch"), Some(&1));
    let big_line = got
        .iter()
        .find(|l| l.contains("\"uuid\":\"big-batch\""))
        .expect("the big batch at the aggregator");
    assert_eq!(big_line.len(), line_len, "delivered whole, byte for byte");
    assert!(!spool.join("quarantine.jsonl").exists());
    assert!(!spool.join("dead-letter.jsonl").exists());
}

/// `--spool-max-bytes` counts what is not delivered yet: with the upstream
/// keeping up (here by construction: each round waits until the spool is
/// delivered), many times that much goes through without one refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_whose_upstream_keeps_up_never_reports_full() {
    let (agg_dir, side_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let aggregator = Binary::start(agg_dir.path(), &["--fsync", "never"]).await;
    let sidecar = Binary::start(
        side_dir.path(),
        &[
            "--sink",
            &grpc_sink(aggregator.addr),
            "--spool-max-bytes",
            "64KiB",
            "--fsync",
            "never",
        ],
    )
    .await;
    let spool = spool_dir(side_dir.path(), aggregator.addr);
    let mut client = sidecar.client().await;
    // 30 rounds of 200 entries (about 38 KiB, under the limit each), 1.1 MB
    // in all: counted on the spool's files, the limit would refuse in the
    // second round.
    for round in 0..30 {
        let entries: Vec<_> = (0..200)
            .map(|i| vm_entry("vm-flow", &format!("flow-{round}-{i}")))
            .collect();
        let results = client
            .emit_batch(meterd::pb::EmitBatchRequest::new(entries))
            .await
            .unwrap_or_else(|s| panic!("round {round}: refused: {s:?}"))
            .into_inner()
            .results;
        assert!(results.iter().all(|r| r.rejected.is_empty()), "{results:?}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while crate::common::spool_pending(&spool) > 0 {
            assert!(Instant::now() < deadline, "round {round}: never delivered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(entries(agg_dir.path()).len(), 6000);
}
