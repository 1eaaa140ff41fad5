//! `meterd verify`: checks, without changing anything, that a stream is
//! what was written. Every sealed segment against its seal (length and
//! SHA-256) and every record against its checksum; every seal against the
//! one before it (the chain); the active file's records against their
//! checksums; and, given a head recorded elsewhere, that the chain still
//! holds it (a rewrite of the whole chain is caught by that alone).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use super::annotate;
use super::chain::{self, Seal};
use super::names::{Names, DATA, SEAL};

mod files;

use files::{check_active, check_segment};

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
    let (data_firsts, seal_firsts) = list_sealed(dir, &names)?;
    let mut r = Report {
        stream,
        ..Report::default()
    };

    let (seals, links) = check_chain(&names, stream, &seal_firsts, &mut r)?;
    check_head(dir, head, &links, &mut r);

    let end = check_segments(&names, &data_firsts, &seals, &mut r)?;
    check_retired(&names, &data_firsts, &seals, &mut r);
    check_active(&names, end.max(r.sealed.map_or(0, |s| s.1)), &mut r)?;
    r.failures.sort_by_key(|f| f.position.unwrap_or(0));
    Ok(r)
}

/// Records one failure in `r`.
fn fail(r: &mut Report, position: Option<u64>, file: PathBuf, reason: String) {
    r.failures.push(Failure {
        position,
        file,
        reason,
    });
}

/// The first positions of the sealed data files and of the seals in `dir`.
fn list_sealed(dir: &Path, names: &Names) -> io::Result<(BTreeSet<u64>, BTreeSet<u64>)> {
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
    Ok((data_firsts, seal_firsts))
}

/// The chain: returns the seals that parse, by first position, and every
/// seal's link (hex), oldest first.
fn check_chain(
    names: &Names,
    stream: &'static str,
    seal_firsts: &BTreeSet<u64>,
    r: &mut Report,
) -> io::Result<(BTreeMap<u64, Seal>, Vec<String>)> {
    // The chain: every seal parses, names its own positions, links to the
    // one before it, and follows on from it.
    let mut seals: BTreeMap<u64, Seal> = BTreeMap::new();
    let mut links: Vec<String> = Vec::new();
    let mut prev: Option<(Seal, [u8; 32])> = None;
    for &first in seal_firsts {
        let path = names.sealed(first, SEAL);
        let (parsed, link) = chain::read(&path).map_err(|e| annotate(e, "read", &path))?;
        links.push(chain::hex(&link));
        let seal = match parsed {
            Ok(s) if s.first == first && s.stream == stream => s,
            Ok(s) => {
                fail(
                    r,
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
                fail(r, Some(first), path, why);
                prev = None;
                continue;
            }
        };
        let want_prev = prev.as_ref().map(|(_, l)| chain::hex(l));
        match &prev {
            Some((p, _)) if p.last + 1 != seal.first => fail(
                r,
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
                r,
                Some(first),
                path.clone(),
                "the seal does not link to the seal before it (the chain was changed)".into(),
            );
        } else if prev.is_none() && links.len() == 1 && seal.prev_seal_sha256.is_some() && first > 1
        {
            // The oldest seal links to one that is gone: deleted by hand.
            fail(
                r,
                Some(first),
                path.clone(),
                "the seal links to an earlier seal that is gone".into(),
            );
        }
        r.sealed = Some((r.sealed.map_or(seal.first, |s| s.0), seal.last));
        prev = Some((seal.clone(), link));
        seals.insert(first, seal);
    }
    Ok((seals, links))
}

/// Records the newest link as the head and checks that the chain holds
/// the head given, if any.
fn check_head(dir: &Path, head: Option<&str>, links: &[String], r: &mut Report) {
    r.head = links.last().cloned();
    if let Some(want) = head {
        let want = want.trim().to_ascii_lowercase();
        if !links.contains(&want) {
            fail(
                r,
                None,
                dir.to_path_buf(),
                format!("head {want} is in no seal of the chain: the chain was rewritten since it was recorded"),
            );
        }
    }
}

/// Checks every sealed segment; returns the last position they cover.
fn check_segments(
    names: &Names,
    data_firsts: &BTreeSet<u64>,
    seals: &BTreeMap<u64, Seal>,
    r: &mut Report,
) -> io::Result<u64> {
    // Every sealed segment against its seal and its records' checksums.
    let mut end = 0u64;
    for &first in data_firsts {
        let data_path = names.sealed(first, DATA);
        if end > 0 && first > end + 1 {
            fail(
                r,
                Some(end + 1),
                data_path.clone(),
                format!("positions {}..{} are in no segment", end + 1, first - 1),
            );
        }
        let Some(seal) = seals.get(&first) else {
            fail(
                r,
                Some(first),
                data_path.clone(),
                "the segment has no seal".into(),
            );
            end = end.max(first);
            continue;
        };
        end = seal.last;
        r.segments_checked += 1;
        check_segment(names, first, seal, r)?;
    }
    Ok(end)
}

/// Counts the retired segments and reports sealed ones that are gone
/// without being the oldest.
fn check_retired(
    names: &Names,
    data_firsts: &BTreeSet<u64>,
    seals: &BTreeMap<u64, Seal>,
    r: &mut Report,
) {
    r.segments_retired = seals.keys().filter(|f| !data_firsts.contains(f)).count();
    // Seals of segments that are gone are retired ones only before the
    // oldest segment (retention goes oldest first).
    if let Some(&oldest) = data_firsts.iter().next() {
        for (&first, s) in seals.range(oldest..) {
            if !data_firsts.contains(&first) {
                fail(
                    r,
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
}
