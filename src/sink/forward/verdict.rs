//! What an upstream's answer means for the records it was about, decided in
//! one place for every upstream: gRPC statuses (another meterd) and HTTP
//! statuses (a Juju collector) map to a [`Failure`] class, and the forwarder
//! acts on the class alone.
//!
//! The rule behind the table: only an answer about one record may move that
//! record to the dead-letter file. An answer about the request (too many
//! records, too many bytes) splits it; an answer about the upstream
//! (overloaded, down, misconfigured credentials or URL) waits and retries.

use tonic::Code;

/// The upstream's answer for one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Recorded upstream.
    Acked,
    /// The upstream already had it.
    Duplicate,
    /// Refused for good (invalid there); never re-sent.
    Rejected(String),
    /// Not acknowledged this time; send again later.
    Retry,
}

/// Why a whole call failed, as far as the records in it are concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// More records than the upstream takes per request. Split the request
    /// (into requests of `max` records when the upstream said how many);
    /// never a verdict on a record.
    Limit { max: Option<usize> },
    /// More bytes than the upstream takes per request. Split; a single
    /// record that is still too big can never be delivered there, so it is
    /// dead-lettered (as NATS does beyond `max_payload`).
    TooBig,
    /// The upstream refused the request's content for good, without saying
    /// which record. A request of one record is dead-lettered with the
    /// reason; a larger one is split until the refused record is alone.
    Refused(String),
    /// The upstream is overloaded: back off, then retry.
    Busy,
    /// Unreachable, timed out, failing, or refusing the credentials or the
    /// URL: nothing is known about the records; back off and retry.
    Transient,
}

/// A failed upstream call: its class and what to log.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct UpstreamError {
    pub class: Failure,
    pub message: String,
}

impl UpstreamError {
    /// A failure that says nothing about the records: retried.
    pub fn transient(message: impl Into<String>) -> Self {
        UpstreamError {
            class: Failure::Transient,
            message: message.into(),
        }
    }

    /// A failed gRPC call; `request_field` names the repeated field of the
    /// request (`entries`, `batches`), which a limit answer names.
    pub fn grpc(status: &tonic::Status, request_field: &str) -> Self {
        UpstreamError {
            class: grpc_status(status.code(), status.message(), request_field),
            message: format!("{:?}: {}", status.code(), status.message()),
        }
    }
}

/// The class of a gRPC status other than OK.
pub fn grpc_status(code: Code, message: &str, request_field: &str) -> Failure {
    match code {
        // meterd's request-level limit: "entries: 5 entries exceed the limit of 2 ...".
        Code::InvalidArgument => match request_limit(message, request_field) {
            Some(limit) => limit,
            None => Failure::Refused(message.to_owned()),
        },
        // tonic's decoder refusing a message over --max-message-bytes.
        Code::OutOfRange => Failure::TooBig,
        // grpc-go says "received message larger than max" with this code.
        Code::ResourceExhausted if is_size_message(message) => Failure::TooBig,
        Code::ResourceExhausted => Failure::Busy,
        // UNAUTHENTICATED and PERMISSION_DENIED are about the credentials,
        // UNIMPLEMENTED about the upstream's version: none is about a record.
        _ => Failure::Transient,
    }
}

/// A per-record rejection that is really about the request: SubmitBatch
/// reports its batches limit by rejecting every batch of the request with
/// a reason naming `batches` itself (a record's own field is named within
/// it, e.g. `metrics[2].key`).
pub fn rejection(reason: &str, request_field: &str) -> Option<Failure> {
    request_limit(reason, request_field)
}

/// The class of an HTTP status that is not a success.
pub fn http_status(status: u16, reason: &str) -> Failure {
    match status {
        413 => Failure::TooBig,
        429 => Failure::Busy,
        // Credentials, a wrong URL or method, a timeout: about the setup or
        // the moment, never about the records; dead-lettering everything
        // because of a typo in a URL would be the wrong answer.
        401 | 403 | 404 | 405 | 407 | 408 => Failure::Transient,
        400..=499 => Failure::Refused(reason.to_owned()),
        _ => Failure::Transient,
    }
}

/// `FIELD: ... limit of N ...` as a limit on records per request.
fn request_limit(message: &str, request_field: &str) -> Option<Failure> {
    let rest = message.strip_prefix(request_field)?.strip_prefix(':')?;
    let max = rest
        .split_once("limit of ")
        .and_then(|(_, n)| n.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok());
    Some(Failure::Limit { max })
}

fn is_size_message(message: &str) -> bool {
    message.contains("larger than max") || message.contains("message length too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_statuses() {
        let refused = |m: &str| Failure::Refused(m.to_owned());
        let table: &[(Code, &str, &str, Failure)] = &[
            (
                Code::InvalidArgument,
                "entries: 300 entries exceed the limit of 2 per request (--max-entries-per-request)",
                "entries",
                Failure::Limit { max: Some(2) },
            ),
            (
                Code::InvalidArgument,
                "entries: too many",
                "entries",
                Failure::Limit { max: None },
            ),
            // A record's field, not the request's: a refusal.
            (
                Code::InvalidArgument,
                "entry.vm_id: must be set",
                "entries",
                refused("entry.vm_id: must be set"),
            ),
            (
                Code::InvalidArgument,
                "entries[3].kind: unknown",
                "entries",
                refused("entries[3].kind: unknown"),
            ),
            (
                Code::OutOfRange,
                "Error, decoded message length too large: found 5000 bytes, the limit is: 4096 bytes",
                "entries",
                Failure::TooBig,
            ),
            (
                Code::ResourceExhausted,
                "grpc: received message larger than max (5000 vs. 4096)",
                "entries",
                Failure::TooBig,
            ),
            (
                Code::ResourceExhausted,
                "server busy: 1024 calls in flight (--max-in-flight); retry with backoff",
                "entries",
                Failure::Busy,
            ),
            (
                Code::ResourceExhausted,
                "spool full",
                "batches",
                Failure::Busy,
            ),
            (Code::Unavailable, "", "entries", Failure::Transient),
            (Code::DeadlineExceeded, "", "entries", Failure::Transient),
            (Code::Unauthenticated, "", "entries", Failure::Transient),
            (Code::PermissionDenied, "", "entries", Failure::Transient),
            (Code::Unimplemented, "", "entries", Failure::Transient),
            (Code::Internal, "", "entries", Failure::Transient),
            (Code::Unknown, "", "entries", Failure::Transient),
        ];
        for (code, message, field, want) in table {
            assert_eq!(
                grpc_status(*code, message, field),
                *want,
                "{code:?} {message:?}"
            );
        }
    }

    #[test]
    fn rejections_naming_the_request_are_limits() {
        let table: &[(&str, Option<Failure>)] = &[
            (
                "batches: 5 batches exceed the limit of 2 per request",
                Some(Failure::Limit { max: Some(2) }),
            ),
            ("metrics[2].key: must not be empty", None),
            ("uuid: must not be empty", None),
            ("batches_x: nonsense", None),
        ];
        for (reason, want) in table {
            assert_eq!(rejection(reason, "batches"), *want, "{reason:?}");
        }
    }

    #[test]
    fn http_statuses() {
        let refused = Failure::Refused("bad".into());
        let table: &[(u16, Failure)] = &[
            (413, Failure::TooBig),
            (429, Failure::Busy),
            (400, refused.clone()),
            (409, refused.clone()),
            (415, refused.clone()),
            (422, refused),
            (401, Failure::Transient),
            (403, Failure::Transient),
            (404, Failure::Transient),
            (405, Failure::Transient),
            (408, Failure::Transient),
            (500, Failure::Transient),
            (502, Failure::Transient),
            (503, Failure::Transient),
            (504, Failure::Transient),
            (302, Failure::Transient),
        ];
        for (status, want) in table {
            assert_eq!(http_status(*status, "bad"), *want, "{status}");
        }
    }
}
