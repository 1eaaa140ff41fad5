//! `run`: the services wired behind their auth checks and layers, served on
//! every listener, and the graceful shutdown that ends them.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Router;
use tonic::{Request, Status};
use tower::filter::FilterLayer;
use tower::layer::util::{Identity, Stack};

use super::metering::Metering;
use super::{
    accept, authority, budget, conn, health, inflight, ledger, tls, Access, Config, Listener, Role,
    Shared, Tls,
};
use crate::pb::ledger_service_server::LedgerServiceServer;
use crate::pb::metering_service_server::MeteringServiceServer;
use crate::sink::Sink;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The servers of the listeners, one task each.
type Servers = tokio::task::JoinSet<Result<(), tonic::transport::Error>>;

/// The layers of every listener's router, as `run` stacks them.
type Layers = Stack<
    conn::CallsLayer,
    Stack<inflight::Layer, Stack<FilterLayer<authority::Policy>, Identity>>,
>;

/// HTTP/2 receive windows (see `transport`): a stalled stream holds at most
/// this; a MiB in flight per connection keeps a fast sender at full speed
/// on a LAN (1 MiB per millisecond of round trip).
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;

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
) -> Result<(), BoxError> {
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
    let router = |unix_socket: bool| {
        transport(&config)
            // Unix sockets accept the socket path as :authority, TCP does not.
            .layer(authority::layer(unix_socket))
            .layer(inflight::Layer(in_flight_bytes.clone()))
            .layer(conn::CallsLayer)
            .add_service(metering.clone())
            .add_service(ledger_service.clone())
            .add_service(health_service.clone())
            .add_service(reflection_v1.clone())
            .add_service(reflection_v1alpha.clone())
    };
    serve(
        listeners,
        &config,
        router,
        shutdown,
        &health,
        &readers_stop,
        &sink,
    )
    .await
}

/// Serves a router made by `router` (told whether the listener is a Unix
/// socket) on every listener until `shutdown` resolves; then stops them as
/// `run` says.
async fn serve(
    listeners: Vec<Listener>,
    config: &Config,
    router: impl Fn(bool) -> Router<Layers>,
    shutdown: impl Future<Output = ()> + Send,
    health: &health::Health,
    readers_stop: &CancellationToken,
    sink: &Arc<dyn Sink>,
) -> Result<(), BoxError> {
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
        let router = router(unix_socket);
        let socket = spawn(
            &mut servers,
            router,
            listener,
            &token,
            &config.tls,
            &handshakes,
            &connections,
        );
        sockets.extend(socket);
    }

    wait_for_shutdown(shutdown, &mut servers, &token, readers_stop, sink).await?;
    health.stopping().await;
    readers_stop.cancel();
    token.cancel();
    drain(&mut servers, config.shutdown_grace).await;
    remove_sockets(sockets).await;
    sink.close().await?;
    tracing::info!("ledger synced; bye");
    Ok(())
}

/// Server reflection of meterd's services, health and reflection itself.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

/// The transport settings of one listener: streams per connection,
/// flow-control windows, keepalives and the connection age.
fn transport(config: &Config) -> tonic::transport::Server {
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
    builder
}

/// Serves `router` on `listener` (over TLS when it is TCP and `tls` is set)
/// until `token` is cancelled. Returns a Unix socket's path, to be unlinked
/// at the end.
fn spawn(
    servers: &mut Servers,
    router: Router<Layers>,
    listener: Listener,
    token: &CancellationToken,
    tls: &Option<Arc<Tls>>,
    handshakes: &Arc<tls::Handshakes>,
    connections: &Arc<conn::Limits>,
) -> Option<PathBuf> {
    let stop = token.clone().cancelled_owned();
    match (listener, tls) {
        (Listener::Tcp(l), Some(tls)) => {
            let incoming = tls
                .clone()
                .incoming(l, handshakes.clone(), connections.clone());
            servers.spawn(router.serve_with_incoming_shutdown(incoming, stop));
            None
        }
        (Listener::Tcp(l), None) => {
            let name = l
                .local_addr()
                .map_or_else(|_| "tcp".into(), |a| a.to_string());
            let incoming = accept::incoming(l, name, connections.clone());
            servers.spawn(router.serve_with_incoming_shutdown(incoming, stop));
            None
        }
        (Listener::Unix(l, path), _) => {
            let incoming =
                accept::incoming(l, format!("unix:{}", path.display()), connections.clone());
            servers.spawn(router.serve_with_incoming_shutdown(incoming, stop));
            Some(path)
        }
    }
}

/// Waits for `shutdown`. A server that ends before it, on its own, is an
/// error worth stopping for: everything is stopped and the error returned.
async fn wait_for_shutdown(
    shutdown: impl Future<Output = ()> + Send,
    servers: &mut Servers,
    token: &CancellationToken,
    readers_stop: &CancellationToken,
    sink: &Arc<dyn Sink>,
) -> Result<(), BoxError> {
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
    Ok(())
}

/// Lets the servers finish their calls for up to `grace`, then closes the
/// ones still open.
async fn drain(servers: &mut Servers, grace: Duration) {
    let drained = tokio::time::timeout(grace, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(grace = ?grace, "calls still open after the grace period; closing them");
        servers.abort_all();
    }
}

/// Unlinks the Unix sockets. Unlinking is file system work: off the async
/// workers.
async fn remove_sockets(sockets: Vec<PathBuf>) {
    let _ = tokio::task::spawn_blocking(move || {
        for path in sockets {
            let _ = std::fs::remove_file(path);
        }
    })
    .await;
}
