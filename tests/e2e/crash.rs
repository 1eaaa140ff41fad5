//! `kill -9` under load: every acknowledged entry and batch is in the ledger
//! exactly once after restart, and no line is torn.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meterd::pb::SubmitBatchRequest;
use tokio_stream::StreamExt as _;

use crate::common::{batch, batches, emit_req, entries, vm_entry, Binary};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Binary::start(dir.path(), &[]).await;
    let acked_entries = Arc::new(Mutex::new(HashSet::new()));
    let acked_batches = Arc::new(Mutex::new(HashSet::new()));

    let mut load = Vec::new();
    for w in 0..16 {
        let mut client = server.client().await;
        let acked = acked_entries.clone();
        load.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("w{w}-{i}");
                match client.emit(emit_req(vm_entry("vm-crash", &id))).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert(id);
                    }
                    Err(_) => break, // the server is gone
                }
            }
        }));
    }
    for s in 0..2 {
        let mut client = server.client().await;
        let acked = acked_batches.clone();
        load.push(tokio::spawn(async move {
            let requests = tokio_stream::iter(0..).map(move |i| SubmitBatchRequest {
                batches: vec![
                    batch(&format!("s{s}-{i}-a"), "m"),
                    batch(&format!("s{s}-{i}-b"), "m"),
                ],
            });
            let Ok(resp) = client.submit_batch(requests).await else {
                return;
            };
            let mut resp = resp.into_inner();
            while let Some(Ok(r)) = resp.next().await {
                if let Some(env) = r.env_responses.get("m") {
                    acked.lock().unwrap().extend(env.acks.iter().cloned());
                }
            }
        }));
    }

    // Let the load run until plenty is acknowledged, then pull the plug.
    for _ in 0..500 {
        if acked_entries.lock().unwrap().len() >= 500 && acked_batches.lock().unwrap().len() >= 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill9();
    for t in load {
        t.await.unwrap();
    }
    let acked_entries = acked_entries.lock().unwrap().clone();
    let acked_batches = acked_batches.lock().unwrap().clone();
    assert!(
        acked_entries.len() >= 100,
        "load ran: {} entries acked",
        acked_entries.len()
    );
    assert!(!acked_batches.is_empty(), "load ran: batches acked");

    // Restart on the same ledger: recovery runs, and re-sending everything
    // acknowledged is recognised as duplicate.
    let server = Binary::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    for id in acked_entries.iter().take(50) {
        let r = client
            .emit(emit_req(vm_entry("vm-crash", id)))
            .await
            .unwrap()
            .into_inner();
        assert!(r.duplicate, "{id} was acked before the crash");
    }

    let entry_counts = count_keys(&entries(dir.path()), "id");
    for id in &acked_entries {
        assert_eq!(
            entry_counts.get(id),
            Some(&1),
            "acked entry {id} is in the ledger exactly once"
        );
    }
    assert!(
        entry_counts.values().all(|&n| n == 1),
        "no entry written twice"
    );
    let batch_counts = count_keys(&batches(dir.path()), "uuid");
    for uuid in &acked_batches {
        assert_eq!(
            batch_counts.get(uuid),
            Some(&1),
            "acked batch {uuid} is in the ledger exactly once"
        );
    }
    assert!(
        batch_counts.values().all(|&n| n == 1),
        "no batch written twice"
    );
}
