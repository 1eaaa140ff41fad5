//! The forwarder of one spool stream: reads windows of whole records from
//! the spool's log (ahead of the cursor, while earlier windows are in
//! flight), hands them to the delivery [`Pipeline`], and as each window gets
//! its final answers, in order, records dead letters, moves the cursor
//! (a synced rename) and lets the log delete the segments it delivered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::deliver::{Decision, Done, Pipeline};
use super::{Backoff, ForwardOptions, Upstream};
use crate::log::LogReader;
use crate::metrics::{metrics, ForwardLabels};
use crate::spool::{Spool, Stream, Window};

/// Delivers one spool stream, in order, from its cursor.
pub(super) struct Forwarder {
    name: String,
    stream: Stream,
    spool: Arc<Spool>,
    upstream: Arc<dyn Upstream>,
    /// Where the next window is read; `None` while a blocking read has it.
    reader: Option<LogReader>,
    /// The last position with a final answer (stored in the cursor file).
    cursor: u64,
    /// Log bytes before the first undelivered record, for the spool's
    /// admission (see `Spooled::delivered`).
    delivered: Arc<AtomicU64>,
    /// Per window in the pipeline, in order: its last position, the log
    /// bytes up to its end, and the receive time of its first record.
    windows: VecDeque<(u64, Option<u64>, Option<i64>)>,
    backoff: Backoff,
    labels: ForwardLabels,
    options: ForwardOptions,
}

// === impl Forwarder ===

impl Forwarder {
    pub(super) async fn start(
        name: &str,
        stream: Stream,
        spool: Arc<Spool>,
        upstream: Arc<dyn Upstream>,
        options: &ForwardOptions,
        delivered: Arc<AtomicU64>,
    ) -> std::io::Result<Forwarder> {
        let s = spool.clone();
        let (cursor, reader, bytes) = tokio::task::spawn_blocking(move || {
            let cursor = s.load_cursor(stream)?;
            let mut reader = s
                .log(stream)
                .reader(cursor)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let bytes = reader
                .locate_now()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok::<_, std::io::Error>((cursor, reader, bytes))
        })
        .await
        .map_err(std::io::Error::other)??;
        delivered.store(bytes, Ordering::Release);
        let labels = ForwardLabels {
            sink: name.to_owned(),
            stream: stream.name(),
        };
        let backlog = spool.log(stream).end().saturating_sub(cursor);
        metrics()
            .backlog_records
            .get_or_create(&labels)
            .set(i64::try_from(backlog).unwrap_or(i64::MAX));
        if backlog > 0 {
            tracing::info!(
                sink = name,
                stream = stream.name(),
                records = backlog,
                "spool has a backlog to deliver"
            );
        }
        Ok(Forwarder {
            name: name.to_owned(),
            stream,
            spool,
            upstream,
            reader: Some(reader),
            cursor,
            delivered,
            windows: VecDeque::new(),
            backoff: Backoff::new(options.retry_max),
            labels,
            options: options.clone(),
        })
    }

    pub(super) async fn run(mut self, stop: CancellationToken) {
        let mut pipeline = Pipeline::new(
            self.upstream.clone(),
            self.options.in_flight,
            self.options.retry_max,
            self.name.clone(),
            self.labels.clone(),
        );
        // Woken by the log's writer when records become durable.
        let mut appended = self.spool.log(self.stream).subscribe();
        // Whether the last read found nothing new.
        let mut at_end = false;
        while !stop.is_cancelled() {
            self.publish_backlog();
            if !at_end && pipeline.wants_more() {
                // Marked before reading: an append after the read wakes the wait below.
                appended.borrow_and_update();
                let Some(window) = self.read_window(&stop).await else {
                    return; // stopping: the rest stays spooled
                };
                match window.last {
                    None => at_end = true,
                    Some(last) => {
                        let bytes = self.reader.as_ref().and_then(|r| r.bytes_before());
                        self.windows
                            .push_back((last, bytes, window.oldest_received));
                        let records = window.records.into_iter().map(|(_, r)| r).collect();
                        pipeline.push(records, last);
                    }
                }
            } else if !pipeline.is_empty() {
                let Some(done) = pipeline.next(&stop).await else {
                    return; // stopping: the rest stays spooled
                };
                if !self.finish(done, &stop).await {
                    return;
                }
                at_end = false;
            } else {
                tokio::select! {
                    changed = appended.changed() => if changed.is_err() { return },
                    () = stop.cancelled() => return,
                }
                at_end = false;
            }
        }
    }

    /// Reads the next window off the async executor; a failed read is
    /// logged and retried after a pause. `None` when stopped.
    async fn read_window(&mut self, stop: &CancellationToken) -> Option<Window> {
        loop {
            let mut reader = self.reader.take()?;
            let (spool, stream) = (self.spool.clone(), self.stream);
            let read = tokio::task::spawn_blocking(move || {
                let window = spool.read(stream, &mut reader);
                (reader, window)
            })
            .await;
            match read {
                Ok((reader, result)) => {
                    self.reader = Some(reader);
                    match result {
                        Ok(window) => {
                            if window.quarantined > 0 {
                                let m = metrics();
                                m.quarantined
                                    .get_or_create(&self.labels)
                                    .inc_by(window.quarantined);
                                m.backlog_records
                                    .get_or_create(&self.labels)
                                    .dec_by(i64::try_from(window.quarantined).unwrap_or(0));
                            }
                            if self.windows.is_empty() {
                                self.publish_oldest(window.oldest_received);
                            }
                            return Some(window);
                        }
                        Err(e) => {
                            tracing::error!(sink = %self.name, error = %e, "reading the spool failed")
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(sink = %self.name, error = %e, "spool reader failed");
                    return None;
                }
            }
            if !self.pause(stop).await {
                return None;
            }
        }
    }

    fn publish_backlog(&self) {
        let end = self.spool.log(self.stream).bytes_end();
        let bytes = end.saturating_sub(self.delivered.load(Ordering::Acquire));
        metrics()
            .backlog_bytes
            .get_or_create(&self.labels)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        if bytes == 0 {
            self.publish_oldest(None);
        }
    }

    /// The age of the oldest record still waiting for an answer, measured
    /// on its receive time.
    fn publish_oldest(&self, received: Option<i64>) {
        let age = received.map_or(0, |r| {
            (crate::log::now_nanos().saturating_sub(r) / 1_000_000_000).max(0)
        });
        metrics()
            .oldest_pending_seconds
            .get_or_create(&self.labels)
            .set(age);
    }

    /// Records a finished window's answers (dead-letters first, so that a
    /// refused record is never lost), moves the cursor past it and releases
    /// the segments it completed. Returns false when stopped first.
    async fn finish(&mut self, done: Done, stop: &CancellationToken) -> bool {
        let m = metrics();
        for (record, decision) in done.records.iter().zip(&done.decisions) {
            match decision {
                Decision::Delivered => self.done(&m.delivered),
                Decision::DeadLetter(why) => {
                    loop {
                        let (spool, r, w) = (self.spool.clone(), record.clone(), why.clone());
                        let written =
                            tokio::task::spawn_blocking(move || spool.dead_letter(&r, &w))
                                .await
                                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                        match written {
                            Ok(()) => break,
                            Err(e) => {
                                tracing::error!(sink = %self.name, error = %e, "writing the dead-letter file failed")
                            }
                        }
                        if !self.pause(stop).await {
                            return false;
                        }
                    }
                    self.done(&m.dead_lettered);
                }
            }
        }
        self.backoff.reset();
        let bytes = match self.windows.pop_front() {
            Some((last, bytes, _)) if last == done.end => bytes,
            _ => None,
        };
        self.publish_oldest(self.windows.front().and_then(|w| w.2));
        self.cursor = done.end;
        let (spool, stream, cursor) = (self.spool.clone(), self.stream, self.cursor);
        match tokio::task::spawn_blocking(move || spool.store_cursor(stream, cursor)).await {
            // Stored before anything is released: a crash never leaves a
            // cursor pointing before a deleted segment's records.
            Ok(Ok(())) => {
                if let Some(bytes) = bytes {
                    self.delivered.store(bytes, Ordering::Release);
                }
                if let Err(e) = self.spool.log(self.stream).release(cursor).await {
                    tracing::warn!(sink = %self.name, error = %e, "deleting delivered spool segments failed; retried after the next window");
                }
            }
            // The records were delivered; a stale cursor only means they may
            // be delivered again after a restart (the upstream dedupes).
            Ok(Err(e)) => {
                tracing::error!(sink = %self.name, error = %e, "storing the spool cursor failed")
            }
            Err(e) => {
                tracing::error!(sink = %self.name, error = %e, "storing the spool cursor failed")
            }
        }
        true
    }

    fn done(
        &self,
        counter: &prometheus_client::metrics::family::Family<
            ForwardLabels,
            prometheus_client::metrics::counter::Counter,
        >,
    ) {
        counter.get_or_create(&self.labels).inc();
        metrics().backlog_records.get_or_create(&self.labels).dec();
    }

    /// Waits before the next attempt; false when stopped meanwhile.
    async fn pause(&mut self, stop: &CancellationToken) -> bool {
        metrics().retries.get_or_create(&self.labels).inc();
        tokio::select! {
            () = tokio::time::sleep(self.backoff.next()) => true,
            () = stop.cancelled() => false,
        }
    }
}
