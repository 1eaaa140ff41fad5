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

/// Cuts one (family, id)'s intervals, given in time order and not
/// overlapping (as `pairing::pair` gives them), into rows in bucket order,
/// as they are asked for: only the bucket being filled is held, so an
/// interval open for ten years answered by the hour costs one row at a time.
/// Only buckets with time in them come out.
pub struct Cutter<'a> {
    family: Family,
    /// Bucket boundaries: `bounds[0]` is the range's start, the last its end.
    bounds: &'a [UnixNanos],
    /// Nothing at or after this counts: the earliest of end, as_of and now.
    horizon: UnixNanos,
    intervals: std::vec::IntoIter<Interval>,
    /// The interval being cut: its visible part `[lo, hi)` and the next
    /// bucket it may reach.
    cutting: Option<(UnixNanos, UnixNanos, Interval, usize)>,
    /// The bucket being filled.
    filling: Option<Acc>,
}

/// One interval's part in one bucket.
struct Piece {
    bucket: usize,
    nanos: u64,
    interval: Interval,
    /// Still running where the bucket's view ends: no stop yet, or a stop
    /// after that point.
    open: bool,
}

// === impl Cutter ===

impl<'a> Cutter<'a> {
    pub fn new(
        family: Family,
        bounds: &'a [UnixNanos],
        horizon: UnixNanos,
        intervals: Vec<Interval>,
    ) -> Cutter<'a> {
        Cutter {
            family,
            bounds,
            horizon,
            intervals: intervals.into_iter(),
            cutting: None,
            filling: None,
        }
    }

    /// The next non-empty part of an interval in a bucket, in time order.
    fn next_piece(&mut self) -> Option<Piece> {
        loop {
            if let Some((lo, hi, iv, k)) = &mut self.cutting {
                if *k + 1 < self.bounds.len() && self.bounds[*k] < *hi {
                    let bucket = *k;
                    *k += 1;
                    // The end of what this bucket can see.
                    let seen = self.bounds[bucket + 1].min(self.horizon);
                    let a = (*lo).max(self.bounds[bucket]);
                    let z = (*hi).min(seen);
                    if a < z {
                        return Some(Piece {
                            bucket,
                            // At most the range's length, which Usage::new
                            // bounds by i64::MAX.
                            nanos: u64::try_from(z - a).unwrap_or(u64::MAX),
                            interval: *iv,
                            open: iv.until.is_none_or(|u| u > seen),
                        });
                    }
                    continue;
                }
                self.cutting = None;
            }
            let iv = self.intervals.next()?;
            let &range_start = self.bounds.first()?;
            let lo = iv.since.max(range_start);
            let hi = iv.until.map_or(self.horizon, |u| u.min(self.horizon));
            if lo < hi {
                // bounds[0] <= lo, so the partition point is at least 1.
                let k = self.bounds.partition_point(|&b| b <= lo) - 1;
                self.cutting = Some((lo, hi, iv, k));
            }
        }
    }
}

impl Iterator for Cutter<'_> {
    type Item = Acc;

    fn next(&mut self) -> Option<Acc> {
        loop {
            let Some(piece) = self.next_piece() else {
                return self.filling.take();
            };
            let done = match &self.filling {
                Some(f) if f.bucket != piece.bucket => self.filling.take(),
                _ => None,
            };
            let (cpu, mem, storage) = piece.interval.billed.rates(self.family);
            let n = piece.nanos;
            let acc = self.filling.get_or_insert(Acc {
                bucket: piece.bucket,
                nanos: 0,
                vcpu: Decimal::ZERO,
                mem: Decimal::ZERO,
                storage: Decimal::ZERO,
                intervals: 0,
                open: false,
                hypervisor: piece.interval.hypervisor,
            });
            acc.nanos += n;
            acc.vcpu += Decimal::product(cpu, n);
            acc.mem += Decimal::product(mem, n);
            acc.storage += Decimal::product(storage, n);
            acc.intervals = acc.intervals.saturating_add(1);
            acc.hypervisor = piece.interval.hypervisor;
            acc.open |= piece.open;
            if done.is_some() {
                return done;
            }
        }
    }
}
