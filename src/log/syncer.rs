//! A helper thread that syncs a segment's receive-time file while the
//! writer syncs its data file: the two flushes overlap instead of adding up
//! (a journaling filesystem commits concurrent syncs together, and the
//! device flushes once for both where it can).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use super::disk::DiskRef;
use std::thread::JoinHandle;

pub(crate) struct Syncer {
    tx: Option<mpsc::Sender<(Arc<File>, PathBuf)>>,
    disk: DiskRef,
    done: mpsc::Receiver<io::Result<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    pub fn start(stream: &str, disk: DiskRef) -> io::Result<Syncer> {
        let (tx, rx) = mpsc::channel::<(Arc<File>, PathBuf)>();
        let (done_tx, done) = mpsc::channel();
        let helper = disk.clone();
        let thread = std::thread::Builder::new()
            .name(format!("log-{stream}-sync"))
            .spawn(move || {
                while let Ok((file, path)) = rx.recv() {
                    if done_tx.send(helper.sync(&file, &path)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Syncer {
            tx: Some(tx),
            disk,
            done,
            thread: Some(thread),
        })
    }

    /// Syncs `data` here and `other` on the helper thread at the same time;
    /// both results. Falls back to one after the other if the helper is gone.
    pub fn sync_both(
        &self,
        data: &File,
        data_path: &Path,
        other: &Arc<File>,
        other_path: &Path,
    ) -> (io::Result<()>, io::Result<()>) {
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send((other.clone(), other_path.to_path_buf())).is_ok());
        let first = self.disk.sync(data, data_path);
        let second = if sent {
            self.done
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("sync thread stopped")))
        } else {
            self.disk.sync(other, other_path)
        };
        (first, second)
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // Closing the channel ends the thread.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
