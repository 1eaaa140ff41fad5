//! What a forwarding sink delivers to: another meterd (`grpc`), a Juju
//! collector (`http`), NATS JetStream (`nats`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::verdict::{UpstreamError, Verdict};
use crate::sink::Record;

pub type UpstreamFuture = Pin<Box<dyn Future<Output = Result<Vec<Verdict>, UpstreamError>> + Send>>;
/// A probe's answer: `Err` says why the upstream is not there.
pub type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Where a forwarding sink delivers. Records of one call are all entries or
/// all batches, in order; the answer has one verdict per record.
pub trait Upstream: Send + Sync + 'static {
    fn deliver(&self, records: Arc<[Record]>) -> UpstreamFuture;

    /// Meter statuses the upstream reported for a model; see [`Sink::relay`](crate::sink::Sink::relay).
    fn relay(&self, _model_uuid: &str) -> Option<crate::sink::Relay> {
        None
    }

    /// Whether this upstream takes entries (a Juju collector may take only
    /// batches); a sink that does not lets them pass by.
    fn takes_entries(&self) -> bool {
        true
    }

    /// A cheap check that the upstream is there, with no record in it: how
    /// pass-through health comes back with no client write. `None`: there
    /// is none, and only the next successful delivery restores health.
    fn probe(&self) -> Option<ProbeFuture> {
        None
    }
}
