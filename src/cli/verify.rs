//! `meterd verify`: checks a ledger directory against its seals and
//! checksums (see `log::verify`) and prints, per stream, the verified
//! range, the unsealed tail, the chain head and the first failure. Reads
//! only; safe beside a running meterd. Exits 0 only when everything holds.

use std::path::PathBuf;

use clap::Args;

use super::tail::Stream;
use crate::log::verify::{verify as verify_stream, Report};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The ledger directory.
    #[arg(long, value_name = "DIR", env = "METERD_LEDGER")]
    pub ledger: PathBuf,
    /// Only this stream (default: every stream).
    #[arg(long, value_enum)]
    pub stream: Option<Stream>,
    /// A chain head recorded elsewhere (hex SHA-256, as `Head` or an earlier
    /// verify printed it): the chain must still hold it. Applies to --stream,
    /// else to entries; `batches=HASH` names the stream. Repeat for several.
    #[arg(long = "head", value_name = "[STREAM=]HASH")]
    pub heads: Vec<String>,
    /// Every failure, not only the first of each stream.
    #[arg(long)]
    pub all: bool,
}

fn name(s: Stream) -> &'static str {
    match s {
        Stream::Entries => "entries",
        Stream::Batches => "batches",
    }
}

/// `meterd verify`.
pub async fn verify(args: VerifyArgs) -> Result<(), String> {
    let streams: Vec<&'static str> = match args.stream {
        Some(s) => vec![name(s)],
        None => vec!["entries", "batches"],
    };
    let default_stream = args.stream.map_or("entries", name);
    let mut heads: Vec<(&'static str, String)> = Vec::new();
    for h in &args.heads {
        let (stream, hash) = match h.split_once('=') {
            Some(("entries", hash)) => ("entries", hash),
            Some(("batches", hash)) => ("batches", hash),
            Some((other, _)) => {
                return Err(format!(
                    "--head {h}: unknown stream {other:?} (entries or batches)"
                ))
            }
            None => (default_stream, h.as_str()),
        };
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("--head {h}: not a hex SHA-256 (64 hex digits)"));
        }
        heads.push((stream, hash.to_owned()));
    }
    if !args.ledger.is_dir() {
        return Err(format!(
            "--ledger {}: not a directory",
            args.ledger.display()
        ));
    }
    let dir = args.ledger.clone();
    let reports = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for stream in streams {
            let wanted: Vec<&String> = heads
                .iter()
                .filter(|(s, _)| *s == stream)
                .map(|(_, h)| h)
                .collect();
            let mut report = verify_stream(&dir, stream, wanted.first().map(|h| h.as_str()))?;
            for h in wanted.iter().skip(1) {
                let more = verify_stream(&dir, stream, Some(h.as_str()))?;
                report
                    .failures
                    .extend(more.failures.into_iter().filter(|f| f.position.is_none()));
            }
            out.push(report);
        }
        Ok::<_, std::io::Error>(out)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let mut failed = 0;
    for r in &reports {
        print!("{}", render(r, args.all));
        failed += r.failures.len();
    }
    if failed > 0 {
        return Err(format!(
            "verification failed: {failed} problem{} found",
            if failed == 1 { "" } else { "s" }
        ));
    }
    println!("ok");
    Ok(())
}

fn range(r: Option<(u64, u64)>) -> String {
    r.map_or_else(|| "none".to_owned(), |(a, b)| format!("positions {a}..{b}"))
}

/// The report of one stream as text.
pub fn render(r: &Report, all: bool) -> String {
    let mut out = format!("stream {}\n", r.stream);
    out.push_str(&format!(
        "  sealed:        {} ({} segments checked, {} retired with their seals kept)\n",
        range(r.sealed),
        r.segments_checked,
        r.segments_retired
    ));
    out.push_str(&format!("  unsealed tail: {}", range(r.unsealed)));
    if r.unacknowledged_bytes > 0 {
        out.push_str(&format!(
            ", then {} bytes never acknowledged",
            r.unacknowledged_bytes
        ));
    }
    out.push('\n');
    out.push_str(&format!(
        "  chain head:    {}\n",
        r.head.as_deref().unwrap_or("none (nothing sealed yet)")
    ));
    out.push_str(&format!("  checked:       {} bytes\n", r.bytes));
    if r.failures.is_empty() {
        out.push_str("  result:        ok\n");
    }
    for (i, f) in r.failures.iter().enumerate() {
        if i > 0 && !all {
            out.push_str(&format!(
                "  ... and {} more (--all lists them)\n",
                r.failures.len() - 1
            ));
            break;
        }
        let at = f
            .position
            .map_or_else(String::new, |p| format!("position {p}: "));
        let file = f.file.file_name().map_or_else(
            || f.file.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let label = if i == 0 { "FAILED:" } else { "also:" };
        out.push_str(&format!("  {label:<14} {at}{} ({file})\n", f.reason));
    }
    out
}
