//! A helper thread that syncs a segment's receive-time file while the
//! writer syncs its data file: the two flushes overlap instead of adding up
//! (a journaling filesystem commits concurrent syncs together, and the
//! device flushes once for both where it can).

use std::fs::File;
use std::io;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

pub(crate) struct Syncer {
    tx: Option<mpsc::Sender<Arc<File>>>,
    done: mpsc::Receiver<io::Result<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    pub fn start(stream: &str) -> io::Result<Syncer> {
        let (tx, rx) = mpsc::channel::<Arc<File>>();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("log-{stream}-sync"))
            .spawn(move || {
                while let Ok(file) = rx.recv() {
                    if done_tx.send(file.sync_data()).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Syncer {
            tx: Some(tx),
            done,
            thread: Some(thread),
        })
    }

    /// Syncs `data` here and `other` on the helper thread at the same time;
    /// both results. Falls back to one after the other if the helper is gone.
    pub fn sync_both(&self, data: &File, other: &Arc<File>) -> (io::Result<()>, io::Result<()>) {
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(other.clone()).is_ok());
        let first = data.sync_data();
        let second = if sent {
            self.done
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("sync thread stopped")))
        } else {
            other.sync_data()
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
