//! The one place where errors become gRPC statuses.

use std::time::Duration;

use tonic::Status;

use crate::log::SeekError;
use crate::read::usage::AnswerError;
use crate::read::ReadError;
use crate::record::Invalid;
use crate::sink::SinkError;

/// Everything a MeteringService call can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// Bad input; nothing was written.
    #[error("{0}")]
    Invalid(#[from] Invalid),
    /// A pass-through upstream refused the record for good.
    #[error("{0}")]
    Rejected(String),
    /// A sink could not take the records; nothing counts as written.
    #[error("{0}")]
    Sink(#[from] SinkError),
    /// The sink answered for fewer records than it was given: nothing is
    /// reported as recorded without the sink's word for it.
    #[error("the sink answered for {answered} of {of} records")]
    Incomplete { answered: usize, of: usize },
    /// `--max-in-flight` calls are being served.
    #[error("server busy: {max_in_flight} calls in flight (--max-in-flight); retry with backoff")]
    Busy { max_in_flight: usize },
    /// No room in `--max-queue-bytes` came free within the wait.
    #[error(
        "queue full: records waiting to be written reached --max-queue-bytes ({limit} bytes) and no room came free within {}; retry with backoff",
        humantime::format_duration(*waited)
    )]
    QueueFull { limit: u64, waited: Duration },
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let message = e.to_string();
        match e {
            Error::Invalid(_) | Error::Rejected(_) => Status::invalid_argument(message),
            Error::Sink(SinkError::Unavailable(_)) | Error::Incomplete { .. } => {
                Status::unavailable(message)
            }
            Error::Sink(SinkError::Exhausted(_)) | Error::Busy { .. } | Error::QueueFull { .. } => {
                Status::resource_exhausted(message)
            }
        }
    }
}

/// A call refused by the token check: `UNAUTHENTICATED` or
/// `PERMISSION_DENIED`; `why` never holds the token.
pub(crate) fn refused(code: tonic::Code, why: &str) -> Status {
    Status::new(code, why)
}

// === LedgerService ===

/// Bad input to a LedgerService call.
pub(crate) fn invalid(i: Invalid) -> Status {
    Status::invalid_argument(i.to_string())
}

/// A server whose sinks keep no ledger has nothing to read.
pub(crate) fn no_ledger() -> Status {
    Status::failed_precondition(
        "this meterd keeps no ledger (no jsonl sink), so metering.v1.LedgerService has nothing to read",
    )
}

/// Where a `Tail` cannot start: retention removed what was asked for
/// (naming the first available position), or `after` is past the end.
pub(crate) fn tail_seek(e: SeekError) -> Status {
    match e {
        SeekError::Pruned { first } => pruned(first),
        SeekError::Beyond { after, end } => Status::invalid_argument(format!(
            "after: position {after} is beyond the end of the stream (last durable position {end})"
        )),
    }
}

fn pruned(first: u64) -> Status {
    Status::out_of_range(format!(
        "after: records up to position {} were removed by retention; the first available position is {first} (resume with after = {})",
        first.saturating_sub(1),
        first.saturating_sub(1)
    ))
}

/// A `Tail` that failed while reading.
pub(crate) fn tail_read(e: ReadError) -> Status {
    match e {
        ReadError::Pruned { first } => pruned(first),
        ReadError::Beyond { after, end } => tail_seek(SeekError::Beyond { after, end }),
        ReadError::Damaged { .. } | ReadError::DataLoss(_) => Status::data_loss(e.to_string()),
        ReadError::Io(_) => Status::unavailable(e.to_string()),
    }
}

/// A following `Tail` at shutdown: the client resumes elsewhere or later.
pub(crate) fn shutting_down(position: u64) -> Status {
    Status::unavailable(format!(
        "server shutting down; resume with after = {position}"
    ))
}

/// A `Usage` query that failed while reading.
/// `--max-usage-calls` Usage calls were running and none ended within the wait.
pub(crate) fn usage_busy(max: usize, waited: Duration) -> Status {
    Status::resource_exhausted(format!(
        "usage calls busy: {max} running (--max-usage-calls) and none ended within {}; retry with backoff",
        humantime::format_duration(waited)
    ))
}

pub(crate) fn usage_read(e: ReadError) -> Status {
    match e {
        ReadError::Pruned { .. } => Status::aborted(format!(
            "{e} while the query read them (retention); ask again"
        )),
        ReadError::Beyond { .. } | ReadError::Io(_) => Status::unavailable(e.to_string()),
        ReadError::Damaged { .. } | ReadError::DataLoss(_) => Status::data_loss(e.to_string()),
    }
}

/// A `Usage` query with no answer.
pub(crate) fn usage(e: AnswerError) -> Status {
    match e {
        AnswerError::Invalid(i) => invalid(i),
        AnswerError::Read(r) => usage_read(r),
    }
}
