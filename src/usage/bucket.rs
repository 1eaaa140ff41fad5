//! Calendar buckets: the boundaries of hours, days and months in an IANA time
//! zone, DST-aware, computed with jiff's bundled tz database.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

use super::{Granularity, UnixNanos};
use crate::record::Invalid;

/// Most buckets one query may span (about 11 years of hours). The boundaries
/// are computed up front, so this bounds the work and memory a query can ask
/// for before any record is read.
pub const MAX_BUCKETS: usize = 100_000;

const NANOS_PER_SECOND: i128 = 1_000_000_000;
const NANOS_PER_HOUR: i128 = 3_600 * NANOS_PER_SECOND;

/// Resolves an IANA time zone name; empty means UTC. The database is the one
/// bundled into the binary (jiff's `tzdb-bundle-always`), not the host's
/// `/usr/share/zoneinfo`, so the same meterd gives the same buckets on every
/// host, including minimal containers without a tz database.
pub fn time_zone(name: &str) -> Result<TimeZone, Invalid> {
    if name.is_empty() {
        return Ok(TimeZone::UTC);
    }
    jiff::tz::db()
        .get(name)
        .map_err(|_| Invalid::new("time_zone", format!("unknown IANA time zone {name:?}")))
}

/// The bucket boundaries of `[start, end)`: `start`, every calendar boundary
/// strictly between them, then `end`. Bucket `k` is `[b[k], b[k + 1])`, so
/// the first and last buckets are clipped to the range when `start` or `end`
/// is not on a boundary. `Granularity::Whole` gives `[start, end]`.
///
/// Requires `start < end`, both within jiff's range (years -9999..=9999).
pub fn boundaries(
    start: UnixNanos,
    end: UnixNanos,
    granularity: Granularity,
    tz: &TimeZone,
) -> Result<Vec<UnixNanos>, Invalid> {
    let mut out = vec![start];
    if granularity != Granularity::Whole {
        let mut b = floor(start, granularity, tz).unwrap_or(start);
        // `next` is strictly increasing, so this ends at `end`, or earlier
        // when jiff's range ends (year 9999) or the count limit is reached.
        while let Some(n) = next(b, granularity, tz) {
            if n >= end {
                break;
            }
            if n > start {
                if out.len() >= MAX_BUCKETS {
                    return Err(Invalid::new(
                        "granularity",
                        format!(
                            "the range spans more than {MAX_BUCKETS} buckets; \
                             use a coarser granularity or a shorter range"
                        ),
                    ));
                }
                out.push(n);
            }
            b = n;
        }
    }
    out.push(end);
    Ok(out)
}

/// The start of the calendar bucket that contains `t`.
fn floor(t: UnixNanos, granularity: Granularity, tz: &TimeZone) -> Option<UnixNanos> {
    let ts = Timestamp::from_nanosecond(t).ok()?;
    let local = tz.to_datetime(ts);
    match granularity {
        Granularity::Whole => Some(t),
        // Instant arithmetic, not civil: in the repeated hour of a DST fold,
        // 02:30 (second time) belongs to the bucket that began at 02:00
        // (second time), which civil arithmetic could not tell apart from
        // the first 02:00.
        Granularity::Hour => {
            let into_hour = (i128::from(local.minute()) * 60 + i128::from(local.second()))
                * NANOS_PER_SECOND
                + i128::from(local.subsec_nanosecond());
            Some(t - into_hour)
        }
        Granularity::Day => instant(local.start_of_day(), tz),
        Granularity::Month => instant(local.first_of_month().start_of_day(), tz),
    }
}

/// The start of the calendar bucket after the one starting at `b`; always
/// later than `b`. `None` past the end of jiff's range.
fn next(b: UnixNanos, granularity: Granularity, tz: &TimeZone) -> Option<UnixNanos> {
    let n = match granularity {
        Granularity::Whole => return None,
        // An hour later, then back to the local hour's start: the same
        // instant except around a transition by a fraction of an hour
        // (Australia/Lord_Howe shifts by 30 minutes).
        Granularity::Hour => floor(b + NANOS_PER_HOUR, granularity, tz)?,
        // Calendar arithmetic in civil time, resolved to an instant last, so
        // a day is 23 or 25 hours across a DST change.
        Granularity::Day => {
            let day = local(b, tz)?.start_of_day().checked_add(1.day()).ok()?;
            instant(day, tz)?
        }
        Granularity::Month => {
            let month = local(b, tz)?
                .first_of_month()
                .start_of_day()
                .checked_add(1.month())
                .ok()?;
            instant(month, tz)?
        }
    };
    // Guarantees progress whatever the zone's rules look like.
    Some(if n > b { n } else { b + NANOS_PER_HOUR })
}

fn local(t: UnixNanos, tz: &TimeZone) -> Option<DateTime> {
    Some(tz.to_datetime(Timestamp::from_nanosecond(t).ok()?))
}

/// The instant of a civil time. A midnight that does not exist (a DST gap at
/// 00:00) resolves to the first instant after the gap, a repeated one to its
/// first occurrence: jiff's "compatible" disambiguation, as RFC 5545 does.
fn instant(dt: DateTime, tz: &TimeZone) -> Option<UnixNanos> {
    Some(tz.to_timestamp(dt).ok()?.as_nanosecond())
}
