//! Reading a log directory that another process may be writing: no lock,
//! no recovery, nothing written. What is read is what was committed when
//! the snapshot was taken (the active file up to its last recorded group),
//! so a snapshot never sees a torn or unacknowledged line.
//!
//! A seal or a retention deletion may happen while the snapshot is taken.
//! The active file is read first (data, then its record file, then checked
//! to still be the active one), the segments listed after it and cut at its
//! first position, so that a segment being sealed is seen exactly once: as
//! the active file or as a segment. A seal in the middle means reading again.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use super::keys::{self, Summary};
use super::lines::Lines;
use super::names::{Names, DATA, KEYS, TIMES};
use super::segment::{recorded, sealed_layout};
use super::times::{self, Check, Commit};
use super::{annotate, ActiveMeta, LogReader, SeekError, SegmentView, Shared, View};

/// Attempts at a listing that no seal or deletion changed meanwhile.
const ATTEMPTS: usize = 1000;
/// Listings with a gap between segments taken again before the gap is
/// believed.
const GAP_ATTEMPTS: usize = 10;

/// A fixed view of a log directory.
pub struct Snapshot {
    shared: Arc<Shared>,
}

/// The active file as it was when the listing was taken.
struct ActiveState {
    data: File,
    first: u64,
    commits: Vec<Commit>,
    checks: Vec<Check>,
    /// (device, inode) of the file opened, to tell it was not replaced.
    id: Option<(u64, u64)>,
    /// A data file without a record file: of an older meterd, or of a seal
    /// between its two renames (the record file moved, the data not yet).
    unrecorded: bool,
}

impl Snapshot {
    /// Reads the segments of `stream` in `dir`. Blocking.
    pub fn open(dir: &Path, stream: &'static str) -> io::Result<Snapshot> {
        let names = Names::new(dir, stream);
        let mut attempt = 0;
        let mut gaps = 0;
        let (sealed, active) = loop {
            attempt += 1;
            let active = read_active(&names)?;
            // The active file still the one whose record file was read: no
            // seal renamed it meanwhile.
            // Without a record file, no seal is between its renames (looked
            // at before the data file: a seal that ends meanwhile renamed it).
            let stable = (!active.unrecorded || !seal_in_progress(&names)?)
                && active.id == file_id(&names.active_data());
            // Listed after the active file was read: every segment sealed
            // before it is there. One sealed since holds records that the
            // active file as read still has: left out.
            let upto = if active.first > 0 {
                active.first
            } else {
                u64::MAX
            };
            let (sealed, gone) = read_sealed(&names, upto)?;
            // A listing taken while segments are sealed can lack a segment
            // that was there all along (seen on ext4 under load: a gap
            // between two listed segments, the missing one's data on disk
            // right after): list again. A gap that stays is a segment that
            // is really missing, which readers then report.
            let whole = contiguous(&sealed, active.first) || gaps >= GAP_ATTEMPTS;
            if stable && !gone && !whole {
                gaps += 1;
            }
            if stable && !gone && whole {
                break (sealed, active);
            }
            if attempt >= ATTEMPTS {
                return Err(io::Error::other(format!(
                    "{}: the {stream} files kept changing while they were read ({ATTEMPTS} attempts); try again",
                    dir.display()
                )));
            }
        };
        Ok(assemble(names, sealed, active))
    }

    /// A reader of the records after `after` (0: from the first retained).
    pub fn reader(&self, after: u64) -> Result<LogReader, SeekError> {
        LogReader::new(self.shared.clone(), after)
    }

    /// The first retained position.
    pub fn first(&self) -> u64 {
        self.shared.view().first()
    }

    /// The last committed position; 0 when there is none.
    pub fn end(&self) -> u64 {
        *self.shared.end.borrow()
    }

    /// The usage checkpoint file of the sealed segment starting at `first`.
    pub fn checkpoint_path(&self, first: u64) -> std::path::PathBuf {
        self.shared.names.sealed(first, super::names::USAGE)
    }

    /// The sealed segments, oldest first.
    pub fn segments(&self) -> Vec<Summary> {
        self.shared
            .view()
            .sealed
            .iter()
            .map(|s| s.summary)
            .collect()
    }
}

/// Whether the segments follow one another without a gap, and the active
/// file (when it says where it starts, `active_first > 0`) follows them.
fn contiguous(sealed: &[SegmentView], active_first: u64) -> bool {
    let follows = sealed
        .windows(2)
        .all(|w| w[0].summary.first + w[0].summary.count == w[1].summary.first);
    let active_follows = match sealed.last() {
        Some(s) if active_first > 0 => s.summary.first + s.summary.count == active_first,
        _ => true,
    };
    follows && active_follows
}

/// The sealed segments before `upto`, and whether one was deleted since
/// the listing.
fn read_sealed(names: &Names, upto: u64) -> io::Result<(Vec<SegmentView>, bool)> {
    let mut sealed = Vec::new();
    let mut gone = false;
    let mut bytes = 0;
    for first in list(names)?.into_iter().filter(|&f| f < upto) {
        match sealed_view(names, first) {
            Ok((summary, written_len)) => {
                sealed.push(SegmentView {
                    summary,
                    written_len,
                    bytes_before: bytes,
                });
                bytes += summary.data_len;
            }
            // Deleted by retention since the listing: look again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => gone = true,
            Err(e) => return Err(e),
        }
    }
    Ok((sealed, gone))
}

/// The snapshot of the segments and active file read.
fn assemble(names: Names, sealed: Vec<SegmentView>, active: ActiveState) -> Snapshot {
    let bytes: u64 = sealed.iter().map(|s| s.summary.data_len).sum();
    let next = sealed
        .last()
        .map_or(1, |s: &SegmentView| s.summary.first + s.summary.count);
    let first = if active.first == 0 {
        next
    } else {
        active.first
    };
    let count = active.commits.last().map_or(0, |c| c.end_count);
    let (end, _) = watch::channel((first + count).saturating_sub(1));
    let (healthy, _) = watch::channel(true);
    let (segments, _) = watch::channel((0, 0));
    let view = View {
        sealed,
        active: Arc::new(ActiveMeta {
            first,
            data: Arc::new(active.data),
            commits: RwLock::new(active.commits),
            checks: RwLock::new(active.checks),
            bytes_before: bytes,
        }),
    };
    Snapshot {
        shared: Arc::new(Shared {
            names,
            view: Mutex::new(Arc::new(view)),
            end,
            healthy,
            segments,
            active_keys: Default::default(),
            filter_bytes: Default::default(),
            head: Mutex::new(None),
            sealed_spans: Default::default(),
        }),
    }
}

/// The first positions of the sealed segments' data files.
fn list(names: &Names) -> io::Result<BTreeSet<u64>> {
    let mut firsts = BTreeSet::new();
    for dirent in std::fs::read_dir(&names.dir).map_err(|e| annotate(e, "list", &names.dir))? {
        let name = dirent?.file_name();
        if let Some((first, DATA)) = name.to_str().and_then(|n| names.parse_sealed(n)) {
            firsts.insert(first);
        }
    }
    Ok(firsts)
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The active file and what its record file says, record file first: a
/// seal renames it first, so a data file opened after it is never newer.
fn read_active(names: &Names) -> io::Result<ActiveState> {
    // The data file first: a record file read after it is never older, and
    // groups are written to the data before their record.
    let data_path = names.active_data();
    let data = match File::open(&data_path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(annotate(e, "open", &data_path)),
    };
    let recorded = match times::read(&names.active_times()) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(annotate(e, "read", &names.active_times())),
    };
    let Some(data) = data else {
        return Ok(ActiveState {
            data: File::open("/dev/null")?,
            first: recorded.map_or(0, |t| t.first),
            commits: Vec::new(),
            checks: Vec::new(),
            id: None,
            unrecorded: false,
        });
    };
    let meta = data.metadata()?;
    let id = Some((meta.dev(), meta.ino()));
    let len = meta.len();
    match recorded {
        Some(t) => {
            let commits: Vec<Commit> = t
                .commits
                .into_iter()
                .filter(|c| c.end_offset <= len)
                .collect();
            let upto = commits.last().map_or(0, |c| c.end_count) as usize;
            let mut checks = t.checks;
            checks.truncate(upto);
            Ok(ActiveState {
                data,
                first: t.first,
                commits,
                checks,
                id,
                unrecorded: false,
            })
        }
        // A file of an older meterd (or a writer that never opened it
        // yet): every complete line, received when last modified.
        None => Ok(ActiveState {
            commits: whole_file(&data)?,
            data,
            first: 0,
            checks: Vec::new(),
            id,
            unrecorded: true,
        }),
    }
}

/// Whether a seal is between its renames: the active record file gone or
/// the newest segment's record file there without its data. Blocking.
fn seal_in_progress(names: &Names) -> io::Result<bool> {
    if names.active_times().exists() {
        return Ok(true);
    }
    let mut newest: Option<(u64, bool)> = None;
    for dirent in std::fs::read_dir(&names.dir).map_err(|e| annotate(e, "list", &names.dir))? {
        let name = dirent?.file_name();
        if let Some((first, ext)) = name.to_str().and_then(|n| names.parse_sealed(n)) {
            if ext == DATA || ext == TIMES {
                let is_data = ext == DATA;
                newest = match newest {
                    Some((f, d)) if f > first => Some((f, d)),
                    Some((f, d)) if f == first => Some((f, d || is_data)),
                    _ => Some((first, is_data)),
                };
            }
        }
    }
    Ok(newest.is_some_and(|(_, has_data)| !has_data))
}

/// A sealed segment's summary and written length: from its index when that
/// matches the data, its positions always as recorded.
fn sealed_view(names: &Names, first: u64) -> io::Result<(Summary, u64)> {
    let data = File::open(names.sealed(first, DATA))?;
    let len = data.metadata()?.len();
    let rec = recorded(names, first, read_seal(names, first))?;
    if let Ok(s) = keys::read_summary(&names.sealed(first, KEYS)) {
        if s.first == first
            && s.count == rec.count
            && s.data_len == len
            && s.tail_hash == keys::tail_hash(&data, len)?
        {
            return Ok((s, rec.written_len));
        }
    }
    let (commits, _) = sealed_layout(rec.times, rec.count, rec.written_len, 0);
    let summary = Summary {
        first,
        count: rec.count,
        data_len: len,
        received_min: commits.first().map_or(0, |c| c.received),
        received_max: commits.last().map_or(0, |c| c.received),
        tail_hash: 0,
    };
    Ok((summary, rec.written_len))
}

fn read_seal(names: &Names, first: u64) -> Option<super::chain::Seal> {
    super::chain::read(&names.sealed(first, super::names::SEAL))
        .ok()
        .and_then(|(s, _)| s.ok())
}

/// One commit covering every complete line, at the file's modification time.
fn whole_file(data: &File) -> io::Result<Vec<Commit>> {
    let len = data.metadata()?.len();
    let mut lines = Lines::new(data, 0, len);
    let (mut count, mut end) = (0, 0);
    while let Some((offset, line)) = lines.next_line()? {
        count += 1;
        end = offset + line.len() as u64;
    }
    let received = data
        .metadata()?
        .modified()
        .ok()
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0);
    Ok((count > 0)
        .then_some(Commit {
            end_count: count,
            end_offset: end,
            received,
        })
        .into_iter()
        .collect())
}
