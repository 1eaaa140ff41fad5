//! The pause between delivery attempts.

use std::time::Duration;

/// Capped exponential backoff with full jitter: attempt n waits a random
/// time in [0, min(max, 100 ms * 2^n)], so that many sidecars retrying the
/// same upstream spread out.
pub(crate) struct Backoff {
    attempt: u32,
    max: Duration,
}

impl Backoff {
    const INITIAL: Duration = Duration::from_millis(100);

    pub(crate) fn new(max: Duration) -> Self {
        Backoff { attempt: 0, max }
    }

    pub(crate) fn next(&mut self) -> Duration {
        let ceiling = Self::INITIAL
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling
            .mul_f64(fastrand::f64())
            .max(Duration::from_millis(10))
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// The ceiling of attempt `n` (0-based): 100 ms doubling, capped.
    fn ceiling(n: u32, max: Duration) -> Duration {
        Backoff::INITIAL.saturating_mul(1 << n.min(20)).min(max)
    }

    /// On paused time the waits are exact: each one lies between the floor
    /// and its attempt's ceiling, the ceilings double up to the cap, and a
    /// reset starts over.
    #[tokio::test(start_paused = true)]
    async fn waits_grow_to_the_cap_with_jitter_and_reset() {
        fastrand::seed(9);
        let max = Duration::from_secs(2);
        let mut backoff = Backoff::new(max);
        let mut waits = Vec::new();
        for n in 0..12 {
            let start = Instant::now();
            tokio::time::sleep(backoff.next()).await;
            let waited = start.elapsed();
            assert!(
                waited >= Duration::from_millis(10),
                "attempt {n}: {waited:?}"
            );
            assert!(waited <= ceiling(n, max), "attempt {n}: {waited:?}");
            waits.push(waited);
        }
        // Jitter: the capped attempts do not all wait the same.
        let capped = &waits[5..];
        assert!(capped.iter().any(|w| *w != capped[0]), "{capped:?}");
        assert!(capped.iter().any(|w| *w > max / 2), "{capped:?}");

        backoff.reset();
        for n in 0..3 {
            let start = Instant::now();
            tokio::time::sleep(backoff.next()).await;
            assert!(
                start.elapsed() <= ceiling(n, max),
                "after reset, attempt {n}"
            );
        }
    }

    /// A retry loop against an upstream that fails ten times gives up
    /// waiting no later than the sum of the ceilings, and a long outage
    /// never waits longer than the cap between attempts.
    #[tokio::test(start_paused = true)]
    async fn a_retry_loop_is_bounded_by_the_ceilings() {
        fastrand::seed(1);
        let max = Duration::from_millis(800);
        let mut backoff = Backoff::new(max);
        let start = Instant::now();
        let mut failures = 0u32;
        let mut longest = Duration::ZERO;
        while failures < 10 {
            failures += 1;
            let before = Instant::now();
            tokio::time::sleep(backoff.next()).await;
            longest = longest.max(before.elapsed());
        }
        let bound: Duration = (0..10).map(|n| ceiling(n, max)).sum();
        assert!(
            start.elapsed() <= bound,
            "{:?} > {bound:?}",
            start.elapsed()
        );
        assert!(longest <= max);
        // Far into an outage (attempt counts that would overflow a shift)
        // the wait stays capped.
        for _ in 0..100 {
            assert!(backoff.next() <= max);
        }
    }
}
