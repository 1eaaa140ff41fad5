//! The sink contract: where accepted records go. The server knows only
//! [`Sink`]; each implementation lives in a small module of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub mod capture;
pub mod fanout;
pub mod forward;
pub mod jsonl;
pub mod nop;
mod spec;
pub mod stderr;

pub use crate::wire::{Body, Record};
pub(crate) use spec::redact_url;
pub use spec::{build, BuildConfig, Built, SinkSpec, SinkSpecs};

/// What became of one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Newly recorded.
    Written,
    /// Already recorded earlier (same key within the dedupe window); not written again.
    Duplicate,
    /// Refused for good by an upstream that acks for the client
    /// (pass-through forwarding), with its reason.
    Rejected(Arc<str>),
}

/// Why a sink could not take records. Nothing in the failed call counts as
/// recorded; the caller may retry.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink may recover by itself (disk full, read-only, upstream down).
    #[error("{0}")]
    Unavailable(String),
    /// The sink is full and refuses more work for now.
    #[error("{0}")]
    Exhausted(String),
}

/// A boxed future, so that `Sink` stays object-safe.
pub type SinkFuture<T> = Pin<Box<dyn Future<Output = Result<T, SinkError>> + Send + 'static>>;

/// Where accepted records go. Implementations are safe for concurrent use.
pub trait Sink: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &str;

    /// Takes the records and resolves once each one is durable (or
    /// acknowledged upstream, for a forwarding sink): one outcome per record,
    /// in order. The work is queued when this is called, so records are
    /// written in the order of the calls; the future only waits for the
    /// outcome. Dropping it leaves the records' fate unknown (they may still
    /// be written), exactly like a lost reply.
    fn submit(&self, records: Arc<[Record]>) -> SinkFuture<Vec<Outcome>>;

    /// Whether this sink reads a batch's structured form ([`Body::Batch`])
    /// rather than only its line. When no sink does, the edge drops it as
    /// soon as the line is encoded (see [`Record::without_body`]), on the
    /// thread that decoded it. Default: it does.
    fn needs_body(&self) -> bool {
        true
    }

    /// Reopens files by path (after a log rotation renamed them). Default: nothing to do.
    fn reopen(&self) -> SinkFuture<()> {
        Box::pin(async { Ok(()) })
    }

    /// The meter statuses an upstream (a Juju collector) last reported for
    /// `model_uuid`, relayed to SubmitBatch clients. Default: none.
    fn relay(&self, _model_uuid: &str) -> Option<Relay> {
        None
    }

    /// What can tell whether this sink takes writes, kept current by the
    /// sink itself (a failed ledger is probed every second), so that health
    /// recovers with no client write. Default: nothing to watch.
    fn health(&self) -> Vec<SinkHealth> {
        Vec::new()
    }

    /// Makes everything taken so far durable and stops. Called once at shutdown.
    fn close(&self) -> SinkFuture<()> {
        Box::pin(async { Ok(()) })
    }
}

/// One part of a sink that can fail on its own (a ledger stream, a spool).
pub struct SinkHealth {
    pub name: String,
    pub healthy: tokio::sync::watch::Receiver<bool>,
}

/// A meter status: `GREEN`, `AMBER` or `RED` (or empty) and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeterStatus {
    pub status: String,
    pub info: String,
}

/// What a collector says about one model, as a Juju controller relays it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Relay {
    pub model_status: MeterStatus,
    /// By unit name.
    pub unit_statuses: std::collections::BTreeMap<String, MeterStatus>,
    /// The collector's latest `new-grace-period`, if it gave one.
    pub new_grace_period: Option<std::time::Duration>,
}

/// Every outcome `Written`: for sinks that do not de-duplicate.
pub(crate) fn all_written(records: &[Record]) -> Vec<Outcome> {
    vec![Outcome::Written; records.len()]
}
