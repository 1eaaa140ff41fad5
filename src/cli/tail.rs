//! `meterd tail`: one stream of the ledger from a position, optionally
//! following it, printed as the ledger's own lines (byte for byte) or as
//! JSON lines with each record's position and receive time.

use std::io::Write;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::client::{bearer, connect_with};
use crate::pb::ledger_service_client::LedgerServiceClient;
use crate::pb::{self, TailRequest};
use crate::server::ListenAddr;

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Server address: HOST:PORT or unix:/path.
    #[arg(long, value_name = "ADDR", env = "METERD_ADDR")]
    pub addr: ListenAddr,
    /// The stream to read.
    #[arg(long, value_enum)]
    pub stream: Stream,
    /// Start after this position (0: from the first retained record). To resume, give the last position printed.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub after: u64,
    /// Keep printing records as they become durable.
    #[arg(long)]
    pub follow: bool,
    /// line: the ledger lines exactly; jsonl: {"position", "received_at", "record"} per line.
    #[arg(long, value_enum, default_value = "line")]
    pub format: TailFormat,
    /// Only entries of these kinds (repeat for several), e.g. vm.compute.start.
    #[arg(long = "kind", value_name = "KIND")]
    pub kinds: Vec<String>,
    /// Bearer token (a reader token), when the server requires one.
    #[arg(long, env = "METERD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Give up connecting after this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Stream {
    Entries,
    Batches,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TailFormat {
    Line,
    Jsonl,
}

/// `meterd tail`. A closed stdout (`| head`) ends it quietly.
pub async fn tail(args: TailArgs) -> Result<(), String> {
    let kinds = args
        .kinds
        .iter()
        .map(|k| {
            pb::Kind::from_str_name(&format!("KIND_{}", k.replace('.', "_").to_uppercase()))
                .filter(|k| *k != pb::Kind::Unspecified)
                .map(|k| k as i32)
                .ok_or_else(|| format!("--kind: unknown kind {k:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // No request timeout: a followed stream stays open.
    let channel = connect_with(&args.addr, args.connect_timeout, None)
        .await
        .map_err(|e| format!("connect to {}: {e}", args.addr))?;
    let mut request = tonic::Request::new(TailRequest {
        stream: match args.stream {
            Stream::Entries => pb::Stream::Entries,
            Stream::Batches => pb::Stream::Batches,
        } as i32,
        after: args.after,
        follow: args.follow,
        kinds,
    });
    bearer(&mut request, args.token.as_deref())?;
    let mut stream = LedgerServiceClient::new(channel)
        // A batch record may be up to the server's --max-message-bytes,
        // and comes with its decoded copy.
        .max_decoding_message_size(64 << 20)
        .tail(request)
        .await
        .map_err(|s| format!("{}: {}", crate::metrics::code_name(s.code()), s.message()))?
        .into_inner();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    loop {
        let message = stream.message().await;
        let resp = match message {
            Ok(Some(resp)) => resp,
            Ok(None) => break,
            Err(s) => {
                let _ = out.flush();
                return Err(format!(
                    "{}: {}",
                    crate::metrics::code_name(s.code()),
                    s.message()
                ));
            }
        };
        let written = print(&mut out, &resp, args.format).and_then(|()| {
            // Following: show records as they come, not when a buffer fills.
            if resp.caught_up {
                out.flush()
            } else {
                Ok(())
            }
        });
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(format!("writing: {e}")),
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("writing: {e}")),
        _ => Ok(()),
    }
}

fn print(out: &mut impl Write, resp: &pb::TailResponse, format: TailFormat) -> std::io::Result<()> {
    for r in &resp.records {
        match format {
            TailFormat::Line => {
                out.write_all(&r.line)?;
                out.write_all(b"\n")?;
            }
            TailFormat::Jsonl => {
                let received = r
                    .received_at
                    .as_ref()
                    .and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
                    .map_or_else(String::new, |t| t.to_string());
                // The ledger line is JSON already: it goes in as it is.
                write!(
                    out,
                    "{{\"position\":{},\"received_at\":\"{received}\",\"record\":",
                    r.position
                )?;
                out.write_all(&r.line)?;
                out.write_all(b"}\n")?;
            }
        }
    }
    Ok(())
}
