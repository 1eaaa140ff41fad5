//! Forwarding sinks: records go to an [`Upstream`] (another meterd, a Juju
//! collector, NATS JetStream), either through a durable local spool (acked
//! to the client once spooled; delivered at least once, in order, with
//! capped exponential backoff) or in pass-through mode (acked to the client
//! only once the upstream acks; no local state).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use std::sync::{Mutex, PoisonError};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::deliver::{Decision, Done, Pipeline};
use super::jsonl::JsonlSink;
use super::{Outcome, Record, Sink, SinkError, SinkFuture};
use crate::ledger::LedgerConfig;
use crate::metrics::{metrics, ForwardLabels};
use crate::spool::{Spool, Stream};

pub use super::verdict::{UpstreamError, Verdict};

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
    /// Requests in flight at once per spool file (1 keeps the upstream's
    /// order exactly the spool's).
    pub in_flight: usize,
    /// CA certificates (PEM) trusted by `grpc=https://` sinks, beside the
    /// system and webpki roots.
    pub grpc_ca_file: Option<std::path::PathBuf>,
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
        for stream in [Stream::Entries, Stream::Batches] {
            let f = Forwarder::start(
                &name,
                stream,
                spool.clone(),
                upstream.clone(),
                options.retry_max,
                options.in_flight,
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
            let call = super::deliver::deliver_now(self.upstream.clone(), records);
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
        let spooled = s.spool.ledger.entries.durable_len() + s.spool.ledger.batches.durable_len();
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

/// Delivers one spool file, in order, from its cursor.
struct Forwarder {
    name: String,
    stream: Stream,
    spool: Arc<Spool>,
    upstream: Arc<dyn Upstream>,
    cursor: u64,
    backoff: Backoff,
    labels: ForwardLabels,
    retry_max: Duration,
    /// Requests in flight at once.
    in_flight: usize,
}

// === impl Forwarder ===

impl Forwarder {
    async fn start(
        name: &str,
        stream: Stream,
        spool: Arc<Spool>,
        upstream: Arc<dyn Upstream>,
        retry_max: Duration,
        in_flight: usize,
    ) -> std::io::Result<Forwarder> {
        let s = spool.clone();
        let (cursor, backlog) = tokio::task::spawn_blocking(move || {
            let cursor = s.load_cursor(stream)?;
            Ok::<_, std::io::Error>((cursor, s.count_lines(stream, cursor)?))
        })
        .await
        .map_err(std::io::Error::other)??;
        let labels = ForwardLabels {
            sink: name.to_owned(),
            stream: stream.name(),
        };
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
            cursor,
            backoff: Backoff::new(retry_max),
            labels,
            retry_max,
            in_flight,
        })
    }

    async fn run(mut self, stop: CancellationToken) {
        let mut pipeline = Pipeline::new(
            self.upstream.clone(),
            self.in_flight,
            self.retry_max,
            self.name.clone(),
            self.labels.clone(),
        );
        // Windows are read ahead of the cursor while earlier ones are in
        // flight; the cursor moves only as windows finish, in order.
        let mut read_at = self.cursor;
        while !stop.is_cancelled() {
            let journal = self.spool.journal(self.stream);
            let len = journal.durable_len();
            self.publish_backlog(len);
            if read_at < len && pipeline.wants_more() {
                match self.read_window(read_at).await {
                    Some(window) => {
                        read_at = window.end;
                        pipeline.push(window.records, window.end);
                    }
                    None if !self.pause(&stop).await => return,
                    None => {}
                }
            } else if !pipeline.is_empty() {
                let Some(done) = pipeline.next(&stop).await else {
                    return; // stopping: the rest stays spooled
                };
                if !self.finish(done, &stop).await {
                    return;
                }
                if let Some(t) = pipeline.oldest() {
                    self.publish_oldest(t);
                }
            } else if len > 0 {
                let cursor_path = self.spool.cursor_path(self.stream);
                match journal.compact(self.cursor, cursor_path).await {
                    Ok(true) => {
                        self.cursor = 0;
                        read_at = 0;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(sink = %self.name, error = %e, "spool compaction failed")
                    }
                }
            } else {
                tokio::select! {
                    () = journal.appended() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }

    fn publish_backlog(&self, len: u64) {
        let bytes = len.saturating_sub(self.cursor);
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

    /// Reads one window from `from`; `None` when reading failed (logged).
    async fn read_window(&mut self, from: u64) -> Option<crate::spool::Window> {
        let (spool, stream) = (self.spool.clone(), self.stream);
        let window = match tokio::task::spawn_blocking(move || spool.read(stream, from)).await {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => {
                tracing::error!(sink = %self.name, error = %e, "reading the spool failed");
                return None;
            }
            Err(e) => {
                tracing::error!(sink = %self.name, error = %e, "spool reader failed");
                return None;
            }
        };
        let m = metrics();
        if window.quarantined > 0 {
            m.quarantined
                .get_or_create(&self.labels)
                .inc_by(window.quarantined);
            m.backlog_records
                .get_or_create(&self.labels)
                .dec_by(i64::try_from(window.quarantined).unwrap_or(0));
        }
        // Windows are read ahead: only the one at the cursor holds the
        // oldest pending record.
        match window.records.first() {
            Some(first) if from == self.cursor => self.publish_oldest(first.time),
            _ => {}
        }
        Some(window)
    }

    fn publish_oldest(&self, t: time::OffsetDateTime) {
        let age = (time::OffsetDateTime::now_utc() - t).whole_seconds().max(0);
        metrics()
            .oldest_pending_seconds
            .get_or_create(&self.labels)
            .set(age);
    }

    /// Records a finished window's answers (dead-letters first, so that a
    /// refused record is never lost) and moves the cursor past it. Returns
    /// false when stopped before that could be done.
    async fn finish(&mut self, done: Done, stop: &CancellationToken) -> bool {
        let m = metrics();
        for (record, decision) in done.records.iter().zip(&done.decisions) {
            match decision {
                Decision::Delivered => self.done(&m.delivered),
                Decision::DeadLetter(why) => {
                    while let Err(e) = self.spool.dead_letter(record, why) {
                        tracing::error!(sink = %self.name, error = %e, "writing the dead-letter file failed");
                        if !self.pause(stop).await {
                            return false;
                        }
                    }
                    self.done(&m.dead_lettered);
                }
            }
        }
        self.backoff.reset();
        self.cursor = done.end;
        let (spool, stream, cursor) = (self.spool.clone(), self.stream, self.cursor);
        match tokio::task::spawn_blocking(move || spool.store_cursor(stream, cursor)).await {
            Ok(Ok(())) => {}
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
pub(super) struct Backoff {
    attempt: u32,
    max: Duration,
}

impl Backoff {
    const INITIAL: Duration = Duration::from_millis(100);

    pub(super) fn new(max: Duration) -> Self {
        Backoff { attempt: 0, max }
    }

    pub(super) fn next(&mut self) -> Duration {
        let ceiling = Self::INITIAL
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling
            .mul_f64(fastrand::f64())
            .max(Duration::from_millis(10))
    }

    pub(super) fn reset(&mut self) {
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
