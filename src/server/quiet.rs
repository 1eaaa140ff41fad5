//! Logging refusals and failures once per change of state, with counts,
//! never once per call: under overload the log must not become the disk's
//! next problem. `/metrics` carries the per-call truth.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often a summary is logged while a state lasts.
const SUMMARY_EVERY: Duration = Duration::from_secs(5);

/// One kind of refusal (spool full, writes failing). Safe for concurrent use.
pub(crate) struct Quiet {
    what: &'static str,
    /// Whether an episode is open: the fast path of [`Quiet::accepted`],
    /// which runs on every call.
    refusing: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Since when calls are refused; `None` while they are not.
    since: Option<Instant>,
    /// Refused calls since the last line logged.
    count: u64,
    total: u64,
    last_line: Option<Instant>,
    last_refusal: Option<Instant>,
}

impl Quiet {
    pub(crate) const fn new(what: &'static str) -> Quiet {
        Quiet {
            what,
            refusing: AtomicBool::new(false),
            state: Mutex::new(State {
                since: None,
                count: 0,
                total: 0,
                last_line: None,
                last_refusal: None,
            }),
        }
    }

    /// A call was refused with `error`. Logs when refusing starts, then a
    /// count every few seconds while it lasts.
    pub(crate) fn refused(&self, error: &dyn std::fmt::Display) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        // A pause twice as long as the summary period ends an episode even
        // when no call went through meanwhile (refusals of one client).
        if s.last_refusal
            .is_some_and(|t| now.duration_since(t) > 2 * SUMMARY_EVERY)
        {
            s.since = None;
        }
        s.last_refusal = Some(now);
        self.refusing.store(true, Ordering::Release);
        s.count += 1;
        s.total += 1;
        match (s.since, s.last_line) {
            (None, _) => {
                s.since = Some(now);
                s.last_line = Some(now);
                s.count = 0;
                tracing::warn!(error = %error, "{}: refusing calls", self.what);
            }
            (Some(_), Some(last)) if now.duration_since(last) >= SUMMARY_EVERY => {
                tracing::warn!(
                    error = %error,
                    refused = s.count,
                    in_last = ?now.duration_since(last),
                    "{}: still refusing calls",
                    self.what
                );
                s.count = 0;
                s.last_line = Some(now);
            }
            _ => {}
        }
    }

    /// A call went through: if calls were being refused, that ends, once
    /// none has been for [`SUMMARY_EVERY`]. A limit that is hit now and then
    /// (calls refused and accepted in turn) is one episode, logged when it
    /// starts, summarised every few seconds, and once when it is over; not
    /// two lines each time a call gets through.
    pub(crate) fn accepted(&self) {
        if !self.refusing.load(Ordering::Acquire) {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.last_refusal.is_some_and(|t| t.elapsed() < SUMMARY_EVERY) {
            return;
        }
        self.refusing.store(false, Ordering::Release);
        if let Some(since) = s.since.take() {
            tracing::info!(
                refused = s.total,
                during = ?since.elapsed(),
                "{}: accepting calls again",
                self.what
            );
            s.count = 0;
            s.total = 0;
            s.last_line = None;
            s.last_refusal = None;
        }
    }
}
