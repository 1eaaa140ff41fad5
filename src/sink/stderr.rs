//! `stderr`: writes each record's JSONL line to standard error.
//!
//! One thread owns stderr for this sink: writes to it block (a pipe nobody
//! reads, a stalled journal), so they never run on the async workers, and
//! one queue in front of one writer keeps the lines in the order of the
//! calls, whole. The queue needs no bound of its own: what waits in it is
//! bounded by the server's `--max-queue-bytes`.

use std::io::Write as _;
use std::sync::mpsc;
use std::sync::{Arc, LazyLock};

use tokio::sync::oneshot;

use super::{all_written, Outcome, Record, Sink, SinkError, SinkFuture};

/// Writes JSONL lines to stderr. Not durable: acknowledged once written.
#[derive(Debug, Default)]
pub struct StderrSink;

/// Records to write, and who waits for the outcome.
type Job = (Arc<[Record]>, oneshot::Sender<Result<(), String>>);

/// The writer thread's queue; `None` when the thread could not be started.
static WRITER: LazyLock<Option<mpsc::Sender<Job>>> = LazyLock::new(|| {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("stderr-sink".into())
        .spawn(move || write_all(rx))
        .inspect_err(|e| tracing::error!(error = %e, "stderr sink: cannot start its writer thread"))
        .ok()
        .map(|_| tx)
});

/// The writer thread: everything queued so far goes out in one write, so
/// concurrent callers share a syscall and no line is split.
fn write_all(rx: mpsc::Receiver<Job>) {
    let mut buf = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        buf.clear();
        for (records, _) in &jobs {
            for r in records.iter() {
                buf.extend_from_slice(&r.line);
            }
        }
        let result = std::io::stderr()
            .lock()
            .write_all(&buf)
            .map_err(|e| format!("stderr: {e}"));
        for (_, reply) in jobs {
            // A failed send: the caller has gone.
            let _ = reply.send(result.clone());
        }
    }
}

impl Sink for StderrSink {
    fn name(&self) -> &str {
        "stderr"
    }

    /// Writes lines only.
    fn needs_body(&self) -> bool {
        false
    }

    fn submit(&self, records: Arc<[Record]>) -> SinkFuture<Vec<Outcome>> {
        let outcomes = all_written(&records);
        let (reply, done) = oneshot::channel();
        let queued = WRITER
            .as_ref()
            .is_some_and(|tx| tx.send((records, reply)).is_ok());
        Box::pin(async move {
            if !queued {
                return Err(SinkError::Unavailable("stderr: no writer thread".into()));
            }
            match done.await {
                Ok(Ok(())) => Ok(outcomes),
                Ok(Err(e)) => Err(SinkError::Unavailable(e)),
                Err(_) => Err(SinkError::Unavailable("stderr: writer thread ended".into())),
            }
        })
    }
}
