//! The seam through which the log changes its files: creating, writing,
//! syncing, truncating, renaming and removing them, and syncing their
//! directory. Reads do not go through it. [`RealDisk`] is the file system;
//! tests put a disk of their own here to record every change (and build
//! the states a crash could leave) or to fail one with ENOSPC or EIO.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Arc;

/// How a file is opened for writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    /// Read and append, created if missing (a log's data and record files).
    Append,
    /// Written from the start, created or emptied (a temporary file).
    Truncate,
}

/// Every change the log makes to its files. Safe for concurrent use.
pub trait Disk: Send + Sync + 'static {
    fn create(&self, path: &Path, how: Create) -> io::Result<File>;
    /// Writes all of `buf` at the file's end (files are only appended to
    /// or written once from the start).
    fn write(&self, file: &File, path: &Path, buf: &[u8]) -> io::Result<()>;
    /// Makes the file's data durable (`fdatasync`).
    fn sync(&self, file: &File, path: &Path) -> io::Result<()>;
    fn set_len(&self, file: &File, path: &Path, len: u64) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The file system itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealDisk;

impl Disk for RealDisk {
    fn create(&self, path: &Path, how: Create) -> io::Result<File> {
        let mut o = OpenOptions::new();
        match how {
            Create::Append => o.create(true).append(true).read(true),
            Create::Truncate => o.create(true).write(true).truncate(true),
        };
        o.mode(0o600).open(path)
    }
    fn write(&self, mut file: &File, _: &Path, buf: &[u8]) -> io::Result<()> {
        file.write_all(buf)
    }
    fn sync(&self, file: &File, _: &Path) -> io::Result<()> {
        file.sync_data()
    }
    fn set_len(&self, file: &File, _: &Path, len: u64) -> io::Result<()> {
        file.set_len(len)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir).and_then(|d| d.sync_all())
    }
}

/// A shared disk, as configurations hold it.
#[derive(Clone)]
pub struct DiskRef(pub Arc<dyn Disk>);

impl Default for DiskRef {
    fn default() -> Self {
        DiskRef(Arc::new(RealDisk))
    }
}

impl std::fmt::Debug for DiskRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Disk")
    }
}

impl std::ops::Deref for DiskRef {
    type Target = dyn Disk;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

/// `io::Write` over a disk's writes, for buffered writers of whole files.
pub(crate) struct Writer<'a> {
    pub disk: &'a dyn Disk,
    pub file: &'a File,
    pub path: &'a Path,
}

impl io::Write for Writer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.disk.write(self.file, self.path, buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
