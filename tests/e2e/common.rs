//! One harness for every surface: an in-process server on 127.0.0.1:0, the
//! real binary on a free port or Unix socket, clients, and the seed vectors.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use meterd::ledger::{Fsync, LedgerConfig};
use meterd::pb::ledger_service_client::LedgerServiceClient;
use meterd::pb::metering_service_client::MeteringServiceClient;
use meterd::pb::{self, Kind, Reason};
use meterd::server::{self, ListenAddr, Listener};
use meterd::sink::jsonl::JsonlSink;
use meterd::sink::Sink;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

pub type Client = MeteringServiceClient<Channel>;
pub type Reader = LedgerServiceClient<Channel>;

/// The Go-generated wire vectors in `../shared/vectors/seed-wire.json`.
pub fn vectors() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors/seed-wire.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("seed-wire.json is JSON")
}

/// `(name, line)` of every vector in one section of seed-wire.json.
pub fn vector_lines(section: &str) -> Vec<(String, String)> {
    vectors()[section]
        .as_array()
        .expect("section is an array")
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_owned(),
                v["line"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub fn ledger_config(dir: &Path) -> LedgerConfig {
    let mut config = LedgerConfig::new(dir);
    config.fsync = Fsync::Always;
    config.fsync_interval = Duration::from_secs(1);
    config
}

/// A meterd running inside the test process on an ephemeral loopback port.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts a server writing the JSONL ledger in `dir`.
    pub async fn jsonl(dir: &Path) -> Server {
        Self::jsonl_with(dir, server::Config::default()).await
    }

    pub async fn jsonl_with(dir: &Path, config: server::Config) -> Server {
        Self::with_ledger(ledger_config(dir), config).await
    }

    /// A server over a ledger opened with `ledger` (tiny segments, retention...).
    pub async fn with_ledger(ledger: LedgerConfig, config: server::Config) -> Server {
        let sink = JsonlSink::open(ledger).await.expect("open ledger");
        Self::with_jsonl(Arc::new(sink), config).await
    }

    /// A server over a JSONL sink, whose ledger `LedgerService` reads.
    pub async fn with_jsonl(sink: Arc<JsonlSink>, config: server::Config) -> Server {
        let ledger = Some(sink.ledger().clone());
        Self::with_sink_and_ledger(sink, ledger, config).await
    }

    /// A server over a sink that keeps no ledger.
    pub async fn with_sink(sink: Arc<dyn Sink>, config: server::Config) -> Server {
        Self::with_sink_and_ledger(sink, None, config).await
    }

    pub async fn with_sink_and_ledger(
        sink: Arc<dyn Sink>,
        ledger: Option<Arc<meterd::ledger::Ledger>>,
        config: server::Config,
    ) -> Server {
        let listener = Listener::bind(&ListenAddr::Tcp("127.0.0.1:0".into()), 0o660)
            .await
            .expect("bind");
        let addr = match listener.local_addr() {
            ListenAddr::Tcp(a) => a.parse().unwrap(),
            ListenAddr::Unix(_) => unreachable!(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server::run(vec![listener], config, sink, ledger, async {
                let _ = stopped.await;
            })
            .await
            .expect("server ran");
        });
        Server {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> Client {
        connect_tcp(self.addr).await
    }

    pub async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(channel(self.addr).await)
    }

    /// A LedgerService client.
    pub async fn reader(&self) -> Reader {
        LedgerServiceClient::new(channel(self.addr).await)
    }

    /// Graceful shutdown: returns once the ledger is synced and closed.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task");
        }
    }
}

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

pub async fn connect_tcp(addr: SocketAddr) -> Client {
    MeteringServiceClient::new(channel(addr).await)
}

/// The health status the server reports for `service`.
pub async fn health_status(health: &mut HealthClient<Channel>, service: &str) -> i32 {
    health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status
}

/// A free loopback port (bound and released; fine for tests on loopback).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real `meterd` binary, killed when dropped.
pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
    pub ledger: PathBuf,
    /// The server's stderr.
    pub log: PathBuf,
}

/// The binary under test: cargo's build, or `METERD_TEST_BIN` (a copy that
/// a concurrent build in a shared target directory cannot replace mid-run).
pub fn meterd_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("METERD_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_meterd").into())
    })
}

impl Binary {
    /// Starts `meterd serve --listen 127.0.0.1:PORT --ledger DIR EXTRA...`
    /// and waits until it answers health checks.
    pub async fn start(ledger: &Path, extra: &[&str]) -> Binary {
        // A port found free can be taken by another test before meterd
        // binds it: then meterd says so and exits, and another port is tried.
        for _ in 0..3 {
            let mut bin = Self::spawn(ledger, extra);
            match bin.ready().await {
                Ok(()) => return bin,
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("meterd exited early; its log:\n{log}"),
            }
        }
        panic!("meterd found its port taken three times");
    }

    /// Starts the binary without waiting for it (for servers whose TCP port
    /// speaks TLS; the caller probes readiness itself).
    pub fn spawn(ledger: &Path, extra: &[&str]) -> Binary {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::spawn_at(addr, ledger, extra)
    }

    /// Starts the binary on a given address (to restart a server where its
    /// clients expect it) and waits until it answers health checks.
    pub async fn start_at(addr: SocketAddr, ledger: &Path, extra: &[&str]) -> Binary {
        let mut bin = Self::spawn_at(addr, ledger, extra);
        bin.wait_ready().await;
        bin
    }

    pub fn spawn_at(addr: SocketAddr, ledger: &Path, extra: &[&str]) -> Binary {
        let port = addr.port();
        // The log goes beside the ledger, for reading when a test fails (a
        // pipe nobody reads could fill up and stall the server).
        let log_path = ledger.with_extension(format!("{port}.log"));
        let log = std::fs::File::create(&log_path).expect("create server log");
        let child = Command::new(meterd_bin())
            .args(["serve", "--listen", &addr.to_string(), "--ledger"])
            .arg(ledger)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn meterd");
        Binary {
            child,
            addr,
            ledger: ledger.to_path_buf(),
            log: log_path,
        }
    }

    pub async fn wait_ready(&mut self) {
        if let Err(log) = self.ready().await {
            panic!("meterd exited early; its log:\n{log}");
        }
    }

    /// Waits until the server answers health checks; `Err` with its log if
    /// it exited first.
    async fn ready(&mut self) -> Result<(), String> {
        for _ in 0..500 {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                return Err(format!("{log}(exit: {status})"));
            }
            if let Ok(ch) = Channel::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect()
                .await
            {
                let mut h = HealthClient::new(ch);
                if h.check(HealthCheckRequest::default()).await.is_ok() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("meterd did not become ready on {}", self.addr);
    }

    pub async fn client(&self) -> Client {
        connect_tcp(self.addr).await
    }

    /// A LedgerService client.
    pub async fn reader(&self) -> Reader {
        LedgerServiceClient::new(channel(self.addr).await)
    }

    /// Sends a signal (`HUP`, `TERM`...) to the server.
    pub fn signal(&self, name: &str) {
        Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
    }

    /// What the server logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process, in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }

    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        self.child.wait().expect("wait")
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process, in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Lines of a ledger file (each without its newline); empty if absent.
/// Every line of a ledger stream (`entries.jsonl` or `batches.jsonl`): its
/// sealed segments in log order, then the active file.
pub fn ledger_lines(dir: &Path, file: &str) -> Vec<String> {
    let stem = file.strip_suffix(".jsonl").unwrap_or(file);
    let mut sealed: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(d) => d
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.starts_with(&format!("{stem}."))
                    && name.ends_with(".jsonl")
                    && name.len() == stem.len() + 1 + 20 + 6
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    sealed.sort();
    sealed.push(dir.join(file));
    let mut out = Vec::new();
    for path in sealed {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                assert!(
                    text.is_empty() || text.ends_with('\n'),
                    "{} ends with a torn line",
                    path.display()
                );
                out.extend(text.lines().map(str::to_owned));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("read {}: {e}", path.display()),
        }
    }
    out
}

/// Records in a spool not yet delivered, per its cursors.
pub fn spool_pending(spool: &Path) -> u64 {
    ["entries", "batches"]
        .into_iter()
        .map(|stream| {
            let Ok(log) = meterd::log::Snapshot::open(spool, stream) else {
                return 0;
            };
            let cursor = std::fs::read_to_string(spool.join(format!("{stream}.cursor")))
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .unwrap_or(0);
            log.end().saturating_sub(cursor)
        })
        .sum()
}

/// The string value of `field` in each JSON line (lines without it are skipped).
pub fn field_values(lines: &[String], field: &str) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad ledger line {l:?}: {e}"));
            v[field].as_str().map(str::to_owned)
        })
        .collect()
}

pub fn entries(dir: &Path) -> Vec<String> {
    ledger_lines(dir, meterd::ledger::ENTRIES_FILE)
}

pub fn batches(dir: &Path) -> Vec<String> {
    ledger_lines(dir, meterd::ledger::BATCHES_FILE)
}

/// Parses an RFC 3339 time (any offset) into a protobuf Timestamp.
pub fn ts(s: &str) -> prost_types::Timestamp {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("time {s}: {e}"));
    meterd::record::time_to_timestamp(t)
}

/// A recent time, inside any dedupe window.
pub fn recent() -> prost_types::Timestamp {
    meterd::record::time_to_timestamp(time::OffsetDateTime::now_utc() - Duration::from_secs(60))
}

/// Builds the protobuf Entry that a Go JSONL line describes.
pub fn pb_entry_from_go(line: &str) -> pb::Entry {
    let v: Value = serde_json::from_str(line).unwrap();
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let kind = meterd::record::Kind::from_wire(&s("kind"))
        .unwrap_or_else(|| panic!("kind {}", s("kind")))
        .to_pb();
    let reason = if s("reason").is_empty() {
        Reason::Unspecified
    } else {
        meterd::record::Reason::from_wire(&s("reason"))
            .unwrap_or_else(|| panic!("reason {}", s("reason")))
            .to_pb()
    };
    let shape = &v["shape"];
    pb::Entry {
        kind: kind as i32,
        vm_id: s("vm_id"),
        snapshot_id: s("snapshot_id"),
        source_snapshot_id: s("source_snapshot_id"),
        reason: reason as i32,
        hypervisor: s("hypervisor"),
        shape: Some(pb::Shape {
            cpu: shape["cpu"].as_i64().unwrap_or(0),
            mem_bytes: shape["mem_bytes"].as_i64().unwrap_or(0),
            storage_bytes: shape["storage_bytes"].as_i64().unwrap_or(0),
        }),
        emitted_at: Some(ts(&s("emitted_at"))),
        id: s("id"),
    }
}

/// Builds the protobuf MetricBatch that a Go `json.Marshal` line describes.
pub fn pb_batch_from_go(v: &Value) -> pb::MetricBatch {
    use base64::Engine as _;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let bytes = |k: &str| {
        v[k].as_str()
            .map(|b| base64::engine::general_purpose::STANDARD.decode(b).unwrap())
            .unwrap_or_default()
    };
    let metrics = v["metrics"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| pb::Metric {
                    key: m["key"].as_str().unwrap().into(),
                    value: m["value"].as_str().unwrap().into(),
                    time: Some(ts(m["time"].as_str().unwrap())),
                    labels: m["labels"]
                        .as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    pb::MetricBatch {
        uuid: s("uuid"),
        model_uuid: s("env-uuid"),
        model_name: s("model-name"),
        unit_name: s("unit-name"),
        charm_url: s("charm-url"),
        created: Some(ts(&s("created"))),
        metrics,
        credentials: bytes("credentials"),
        reseller_credentials: bytes("reseller-credentials"),
        sla_credentials: bytes("sla-credentials"),
    }
}

/// A valid VM entry with an idempotency id and a recent time.
pub fn vm_entry(vm_id: &str, id: &str) -> pb::Entry {
    pb::Entry {
        kind: Kind::VmComputeStart as i32,
        vm_id: vm_id.into(),
        reason: Reason::Boot as i32,
        hypervisor: "cloud-hypervisor".into(),
        shape: Some(pb::Shape {
            cpu: 2,
            mem_bytes: 1 << 30,
            storage_bytes: 0,
        }),
        emitted_at: Some(recent()),
        id: id.into(),
        ..Default::default()
    }
}

/// A valid batch with one metric.
pub fn batch(uuid: &str, model: &str) -> pb::MetricBatch {
    pb::MetricBatch {
        uuid: uuid.into(),
        model_uuid: model.into(),
        model_name: "prod".into(),
        unit_name: "postgresql/0".into(),
        charm_url: "ch:amd64/postgresql-42".into(),
        created: Some(recent()),
        metrics: vec![pb::Metric {
            key: "pg-connections".into(),
            value: "12".into(),
            time: Some(recent()),
            labels: Default::default(),
        }],
        credentials: b"secret-macaroon".to_vec(),
        ..Default::default()
    }
}

pub fn emit_req(entry: pb::Entry) -> pb::EmitRequest {
    pb::EmitRequest { entry: Some(entry) }
}

/// Waits (up to 20 s) until `done` holds; panics with `what` otherwise. For
/// conditions that the server reaches on its own time (a seal, retention),
/// never to decide whether a test passes.
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every response of a Tail call that ends (follow = false).
pub async fn tail_all(reader: &mut Reader, req: pb::TailRequest) -> Vec<pb::TailResponse> {
    let mut stream = reader.tail(req).await.expect("tail").into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await.expect("tail message") {
        out.push(r);
    }
    out
}

/// A Tail request of the entries stream after `after`.
pub fn tail_entries(after: u64) -> pb::TailRequest {
    pb::TailRequest {
        stream: pb::Stream::Entries as i32,
        after,
        ..Default::default()
    }
}

/// An entry of `kind` for `id` at `at` (RFC 3339), with a shape.
pub fn entry_at(kind: Kind, id: &str, at: &str, shape: (i64, i64, i64)) -> pb::Entry {
    let vm = !matches!(kind, Kind::SnapStorageStart | Kind::SnapStorageStop);
    pb::Entry {
        kind: kind as i32,
        vm_id: if vm { id.into() } else { String::new() },
        snapshot_id: if vm { String::new() } else { id.into() },
        hypervisor: "ch-1".into(),
        shape: Some(pb::Shape {
            cpu: shape.0,
            mem_bytes: shape.1,
            storage_bytes: shape.2,
        }),
        emitted_at: Some(ts(at)),
        ..Default::default()
    }
}
