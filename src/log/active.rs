//! The active file at open. Its records are walked by its record file
//! (`entries.times`), so what was acknowledged is known exactly: bytes past
//! the last recorded group were never acknowledged and are cut (kept aside
//! in `entries.damaged`); nothing below it is ever cut. A file whose
//! records were damaged is sealed as it is, so that the damage stays where
//! it is, reported to every reader, and new records go to a fresh file.

use std::fs::File;
use std::io;

use sha2::{Digest as _, Sha256};

use super::chain::Head;
use super::disk::Create;
use super::index::{ActiveKeys, SealedKeys};
use super::keys::KeyIndex;
use super::names::{Names, DATA, KEYS, TIMES};
use super::segment::{write_keys, write_times};
use super::state::{Active, Sealed};
use super::times;
use super::{annotate, LogConfig};

mod key_snapshot;
mod recovery;

pub(super) use self::key_snapshot::save_snapshot;
use self::recovery::{recover, Recovered};

/// Recovers the active file (see the module doc). Returns it, and the
/// segment it was sealed into when it held damage (with the new head).
pub(super) fn open_active(
    names: &Names,
    config: &LogConfig,
    expected_first: u64,
    now: i64,
    head: Option<Head>,
) -> io::Result<(Active, Option<(Sealed, Head)>)> {
    let data_path = names.active_data();
    let times_path = names.active_times();
    let created = std::fs::symlink_metadata(&data_path).is_err();
    let data = names.create(&data_path, Create::Append)?;
    let recorded = match times::read(&times_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(annotate(e, "read", &times_path)),
    };
    let times_file_len = std::fs::metadata(&times_path).map_or(0, |m| m.len());
    if let Some(first) = recorded.as_ref().map(|t| t.first).filter(|&f| f > 0) {
        if first < expected_first {
            return Err(super::segment::refuse(format!(
                "the log's files overlap: {} starts at position {first}, but the segments (or seals) beside it hold positions up to {}; move the one that does not belong out of {}",
                data_path.display(),
                expected_first - 1,
                names.dir.display()
            )));
        }
    }
    let r = recover(
        names,
        config,
        &data,
        recorded,
        times_file_len,
        expected_first,
        now,
    )?;
    // The snapshot describes exactly the file it was taken of; never used twice.
    let _ = names.remove(&names.active_keys());
    if !r.damaged.is_empty() || r.shifted_or_lost {
        let (sealed, head) = seal_as_is(names, config, data, &r, head, now)?;
        let active = fresh(names, r.first + r.count, now)?;
        return Ok((active, Some((sealed, head))));
    }
    if r.rewrite {
        write_times(names, &times_path, r.first, &r.commits, &r.checks, now)?;
    }
    if created || r.rewrite {
        names.sync_dir()?;
    }
    let times = names.create(&times_path, Create::Append)?;
    let times_len = times.metadata()?.len();
    let mut keys = ActiveKeys::with_capacity(r.keyed.len());
    for &(hash, offset) in &r.keyed {
        keys.insert_hashed(hash, offset, &data, r.len, config.key_of)?;
    }
    Ok((
        Active {
            first: r.first,
            data: std::sync::Arc::new(data),
            times: std::sync::Arc::new(times),
            count: r.count,
            len: r.len,
            times_len,
            commits: r.commits,
            checks: r.checks,
            keys,
            hash: r.hash,
        },
        None,
    ))
}

/// Seals a damaged active file as it is (see the module doc).
fn seal_as_is(
    names: &Names,
    config: &LogConfig,
    data: File,
    r: &Recovered,
    head: Option<Head>,
    now: i64,
) -> io::Result<(Sealed, Head)> {
    let first = r.first;
    let len = data.metadata()?.len();
    let first_damaged = r.damaged.first().map(|i| first + i);
    tracing::warn!(
        stream = names.stream,
        file = %names.active_data().display(),
        damaged = r.damaged.len(),
        first_damaged,
        "the active file holds damaged records; sealed it as it is, so that readers get DATA_LOSS for them and new records go to a new file"
    );
    crate::metrics::metrics()
        .damaged_records
        .get_or_create(&crate::metrics::FileLabels {
            file: super::names::label(names.stream),
        })
        .inc_by(r.damaged.len() as u64);
    let summary = write_keys(names, &data, first, r.count, len, &r.commits, &r.keyed)?;
    let sha = super::chain::sha256_of(&data, len)?;
    let new_head = super::chain::write_seal(names, first, r.count, len, sha, head, now)?;
    names.sync_dir()?;
    names.rename(&names.active_times(), &names.sealed(first, TIMES))?;
    names.rename(&names.active_data(), &names.sealed(first, DATA))?;
    names.sync_dir()?;
    let cutoff = now.saturating_sub(super::state::window_nanos(config));
    let keys = if summary.received_max >= cutoff {
        let index = KeyIndex::open(&names.sealed(first, KEYS))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.0))?;
        Some(SealedKeys {
            index,
            data: File::open(names.sealed(first, DATA))?,
        })
    } else {
        None
    };
    let sealed = Sealed {
        summary,
        written_len: r.commits.last().map_or(0, |c| c.end_offset),
        bytes_before: 0,
        keys,
    };
    Ok((sealed, new_head))
}

/// A new, empty active file starting at `first`.
fn fresh(names: &Names, first: u64, now: i64) -> io::Result<Active> {
    let times_path = names.active_times();
    write_times(names, &times_path, first, &[], &[], now)?;
    let data = names.create(&names.active_data(), Create::Append)?;
    names.sync_dir()?;
    let times = names.create(&times_path, Create::Append)?;
    Ok(Active {
        first,
        data: std::sync::Arc::new(data),
        times: std::sync::Arc::new(times),
        count: 0,
        len: 0,
        times_len: times::HEADER as u64,
        commits: Vec::new(),
        checks: Vec::new(),
        keys: ActiveKeys::default(),
        hash: Some(Sha256::new()),
    })
}
