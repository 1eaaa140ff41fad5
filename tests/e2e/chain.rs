//! A sidecar meterd forwarding to an aggregator meterd with `EmitBatch`:
//! stricter limits upstream, an upstream that never answers, every target
//! form, and the chain under load. Real binaries on loopback.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use meterd::pb::{self, EmitBatchRequest, SubmitBatchRequest};
use tokio_stream::StreamExt as _;

use crate::common::{batch, batches, emit_req, entries, meterd_bin, vm_entry, Binary, Client};
use crate::forward::{counts, spool_dir};

/// Polls `done` until it holds, failing after `secs` with `what`.
async fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the aggregator holds each of `vm_ids` (entries) and `uuids`
/// (batches) and checks that each is there exactly once.
async fn wait_delivered_once(aggregator: &Path, vm_ids: &HashSet<String>, uuids: &HashSet<String>) {
    wait_for("the aggregator to hold everything", 60, || {
        let e = counts(&entries(aggregator), "vm_id");
        let b = counts(&batches(aggregator), "uuid");
        vm_ids.iter().all(|k| e.contains_key(k)) && uuids.iter().all(|k| b.contains_key(k))
    })
    .await;
    let e = counts(&entries(aggregator), "vm_id");
    let b = counts(&batches(aggregator), "uuid");
    for (k, n) in e.iter().chain(b.iter()) {
        assert_eq!(*n, 1, "{k} is in the aggregator's ledger {n} times");
    }
}

async fn emit_batch(client: &mut Client, entries: Vec<pb::Entry>) {
    let results = client
        .emit_batch(EmitBatchRequest::new(entries))
        .await
        .expect("EmitBatch")
        .into_inner()
        .results;
    assert!(results.iter().all(|r| r.rejected.is_empty()), "{results:?}");
}

/// `n` entries `tag-vm-i`; every other one without an id.
fn tagged_entries(tag: &str, n: usize) -> Vec<pb::Entry> {
    (0..n)
        .map(|i| {
            let id = if i % 2 == 0 {
                format!("{tag}-{i}")
            } else {
                String::new()
            };
            vm_entry(&format!("{tag}-vm-{i}"), &id)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_with_stricter_limits_gets_everything_once_and_nothing_is_dead_lettered() {
    let (agg_dir, side_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let aggregator = Binary::start(
        agg_dir.path(),
        &[
            "--max-entries-per-request",
            "2",
            "--max-batches-per-request",
            "2",
        ],
    )
    .await;
    let sink = format!("grpc={}", aggregator.addr);
    let sidecar = Binary::start(
        side_dir.path(),
        &["--sink", &sink, "--forward-retry-max", "200ms"],
    )
    .await;
    let mut client = sidecar.client().await;

    // Spooled in one write each, so the forwarder reads windows of many.
    let sent = tagged_entries("strict", 300);
    emit_batch(&mut client, sent[..150].to_vec()).await;
    emit_batch(&mut client, sent[150..].to_vec()).await;
    let sent_batches: Vec<pb::MetricBatch> = (0..41)
        .map(|i| batch(&format!("strict-b-{i}"), "model-s"))
        .collect();
    let mut stream = client
        .submit_batch(tokio_stream::iter(vec![SubmitBatchRequest::new(
            sent_batches.clone(),
        )]))
        .await
        .unwrap()
        .into_inner();
    let r = stream.next().await.unwrap().unwrap();
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);

    let vm_ids: HashSet<String> = sent.iter().map(|e| e.vm_id.clone()).collect();
    let uuids: HashSet<String> = sent_batches.iter().map(|b| b.uuid.clone()).collect();
    wait_delivered_once(agg_dir.path(), &vm_ids, &uuids).await;
    let spool = spool_dir(side_dir.path(), aggregator.addr);
    assert!(
        !spool.join("dead-letter.jsonl").exists(),
        "{:?}",
        std::fs::read_to_string(spool.join("dead-letter.jsonl"))
    );
    // The limit was learned from the answer, once per stream.
    let log = sidecar.log_text();
    assert_eq!(log.matches("records per request").count(), 2, "{log}");
}

/// A TCP listener that accepts connections and never reads or answers.
struct BlackHole {
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BlackHole {
    fn start() -> BlackHole {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            // Dropping the listener and the connections frees the port.
        });
        BlackHole {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn close(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_times_out_and_the_records_arrive_once_it_is_replaced() {
    let (agg_dir, side_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let hole = BlackHole::start();
    let sink = format!("grpc={}", hole.addr);
    let metrics_addr = format!("127.0.0.1:{}", crate::common::free_port());
    let args = [
        "--sink",
        sink.as_str(),
        "--upstream-timeout",
        "300ms",
        "--forward-retry-max",
        "200ms",
        "--metrics-listen",
        metrics_addr.as_str(),
    ];
    let mut sidecar = Binary::start(side_dir.path(), &args).await;
    let mut client = sidecar.client().await;
    client
        .emit(emit_req(vm_entry("hole-vm-1", "hole-1")))
        .await
        .unwrap();

    // The deliveries time out and are retried, visibly.
    let retries = format!("meterd_forward_retries_total{{sink=\"{sink}\",stream=\"entries\"}}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = crate::ops::scrape(&metrics_addr).await;
        if m.get(&retries).copied().unwrap_or(0.0) >= 3.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no retries: {m:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = sidecar.log_text();
    // Either the connection (HTTP/2 never completes) or the call times out.
    assert!(
        log.contains("no answer within 300ms") || log.contains("no connection within 300ms"),
        "{log}"
    );
    assert_eq!(log.matches("upstream unreachable").count(), 1, "{log}");

    // A hanging upstream does not hold up shutdown.
    let asked = Instant::now();
    assert_eq!(sidecar.terminate().code(), Some(0));
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        asked.elapsed()
    );

    // Back up, still facing the black hole, with one more record.
    let sidecar = Binary::start(side_dir.path(), &args).await;
    let mut client = sidecar.client().await;
    client
        .emit(emit_req(vm_entry("hole-vm-2", "")))
        .await
        .unwrap();
    // The black hole goes; a real aggregator takes its port. The sidecar
    // reconnects by itself.
    let addr = hole.addr;
    hole.close();
    let _aggregator = Binary::start_at(addr, agg_dir.path(), &[]).await;
    let want: HashSet<String> = ["hole-vm-1", "hole-vm-2"].map(String::from).into();
    wait_delivered_once(agg_dir.path(), &want, &HashSet::new()).await;
    wait_for("the spool to empty", 20, || {
        crate::common::spool_pending(&spool_dir(side_dir.path(), addr)) == 0
    })
    .await;
}

fn check_config(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(meterd_bin())
        .arg("check-config")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_refuses_grpc_targets_that_cannot_work() {
    for (target, why) in [
        ("ftp://127.0.0.1:50052", "unknown scheme"),
        ("grpc://127.0.0.1:50052", "unknown scheme"),
        ("127.0.0.1", "missing port"),
        ("http://127.0.0.1", "missing port"),
        ("https://agg.example", "missing port"),
        ("http://127.0.0.1:50052/v1", "only a host and a port"),
        ("unix:", "socket path"),
        ("unix://relative", "absolute path"),
    ] {
        let spec = format!("grpc={target}");
        let (ok, stderr) = check_config(&["--sink", &spec]);
        assert!(!ok, "{spec} was accepted");
        assert!(stderr.contains(&format!("sink {spec}")), "{spec}: {stderr}");
        assert!(stderr.contains(why), "{spec}: {stderr}");
    }
    for target in [
        "127.0.0.1:50052",
        "http://127.0.0.1:50052",
        "https://aggregator.example:443",
        "unix:/run/meterd/aggregator.sock",
        "unix:///run/meterd/aggregator.sock",
    ] {
        let spec = format!("grpc={target}");
        let (ok, stderr) = check_config(&["--sink", &spec]);
        assert!(ok, "{spec}: {stderr}");
    }
    let (ok, stderr) = check_config(&[
        "--sink",
        "grpc=https://aggregator.example:443",
        "--grpc-ca-file",
        "/nonexistent/ca.pem",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("--grpc-ca-file /nonexistent/ca.pem"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_form_reaches_the_aggregator() {
    let (agg_dir, side_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let certs = tempfile::tempdir().unwrap();
    let ca = crate::security::ca("chain-ca");
    crate::security::write_server_cert(certs.path(), &ca);
    let ca_file = certs.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let socket = agg_dir.path().with_extension("sock");
    let unix_listen = format!("unix:{}", socket.display());
    // A plaintext aggregator on TCP and a Unix socket, and a TLS one.
    let aggregator = Binary::start(agg_dir.path(), &["--listen", &unix_listen]).await;
    let tls_dir = tempfile::tempdir().unwrap();
    let (cert, key) = (
        certs.path().join("server.pem").display().to_string(),
        certs.path().join("server.key").display().to_string(),
    );
    let mut tls_aggregator =
        Binary::spawn(tls_dir.path(), &["--tls-cert", &cert, "--tls-key", &key]);
    let tls_addr = tls_aggregator.addr;
    wait_for("the TLS aggregator to listen", 20, || {
        assert!(tls_aggregator.child.try_wait().unwrap().is_none(), "exited");
        std::net::TcpStream::connect(tls_addr).is_ok()
    })
    .await;

    let forms = [
        (
            "http",
            format!("grpc=http://{}", aggregator.addr),
            agg_dir.path(),
        ),
        ("unix", format!("grpc={unix_listen}"), agg_dir.path()),
        (
            "unix3",
            format!("grpc=unix://{}", socket.display()),
            agg_dir.path(),
        ),
        (
            "https",
            format!("grpc=https://localhost:{}", tls_addr.port()),
            tls_dir.path(),
        ),
    ];
    let ca_arg = ca_file.display().to_string();
    let mut sidecars = Vec::new();
    for (name, sink, _) in &forms {
        let dir = side_dir.path().join(name);
        let sidecar = Binary::start(
            &dir,
            &[
                "--sink",
                sink,
                "--grpc-ca-file",
                &ca_arg,
                "--forward-retry-max",
                "200ms",
            ],
        )
        .await;
        let mut client = sidecar.client().await;
        client
            .emit(emit_req(vm_entry(
                &format!("form-{name}"),
                &format!("form-{name}"),
            )))
            .await
            .unwrap();
        sidecars.push(sidecar);
    }
    for (name, sink, ledger) in &forms {
        let want: HashSet<String> = [format!("form-{name}")].into();
        wait_for(&format!("{sink} to deliver"), 30, || {
            counts(&entries(ledger), "vm_id").contains_key(&format!("form-{name}"))
        })
        .await;
        wait_delivered_once(ledger, &want, &HashSet::new()).await;
    }
    drop(sidecars);
    let _ = tls_aggregator.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_load_everything_the_sidecar_acked_arrives_once() {
    let (agg_dir, side_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let aggregator = Binary::start(agg_dir.path(), &["--fsync", "never"]).await;
    let sink = format!("grpc={}", aggregator.addr);
    let sidecar = Binary::start(side_dir.path(), &["--sink", &sink, "--fsync", "never"]).await;

    // Four callers of EmitBatch and one of Emit, all at once.
    const PER_CALLER: usize = 2_000;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let mut client = sidecar.client().await;
        tasks.push(tokio::spawn(async move {
            let all = tagged_entries(&format!("load{w}"), PER_CALLER);
            for chunk in all.chunks(100) {
                emit_batch(&mut client, chunk.to_vec()).await;
            }
            all.into_iter().map(|e| e.vm_id).collect::<Vec<_>>()
        }));
    }
    let mut client = sidecar.client().await;
    tasks.push(tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..200 {
            let vm = format!("load-emit-vm-{i}");
            client.emit(emit_req(vm_entry(&vm, ""))).await.unwrap();
            ids.push(vm);
        }
        ids
    }));
    let mut acked = HashSet::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), 4 * PER_CALLER + 200);
    wait_delivered_once(agg_dir.path(), &acked, &HashSet::new()).await;
    eprintln!(
        "{} entries through the chain in {:?}",
        acked.len(),
        started.elapsed()
    );
}

/// A meterd from before EmitBatch: Emit only.
#[derive(Clone, Default)]
struct OldMeterd {
    ids: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl pb::metering_service_server::MeteringService for OldMeterd {
    async fn emit(
        &self,
        request: tonic::Request<pb::EmitRequest>,
    ) -> Result<tonic::Response<pb::EmitResponse>, tonic::Status> {
        let entry = request.into_inner().entry.unwrap_or_default();
        let mut ids = self.ids.lock().unwrap();
        let duplicate = ids.contains(&entry.id);
        if !duplicate {
            ids.push(entry.id);
        }
        Ok(tonic::Response::new(pb::EmitResponse {
            duplicate,
            emitted_at: entry.emitted_at,
        }))
    }

    async fn emit_batch(
        &self,
        _: tonic::Request<EmitBatchRequest>,
    ) -> Result<tonic::Response<pb::EmitBatchResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("unknown method EmitBatch"))
    }

    type SubmitBatchStream = tokio_stream::Empty<Result<pb::SubmitBatchResponse, tonic::Status>>;

    async fn submit_batch(
        &self,
        _: tonic::Request<tonic::Streaming<SubmitBatchRequest>>,
    ) -> Result<tonic::Response<Self::SubmitBatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_aggregator_without_emit_batch_gets_one_emit_per_entry() {
    let old = OldMeterd::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = pb::metering_service_server::MeteringServiceServer::new(old.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let side_dir = tempfile::tempdir().unwrap();
    let sink = format!("grpc={addr}");
    let sidecar = Binary::start(
        side_dir.path(),
        &["--sink", &sink, "--forward-retry-max", "200ms"],
    )
    .await;
    let mut client = sidecar.client().await;
    emit_batch(&mut client, tagged_entries("old", 5)).await;
    wait_for("the old aggregator to get all five", 20, || {
        old.ids.lock().unwrap().len() == 5
    })
    .await;
    let ids = old.ids.lock().unwrap().clone();
    assert_eq!(ids[0], "old-0");
    assert!(
        ids[1].starts_with("h-"),
        "a content id for an entry without one: {ids:?}"
    );
    assert!(sidecar.log_text().contains("has no EmitBatch"));
}
