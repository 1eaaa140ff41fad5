//! The `nats` upstream against real `nats-server` processes (JetStream on
//! loopback): every record published once with a stable Nats-Msg-Id, across
//! a server killed and restarted and across a cluster node lost.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::ServerAddr;
use meterd::pb::{Kind, Reason, SubmitBatchRequest};
use tokio_stream::StreamExt as _;
use tonic::Code;

use crate::common::{batch, emit_req, free_port, vm_entry, Binary, Client};

const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A `nats-server -js` on loopback, killed when dropped.
struct NatsServer {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    log: PathBuf,
}

impl NatsServer {
    /// A standalone JetStream server storing in `store`.
    fn start(port: u16, store: &Path) -> NatsServer {
        Self::start_with(port, store, &[])
    }

    fn start_with(port: u16, store: &Path, extra: &[String]) -> NatsServer {
        let mut args: Vec<String> = vec![
            "-js".into(),
            "-sd".into(),
            store.display().to_string(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        args.extend_from_slice(extra);
        let mut server = NatsServer {
            child: None,
            port,
            args,
            log: store.with_extension("nats.log"),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("create nats-server log");
        let child = Command::new(NATS_SERVER)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "nats-server on {} exited: {status}\n{}",
                    self.port,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL nats-server");
            let _ = c.wait();
        }
    }

    /// Starts it again with the same port, store and flags.
    fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One message read back from the stream.
#[derive(Debug)]
struct Msg {
    subject: String,
    id: String,
    payload: String,
}

async fn nats_client(urls: &[String]) -> async_nats::Client {
    let addrs: Vec<ServerAddr> = urls.iter().map(|u| u.parse().unwrap()).collect();
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(3)))
        .connect(addrs)
        .await
        .expect("connect to nats")
}

/// Messages in `stream` right now (None while it does not exist or no
/// server answers).
async fn stream_len(js: &jetstream::Context, stream: &str) -> Option<u64> {
    let mut s = js.get_stream(stream).await.ok()?;
    Some(s.info().await.ok()?.state.messages)
}

/// Every message of the stream, read with an ordered pull consumer.
async fn read_stream(js: &jetstream::Context, stream: &str) -> Vec<Msg> {
    let mut s = js.get_stream(stream).await.expect("get stream");
    let state = s.info().await.expect("stream info").state.clone();
    if state.messages == 0 {
        return Vec::new();
    }
    // Right after a cluster lost a node, consumer creation may time out
    // until the stream's group settles: retry for a while.
    let deadline = Instant::now() + Duration::from_secs(15);
    let consumer = loop {
        match s
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "create ordered consumer: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let mut messages = consumer.messages().await.expect("consume");
    let mut out = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap_or_else(|_| panic!("stream read stalled after {} messages", out.len()))
            .expect("consumer ended")
            .expect("message");
        let seq = m.info().expect("message info").stream_sequence;
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        out.push(Msg {
            subject: m.subject.to_string(),
            id,
            payload: String::from_utf8(m.payload.to_vec()).expect("payload is UTF-8"),
        });
        if seq >= state.last_sequence {
            return out;
        }
    }
}

fn spool_dir(ledger: &Path, target: &str) -> PathBuf {
    ledger
        .join("spool")
        .join(meterd::sink::forward::spool_name("nats", target))
}

fn spool_empty(spool: &Path) -> bool {
    crate::common::spool_pending(spool) == 0
}

async fn connect(addr: SocketAddr) -> Client {
    crate::common::connect_tcp(addr).await
}

fn json(payload: &str) -> serde_json::Value {
    serde_json::from_str(payload).unwrap_or_else(|e| panic!("bad payload {payload:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_every_record_arrives_once_byte_identical_to_the_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(free_port(), &tmp.path().join("js"));
    let target = nats.url();
    let ledger = tmp.path().join("ledger");
    let sink = format!("nats={target}");
    let meterd = Binary::start(
        &ledger,
        &["--sink", "jsonl", "--sink", &sink, "--nats-create-stream"],
    )
    .await;
    let mut client = connect(meterd.addr).await;

    let mut emitted = 0;
    for i in 0..30 {
        let id = if i % 3 == 0 {
            String::new()
        } else {
            format!("e-{i}")
        };
        let mut entry = vm_entry(&format!("vm-{i}"), &id);
        if i % 2 == 1 {
            entry.kind = Kind::VmComputeStop as i32;
            entry.reason = Reason::StopUser as i32;
        }
        client.emit(emit_req(entry.clone())).await.expect("emit");
        emitted += 1;
        if i == 4 {
            // A retry with the same id is recorded once, so published once.
            let resp = client.emit(emit_req(entry)).await.expect("emit again");
            assert!(resp.get_ref().duplicate);
        }
    }
    let requests: Vec<SubmitBatchRequest> = (0..5)
        .map(|i| {
            SubmitBatchRequest::new(vec![
                batch(&format!("b-{i}-a"), "model-a"),
                batch(&format!("b-{i}-b"), "model.b *x"),
            ])
        })
        .collect();
    let mut resp = client
        .submit_batch(tokio_stream::iter(requests))
        .await
        .expect("submit batch")
        .into_inner();
    let mut acked = 0;
    while let Some(r) = resp.next().await {
        let r = r.expect("batch response");
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
        acked += r
            .env_responses
            .values()
            .map(|e| e.acks.len())
            .sum::<usize>();
    }
    assert_eq!(acked, 10);

    let want = emitted + 10;
    let js = jetstream::new(nats_client(std::slice::from_ref(&target)).await);
    let spool = spool_dir(&ledger, &target);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(stream_len(&js, "METERING").await >= Some(want as u64) && spool_empty(&spool)) {
        assert!(
            Instant::now() < deadline,
            "not delivered: {:?} of {want} in the stream; spool empty: {}\n{}",
            stream_len(&js, "METERING").await,
            spool_empty(&spool),
            meterd.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let msgs = read_stream(&js, "METERING").await;

    // Byte-identical to the ledger's lines, each exactly once.
    let ledger_entries = crate::common::entries(&ledger);
    let ledger_batches = crate::common::batches(&ledger);
    assert_eq!(ledger_entries.len(), emitted);
    assert_eq!(ledger_batches.len(), 10);
    let mut got: Vec<&str> = msgs.iter().map(|m| m.payload.as_str()).collect();
    let mut expected: Vec<&str> = ledger_entries
        .iter()
        .chain(&ledger_batches)
        .map(String::as_str)
        .collect();
    got.sort_unstable();
    expected.sort_unstable();
    assert_eq!(
        got, expected,
        "stream payloads differ from the ledger lines"
    );

    // Subjects from the templates, ids stable and unique.
    let mut ids = HashSet::new();
    for m in &msgs {
        assert!(ids.insert(m.id.clone()), "Nats-Msg-Id {} twice", m.id);
        let v = json(&m.payload);
        if let Some(uuid) = v["uuid"].as_str() {
            assert_eq!(m.id, uuid);
            let subject = match v["env-uuid"].as_str() {
                Some("model-a") => "metering.batches.model-a",
                Some("model.b *x") => "metering.batches.model_b__x",
                other => panic!("unexpected model {other:?}"),
            };
            assert_eq!(m.subject, subject);
        } else {
            let subject = match v["kind"].as_str() {
                Some("vm.compute.start") => "metering.entries.vm_compute_start",
                Some("vm.compute.stop") => "metering.entries.vm_compute_stop",
                other => panic!("unexpected kind {other:?}"),
            };
            assert_eq!(m.subject, subject);
            match v["id"].as_str() {
                Some(id) if !id.is_empty() => assert_eq!(m.id, id),
                _ => assert!(m.id.starts_with("h-") && m.id.len() == 34, "{}", m.id),
            }
        }
    }

    // The stream was created as asked.
    let mut stream = js.get_stream("METERING").await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    let mut subjects = config.subjects.clone();
    subjects.sort();
    assert_eq!(subjects, ["metering.batches.>", "metering.entries.>"]);
    assert_eq!(config.num_replicas, 1);
    assert_eq!(config.duplicate_window, Duration::from_secs(120));
}

/// What meterd acknowledged to its clients: vm_id of each entry (unique per
/// entry; a third carry no id) and batch uuids.
#[derive(Default)]
struct Acked {
    entries: Mutex<HashSet<String>>,
    batches: Mutex<HashSet<String>>,
}

/// Steady Emit and SubmitBatch load until `stop`.
fn start_load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acked: Arc<Acked>,
    batches: bool,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for w in 0..3 {
        let (stop, acked) = (stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = connect(addr).await;
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let vm = format!("vm-{w}-{i}");
                let id = if i % 3 == 0 {
                    String::new()
                } else {
                    format!("e-{w}-{i}")
                };
                match client.emit(emit_req(vm_entry(&vm, &id))).await {
                    Ok(_) => {
                        acked.entries.lock().unwrap().insert(vm);
                    }
                    Err(s) if s.code() == Code::Unavailable => {}
                    Err(s) => panic!("emit {vm}: {s:?}"),
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }));
    }
    if batches {
        tasks.push(tokio::spawn(async move {
            let mut client = connect(addr).await;
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let req = SubmitBatchRequest::new(vec![
                    batch(&format!("b-{i}-x"), "model-a"),
                    batch(&format!("b-{i}-y"), "model-b"),
                ]);
                let Ok(resp) = client.submit_batch(tokio_stream::iter(vec![req])).await else {
                    continue;
                };
                let mut resp = resp.into_inner();
                while let Some(Ok(r)) = resp.next().await {
                    assert!(r.rejected.is_empty(), "{:?}", r.rejected);
                    let mut a = acked.batches.lock().unwrap();
                    for env in r.env_responses.values() {
                        a.extend(env.acks.iter().cloned());
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    tasks
}

/// Waits until the spool is empty and the stream holds as many messages as
/// were acknowledged, then checks that each acknowledged record is in the
/// stream exactly once (by payload and by Nats-Msg-Id) and nothing else is.
async fn assert_in_stream_once(urls: &[String], spool: &Path, acked: &Acked, meterd: &Binary) {
    let want_entries = acked.entries.lock().unwrap().clone();
    let want_batches = acked.batches.lock().unwrap().clone();
    assert!(
        want_entries.len() > 100,
        "too little load: {}",
        want_entries.len()
    );
    let want = (want_entries.len() + want_batches.len()) as u64;
    let js = jetstream::new(nats_client(urls).await);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let len = stream_len(&js, "METERING").await;
        if spool_empty(spool) && len >= Some(want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not delivered: {len:?} of {want} in the stream; spool empty: {}\n{}",
            spool_empty(spool),
            meterd.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let msgs = read_stream(&js, "METERING").await;
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    let mut entries: HashMap<String, usize> = HashMap::new();
    let mut batches: HashMap<String, usize> = HashMap::new();
    for m in &msgs {
        *by_id.entry(&m.id).or_default() += 1;
        let v = json(&m.payload);
        if let Some(uuid) = v["uuid"].as_str() {
            *batches.entry(uuid.to_owned()).or_default() += 1;
        } else {
            *entries
                .entry(v["vm_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    for (id, n) in &by_id {
        assert_eq!(*n, 1, "Nats-Msg-Id {id} is in the stream {n} times");
    }
    for (k, n) in entries.iter().chain(&batches) {
        assert_eq!(*n, 1, "{k} is in the stream {n} times");
    }
    let missing: Vec<_> = want_entries
        .iter()
        .filter(|k| !entries.contains_key(*k))
        .chain(want_batches.iter().filter(|k| !batches.contains_key(*k)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged records are not in the stream, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // Entries acknowledged with UNAVAILABLE are not counted, but nothing
    // meterd never saw can be there.
    assert!(msgs.len() as u64 >= want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_killed_and_restarted_mid_load_gets_everything_once() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("js");
    let port = free_port();
    let target = format!("nats://127.0.0.1:{port}");
    let ledger = tmp.path().join("ledger");
    let sink = format!("nats={target}");
    // NATS is not up yet: meterd starts anyway and spools.
    let meterd = Binary::start(
        &ledger,
        &[
            "--sink",
            &sink,
            "--nats-create-stream",
            "--forward-retry-max",
            "300ms",
            "--upstream-timeout",
            "2s",
        ],
    )
    .await;
    let spool = spool_dir(&ledger, &target);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Acked::default());
    let load = start_load(meterd.addr, stop.clone(), acked.clone(), true);

    let wait_for = |n: usize| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while acked.entries.lock().unwrap().len() < n {
                assert!(Instant::now() < deadline, "load stalled below {n}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(30).await;
    assert!(!spool_empty(&spool), "records must wait in the spool");

    let mut nats = NatsServer::start(port, &store);
    let js = jetstream::new(nats_client(std::slice::from_ref(&target)).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stream_len(&js, "METERING").await.unwrap_or(0) < 30 {
        assert!(
            Instant::now() < deadline,
            "nothing delivered after NATS came up\n{}",
            meterd.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Hard kill mid-load; meterd keeps acknowledging from its spool.
    let before = acked.entries.lock().unwrap().len();
    nats.kill9();
    wait_for(before + 60).await;
    nats.restart();
    wait_for(before + 150).await;

    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }
    assert_in_stream_once(&[target], &spool, &acked, &meterd).await;
    assert!(
        meterd.log_text().contains("nats: disconnected"),
        "meterd never saw the outage\n{}",
        meterd.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_cluster_node_killed_under_load_keeps_every_record_once() {
    let tmp = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes = cluster_ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<NatsServer> = (0..3)
        .map(|i| {
            NatsServer::start_with(
                ports[i],
                &tmp.path().join(format!("js-{i}")),
                &[
                    "-n".into(),
                    format!("n{i}"),
                    "--cluster_name".into(),
                    "meterd-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", cluster_ports[i]),
                    "--routes".into(),
                    routes.clone(),
                ],
            )
        })
        .collect();
    let urls: Vec<String> = nodes.iter().map(NatsServer::url).collect();

    // Wait for a JetStream meta leader: the account info answers only then.
    // (Raw request: async-nats's Account wants fields nats-server 2.9 lacks.)
    let client = nats_client(&urls).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = client.request("$JS.API.INFO", "".into()).await;
        if let Ok(m) = info {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            if v.get("error").is_none() && v.get("type").is_some() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no JetStream meta leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let js = jetstream::new(client);

    let target = urls.join(",");
    let ledger = tmp.path().join("ledger");
    let sink = format!("nats={target}");
    let meterd = Binary::start(
        &ledger,
        &[
            "--sink",
            &sink,
            "--nats-create-stream",
            "--nats-replicas",
            "3",
            "--forward-retry-max",
            "300ms",
            "--upstream-timeout",
            "2s",
        ],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while stream_len(&js, "METERING").await.is_none() {
        assert!(
            Instant::now() < deadline,
            "meterd did not create the stream\n{}",
            meterd.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut stream = js.get_stream("METERING").await.unwrap();
    let info = stream.info().await.unwrap().clone();
    assert_eq!(info.config.num_replicas, 3);

    let spool = spool_dir(&ledger, &target);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Acked::default());
    let load = start_load(meterd.addr, stop.clone(), acked.clone(), false);
    let wait_for = |n: usize| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while acked.entries.lock().unwrap().len() < n {
                assert!(Instant::now() < deadline, "load stalled below {n}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(100).await;
    // Lose the stream leader: the harder case (a new leader is elected,
    // publishes in flight time out and are re-sent).
    let deadline = Instant::now() + Duration::from_secs(10);
    let victim = loop {
        let leader = match stream.info().await {
            Ok(info) => info.cluster.as_ref().and_then(|c| c.leader.clone()),
            Err(_) => None,
        };
        if let Some(i) = (0..3).find(|i| leader.as_deref() == Some(format!("n{i}").as_str())) {
            break i;
        }
        assert!(Instant::now() < deadline, "the stream has no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    nodes[victim].kill9();
    let before = acked.entries.lock().unwrap().len();
    wait_for(before + 200).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }
    let alive: Vec<String> = (0..3)
        .filter(|i| *i != victim)
        .map(|i| urls[i].clone())
        .collect();
    assert_in_stream_once(&alive, &spool, &acked, &meterd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_message_id_already_in_the_stream_counts_as_delivered_once() {
    let tmp = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(free_port(), &tmp.path().join("js"));
    let target = nats.url();
    // The operator's own stream, not created by meterd.
    let js = jetstream::new(nats_client(std::slice::from_ref(&target)).await);
    js.create_stream(jetstream::stream::Config {
        name: "BILLING".into(),
        subjects: vec!["usage.>".into()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("create stream");
    // As if an earlier attempt had got through but its PubAck was lost.
    let ack = js
        .send_publish(
            "usage.e.vm-1",
            jetstream::message::PublishMessage::build()
                .payload("earlier".into())
                .message_id("dup-1"),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!ack.duplicate);

    let ledger = tmp.path().join("ledger");
    let sink = format!("nats={target}");
    let meterd = Binary::start(
        &ledger,
        &[
            "--sink",
            &sink,
            "--nats-stream",
            "BILLING",
            "--nats-entries-subject",
            "usage.e.{vm_id}",
            "--nats-batches-subject",
            "usage.b.{unit}",
        ],
    )
    .await;
    let mut client = connect(meterd.addr).await;
    client
        .emit(emit_req(vm_entry("vm-1", "dup-1")))
        .await
        .unwrap();
    client
        .emit(emit_req(vm_entry("vm-2", "new-1")))
        .await
        .unwrap();
    let req = SubmitBatchRequest::new(vec![batch("b-1", "model-a")]);
    let mut resp = client
        .submit_batch(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    while let Some(r) = resp.next().await {
        assert!(r.unwrap().rejected.is_empty());
    }

    let spool = spool_dir(&ledger, &target);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(spool_empty(&spool) && stream_len(&js, "BILLING").await >= Some(3)) {
        assert!(
            Instant::now() < deadline,
            "not delivered: {:?} in the stream\n{}",
            stream_len(&js, "BILLING").await,
            meterd.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let msgs = read_stream(&js, "BILLING").await;
    // Entries and batches are delivered independently: compare unordered.
    let mut got: Vec<(&str, &str)> = msgs
        .iter()
        .map(|m| (m.subject.as_str(), m.id.as_str()))
        .collect();
    got.sort_unstable();
    assert_eq!(
        got,
        [
            ("usage.b.postgresql/0", "b-1"),
            ("usage.e.vm-1", "dup-1"),
            ("usage.e.vm-2", "new-1"),
        ]
    );
    assert_eq!(msgs[0].payload, "earlier", "the re-send was stored again");
}

fn check_config(args: &[&str]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(crate::common::meterd_bin())
        .arg("check-config")
        .arg("--ledger")
        .arg(dir.path())
        .args(args)
        .output()
        .expect("run meterd check-config");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn nats_flags_are_checked_and_shown_without_passwords() {
    let (ok, out, err) = check_config(&[
        "--sink",
        "jsonl,nats=nats://meter:s3cret@127.0.0.1:4222,nats://meter:s3cret@127.0.0.1:4223",
        "--nats-create-stream",
        "--nats-replicas",
        "3",
        "--nats-duplicate-window",
        "10m",
    ]);
    assert!(ok, "{err}");
    assert!(!out.contains("s3cret"), "{out}");
    assert!(
        out.contains(
            "nats=nats://meter:REDACTED@127.0.0.1:4222,nats://meter:REDACTED@127.0.0.1:4223"
        ),
        "{out}"
    );
    assert!(out.contains("nats-replicas = 3"), "{out}");
    assert!(out.contains("nats-duplicate-window = \"10m\""), "{out}");
    assert!(out.contains("nats-create-stream = true"), "{out}");

    let (ok, _, err) = check_config(&[
        "--sink",
        "nats=nats://127.0.0.1:4222",
        "--nats-entries-subject",
        "metering.{nope}",
    ]);
    assert!(!ok);
    assert!(err.contains("unknown placeholder {nope}"), "{err}");

    let (ok, _, err) = check_config(&[
        "--sink",
        "nats=nats://127.0.0.1:4222",
        "--nats-create-stream",
        "--nats-batches-subject",
        "{model_uuid}",
    ]);
    assert!(!ok);
    assert!(err.contains("needs a fixed first token"), "{err}");

    let (ok, _, err) = check_config(&[
        "--sink",
        "nats=nats://127.0.0.1:4222",
        "--nats-replicas",
        "7",
    ]);
    assert!(!ok);
    assert!(err.contains("--nats-replicas"), "{err}");
}
