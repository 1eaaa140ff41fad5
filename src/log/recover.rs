//! After a failure: cutting back what reached the files unacknowledged,
//! and reopening the stream from disk once the cause has gone away (a
//! client's next write, or the writer's periodic probe).

use std::io;

use super::open;
use super::writer::Writer;
use super::LogError;

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
            }
        }
        self.dirty = false;
        if self.shared.set_healthy(false) {
            tracing::error!(stream = self.config.stream, error = %e, "ledger {what} failed; refusing writes until it recovers");
        }
        LogError(format!("ledger {what} failed: {e}"))
    }

    /// Opens the stream from disk again. `probe`: also check that the disk
    /// takes bytes (see [`has_room`]), for the periodic probe, which has no
    /// write of its own to fail.
    pub(super) fn reopen(&mut self, probe: bool) -> io::Result<()> {
        let opened = open::open(&self.config)?;
        if probe {
            has_room(&opened.active.data, opened.active.len)?;
        }
        self.install(opened);
        tracing::info!(
            stream = self.config.stream,
            "ledger reopened; writing again"
        );
        Ok(())
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
