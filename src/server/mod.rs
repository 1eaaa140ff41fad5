//! The tonic server: `MeteringService` (writers) and `LedgerService`
//! (readers) beside `grpc.health.v1.Health` and server reflection (v1 and
//! v1alpha), on TCP (optionally TLS) and Unix-socket listeners, with
//! admission control and bearer-token auth (writer and reader tokens kept
//! apart).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::{code_name, metrics, RpcLabels};
use crate::pb::ledger_service_server::LedgerServiceServer;
use crate::pb::metering_service_server::{MeteringService, MeteringServiceServer};
use crate::pb::{
    EmitBatchRequest, EmitBatchResponse, EmitRequest, EmitResponse, SubmitBatchRequest,
};
use crate::record::Limits;
use crate::sink::{Outcome, Record, Sink, SinkError};

mod accept;
mod auth;
mod authority;
mod budget;
mod conn;
mod emit;
mod emit_batch;
mod health;
mod inflight;
mod ledger;
mod listen;
mod quiet;
mod status;
mod submit_batch;
mod tls;

pub use auth::{Access, Auth, Role};
pub use health::{LEDGER_SERVICE_NAME, SERVICE_NAME};
pub use listen::{ListenAddr, Listener};
pub use tls::{Tls, TlsFiles};

/// HTTP/2 receive windows (see `run`): a stalled stream holds at most
/// this; a MiB in flight per connection keeps a fast sender at full speed
/// on a LAN (1 MiB per millisecond of round trip).
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;

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
    /// health and reflection too). See [`Access`] for who may call what.
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

/// State shared by every call.
pub(crate) struct Shared {
    sink: Arc<dyn Sink>,
    limits: Limits,
    health: health::Health,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    budget: budget::Budget,
}

/// A call admitted under `--max-in-flight`; releases its slot when dropped.
pub(crate) struct Admission {
    _permit: OwnedSemaphorePermit,
}

impl Drop for Admission {
    fn drop(&mut self) {
        metrics().in_flight.dec();
    }
}

impl Shared {
    /// Admits a call, or refuses it at once when the server is full.
    fn admit(&self) -> Result<Admission, status::Error> {
        let permit =
            self.in_flight
                .clone()
                .try_acquire_owned()
                .map_err(|_| status::Error::Busy {
                    max_in_flight: self.max_in_flight,
                })?;
        metrics().in_flight.inc();
        Ok(Admission { _permit: permit })
    }

    /// Takes room for `records` in `--max-queue-bytes`, waiting up to
    /// [`budget::QUEUE_WAIT`] or most of what is left until `deadline`.
    async fn room(
        &self,
        records: &[Record],
        deadline: Option<tokio::time::Instant>,
    ) -> Result<budget::Held, status::Error> {
        static FULL: quiet::Quiet = quiet::Quiet::new("queue full");
        match self
            .budget
            .take(records, budget::wait_within(deadline))
            .await
        {
            Ok(held) => {
                FULL.accepted();
                Ok(held)
            }
            Err(e) => {
                FULL.refused(&e);
                Err(e)
            }
        }
    }

    /// Hands records to the sink now (so they are written in call order)
    /// and returns a future of the outcome. The write is awaited by a task
    /// of its own, which keeps health in step with it and holds the room
    /// `held` until the sink answers, also when the caller has gone.
    fn submit(
        self: &Arc<Self>,
        records: Arc<[Record]>,
        held: budget::Held,
    ) -> impl Future<Output = Result<Vec<Outcome>, SinkError>> + Send + 'static {
        let write = self.sink.submit(records);
        let this = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            // Logged once per change of state, with counts (see quiet.rs).
            static FAILING: quiet::Quiet = quiet::Quiet::new("writes failing");
            static FULL: quiet::Quiet = quiet::Quiet::new("sink full");
            let result = write.await;
            drop(held);
            match &result {
                Ok(_) => {
                    FAILING.accepted();
                    FULL.accepted();
                    this.health.observe_write(true);
                }
                Err(e @ SinkError::Unavailable(_)) => {
                    FAILING.refused(e);
                    this.health.observe_write(false);
                }
                Err(e @ SinkError::Exhausted(_)) => FULL.refused(e),
            }
            // A failed send: the caller has gone.
            let _ = tx.send(result);
        });
        async move {
            rx.await.unwrap_or_else(|_| {
                Err(SinkError::Unavailable(
                    "the write's task ended without an answer".into(),
                ))
            })
        }
    }
}

/// Counts a finished RPC.
pub(crate) fn count_rpc(rpc: &'static str, code: tonic::Code) {
    metrics()
        .requests
        .get_or_create(&RpcLabels {
            rpc,
            code: code_name(code),
        })
        .inc();
}

/// The `MeteringService` implementation.
#[derive(Clone)]
pub struct Metering {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl MeteringService for Metering {
    async fn emit(&self, request: Request<EmitRequest>) -> Result<Response<EmitResponse>, Status> {
        let deadline = budget::deadline(request.metadata());
        let result = match self.shared.admit() {
            Ok(admission) => {
                let r = emit::emit(&self.shared, request.into_inner(), deadline).await;
                drop(admission);
                r.map_err(|e| {
                    tracing::debug!(error = %e, "emit failed");
                    Status::from(e)
                })
            }
            Err(e) => Err(Status::from(e)),
        };
        count_rpc(
            "Emit",
            result
                .as_ref()
                .map_or_else(|s| s.code(), |_| tonic::Code::Ok),
        );
        result.map(Response::new)
    }

    async fn emit_batch(
        &self,
        request: Request<EmitBatchRequest>,
    ) -> Result<Response<EmitBatchResponse>, Status> {
        let deadline = budget::deadline(request.metadata());
        let read = request.extensions().get::<inflight::Hold>().cloned();
        let result = match self.shared.admit() {
            Ok(admission) => {
                let r = emit_batch::emit_batch(&self.shared, request.into_inner(), deadline, read)
                    .await;
                drop(admission);
                r.map_err(|e| {
                    tracing::debug!(error = %e, "emit batch failed");
                    Status::from(e)
                })
            }
            Err(e) => Err(Status::from(e)),
        };
        count_rpc(
            "EmitBatch",
            result
                .as_ref()
                .map_or_else(|s| s.code(), |_| tonic::Code::Ok),
        );
        result.map(Response::new)
    }

    type SubmitBatchStream = submit_batch::ResponseStream;

    async fn submit_batch(
        &self,
        request: Request<Streaming<SubmitBatchRequest>>,
    ) -> Result<Response<Self::SubmitBatchStream>, Status> {
        let deadline = budget::deadline(request.metadata());
        let read = request.extensions().get::<inflight::Hold>().cloned();
        let admission = self.shared.admit().map_err(|e| {
            let s = Status::from(e);
            count_rpc("SubmitBatch", s.code());
            s
        })?;
        Ok(Response::new(submit_batch::submit_batch(
            self.shared.clone(),
            request.into_inner(),
            admission,
            deadline,
            read,
        )))
    }
}

type Intercepted<S> = InterceptedService<S, Interceptor>;

/// The auth check as a tonic interceptor: `role: None` lets every call
/// through.
#[derive(Clone)]
pub struct Interceptor {
    access: Access,
    role: Option<Role>,
}

impl tonic::service::Interceptor for Interceptor {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        match self.role {
            Some(role) => self.access.check(req, role),
            None => Ok(req),
        }
    }
}

/// Serves on every listener until `shutdown` resolves; then stops accepting,
/// lets in-flight calls finish (up to the grace period), closes the sink
/// (syncing the ledger) and returns. `kept` is the ledger the sink writes,
/// which `LedgerService` reads (`None`: a forwarding-only server, whose
/// `LedgerService` calls fail with `FAILED_PRECONDITION`).
pub async fn run(
    listeners: Vec<Listener>,
    config: Config,
    sink: Arc<dyn Sink>,
    kept: Option<Arc<crate::ledger::Ledger>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = health::Health::new(reporter, kept.is_some(), sink.health()).await;
    let shared = Arc::new(Shared {
        sink: sink.clone(),
        limits: config.limits.clone(),
        health: health.clone(),
        in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
        max_in_flight: config.max_in_flight,
        budget: budget::Budget::new(config.max_queue_bytes),
    });
    let access = Access {
        writers: config.auth.clone(),
        readers: config.reader_auth.clone(),
    };
    let guard = |role: Option<Role>| Interceptor {
        access: access.clone(),
        role: role.filter(|_| access.enabled()),
    };
    let others = config.auth_all_services.then_some(Role::Any);
    // Cancelled when shutdown begins: following Tail calls end then.
    let readers_stop = CancellationToken::new();
    let reader = ledger::Reader::new(
        shared.clone(),
        kept,
        config.max_usage_calls,
        readers_stop.clone(),
    );
    let metering: Intercepted<_> = InterceptedService::new(
        MeteringServiceServer::new(Metering { shared })
            .max_decoding_message_size(config.max_message_bytes),
        guard(Some(Role::Writer)),
    );
    let ledger_service: Intercepted<_> = InterceptedService::new(
        LedgerServiceServer::new(reader).max_decoding_message_size(config.max_message_bytes),
        guard(Some(Role::Reader)),
    );
    let health_service: Intercepted<_> = InterceptedService::new(health_service, guard(others));
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    // v1alpha too: grpcurl 1.8 only speaks v1alpha.
    let reflection_v1: Intercepted<_> =
        InterceptedService::new(reflection().build_v1()?, guard(others));
    let reflection_v1alpha: Intercepted<_> =
        InterceptedService::new(reflection().build_v1alpha()?, guard(others));

    let in_flight_bytes = inflight::Budget::new(
        config.max_in_flight_bytes,
        config.max_message_bytes,
        config.message_read_timeout,
    );
    let connections = conn::Limits::new(
        config.max_connections,
        config.handshake_timeout,
        config.idle_timeout,
    );
    let token = CancellationToken::new();
    let handshakes = tls::Handshakes::new(config.max_tls_handshakes);
    let mut servers = tokio::task::JoinSet::new();
    let mut sockets = Vec::new();
    for listener in listeners {
        let unix_socket = matches!(listener, Listener::Unix(..));
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(config.max_streams_per_connection)
            // What a client that stops being read leaves buffered in meterd
            // is its stream's flow-control window: 256 KiB here (hyper's
            // default is 1 MiB), at most 1 MiB over a connection's streams.
            // (hyper's adaptive windows, which start at 64 KiB, broke
            // connections carrying thousands of refused calls.)
            .initial_stream_window_size(Some(STREAM_WINDOW))
            .initial_connection_window_size(Some(CONNECTION_WINDOW))
            .http2_keepalive_interval(config.http2_keepalive_interval)
            .http2_keepalive_timeout(Some(config.http2_keepalive_timeout))
            .tcp_keepalive(config.tcp_keepalive);
        if let Some(age) = config.max_connection_age {
            builder = builder.max_connection_age(age);
        }
        let router = builder
            // Unix sockets accept the socket path as :authority, TCP does not.
            .layer(authority::layer(unix_socket))
            .layer(inflight::Layer(in_flight_bytes.clone()))
            .layer(conn::CallsLayer)
            .add_service(metering.clone())
            .add_service(ledger_service.clone())
            .add_service(health_service.clone())
            .add_service(reflection_v1.clone())
            .add_service(reflection_v1alpha.clone());
        let stop = token.clone().cancelled_owned();
        match (listener, &config.tls) {
            (Listener::Tcp(l), Some(tls)) => {
                let incoming = tls
                    .clone()
                    .incoming(l, handshakes.clone(), connections.clone());
                servers.spawn(router.serve_with_incoming_shutdown(incoming, stop));
            }
            (Listener::Tcp(l), None) => {
                let name = l
                    .local_addr()
                    .map_or_else(|_| "tcp".into(), |a| a.to_string());
                let incoming = accept::incoming(l, name, connections.clone());
                servers.spawn(router.serve_with_incoming_shutdown(incoming, stop));
            }
            (Listener::Unix(l, path), _) => {
                let incoming =
                    accept::incoming(l, format!("unix:{}", path.display()), connections.clone());
                sockets.push(path);
                servers.spawn(router.serve_with_incoming_shutdown(incoming, stop));
            }
        }
    }

    tokio::select! {
        () = shutdown => tracing::info!("shutting down: no new calls; finishing in-flight ones"),
        Some(result) = servers.join_next() => {
            // A server ended on its own: that is an error worth stopping for.
            token.cancel();
            readers_stop.cancel();
            let _ = sink.close().await;
            return Err(match result {
                Ok(Err(e)) => e.into(),
                Ok(Ok(())) => "a listener stopped unexpectedly".into(),
                Err(e) => e.into(),
            });
        }
    }
    health.stopping().await;
    readers_stop.cancel();
    token.cancel();
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(grace = ?config.shutdown_grace, "calls still open after the grace period; closing them");
        servers.abort_all();
    }
    // Unlinking is file system work: off the async workers.
    let _ = tokio::task::spawn_blocking(move || {
        for path in sockets {
            let _ = std::fs::remove_file(path);
        }
    })
    .await;
    sink.close().await?;
    tracing::info!("ledger synced; bye");
    Ok(())
}
