//! The checks of one file: a sealed segment against its seal, and the
//! active file's records against their checksums.

use std::fs::File;
use std::io;

use super::{Failure, Report};
use crate::log::chain::{self, Seal};
use crate::log::index::walk_records;
use crate::log::names::{Names, DATA, TIMES};
use crate::log::segment::sealed_layout;
use crate::log::times;
use crate::log::walk::Span;
use crate::log::{annotate, Unreadable};

fn no_key(_: &[u8]) -> Result<Option<std::borrow::Cow<'_, str>>, Unreadable> {
    Ok(None)
}

/// A sealed segment against its seal: length, SHA-256, record file, and
/// every record's checksum.
pub(super) fn check_segment(
    names: &Names,
    first: u64,
    seal: &Seal,
    r: &mut Report,
) -> io::Result<()> {
    let data_path = names.sealed(first, DATA);
    let times_path = names.sealed(first, TIMES);
    let data = File::open(&data_path).map_err(|e| annotate(e, "open", &data_path))?;
    let len = data.metadata()?.len();
    let t = match times::read(&times_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(annotate(e, "read", &times_path)),
    };
    let times_ok = t.as_ref().is_some_and(|t| {
        t.first == first && t.count() == seal.count && t.fully_checked() && t.lost_groups == 0
    });
    if !times_ok {
        let why = match &t {
            None => "the record file is missing or unreadable".to_owned(),
            Some(t) if t.first != first => {
                format!("the record file says the segment starts at {}", t.first)
            }
            Some(t) if t.count() != seal.count => format!(
                "the record file holds {} records, the seal {}",
                t.count(),
                seal.count
            ),
            Some(_) => "the record file is damaged: some records' checksums are lost".to_owned(),
        };
        r.failures.push(Failure {
            position: Some(first),
            file: times_path,
            reason: why,
        });
    }
    let (commits, checks) = sealed_layout(t, seal.count, seal.bytes, 0);
    let walked = walk_records(
        &data,
        Span {
            commits: &commits,
            start: (0, 0),
            checks: &checks,
            trust_unchecked: false,
        },
        no_key,
        None,
    )?;
    r.bytes += len;
    if let Some(&i) = walked.damaged.first() {
        r.failures.push(Failure {
            position: Some(first + i),
            file: data_path.clone(),
            reason: format!(
                "the record does not match the checksum written with it ({} damaged records in the segment)",
                walked.damaged.len()
            ),
        });
    }
    let sha = match walked.sha256() {
        Some(h) if walked.end == len => h,
        _ => chain::sha256_of(&data, len)?,
    };
    if len != seal.bytes || chain::hex(&sha) != seal.sha256 {
        r.failures.push(Failure {
            // Where the records show it, if they do.
            position: Some(walked.damaged.first().map_or(first, |i| first + i)),
            file: data_path,
            reason: format!(
                "the segment ({len} bytes) is not the one sealed ({} bytes, SHA-256 {})",
                seal.bytes, seal.sha256
            ),
        });
    }
    Ok(())
}

/// The active file's records against their checksums.
pub(super) fn check_active(names: &Names, sealed_end: u64, r: &mut Report) -> io::Result<()> {
    let data_path = names.active_data();
    let times_path = names.active_times();
    let data = match File::open(&data_path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(annotate(e, "open", &data_path)),
    };
    let t = match times::read(&times_path) {
        Ok(Some(t)) => t,
        Ok(None) | Err(_) => {
            if data.metadata()?.len() > 0 {
                r.failures.push(Failure {
                    position: Some(sealed_end + 1),
                    file: times_path,
                    reason: "the active file's record file is missing or unreadable".into(),
                });
            }
            return Ok(());
        }
    };
    let first = if t.first > 0 { t.first } else { sealed_end + 1 };
    if sealed_end > 0 && first != sealed_end + 1 {
        r.failures.push(Failure {
            position: Some(sealed_end + 1),
            file: times_path.clone(),
            reason: format!(
                "the active file starts at position {first}, but the segments end at {sealed_end}"
            ),
        });
    }
    if t.lost_groups > 0 || !t.fully_checked() {
        r.failures.push(Failure {
            position: Some(first),
            file: times_path,
            reason: "the record file is damaged: some records' checksums are lost".into(),
        });
    }
    let count = t.count();
    let walked = walk_records(
        &data,
        Span {
            commits: &t.commits,
            start: (0, 0),
            checks: &t.checks,
            trust_unchecked: false,
        },
        no_key,
        None,
    )?;
    let len = data.metadata()?.len();
    r.bytes += len;
    r.unacknowledged_bytes = len.saturating_sub(walked.end);
    if count > 0 {
        r.unsealed = Some((first, first + count - 1));
    }
    if let Some(&i) = walked.damaged.first() {
        r.failures.push(Failure {
            position: Some(first + i),
            file: data_path,
            reason: format!(
                "the record does not match the checksum written with it ({} damaged records in the active file)",
                walked.damaged.len()
            ),
        });
    }
    Ok(())
}
