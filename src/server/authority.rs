//! Which `:authority` values a listener accepts.
//!
//! gRPC clients on a Unix socket send the socket path as `:authority`
//! (grpcurl 1.8, grpc-java: `/run/meterd/meterd.sock`) or its %-encoding
//! (grpcio: `run%2Fmeterd%2Fmeterd.sock`), which is not a valid `host[:port]`.
//! Stock h2 resets such streams with `PROTOCOL_ERROR`. Our patched h2
//! (`vendor/h2/NOTE.md`) instead leaves the value out of the URI and marks
//! the request with `h2::ext::MalformedAuthority`, because h2 cannot tell a
//! Unix socket from TCP; this layer makes the per-listener decision:
//!
//! - **Unix socket**: accepted. meterd does not route on the authority, and
//!   the socket's file mode is its access control, so the value is ignored
//!   whatever it is (paths, %-encoded paths, relative ones alike).
//! - **TCP** (plaintext or TLS): refused, as stock h2 did, with
//!   `RST_STREAM(PROTOCOL_ERROR)`: the error's source is an `h2::Error` with
//!   that reason, and hyper resets the stream with the reason it finds there.
//!   It is not a `tonic::Status`, so tonic passes it on instead of turning it
//!   into a gRPC answer.
//!
//! Why patch h2 rather than rewrite `:authority` before h2 reads it: the value
//! sits in an HPACK-compressed header block, often as an index into the
//! connection's dynamic table, so rewriting it means decoding and re-encoding
//! every header block of the connection in a frame-level proxy, a much larger
//! piece of code in the data path than the small patch of h2.

use std::fmt;

use tower::filter::{FilterLayer, Predicate};
use tower::BoxError;

/// The `tower` layer for one listener (see the module documentation).
pub(super) fn layer(unix_socket: bool) -> FilterLayer<Policy> {
    FilterLayer::new(Policy {
        strict: !unix_socket,
    })
}

/// Refuses requests marked `MalformedAuthority` when `strict`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Policy {
    strict: bool,
}

impl<B> Predicate<http::Request<B>> for Policy {
    type Request = http::Request<B>;

    fn check(&mut self, request: http::Request<B>) -> Result<Self::Request, BoxError> {
        if self.strict
            && request
                .extensions()
                .get::<h2::ext::MalformedAuthority>()
                .is_some()
        {
            return Err(Box::new(Refused {
                reset: h2::Error::from(h2::Reason::PROTOCOL_ERROR),
            }));
        }
        Ok(request)
    }
}

/// A request refused on a TCP listener because its `:authority` is not
/// `host[:port]`. Its source carries the HTTP/2 reset reason for hyper.
#[derive(Debug)]
struct Refused {
    reset: h2::Error,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The value itself is left out: it is the client's, and unbounded.
        f.write_str("malformed :authority (not host[:port]) on a TCP listener")
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.reset)
    }
}
