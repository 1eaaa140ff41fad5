//! The one place where errors become gRPC statuses.

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
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::Invalid(i) => Status::invalid_argument(i.to_string()),
            Error::Rejected(m) => Status::invalid_argument(m),
            Error::Sink(SinkError::Unavailable(m)) => Status::unavailable(m),
            Error::Sink(SinkError::Exhausted(m)) => Status::resource_exhausted(m),
        }
    }
}
