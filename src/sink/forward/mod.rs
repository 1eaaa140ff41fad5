//! Forwarding sinks: records go to an [`Upstream`] (another meterd, a Juju
//! collector, NATS JetStream), either through a durable local spool (acked
//! to the client once spooled; delivered at least once, in order, with
//! capped exponential backoff) or in pass-through mode (acked to the client
//! only once the upstream acks; no local state).

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::jsonl::JsonlSink;
use super::{Outcome, Record, Sink, SinkError, SinkFuture};
use crate::ledger::LedgerConfig;
use crate::metrics::{metrics, ForwardLabels};
use crate::spool::{Spool, Stream};

mod backoff;
mod deliver;
mod forwarder;
pub mod grpc;
pub mod http;
pub mod nats;
mod options;
mod probe;
mod upstream;
pub mod verdict;

pub(crate) use backoff::Backoff;
use forwarder::Forwarder;

pub use options::{spool_name, ForwardMode, ForwardOptions, HttpOptions, NatsOptions};
pub use upstream::{ProbeFuture, Upstream, UpstreamFuture};
pub use verdict::{UpstreamError, Verdict};

/// A sink that forwards to an upstream.
pub struct ForwardSink {
    name: String,
    upstream: Arc<dyn Upstream>,
    spooled: Option<Spooled>,
    /// Pass-through mode: whether the upstream answers (probed while not).
    pass_through: Option<PassThrough>,
}

struct PassThrough {
    health: Arc<probe::UpstreamHealth>,
    stop: CancellationToken,
}

struct Spooled {
    spool: Arc<Spool>,
    writer: JsonlSink,
    max_bytes: u64,
    /// Per stream, the log bytes before the first undelivered record (the
    /// origin of [`crate::log::Log::bytes_end`]): what counts against
    /// `--spool-max-bytes` is only what lies beyond.
    delivered: [Arc<AtomicU64>; 2],
    /// Whether the spool has room: false from the first refusal until
    /// delivery has made room again (health is NOT_SERVING meanwhile).
    room: Arc<tokio::sync::watch::Sender<bool>>,
    stop: CancellationToken,
    forwarders: Mutex<Vec<JoinHandle<()>>>,
}

/// How often a full spool is looked at for room while it refuses.
const ROOM_CHECK: Duration = Duration::from_millis(200);

impl Spooled {
    /// Bytes spooled and not yet delivered, over both streams.
    fn backlog(spool: &Spool, delivered: &[Arc<AtomicU64>; 2]) -> u64 {
        [Stream::Entries, Stream::Batches]
            .into_iter()
            .zip(delivered)
            .map(|(stream, d)| {
                spool
                    .log(stream)
                    .bytes_end()
                    .saturating_sub(d.load(Ordering::Acquire))
            })
            .sum()
    }

    /// The spool refused a write: no room until delivery makes some. A
    /// task watches for it, so health comes back with no client write.
    fn full(&self) {
        if !self.room.send_if_modified(|r| std::mem::replace(r, false)) {
            return; // already watching
        }
        let (spool, delivered, room, stop) = (
            self.spool.clone(),
            self.delivered.clone(),
            self.room.clone(),
            self.stop.clone(),
        );
        let max = self.max_bytes;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(ROOM_CHECK) => {}
                    () = stop.cancelled() => return,
                }
                if Spooled::backlog(&spool, &delivered) < max {
                    room.send_replace(true);
                    return;
                }
            }
        });
    }
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
            let stop = CancellationToken::new();
            let health = probe::UpstreamHealth::start(
                name.clone(),
                upstream.clone(),
                options.timeout,
                stop.clone(),
            );
            return Ok(ForwardSink {
                name,
                upstream,
                spooled: None,
                pass_through: Some(PassThrough { health, stop }),
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
                options,
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
                room: Arc::new(tokio::sync::watch::channel(true).0),
                stop,
                forwarders: Mutex::new(forwarders),
            }),
            pass_through: None,
        })
    }
}

impl Sink for ForwardSink {
    fn name(&self) -> &str {
        &self.name
    }

    /// A spool keeps lines and reads them back whole; only pass-through
    /// hands the records themselves to the upstream.
    fn needs_body(&self) -> bool {
        self.spooled.is_none()
    }

    fn submit(&self, records: Arc<[Record]>) -> SinkFuture<Vec<Outcome>> {
        if !self.upstream.takes_entries() && records.first().is_some_and(Record::is_entry) {
            // Checked at start-up: another sink keeps the entries.
            let outcomes = super::all_written(&records);
            return Box::pin(async move { Ok(outcomes) });
        }
        let Some(s) = &self.spooled else {
            // Pass-through: the client's ack is the upstream's.
            let call = deliver::deliver_now(self.upstream.clone(), records);
            let name = self.name.clone();
            let health = self.pass_through.as_ref().map(|p| p.health.clone());
            return Box::pin(async move {
                let result = match call.await {
                    Ok(verdicts) => verdicts
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
                        .collect(),
                    Err(e) => Err(SinkError::Unavailable(format!("{name}: {e}"))),
                };
                if let Some(h) = health {
                    h.observe(result.is_ok());
                }
                result
            });
        };
        let spooled = Spooled::backlog(&s.spool, &s.delivered);
        if spooled >= s.max_bytes {
            s.full();
            let msg = format!(
                "{}: spool full ({spooled} bytes, --spool-max-bytes {}); the upstream is not keeping up",
                self.name, s.max_bytes
            );
            return Box::pin(async move { Err(SinkError::Exhausted(msg)) });
        }
        let labels = ForwardLabels {
            sink: self.name.clone(),
            stream: if records.first().is_some_and(|r| !r.is_entry()) {
                Stream::Batches.name()
            } else {
                Stream::Entries.name()
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
        match (&self.spooled, &self.pass_through) {
            (Some(s), _) => {
                let mut h =
                    super::jsonl::ledger_health(&format!("{} spool", self.name), &s.spool.ledger);
                h.push(super::SinkHealth {
                    name: format!("{} spool room", self.name),
                    healthy: s.room.subscribe(),
                });
                h
            }
            (None, Some(p)) => vec![super::SinkHealth {
                name: format!("{} upstream", self.name),
                healthy: p.health.watch(),
            }],
            (None, None) => Vec::new(),
        }
    }

    fn close(&self) -> SinkFuture<()> {
        if let Some(p) = &self.pass_through {
            p.stop.cancel();
        }
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

/// A stable id for a record, the same on every re-send: its key (the entry
/// `id`, the batch uuid, or the content key of an entry without an id).
/// Upstreams use it to drop re-sends (JetStream's Nats-Msg-Id, the entry id
/// upstream).
pub fn delivery_id(record: &Record) -> String {
    match &record.key {
        Some(k) => k.to_string(),
        None => crate::wire::content_key(&record.line).into(),
    }
}
