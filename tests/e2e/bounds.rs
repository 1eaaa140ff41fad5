//! Bounded memory under overload: the byte budget of records waiting for the
//! sinks (`--max-queue-bytes`), label values on `/metrics` from fixed sets,
//! and the cap on concurrent TLS handshakes.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meterd::pb::SubmitBatchRequest;
use meterd::sink::{Outcome, Record, Sink, SinkFuture};
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tonic::Code;

use crate::common::{batch, emit_req, free_port, vm_entry, Binary, Server};

/// A sink that holds every write until the gate opens, and tracks the
/// bytes it holds.
struct Gate {
    open: watch::Sender<bool>,
    held: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    records: Arc<AtomicUsize>,
}

impl Sink for Gate {
    fn name(&self) -> &str {
        "gate"
    }

    fn submit(&self, records: Arc<[Record]>) -> SinkFuture<Vec<Outcome>> {
        let bytes: usize = records.iter().map(|r| r.line.len()).sum();
        let now = self.held.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.records.fetch_add(records.len(), Ordering::SeqCst);
        let mut open = self.open.subscribe();
        let held = self.held.clone();
        Box::pin(async move {
            let _ = open.wait_for(|o| *o).await;
            held.fetch_sub(bytes, Ordering::SeqCst);
            Ok(vec![Outcome::Written; records.len()])
        })
    }
}

async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Callers beyond `--max-queue-bytes` wait, then get RESOURCE_EXHAUSTED
/// naming the limit (sooner when their own deadline is shorter); the sink
/// never holds more than the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_waiting_for_a_stalled_sink_are_bounded_by_bytes() {
    const BUDGET: usize = 64 * 1024;
    let (open, _) = watch::channel(false);
    let gate = Arc::new(Gate {
        open,
        held: Arc::default(),
        most: Arc::default(),
        records: Arc::default(),
    });
    let config = meterd::server::Config {
        max_queue_bytes: BUDGET as u64,
        ..Default::default()
    };
    let server = Server::with_sink(gate.clone(), config).await;
    let client = server.client().await;

    // Each entry's line is over 3 KiB: about 20 fit in the budget.
    let big = |i: usize| {
        let mut e = vm_entry(&format!("vm-{i}"), &format!("q-{i}"));
        e.hypervisor = "h".repeat(3000);
        e
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..60 {
        let (mut client, tx) = (client.clone(), tx.clone());
        let entry = big(i);
        tokio::spawn(async move {
            let start = Instant::now();
            let r = client.emit(emit_req(entry)).await;
            let _ = tx.send((r.map(|_| ()), start.elapsed()));
        });
    }
    until("the budget to fill", Duration::from_secs(10), || {
        gate.records.load(Ordering::SeqCst) >= 19
    })
    .await;

    // A caller with a short deadline hears why before its deadline.
    let mut req = tonic::Request::new(emit_req(big(100)));
    req.set_timeout(Duration::from_secs(1));
    let start = Instant::now();
    let s = client.clone().emit(req).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("--max-queue-bytes"), "{}", s.message());
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );

    // The others waited the full wait, then were refused.
    let in_sink = gate.records.load(Ordering::SeqCst);
    let mut refused = 0;
    while refused < 60 - in_sink {
        let (r, waited) = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("the waiting callers are answered")
            .unwrap();
        let s = r.expect_err("no room, no ack");
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("--max-queue-bytes"), "{}", s.message());
        assert!(
            waited >= Duration::from_millis(4500),
            "refused after {waited:?}"
        );
        refused += 1;
    }
    assert!(
        gate.most.load(Ordering::SeqCst) <= BUDGET,
        "the sink held {} bytes with a budget of {BUDGET}",
        gate.most.load(Ordering::SeqCst)
    );

    // The sink answers: those it held are acknowledged.
    gate.open.send_replace(true);
    for _ in 0..in_sink {
        let (r, _) = rx.recv().await.unwrap();
        r.expect("written once the sink answers");
    }
    // And there is room again.
    client.clone().emit(emit_req(big(200))).await.unwrap();
    server.stop().await;
}

/// The real binary in front of a pass-through upstream that never answers:
/// SubmitBatch clients pipelining large batches do not grow its memory
/// beyond the budget; they are refused with RESOURCE_EXHAUSTED instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_cannot_grow_memory_through_pipelined_streams() {
    // Accepts connections (in the kernel's backlog) and never answers.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink = format!("grpc={}", hole.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(
        dir.path(),
        &[
            "--sink",
            &sink,
            "--forward-mode",
            "pass-through",
            "--upstream-timeout",
            "60s",
            "--max-queue-bytes",
            "1MiB",
        ],
    )
    .await;
    let baseline = server.rss_kib();

    // 4 streams of 200 requests of one ~0.5 MiB batch each: 400 MiB offered,
    // made lazily so that the test itself does not hold it. A server that
    // buffered what it was offered, or only its 32-deep pipelines (4 x 32 x
    // 0.5 MiB, each request decoded and encoded), would grow by far more
    // than the bound below.
    let mut big = batch("b", "m");
    let template = big.metrics[0].clone();
    big.metrics = (0..250)
        .map(|i| {
            let mut m = template.clone();
            m.key = format!("metric-{i}");
            m.value = "7".repeat(2000);
            m
        })
        .collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for s in 0..4 {
        let mut client = server.client().await;
        let big = big.clone();
        let requests = tokio_stream::iter((0..200).map(move |i| {
            let mut b = big.clone();
            b.uuid = format!("s{s}-{i}");
            SubmitBatchRequest::new(vec![b])
        }));
        let tx = tx.clone();
        tokio::spawn(async move {
            let ended = match client.submit_batch(requests).await {
                Err(s) => s,
                Ok(resp) => match resp.into_inner().next().await {
                    Some(Ok(r)) => panic!("acked by a stalled upstream: {r:?}"),
                    Some(Err(s)) => s,
                    None => panic!("stream ended without a status"),
                },
            };
            let _ = tx.send(ended);
        });
    }

    // The budget holds two requests, so at most two streams have a write
    // stalled upstream (they end with the upstream timeout); the others
    // never get room and end with RESOURCE_EXHAUSTED. Memory is sampled
    // all along.
    let mut most = baseline;
    let mut ended = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ended.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "only {} streams were refused; memory {most} KiB (from {baseline} KiB)",
            ended.len()
        );
        most = most.max(server.rss_kib());
        if let Ok(Some(s)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            ended.push(s);
        }
    }
    most = most.max(server.rss_kib());
    for s in &ended {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("--max-queue-bytes"), "{}", s.message());
    }
    assert!(
        most < baseline + 64 * 1024,
        "memory grew from {baseline} KiB to {most} KiB"
    );
}

/// Every series on `/metrics`, without values.
async fn series(metrics_addr: &str) -> BTreeSet<String> {
    crate::ops::scrape(metrics_addr).await.into_keys().collect()
}

/// Batches whose label keys are anything a client can send (brackets,
/// quotes, backslashes, unicode), each rejected for a label.
fn hostile_batches(n: usize, seed: u64) -> Vec<meterd::pb::MetricBatch> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let alphabet: Vec<char> = "ab]][[\"\\'.é∑🙂 ={}\u{7f}\u{1}".chars().collect();
    (0..n)
        .map(|i| {
            let key: String = (0..rng.usize(1..12))
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let mut b = batch(&format!("label-{seed}-{i}"), "m");
            // A control character in the value breaks a rule named after
            // the key (or the key's own control character does).
            b.metrics[0].labels.insert(key, "bad\u{1}".into());
            b
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_rejected_label_keys_add_no_series() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let server = Binary::start(dir.path(), &["--metrics-listen", &metrics_addr]).await;
    let mut client = server.client().await;
    let base = client.clone();
    let reject = move |batches: Vec<meterd::pb::MetricBatch>| {
        let mut client = base.clone();
        async move {
            let n = batches.len();
            let r = crate::submit_batch::submit_all(
                &mut client,
                vec![SubmitBatchRequest::new(batches)],
            )
            .await;
            assert_eq!(r[0].rejected.len(), n, "every batch is rejected");
        }
    };
    // Both ways a label can break a rule, once, so their series exist.
    let mut first = hostile_batches(1, 1);
    first[0].metrics[0].labels = [("k\u{1}".to_owned(), "v".to_owned())].into();
    let mut second = batch("label-second", "m");
    second.metrics[0].labels = [("k".to_owned(), "v\u{1}".to_owned())].into();
    first.push(second);
    reject(first).await;
    // An entry too, through the other counters' labels.
    let s = client
        .emit(emit_req(vm_entry("", "label-entry")))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    let before = series(&metrics_addr).await;

    for seed in 0..10 {
        reject(hostile_batches(100, 100 + seed)).await;
    }
    let after = series(&metrics_addr).await;
    assert_eq!(
        after.len(),
        before.len(),
        "new series: {:?}",
        after.difference(&before).collect::<Vec<_>>()
    );
    let m = crate::ops::scrape(&metrics_addr).await;
    let rejected: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("meterd_records_rejected_total{type=\"batch\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(rejected, 1002.0, "{m:?}");
}

/// User + system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Out of file descriptors, meterd backs off instead of spinning on
/// `accept`, says so once, keeps serving the connections it has, and
/// accepts again once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_accept_loop_backs_off_and_open_connections_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    client
        .emit(emit_req(vm_entry("vm-0", "before")))
        .await
        .unwrap();
    let pid = server.child.id();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = format!("--nofile={}:{}", open + 6, open + 6);
    let set = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &limit])
        .status()
        .unwrap();
    assert!(set.success());
    // More connections than descriptors are left: the rest wait unaccepted.
    let conns: Vec<std::net::TcpStream> = (0..30)
        .map(|_| std::net::TcpStream::connect(server.addr).unwrap())
        .collect();
    crate::common::wait_until("the log says accepting stopped", || {
        server.log_text().contains("cannot accept connections")
    })
    .await;
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    // Meanwhile the connection it has is served.
    for i in 0..20 {
        let r = client
            .emit(emit_req(vm_entry("vm-0", &format!("during-{i}"))))
            .await
            .expect("an open connection is served");
        assert!(!r.into_inner().duplicate);
    }
    // A window to measure in: an accept loop that spins burns a core.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu, wall) = (cpu_seconds(pid) - cpu0, t0.elapsed().as_secs_f64());
    assert!(
        cpu < 0.3 * wall,
        "{cpu:.2} s of CPU in {wall:.2} s while out of descriptors"
    );
    drop(conns);
    // Descriptors free again: a new client is served.
    let mut fresh = server.client().await;
    fresh
        .emit(emit_req(vm_entry("vm-1", "after")))
        .await
        .expect("accepting again");
    crate::common::wait_until("the log says accepting works again", || {
        server.log_text().contains("accepting connections again")
    })
    .await;
    // Once per change of state, not per failed accept (nor per connection
    // of the backlog, which may fill the descriptors again as it drains).
    let log = server.log_text();
    assert_eq!(log.matches("cannot accept connections").count(), 1, "{log}");
    assert_eq!(
        log.matches("accepting connections again").count(),
        1,
        "{log}"
    );
}
