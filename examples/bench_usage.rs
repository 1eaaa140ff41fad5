//! The usage benchmark (`scripts/bench_usage`): generates a month of ledger
//! and times `Usage` over it, one step per process so that each step's
//! peak memory is its own.
//!
//! ```sh
//! cargo run --release --example bench_usage -- gen --dir /tmp/month --size 1GiB
//! cargo run --release --example bench_usage -- decode --dir /tmp/month   # the decoding ceiling
//! cargo run --release --example bench_usage -- full --dir /tmp/month     # the full fold
//! cargo run --release --example bench_usage -- build --dir /tmp/month    # write the checkpoints
//! cargo run --release --example bench_usage -- day --dir /tmp/month --day 15
//! ```
//!
//! Each step prints one JSON line: what it did, how long it took, its peak
//! resident memory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, Subcommand};
use meterd::log::{testing::write_segment, Snapshot};
use meterd::read::build::Checkpoints;
use meterd::read::usage::answer;
use meterd::record::{Entry, Kind, Reason, Shape};
use meterd::usage::{Granularity, Query};
use serde_json::json;
use time::OffsetDateTime;

const SEC: i128 = 1_000_000_000;
const DAY: i128 = 86_400 * SEC;
const DAYS: i128 = 30;
/// Where `gen` notes when its month began (Unix nanoseconds), for the
/// queries of the other steps.
const BASE_FILE: &str = "bench-base";

/// The start of the generated month: 30 days before it was generated, so
/// that the ledger ends now, as a live one does (a month in the past would
/// have its active file sealed by age as soon as it is opened).
fn base(dir: &Path) -> Result<i128, Box<dyn std::error::Error>> {
    Ok(std::fs::read_to_string(dir.join(BASE_FILE))?
        .trim()
        .parse()?)
}

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    step: Step,
}

#[derive(Subcommand)]
enum Step {
    /// Writes a ledger of about SIZE bytes of entries over the last 30 days,
    /// sealed daily (as --segment-max-age 1day does), each record received
    /// within two seconds of being emitted.
    Gen {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "1GiB", value_parser = meterd::cli::parse_size)]
        size: i64,
        /// Also seal at this size (0: daily only).
        #[arg(long, default_value = "0", value_parser = meterd::cli::parse_size)]
        segment_bytes: i64,
        #[arg(long, default_value_t = 20_000)]
        vms: u64,
        /// The UTC hour at which each day's segment is sealed (a meterd
        /// seals by age, so at the hour it happened to start).
        #[arg(long, default_value_t = 12)]
        seal_hour: i128,
    },
    /// Reads and decodes every entry (no pairing): the scan's ceiling.
    Decode {
        #[arg(long)]
        dir: PathBuf,
    },
    /// The whole month, day buckets in Europe/Berlin, with no checkpoint.
    Full {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Builds every missing checkpoint.
    Build {
        #[arg(long)]
        dir: PathBuf,
    },
    /// One day (Europe/Berlin) through the checkpoints, the answer
    /// consumed as a server streams it; with --check, compared with the
    /// full fold.
    Day {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 15)]
        day: i128,
        /// Hour buckets instead of one bucket for the day (24 times the rows).
        #[arg(long)]
        hours: bool,
        #[arg(long)]
        check: bool,
    },
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().step {
        Step::Gen {
            dir,
            size,
            segment_bytes,
            vms,
            seal_hour,
        } => gen(&dir, size as u64, segment_bytes as u64, vms, seal_hour),
        Step::Decode { dir } => decode(&dir),
        Step::Full { dir } => full(&dir),
        Step::Build { dir } => build(&dir),
        Step::Day {
            dir,
            day,
            hours,
            check,
        } => one_day(&dir, day, hours, check),
    }
}

fn gen(
    dir: &Path,
    size: u64,
    segment_bytes: u64,
    vms: u64,
    seal_hour: i128,
) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let now = jiff::Timestamp::now().as_nanosecond();
    let base = now - DAYS * DAY;
    std::fs::write(dir.join(BASE_FILE), base.to_string())?;
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(1);
    // About 240 bytes a line: the step between records that fills the month.
    let records = size / 240;
    let step = DAYS * DAY / i128::from(records.max(1) as i64);
    let mut running = vec![false; (vms * 3) as usize];
    let mut seg: Vec<(Vec<u8>, i64)> = Vec::new();
    let (mut seg_bytes, mut seg_day) = (0u64, 0i128);
    let (mut first, mut position, mut total, mut segments) = (1u64, 0u64, 0u64, 0u64);
    let mut received = base;
    let mut entry = Entry {
        kind: Kind::VmComputeStart,
        vm_id: String::new(),
        snapshot_id: String::new(),
        source_snapshot_id: String::new(),
        reason: None,
        hypervisor: String::new(),
        shape: Shape::default(),
        emitted_at: OffsetDateTime::UNIX_EPOCH,
        id: String::new(),
    };
    let flush = |seg: &mut Vec<(Vec<u8>, i64)>, first: &mut u64, sealed: bool| {
        let n = write_segment(
            dir,
            "entries",
            *first,
            sealed,
            seg.iter().map(|(l, r)| (l.as_slice(), *r)),
        )?;
        *first += n;
        seg.clear();
        Ok::<_, std::io::Error>(())
    };
    while total < size {
        position += 1;
        let at = base + i128::from(position as i64) * step;
        received = received.max(at + i128::from(rng.u32(..2_000_000_000)));
        let slot = rng.u64(..vms * 3);
        let vm = slot / 3;
        let family = slot % 3;
        let state = &mut running[slot as usize];
        // One record in 50 breaks the lifecycle (duplicates, orphans).
        let start = if rng.u8(..50) == 0 {
            rng.bool()
        } else {
            !*state
        };
        *state = start;
        entry.kind = match (family, start) {
            (0, true) => Kind::VmComputeStart,
            (0, false) => Kind::VmComputeStop,
            (1, true) => Kind::VmStorageStart,
            (1, false) => Kind::VmStorageStop,
            (_, true) => Kind::SnapStorageStart,
            (_, false) => Kind::SnapStorageStop,
        };
        entry.reason = Some(if start {
            Reason::Boot
        } else {
            Reason::StopUser
        });
        entry.vm_id.clear();
        entry.snapshot_id.clear();
        if family == 2 {
            let _ = write!(entry.snapshot_id, "snap-{vm:08x}-4e5a-9b7c-2d1e0f9a8b7c");
        } else {
            let _ = write!(entry.vm_id, "vm-{vm:08x}-3f4d-4e5a-9b7c-2d1e0f9a8b7c");
        }
        entry.hypervisor.clear();
        let _ = write!(entry.hypervisor, "cloud-hypervisor-{:03}", vm % 200);
        entry.shape = Shape {
            cpu: if family == 0 { 1 << (vm % 4) } else { 0 },
            mem_bytes: if family == 0 {
                (1 << 30) << (vm % 4)
            } else {
                0
            },
            storage_bytes: if family == 0 {
                0
            } else {
                (10 << 30) * (1 + (vm % 8) as i64)
            },
        };
        entry.emitted_at = OffsetDateTime::from_unix_timestamp_nanos(at)?;
        entry.id.clear();
        let _ = write!(entry.id, "e-{position:012}");
        let mut line = Vec::with_capacity(256);
        meterd::wire::entry_line(&entry, &mut line);
        total += line.len() as u64;
        seg_bytes += line.len() as u64;
        // Sealed daily at `seal_hour` UTC: the active file then holds less
        // than a day, younger than --segment-max-age.
        let day = (received - seal_hour * 3600 * SEC).div_euclid(DAY);
        if !seg.is_empty() && (day != seg_day || (segment_bytes > 0 && seg_bytes > segment_bytes)) {
            flush(&mut seg, &mut first, true)?;
            segments += 1;
            seg_bytes = line.len() as u64;
        }
        seg_day = day;
        seg.push((line, i64::try_from(received)?));
    }
    flush(&mut seg, &mut first, false)?;
    // Open it once as meterd would, which writes the sealed segments' key
    // indexes (with the summaries a reader lists segments by).
    let opened = Instant::now();
    let mut config = meterd::ledger::LedgerConfig::new(dir);
    config.fsync = meterd::ledger::Fsync::Never;
    drop(meterd::ledger::Ledger::open(&config)?);
    report(json!({
        "step": "open", "seconds": opened.elapsed().as_secs_f64(),
    }));
    report(json!({
        "step": "gen", "records": position, "bytes": total, "sealed_segments": segments,
        "seal_hour": seal_hour as i64,
        "seconds": started.elapsed().as_secs_f64(),
    }));
    Ok(())
}

fn decode(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let snap = Snapshot::open(dir, "entries")?;
    let started = Instant::now();
    let cpu0 = cpu();
    let mut reader = snap.reader(0)?;
    let (mut records, mut bytes, mut sum) = (0u64, 0u64, 0i128);
    loop {
        let n = reader.visit(64 * 1024, 8 << 20, |_, _, line| {
            bytes += line.len() as u64;
            if let Ok(e) = meterd::wire::entry_fields(line) {
                sum = sum.wrapping_add(e.emitted_at);
                records += 1;
            }
        })?;
        if n == 0 {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_secs = cpu() - cpu0;
    report(json!({
        "step": "decode", "records": records, "bytes": bytes, "seconds": secs,
        "cpu_seconds": cpu_secs, "mb_per_cpu_s": bytes as f64 / 1e6 / cpu_secs,
        "mb_per_s": bytes as f64 / 1e6 / secs, "checksum": (sum % 1000) as i64,
    }));
    Ok(())
}

/// The whole month and a day either side, in Berlin days.
fn month_query(base: i128) -> Query {
    Query {
        start: base - DAY,
        end: base + (DAYS + 1) * DAY,
        granularity: Granularity::Day,
        time_zone: "Europe/Berlin".into(),
        as_of: None,
        families: Vec::new(),
        id: None,
        now: base + (DAYS + 1) * DAY,
    }
}

/// The Berlin calendar day that holds `base + day` days, in one bucket or
/// hour buckets.
fn day_query(base: i128, day: i128, hours: bool) -> Result<Query, Box<dyn std::error::Error>> {
    let tz = jiff::tz::TimeZone::get("Europe/Berlin")?;
    let at = jiff::Timestamp::from_nanosecond(base + day * DAY)?;
    let date = tz.to_datetime(at).date();
    let start = tz.to_timestamp(date.to_datetime(jiff::civil::Time::midnight()))?;
    let next = date.tomorrow()?.to_datetime(jiff::civil::Time::midnight());
    let end = tz.to_timestamp(next)?;
    Ok(Query {
        start: start.as_nanosecond(),
        end: end.as_nanosecond(),
        granularity: if hours {
            Granularity::Hour
        } else {
            Granularity::Day
        },
        ..month_query(base)
    })
}

fn full(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let snap = Snapshot::open(dir, "entries")?;
    let bytes: u64 = snap.segments().iter().map(|s| s.data_len).sum::<u64>()
        + std::fs::metadata(dir.join("entries.jsonl")).map_or(0, |m| m.len());
    let started = Instant::now();
    let cpu0 = cpu();
    let upto = snap.end();
    let plan = Checkpoints::new().plan(&snap, false)?;
    let got = answer(&snap, &plan, &month_query(base(dir)?), upto)?;
    let folded = started.elapsed().as_secs_f64();
    let (mut rows, mut anomalies) = (0usize, 0usize);
    for u in got.report {
        rows += u.rows.len();
        anomalies += u.anomalies.len();
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_secs = cpu() - cpu0;
    report(json!({
        "step": "full", "cpu_seconds": cpu_secs, "mb_per_cpu_s": bytes as f64 / 1e6 / cpu_secs, "records": got.stats.records, "bytes": bytes,
        "checkpoint": got.stats.checkpoint, "rows": rows, "anomalies": anomalies,
        "fold_seconds": folded, "seconds": secs, "mb_per_s": bytes as f64 / 1e6 / secs,
    }));
    Ok(())
}

fn build(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let snap = Snapshot::open(dir, "entries")?;
    let started = Instant::now();
    let cpu0 = cpu();
    let plan = Checkpoints::new().plan(&snap, true)?;
    report(json!({
        "step": "build", "checkpoints": plan.metas.iter().flatten().count(),
        "seconds": started.elapsed().as_secs_f64(), "cpu_seconds": cpu() - cpu0,
    }));
    Ok(())
}

/// As a running meterd answers: the ledger open, one checkpoint store kept
/// across queries (the first query also learns the active segment's range
/// of `emitted_at`, which lets later ones skip it).
fn one_day(
    dir: &Path,
    day: i128,
    hours: bool,
    check: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = meterd::ledger::LedgerConfig::new(dir);
    config.fsync = meterd::ledger::Fsync::Never;
    let ledger = meterd::ledger::Ledger::open(&config)?;
    let log = &ledger.entries;
    let store = Checkpoints::new();
    let query = day_query(base(dir)?, day, hours)?;
    for run in 0..3 {
        let started = Instant::now();
        let cpu0 = cpu();
        let upto = log.end();
        let plan = store.plan(log, true)?;
        let got = answer(log, &plan, &query, upto)?;
        if let Some(a) = got.active {
            store.remember(a);
        }
        let folded = started.elapsed().as_secs_f64();
        let cpu_folded = cpu() - cpu0;
        let (mut ids, mut rows, mut anomalies) = (0usize, 0usize, 0usize);
        // What a server does with each (family, id): its protobuf rows.
        let mut kept = Vec::new();
        for u in got.report {
            ids += 1;
            rows += u.rows.len();
            anomalies += u.anomalies.len();
            if check && run == 0 {
                kept.push(u);
            } else {
                std::hint::black_box(u.to_pb());
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu_secs = cpu() - cpu0;
        let mut same = None;
        if check && run == 0 {
            let no_checkpoints = meterd::read::build::Plan {
                metas: vec![None; plan.metas.len()],
                active: None,
                ..plan.clone()
            };
            let slow: Vec<_> = answer(log, &no_checkpoints, &query, upto)?.report.collect();
            same = Some(slow == kept);
        }
        report(json!({
            "step": "day", "run": run, "day": day as i64, "hours": hours, "seconds": secs,
            "fold_seconds": folded, "cpu_seconds": cpu_secs, "fold_cpu_seconds": cpu_folded, "records": got.stats.records,
            "checkpoint": got.stats.checkpoint, "skipped_segments": got.stats.skipped,
            "skipped_block_records": got.stats.skipped_blocks,
            "skipped_active_records": got.stats.skipped_active, "restarts": got.stats.restarts,
            "ids": ids, "rows": rows, "anomalies": anomalies, "equals_full_fold": same,
        }));
    }
    Ok(())
}

/// CPU time of the calling thread so far, in seconds (from the scheduler's
/// own accounting, in nanoseconds): on a shared machine, wall time counts
/// the other tenants too.
fn cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// Prints one JSON line with the process's peak resident memory added.
fn report(mut v: serde_json::Value) {
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    v["peak_rss_mib"] = json!(hwm / 1024);
    println!("{v}");
}
