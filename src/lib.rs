//! meterd: a gRPC metering service. Hypervisor hosts and other services
//! record billable lifecycle entries and Juju-style metric batches; meterd
//! validates them, makes them durable and writes them to an append-only,
//! Go-compatible JSONL ledger (or another sink).
//!
//! # Layout
//! - [`addr`]: endpoint addresses (`HOST:PORT`, `unix:/path`), used by the server and the client commands.
//! - [`pb`]: generated protobuf types of `proto/metering/v1` and the descriptor set.
//! - [`record`]: the domain `Entry` / `MetricBatch` and the one place input is validated.
//! - [`wire`]: the Go-compatible JSON encoding, written once.
//! - [`server`]: the tonic services (`MeteringService` for writers, `server/ledger/` the
//!   `LedgerService` for readers), health, reflection, listeners; `server/status.rs` maps
//!   errors to gRPC codes; `server/auth.rs` keeps writer and reader tokens apart;
//!   `server/authority.rs` decides which `:authority` each listener accepts; `server/budget.rs`
//!   bounds the bytes of records waiting for the sinks (`--max-queue-bytes`).
//! - [`sink`]: the `Sink` contract, one module per sink (`forward` with its
//!   upstreams `grpc`, `http`, `nats`), and `sink/spec.rs` (`--sink` specs and
//!   the factory); `sink/fanout.rs` says what a partial failure means; `sink/deliver.rs`
//!   pipelines spooled windows to an upstream, `sink/verdict.rs` says what
//!   every upstream answer means for the records.
//! - [`spool`]: the durable spool under forwarding sinks: cursors, windows,
//!   dead-letter and quarantine files.
//! - [`ledger`]: the append-only files: group commit, crash recovery, dedupe index.
//! - [`usage`]: the pure engine of `LedgerService.Usage`: pairs lifecycle
//!   entries into intervals and cuts them into exact, DST-aware calendar buckets.
//! - [`read`]: what readers get from the log: `Tail` responses and `Usage`
//!   answers, with the per-segment usage checkpoints of the fast path.
//! - [`cli`]: the `meterd` command line, one file per subcommand.

pub mod addr;
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
