//! `kill -9` under load, again and again, with tiny segments so that seals,
//! index writes and spool segment deletions happen all the time: after every
//! restart each acknowledged entry and batch is in the ledger exactly once,
//! no line is torn and positions run on without a gap. `METERD_CRASH_CYCLES`
//! sets the number of cycles (3 in the suite, 20 in `scripts/soak`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meterd::pb::SubmitBatchRequest;
use tokio_stream::StreamExt as _;

use crate::common::{batch, batches, emit_req, entries, spool_pending, vm_entry, Binary};

/// Seals every few hundred records.
const TINY_SEGMENTS: [&str; 2] = ["--segment-max-bytes", "64KiB"];

fn cycles() -> usize {
    std::env::var("METERD_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// Positions from 1 to the end, each once, across every segment, and as
/// many as the files hold lines.
fn check_positions(dir: &std::path::Path, cycle: usize) {
    for (stream, file) in [("entries", "entries.jsonl"), ("batches", "batches.jsonl")] {
        let log = meterd::log::Snapshot::open(dir, stream).unwrap();
        assert_eq!(log.first(), 1, "cycle {cycle}: {stream} starts at 1");
        let mut reader = log.reader(0).unwrap();
        let mut next = 1;
        loop {
            let got = reader.read(10_000, 64 << 20).unwrap();
            if got.is_empty() {
                break;
            }
            for line in got {
                assert_eq!(line.position, next, "cycle {cycle}: {stream} positions");
                next += 1;
            }
        }
        assert_eq!(
            next - 1,
            log.end(),
            "cycle {cycle}: {stream} read to its end"
        );
        let lines = crate::common::ledger_lines(dir, file).len() as u64;
        assert_eq!(
            lines,
            log.end(),
            "cycle {cycle}: {stream} lines and positions agree"
        );
    }
}

fn count_keys(lines: &[String], field: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("torn or bad line {l:?}: {e}"));
        if let Some(k) = v[field].as_str() {
            *counts.entry(k.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

#[derive(Default)]
struct Acked {
    entries: Mutex<HashSet<String>>,
    batches: Mutex<HashSet<String>>,
}

/// Steady Emit (16 callers) and SubmitBatch (2 pipelining streams) load
/// until the server disappears.
async fn load(
    server: &Binary,
    cycle: usize,
    acked: Arc<Acked>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for w in 0..16 {
        let mut client = server.client().await;
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("c{cycle}-w{w}-{i}");
                match client.emit(emit_req(vm_entry("vm-crash", &id))).await {
                    Ok(_) => {
                        acked.entries.lock().unwrap().insert(id);
                    }
                    Err(_) => break, // the server is gone
                }
            }
        }));
    }
    for s in 0..2 {
        let mut client = server.client().await;
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let requests = tokio_stream::iter(0..).map(move |i| {
                SubmitBatchRequest::new(vec![
                    batch(&format!("c{cycle}-s{s}-{i}-a"), "m"),
                    batch(&format!("c{cycle}-s{s}-{i}-b"), "m"),
                ])
            });
            let Ok(resp) = client.submit_batch(requests).await else {
                return;
            };
            let mut resp = resp.into_inner();
            while let Some(Ok(r)) = resp.next().await {
                if let Some(env) = r.env_responses.get("m") {
                    acked
                        .batches
                        .lock()
                        .unwrap()
                        .extend(env.acks.iter().cloned());
                }
            }
        }));
    }
    tasks
}

/// Every acknowledged record exactly once, nothing written twice, no torn
/// line (`entries()` and `batches()` check the last line).
fn check_ledger(dir: &std::path::Path, acked: &Acked, cycle: usize) {
    let entry_counts = count_keys(&entries(dir), "id");
    for id in acked.entries.lock().unwrap().iter() {
        assert_eq!(
            entry_counts.get(id),
            Some(&1),
            "cycle {cycle}: acked entry {id}"
        );
    }
    assert!(
        entry_counts.values().all(|&n| n == 1),
        "cycle {cycle}: an entry written twice"
    );
    let batch_counts = count_keys(&batches(dir), "uuid");
    for uuid in acked.batches.lock().unwrap().iter() {
        assert_eq!(
            batch_counts.get(uuid),
            Some(&1),
            "cycle {cycle}: acked batch {uuid}"
        );
    }
    assert!(
        batch_counts.values().all(|&n| n == 1),
        "cycle {cycle}: a batch written twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_record_cycle_after_cycle() {
    let cycles = cycles();
    let dir = tempfile::tempdir().unwrap();
    let acked = Arc::new(Acked::default());
    let mut server = Binary::start(dir.path(), &TINY_SEGMENTS).await;
    for cycle in 0..cycles {
        let tasks = load(&server, cycle, acked.clone()).await;
        // Pull the plug at a random moment once some load got through.
        let before = acked.entries.lock().unwrap().len();
        while acked.entries.lock().unwrap().len() < before + 100 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..400))).await;
        server.kill9();
        for t in tasks {
            t.await.unwrap();
        }

        // Restart on the same ledger: recovery runs, everything acknowledged
        // is there once, and re-sending it is recognised as a duplicate.
        server = Binary::start(dir.path(), &TINY_SEGMENTS).await;
        check_ledger(dir.path(), &acked, cycle);
        check_positions(dir.path(), cycle);
        let mut client = server.client().await;
        let sample: Vec<String> = acked
            .entries
            .lock()
            .unwrap()
            .iter()
            .take(20)
            .cloned()
            .collect();
        for id in sample {
            let r = client
                .emit(emit_req(vm_entry("vm-crash", &id)))
                .await
                .unwrap()
                .into_inner();
            assert!(
                r.duplicate,
                "cycle {cycle}: {id} was acked before the crash"
            );
        }
    }
    let (e, b) = (
        acked.entries.lock().unwrap().len(),
        acked.batches.lock().unwrap().len(),
    );
    assert!(
        !acked.batches.lock().unwrap().is_empty(),
        "batches were acked"
    );
    let sealed = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".keys")
        })
        .count();
    assert!(
        sealed >= 2,
        "segments were sealed during the run ({sealed})"
    );
    eprintln!("crash loop: {cycles} cycles survived, {e} acked entries and {b} acked batches checked after each restart");
}

/// A sidecar (spool mode) chained to an aggregator, both with tiny
/// segments; each cycle kills the sidecar, every other cycle the aggregator
/// too. Once the sidecar drains its spool, everything it acknowledged is at
/// the aggregator exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_chain_with_tiny_segments_delivers_every_acked_record_once() {
    let cycles = cycles();
    let (agg_dir, side_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut aggregator = Binary::start(agg_dir.path(), &TINY_SEGMENTS).await;
    let sink = format!("grpc={}", aggregator.addr);
    let side_args = [
        TINY_SEGMENTS[0],
        TINY_SEGMENTS[1],
        "--sink",
        &sink,
        "--forward-retry-max",
        "200ms",
    ];
    let mut sidecar = Binary::start(side_dir.path(), &side_args).await;
    let acked = Arc::new(Acked::default());
    for cycle in 0..cycles {
        let tasks = load(&sidecar, cycle, acked.clone()).await;
        let before = acked.entries.lock().unwrap().len();
        while acked.entries.lock().unwrap().len() < before + 300 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..300))).await;
        sidecar.kill9();
        if cycle % 2 == 0 {
            aggregator.kill9();
            aggregator = Binary::start_at(aggregator.addr, agg_dir.path(), &TINY_SEGMENTS).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        sidecar = Binary::start_at(sidecar.addr, side_dir.path(), &side_args).await;
        check_positions(side_dir.path(), cycle);
    }
    let spool = side_dir
        .path()
        .join("spool")
        .join(meterd::sink::forward::spool_name(
            "grpc",
            &aggregator.addr.to_string(),
        ));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while spool_pending(&spool) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the spool never drained"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check_ledger(agg_dir.path(), &acked, cycles);
    check_positions(agg_dir.path(), cycles);
    let segments = std::fs::read_dir(&spool)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".jsonl")
        })
        .count();
    // Delivered spool segments are deleted: the active files and at most
    // a few undeleted ones remain, not the whole history.
    assert!(segments <= 6, "{segments} spool files left");
    drop(sidecar);
}
