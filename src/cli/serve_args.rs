//! The flags of `meterd serve` and `meterd check-config` (`ServeArgs`),
//! and how `check-config` prints them back (durations, modes, addresses).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::{Serialize, Serializer};

use super::{parse_size, DEFAULT_LISTEN};
use crate::addr::ListenAddr;
use crate::ledger::Fsync;
use crate::record::Limits;
use crate::sink::forward::ForwardMode;
use crate::sink::{SinkSpec, SinkSpecs};

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServeArgs {
    /// TOML file with defaults for any of these flags (keys named as the flags, e.g. fsync = "always").
    #[arg(long, value_name = "FILE", env = "METERD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Where to listen: HOST:PORT or unix:/path. Repeat for several.
    #[arg(long = "listen", value_name = "ADDR", default_value = DEFAULT_LISTEN, env = "METERD_LISTEN", value_delimiter = ',')]
    #[serde(serialize_with = "display_all")]
    pub listen: Vec<ListenAddr>,
    /// Ledger directory [default: $STATE_DIRECTORY, else $XDG_STATE_HOME/meterd, else ~/.local/state/meterd].
    #[arg(long, value_name = "DIR", env = "METERD_LEDGER")]
    pub ledger: Option<PathBuf>,
    /// When writes reach the disk: always (synced before the ack), interval, never.
    #[arg(
        long,
        value_name = "POLICY",
        default_value = "always",
        env = "METERD_FSYNC"
    )]
    #[serde(serialize_with = "display")]
    pub fsync: Fsync,
    /// Sync period for --fsync interval.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration, env = "METERD_FSYNC_INTERVAL")]
    #[serde(serialize_with = "duration")]
    pub fsync_interval: Duration,
    /// Where accepted records go: jsonl, jsonl=DIR, grpc=HOST:PORT, grpc=http://HOST:PORT, grpc=https://HOST:PORT, grpc=unix:/path, http=URL, nats=URL[,URL...], stderr, nop, capture (tests). Repeat (or separate with commas) to fan out.
    #[arg(
        long = "sink",
        value_name = "SPEC",
        default_value = "jsonl",
        env = "METERD_SINK"
    )]
    #[serde(serialize_with = "display_all")]
    pub sink: Vec<SinkSpecs>,
    /// Forwarding sinks: ack once spooled locally (spool) or only once the upstream acks (pass-through).
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value = "spool",
        env = "METERD_FORWARD_MODE"
    )]
    pub forward_mode: ForwardMode,
    /// Where forwarding sinks keep their spools [default: LEDGER/spool].
    #[arg(long, value_name = "DIR", env = "METERD_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Per forwarding sink: above this many spooled bytes new records get RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size, env = "METERD_SPOOL_MAX_BYTES")]
    pub spool_max_bytes: i64,
    /// Longest wait between two delivery attempts (capped exponential backoff with jitter).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration, env = "METERD_FORWARD_RETRY_MAX")]
    #[serde(serialize_with = "duration")]
    pub forward_retry_max: Duration,
    /// Timeout of one upstream call (connect included).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration, env = "METERD_UPSTREAM_TIMEOUT")]
    #[serde(serialize_with = "duration")]
    pub upstream_timeout: Duration,
    /// Forwarding sinks: requests in flight at once per spool file; answers are applied in spool order. 1 keeps the upstream's order exactly the spool's.
    #[arg(long, value_name = "N", default_value_t = 4, env = "METERD_FORWARD_IN_FLIGHT", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub forward_in_flight: u32,
    /// grpc=https:// sinks: CA certificates (PEM) to trust beside the system and webpki roots (for an aggregator with a private CA).
    #[arg(long, value_name = "FILE", env = "METERD_GRPC_CA_FILE")]
    pub grpc_ca_file: Option<PathBuf>,
    /// File whose first line is the bearer token sent to a grpc upstream (or the NATS auth token).
    #[arg(long, value_name = "FILE", env = "METERD_UPSTREAM_TOKEN_FILE")]
    pub upstream_token_file: Option<PathBuf>,
    /// http sink: where entries are POSTed as NDJSON (without it the http sink takes only batches).
    #[arg(long, value_name = "URL", env = "METERD_HTTP_ENTRIES_URL")]
    pub http_entries_url: Option<String>,
    /// http sink: timeout of one POST to the collector, connect included.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration, env = "METERD_HTTP_TIMEOUT")]
    #[serde(serialize_with = "duration")]
    pub http_timeout: Duration,
    /// http sink: how long sends may fail before the meter status turns RED (the collector's new-grace-period replaces it).
    #[arg(long, value_name = "DURATION", default_value = "7days", value_parser = humantime::parse_duration, env = "METERD_HTTP_GRACE_PERIOD")]
    #[serde(serialize_with = "duration")]
    pub http_grace_period: Duration,
    /// nats sink: JetStream stream the records are published to.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "METERING",
        env = "METERD_NATS_STREAM"
    )]
    pub nats_stream: String,
    /// nats sink: get or create the stream (covering both subject templates) once NATS is reachable.
    #[arg(long, env = "METERD_NATS_CREATE_STREAM")]
    pub nats_create_stream: bool,
    /// nats sink: replicas of a stream created with --nats-create-stream (1 to 5; a cluster needs at least as many JetStream servers).
    #[arg(long, value_name = "N", default_value_t = 1, env = "METERD_NATS_REPLICAS", value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_replicas: u8,
    /// nats sink: duplicate window of a stream created with --nats-create-stream; re-sends (same Nats-Msg-Id) are dropped only within it, so it should cover the longest outage whose re-sends must be deduplicated (a longer window costs JetStream memory).
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = humantime::parse_duration, env = "METERD_NATS_DUPLICATE_WINDOW")]
    #[serde(serialize_with = "duration")]
    pub nats_duplicate_window: Duration,
    /// nats sink: subject of entries; {kind}, {vm_id} become subject-safe tokens ('.', '*', '>', whitespace replaced by '_').
    #[arg(
        long,
        value_name = "TEMPLATE",
        default_value = "metering.entries.{kind}",
        env = "METERD_NATS_ENTRIES_SUBJECT"
    )]
    pub nats_entries_subject: String,
    /// nats sink: subject of batches; {model_uuid}, {unit} become subject-safe tokens.
    #[arg(
        long,
        value_name = "TEMPLATE",
        default_value = "metering.batches.{model_uuid}",
        env = "METERD_NATS_BATCHES_SUBJECT"
    )]
    pub nats_batches_subject: String,
    /// How long an entry id or batch uuid is remembered, measured on when meterd received it (made it durable).
    #[arg(long, value_name = "DURATION", default_value = "7days", value_parser = humantime::parse_duration, env = "METERD_DEDUPE_WINDOW")]
    #[serde(serialize_with = "duration")]
    pub dedupe_window: Duration,
    /// Seal the active ledger file (entries.jsonl, batches.jsonl) into a read-only segment at this size.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size, env = "METERD_SEGMENT_MAX_BYTES")]
    pub segment_max_bytes: i64,
    /// Seal the active ledger file once its oldest record is this old.
    #[arg(long, value_name = "DURATION", default_value = "1day", value_parser = humantime::parse_duration, env = "METERD_SEGMENT_MAX_AGE")]
    #[serde(serialize_with = "duration")]
    pub segment_max_age: Duration,
    /// Delete sealed segments whose newest record was received longer ago than this (0s: keep forever; at least --dedupe-window).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration, env = "METERD_RETENTION")]
    #[serde(serialize_with = "duration")]
    pub retention: Duration,
    /// Delete the oldest sealed segments while a stream is larger than this (0: no limit); never a record inside --dedupe-window.
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = parse_size, env = "METERD_RETENTION_BYTES")]
    pub retention_bytes: i64,
    /// How far in the future a timestamp may lie before it is rejected.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration, env = "METERD_MAX_CLOCK_SKEW")]
    #[serde(serialize_with = "duration")]
    pub max_clock_skew: Duration,
    /// Largest request message, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 4 * 1024 * 1024, env = "METERD_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: usize,
    /// Most batches in one SubmitBatch request.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_batches_per_request, env = "METERD_MAX_BATCHES_PER_REQUEST")]
    pub max_batches_per_request: usize,
    /// Most entries in one EmitBatch request; more and the whole call gets INVALID_ARGUMENT naming entries.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_entries_per_request, env = "METERD_MAX_ENTRIES_PER_REQUEST")]
    pub max_entries_per_request: usize,
    /// Most metrics in one batch.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_metrics_per_batch, env = "METERD_MAX_METRICS_PER_BATCH")]
    pub max_metrics_per_batch: usize,
    /// Most labels on one metric.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_labels_per_metric, env = "METERD_MAX_LABELS_PER_METRIC")]
    pub max_labels_per_metric: usize,
    /// Longest id (vm_id, snapshot_id, id, uuid, model uuid), in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_id_len, env = "METERD_MAX_ID_LEN")]
    pub max_id_len: usize,
    /// Longest other string field, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_string_len, env = "METERD_MAX_STRING_LEN")]
    pub max_string_len: usize,
    /// Largest credential field of a batch, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_credential_bytes, env = "METERD_MAX_CREDENTIAL_BYTES")]
    pub max_credential_bytes: usize,
    /// Calls and open SubmitBatch streams served at once; beyond it new ones get RESOURCE_EXHAUSTED at once.
    #[arg(long, value_name = "N", default_value_t = 1024, env = "METERD_MAX_IN_FLIGHT", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Bytes of accepted records handed to the sinks and not yet written (1 to 4GiB); beyond it callers wait up to 5s (or most of their own deadline), then get RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size, env = "METERD_MAX_QUEUE_BYTES")]
    pub max_queue_bytes: i64,
    /// Bytes of SubmitBatch and EmitBatch request messages read from clients and not yet queued (1 to 4GiB); beyond it meterd stops reading (HTTP/2 flow control holds the client), and a message without room within 5s gets RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size, env = "METERD_MAX_IN_FLIGHT_BYTES")]
    pub max_in_flight_bytes: i64,
    /// A SubmitBatch or EmitBatch message must arrive whole within this time of its first bytes, else its call gets RESOURCE_EXHAUSTED (a sender that takes room and trickles).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration, env = "METERD_MESSAGE_READ_TIMEOUT")]
    #[serde(serialize_with = "duration")]
    pub message_read_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once.
    #[arg(long, value_name = "N", default_value_t = 256, env = "METERD_MAX_STREAMS_PER_CONNECTION", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,
    /// LedgerService.Usage calls computing at once (default: half the CPUs, at least 1, so that writers keep the rest); beyond it a call waits up to 2s (or most of its deadline), then gets RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "N", default_value_t = crate::server::default_usage_calls(), env = "METERD_MAX_USAGE_CALLS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_usage_calls: u32,
    /// Client connections open at once over every listener; beyond it a new connection is closed at once (counted in /metrics, logged once per change of state).
    #[arg(long, value_name = "N", default_value_t = 4096, env = "METERD_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// A connection that has not sent the HTTP/2 preface (and finished its TLS handshake) within this of its accept is closed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration, env = "METERD_HANDSHAKE_TIMEOUT")]
    #[serde(serialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// A connection without a call for this long is closed (0s: never). A Tail follower is a call.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration, env = "METERD_IDLE_TIMEOUT")]
    #[serde(serialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Interval of HTTP/2 keepalive pings to idle connections (0s: off).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration, env = "METERD_HTTP2_KEEPALIVE_INTERVAL")]
    #[serde(serialize_with = "duration")]
    pub http2_keepalive_interval: Duration,
    /// A connection whose keepalive ping is not answered within this is closed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration, env = "METERD_HTTP2_KEEPALIVE_TIMEOUT")]
    #[serde(serialize_with = "duration")]
    pub http2_keepalive_timeout: Duration,
    /// TCP keepalive probes after this much idle time (0s: off).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration, env = "METERD_TCP_KEEPALIVE")]
    #[serde(serialize_with = "duration")]
    pub tcp_keepalive: Duration,
    /// Close connections gracefully after this age (0s: never).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration, env = "METERD_MAX_CONNECTION_AGE")]
    #[serde(serialize_with = "duration")]
    pub max_connection_age: Duration,
    /// TLS certificate chain (PEM) for TCP listeners; re-read on SIGHUP.
    #[arg(
        long,
        value_name = "FILE",
        env = "METERD_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); re-read on SIGHUP.
    #[arg(
        long,
        value_name = "FILE",
        env = "METERD_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// TLS handshakes in progress at once (over all TCP listeners); at the cap the oldest is dropped, so stalled handshakes cannot pile up.
    #[arg(long, value_name = "N", default_value_t = 512, env = "METERD_MAX_TLS_HANDSHAKES", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tls_handshakes: u32,
    /// CA (PEM) that client certificates must chain to: enables mutual TLS.
    #[arg(
        long,
        value_name = "FILE",
        env = "METERD_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// File of bearer tokens (one per line); calls must send `authorization: Bearer <token>`. Re-read on SIGHUP.
    #[arg(long, value_name = "FILE", env = "METERD_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// File of bearer tokens (one per line) for readers of metering.v1.LedgerService (Tail, Usage); writer tokens do not open it, nor these MeteringService. Re-read on SIGHUP.
    #[arg(long, value_name = "FILE", env = "METERD_READER_TOKEN_FILE")]
    pub reader_token_file: Option<PathBuf>,
    /// Require a token (writer or reader) for health and reflection too.
    #[arg(long, env = "METERD_AUTH_ALL_SERVICES", requires = "auth_token_file")]
    pub auth_all_services: bool,
    /// Permission bits of Unix sockets, in octal.
    #[arg(long, value_name = "MODE", default_value = "0660", value_parser = parse_mode, env = "METERD_UNIX_MODE")]
    #[serde(serialize_with = "octal")]
    pub unix_mode: u32,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR", env = "METERD_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Log format on stderr (RUST_LOG sets the levels).
    #[arg(long, value_enum, default_value = "text", env = "METERD_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// How long shutdown waits for in-flight calls.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration, env = "METERD_SHUTDOWN_GRACE")]
    #[serde(serialize_with = "duration")]
    pub shutdown_grace: Duration,
}

impl ServeArgs {
    /// Every `--sink` spec, in order.
    pub fn sinks(&self) -> impl Iterator<Item = &SinkSpec> {
        self.sink.iter().flat_map(|s| &s.0)
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode such as 0660"))
}

fn display<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn display_all<T: std::fmt::Display, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(ToString::to_string))
}

fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

fn octal<S: Serializer>(m: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{m:04o}"))
}
