//! `capture`: keeps records in memory, for tests. Unbounded; never use it in production.

use std::sync::{Arc, Mutex, PoisonError};

use super::{all_written, Outcome, Record, Sink, SinkFuture};

/// Keeps every record it is given; clones share the same store.
#[derive(Clone, Debug, Default)]
pub struct CaptureSink {
    records: Arc<Mutex<Vec<Arc<[Record]>>>>,
}

impl CaptureSink {
    pub fn new() -> Self {
        Self::default()
    }

    /// The JSONL lines captured so far, in arrival order. Returns a copy.
    pub fn lines(&self) -> Vec<Vec<u8>> {
        let groups = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        groups
            .iter()
            .flat_map(|g| g.iter().map(|r| r.line.clone()))
            .collect()
    }

    /// Forgets everything captured so far.
    pub fn reset(&self) {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl Sink for CaptureSink {
    fn name(&self) -> &str {
        "capture"
    }

    fn submit(&self, records: Arc<[Record]>) -> SinkFuture<Vec<Outcome>> {
        let outcomes = all_written(&records);
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(records);
        Box::pin(async move { Ok(outcomes) })
    }
}
