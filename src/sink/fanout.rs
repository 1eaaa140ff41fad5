//! Fan-out: a record is acknowledged once every sink has it.

use std::sync::Arc;

use futures_util::future::try_join_all;

use super::{Outcome, Record, Sink, SinkFuture};

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

impl Sink for Fanout {
    fn name(&self) -> &str {
        &self.name
    }

    fn submit(&self, records: Arc<[Record]>) -> SinkFuture<Vec<Outcome>> {
        let calls: Vec<_> = self
            .sinks
            .iter()
            .map(|s| s.submit(records.clone()))
            .collect();
        Box::pin(async move {
            let results = try_join_all(calls).await?;
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
        Box::pin(async move { try_join_all(calls).await.map(|_| ()) })
    }

    fn relay(&self, model_uuid: &str) -> Option<super::Relay> {
        self.sinks.iter().find_map(|s| s.relay(model_uuid))
    }

    /// The first sink's ledger that has one.
    fn ledger(&self) -> Option<Arc<crate::ledger::Ledger>> {
        self.sinks.iter().find_map(|s| s.ledger())
    }

    fn close(&self) -> SinkFuture<()> {
        let calls: Vec<_> = self.sinks.iter().map(|s| s.close()).collect();
        Box::pin(async move { try_join_all(calls).await.map(|_| ()) })
    }
}
