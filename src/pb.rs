//! Generated protobuf and gRPC types for `metering.v1` (`metering.proto` and
//! `ledger.proto`), and the descriptor set that server reflection serves.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("metering.v1");

/// Encoded `FileDescriptorSet` of `proto/`, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("metering_descriptor");
