//! meterd: a gRPC metering service. Hypervisor hosts and other services
//! record billable lifecycle entries and Juju-style metric batches; meterd
//! validates them, makes them durable and writes them to an append-only,
//! Go-compatible JSONL ledger (or another sink).
//!
//! # Layout
//! - [`pb`]: generated protobuf types of `proto/metering/v1` and the descriptor set.
//! - [`record`]: the domain `Entry` / `MetricBatch` and the one place input is validated.
//! - [`wire`]: the Go-compatible JSON encoding, written once.
//! - [`server`]: the tonic services (`MeteringService` for writers, `server/ledger/` the
//!   `LedgerService` for readers), health, reflection, listeners; `server/status.rs` maps
//!   errors to gRPC codes; `server/auth.rs` keeps writer and reader tokens apart;
//!   `server/authority.rs` decides which `:authority` each listener accepts.
//! - [`sink`]: the `Sink` contract, one module per sink (`forward` with its
//!   upstreams `grpc`, `http`), and the factory.
//! - [`spool`]: the durable spool under forwarding sinks: cursors, windows,
//!   dead-letter and quarantine files.
//! - [`ledger`]: the append-only files: group commit, crash recovery, dedupe index.
//! - [`usage`]: the pure engine of `LedgerService.Usage`: pairs lifecycle
//!   entries into intervals and cuts them into exact, DST-aware calendar buckets.
//! - [`read`]: what readers get from the log: `Tail` responses and `Usage`
//!   answers, with the per-segment usage checkpoints of the fast path.
//! - [`cli`]: the `meterd` command line, one file per subcommand.

pub mod cli;
pub mod ledger;
pub mod log;
pub mod metrics;
pub mod pb;
pub mod read;
pub mod record;
pub mod server;
pub mod sink;
pub mod spool;
pub mod usage;
pub mod wire;
