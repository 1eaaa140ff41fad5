//! Reading a log directory that another process may be writing: no lock,
//! no recovery, nothing written. What is read is what was committed when
//! the snapshot was taken (the active file up to its last receive-time
//! record), so a snapshot never sees a torn or unacknowledged line.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use super::keys::{self, Summary};
use super::lines::Lines;
use super::names::{Names, DATA, KEYS, TIMES};
use super::times::{self, Commit};
use super::{annotate, ActiveMeta, LogReader, SeekError, SegmentView, Shared, View};

/// A fixed view of a log directory.
pub struct Snapshot {
    shared: Arc<Shared>,
}

impl Snapshot {
    /// Reads the segments of `stream` in `dir`. Blocking.
    pub fn open(dir: &Path, stream: &'static str) -> io::Result<Snapshot> {
        let names = Names {
            dir: dir.to_path_buf(),
            stream,
        };
        let mut firsts: Vec<u64> = Vec::new();
        for dirent in std::fs::read_dir(dir).map_err(|e| annotate(e, "list", dir))? {
            let name = dirent?.file_name();
            if let Some((first, DATA)) = name.to_str().and_then(|n| names.parse_sealed(n)) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut sealed = Vec::with_capacity(firsts.len());
        let mut bytes = 0;
        for first in firsts {
            let summary = match sealed_summary(&names, first) {
                Ok(s) => s,
                // Deleted by retention since the listing: not part of it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            sealed.push(SegmentView {
                summary,
                bytes_before: bytes,
            });
            bytes += summary.data_len;
        }
        let next = sealed
            .last()
            .map_or(1, |s: &SegmentView| s.summary.first + s.summary.count);
        let data_path = names.active_data();
        let (data, first, commits) = match File::open(&data_path) {
            Ok(data) => match times::read(&names.active_times()) {
                Ok(Some(t)) => {
                    let len = data.metadata()?.len();
                    let commits = t
                        .commits
                        .into_iter()
                        .filter(|c| c.end_offset <= len)
                        .collect();
                    (data, t.first, commits)
                }
                // A file of an older meterd (or a writer that never opened
                // it yet): every complete line, received when last modified.
                _ => {
                    let commits = whole_file(&data)?;
                    (data, next, commits)
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                (File::open("/dev/null")?, next, Vec::new())
            }
            Err(e) => return Err(annotate(e, "open", &data_path)),
        };
        let count = commits.last().map_or(0, |c| c.end_count);
        let (end, _) = watch::channel((first + count).saturating_sub(1));
        let (healthy, _) = watch::channel(true);
        let (segments, _) = watch::channel((0, 0));
        let view = View {
            sealed,
            active: Arc::new(ActiveMeta {
                first,
                data: Arc::new(data),
                commits: RwLock::new(commits),
                bytes_before: bytes,
            }),
        };
        Ok(Snapshot {
            shared: Arc::new(Shared {
                names,
                view: Mutex::new(Arc::new(view)),
                end,
                healthy,
                segments,
                active_keys: Default::default(),
                filter_bytes: Default::default(),
            }),
        })
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

/// A sealed segment's summary: from its index when that matches the data,
/// else counted from the data and its receive times.
fn sealed_summary(names: &Names, first: u64) -> io::Result<Summary> {
    let data = File::open(names.sealed(first, DATA))?;
    let len = data.metadata()?.len();
    if let Ok(s) = keys::read_summary(&names.sealed(first, KEYS)) {
        if s.first == first && s.data_len == len && s.tail_hash == keys::tail_hash(&data, len)? {
            return Ok(s);
        }
    }
    let commits = match times::read(&names.sealed(first, TIMES)) {
        Ok(Some(t)) if t.commits.last().is_some_and(|c| c.end_offset == len) => t.commits,
        _ => whole_file(&data)?,
    };
    Ok(Summary {
        first,
        count: commits.last().map_or(0, |c| c.end_count),
        data_len: commits.last().map_or(0, |c| c.end_offset),
        received_min: commits.first().map_or(0, |c| c.received),
        received_max: commits.last().map_or(0, |c| c.received),
        tail_hash: 0,
    })
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
