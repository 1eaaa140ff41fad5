//! Forwarding sinks: records go to an [`Upstream`] (another meterd, a Juju
//! collector, NATS JetStream), either through a durable local spool (acked
//! to the client once spooled; delivered at least once, in order, with
//! capped exponential backoff) or in pass-through mode (acked to the client
//! only once the upstream acks; no local state).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::jsonl::JsonlSink;
use super::{Outcome, Record, Sink, SinkError, SinkFuture};
use crate::ledger::LedgerConfig;
use crate::log::LogReader;
use crate::metrics::{metrics, ForwardLabels};
use crate::spool::{Spool, Stream, Window};

/// The upstream's answer for one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Recorded upstream.
    Acked,
    /// The upstream already had it.
    Duplicate,
    /// Refused for good (invalid there); never re-sent.
    Rejected(String),
    /// Not acknowledged this time; send again later.
    Retry,
}

/// The whole call failed (unreachable, timed out, malformed answer).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct UpstreamError(pub String);

pub type UpstreamFuture = Pin<Box<dyn Future<Output = Result<Vec<Verdict>, UpstreamError>> + Send>>;

/// Where a forwarding sink delivers. Records of one call are all entries or
/// all batches, in order; the answer has one verdict per record.
pub trait Upstream: Send + Sync + 'static {
    fn deliver(&self, records: Arc<[Record]>) -> UpstreamFuture;

    /// Meter statuses the upstream reported for a model; see [`Sink::relay`].
    fn relay(&self, _model_uuid: &str) -> Option<super::Relay> {
        None
    }

    /// Whether this upstream takes entries (a Juju collector may take only
    /// batches); a sink that does not lets them pass by.
    fn takes_entries(&self) -> bool {
        true
    }
}

/// How a forwarding sink acknowledges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardMode {
    /// Ack once the record is in the local spool.
    Spool,
    /// Ack only once the upstream acks.
    PassThrough,
}

/// Settings shared by every forwarding sink.
#[derive(Clone, Debug)]
pub struct ForwardOptions {
    pub mode: ForwardMode,
    /// Parent of the spool directories (one per sink).
    pub spool_dir: std::path::PathBuf,
    /// Above this many spooled bytes new records get RESOURCE_EXHAUSTED.
    pub max_spool_bytes: u64,
    /// Longest wait between two delivery attempts.
    pub retry_max: Duration,
    /// Timeout of one upstream call.
    pub timeout: Duration,
    /// Credential for the upstream (bearer token, NATS token).
    pub token: Option<String>,
    pub http: super::http::HttpOptions,
    /// Settings of the `nats` sink.
    pub nats: super::nats::NatsOptions,
}

impl ForwardOptions {
    /// The spool directory of the sink `kind=target`.
    pub fn spool_for(&self, kind: &str, target: &str) -> std::path::PathBuf {
        self.spool_dir.join(spool_name(kind, target))
    }
}

/// The name of a sink's spool directory: one per upstream, named after it
/// (passwords redacted) so that a restart with the same flags finds its
/// backlog.
pub fn spool_name(kind: &str, target: &str) -> String {
    let safe: String = super::redact_url(target)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{kind}-{safe}")
}

/// A sink that forwards to an upstream.
pub struct ForwardSink {
    name: String,
    upstream: Arc<dyn Upstream>,
    spooled: Option<Spooled>,
}

struct Spooled {
    spool: Arc<Spool>,
    writer: JsonlSink,
    max_bytes: u64,
    /// Per stream, the log bytes before the first undelivered record (the
    /// origin of [`crate::log::Log::bytes_end`]): what the spool may
    /// count against `--spool-max-bytes` is only what lies beyond.
    delivered: [Arc<AtomicU64>; 2],
    stop: CancellationToken,
    forwarders: Mutex<Vec<JoinHandle<()>>>,
}

impl ForwardSink {
    /// Opens the spool in `spool.dir` (spool mode) and starts delivering.
    pub async fn open(
        name: String,
        upstream: Arc<dyn Upstream>,
        spool: LedgerConfig,
        options: &ForwardOptions,
    ) -> std::io::Result<ForwardSink> {
        if options.mode == ForwardMode::PassThrough {
            return Ok(ForwardSink {
                name,
                upstream,
                spooled: None,
            });
        }
        let spool = tokio::task::spawn_blocking(move || Spool::open(&spool))
            .await
            .map_err(std::io::Error::other)??;
        let spool = Arc::new(spool);
        let stop = CancellationToken::new();
        let mut forwarders = Vec::new();
        let delivered = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
        for (stream, delivered) in [Stream::Entries, Stream::Batches]
            .into_iter()
            .zip(&delivered)
        {
            let f = Forwarder::start(
                &name,
                stream,
                spool.clone(),
                upstream.clone(),
                options.retry_max,
                delivered.clone(),
            )
            .await?;
            forwarders.push(tokio::spawn(f.run(stop.clone())));
        }
        Ok(ForwardSink {
            name,
            upstream,
            spooled: Some(Spooled {
                writer: JsonlSink::from_ledger(spool.ledger.clone()),
                spool,
                max_bytes: options.max_spool_bytes,
                delivered,
                stop,
                forwarders: Mutex::new(forwarders),
            }),
        })
    }
}

impl Sink for ForwardSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn submit(&self, records: Arc<[Record]>) -> SinkFuture<Vec<Outcome>> {
        if !self.upstream.takes_entries()
            && matches!(
                records.first().map(|r| &r.body),
                Some(super::Body::Entry(_))
            )
        {
            // Checked at start-up: another sink keeps the entries.
            let outcomes = super::all_written(&records);
            return Box::pin(async move { Ok(outcomes) });
        }
        let Some(s) = &self.spooled else {
            // Pass-through: the client's ack is the upstream's.
            let call = self.upstream.deliver(records);
            let name = self.name.clone();
            return Box::pin(async move {
                let verdicts = call
                    .await
                    .map_err(|e| SinkError::Unavailable(format!("{name}: {e}")))?;
                verdicts
                    .into_iter()
                    .map(|v| match v {
                        Verdict::Acked => Ok(Outcome::Written),
                        Verdict::Duplicate => Ok(Outcome::Duplicate),
                        Verdict::Rejected(why) => Ok(Outcome::Rejected(
                            format!("{name} rejected the record: {why}").into(),
                        )),
                        Verdict::Retry => Err(SinkError::Unavailable(format!(
                            "{name} did not acknowledge the record"
                        ))),
                    })
                    .collect()
            });
        };
        let spooled: u64 = [Stream::Entries, Stream::Batches]
            .into_iter()
            .zip(&s.delivered)
            .map(|(stream, d)| {
                s.spool
                    .log(stream)
                    .bytes_end()
                    .saturating_sub(d.load(Ordering::Acquire))
            })
            .sum();
        if spooled >= s.max_bytes {
            let msg = format!(
                "{}: spool full ({spooled} bytes, --spool-max-bytes {}); the upstream is not keeping up",
                self.name, s.max_bytes
            );
            return Box::pin(async move { Err(SinkError::Exhausted(msg)) });
        }
        let labels = ForwardLabels {
            sink: self.name.clone(),
            stream: match records.first().map(|r| &r.body) {
                Some(super::Body::Batch(_)) => Stream::Batches.name(),
                _ => Stream::Entries.name(),
            },
        };
        let write = s.writer.submit(records);
        Box::pin(async move {
            let outcomes = write.await?;
            let written = outcomes.iter().filter(|o| **o == Outcome::Written).count();
            metrics()
                .backlog_records
                .get_or_create(&labels)
                .inc_by(i64::try_from(written).unwrap_or(i64::MAX));
            Ok(outcomes)
        })
    }

    fn relay(&self, model_uuid: &str) -> Option<super::Relay> {
        self.upstream.relay(model_uuid)
    }

    fn health(&self) -> Vec<super::SinkHealth> {
        match &self.spooled {
            Some(s) => {
                super::jsonl::ledger_health(&format!("{} spool", self.name), &s.spool.ledger)
            }
            None => Vec::new(),
        }
    }

    fn close(&self) -> SinkFuture<()> {
        let Some(s) = &self.spooled else {
            return Box::pin(async { Ok(()) });
        };
        let stop = s.stop.clone();
        let spool = s.spool.clone();
        let forwarders =
            std::mem::take(&mut *s.forwarders.lock().unwrap_or_else(PoisonError::into_inner));
        Box::pin(async move {
            // Shutdown never removes anything from the spool: whatever was not
            // acknowledged upstream is delivered after the restart.
            stop.cancel();
            for f in forwarders {
                let _ = f.await;
            }
            let (a, b) = tokio::join!(spool.ledger.entries.close(), spool.ledger.batches.close());
            a.and(b).map_err(|e| SinkError::Unavailable(e.0))
        })
    }
}

/// Delivers one spool stream, in order, from its cursor.
struct Forwarder {
    name: String,
    stream: Stream,
    spool: Arc<Spool>,
    upstream: Arc<dyn Upstream>,
    /// Where the next window is read; `None` while a blocking read has it.
    reader: Option<LogReader>,
    /// The last position with a final answer (stored in the cursor file).
    cursor: u64,
    delivered: Arc<AtomicU64>,
    backoff: Backoff,
    labels: ForwardLabels,
    /// Whether the last attempt reached the upstream; logs say only when this flips.
    up: bool,
}

// === impl Forwarder ===

impl Forwarder {
    async fn start(
        name: &str,
        stream: Stream,
        spool: Arc<Spool>,
        upstream: Arc<dyn Upstream>,
        retry_max: Duration,
        delivered: Arc<AtomicU64>,
    ) -> std::io::Result<Forwarder> {
        let s = spool.clone();
        let (cursor, reader) = tokio::task::spawn_blocking(move || {
            let cursor = s.load_cursor(stream)?;
            let mut reader = s
                .log(stream)
                .reader(cursor)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let bytes = reader
                .locate_now()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok::<_, std::io::Error>((cursor, (reader, bytes)))
        })
        .await
        .map_err(std::io::Error::other)??;
        let (reader, bytes) = reader;
        delivered.store(bytes, Ordering::Release);
        let labels = ForwardLabels {
            sink: name.to_owned(),
            stream: stream.name(),
        };
        let backlog = spool.log(stream).end().saturating_sub(cursor);
        metrics()
            .backlog_records
            .get_or_create(&labels)
            .set(i64::try_from(backlog).unwrap_or(i64::MAX));
        if backlog > 0 {
            tracing::info!(
                sink = name,
                stream = stream.name(),
                records = backlog,
                "spool has a backlog to deliver"
            );
        }
        Ok(Forwarder {
            name: name.to_owned(),
            stream,
            spool,
            upstream,
            reader: Some(reader),
            cursor,
            delivered,
            backoff: Backoff::new(retry_max),
            labels,
            up: true,
        })
    }

    async fn run(mut self, stop: CancellationToken) {
        let mut appended = self.spool.log(self.stream).subscribe();
        while !stop.is_cancelled() {
            appended.mark_unchanged();
            let Some(window) = self.read_window(&stop).await else {
                return; // stopping: the rest stays spooled
            };
            self.publish_backlog();
            if window.last.is_none() {
                tokio::select! {
                    changed = appended.changed() => if changed.is_err() { return },
                    () = stop.cancelled() => return,
                }
                continue;
            }
            if !self.deliver_window(window, &stop).await {
                return;
            }
        }
    }

    /// Reads the next window off the async executor; retries a failed read
    /// after a pause. `None` when stopped.
    async fn read_window(&mut self, stop: &CancellationToken) -> Option<Window> {
        loop {
            let mut reader = self.reader.take()?;
            let (spool, stream) = (self.spool.clone(), self.stream);
            let read = tokio::task::spawn_blocking(move || {
                let window = spool.read(stream, &mut reader);
                (reader, window)
            })
            .await;
            match read {
                Ok((reader, result)) => {
                    self.reader = Some(reader);
                    match result {
                        Ok(w) => return Some(w),
                        Err(e) => {
                            tracing::error!(sink = %self.name, error = %e, "reading the spool failed")
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(sink = %self.name, error = %e, "spool reader failed");
                    return None;
                }
            }
            if !self.pause(stop).await {
                return None;
            }
        }
    }

    fn publish_backlog(&self) {
        let end = self.spool.log(self.stream).bytes_end();
        let bytes = end.saturating_sub(self.delivered.load(Ordering::Acquire));
        metrics()
            .backlog_bytes
            .get_or_create(&self.labels)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        if bytes == 0 {
            metrics()
                .oldest_pending_seconds
                .get_or_create(&self.labels)
                .set(0);
        }
    }

    /// Delivers one window until every record has a final answer, then
    /// moves the cursor past it and releases what it delivered. Returns
    /// false when stopped.
    async fn deliver_window(&mut self, window: Window, stop: &CancellationToken) -> bool {
        let m = metrics();
        if window.quarantined > 0 {
            m.quarantined
                .get_or_create(&self.labels)
                .inc_by(window.quarantined);
            m.backlog_records
                .get_or_create(&self.labels)
                .dec_by(i64::try_from(window.quarantined).unwrap_or(0));
        }
        if let Some(received) = window.oldest_received {
            let age = (crate::log::now_nanos().saturating_sub(received)) / 1_000_000_000;
            m.oldest_pending_seconds
                .get_or_create(&self.labels)
                .set(age.max(0));
        }
        let last = window.last;
        let mut pending: Vec<Record> = window.records.into_iter().map(|(_, r)| r).collect();
        while !pending.is_empty() {
            let batch: Arc<[Record]> = pending.into();
            match self.upstream.deliver(batch.clone()).await {
                Ok(verdicts) if verdicts.len() == batch.len() => {
                    self.reached(true);
                    let mut retry = Vec::new();
                    for (record, verdict) in batch.iter().zip(verdicts) {
                        match verdict {
                            Verdict::Acked | Verdict::Duplicate => self.done(&m.delivered),
                            Verdict::Rejected(why) => {
                                tracing::warn!(sink = %self.name, key = ?record.key, reason = %why, "upstream rejected a record; moved to dead-letter.jsonl");
                                let (spool, r, w) =
                                    (self.spool.clone(), record.clone(), why.clone());
                                let written =
                                    tokio::task::spawn_blocking(move || spool.dead_letter(&r, &w))
                                        .await
                                        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                                if let Err(e) = written {
                                    tracing::error!(sink = %self.name, error = %e, "writing the dead-letter file failed");
                                    retry.push(record.clone());
                                    continue;
                                }
                                self.done(&m.dead_lettered);
                            }
                            Verdict::Retry => retry.push(record.clone()),
                        }
                    }
                    pending = retry;
                    if !pending.is_empty() && !self.pause(stop).await {
                        return false;
                    }
                    if pending.is_empty() {
                        self.backoff.reset();
                    }
                }
                Ok(verdicts) => {
                    self.reached(false);
                    tracing::error!(sink = %self.name, sent = batch.len(), answered = verdicts.len(), "upstream answered for a different number of records; retrying");
                    pending = batch.iter().cloned().collect();
                    if !self.pause(stop).await {
                        return false;
                    }
                }
                Err(e) => {
                    if self.up {
                        tracing::warn!(sink = %self.name, error = %e, "upstream unreachable; records stay spooled and are retried");
                    }
                    self.reached(false);
                    pending = batch.iter().cloned().collect();
                    if !self.pause(stop).await {
                        return false;
                    }
                }
            }
        }
        let Some(last) = last else { return true };
        self.cursor = last;
        if let Some(bytes) = self.reader.as_ref().and_then(|r| r.bytes_before()) {
            self.delivered.store(bytes, Ordering::Release);
        }
        let (spool, stream, cursor) = (self.spool.clone(), self.stream, self.cursor);
        match tokio::task::spawn_blocking(move || spool.store_cursor(stream, cursor)).await {
            // Stored before anything is released: a crash never leaves a
            // cursor pointing before a deleted segment's records.
            Ok(Ok(())) => {
                if let Err(e) = self.spool.log(self.stream).release(cursor).await {
                    tracing::warn!(sink = %self.name, error = %e, "deleting delivered spool segments failed; retried after the next window");
                }
            }
            // The records were delivered; a stale cursor only means they may
            // be delivered again after a restart (the upstream dedupes).
            Ok(Err(e)) => {
                tracing::error!(sink = %self.name, error = %e, "storing the spool cursor failed")
            }
            Err(e) => {
                tracing::error!(sink = %self.name, error = %e, "storing the spool cursor failed")
            }
        }
        true
    }

    fn done(
        &self,
        counter: &prometheus_client::metrics::family::Family<
            ForwardLabels,
            prometheus_client::metrics::counter::Counter,
        >,
    ) {
        counter.get_or_create(&self.labels).inc();
        metrics().backlog_records.get_or_create(&self.labels).dec();
    }

    fn reached(&mut self, up: bool) {
        if up && !self.up {
            tracing::info!(sink = %self.name, stream = self.stream.name(), "upstream reachable again; delivering the backlog");
        }
        self.up = up;
    }

    /// Waits before the next attempt; false when stopped meanwhile.
    async fn pause(&mut self, stop: &CancellationToken) -> bool {
        metrics().retries.get_or_create(&self.labels).inc();
        tokio::select! {
            () = tokio::time::sleep(self.backoff.next()) => true,
            () = stop.cancelled() => false,
        }
    }
}

/// Capped exponential backoff with full jitter: attempt n waits a random
/// time in [0, min(max, 100 ms * 2^n)], so that many sidecars retrying the
/// same upstream spread out.
struct Backoff {
    attempt: u32,
    max: Duration,
}

impl Backoff {
    const INITIAL: Duration = Duration::from_millis(100);

    fn new(max: Duration) -> Self {
        Backoff { attempt: 0, max }
    }

    fn next(&mut self) -> Duration {
        let ceiling = Self::INITIAL
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling
            .mul_f64(fastrand::f64())
            .max(Duration::from_millis(10))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A stable id for a record: its own key, or a hash of its line. Upstreams
/// use it to drop re-sends (JetStream's Nats-Msg-Id, the entry id upstream).
pub fn delivery_id(record: &Record) -> String {
    match &record.key {
        Some(k) => k.to_string(),
        None => {
            use sha2::Digest as _;
            let digest = sha2::Sha256::digest(&record.line);
            let mut id = String::with_capacity(2 + 32);
            id.push_str("h-");
            for b in &digest[..16] {
                id.push_str(&format!("{b:02x}"));
            }
            id
        }
    }
}
