//! `meterd verify`: checks, without changing anything, that a stream is
//! what was written. Every sealed segment against its seal (length and
//! SHA-256) and every record against its checksum; every seal against the
//! one before it (the chain); the active file's records against their
//! checksums; and, given a head recorded elsewhere, that the chain still
//! holds it (a rewrite of the whole chain is caught by that alone).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::chain::{self, Seal};
use super::index::walk_records;
use super::names::{Names, DATA, SEAL, TIMES};
use super::segment::sealed_layout;
use super::times;
use super::walk::Span;
use super::{annotate, Unreadable};

/// One thing that does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The first position it concerns, when it is about records.
    pub position: Option<u64>,
    pub file: PathBuf,
    pub reason: String,
}

/// What `verify` found in one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub stream: &'static str,
    /// Positions covered by seals, and how many of their segments were
    /// checked (the others were retired by retention, their seals kept).
    pub sealed: Option<(u64, u64)>,
    pub segments_checked: usize,
    pub segments_retired: usize,
    /// Positions of the active file, checked record by record.
    pub unsealed: Option<(u64, u64)>,
    /// Bytes after the active file's last acknowledged record.
    pub unacknowledged_bytes: u64,
    /// Hex SHA-256 of the newest seal.
    pub head: Option<String>,
    /// Bytes read and checked.
    pub bytes: u64,
    pub failures: Vec<Failure>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

fn no_key(_: &[u8]) -> Result<Option<std::borrow::Cow<'_, str>>, Unreadable> {
    Ok(None)
}

/// Verifies `stream` in `dir`; with `head`, also that the chain holds a
/// seal with this hash. Blocking.
pub fn verify(dir: &Path, stream: &'static str, head: Option<&str>) -> io::Result<Report> {
    // A seal while reading changes the listing: read again (bounded).
    let mut last = None;
    for _ in 0..5 {
        let before = listing(dir, stream)?;
        let report = verify_once(dir, stream, head)?;
        if report.ok() || listing(dir, stream)? == before {
            return Ok(report);
        }
        last = Some(report);
    }
    Ok(last.unwrap_or_default())
}

fn listing(dir: &Path, stream: &'static str) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| annotate(e, "list", dir))?
        .filter_map(|d| d.ok())
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(stream))
        .collect();
    names.sort();
    Ok(names)
}

fn verify_once(dir: &Path, stream: &'static str, head: Option<&str>) -> io::Result<Report> {
    let names = Names::new(dir, stream);
    let mut data_firsts = BTreeSet::new();
    let mut seal_firsts = BTreeSet::new();
    for d in std::fs::read_dir(dir).map_err(|e| annotate(e, "list", dir))? {
        let name = d?.file_name();
        match name.to_str().and_then(|n| names.parse_sealed(n)) {
            Some((first, DATA)) => {
                data_firsts.insert(first);
            }
            Some((first, SEAL)) => {
                seal_firsts.insert(first);
            }
            _ => {}
        }
    }
    let mut r = Report {
        stream,
        ..Report::default()
    };
    let fail = |r: &mut Report, position: Option<u64>, file: PathBuf, reason: String| {
        r.failures.push(Failure {
            position,
            file,
            reason,
        });
    };

    // The chain: every seal parses, names its own positions, links to the
    // one before it, and follows on from it.
    let mut seals: BTreeMap<u64, Seal> = BTreeMap::new();
    let mut links: Vec<String> = Vec::new();
    let mut prev: Option<(Seal, [u8; 32])> = None;
    for &first in &seal_firsts {
        let path = names.sealed(first, SEAL);
        let (parsed, link) = chain::read(&path).map_err(|e| annotate(e, "read", &path))?;
        links.push(chain::hex(&link));
        let seal = match parsed {
            Ok(s) if s.first == first && s.stream == stream => s,
            Ok(s) => {
                fail(
                    &mut r,
                    Some(first),
                    path,
                    format!(
                        "the seal is of {} positions {}..{}, not of this file's",
                        s.stream, s.first, s.last
                    ),
                );
                prev = None;
                continue;
            }
            Err(why) => {
                fail(&mut r, Some(first), path, why);
                prev = None;
                continue;
            }
        };
        let want_prev = prev.as_ref().map(|(_, l)| chain::hex(l));
        match &prev {
            Some((p, _)) if p.last + 1 != seal.first => fail(
                &mut r,
                Some(p.last + 1),
                path.clone(),
                format!(
                    "positions {}..{} have no seal (a seal or segment deleted?)",
                    p.last + 1,
                    seal.first - 1
                ),
            ),
            _ => {}
        }
        if prev.is_some() && seal.prev_seal_sha256 != want_prev {
            fail(
                &mut r,
                Some(first),
                path.clone(),
                "the seal does not link to the seal before it (the chain was changed)".into(),
            );
        } else if prev.is_none() && links.len() == 1 && seal.prev_seal_sha256.is_some() && first > 1
        {
            // The oldest seal links to one that is gone: deleted by hand.
            fail(
                &mut r,
                Some(first),
                path.clone(),
                "the seal links to an earlier seal that is gone".into(),
            );
        }
        r.sealed = Some((r.sealed.map_or(seal.first, |s| s.0), seal.last));
        prev = Some((seal.clone(), link));
        seals.insert(first, seal);
    }
    r.head = links.last().cloned();
    if let Some(want) = head {
        let want = want.trim().to_ascii_lowercase();
        if !links.contains(&want) {
            fail(
                &mut r,
                None,
                dir.to_path_buf(),
                format!("head {want} is in no seal of the chain: the chain was rewritten since it was recorded"),
            );
        }
    }

    // Every sealed segment against its seal and its records' checksums.
    let mut end = 0u64;
    for &first in &data_firsts {
        let data_path = names.sealed(first, DATA);
        if end > 0 && first > end + 1 {
            fail(
                &mut r,
                Some(end + 1),
                data_path.clone(),
                format!("positions {}..{} are in no segment", end + 1, first - 1),
            );
        }
        let Some(seal) = seals.get(&first) else {
            fail(
                &mut r,
                Some(first),
                data_path.clone(),
                "the segment has no seal".into(),
            );
            end = end.max(first);
            continue;
        };
        end = seal.last;
        r.segments_checked += 1;
        check_segment(&names, first, seal, &mut r)?;
    }
    r.segments_retired = seals.keys().filter(|f| !data_firsts.contains(f)).count();
    // Seals of segments that are gone are retired ones only before the
    // oldest segment (retention goes oldest first).
    if let Some(&oldest) = data_firsts.iter().next() {
        for (&first, s) in seals.range(oldest..) {
            if !data_firsts.contains(&first) {
                fail(
                    &mut r,
                    Some(first),
                    names.sealed(first, DATA),
                    format!(
                        "positions {}..{} are sealed but their segment is gone",
                        s.first, s.last
                    ),
                );
            }
        }
    }
    check_active(&names, end.max(r.sealed.map_or(0, |s| s.1)), &mut r)?;
    r.failures.sort_by_key(|f| f.position.unwrap_or(0));
    Ok(r)
}

/// A sealed segment against its seal: length, SHA-256, record file, and
/// every record's checksum.
fn check_segment(names: &Names, first: u64, seal: &Seal, r: &mut Report) -> io::Result<()> {
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
        _ => super::chain::sha256_of(&data, len)?,
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
fn check_active(names: &Names, sealed_end: u64, r: &mut Report) -> io::Result<()> {
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
