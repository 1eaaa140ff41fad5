//! Generated protobuf and gRPC types for `metering.v1` (`metering.proto` and
//! `ledger.proto`), and the descriptor set that server reflection serves.
//!
//! Two things here are ours, not generated: the codec every generated
//! service and client uses ([`codec`]: a request that cannot be decoded is
//! the client's mistake, `INVALID_ARGUMENT`), and the two batch requests
//! ([`lenient`]: one undecodable entry or batch is rejected on its own, its
//! neighbours are served).

pub mod codec;
pub mod lenient;

pub use lenient::{EmitBatchRequest, SubmitBatchRequest, Undecodable};

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod generated {
    // The lenient requests are extern paths in build.rs: the generated
    // services and clients use them in place of generated structs.
    tonic::include_proto!("metering.v1");
}
pub use generated::*;

/// Encoded `FileDescriptorSet` of `proto/`, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("metering_descriptor");
