//! The sink contract: where accepted records go. The server knows only
//! [`Sink`]; each implementation lives in a small module of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub mod capture;
pub mod fanout;
pub mod forward;
pub mod grpc;
pub mod http;
pub mod jsonl;
pub mod nats;
pub mod nop;
pub mod stderr;

pub use crate::record::{Body, Outcome, Record};

/// Why a sink could not take records. Nothing in the failed call counts as
/// recorded; the caller may retry.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink may recover by itself (disk full, read-only, upstream down).
    #[error("{0}")]
    Unavailable(String),
    /// The sink is full and refuses more work for now.
    #[error("{0}")]
    Exhausted(String),
}

/// A boxed future, so that `Sink` stays object-safe.
pub type SinkFuture<T> = Pin<Box<dyn Future<Output = Result<T, SinkError>> + Send + 'static>>;

/// Where accepted records go. Implementations are safe for concurrent use.
pub trait Sink: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &str;

    /// Takes the records and resolves once each one is durable (or
    /// acknowledged upstream, for a forwarding sink): one outcome per record,
    /// in order. The work is queued when this is called, so records are
    /// written in the order of the calls; the future only waits for the
    /// outcome. Dropping it leaves the records' fate unknown (they may still
    /// be written), exactly like a lost reply.
    fn submit(&self, records: Arc<[Record]>) -> SinkFuture<Vec<Outcome>>;

    /// Reopens files by path (after a log rotation renamed them). Default: nothing to do.
    fn reopen(&self) -> SinkFuture<()> {
        Box::pin(async { Ok(()) })
    }

    /// The meter statuses an upstream (a Juju collector) last reported for
    /// `model_uuid`, relayed to SubmitBatch clients. Default: none.
    fn relay(&self, _model_uuid: &str) -> Option<Relay> {
        None
    }

    /// The ledger this sink writes, for `LedgerService` to read. Default: none.
    fn ledger(&self) -> Option<Arc<crate::ledger::Ledger>> {
        None
    }

    /// Makes everything taken so far durable and stops. Called once at shutdown.
    fn close(&self) -> SinkFuture<()> {
        Box::pin(async { Ok(()) })
    }
}

/// A meter status: `GREEN`, `AMBER` or `RED` (or empty) and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeterStatus {
    pub status: String,
    pub info: String,
}

/// What a collector says about one model, as a Juju controller relays it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Relay {
    pub model_status: MeterStatus,
    /// By unit name.
    pub unit_statuses: std::collections::BTreeMap<String, MeterStatus>,
    /// The collector's latest `new-grace-period`, if it gave one.
    pub new_grace_period: Option<std::time::Duration>,
}

/// Every outcome `Written`: for sinks that do not de-duplicate.
pub(crate) fn all_written(records: &[Record]) -> Vec<Outcome> {
    vec![Outcome::Written; records.len()]
}

/// Which sink, from a `--sink KIND[=TARGET]` spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkSpec {
    /// The ledger directory; `TARGET` overrides `--ledger`.
    Jsonl(Option<std::path::PathBuf>),
    Stderr,
    Nop,
    Capture,
    /// A forwarding sink (`grpc`, `http`, `nats`) and its target.
    Forward(String, String),
}

impl std::str::FromStr for SinkSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, target) = match s.split_once('=') {
            Some((k, t)) => (k, Some(t)),
            None => (s, None),
        };
        match (kind, target) {
            ("jsonl", t) => Ok(SinkSpec::Jsonl(t.map(Into::into))),
            ("stderr", None) => Ok(SinkSpec::Stderr),
            ("nop", None) => Ok(SinkSpec::Nop),
            ("capture", None) => Ok(SinkSpec::Capture),
            ("stderr" | "nop" | "capture", Some(_)) => Err(format!("sink {kind} takes no target")),
            ("grpc" | "http" | "nats", Some(t)) if !t.is_empty() => {
                Ok(SinkSpec::Forward(kind.into(), t.into()))
            }
            ("grpc" | "http" | "nats", _) => Err(format!("sink {kind} needs a target: {kind}=ADDR")),
            _ => Err(format!(
                "unknown sink {kind:?} (expected jsonl, stderr, nop, capture, grpc=ADDR, http=URL or nats=URL)"
            )),
        }
    }
}

impl std::fmt::Display for SinkSpec {
    /// The spec as given, with any password in a URL redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkSpec::Jsonl(None) => f.write_str("jsonl"),
            SinkSpec::Jsonl(Some(dir)) => write!(f, "jsonl={}", dir.display()),
            SinkSpec::Stderr => f.write_str("stderr"),
            SinkSpec::Nop => f.write_str("nop"),
            SinkSpec::Capture => f.write_str("capture"),
            SinkSpec::Forward(kind, target) => write!(f, "{kind}={}", redact_url(target)),
        }
    }
}

/// One `--sink` value: specs separated by commas. A piece that is not a
/// spec of its own continues the target of a `nats=` spec before it, so that
/// `nats=nats://a:4222,nats://b:4222,jsonl` is one NATS sink with two
/// servers and a jsonl sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkSpecs(pub Vec<SinkSpec>);

impl std::str::FromStr for SinkSpecs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let starts_spec = |p: &str| {
            let kind = p.split_once('=').map_or(p, |(k, _)| k);
            matches!(
                kind,
                "jsonl" | "stderr" | "nop" | "capture" | "grpc" | "http" | "nats"
            )
        };
        let mut pieces: Vec<String> = Vec::new();
        for piece in s.split(',') {
            match pieces.last_mut() {
                Some(last) if last.starts_with("nats=") && !starts_spec(piece) => {
                    last.push(',');
                    last.push_str(piece);
                }
                _ => pieces.push(piece.to_owned()),
            }
        }
        pieces
            .iter()
            .map(|p| p.parse())
            .collect::<Result<_, _>>()
            .map(SinkSpecs)
    }
}

impl std::fmt::Display for SinkSpecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, spec) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{spec}")?;
        }
        Ok(())
    }
}

/// `scheme://user:secret@host` becomes `scheme://user:REDACTED@host`; in a
/// comma-separated list of URLs, each one.
pub(crate) fn redact_url(target: &str) -> String {
    target
        .split(',')
        .map(redact_one_url)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one_url(target: &str) -> String {
    let Some((scheme, rest)) = target.split_once("://") else {
        return target.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let at = rest[..authority_end].rfind('@').unwrap_or(0);
            format!("{scheme}://{user}:REDACTED{}", &rest[at..])
        }
        _ => target.to_owned(),
    }
}

/// What sinks are built from: the ledger configuration (also used for
/// spools) and the forwarding settings.
#[derive(Clone, Debug)]
pub struct BuildConfig {
    pub ledger: crate::ledger::LedgerConfig,
    pub forward: forward::ForwardOptions,
}

/// Builds one sink.
pub async fn build(spec: &SinkSpec, config: &BuildConfig) -> Result<Arc<dyn Sink>, String> {
    Ok(match spec {
        SinkSpec::Jsonl(dir) => {
            let mut ledger = config.ledger.clone();
            if let Some(dir) = dir {
                ledger.dir = dir.clone();
            }
            let sink = jsonl::JsonlSink::open(ledger)
                .await
                .map_err(|e| format!("jsonl sink: {e}"))?;
            Arc::new(sink)
        }
        SinkSpec::Stderr => Arc::new(stderr::StderrSink),
        SinkSpec::Nop => Arc::new(nop::NopSink),
        SinkSpec::Capture => Arc::new(capture::CaptureSink::new()),
        SinkSpec::Forward(kind, target) => {
            let options = &config.forward;
            let upstream: Arc<dyn forward::Upstream> = match kind.as_str() {
                "grpc" => {
                    let addr: crate::server::ListenAddr =
                        target.parse().map_err(|e| format!("sink {spec}: {e}"))?;
                    Arc::new(grpc::GrpcUpstream::new(
                        &addr,
                        options.timeout,
                        options.token.as_deref(),
                    )?)
                }
                "http" => Arc::new(http::HttpUpstream::new(
                    spec.to_string(),
                    target,
                    &options.http,
                    options.token.as_deref(),
                )?),
                "nats" => Arc::new(
                    nats::NatsUpstream::connect(target, options)
                        .await
                        .map_err(|e| format!("sink {spec}: {e}"))?,
                ),
                other => return Err(format!("sink {other} is not available in this version")),
            };
            let mut spool = config.ledger.clone();
            spool.dir = options.spool_for(kind, target);
            let sink = forward::ForwardSink::open(spec.to_string(), upstream, spool, options)
                .await
                .map_err(|e| format!("sink {spec}: spool: {e}"))?;
            Arc::new(sink)
        }
    })
}
