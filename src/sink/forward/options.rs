//! The settings of the forwarding sinks (the `--forward-*`, `--http-*` and
//! `--nats-*` flags): plain values, below every sink that reads them.

use std::time::Duration;

/// How a forwarding sink acknowledges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardMode {
    /// Ack once the record is in the local spool.
    Spool,
    /// Ack only once the upstream acks.
    PassThrough,
}

/// Settings shared by every forwarding sink.
#[derive(Clone, Debug)]
pub struct ForwardOptions {
    pub mode: ForwardMode,
    /// Parent of the spool directories (one per sink).
    pub spool_dir: std::path::PathBuf,
    /// Above this many spooled bytes new records get RESOURCE_EXHAUSTED.
    pub max_spool_bytes: u64,
    /// Longest wait between two delivery attempts.
    pub retry_max: Duration,
    /// Timeout of one upstream call.
    pub timeout: Duration,
    /// Requests in flight at once per spool file (1 keeps the upstream's
    /// order exactly the spool's).
    pub in_flight: usize,
    /// CA certificates (PEM) trusted by `grpc=https://` sinks, beside the
    /// system and webpki roots.
    pub grpc_ca_file: Option<std::path::PathBuf>,
    /// Credential for the upstream (bearer token, NATS token).
    pub token: Option<String>,
    pub http: HttpOptions,
    /// Settings of the `nats` sink.
    pub nats: NatsOptions,
}

impl ForwardOptions {
    /// The spool directory of the sink `kind=target`.
    pub fn spool_for(&self, kind: &str, target: &str) -> std::path::PathBuf {
        self.spool_dir.join(spool_name(kind, target))
    }
}

/// The name of a sink's spool directory: one per upstream, named after it
/// (passwords redacted) so that a restart with the same flags finds its
/// backlog.
pub fn spool_name(kind: &str, target: &str) -> String {
    let safe: String = crate::sink::redact_url(target)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{kind}-{safe}")
}

/// Settings of the `http` sink.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Where entries are POSTed as NDJSON; without it the sink takes only batches.
    pub entries_url: Option<String>,
    /// Timeout of one POST, connect included.
    pub timeout: Duration,
    /// How long sends may fail before the status turns RED, until the
    /// collector sends its own `new-grace-period`.
    pub grace_period: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            entries_url: None,
            timeout: Duration::from_secs(10),
            grace_period: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Settings of the `nats` sink (the `--nats-*` flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsOptions {
    /// The JetStream stream the subjects belong to.
    pub stream: String,
    /// Get or create the stream at the first successful connection.
    pub create_stream: bool,
    /// Replicas of a stream this sink creates.
    pub replicas: usize,
    /// JetStream's duplicate window of a stream this sink creates.
    pub duplicate_window: Duration,
    /// Subject template of entries.
    pub entries_subject: String,
    /// Subject template of batches.
    pub batches_subject: String,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            stream: "METERING".into(),
            create_stream: false,
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            entries_subject: "metering.entries.{kind}".into(),
            batches_subject: "metering.batches.{model_uuid}".into(),
        }
    }
}
