//! The client side of the command line: `meterd emit` and `meterd health`,
//! and the connection and token helpers `tail` and `usage` share.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::{parse_size, DEFAULT_LISTEN};
use crate::addr::ListenAddr;
use crate::pb::metering_service_client::MeteringServiceClient;
use crate::pb::{EmitRequest, Entry, Reason, Shape};

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Server address: HOST:PORT or unix:/path.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN, env = "METERD_ADDR")]
    pub addr: ListenAddr,
    /// Service to ask about ("" is the whole server).
    #[arg(long, default_value = "")]
    pub service: String,
    /// Give up after this long.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Bearer token, when the server requires one for health (--auth-all-services).
    #[arg(
        long,
        env = "METERD_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// File whose first line is the bearer token (keeps it out of the process list).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EmitArgs {
    /// Server address: HOST:PORT or unix:/path.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN, env = "METERD_ADDR")]
    pub addr: ListenAddr,
    /// vm.compute.start|stop, vm.storage.start|stop, snap.storage.start|stop.
    #[arg(long)]
    pub kind: String,
    #[arg(long)]
    pub vm_id: Option<String>,
    #[arg(long)]
    pub snapshot_id: Option<String>,
    #[arg(long)]
    pub source_snapshot_id: Option<String>,
    /// boot, restart, clone, restore, hibernate-wake, stop-user, stop-crash, vm-rm, snap-rm.
    #[arg(long)]
    pub reason: Option<String>,
    #[arg(long)]
    pub hypervisor: Option<String>,
    /// vCPUs.
    #[arg(long, default_value_t = 0)]
    pub cpu: i64,
    /// Memory: bytes, or a size such as 4GiB or 512MiB.
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = parse_size)]
    pub mem: i64,
    /// Storage: bytes, or a size such as 10GiB.
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = parse_size)]
    pub storage: i64,
    /// Idempotency key: a retry with the same id is recorded once.
    #[arg(long)]
    pub id: Option<String>,
    /// Bearer token, when the server requires one.
    #[arg(long, env = "METERD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Give up after this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Connects to a server over TCP or a Unix socket; every call on the
/// channel gives up after `timeout`, as connecting does.
pub async fn connect(
    addr: &ListenAddr,
    timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    connect_with(addr, timeout, Some(timeout)).await
}

/// As [`connect`], with calls that give up after `request_timeout` (none
/// for streams that follow).
pub async fn connect_with(
    addr: &ListenAddr,
    timeout: Duration,
    request_timeout: Option<Duration>,
) -> Result<Channel, tonic::transport::Error> {
    let limit = |e: Endpoint| match request_timeout {
        Some(t) => e.timeout(t),
        None => e,
    };
    match addr {
        ListenAddr::Tcp(a) => {
            limit(Endpoint::from_shared(format!("http://{a}"))?.connect_timeout(timeout))
                .connect()
                .await
        }
        ListenAddr::Unix(path) => {
            let path = path.clone();
            // The URI is required but unused: the connector dials the socket.
            limit(Endpoint::from_static("http://localhost").connect_timeout(timeout))
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
        }
    }
}

/// Adds `authorization: Bearer TOKEN` when a token is given.
pub fn bearer<T>(request: &mut tonic::Request<T>, token: Option<&str>) -> Result<(), String> {
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "--token: not a valid header value".to_string())?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(())
}

/// The first line of a secret file, trimmed; `flag` names it in errors.
pub fn read_token(flag: &str, path: &std::path::Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_owned();
    if token.is_empty() {
        return Err(format!(
            "{flag} {}: the first line is empty",
            path.display()
        ));
    }
    Ok(token)
}

/// `meterd health`: Ok when the server reports SERVING.
pub async fn health(args: HealthArgs) -> Result<(), String> {
    let token = match &args.token_file {
        Some(path) => Some(read_token("--token-file", path)?),
        None => args.token.clone(),
    };
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: args.service,
    });
    bearer(&mut request, token.as_deref())?;
    let channel = connect(&args.addr, args.timeout)
        .await
        .map_err(|e| format!("connect to {}: {e}", args.addr))?;
    let resp = HealthClient::new(channel)
        .check(request)
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
    let status = resp.into_inner().status();
    println!("{}", status.as_str_name());
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(format!("server is {}", status.as_str_name()))
    }
}

/// `meterd emit`: records one entry, printing the server's answer.
pub async fn emit(args: EmitArgs) -> Result<(), String> {
    let kind = crate::record::Kind::from_wire(&args.kind)
        .ok_or_else(|| format!("--kind: unknown kind {:?}", args.kind))?
        .to_pb();
    let reason = match &args.reason {
        None => Reason::Unspecified,
        Some(r) => crate::record::Reason::from_wire(r)
            .ok_or_else(|| format!("--reason: unknown reason {r:?}"))?
            .to_pb(),
    };
    let entry = Entry {
        kind: kind as i32,
        vm_id: args.vm_id.unwrap_or_default(),
        snapshot_id: args.snapshot_id.unwrap_or_default(),
        source_snapshot_id: args.source_snapshot_id.unwrap_or_default(),
        reason: reason as i32,
        hypervisor: args.hypervisor.unwrap_or_default(),
        shape: Some(Shape {
            cpu: args.cpu,
            mem_bytes: args.mem,
            storage_bytes: args.storage,
        }),
        emitted_at: None,
        id: args.id.unwrap_or_default(),
    };
    let channel = connect(&args.addr, args.timeout)
        .await
        .map_err(|e| format!("connect to {}: {e}", args.addr))?;
    let mut request = tonic::Request::new(EmitRequest { entry: Some(entry) });
    bearer(&mut request, args.token.as_deref())?;
    let resp = MeteringServiceClient::new(channel)
        .emit(request)
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    println!("{}", if resp.duplicate { "duplicate" } else { "ok" });
    Ok(())
}
