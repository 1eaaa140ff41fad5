//! `meterd serve` and `meterd check-config`: from flags to a running server.

use std::sync::Arc;
use std::time::Duration;

use super::{default_ledger_dir, ServeArgs};
use crate::ledger::LedgerConfig;
use crate::record::Limits;
use crate::server::{self, Auth, Listener, Tls, TlsFiles};
use crate::sink::forward::{ForwardOptions, HttpOptions, NatsOptions};
use crate::sink::{self, fanout::Fanout, BuildConfig, Sink, SinkSpec};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything `serve` builds from its flags before binding anything.
struct Prepared {
    sinks: BuildConfig,
    config: server::Config,
}

fn prepare(args: &ServeArgs) -> Result<Prepared, String> {
    check_sinks(args)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(Tls::load(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
        })?)),
        _ => None,
    };
    let auth = match &args.auth_token_file {
        Some(path) => Auth::from_file(path.clone())?,
        None => Auth::none(),
    };
    let reader_auth = match &args.reader_token_file {
        Some(path) => Auth::from_file_of("--reader-token-file", path.clone())?,
        None => Auth::none(),
    };
    let ledger = ledger_config(args);
    ledger.check()?;
    let forward = forward_options(args, &ledger)?;
    Ok(Prepared {
        sinks: BuildConfig { ledger, forward },
        config: server_config(args, tls, auth, reader_auth)?,
    })
}

/// Checks the `--sink` specs and the flags of the forwarding sinks that can
/// be checked on their own.
fn check_sinks(args: &ServeArgs) -> Result<(), String> {
    for spec in args.sinks() {
        if let SinkSpec::Forward(kind, target) = spec {
            match kind.as_str() {
                "grpc" => {
                    target
                        .parse::<sink::forward::grpc::Target>()
                        .map_err(|e| format!("sink {spec}: {e}"))?;
                }
                "nats" => {}
                "http" => {
                    sink::forward::http::check_url("sink http", target)?;
                }
                _ => return Err(format!("sink {kind} is not available in this version")),
            }
        }
    }
    if let Some(path) = &args.grpc_ca_file {
        sink::forward::grpc::read_ca(path)?;
    }
    if let Some(url) = &args.http_entries_url {
        sink::forward::http::check_url("--http-entries-url", url)?;
    }
    // An http sink without an entries URL lets entries pass by: some other
    // sink must keep them, or they would be acknowledged and lost.
    let keeps_entries = |s: &SinkSpec| match s {
        SinkSpec::Forward(kind, _) if kind == "http" => args.http_entries_url.is_some(),
        SinkSpec::Nop => false,
        _ => true,
    };
    if let Some(http) = args
        .sinks()
        .find(|s| matches!(s, SinkSpec::Forward(k, _) if k == "http"))
    {
        if !args.sinks().any(keeps_entries) {
            return Err(format!(
                "sink {http} takes only batches and no other sink keeps entries: give --http-entries-url URL, or add a sink for them (e.g. --sink jsonl)"
            ));
        }
    }
    Ok(())
}

/// A duration flag where 0s means "off".
fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// The ledger the `jsonl` sinks write (not yet checked).
fn ledger_config(args: &ServeArgs) -> LedgerConfig {
    LedgerConfig {
        dir: args.ledger.clone().unwrap_or_else(default_ledger_dir),
        fsync: args.fsync,
        fsync_interval: args.fsync_interval,
        dedupe_window: args.dedupe_window,
        segment_max_bytes: u64::try_from(args.segment_max_bytes).unwrap_or(0),
        segment_max_age: args.segment_max_age,
        retention: nonzero(args.retention),
        retention_bytes: u64::try_from(args.retention_bytes).ok().filter(|b| *b > 0),
        keep_seals: true,
    }
}

/// What the forwarding sinks are built with (their spools under the
/// ledger's directory by default); checks the `nats` sinks against it.
fn forward_options(args: &ServeArgs, ledger: &LedgerConfig) -> Result<ForwardOptions, String> {
    let token = match &args.upstream_token_file {
        Some(path) => Some(super::client::read_token("--upstream-token-file", path)?),
        None => None,
    };
    let forward = ForwardOptions {
        mode: args.forward_mode,
        spool_dir: args
            .spool_dir
            .clone()
            .unwrap_or_else(|| ledger.dir.join("spool")),
        max_spool_bytes: u64::try_from(args.spool_max_bytes).unwrap_or(0),
        retry_max: args.forward_retry_max,
        timeout: args.upstream_timeout,
        in_flight: args.forward_in_flight as usize,
        grpc_ca_file: args.grpc_ca_file.clone(),
        token,
        http: HttpOptions {
            entries_url: args.http_entries_url.clone(),
            timeout: args.http_timeout,
            grace_period: args.http_grace_period,
        },
        nats: NatsOptions {
            stream: args.nats_stream.clone(),
            create_stream: args.nats_create_stream,
            replicas: usize::from(args.nats_replicas),
            duplicate_window: args.nats_duplicate_window,
            entries_subject: args.nats_entries_subject.clone(),
            batches_subject: args.nats_batches_subject.clone(),
        },
    };
    for spec in args.sinks() {
        if let SinkSpec::Forward(kind, target) = spec {
            if kind == "nats" {
                sink::forward::nats::validate(target, &forward.nats)
                    .map_err(|e| format!("sink {spec}: {e}"))?;
            }
        }
    }
    Ok(forward)
}

/// The server's settings from the flags, with the TLS files and tokens
/// already loaded.
fn server_config(
    args: &ServeArgs,
    tls: Option<Arc<Tls>>,
    auth: Auth,
    reader_auth: Auth,
) -> Result<server::Config, String> {
    Ok(server::Config {
        limits: Limits {
            max_id_len: args.max_id_len,
            max_string_len: args.max_string_len,
            max_batches_per_request: args.max_batches_per_request,
            max_entries_per_request: args.max_entries_per_request,
            max_metrics_per_batch: args.max_metrics_per_batch,
            max_labels_per_metric: args.max_labels_per_metric,
            max_credential_bytes: args.max_credential_bytes,
            max_clock_skew: args.max_clock_skew,
        },
        max_message_bytes: args.max_message_bytes,
        shutdown_grace: args.shutdown_grace,
        max_in_flight: args.max_in_flight as usize,
        max_queue_bytes: byte_budget("--max-queue-bytes", args.max_queue_bytes)?,
        max_in_flight_bytes: byte_budget("--max-in-flight-bytes", args.max_in_flight_bytes)?,
        message_read_timeout: args.message_read_timeout,
        max_streams_per_connection: args.max_streams_per_connection,
        max_usage_calls: args.max_usage_calls as usize,
        max_connections: args.max_connections as usize,
        handshake_timeout: nonzero(args.handshake_timeout)
            .ok_or("--handshake-timeout: must be more than 0s")?,
        idle_timeout: nonzero(args.idle_timeout),
        http2_keepalive_interval: nonzero(args.http2_keepalive_interval),
        http2_keepalive_timeout: args.http2_keepalive_timeout,
        tcp_keepalive: nonzero(args.tcp_keepalive),
        max_connection_age: nonzero(args.max_connection_age),
        tls,
        max_tls_handshakes: args.max_tls_handshakes as usize,
        auth,
        reader_auth,
        auth_all_services: args.auth_all_services,
    })
}

/// A byte budget flag (`--max-queue-bytes`, `--max-in-flight-bytes`):
/// 1 byte to 4 GiB, what one semaphore acquire can hold.
fn byte_budget(flag: &str, value: i64) -> Result<u64, String> {
    u64::try_from(value)
        .ok()
        .filter(|b| (1..=1 << 32).contains(b))
        .ok_or_else(|| format!("{flag} {value}: must be between 1 byte and 4GiB"))
}

/// `meterd check-config`: checks everything that can be checked without
/// binding (files readable, certificates and tokens valid) and returns the
/// effective configuration as TOML.
pub fn check(args: &ServeArgs) -> Result<String, String> {
    prepare(args)?;
    super::effective_config(args)
}

/// Runs `meterd serve` until SIGINT or SIGTERM. SIGHUP re-reads the TLS
/// files and tokens and seals the active ledger files.
pub async fn serve(args: ServeArgs) -> Result<(), BoxError> {
    let Prepared {
        sinks: build,
        config,
    } = prepare(&args)?;
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    // The first sink's ledger that keeps one is what LedgerService reads.
    let mut ledger = None;
    for spec in args.sinks() {
        let built = sink::build(spec, &build).await?;
        sinks.push(built.sink);
        ledger = ledger.or(built.ledger);
        match spec {
            SinkSpec::Jsonl(dir) => {
                let dir = dir.as_ref().unwrap_or(&build.ledger.dir);
                tracing::info!(ledger = %dir.display(), fsync = ?build.ledger.fsync, "jsonl ledger open");
            }
            SinkSpec::Forward(kind, target) => {
                tracing::info!(sink = %spec, mode = ?build.forward.mode, spool = %build.forward.spool_for(kind, target).display(), "forwarding");
            }
            _ => {}
        }
    }
    let sink: Arc<dyn Sink> = if sinks.len() == 1 {
        sinks.remove(0)
    } else {
        Arc::new(Fanout::new(sinks))
    };

    let shutdown = shutdown_signal();
    let mut listeners = Vec::new();
    for addr in &args.listen {
        let l = Listener::bind(addr, args.unix_mode)
            .await
            .map_err(|e| format!("listen on {addr}: {e}"))?;
        let tls = matches!(l, Listener::Tcp(_)) && config.tls.is_some();
        tracing::info!(addr = %l.local_addr(), tls, "listening");
        listeners.push(l);
    }
    let stop_metrics = tokio_util::sync::CancellationToken::new();
    if let Some(addr) = args.metrics_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("--metrics-listen {addr}: {e}"))?;
        tracing::info!(%addr, "metrics at /metrics");
        let stop = stop_metrics.clone().cancelled_owned();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(l, stop).await {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        });
    }
    tokio::spawn(reload_on_sighup(
        config.tls.clone(),
        [config.auth.clone(), config.reader_auth.clone()],
        sink.clone(),
    ));
    let result = server::run(listeners, config, sink, ledger, shutdown).await;
    stop_metrics.cancel();
    result
}

async fn reload_on_sighup(tls: Option<Arc<Tls>>, tokens: [Auth; 2], sink: Arc<dyn Sink>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        // The reloads read files: off the async workers.
        let blocking = |f: Box<dyn FnOnce() -> Result<(), String> + Send>| async move {
            tokio::task::spawn_blocking(f)
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
        };
        if let Some(tls) = &tls {
            let tls = tls.clone();
            match blocking(Box::new(move || tls.reload())).await {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; keeping the previous certificate")
                }
            }
        }
        for auth in tokens.iter().filter(|a| a.enabled()) {
            let auth = auth.clone();
            match blocking(Box::new(move || auth.reload())).await {
                Ok(()) => tracing::info!("tokens reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "token reload failed; keeping the previous tokens")
                }
            }
        }
        match sink.reopen().await {
            Ok(()) => tracing::info!("ledger files reopened"),
            Err(e) => tracing::error!(error = %e, "ledger reopen failed"),
        }
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: a SIGTERM that arrives as
/// soon as the sockets exist must end the server gracefully, not kill it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
