//! `stderr`: writes each record's JSONL line to standard error.

use std::io::Write as _;
use std::sync::Arc;

use super::{all_written, Outcome, Record, Sink, SinkError, SinkFuture};

/// Writes JSONL lines to stderr. Not durable: acknowledged once written.
#[derive(Debug, Default)]
pub struct StderrSink;

impl Sink for StderrSink {
    fn name(&self) -> &str {
        "stderr"
    }

    fn submit(&self, records: Arc<[Record]>) -> SinkFuture<Vec<Outcome>> {
        // stderr is a blocking handle; keep it off the async workers. One
        // write per group keeps lines of concurrent callers whole.
        let write = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(records.iter().map(|r| r.line.len()).sum());
            for r in records.iter() {
                buf.extend_from_slice(&r.line);
            }
            std::io::stderr()
                .lock()
                .write_all(&buf)
                .map_err(|e| SinkError::Unavailable(format!("stderr: {e}")))?;
            Ok(all_written(&records))
        });
        Box::pin(async move {
            write
                .await
                .map_err(|e| SinkError::Unavailable(format!("stderr: {e}")))?
        })
    }
}
