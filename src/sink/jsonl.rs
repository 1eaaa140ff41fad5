//! `jsonl`: the embedded default, the ledger directory.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{Outcome, Record, Sink, SinkError, SinkFuture};
use crate::ledger::{Ledger, LedgerConfig};
use crate::log::{Append, Appended, Log, LogError};

/// Writes entries to the `entries` log and batches to the `batches` log;
/// acks once durable per the fsync policy; de-duplicates by entry id and
/// batch uuid within the window.
pub struct JsonlSink {
    ledger: Arc<Ledger>,
}

impl JsonlSink {
    /// Opens (and recovers) the ledger directory. Blocking work runs off the
    /// async executor.
    pub async fn open(config: LedgerConfig) -> std::io::Result<JsonlSink> {
        let ledger = tokio::task::spawn_blocking(move || Ledger::open(&config))
            .await
            .map_err(std::io::Error::other)??;
        Ok(JsonlSink {
            ledger: Arc::new(ledger),
        })
    }

    /// A sink over a ledger that is already open (a spool's).
    pub fn from_ledger(ledger: Arc<Ledger>) -> JsonlSink {
        JsonlSink { ledger }
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }
}

impl Sink for JsonlSink {
    fn name(&self) -> &str {
        "jsonl"
    }

    /// Writes lines only.
    fn needs_body(&self) -> bool {
        false
    }

    fn submit(&self, records: Arc<[Record]>) -> SinkFuture<Vec<Outcome>> {
        let (entries, batches): (Vec<usize>, Vec<usize>) =
            (0..records.len()).partition(|&i| records[i].is_entry());
        // Queue both now, so the files keep the order of the calls.
        let mut waits = Vec::with_capacity(2);
        for (log, select) in [
            (&self.ledger.entries, entries),
            (&self.ledger.batches, batches),
        ] {
            if !select.is_empty() {
                waits.push(queue(log, records.clone(), select));
            }
        }
        let len = records.len();
        Box::pin(async move {
            // Held until the writer has replied (it drops its reference
            // first), so that the records are freed on this task's thread.
            let _records = records;
            let mut merged = vec![Outcome::Written; len];
            for wait in waits {
                let (select, done) = wait?;
                let outcomes = done
                    .await
                    .map_err(|_| SinkError::Unavailable("ledger writer stopped".into()))?
                    .map_err(unavailable)?;
                for (i, o) in select.into_iter().zip(outcomes) {
                    merged[i] = match o {
                        Appended::Written(_) => Outcome::Written,
                        Appended::Duplicate => Outcome::Duplicate,
                    };
                }
            }
            Ok(merged)
        })
    }

    /// SIGHUP: seals both active files now (meterd rotates its own files;
    /// this is for an operator who wants a segment boundary, e.g. before a
    /// backup).
    fn reopen(&self) -> SinkFuture<()> {
        let ledger = self.ledger.clone();
        Box::pin(async move {
            let (a, b) = tokio::join!(ledger.entries.seal(), ledger.batches.seal());
            a.and(b).map_err(unavailable)
        })
    }

    fn health(&self) -> Vec<super::SinkHealth> {
        ledger_health("jsonl", &self.ledger)
    }

    fn close(&self) -> SinkFuture<()> {
        let ledger = self.ledger.clone();
        Box::pin(async move {
            let (a, b) = tokio::join!(ledger.entries.close(), ledger.batches.close());
            a.and(b).map_err(unavailable)
        })
    }
}

type Reply = oneshot::Receiver<Result<Vec<Appended>, LogError>>;

/// Queues the selected records; returns the selection (for merging) and the
/// reply to wait for.
fn queue(
    log: &Log<Record>,
    records: Arc<[Record]>,
    select: Vec<usize>,
) -> Result<(Vec<usize>, Reply), SinkError> {
    let (reply, done) = oneshot::channel();
    log.append(Append {
        records,
        select: select.clone(),
        reply,
    })
    .map_err(unavailable)?;
    Ok((select, done))
}

fn unavailable(e: LogError) -> SinkError {
    SinkError::Unavailable(e.0)
}

/// The health of a ledger's two streams, named `NAME entries`, `NAME batches`.
pub(crate) fn ledger_health(name: &str, ledger: &Ledger) -> Vec<super::SinkHealth> {
    [("entries", &ledger.entries), ("batches", &ledger.batches)]
        .into_iter()
        .map(|(stream, log)| super::SinkHealth {
            name: format!("{name} {stream}"),
            healthy: log.health(),
        })
        .collect()
}
