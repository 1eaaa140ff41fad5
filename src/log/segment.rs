//! Sealed segments at open: an older meterd's single file sealed as the
//! first segment; each segment's positions taken from what was recorded
//! (its record file and its seal), never recounted from its lines; its key
//! index checked and rebuilt from the records when it is missing, damaged
//! or about other data. Also the writers of the `.times` and `.keys` files.

use std::fs::{File, OpenOptions};
use std::io;

use super::chain::{Head, Seal};
use super::disk::Create;
use super::index::{self, SealedKeys};
use super::keys::{self, KeyEntry, KeyIndex, Summary};
use super::names::{Names, DATA, KEYS, TIMES};
use super::state::Sealed;
use super::times::{self, Check, Commit, Times};
use super::walk::Span;
use super::{annotate, LogConfig};

/// The ledger of an earlier meterd: one file per stream, no receive times.
/// It becomes segment 1 as it is, its records received at the file's last
/// modification (so its ids stay remembered for a whole window from then).
/// `None` when it holds no record (it is then emptied and stays active).
pub(super) fn seal_legacy(names: &Names, config: &LogConfig, now: i64) -> io::Result<Option<u64>> {
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
    let sha = super::chain::sha256_of(&data, scanned.end)?;
    super::chain::write_seal(names, first, scanned.count, scanned.end, sha, None, now)?;
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
    let mut lines = super::lines::Lines::new(data, 0, end);
    let mut keep = 0;
    while let Some((offset, line)) = lines.next_line()? {
        if (config.key_of)(line).is_ok() {
            keep = offset + line.len() as u64;
        }
    }
    Ok(keep)
}

/// Writes a record file (format 2) through a synced temporary file.
pub(crate) fn write_times(
    names: &Names,
    path: &std::path::Path,
    first: u64,
    commits: &[Commit],
    checks: &[Check],
    now: i64,
) -> io::Result<()> {
    names.write_file(path, &times::encode(first, now, commits, checks))
}

/// Writes a sealed segment's key index from scanned `(hash, offset)` keys.
pub(crate) fn write_keys(
    names: &Names,
    data: &File,
    first: u64,
    count: u64,
    data_len: u64,
    commits: &[Commit],
    keyed: &[(u64, u64)],
) -> io::Result<Summary> {
    let summary = Summary {
        first,
        count,
        data_len,
        received_min: commits.first().map_or(0, |c| c.received),
        received_max: commits.last().map_or(0, |c| c.received),
        tail_hash: keys::tail_hash(data, data_len)?,
    };
    let mut entries: Vec<KeyEntry> = keyed
        .iter()
        .map(|&(hash, offset)| KeyEntry {
            hash,
            offset,
            received: times::received_at_offset(commits, offset).unwrap_or(summary.received_max),
        })
        .collect();
    keys::write(names, &names.sealed(first, KEYS), &summary, &mut entries)?;
    Ok(summary)
}

/// The commits and checks of a sealed segment of `count` records written in
/// `written_len` bytes: its record file's, cut to `count`, and where it
/// holds fewer (damaged, torn or missing) one more commit for the rest,
/// received at `received` (the newest receive time known), with unknown
/// checks.
pub(crate) fn sealed_layout(
    times: Option<Times>,
    count: u64,
    written_len: u64,
    received: i64,
) -> (Vec<Commit>, Vec<Check>) {
    let Times {
        mut commits,
        mut checks,
        ..
    } = times.unwrap_or_default();
    commits.retain(|c| c.end_count <= count && c.end_offset <= written_len);
    let have = commits.last().map_or(0, |c| c.end_count);
    if have < count {
        let received = commits
            .last()
            .map_or(received, |c| c.received.max(received));
        commits.push(Commit {
            end_count: count,
            end_offset: written_len.max(commits.last().map_or(0, |c| c.end_offset)),
            received,
        });
    }
    if !checks.is_empty() {
        checks.resize(usize::try_from(count).unwrap_or(0), Check::UNKNOWN);
    }
    (commits, checks)
}

/// What the recorded files say of a sealed segment: its record file and
/// seal, checked against each other and the segment's name.
pub(crate) struct Recorded {
    pub times: Option<Times>,
    pub seal: Option<Seal>,
    pub count: u64,
    pub written_len: u64,
}

/// Reads a sealed segment's record file and takes its positions from it and
/// from its seal. Refuses a segment whose files name another first
/// position than its name (copied or renamed), and one with neither: its
/// positions cannot be known.
pub(crate) fn recorded(names: &Names, first: u64, seal: Option<Seal>) -> io::Result<Recorded> {
    let times_path = names.sealed(first, TIMES);
    let times = match times::read(&times_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(annotate(e, "read", &times_path)),
    };
    let data_path = names.sealed(first, DATA);
    if let Some(t) = times.as_ref().filter(|t| t.first != 0 && t.first != first) {
        return Err(refuse(format!(
            "{} says its segment starts at position {}, but {} is named for position {first}: a segment copied or renamed? Move it out of the ledger directory",
            times_path.display(),
            t.first,
            data_path.display()
        )));
    }
    if let Some(s) = seal
        .as_ref()
        .filter(|s| s.first != first || s.stream != names.stream)
    {
        return Err(refuse(format!(
            "{} is the seal of {} positions {}..{}, but it is named for {} position {first}: a segment copied or renamed? Move it out of the ledger directory",
            names.sealed(first, "seal").display(),
            s.stream,
            s.first,
            s.last,
            names.stream
        )));
    }
    let (count, written_len) = match (&seal, &times) {
        (Some(s), _) => (s.count, s.bytes),
        (None, Some(t)) if t.count() > 0 => {
            let written = t.commits.last().map_or(0, |c| c.end_offset);
            // A sealed segment is never appended to: where its record file
            // was cut short (a torn or damaged tail), bytes past what it
            // covers were records of it. Counted so that no position of them is given again
            // (a count too high leaves a gap; one too low would renumber).
            let extra = if t.valid_len < t.len {
                lines_after(&data_path, written)?
            } else {
                (0, 0)
            };
            (t.count() + extra.0, written.max(extra.1))
        }
        _ => {
            return Err(refuse(format!(
                "{} has no readable record file ({}) and no seal, so its positions cannot be known; restore them, or move the segment out of the ledger directory",
                data_path.display(),
                times_path.display()
            )))
        }
    };
    Ok(Recorded {
        times,
        seal,
        count,
        written_len,
    })
}

/// Lines (a last one without its newline counted too) in the data file
/// after `from`, and the file's length.
fn lines_after(path: &std::path::Path, from: u64) -> io::Result<(u64, u64)> {
    let data = File::open(path).map_err(|e| annotate(e, "open", path))?;
    let len = data.metadata()?.len();
    let mut n = 0u64;
    let mut at = from;
    let mut buf = vec![0u8; 64 * 1024];
    let mut last = b'\n';
    while at < len {
        let want = usize::try_from(len - at)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let got = super::walk::read_at_most(&data, &mut buf[..want], at)?;
        if got == 0 {
            break;
        }
        n += memchr::memchr_iter(b'\n', &buf[..got]).count() as u64;
        last = buf[got - 1];
        at += got as u64;
    }
    Ok((n + u64::from(last != b'\n'), len))
}

pub(crate) fn refuse(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Opens a sealed segment: its positions as recorded, its key index checked
/// (rebuilt from its records when missing, damaged or about other data),
/// and loaded when inside the window. With `backfill`, a segment without a
/// seal gets one, linked to `backfill`'s head (the first start after an
/// upgrade).
pub(super) fn open_sealed(
    names: &Names,
    config: &LogConfig,
    first: u64,
    has_keys: bool,
    seal: Option<Seal>,
    cutoff: i64,
    backfill: Option<Option<Head>>,
) -> io::Result<(Sealed, Option<Head>)> {
    let data_path = names.sealed(first, DATA);
    let data = File::open(&data_path).map_err(|e| annotate(e, "open", &data_path))?;
    let len = data.metadata()?.len();
    let mut rec = recorded(names, first, seal)?;
    let keys_path = names.sealed(first, KEYS);
    if rec.seal.is_none() && has_keys {
        // Without a seal, the key index (derived, but written at the seal)
        // is one more witness of how many positions the segment held; the
        // larger count wins, as a count too low would renumber the rest.
        if let Ok(s) = keys::read_summary(&keys_path) {
            if s.first == first && s.count > rec.count {
                rec.count = s.count;
                rec.written_len = rec.written_len.max(s.data_len);
            }
        }
    }
    let trusted = if has_keys {
        match keys::read_summary(&keys_path) {
            Ok(s)
                if s.first == first
                    && s.count == rec.count
                    && s.data_len == len
                    && s.tail_hash == keys::tail_hash(&data, len)? =>
            {
                Ok(s)
            }
            Ok(_) => Err("it describes other data".to_owned()),
            Err(e) => Err(e.0),
        }
    } else {
        Err("it is missing".to_owned())
    };
    let mut head = None;
    let upgrade = rec
        .times
        .as_ref()
        .is_none_or(|t| !t.fully_checked() || t.lost_groups > 0);
    let summary = match trusted {
        Ok(s) if !upgrade && backfill.is_none() => s,
        other => {
            let why = other
                .err()
                .unwrap_or_else(|| "upgrading its record file".into());
            let (summary, sealed) =
                rebuild(names, config, &data, first, &mut rec, len, &why, backfill)?;
            head = sealed;
            summary
        }
    };
    let keys = if summary.received_max < cutoff {
        None
    } else {
        let index = KeyIndex::open(&keys_path).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {}", keys_path.display(), e.0),
            )
        })?;
        Some(SealedKeys { index, data })
    };
    let sealed = Sealed {
        summary,
        written_len: rec.written_len,
        bytes_before: 0,
        keys,
    };
    Ok((sealed, head))
}

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
    let seal = super::chain::read(&names.sealed(first, super::names::SEAL))
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
fn rebuild(
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
            s.bytes == len && super::chain::hex(&super::chain::sha256_of(data, len)?) == s.sha256
        }
        _ => false,
    };
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
            super::now_nanos(),
        )?;
    }
    let summary = write_keys(names, data, first, rec.count, len, &commits, &walked.keyed)?;
    let mut head = None;
    if let (Some(prev), None) = (backfill, &rec.seal) {
        let sha = match walked.sha256() {
            Some(h) if walked.end == len => h,
            _ => super::chain::sha256_of(data, len)?,
        };
        head = Some(super::chain::write_seal(
            names,
            first,
            rec.count,
            len,
            sha,
            prev,
            super::now_nanos(),
        )?);
    }
    names.sync_dir()?;
    if !walked.damaged.is_empty() {
        tracing::warn!(
            stream = names.stream,
            segment = %names.sealed(first, DATA).display(),
            damaged = walked.damaged.len(),
            first_damaged = first + walked.damaged[0],
            "a sealed segment holds damaged records; readers get DATA_LOSS for them, `meterd verify` lists them"
        );
        crate::metrics::metrics()
            .damaged_records
            .get_or_create(&crate::metrics::FileLabels {
                file: super::names::label(names.stream),
            })
            .inc_by(walked.damaged.len() as u64);
    }
    tracing::info!(stream = names.stream, first, reason = why, elapsed = ?started.elapsed(), "rebuilt the key index of a segment from its records");
    Ok((summary, head))
}

/// Cuts `data` back to `keep`, saving what is cut in `<stream>.damaged`.
pub(super) fn cut(names: &Names, data: &File, keep: u64, len: u64) -> io::Result<()> {
    if keep >= len {
        return Ok(());
    }
    let mut cut = vec![0u8; usize::try_from(len - keep).unwrap_or(0)];
    std::os::unix::fs::FileExt::read_exact_at(data, &mut cut, keep)?;
    let damaged = names.damaged();
    let out = names.create(&damaged, Create::Append)?;
    let path = names.active_data();
    let disk = &names.disk;
    disk.write(&out, &damaged, &cut)
        .and_then(|()| disk.sync(&out, &damaged))
        .map_err(|e| annotate(e, "write", &damaged))?;
    disk.set_len(data, &path, keep)
        .and_then(|()| disk.sync(data, &path))
        .map_err(|e| annotate(e, "cut", &path))?;
    tracing::warn!(
        stream = names.stream,
        cut_bytes = len - keep,
        kept_in = %damaged.display(),
        "cut bytes written after the last acknowledged record (a write a crash interrupted)"
    );
    Ok(())
}

pub(super) fn mtime_nanos(f: &File) -> Option<i64> {
    let m = f.metadata().ok()?.modified().ok()?;
    let d = m.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_nanos()).ok()
}
