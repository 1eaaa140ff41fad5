//! An older meterd's single ledger file, sealed as it is as the first
//! segment at the first start after an upgrade.

use std::fs::{File, OpenOptions};
use std::io;

use super::{cut, mtime_nanos, write_keys, write_times};
use crate::log::chain;
use crate::log::index;
use crate::log::names::{Names, DATA, TIMES};
use crate::log::times::Commit;
use crate::log::{annotate, LogConfig};

/// The ledger of an earlier meterd: one file per stream, no receive times.
/// It becomes segment 1 as it is, its records received at the file's last
/// modification (so its ids stay remembered for a whole window from then).
/// `None` when it holds no record (it is then emptied and stays active).
pub(in crate::log) fn seal_legacy(
    names: &Names,
    config: &LogConfig,
    now: i64,
) -> io::Result<Option<u64>> {
    let path = names.active_data();
    let data = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| annotate(e, "open", &path))?;
    let started = std::time::Instant::now();
    let len = data.metadata()?.len();
    let scanned = index::scan(&data, len, config.key_of, false, &[])?;
    // Cut a torn last line, and a tail of lines none of which is a record
    // (garbage that a power loss left, even if a newline follows it).
    let keep = trim_unreadable_tail(&data, scanned.end, config)?;
    let scanned = if keep < scanned.end {
        index::scan(&data, keep, config.key_of, false, &[])?
    } else {
        scanned
    };
    cut(names, &data, scanned.end, len)?;
    if scanned.count == 0 {
        return Ok(None);
    }
    let received = mtime_nanos(&data).unwrap_or(now).min(now);
    let first = 1;
    let commits = vec![Commit {
        end_count: scanned.count,
        end_offset: scanned.end,
        received,
    }];
    write_times(
        names,
        &names.sealed(first, TIMES),
        first,
        &commits,
        &scanned.checks,
        now,
    )?;
    write_keys(
        names,
        &data,
        first,
        scanned.count,
        scanned.end,
        &commits,
        &scanned.keyed,
    )?;
    let sha = chain::sha256_of(&data, scanned.end)?;
    chain::write_seal(names, first, scanned.count, scanned.end, sha, None, now)?;
    let to = names.sealed(first, DATA);
    names.rename(&path, &to)?;
    names.sync_dir()?;
    tracing::info!(
        stream = names.stream,
        records = scanned.count,
        unreadable = scanned.unreadable,
        elapsed = ?started.elapsed(),
        segment = %to.display(),
        "sealed the ledger file of an earlier meterd as the first segment; it is indexed once"
    );
    Ok(Some(first))
}

/// Where a tail of unreadable lines starts (the end when there is none).
fn trim_unreadable_tail(data: &File, end: u64, config: &LogConfig) -> io::Result<u64> {
    let mut lines = crate::log::lines::Lines::new(data, 0, end);
    let mut keep = 0;
    while let Some((offset, line)) = lines.next_line()? {
        if (config.key_of)(line).is_ok() {
            keep = offset + line.len() as u64;
        }
    }
    Ok(keep)
}
