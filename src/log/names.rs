//! File names of a log stream. A sealed segment is named by its first
//! position, zero-padded, so that `ls` lists the log in order and the active
//! file (`entries.jsonl`) sorts after every sealed one.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::annotate;
use super::disk::{Create, DiskRef};

/// The data of a sealed segment: the ledger lines, byte for byte.
pub(crate) const DATA: &str = "jsonl";
/// Receive times of a segment's groups (see `times.rs`); not derivable from the data.
pub(crate) const TIMES: &str = "times";
/// The key index of a sealed segment (see `keys.rs`); derived from the data and the times.
pub(crate) const KEYS: &str = "keys";
/// The seal of a sealed segment (see `chain.rs`): kept after retention.
pub(crate) const SEAL: &str = "seal";
/// A reader's usage checkpoint of a sealed segment (see `crate::read`):
/// derived, rebuilt whenever missing or stale, deleted with its segment.
pub(crate) const USAGE: &str = "usage";

/// The files of one stream (`entries` or `batches`) in a directory, and
/// the disk through which they are changed.
#[derive(Clone, Debug)]
pub(crate) struct Names {
    pub dir: PathBuf,
    pub stream: &'static str,
    pub disk: DiskRef,
}

impl Names {
    /// The files of `stream` in `dir`, changed on the file system itself.
    pub fn new(dir: &Path, stream: &'static str) -> Names {
        Names {
            dir: dir.to_path_buf(),
            stream,
            disk: DiskRef::default(),
        }
    }

    /// The files of a configured stream.
    pub fn of(config: &super::LogConfig) -> Names {
        Names {
            dir: config.dir.clone(),
            stream: config.stream,
            disk: config.disk.clone(),
        }
    }

    /// Makes creations, renames and removals in the directory durable.
    pub fn sync_dir(&self) -> io::Result<()> {
        self.disk
            .sync_dir(&self.dir)
            .map_err(|e| annotate(e, "sync directory", &self.dir))
    }

    /// Opens (creating) a file to write.
    pub fn create(&self, path: &Path, how: Create) -> io::Result<File> {
        self.disk
            .create(path, how)
            .map_err(|e| annotate(e, "create", path))
    }

    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.disk
            .rename(from, to)
            .map_err(|e| annotate(e, "rename", from))
    }

    /// Removes a file; one that is not there is fine.
    pub fn remove(&self, path: &Path) -> io::Result<()> {
        match self.disk.remove(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(annotate(e, "delete", path)),
            _ => Ok(()),
        }
    }

    /// Writes `path` through a synced temporary file renamed over it; the
    /// caller syncs the directory. Blocking.
    pub fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let tmp = temporary(path);
        let f = self.create(&tmp, Create::Truncate)?;
        self.disk
            .write(&f, &tmp, data)
            .and_then(|()| self.disk.sync(&f, &tmp))
            .map_err(|e| annotate(e, "write", &tmp))?;
        self.rename(&tmp, path)
    }

    /// `entries.jsonl`: the active file, named as the Go package names it.
    pub fn active_data(&self) -> PathBuf {
        self.dir.join(format!("{}.{DATA}", self.stream))
    }

    /// `entries.times`: receive times of the active file's groups.
    pub fn active_times(&self) -> PathBuf {
        self.dir.join(format!("{}.{TIMES}", self.stream))
    }

    /// `entries.keys`: the active file's key index, written at a clean
    /// shutdown so that the next start need not read the file.
    pub fn active_keys(&self) -> PathBuf {
        self.dir.join(format!("{}.{KEYS}", self.stream))
    }

    /// `entries.damaged`: bytes cut from a damaged tail, kept for inspection.
    pub fn damaged(&self) -> PathBuf {
        self.dir.join(format!("{}.damaged", self.stream))
    }

    /// `entries.00000000000000000001.jsonl` and its `.times` and `.keys`.
    pub fn sealed(&self, first: u64, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{first:020}.{ext}", self.stream))
    }

    /// `(first, ext)` when `name` is a sealed segment file of this stream.
    pub fn parse_sealed<'a>(&self, name: &'a str) -> Option<(u64, &'a str)> {
        let rest = name.strip_prefix(self.stream)?.strip_prefix('.')?;
        let (digits, ext) = rest.split_once('.')?;
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((digits.parse().ok()?, ext))
    }

    /// Whether `name` is a temporary file of this stream left by a crash.
    pub fn is_temporary(&self, name: &str) -> bool {
        name.starts_with(self.stream)
            && name.as_bytes().get(self.stream.len()) == Some(&b'.')
            && name.ends_with(".tmp")
    }
}

/// The active file's name as a static label (for metrics).
pub(crate) fn label(stream: &'static str) -> &'static str {
    match stream {
        "entries" => "entries.jsonl",
        "batches" => "batches.jsonl",
        other => other,
    }
}

/// The temporary name a file is written under before it is renamed over `path`.
pub(crate) fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_names_sort_in_log_order_before_the_active_file() {
        let n = Names::new(Path::new("/l"), "entries");
        let mut names: Vec<String> = [n.active_data(), n.sealed(10, DATA), n.sealed(9, DATA)]
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "entries.00000000000000000009.jsonl",
                "entries.00000000000000000010.jsonl",
                "entries.jsonl"
            ]
        );
        assert_eq!(
            n.parse_sealed("entries.00000000000000000010.keys"),
            Some((10, "keys"))
        );
        assert_eq!(n.parse_sealed("entries.jsonl"), None);
        assert_eq!(n.parse_sealed("batches.00000000000000000010.keys"), None);
        assert_eq!(n.parse_sealed("entries.0000000000000000001.keys"), None);
        assert!(n.is_temporary("entries.times.tmp"));
        assert!(!n.is_temporary("entriesx.tmp"));
    }
}
