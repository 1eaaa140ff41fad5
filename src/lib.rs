//! meterd: a gRPC metering service. Hypervisor hosts and other services
//! record billable lifecycle entries and Juju-style metric batches; meterd
//! validates them, makes them durable and writes them to an append-only,
//! Go-compatible JSONL ledger (or another sink).
//!
//! # Layout
//! From the bottom up: each module imports only modules listed before it.
//! - [`pb`]: generated protobuf types of `proto/metering/v1` and the descriptor set.
//! - [`metrics`]: the Prometheus registry and its fixed label sets.
//! - [`addr`]: endpoint addresses (`HOST:PORT`, `unix:/path`), used by the server and the client commands.
//! - [`log`]: storage. The segmented, crash-safe log under every ledger and spool: group
//!   commit, recovery, the dedupe index, seals and their chain, `verify`. It knows records
//!   only as a key and a line, and goes through a narrow file layer (`log/disk.rs`) that the
//!   crash-state tests replace.
//! - [`record`]: the domain `Entry` / `MetricBatch` and the one place input is validated.
//! - [`wire`]: the Go-compatible JSON encoding, written once, and [`wire::Record`], a
//!   validated record with its line, encoded once at the edge for every sink.
//! - [`usage`]: the pure engine of `LedgerService.Usage`: pairs lifecycle
//!   entries into intervals and cuts them into exact, DST-aware calendar buckets.
//! - [`ledger`]: a JSONL ledger's two streams (entries, batches), each a log.
//! - [`read`]: what readers get from the log: `Tail` responses and `Usage`
//!   answers, with the per-segment usage checkpoints of the fast path.
//! - [`spool`]: the durable spool under forwarding sinks: cursors, windows,
//!   dead-letter and quarantine files.
//! - [`sink`]: the `Sink` contract (one screen, `sink/mod.rs`), one module per sink, and
//!   `sink/spec.rs` (`--sink` specs and the factory); `sink/fanout.rs` says what a partial
//!   failure means; `sink/forward/` holds everything that forwards upstream: the settings
//!   (`options.rs`) and the `Upstream` contract (`upstream.rs`) at its bottom, the upstreams
//!   `grpc`, `http`, `nats`, `deliver.rs` pipelining spooled windows to one, `verdict.rs`
//!   saying what every upstream answer means for the records.
//! - [`server`]: the tonic services (`MeteringService` for writers, `server/ledger/` the
//!   `LedgerService` for readers), health, reflection, listeners (`server/run.rs` wires
//!   them); `server/status.rs` maps errors to gRPC codes; `server/auth.rs` keeps writer and
//!   reader tokens apart; `server/authority.rs` decides which `:authority` each listener
//!   accepts; `server/budget.rs` bounds the bytes of records waiting for the sinks
//!   (`--max-queue-bytes`).
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
