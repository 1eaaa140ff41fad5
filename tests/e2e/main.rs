//! End-to-end tests of meterd: real servers, real clients, real files.

mod bounds;
mod chain;
mod cli;
mod common;
mod crash;
mod durability;
mod emit;
mod emit_batch;
mod faults;
mod forward;
mod grpcurl;
mod http;
mod ledger;
mod nats;
mod ops;
mod passthrough;
mod polyglot;
mod python;
mod readers;
mod security;
mod sinks;
mod submit_batch;
mod tail;
mod unixsock;
mod usage;
mod wire;
