//! Prometheus metrics, kept in one registry and served as text on
//! `--metrics-listen` at `/metrics`. Forwarding sinks add their backlog
//! figures here too, so every operational number has one home.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

mod fields;

pub use fields::field_label;

/// A finished RPC.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub rpc: &'static str,
    pub code: &'static str,
}

/// An accepted record: `type` is entry or batch; kind and reason are the
/// entry's (empty for batches).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecordLabels {
    pub r#type: &'static str,
    pub kind: &'static str,
    pub reason: &'static str,
}

/// A rejected record and the field whose rule it broke (see [`field_label`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub r#type: &'static str,
    pub field: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabels {
    pub file: &'static str,
}

/// One stream (entries or batches) of one forwarding sink.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardLabels {
    pub sink: String,
    pub stream: &'static str,
}

/// One sink.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: String,
}

/// Every metric meterd exports. Safe for concurrent use.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RpcLabels, Counter>,
    pub accepted: Family<RecordLabels, Counter>,
    pub rejected: Family<RejectLabels, Counter>,
    pub duplicates: Family<TypeLabels, Counter>,
    pub ledger_bytes: Family<FileLabels, Counter>,
    pub sync_seconds: Histogram,
    pub seal_seconds: Histogram,
    pub damaged_records: Family<FileLabels, Counter>,
    pub group_records: Histogram,
    pub in_flight: Gauge,
    pub queue_bytes: Gauge,
    pub in_flight_bytes: Gauge,
    pub connections_open: Gauge,
    pub connections_refused: Counter,
    pub connections_handshake_timed_out: Counter,
    pub connections_idle_closed: Counter,
    pub in_flight_refused: Counter,
    pub backlog_records: Family<ForwardLabels, Gauge>,
    pub backlog_bytes: Family<ForwardLabels, Gauge>,
    pub oldest_pending_seconds: Family<ForwardLabels, Gauge>,
    pub delivered: Family<ForwardLabels, Counter>,
    pub retries: Family<ForwardLabels, Counter>,
    pub dead_lettered: Family<ForwardLabels, Counter>,
    pub quarantined: Family<ForwardLabels, Counter>,
    pub collector_status: Family<SinkLabels, Gauge>,
    pub sink_healthy: Family<SinkLabels, Gauge>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("meterd");
        let m = Metrics::unregistered();
        m.register_records(&mut registry);
        m.register_ledger(&mut registry);
        m.register_limits(&mut registry);
        m.register_forward(&mut registry);
        Metrics { registry, ..m }
    }

    /// Every metric, new and in no registry yet.
    fn unregistered() -> Self {
        Metrics {
            requests: Family::default(),
            accepted: Family::default(),
            rejected: Family::default(),
            duplicates: Family::default(),
            ledger_bytes: Family::default(),
            // 50 µs .. ~1.6 s
            sync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            // 1 ms .. ~33 s
            seal_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            damaged_records: Family::default(),
            // 1 .. 4096 records per group commit
            group_records: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            in_flight: Gauge::default(),
            queue_bytes: Gauge::default(),
            in_flight_bytes: Gauge::default(),
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
            connections_handshake_timed_out: Counter::default(),
            connections_idle_closed: Counter::default(),
            in_flight_refused: Counter::default(),
            backlog_records: Family::default(),
            backlog_bytes: Family::default(),
            oldest_pending_seconds: Family::default(),
            delivered: Family::default(),
            retries: Family::default(),
            dead_lettered: Family::default(),
            quarantined: Family::default(),
            collector_status: Family::default(),
            sink_healthy: Family::default(),
            registry: Registry::default(),
        }
    }

    /// Registers the RPC and record counters (and sink health).
    fn register_records(&self, registry: &mut Registry) {
        registry.register(
            "sink_healthy",
            "1 while a sink takes writes, 0 while it fails (probed every second)",
            self.sink_healthy.clone(),
        );
        registry.register(
            "requests",
            "Finished RPCs by method and gRPC status code",
            self.requests.clone(),
        );
        registry.register(
            "records_accepted",
            "Records accepted by type, kind and reason",
            self.accepted.clone(),
        );
        registry.register(
            "records_rejected",
            "Records rejected by type and the field that broke a rule",
            self.rejected.clone(),
        );
        registry.register(
            "duplicates_skipped",
            "Records already in the ledger, acknowledged again and not rewritten",
            self.duplicates.clone(),
        );
    }

    /// Registers the ledger metrics.
    fn register_ledger(&self, registry: &mut Registry) {
        registry.register(
            "ledger_written_bytes",
            "Bytes appended to the ledger by file",
            self.ledger_bytes.clone(),
        );
        registry.register(
            "ledger_sync_seconds",
            "Time spent in one ledger fdatasync",
            self.sync_seconds.clone(),
        );
        registry.register(
            "ledger_seal_seconds",
            "Time to seal the active file into a segment (index, seal, renames)",
            self.seal_seconds.clone(),
        );
        registry.register(
            "ledger_damaged_records",
            "Records found damaged on disk (they do not match the checksum written with them), by stream file; readers get DATA_LOSS for them",
            self.damaged_records.clone(),
        );
        registry.register(
            "ledger_group_commit_records",
            "Records written and synced together in one group commit",
            self.group_records.clone(),
        );
    }

    /// Registers the in-flight, queue and connection metrics.
    fn register_limits(&self, registry: &mut Registry) {
        registry.register(
            "in_flight_requests",
            "Calls and streams being served now",
            self.in_flight.clone(),
        );
        registry.register(
            "queue_bytes",
            "Bytes of records handed to the sinks and not yet written (bounded by --max-queue-bytes)",
            self.queue_bytes.clone(),
        );
        registry.register(
            "in_flight_bytes",
            "Bytes of SubmitBatch/EmitBatch messages read and not yet queued (bounded by --max-in-flight-bytes)",
            self.in_flight_bytes.clone(),
        );
        registry.register(
            "connections_open",
            "Client connections open now, over every listener (bounded by --max-connections)",
            self.connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at accept because --max-connections were open",
            self.connections_refused.clone(),
        );
        registry.register(
            "connections_handshake_timed_out",
            "Connections closed for not sending the HTTP/2 preface within --handshake-timeout",
            self.connections_handshake_timed_out.clone(),
        );
        registry.register(
            "connections_idle_closed",
            "Connections closed after --idle-timeout without a call",
            self.connections_idle_closed.clone(),
        );
        registry.register(
            "in_flight_refused",
            "Request messages refused for want of room in --max-in-flight-bytes, or arriving slower than --message-read-timeout",
            self.in_flight_refused.clone(),
        );
    }

    /// Registers the forwarding sinks' metrics.
    fn register_forward(&self, registry: &mut Registry) {
        registry.register(
            "forward_backlog_records",
            "Records in a forwarding sink's spool not yet acknowledged upstream",
            self.backlog_records.clone(),
        );
        registry.register(
            "forward_backlog_bytes",
            "Bytes in a forwarding sink's spool not yet acknowledged upstream",
            self.backlog_bytes.clone(),
        );
        registry.register(
            "forward_oldest_pending_seconds",
            "Age (by its own time) of the oldest record waiting in a spool; 0 when caught up",
            self.oldest_pending_seconds.clone(),
        );
        registry.register(
            "forward_delivered",
            "Records acknowledged by the upstream",
            self.delivered.clone(),
        );
        registry.register(
            "forward_retries",
            "Delivery attempts that failed and will be retried",
            self.retries.clone(),
        );
        registry.register(
            "forward_dead_lettered",
            "Records the upstream rejected for good, moved to dead-letter.jsonl",
            self.dead_lettered.clone(),
        );
        registry.register(
            "forward_quarantined",
            "Unreadable spool records moved to quarantine.jsonl",
            self.quarantined.clone(),
        );
        registry.register(
            "forward_collector_status",
            "Meter status of an http (Juju collector) sink: 0 GREEN, 1 AMBER (3 failed sends), 2 RED (grace period exceeded)",
            self.collector_status.clone(),
        );
    }

    /// The registry in the Prometheus/OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The gRPC code's name as Prometheus label, e.g. `OK`, `INVALID_ARGUMENT`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Serves `/metrics` over HTTP on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::header::CONTENT_TYPE;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                metrics().encode(),
            )
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
