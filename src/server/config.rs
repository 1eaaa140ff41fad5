//! `Config`: every server setting beside the sink, with the defaults
//! `meterd serve` starts from.

use std::sync::Arc;
use std::time::Duration;

use super::{Auth, Tls};
use crate::record::Limits;

/// Server settings beside the sink.
#[derive(Clone)]
pub struct Config {
    pub limits: Limits,
    /// Largest request message accepted, in bytes (checked before decoding).
    pub max_message_bytes: usize,
    /// How long shutdown waits for in-flight calls and open streams.
    pub shutdown_grace: Duration,
    /// Calls (and open SubmitBatch streams) served at once; beyond it new
    /// ones get RESOURCE_EXHAUSTED at once instead of queueing.
    pub max_in_flight: usize,
    /// Bytes of records handed to the sinks and not yet written; beyond it
    /// callers wait, then get RESOURCE_EXHAUSTED (see `budget.rs`).
    pub max_queue_bytes: u64,
    /// Bytes of SubmitBatch/EmitBatch messages read and not yet queued;
    /// beyond it meterd stops reading (see `inflight.rs`).
    pub max_in_flight_bytes: u64,
    /// How long one such message may take to arrive whole.
    pub message_read_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once.
    pub max_streams_per_connection: u32,
    /// Usage calls computing at once; beyond it a call waits up to 2 s,
    /// then gets RESOURCE_EXHAUSTED.
    pub max_usage_calls: usize,
    /// Client connections open at once over every listener; beyond it a
    /// new one is closed at once (see `conn.rs`).
    pub max_connections: usize,
    /// A connection must send the HTTP/2 preface within this of its
    /// accept (TLS handshake included).
    pub handshake_timeout: Duration,
    /// A connection without a call for this long is closed; `None` keeps it.
    pub idle_timeout: Option<Duration>,
    /// HTTP/2 pings to idle connections, and how long to wait for the answer
    /// before closing the connection.
    pub http2_keepalive_interval: Option<Duration>,
    pub http2_keepalive_timeout: Duration,
    /// TCP keepalive probes on accepted connections.
    pub tcp_keepalive: Option<Duration>,
    /// Connections are closed gracefully after this age (spreads load after
    /// a restart of a peer); `None` keeps them.
    pub max_connection_age: Option<Duration>,
    /// TLS for TCP listeners; Unix sockets stay plaintext.
    pub tls: Option<Arc<Tls>>,
    /// TLS handshakes in progress at once, over all listeners; at the cap
    /// the oldest is dropped (see `tls.rs`).
    pub max_tls_handshakes: usize,
    /// Bearer tokens for MeteringService (and, with `auth_all_services`,
    /// health and reflection too).
    pub auth: Auth,
    /// Bearer tokens for LedgerService (and, with `auth_all_services`,
    /// health and reflection too). See [`Access`](super::Access) for who may call what.
    pub reader_auth: Auth,
    pub auth_all_services: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            max_message_bytes: 4 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            max_in_flight: 1024,
            max_queue_bytes: 64 << 20,
            max_in_flight_bytes: 64 << 20,
            message_read_timeout: Duration::from_secs(30),
            max_streams_per_connection: 256,
            max_usage_calls: default_usage_calls() as usize,
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(600)),
            http2_keepalive_interval: Some(Duration::from_secs(30)),
            http2_keepalive_timeout: Duration::from_secs(10),
            tcp_keepalive: Some(Duration::from_secs(60)),
            max_connection_age: None,
            tls: None,
            max_tls_handshakes: 512,
            auth: Auth::none(),
            reader_auth: Auth::none(),
            auth_all_services: false,
        }
    }
}

/// `--max-usage-calls` by default: half the CPUs, at least one. A Usage
/// call computes on one CPU for as long as it takes; writers keep the rest.
pub fn default_usage_calls() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    u32::try_from(cpus / 2).unwrap_or(u32::MAX).max(1)
}
