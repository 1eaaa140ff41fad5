//! `--sink` specs as users write them (`KIND` or `KIND=TARGET`, several
//! separated by commas), how they are shown (passwords redacted), and the
//! factory that turns one into a running [`Sink`](super::Sink).

use std::sync::Arc;

use super::forward::{self, grpc, http, nats};
use super::{capture, jsonl, nop, stderr, Sink};

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

/// A sink built, and the ledger it writes if it keeps one (for
/// `LedgerService` to read): handed to the server beside the sink, never
/// reached through it.
pub struct Built {
    pub sink: Arc<dyn Sink>,
    pub ledger: Option<Arc<crate::ledger::Ledger>>,
}

/// Builds one sink.
pub async fn build(spec: &SinkSpec, config: &BuildConfig) -> Result<Built, String> {
    let sink: Arc<dyn Sink> = match spec {
        SinkSpec::Jsonl(dir) => {
            let mut ledger = config.ledger.clone();
            if let Some(dir) = dir {
                ledger.dir = dir.clone();
            }
            let sink = jsonl::JsonlSink::open(ledger)
                .await
                .map_err(|e| format!("jsonl sink: {e}"))?;
            let ledger = Some(sink.ledger().clone());
            return Ok(Built {
                sink: Arc::new(sink),
                ledger,
            });
        }
        SinkSpec::Stderr => Arc::new(stderr::StderrSink),
        SinkSpec::Nop => Arc::new(nop::NopSink),
        SinkSpec::Capture => Arc::new(capture::CaptureSink::new()),
        SinkSpec::Forward(kind, target) => {
            let options = &config.forward;
            let upstream: Arc<dyn forward::Upstream> = match kind.as_str() {
                "grpc" => {
                    let target: grpc::Target =
                        target.parse().map_err(|e| format!("sink {spec}: {e}"))?;
                    Arc::new(
                        grpc::GrpcUpstream::new(
                            &target,
                            options.timeout,
                            options.token.as_deref(),
                            options.grpc_ca_file.as_deref(),
                        )
                        .map_err(|e| format!("sink {spec}: {e}"))?,
                    )
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
    };
    Ok(Built { sink, ledger: None })
}
