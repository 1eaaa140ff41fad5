//! `nop`: accepts and discards every record (benchmarks, dry runs).

use std::sync::Arc;

use super::{all_written, Outcome, Record, Sink, SinkFuture};

/// Discards every record; always succeeds.
#[derive(Debug, Default)]
pub struct NopSink;

impl Sink for NopSink {
    fn name(&self) -> &str {
        "nop"
    }

    /// Writes lines only.
    fn needs_body(&self) -> bool {
        false
    }

    fn submit(&self, records: Arc<[Record]>) -> SinkFuture<Vec<Outcome>> {
        let outcomes = all_written(&records);
        Box::pin(async move { Ok(outcomes) })
    }
}
