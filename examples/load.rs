//! Load client for meterd benchmarks and fault tests (`scripts/bench`,
//! `scripts/soak`). It talks to a meterd running in another process.
//!
//! ```sh
//! cargo run --release --example load -- batch --addr 127.0.0.1:50051 --streams 4 --duration 10s
//! cargo run --release --example load -- emit --addr 127.0.0.1:50051 --concurrency 64 --id-prefix run1
//! cargo run --release --example load -- encode-emit --out emit.bin      # h2load -d body
//! cargo run --release --example load -- gen-ledger --dir /tmp/big --entries-bytes 1G
//! cargo run --release --example load -- wait-health --addr 127.0.0.1:50051
//! ```
//!
//! Every mode that sends traffic prints one JSON summary line on stdout.
//! `--ack-log` / `--sent-log` write the ids (entries) or uuids (batches) that
//! were acknowledged / sent, one per line, so that a script can check the
//! ledger against what the server promised.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use clap::{Args, Parser, Subcommand};
use meterd::pb::metering_service_client::MeteringServiceClient;
use meterd::pb::{
    EmitRequest, Entry, Kind, Metric, MetricBatch, Reason, Shape, SubmitBatchRequest,
};
use meterd::record::{Check, Limits};
use meterd::server::ListenAddr;
use meterd::sink::Record;
use prost::Message as _;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(about = "meterd load client (benchmarks and fault tests)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Unary Emit from concurrent callers.
    Emit(EmitArgs),
    /// SubmitBatch streams that pipeline requests.
    Batch(BatchArgs),
    /// Write a gRPC-framed EmitRequest (5-byte prefix + protobuf), for `h2load -d`.
    EncodeEmit(EncodeArgs),
    /// Fill a ledger directory with valid records, encoded as meterd encodes them.
    GenLedger(GenArgs),
    /// Poll grpc.health.v1.Health/Check until SERVING; print the milliseconds it took.
    WaitHealth(WaitArgs),
    /// EmitBatch a fixed number of entries into a sidecar, then wait until an
    /// aggregator's ledger holds them all: the chain's end-to-end rate.
    Chain(ChainArgs),
}

#[derive(Args)]
struct Common {
    /// Server address: HOST:PORT or unix:/path.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: ListenAddr,
    /// Stop sending new work after this long (in-flight work still completes).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Stop after this many calls (emit) or requests (batch) in total; 0 means no limit.
    #[arg(long, default_value_t = 0)]
    requests: u64,
    /// Write every acknowledged id / uuid here, one per line.
    #[arg(long)]
    ack_log: Option<PathBuf>,
    /// Write every id / uuid that was sent (acknowledged or not) here.
    #[arg(long)]
    sent_log: Option<PathBuf>,
    /// Send these ids / uuids (one per line) first, before new ones.
    #[arg(long)]
    resend: Option<PathBuf>,
    /// A caller (or stream) stops at its first error instead of going on.
    #[arg(long)]
    stop_on_error: bool,
    /// HTTP/2 connections to spread the calls over; 0 picks one per 64 callers.
    #[arg(long, default_value_t = 0)]
    connections: usize,
}

#[derive(Args)]
struct EmitArgs {
    #[command(flatten)]
    common: Common,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Give every entry a unique id PREFIX-N; without it entries carry no id.
    #[arg(long)]
    id_prefix: Option<String>,
}

#[derive(Args)]
struct BatchArgs {
    #[command(flatten)]
    common: Common,
    /// Concurrent SubmitBatch streams.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Requests each stream keeps in flight (pipelining).
    #[arg(long, default_value_t = 8)]
    depth: usize,
    /// Batches per request.
    #[arg(long, default_value_t = 10)]
    batches: usize,
    /// Metrics per batch.
    #[arg(long, default_value_t = 10)]
    metrics: usize,
    /// Batch uuids are PREFIX-STREAM-N; default: a random prefix.
    #[arg(long)]
    uuid_prefix: Option<String>,
}

#[derive(Args)]
struct EncodeArgs {
    #[arg(long)]
    out: PathBuf,
    /// Entry id; leave it unset for h2load, or every call after the first is a duplicate.
    #[arg(long)]
    id: Option<String>,
}

#[derive(Args)]
struct GenArgs {
    #[arg(long)]
    dir: PathBuf,
    /// Approximate size of entries.jsonl to write (e.g. 1G, 256M).
    #[arg(long, default_value = "0", value_parser = parse_size)]
    entries_bytes: u64,
    /// Approximate size of batches.jsonl to write.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    batches_bytes: u64,
    /// Spread record times over this window before now (all inside the dedupe window).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "6days")]
    spread: Duration,
}

#[derive(Args)]
struct WaitArgs {
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: ListenAddr,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    timeout: Duration,
    /// Measure from this instant (nanoseconds since the Unix epoch) instead of from now.
    #[arg(long)]
    since_ns: Option<u128>,
}

#[derive(Args)]
struct ChainArgs {
    /// The sidecar (forwarding with --sink grpc=AGGREGATOR).
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: ListenAddr,
    /// The aggregator's ledger directory, whose entries.jsonl is watched.
    #[arg(long)]
    aggregator_ledger: PathBuf,
    /// Entries to send (each with a unique id).
    #[arg(long, default_value_t = 200_000)]
    entries: u64,
    /// Entries per EmitBatch call.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// EmitBatch calls in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Give up waiting for the aggregator after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "300s")]
    timeout: Duration,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let m = match s[i..].to_ascii_uppercase().as_str() {
                "K" | "KB" | "KIB" => 1u64 << 10,
                "M" | "MB" | "MIB" => 1 << 20,
                "G" | "GB" | "GIB" => 1 << 30,
                other => return Err(format!("unknown size suffix {other:?}")),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|e| format!("{s:?}: {e}"))
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Emit(a) => emit(a).await,
        Cmd::Batch(a) => batch(a).await,
        Cmd::EncodeEmit(a) => encode_emit(&a),
        Cmd::GenLedger(a) => gen_ledger(&a),
        Cmd::WaitHealth(a) => wait_health(a).await,
        Cmd::Chain(a) => chain(a).await,
    };
    if let Err(e) = result {
        eprintln!("load: {e}");
        std::process::exit(1);
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What all callers of a run saw, merged at the end.
#[derive(Default)]
struct Tally {
    ok: u64,
    duplicate: u64,
    rejected: u64,
    errors: BTreeMap<String, u64>,
    first_error: BTreeMap<String, String>,
    latencies_us: Vec<u32>,
    acked: Vec<String>,
    sent: Vec<String>,
}

impl Tally {
    fn error(&mut self, status: &tonic::Status) {
        let code = format!("{:?}", status.code());
        *self.errors.entry(code.clone()).or_default() += 1;
        self.first_error
            .entry(code)
            .or_insert_with(|| status.message().to_string());
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.duplicate += other.duplicate;
        self.rejected += other.rejected;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.first_error {
            self.first_error.entry(k).or_insert(v);
        }
        self.latencies_us.extend(other.latencies_us);
        self.acked.extend(other.acked);
        self.sent.extend(other.sent);
    }

    fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        f64::from(sorted[i]) / 1000.0
    }

    /// Writes the logs and returns the common part of the JSON summary.
    fn finish(mut self, c: &Common, elapsed: Duration) -> Res<serde_json::Value> {
        if let Some(path) = &c.ack_log {
            write_lines(path, &self.acked)?;
        }
        if let Some(path) = &c.sent_log {
            write_lines(path, &self.sent)?;
        }
        self.latencies_us.sort_unstable();
        let l = &self.latencies_us;
        Ok(serde_json::json!({
            "ok": self.ok,
            "duplicate": self.duplicate,
            "rejected": self.rejected,
            "errors": self.errors,
            "first_error": self.first_error,
            "elapsed_s": elapsed.as_secs_f64(),
            "calls_per_s": l.len() as f64 / elapsed.as_secs_f64(),
            // Successful calls (emit) or responses (batch) only; failed calls are fast.
            "ok_per_s": self.ok as f64 / elapsed.as_secs_f64(),
            "p50_ms": Self::percentile_ms(l, 0.50),
            "p99_ms": Self::percentile_ms(l, 0.99),
            "max_ms": Self::percentile_ms(l, 1.0),
        }))
    }
}

fn write_lines(path: &Path, lines: &[String]) -> Res<()> {
    let mut w = BufWriter::new(std::fs::File::create(path)?);
    for l in lines {
        writeln!(w, "{l}")?;
    }
    w.flush()?;
    Ok(())
}

fn read_lines(path: &Path) -> Res<VecDeque<String>> {
    let f = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut out = VecDeque::new();
    for line in f.lines() {
        let line = line?;
        if !line.is_empty() {
            out.push_back(line);
        }
    }
    Ok(out)
}

async fn channels(c: &Common, callers: usize) -> Res<Vec<Channel>> {
    let n = if c.connections == 0 {
        callers.div_ceil(64).max(1)
    } else {
        c.connections
    };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(meterd::cli::client::connect(&c.addr, Duration::from_secs(60)).await?);
    }
    Ok(out)
}

/// Hands out work until the deadline or the request budget runs out.
struct Budget {
    deadline: Instant,
    limit: u64,
    next: AtomicU64,
    resend: Mutex<VecDeque<String>>,
}

impl Budget {
    fn new(c: &Common) -> Res<Budget> {
        let resend = match &c.resend {
            Some(p) => read_lines(p)?,
            None => VecDeque::new(),
        };
        Ok(Budget {
            deadline: Instant::now() + c.duration,
            limit: c.requests,
            next: AtomicU64::new(0),
            resend: Mutex::new(resend),
        })
    }

    /// The next sequence number, or `None` when the run is over.
    fn take(&self) -> Option<u64> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (self.limit == 0 || n < self.limit).then_some(n)
    }

    fn resend(&self) -> Option<String> {
        self.resend
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front()
    }
}

fn entry(id: String) -> Entry {
    Entry {
        kind: Kind::VmComputeStart as i32,
        vm_id: "vm-7f3a0c1e".into(),
        snapshot_id: String::new(),
        source_snapshot_id: String::new(),
        reason: Reason::Boot as i32,
        hypervisor: "cloud-hypervisor".into(),
        shape: Some(Shape {
            cpu: 4,
            mem_bytes: 4 << 30,
            storage_bytes: 0,
        }),
        emitted_at: None,
        id,
    }
}

async fn emit(a: EmitArgs) -> Res<()> {
    let c = &a.common;
    let chans = channels(c, a.concurrency).await?;
    let budget = Arc::new(Budget::new(c)?);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(a.concurrency);
    for i in 0..a.concurrency {
        let mut client = MeteringServiceClient::new(chans[i % chans.len()].clone());
        let budget = budget.clone();
        let prefix = a.id_prefix.clone();
        let stop_on_error = c.stop_on_error;
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            loop {
                let id = match budget.resend() {
                    Some(id) => id,
                    None => match budget.take() {
                        None => break,
                        Some(n) => prefix
                            .as_ref()
                            .map(|p| format!("{p}-{n}"))
                            .unwrap_or_default(),
                    },
                };
                let logged = !id.is_empty();
                if logged {
                    t.sent.push(id.clone());
                }
                let begin = Instant::now();
                let result = client
                    .emit(EmitRequest {
                        entry: Some(entry(id.clone())),
                    })
                    .await;
                t.latencies_us
                    .push(u32::try_from(begin.elapsed().as_micros()).unwrap_or(u32::MAX));
                match result {
                    Ok(resp) => {
                        t.ok += 1;
                        if resp.into_inner().duplicate {
                            t.duplicate += 1;
                        }
                        if logged {
                            t.acked.push(id);
                        }
                    }
                    Err(status) => {
                        t.error(&status);
                        if stop_on_error {
                            break;
                        }
                        if status.code() == tonic::Code::Unavailable {
                            // Don't spin on a failing disk or a dead server.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            }
            t
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await?);
    }
    let elapsed = started.elapsed();
    let mut summary = total.finish(c, elapsed)?;
    summary["mode"] = "emit".into();
    summary["concurrency"] = a.concurrency.into();
    summary["connections"] = chans.len().into();
    println!("{summary}");
    Ok(())
}

fn now_ts() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}

fn metric_batch(uuid: String, metrics: usize, now: &prost_types::Timestamp) -> MetricBatch {
    MetricBatch {
        uuid,
        model_uuid: "deadbeef-0bad-400d-8000-4b1d0d06f00d".into(),
        model_name: "prod".into(),
        unit_name: "postgresql/0".into(),
        charm_url: "ch:amd64/postgresql-42".into(),
        created: Some(*now),
        metrics: (0..metrics)
            .map(|i| Metric {
                key: "pg-connections".into(),
                value: (i * 7 % 1000).to_string(),
                time: Some(*now),
                labels: BTreeMap::from([("db".to_string(), "main".to_string())]),
            })
            .collect(),
        credentials: Vec::new(),
        reseller_credentials: Vec::new(),
        sla_credentials: Vec::new(),
    }
}

/// One request waiting for its response: when it was sent, and its uuids.
struct Pending {
    sent_at: Instant,
    uuids: Vec<String>,
}

async fn batch(a: BatchArgs) -> Res<()> {
    let c = &a.common;
    let chans = channels(c, a.streams).await?;
    let budget = Arc::new(Budget::new(c)?);
    let prefix = a.uuid_prefix.clone().unwrap_or_else(|| {
        let u = uuid::Uuid::new_v4().simple().to_string();
        u[..12].to_string()
    });
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(a.streams);
    for s in 0..a.streams {
        let client = MeteringServiceClient::new(chans[s % chans.len()].clone());
        let budget = budget.clone();
        let prefix = format!("{prefix}-{s}");
        let (depth, batches, metrics) = (a.depth.max(1), a.batches, a.metrics);
        tasks.push(tokio::spawn(stream_load(
            client, budget, prefix, depth, batches, metrics,
        )));
    }
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await?);
    }
    let elapsed = started.elapsed();
    let batches_acked = total.acked.len();
    let batches_sent = total.sent.len();
    let mut summary = total.finish(c, elapsed)?;
    summary["mode"] = "batch".into();
    summary["streams"] = a.streams.into();
    summary["depth"] = a.depth.into();
    summary["batches_per_request"] = a.batches.into();
    summary["metrics_per_batch"] = a.metrics.into();
    summary["batches_sent"] = batches_sent.into();
    summary["batches_acked"] = batches_acked.into();
    summary["metrics_acked"] = (batches_acked * a.metrics).into();
    summary["metrics_per_s"] =
        (batches_acked as f64 * a.metrics as f64 / elapsed.as_secs_f64()).into();
    println!("{summary}");
    Ok(())
}

/// One SubmitBatch stream keeping `depth` requests in flight. `ok` counts
/// responses; `acked` holds every acknowledged uuid.
async fn stream_load(
    mut client: MeteringServiceClient<Channel>,
    budget: Arc<Budget>,
    prefix: String,
    depth: usize,
    batches: usize,
    metrics: usize,
) -> Tally {
    let mut t = Tally::default();
    let (req_tx, req_rx) = mpsc::channel::<SubmitBatchRequest>(depth);
    let window = Arc::new(Semaphore::new(depth));
    let pending: Arc<Mutex<VecDeque<Pending>>> = Arc::default();

    // The sender builds requests while fewer than `depth` are unanswered.
    let sender = {
        let window = window.clone();
        let pending = pending.clone();
        let budget = budget.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut seq = 0u64;
            'requests: loop {
                let Ok(permit) = window.acquire().await else {
                    break;
                };
                permit.forget();
                let now = now_ts();
                let mut uuids = Vec::with_capacity(batches);
                while uuids.len() < batches {
                    if let Some(u) = budget.resend() {
                        uuids.push(u);
                    } else if uuids.is_empty() {
                        if budget.take().is_none() {
                            break 'requests;
                        }
                        // A request's fresh uuids come from one budget unit.
                        for b in 0..batches {
                            uuids.push(format!("{prefix}-{seq}-{b}"));
                        }
                        seq += 1;
                    } else {
                        break;
                    }
                }
                let req = SubmitBatchRequest::new(
                    uuids
                        .iter()
                        .map(|u| metric_batch(u.clone(), metrics, &now))
                        .collect(),
                );
                sent.extend(uuids.iter().cloned());
                pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push_back(Pending {
                        sent_at: Instant::now(),
                        uuids,
                    });
                if req_tx.send(req).await.is_err() {
                    break;
                }
            }
            sent
        })
    };

    match client.submit_batch(ReceiverStream::new(req_rx)).await {
        Err(status) => t.error(&status),
        Ok(resp) => {
            let mut inbound = resp.into_inner();
            loop {
                match inbound.message().await {
                    Ok(Some(r)) => {
                        let Some(p) = pending
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .pop_front()
                        else {
                            t.error(&tonic::Status::internal("a response without a request"));
                            break;
                        };
                        t.latencies_us.push(
                            u32::try_from(p.sent_at.elapsed().as_micros()).unwrap_or(u32::MAX),
                        );
                        t.ok += 1;
                        t.rejected += r.rejected.len() as u64;
                        let acks: std::collections::HashSet<String> = r
                            .env_responses
                            .into_values()
                            .flat_map(|env| env.acks)
                            .collect();
                        let mine = p.uuids.iter().filter(|u| acks.contains(*u)).count();
                        if mine != acks.len() {
                            t.error(&tonic::Status::internal(
                                "a response acked a uuid that its request did not carry",
                            ));
                        }
                        t.acked
                            .extend(p.uuids.into_iter().filter(|u| acks.contains(u)));
                        window.add_permits(1);
                    }
                    Ok(None) => break,
                    Err(status) => {
                        t.error(&status);
                        break;
                    }
                }
            }
        }
    }
    window.close();
    if let Ok(sent) = sender.await {
        t.sent = sent;
    }
    t
}

fn encode_emit(a: &EncodeArgs) -> Res<()> {
    let req = EmitRequest {
        entry: Some(entry(a.id.clone().unwrap_or_default())),
    };
    let body = req.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + body.len());
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(body.len())?.to_be_bytes());
    framed.extend_from_slice(&body);
    std::fs::write(&a.out, &framed)?;
    println!("{}", framed.len());
    Ok(())
}

fn gen_ledger(a: &GenArgs) -> Res<()> {
    std::fs::create_dir_all(&a.dir)?;
    let limits = Limits::default();
    let now = time::OffsetDateTime::now_utc();
    let check = Check {
        limits: &limits,
        now,
    };
    let spread = a.spread.as_secs().max(1);
    let at = |n: u64| {
        let t = now - Duration::from_secs(n % spread);
        prost_types::Timestamp {
            seconds: t.unix_timestamp(),
            nanos: 0,
        }
    };
    let (mut entries, mut batches) = (0u64, 0u64);
    if a.entries_bytes > 0 {
        let mut w =
            BufWriter::with_capacity(1 << 20, std::fs::File::create(a.dir.join("entries.jsonl"))?);
        let mut written = 0u64;
        while written < a.entries_bytes {
            let mut pb = entry(format!("gen-{entries:012}"));
            pb.emitted_at = Some(at(entries));
            pb.vm_id = format!("vm-{:08x}", entries % 100_000);
            let rec = Record::entry(check.entry(pb)?);
            w.write_all(&rec.line)?;
            written += rec.line.len() as u64;
            entries += 1;
        }
        w.flush()?;
    }
    if a.batches_bytes > 0 {
        let mut w =
            BufWriter::with_capacity(1 << 20, std::fs::File::create(a.dir.join("batches.jsonl"))?);
        let mut written = 0u64;
        while written < a.batches_bytes {
            let ts = at(batches);
            let rec =
                Record::batch(check.batch(metric_batch(format!("gen-{batches:012}"), 10, &ts))?);
            w.write_all(&rec.line)?;
            written += rec.line.len() as u64;
            batches += 1;
        }
        w.flush()?;
    }
    println!(
        "{}",
        serde_json::json!({"entries": entries, "batches": batches})
    );
    Ok(())
}

async fn wait_health(a: WaitArgs) -> Res<()> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let since = match a.since_ns {
        Some(ns) => {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)?
                .as_nanos();
            Instant::now() - Duration::from_nanos(u64::try_from(now.saturating_sub(ns))?)
        }
        None => Instant::now(),
    };
    let deadline = Instant::now() + a.timeout;
    let mut tries = 0u64;
    loop {
        tries += 1;
        if let Ok(ch) = meterd::cli::client::connect(&a.addr, Duration::from_secs(1)).await {
            let resp = HealthClient::new(ch)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if let Ok(r) = resp {
                if r.into_inner().status == 1 {
                    let ms = since.elapsed().as_secs_f64() * 1000.0;
                    println!("{}", serde_json::json!({"startup_ms": ms, "tries": tries}));
                    return Ok(());
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("{} not SERVING after {:?}", a.addr, a.timeout).into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Sends `entries` entries with EmitBatch, then counts the aggregator's
/// ledger lines until every one has arrived.
async fn chain(a: ChainArgs) -> Res<()> {
    let ledger = a.aggregator_ledger.join(meterd::ledger::ENTRIES_FILE);
    let mut counter = LineCounter::default();
    let already = counter.count(&ledger)?;
    let channel = meterd::cli::client::connect(&a.addr, Duration::from_secs(60)).await?;
    let prefix = format!("chain-{}", uuid::Uuid::new_v4().simple());
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency.max(1) {
        let mut client = MeteringServiceClient::new(channel.clone());
        let (next, prefix, total, size) = (next.clone(), prefix.clone(), a.entries, a.batch.max(1));
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(size as u64, Ordering::Relaxed);
                if from >= total {
                    return Ok::<_, tonic::Status>(());
                }
                let entries = (from..(from + size as u64).min(total))
                    .map(|n| entry(format!("{prefix}-{n}")))
                    .collect();
                let results = client
                    .emit_batch(meterd::pb::EmitBatchRequest::new(entries))
                    .await?
                    .into_inner()
                    .results;
                if let Some(r) = results.iter().find(|r| !r.rejected.is_empty()) {
                    return Err(tonic::Status::internal(r.rejected.clone()));
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let ingest = started.elapsed();
    let want = already + a.entries;
    let mut seen = already;
    while seen < want {
        if started.elapsed() > a.timeout {
            return Err(format!(
                "only {} of {} entries arrived within {:?}",
                seen - already,
                a.entries,
                a.timeout
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = counter.count(&ledger)?;
    }
    let end_to_end = started.elapsed();
    let n = a.entries as f64;
    println!(
        "{}",
        serde_json::json!({
            "mode": "chain",
            "entries": a.entries,
            "batch": a.batch,
            "concurrency": a.concurrency,
            "ingest_s": ingest.as_secs_f64(),
            "ingest_per_s": n / ingest.as_secs_f64(),
            "end_to_end_s": end_to_end.as_secs_f64(),
            "end_to_end_per_s": n / end_to_end.as_secs_f64(),
        })
    );
    Ok(())
}

/// Counts the lines of a file that only grows, reading only what is new.
#[derive(Default)]
struct LineCounter {
    offset: u64,
    lines: u64,
}

impl LineCounter {
    fn count(&mut self, path: &Path) -> Res<u64> {
        use std::io::{Read as _, Seek as _};
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        f.seek(std::io::SeekFrom::Start(self.offset))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(self.lines);
            }
            self.offset += n as u64;
            self.lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        }
    }
}
