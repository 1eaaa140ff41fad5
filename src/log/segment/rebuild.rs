//! Rebuilding a sealed segment's key index from its records: at open, when
//! the index is missing, damaged or about other data, and while the log
//! runs, when a lookup finds it damaged.

use std::fs::File;
use std::io;

use super::{mtime_nanos, recorded, sealed_layout, write_keys, write_times, Recorded};
use crate::log::chain::{self, Head};
use crate::log::index;
use crate::log::keys::Summary;
use crate::log::names::{Names, DATA, SEAL, TIMES};
use crate::log::walk::Span;
use crate::log::{annotate, now_nanos, LogConfig};

/// Rebuilds the key index of the sealed segment at `first`, found damaged
/// while the log runs. Blocking.
pub(crate) fn reindex(
    names: &Names,
    config: &LogConfig,
    first: u64,
    why: &str,
) -> io::Result<Summary> {
    let data_path = names.sealed(first, DATA);
    let data = File::open(&data_path).map_err(|e| annotate(e, "open", &data_path))?;
    let len = data.metadata()?.len();
    let seal = chain::read(&names.sealed(first, SEAL))
        .ok()
        .and_then(|(s, _)| s.ok());
    let mut rec = recorded(names, first, seal)?;
    Ok(rebuild(names, config, &data, first, &mut rec, len, why, None)?.0)
}

/// Rebuilds a sealed segment's key index from its records (walked by its
/// record file). Where the record file is of format 1, or missing while the
/// segment still matches its seal, it is written anew with every record's
/// check; with `backfill`, a missing seal is written. Returns the summary
/// and the new seal's head, if one was written.
#[allow(clippy::too_many_arguments)]
pub(super) fn rebuild(
    names: &Names,
    config: &LogConfig,
    data: &File,
    first: u64,
    rec: &mut Recorded,
    len: u64,
    why: &str,
    backfill: Option<Option<Head>>,
) -> io::Result<(Summary, Option<Head>)> {
    let started = std::time::Instant::now();
    let fallback_received = rec
        .seal
        .as_ref()
        .and_then(|s| s.sealed_at.parse::<jiff::Timestamp>().ok())
        .and_then(|t| i64::try_from(t.as_nanosecond()).ok())
        .or_else(|| mtime_nanos(data))
        .unwrap_or(0);
    let (format_1, matches_seal) = trust(rec, data, len)?;
    let (commits, checks) = sealed_layout(
        rec.times.take(),
        rec.count,
        rec.written_len,
        fallback_received,
    );
    let walked = index::walk_records(
        data,
        Span {
            commits: &commits,
            start: (0, 0),
            checks: &checks,
            trust_unchecked: format_1 || matches_seal,
        },
        config.key_of,
        config.trusted_key_of,
    )?;
    // The record file is written anew only where nothing is lost by it: a
    // format-1 file gains checks, a missing one is made again from a
    // segment that matches its seal.
    let intact = walked.damaged.is_empty() && !walked.shifted;
    if intact && (format_1 || matches_seal) {
        write_times(
            names,
            &names.sealed(first, TIMES),
            first,
            &commits,
            &walked.checks,
            now_nanos(),
        )?;
    }
    let summary = write_keys(names, data, first, rec.count, len, &commits, &walked.keyed)?;
    let mut head = None;
    if let (Some(prev), None) = (backfill, &rec.seal) {
        let sha = match walked.sha256() {
            Some(h) if walked.end == len => h,
            _ => chain::sha256_of(data, len)?,
        };
        head = Some(chain::write_seal(
            names,
            first,
            rec.count,
            len,
            sha,
            prev,
            now_nanos(),
        )?);
    }
    names.sync_dir()?;
    if !walked.damaged.is_empty() {
        report_damaged(names, first, &walked.damaged);
    }
    tracing::info!(stream = names.stream, first, reason = why, elapsed = ?started.elapsed(), "rebuilt the key index of a segment from its records");
    Ok((summary, head))
}

/// How far a sealed segment's lines may be trusted without their checks:
/// whether its record file is of format 1 (no checks: its lines are what an
/// earlier meterd acknowledged), and whether, having lost checks, it still
/// matches its seal.
fn trust(rec: &Recorded, data: &File, len: u64) -> io::Result<(bool, bool)> {
    let format_1 = rec
        .times
        .as_ref()
        .is_some_and(|t| t.checks.is_empty() && t.count() > 0);
    // A segment whose record file is gone or lost some checks can still be
    // read by its lines if it is provably the segment sealed: its SHA-256
    // is its seal's. Its record file is then made whole again.
    let lost_checks = rec
        .times
        .as_ref()
        .is_none_or(|t| !format_1 && (!t.fully_checked() || t.lost_groups > 0));
    let matches_seal = match &rec.seal {
        Some(s) if lost_checks => {
            s.bytes == len && chain::hex(&chain::sha256_of(data, len)?) == s.sha256
        }
        _ => false,
    };
    Ok((format_1, matches_seal))
}

/// Reports the damaged records (indexes within the segment, not empty)
/// that a rebuild of the segment at `first` found.
fn report_damaged(names: &Names, first: u64, damaged: &[u64]) {
    tracing::warn!(
        stream = names.stream,
        segment = %names.sealed(first, DATA).display(),
        damaged = damaged.len(),
        first_damaged = first + damaged[0],
        "a sealed segment holds damaged records; readers get DATA_LOSS for them, `meterd verify` lists them"
    );
    crate::metrics::metrics()
        .damaged_records
        .get_or_create(&crate::metrics::FileLabels {
            file: crate::log::names::label(names.stream),
        })
        .inc_by(damaged.len() as u64);
}
