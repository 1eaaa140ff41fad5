//! A model of what a crash leaves of a directory, for the crash-state
//! tests: [`Recorder`] is a disk (see [`super::disk`]) that makes every
//! change on the real file system and records it, and can fail one with an
//! errno; [`replay`] builds from a prefix of the recorded changes the
//! directory that each kind of [`Crash`] leaves (what was synced, what was
//! only written, which names reached the disk, a torn last write, and what
//! a failed `fsync` can drop).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::disk::{Create, Disk, RealDisk};

/// One change, as the model replays it. Files are named by the order in
/// which they were created, so that an inode number used again is a new file.
#[derive(Clone, Debug)]
pub(super) enum Op {
    Create {
        name: String,
        file: usize,
        truncate: bool,
    },
    Write {
        file: usize,
        bytes: Vec<u8>,
    },
    Sync {
        file: usize,
    },
    SetLen {
        file: usize,
        len: u64,
    },
    Rename {
        from: String,
        to: String,
    },
    Remove {
        name: String,
    },
    SyncDir,
    /// A change that the disk failed (not made, or a write made in part).
    Failed {
        what: &'static str,
        file: Option<usize>,
    },
}

/// The real file system, with every change recorded and, optionally, the
/// `fail_at`-th change failed with `errno` instead of made.
pub(super) struct Recorder {
    inner: RealDisk,
    pub(super) state: Mutex<Recorded>,
}

#[derive(Default)]
pub(super) struct Recorded {
    ops: Vec<Op>,
    /// Inode number to file, for the files currently named.
    files: BTreeMap<u64, usize>,
    next_file: usize,
    /// Changes attempted so far (made or failed).
    attempts: usize,
    fail: Option<(usize, i32)>,
    /// The next sync fails with this errno.
    pub(super) fail_next_sync: Option<i32>,
    /// Whether the failure was injected.
    pub(super) failed: bool,
}

impl Recorder {
    pub(super) fn new(fail: Option<(usize, i32)>) -> Arc<Recorder> {
        Arc::new(Recorder {
            inner: RealDisk,
            state: Mutex::new(Recorded {
                fail,
                ..Recorded::default()
            }),
        })
    }

    pub(super) fn ops(&self) -> Vec<Op> {
        self.state.lock().unwrap().ops.clone()
    }

    pub(super) fn count(&self) -> usize {
        self.state.lock().unwrap().ops.len()
    }

    /// Counts the attempt; the injected error if it is the one to fail.
    fn attempt(&self, what: &'static str) -> io::Result<()> {
        self.attempt_on(what, None)
    }

    fn attempt_on(&self, what: &'static str, file: Option<usize>) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        st.attempts += 1;
        let errno = match st.fail {
            Some((at, errno)) if at == st.attempts => Some(errno),
            _ if what == "sync" => st.fail_next_sync.take(),
            _ => None,
        };
        match errno {
            Some(errno) => {
                st.failed = true;
                st.ops.push(Op::Failed { what, file });
                Err(io::Error::from_raw_os_error(errno))
            }
            None => Ok(()),
        }
    }

    fn file_of(&self, file: &File) -> usize {
        let ino = file.metadata().unwrap().ino();
        self.state.lock().unwrap().files[&ino]
    }

    fn push(&self, op: Op) {
        self.state.lock().unwrap().ops.push(op);
    }
}

pub(super) fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

impl Disk for Recorder {
    fn create(&self, path: &Path, how: Create) -> io::Result<File> {
        self.attempt("create")?;
        let existed = path.exists();
        let f = self.inner.create(path, how)?;
        let ino = f.metadata()?.ino();
        let mut st = self.state.lock().unwrap();
        let file = match st.files.get(&ino) {
            Some(&file) if existed => file,
            _ => {
                st.next_file += 1;
                let file = st.next_file;
                st.files.insert(ino, file);
                file
            }
        };
        st.ops.push(Op::Create {
            name: name(path),
            file,
            truncate: how == Create::Truncate,
        });
        Ok(f)
    }
    fn write(&self, f: &File, path: &Path, buf: &[u8]) -> io::Result<()> {
        if let Err(e) = self.attempt("write") {
            // A full disk takes what fits: half of it, here.
            let half = &buf[..buf.len() / 2];
            self.inner.write(f, path, half)?;
            let file = self.file_of(f);
            self.push(Op::Write {
                file,
                bytes: half.to_vec(),
            });
            return Err(e);
        }
        self.inner.write(f, path, buf)?;
        let file = self.file_of(f);
        self.push(Op::Write {
            file,
            bytes: buf.to_vec(),
        });
        Ok(())
    }
    fn sync(&self, f: &File, path: &Path) -> io::Result<()> {
        let file = self.file_of(f);
        self.attempt_on("sync", Some(file))?;
        self.inner.sync(f, path)?;
        self.push(Op::Sync { file });
        Ok(())
    }
    fn set_len(&self, f: &File, path: &Path, len: u64) -> io::Result<()> {
        self.attempt("set_len")?;
        self.inner.set_len(f, path, len)?;
        let file = self.file_of(f);
        self.push(Op::SetLen { file, len });
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.attempt("rename")?;
        self.inner.rename(from, to)?;
        self.push(Op::Rename {
            from: name(from),
            to: name(to),
        });
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.attempt("remove")?;
        self.inner.remove(path)?;
        self.push(Op::Remove { name: name(path) });
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.attempt("sync_dir")?;
        self.inner.sync_dir(dir)?;
        self.push(Op::SyncDir);
        Ok(())
    }
}

/// What a crash may keep of the files and of the directory.
#[derive(Clone, Copy, Debug)]
pub(super) enum Crash {
    /// The process killed: the kernel keeps everything written.
    Process,
    /// Power lost: synced data, names as of the last directory sync.
    Power,
    /// As `Process`, with only the first half of the last write there.
    TornWrite,
    /// Names all there, data only as synced (delayed allocation).
    NamesNotData,
    /// Data all there, names as of the last directory sync.
    DataNotNames,
    /// Names as of the last directory sync, each file its synced data and
    /// half of what was written after.
    HalfUnsynced,
}

pub(super) const CRASHES: [Crash; 6] = [
    Crash::Process,
    Crash::Power,
    Crash::TornWrite,
    Crash::NamesNotData,
    Crash::DataNotNames,
    Crash::HalfUnsynced,
];

#[derive(Clone, Default)]
pub(super) struct Content {
    written: Vec<u8>,
    synced: Vec<u8>,
    /// Bytes that a failed sync left unwritten and marked clean: no later
    /// sync writes them unless they are written again.
    lost: Option<(usize, usize)>,
}

/// The directory as `crash` leaves it after the first `k` changes.
pub(super) fn replay(ops: &[Op], crash: Crash) -> BTreeMap<String, Vec<u8>> {
    let mut files: BTreeMap<usize, Content> = BTreeMap::new();
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut durable: BTreeMap<String, usize> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        let last = i + 1 == ops.len();
        match op {
            Op::Create {
                name,
                file,
                truncate,
            } => {
                let c = files.entry(*file).or_default();
                if *truncate {
                    c.written.clear();
                }
                names.insert(name.clone(), *file);
            }
            Op::Write { file, bytes } => {
                let c = files.get_mut(file).unwrap();
                let n = if last && matches!(crash, Crash::TornWrite) {
                    bytes.len() / 2
                } else {
                    bytes.len()
                };
                c.written.extend_from_slice(&bytes[..n]);
            }
            Op::Sync { file } => {
                let c = files.get_mut(file).unwrap();
                let mut synced = c.written.clone();
                if let Some((from, to)) = c.lost {
                    // What the disk holds there: the bytes synced before.
                    for (i, b) in synced.iter_mut().enumerate().take(to).skip(from) {
                        *b = c.synced.get(i).copied().unwrap_or(0);
                    }
                }
                c.synced = synced;
            }
            Op::SetLen { file, len } => {
                let c = files.get_mut(file).unwrap();
                let len = *len as usize;
                c.written.resize(len, 0);
                c.lost = c
                    .lost
                    .and_then(|(from, to)| (len > from).then_some((from, to.min(len))));
            }
            Op::Rename { from, to } => {
                let file = names.remove(from).unwrap();
                names.insert(to.clone(), file);
            }
            Op::Remove { name } => {
                names.remove(name);
            }
            Op::SyncDir => durable = names.clone(),
            Op::Failed {
                what: "sync",
                file: Some(file),
            } => {
                let c = files.get_mut(file).unwrap();
                let from = c.synced.len().min(c.written.len());
                if c.written.len() > from {
                    c.lost = Some((from, c.written.len()));
                }
            }
            Op::Failed { .. } => {}
        }
    }
    let (listed, data): (_, fn(&Content) -> Vec<u8>) = match crash {
        Crash::Process | Crash::TornWrite => (&names, |c| c.written.clone()),
        Crash::Power => (&durable, |c| c.synced.clone()),
        Crash::NamesNotData => (&names, |c| c.synced.clone()),
        Crash::DataNotNames => (&durable, |c| c.written.clone()),
        Crash::HalfUnsynced => (&durable, |c| {
            if c.written.starts_with(&c.synced) {
                let extra = (c.written.len() - c.synced.len()) / 2;
                c.written[..c.synced.len() + extra].to_vec()
            } else {
                c.synced.clone()
            }
        }),
    };
    listed
        .iter()
        .map(|(name, file)| (name.clone(), data(&files[file])))
        .collect()
}

/// A scratch directory, on a tmpfs where there is one (syncs are cheap).
pub(super) fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

pub(super) fn materialize(state: &BTreeMap<String, Vec<u8>>) -> tempfile::TempDir {
    let dir = scratch();
    for (name, bytes) in state {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    dir
}
