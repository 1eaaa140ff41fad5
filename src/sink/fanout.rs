//! Fan-out: a record is acknowledged once every sink has it.
//!
//! What a client sees when one sink fails after another wrote: the call
//! fails with the failing sink's error (the first in `--sink` order when
//! several fail), and the record stays written where it succeeded; nothing
//! is rolled back, since a sink's write cannot be taken back. The client's
//! retry (same entry `id` or batch uuid; an entry without an id carries its
//! content key, see [`crate::wire::content_key`]) is then written once
//! everywhere: the sinks that have it answer "duplicate" (they de-duplicate
//! by key), the one that failed writes it, and the call answers OK with
//! `duplicate` set. Sinks that do not de-duplicate (`stderr`, `capture`,
//! `nop`) write every copy they are given.

use std::sync::Arc;

use futures_util::future::join_all;

use super::{Outcome, Record, Sink, SinkError, SinkFuture};

/// Sends every record to all of its sinks. A record counts as a duplicate
/// when any sink reports it as one (only de-duplicating sinks ever do), and
/// as rejected when a pass-through upstream refused it (the other sinks may
/// still have written it).
pub struct Fanout {
    sinks: Vec<Arc<dyn Sink>>,
    name: String,
}

impl Fanout {
    pub fn new(sinks: Vec<Arc<dyn Sink>>) -> Self {
        let name = sinks.iter().map(|s| s.name()).collect::<Vec<_>>().join("+");
        Fanout { sinks, name }
    }
}

/// Every result, then the first error in sink order: the call's answer
/// waits for every sink, so that what the client hears is settled (and the
/// server's queue budget is held until no sink is still writing).
async fn all<T>(calls: Vec<SinkFuture<T>>) -> Result<Vec<T>, SinkError> {
    join_all(calls).await.into_iter().collect()
}

impl Sink for Fanout {
    fn name(&self) -> &str {
        &self.name
    }

    fn needs_body(&self) -> bool {
        self.sinks.iter().any(|s| s.needs_body())
    }

    fn submit(&self, records: Arc<[Record]>) -> SinkFuture<Vec<Outcome>> {
        let calls: Vec<_> = self
            .sinks
            .iter()
            .map(|s| s.submit(records.clone()))
            .collect();
        Box::pin(async move {
            let results = all(calls).await?;
            let mut merged = vec![Outcome::Written; records.len()];
            for outcomes in results {
                for (m, o) in merged.iter_mut().zip(outcomes) {
                    // A rejection outweighs a duplicate, which outweighs a write.
                    match (&*m, o) {
                        (Outcome::Rejected(_), _) | (_, Outcome::Written) => {}
                        (_, o) => *m = o,
                    }
                }
            }
            Ok(merged)
        })
    }

    fn reopen(&self) -> SinkFuture<()> {
        let calls: Vec<_> = self.sinks.iter().map(|s| s.reopen()).collect();
        Box::pin(async move { all(calls).await.map(|_| ()) })
    }

    fn relay(&self, model_uuid: &str) -> Option<super::Relay> {
        self.sinks.iter().find_map(|s| s.relay(model_uuid))
    }

    fn health(&self) -> Vec<super::SinkHealth> {
        self.sinks.iter().flat_map(|s| s.health()).collect()
    }

    /// Closes every sink, also when one fails to.
    fn close(&self) -> SinkFuture<()> {
        let calls: Vec<_> = self.sinks.iter().map(|s| s.close()).collect();
        Box::pin(async move { all(calls).await.map(|_| ()) })
    }
}
