//! The one place where errors become gRPC statuses.

use std::time::Duration;

use tonic::Status;

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

/// A call without a valid bearer token; `why` never holds the token.
pub(crate) fn unauthenticated(why: &str) -> Status {
    Status::unauthenticated(why)
}
