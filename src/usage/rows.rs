//! Cutting one (family, id)'s paired intervals into bucket rows, with exact
//! integer arithmetic.
//!
//! # Why the sums cannot overflow
//! `Usage::new` refuses ranges longer than `i64::MAX` nanoseconds, and
//! intervals of one (family, id) never overlap, so a bucket's nanoseconds sum
//! to at most `i64::MAX` (< 2⁶³). Billed values are non-negative `i64`s, so a
//! bucket's `Σ value × nanos` is at most `i64::MAX × i64::MAX` < 2¹²⁶, well
//! inside `u128`. (16 TiB for 31 days is about 4.7 × 10²⁸ byte-nanoseconds,
//! below 2⁹⁶.)

use super::decimal::Decimal;
use super::pairing::Interval;
use super::{Family, UnixNanos};

/// What one bucket has gathered so far.
#[derive(Clone, Copy, Debug)]
pub struct Acc {
    /// Index of the bucket: `[bounds[bucket], bounds[bucket + 1])`.
    pub bucket: usize,
    pub nanos: u64,
    pub vcpu: Decimal,
    pub mem: Decimal,
    pub storage: Decimal,
    pub intervals: u32,
    pub open: bool,
    /// Hypervisor of the latest interval in the bucket (intervals arrive in
    /// time order, so: the last one added).
    pub hypervisor: u32,
}

/// Accumulates intervals, given in time order, into rows.
pub struct Rows<'a> {
    family: Family,
    /// Bucket boundaries: `bounds[0]` is the range's start, the last its end.
    bounds: &'a [UnixNanos],
    /// Nothing at or after this counts: the earliest of end, as_of and now.
    horizon: UnixNanos,
    current: Option<Acc>,
    done: Vec<Acc>,
}

// === impl Rows ===

impl<'a> Rows<'a> {
    /// Rows gathered into `buf` (emptied first): a report reuses one buffer
    /// for all its ids.
    pub fn new(
        family: Family,
        bounds: &'a [UnixNanos],
        horizon: UnixNanos,
        mut buf: Vec<Acc>,
    ) -> Rows<'a> {
        buf.clear();
        Rows {
            family,
            bounds,
            horizon,
            current: None,
            done: buf,
        }
    }

    /// Adds the visible part of `iv` to every bucket it overlaps. Intervals
    /// must come in time order and not overlap, as `pairing::pair` gives them.
    pub fn add(&mut self, iv: Interval) {
        let Some(&range_start) = self.bounds.first() else {
            return;
        };
        let lo = iv.since.max(range_start);
        let hi = iv.until.map_or(self.horizon, |u| u.min(self.horizon));
        if lo >= hi {
            return;
        }
        let (cpu, mem, storage) = iv.billed.rates(self.family);
        // bounds[0] <= lo, so the partition point is at least 1.
        let mut k = self.bounds.partition_point(|&b| b <= lo) - 1;
        while k + 1 < self.bounds.len() && self.bounds[k] < hi {
            // The end of what this bucket can see.
            let seen = self.bounds[k + 1].min(self.horizon);
            let a = lo.max(self.bounds[k]);
            let z = hi.min(seen);
            if a < z {
                // At most the range's length, which Usage::new bounds by i64::MAX.
                let n = u64::try_from(z - a).unwrap_or(u64::MAX);
                let acc = self.bucket(k, iv.hypervisor);
                acc.nanos += n;
                acc.vcpu += Decimal::product(cpu, n);
                acc.mem += Decimal::product(mem, n);
                acc.storage += Decimal::product(storage, n);
                acc.intervals = acc.intervals.saturating_add(1);
                acc.hypervisor = iv.hypervisor;
                // Still running where the bucket's view ends: no stop yet, or
                // a stop after that point.
                acc.open |= iv.until.is_none_or(|u| u > seen);
            }
            k += 1;
        }
    }

    /// The accumulator of bucket `k`, flushing the previous one.
    fn bucket(&mut self, k: usize, hypervisor: u32) -> &mut Acc {
        if self.current.is_some_and(|c| c.bucket != k) {
            self.done.extend(self.current.take());
        }
        self.current.get_or_insert(Acc {
            bucket: k,
            nanos: 0,
            vcpu: Decimal::ZERO,
            mem: Decimal::ZERO,
            storage: Decimal::ZERO,
            intervals: 0,
            open: false,
            hypervisor,
        })
    }

    /// The rows, in bucket order: only buckets with time in them, or open.
    pub fn finish(mut self) -> Vec<Acc> {
        self.done.extend(self.current.take());
        self.done.retain(|a| a.nanos > 0 || a.open);
        self.done
    }
}
