//! Applying the upstream's answers to a [`Pipeline`]: recording final
//! decisions, splitting or resending chunks, and backing off while the
//! upstream does not answer.

use tokio::time::Instant;

use super::{chunks_of, Chunk, Decision, Pipeline};
use crate::metrics::metrics;
use crate::sink::forward::verdict::{Failure, UpstreamError, Verdict};

impl Pipeline {
    /// Applies one answer to the chunk that starts at `start` in `window`.
    pub(super) fn apply(
        &mut self,
        window: u64,
        start: usize,
        epoch: u64,
        answer: Result<Vec<Verdict>, UpstreamError>,
    ) {
        let Some(pos) = self
            .chunks
            .iter()
            .position(|c| c.window == window && c.start == start && c.in_flight)
        else {
            return;
        };
        let len = self.chunks[pos].len;
        let answer = match answer {
            Ok(v) if v.len() != len => Err(UpstreamError::transient(format!(
                "upstream answered for {} of {len} records",
                v.len()
            ))),
            other => other,
        };
        let current = epoch == self.epoch;
        match answer {
            Ok(verdicts) => self.answered(pos, verdicts, current),
            Err(e) => self.failed(pos, e, current),
        }
    }

    fn answered(&mut self, pos: usize, verdicts: Vec<Verdict>, current: bool) {
        self.reached(None, current);
        let Some(chunk) = self.chunks.remove(pos) else {
            return;
        };
        let Some(w) = self.windows.iter_mut().find(|w| w.id == chunk.window) else {
            return;
        };
        let mut retry = Vec::new();
        for (i, verdict) in (chunk.start..).zip(verdicts) {
            let decision = match verdict {
                Verdict::Acked | Verdict::Duplicate => Decision::Delivered,
                Verdict::Rejected(why) => {
                    tracing::warn!(sink = %self.name, key = ?w.records[i].key, reason = %why, "upstream rejected a record; moved to dead-letter.jsonl");
                    Decision::DeadLetter(why)
                }
                Verdict::Retry => {
                    retry.push(i);
                    continue;
                }
            };
            w.decisions[i] = Some(decision);
            w.open -= 1;
        }
        if retry.is_empty() {
            if self.resume_at.is_none() {
                self.backoff.reset();
            }
            return;
        }
        // Not acknowledged this time (a collector's missing acks): the
        // records go again, after a pause, in runs that keep their order.
        let window = chunk.window;
        let mut runs: Vec<Chunk> = Vec::new();
        for i in retry {
            match runs.last_mut() {
                Some(run) if run.start + run.len == i => run.len += 1,
                _ => runs.push(Chunk {
                    window,
                    start: i,
                    len: 1,
                    in_flight: false,
                }),
            }
        }
        for (k, run) in runs.into_iter().enumerate() {
            self.chunks.insert(pos + k, run);
        }
        self.pause();
    }

    fn failed(&mut self, pos: usize, e: UpstreamError, current: bool) {
        let (window, start, len) = {
            let c = &self.chunks[pos];
            (c.window, c.start, c.len)
        };
        // Halves at least, so that splitting always ends.
        let split = |size: usize| (len > 1).then(|| size.clamp(1, len.div_ceil(2)));
        let resend = match &e.class {
            Failure::Limit { max } => {
                if let Some(max) = *max {
                    if self.limit.is_none_or(|l| max < l) && max > 0 {
                        tracing::info!(sink = %self.name, stream = self.labels.stream, limit = max, "upstream takes at most this many records per request; sending no more");
                        self.limit = Some(max);
                    }
                }
                split(max.unwrap_or(len))
            }
            Failure::TooBig | Failure::Refused(_) => {
                if len == 1 {
                    self.reached(None, current);
                    let why = match &e.class {
                        Failure::Refused(why) => why.clone(),
                        _ => format!("too large for the upstream: {}", e.message),
                    };
                    self.chunks.remove(pos);
                    if let Some(w) = self.windows.iter_mut().find(|w| w.id == window) {
                        tracing::warn!(sink = %self.name, key = ?w.records[start].key, reason = %why, "upstream refused a record; moved to dead-letter.jsonl");
                        w.decisions[start] = Some(Decision::DeadLetter(why));
                        w.open -= 1;
                    }
                    return;
                }
                split(len)
            }
            Failure::Busy | Failure::Transient => None,
        };
        self.chunks.remove(pos);
        match resend {
            Some(size) => {
                // About the request, not the upstream's health: sent again
                // at once, smaller.
                self.reached(None, current);
                for (k, c) in chunks_of(window, start, len, size).into_iter().enumerate() {
                    self.chunks.insert(pos + k, c);
                }
            }
            None => {
                self.reached(Some(&e), current);
                self.chunks.insert(
                    pos,
                    Chunk {
                        window,
                        start,
                        len,
                        in_flight: false,
                    },
                );
                self.probing = true;
                self.pause();
            }
        }
    }

    /// No new request until the backoff has passed.
    fn pause(&mut self) {
        metrics().retries.get_or_create(&self.labels).inc();
        if self.resume_at.is_none() {
            self.resume_at = Some(Instant::now() + self.backoff.next());
        }
    }

    /// Notes whether the upstream answered (`None`) or not, logging only
    /// changes; `current`: the request was sent in the current epoch.
    fn reached(&mut self, failure: Option<&UpstreamError>, current: bool) {
        if !current {
            return;
        }
        match failure {
            None => {
                if !self.up {
                    tracing::info!(sink = %self.name, stream = self.labels.stream, "upstream reachable again; delivering the backlog");
                }
                self.up = true;
                self.probing = false;
            }
            Some(e) => {
                if self.up {
                    let what = if e.class == Failure::Busy {
                        "upstream busy; records stay spooled and are retried"
                    } else {
                        "upstream unreachable; records stay spooled and are retried"
                    };
                    tracing::warn!(sink = %self.name, stream = self.labels.stream, error = %e, "{what}");
                    self.epoch += 1;
                }
                self.up = false;
            }
        }
    }
}
