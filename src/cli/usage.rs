//! `meterd usage`: billable usage over a time range, from a running meterd
//! (`--addr`) or straight from a ledger directory (`--ledger`, read as a
//! snapshot: no lock, no recovery, nothing written, fine beside a running
//! meterd), printed as a table, CSV or JSON lines.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, ValueEnum};
use jiff::tz::TimeZone;

use super::client::{bearer, connect};
use super::usage_output::{Format, Output, Rows};
use crate::log::Snapshot;
use crate::pb::ledger_service_client::LedgerServiceClient;
use crate::pb::{self, UsageRequest};
use crate::read::build::Checkpoints;
use crate::read::usage::{answer, responses};
use crate::server::ListenAddr;
use crate::usage::Query;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["addr", "ledger"])))]
pub struct UsageArgs {
    /// Ask a running meterd: HOST:PORT or unix:/path.
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<ListenAddr>,
    /// Read a ledger directory directly (also one that a running meterd is writing).
    #[arg(long, value_name = "DIR")]
    pub ledger: Option<PathBuf>,
    /// Start of the range, inclusive: RFC 3339 (2026-03-29T00:00:00Z), or a date or date-time without offset, read in --time-zone (2026-03-29).
    #[arg(long, value_name = "TIME")]
    pub from: String,
    /// End of the range, exclusive; as --from.
    #[arg(long, value_name = "TIME")]
    pub to: String,
    /// Calendar buckets in --time-zone [default: one bucket for the whole range].
    #[arg(long, value_enum)]
    pub granularity: Option<Granularity>,
    /// IANA time zone of the buckets, of times without offset, and of the times printed.
    #[arg(long, value_name = "TZ", default_value = "UTC")]
    pub time_zone: String,
    /// Only records received at or before this time, to reproduce an earlier answer; as --from.
    #[arg(long, value_name = "TIME")]
    pub as_of: Option<String>,
    /// How to print the answer.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Only these families (repeat for several).
    #[arg(long = "family", value_enum, value_name = "FAMILY")]
    pub families: Vec<Family>,
    /// Only this VM (vm_id) or snapshot (snapshot_id).
    #[arg(long)]
    pub id: Option<String>,
    /// Bearer token (a reader token), when the server requires one.
    #[arg(long, env = "METERD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Give up on a server after this long.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Granularity {
    Hour,
    Day,
    Month,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Family {
    #[value(name = "vm.compute", alias = "vm-compute")]
    VmCompute,
    #[value(name = "vm.storage", alias = "vm-storage")]
    VmStorage,
    #[value(name = "snap.storage", alias = "snap-storage")]
    SnapStorage,
}

/// `meterd usage`.
pub async fn usage(args: UsageArgs) -> Result<(), String> {
    let tz =
        crate::usage::time_zone(&args.time_zone).map_err(|e| format!("--time-zone: {}", e.rule))?;
    let request = request(&args, &tz)?;
    let mut out = Output::new(args.format, tz, std::io::stdout().lock());
    match (&args.addr, &args.ledger) {
        (Some(addr), _) => remote(addr, &args, request, &mut out).await?,
        (None, Some(dir)) => {
            let dir = dir.clone();
            let rows = tokio::task::spawn_blocking(move || local(&dir, &request))
                .await
                .map_err(|e| e.to_string())??;
            out.add(rows).map_err(write_error)?;
        }
        (None, None) => return Err("give --addr ADDR or --ledger DIR".into()),
    }
    out.finish().map_err(write_error)
}

fn write_error(e: std::io::Error) -> String {
    format!("writing the answer: {e}")
}

/// The request the flags describe.
fn request(args: &UsageArgs, tz: &TimeZone) -> Result<UsageRequest, String> {
    let time = |flag: &str, s: &str| {
        parse_time(s, tz)
            .map(|t| crate::usage::timestamp(t.as_nanosecond()))
            .map_err(|e| format!("{flag}: {e}"))
    };
    Ok(UsageRequest {
        start_time: Some(time("--from", &args.from)?),
        end_time: Some(time("--to", &args.to)?),
        granularity: match args.granularity {
            None => pb::Granularity::Unspecified,
            Some(Granularity::Hour) => pb::Granularity::Hour,
            Some(Granularity::Day) => pb::Granularity::Day,
            Some(Granularity::Month) => pb::Granularity::Month,
        } as i32,
        time_zone: args.time_zone.clone(),
        as_of: args
            .as_of
            .as_deref()
            .map(|s| time("--as-of", s))
            .transpose()?,
        families: args
            .families
            .iter()
            .map(|f| match f {
                Family::VmCompute => pb::Family::VmCompute,
                Family::VmStorage => pb::Family::VmStorage,
                Family::SnapStorage => pb::Family::SnapStorage,
            } as i32)
            .collect(),
        id: args.id.clone().unwrap_or_default(),
    })
}

/// RFC 3339, or a civil date or date-time read in `tz`.
pub fn parse_time(s: &str, tz: &TimeZone) -> Result<jiff::Timestamp, String> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    let civil = s
        .parse::<jiff::civil::DateTime>()
        .or_else(|_| s.parse::<jiff::civil::Date>().map(|d| d.to_datetime(jiff::civil::Time::midnight())))
        .map_err(|_| {
            format!("{s:?} is not a time (RFC 3339 such as 2026-03-29T00:00:00Z, or 2026-03-29 in --time-zone)")
        })?;
    // A civil time in a DST gap or fold resolves as jiff's "compatible"
    // rule says (as the buckets do).
    tz.to_timestamp(civil).map_err(|e| format!("{s:?}: {e}"))
}

async fn remote(
    addr: &ListenAddr,
    args: &UsageArgs,
    request: UsageRequest,
    out: &mut Output<impl std::io::Write>,
) -> Result<(), String> {
    let channel = connect(addr, args.timeout)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let mut request = tonic::Request::new(request);
    bearer(&mut request, args.token.as_deref())?;
    let mut stream = LedgerServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .usage(request)
        .await
        .map_err(|s| format!("{}: {}", crate::metrics::code_name(s.code()), s.message()))?
        .into_inner();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| format!("{}: {}", crate::metrics::code_name(s.code()), s.message()))?
    {
        out.add(Rows {
            rows: chunk.rows,
            anomalies: chunk.anomalies,
        })
        .map_err(write_error)?;
    }
    Ok(())
}

/// The answer read from a ledger directory. Blocking.
fn local(dir: &std::path::Path, request: &UsageRequest) -> Result<Rows, String> {
    let now = jiff::Timestamp::now().as_nanosecond();
    let query = Query::from_pb(request, now).map_err(|e| e.to_string())?;
    let snap =
        Snapshot::open(dir, "entries").map_err(|e| format!("--ledger {}: {e}", dir.display()))?;
    let upto = snap.end();
    // Reads the checkpoints a meterd wrote; builds none (nothing is written).
    let plan = Checkpoints::new()
        .plan(&snap, false)
        .map_err(|e| e.to_string())?;
    let got = answer(&snap, &plan, &query, upto).map_err(|e| e.to_string())?;
    let mut rows = Rows::default();
    responses(got.report, usize::MAX, |pb| {
        rows.rows.extend(pb.rows);
        rows.anomalies.extend(pb.anomalies);
        true
    });
    Ok(rows)
}
