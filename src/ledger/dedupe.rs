//! The dedupe index: keys of records in the ledger whose own time is within
//! the window. Owned by one journal's writer thread, so it needs no lock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

/// How often expired keys are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

pub(crate) struct Dedupe {
    window: Duration,
    /// Key to the record's time, in unix seconds.
    seen: HashMap<Box<str>, i64>,
    last_sweep: Instant,
}

impl Dedupe {
    pub(crate) fn new(window: Duration) -> Self {
        Dedupe {
            window,
            seen: HashMap::new(),
            last_sweep: Instant::now(),
        }
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.seen.contains_key(key)
    }

    /// Remembers a key whose record is durable. Keys outside the window are
    /// not kept: they would only be swept out again.
    pub(crate) fn insert(&mut self, key: Box<str>, time: OffsetDateTime, now: OffsetDateTime) {
        let t = time.unix_timestamp();
        if t >= self.cutoff(now) {
            let slot = self.seen.entry(key).or_insert(t);
            *slot = (*slot).max(t);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }

    /// Drops keys that left the window; cheap to call often.
    pub(crate) fn sweep(&mut self, now: OffsetDateTime) {
        if self.last_sweep.elapsed() < SWEEP_EVERY {
            return;
        }
        self.last_sweep = Instant::now();
        let cutoff = self.cutoff(now);
        self.seen.retain(|_, t| *t >= cutoff);
    }

    fn cutoff(&self, now: OffsetDateTime) -> i64 {
        now.unix_timestamp()
            .saturating_sub(i64::try_from(self.window.as_secs()).unwrap_or(i64::MAX))
    }
}
