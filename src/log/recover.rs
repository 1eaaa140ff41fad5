//! After a failure: cutting back what reached the files unacknowledged,
//! and reopening the stream from disk once the cause has gone away (a
//! client's next write, or the writer's periodic probe).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use super::open;
use super::state::Active;
use super::times;
use super::writer::Writer;
use super::{Fsync, LogError};

// === impl Writer ===

impl Writer {
    /// After a failed write, sync or seal: cut whatever part of the group
    /// reached the files, so that they hold only acknowledged records, and
    /// drop the state so that the next write reopens from disk.
    pub(super) fn failed(&mut self, what: &str, e: io::Error) -> LogError {
        if let Some(st) = self.state.take() {
            let regular = st
                .active
                .data
                .metadata()
                .map(|m| m.is_file())
                .unwrap_or(false);
            if regular {
                let names = &self.shared.names;
                let (disk, data, times) = (&names.disk, names.active_data(), names.active_times());
                let cut = disk
                    .set_len(&st.active.data, &data, st.active.len)
                    .and_then(|()| disk.sync(&st.active.data, &data))
                    .and_then(|()| disk.set_len(&st.active.times, &times, st.active.times_len))
                    .and_then(|()| disk.sync(&st.active.times, &times));
                if let Err(e) = cut {
                    tracing::warn!(stream = self.config.stream, error = %e, "could not cut an unacknowledged write; the next open repairs the tail");
                }
                if self.config.fsync != Fsync::Always {
                    self.redirty(&st.active);
                }
            }
        }
        self.dirty = false;
        if self.shared.set_healthy(false) {
            tracing::error!(stream = self.config.stream, error = %e, "ledger {what} failed; refusing writes until it recovers");
        }
        let err = LogError(format!("ledger {what} failed: {e}"));
        self.failure.get_or_insert_with(|| err.clone());
        err
    }

    /// Writes again what was acknowledged (policies `interval` and `never`)
    /// but not yet synced when a sync failed: after a failed `fsync` the
    /// kernel may mark those pages clean without having written them (the
    /// PostgreSQL "fsyncgate" lesson), so no later sync would. Read back
    /// from the page cache, cut and appended again, they are dirty again,
    /// and the next sync (after the reopen) writes them or fails.
    fn redirty(&self, active: &Active) {
        let names = &self.shared.names;
        let (first, len, times_len) = self.synced;
        let (from, times_from) = if first == active.first {
            (len, times_len)
        } else {
            (0, times::HEADER as u64)
        };
        if active.len <= from && active.times_len <= times_from {
            return; // everything acknowledged was synced
        }
        let again = |file: &File, path: &Path, from: u64, to: u64| -> io::Result<()> {
            if to <= from {
                return Ok(());
            }
            let mut bytes = vec![0u8; usize::try_from(to - from).map_err(io::Error::other)?];
            file.read_exact_at(&mut bytes, from)?;
            names.disk.set_len(file, path, from)?;
            names.disk.write(file, path, &bytes)
        };
        let done = again(&active.data, &names.active_data(), from, active.len).and_then(|()| {
            again(
                &active.times,
                &names.active_times(),
                times_from,
                active.times_len,
            )
        });
        match done {
            Ok(()) => tracing::warn!(
                stream = self.config.stream,
                bytes = active.len.saturating_sub(from),
                "a sync failed with acknowledged records not yet synced; wrote them again so that the next sync writes them"
            ),
            Err(e) => tracing::error!(
                stream = self.config.stream,
                error = %e,
                "a sync failed and the records written since the last sync could not be written again; they may be lost on a power failure"
            ),
        }
    }

    /// Opens the stream from disk again, and checks that the disk takes
    /// bytes (see [`has_room`]): opening succeeds on a full disk, so a
    /// reopen without the check would succeed for every call and its write
    /// fail, and each call would flip health and log twice. `probe`: for the
    /// periodic probe, which has no write of its own to prove the disk
    /// works: its success alone turns the stream healthy. A client's write
    /// turns it healthy only once that write is in (see `healthy_again`).
    pub(super) fn reopen(&mut self, probe: bool) -> io::Result<()> {
        let opened = open::open(&self.config)?;
        has_room(&opened.active.data, opened.active.len)?;
        self.install(opened);
        if probe {
            self.healthy_again();
        }
        Ok(())
    }

    /// After a write or a probe that worked: healthy, logged once when the
    /// stream was not.
    pub(super) fn healthy_again(&mut self) {
        self.failure = None;
        if self.shared.set_healthy(true) {
            tracing::info!(
                stream = self.config.stream,
                "ledger writes work again; taking writes"
            );
        }
    }
}

/// Whether the file system takes more bytes for `data`, whose length is
/// `len`. Opening a file succeeds on a full disk, so the probe reserves one
/// page past the end without changing the length (`fallocate` with
/// `FALLOC_FL_KEEP_SIZE`); a full disk (or a device standing in for one in
/// tests) keeps failing it. A file system without `fallocate` cannot tell:
/// opening is the probe there, and the next write decides.
fn has_room(data: &std::fs::File, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let offset = libc::off_t::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too long"))?;
        // SAFETY: `data` is an open file for the whole call; fallocate reads
        // no memory of ours.
        let r =
            unsafe { libc::fallocate(data.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, offset, 4096) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(e);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (data, len);
    Ok(())
}
