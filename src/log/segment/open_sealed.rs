//! Opening a sealed segment: its positions taken from what was recorded
//! (its record file and its seal, checked against each other and its
//! name), and its key index checked, rebuilt when it cannot be trusted.

use std::fs::File;
use std::io;

use super::rebuild::rebuild;
use super::refuse;
use crate::log::chain::{Head, Seal};
use crate::log::index::SealedKeys;
use crate::log::keys::{self, KeyIndex};
use crate::log::names::{Names, DATA, KEYS, TIMES};
use crate::log::state::Sealed;
use crate::log::times::{self, Times};
use crate::log::{annotate, LogConfig};

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
        let got = crate::log::walk::read_at_most(&data, &mut buf[..want], at)?;
        if got == 0 {
            break;
        }
        n += memchr::memchr_iter(b'\n', &buf[..got]).count() as u64;
        last = buf[got - 1];
        at += got as u64;
    }
    Ok((n + u64::from(last != b'\n'), len))
}

/// Opens a sealed segment: its positions as recorded, its key index checked
/// (rebuilt from its records when missing, damaged or about other data),
/// and loaded when inside the window. With `backfill`, a segment without a
/// seal gets one, linked to `backfill`'s head (the first start after an
/// upgrade).
pub(in crate::log) fn open_sealed(
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
