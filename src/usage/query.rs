//! What a usage query asks for, and its one conversion from a protobuf
//! `UsageRequest`, where client input is checked and errors name the field.

use super::{Family, UnixNanos};
use crate::pb;
use crate::record::{timestamp_to_time, Invalid};

/// The size of the buckets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Granularity {
    /// One bucket for the whole range (`GRANULARITY_UNSPECIFIED`).
    #[default]
    Whole,
    /// Calendar hours in the query's time zone.
    Hour,
    /// Calendar days in the query's time zone (23 or 25 hours on DST changes).
    Day,
    /// Calendar months in the query's time zone.
    Month,
}

/// A usage query. Times are Unix nanoseconds; [`super::Usage::new`] checks
/// what this type cannot (the range, the time zone, the bucket count).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// Start of the range, inclusive.
    pub start: UnixNanos,
    /// End of the range, exclusive.
    pub end: UnixNanos,
    pub granularity: Granularity,
    /// IANA name; empty means UTC.
    pub time_zone: String,
    /// Only records received at or before this count.
    pub as_of: Option<UnixNanos>,
    /// Only these families; empty means all.
    pub families: Vec<Family>,
    /// Only this vm_id or snapshot_id.
    pub id: Option<String>,
    /// The time of the query: intervals with no stop run at most to here.
    /// Passed in, not read from a clock, so answers are reproducible.
    pub now: UnixNanos,
}

// === impl Query ===

impl Query {
    /// The query of a `UsageRequest`, asked at `now`, or the first field that
    /// breaks a rule (`start_time`, `end_time`, `granularity`, `as_of`,
    /// `families[i]`).
    pub fn from_pb(req: &pb::UsageRequest, now: UnixNanos) -> Result<Query, Invalid> {
        let granularity = match pb::Granularity::try_from(req.granularity) {
            Ok(pb::Granularity::Unspecified) => Granularity::Whole,
            Ok(pb::Granularity::Hour) => Granularity::Hour,
            Ok(pb::Granularity::Day) => Granularity::Day,
            Ok(pb::Granularity::Month) => Granularity::Month,
            Err(_) => {
                return Err(Invalid::new(
                    "granularity",
                    format!("unknown value {}", req.granularity),
                ))
            }
        };
        let families = req
            .families
            .iter()
            .enumerate()
            .map(|(i, &f)| match pb::Family::try_from(f) {
                Ok(pb::Family::VmCompute) => Ok(Family::VmCompute),
                Ok(pb::Family::VmStorage) => Ok(Family::VmStorage),
                Ok(pb::Family::SnapStorage) => Ok(Family::SnapStorage),
                Ok(pb::Family::Unspecified) => Err(Invalid::new(
                    format!("families[{i}]"),
                    "must not be FAMILY_UNSPECIFIED",
                )),
                Err(_) => Err(Invalid::new(
                    format!("families[{i}]"),
                    format!("unknown value {f}"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Query {
            start: required_time("start_time", req.start_time.as_ref())?,
            end: required_time("end_time", req.end_time.as_ref())?,
            granularity,
            time_zone: req.time_zone.clone(),
            as_of: req.as_of.as_ref().map(|t| time("as_of", t)).transpose()?,
            families,
            id: (!req.id.is_empty()).then(|| req.id.clone()),
            now,
        })
    }
}

fn required_time(field: &str, ts: Option<&prost_types::Timestamp>) -> Result<UnixNanos, Invalid> {
    time(field, ts.ok_or_else(|| Invalid::new(field, "must be set"))?)
}

fn time(field: &str, ts: &prost_types::Timestamp) -> Result<UnixNanos, Invalid> {
    timestamp_to_time(ts)
        .map(|t| t.unix_timestamp_nanos())
        .ok_or_else(|| {
            Invalid::new(
                field,
                "not a valid timestamp (years 0001 to 9999, nanos 0 to 999999999)",
            )
        })
}

/// The protobuf Timestamp of Unix nanoseconds.
pub fn timestamp(t: UnixNanos) -> prost_types::Timestamp {
    const NANOS: i128 = 1_000_000_000;
    // An answer holds two per row: i64 division where the time allows
    // (years 1678..=2261), not a call into the runtime's i128 division.
    if let Ok(t) = i64::try_from(t) {
        return prost_types::Timestamp {
            seconds: t.div_euclid(1_000_000_000),
            nanos: t.rem_euclid(1_000_000_000) as i32,
        };
    }
    prost_types::Timestamp {
        // Engine times come from valid timestamps (years 0001..=9999).
        seconds: i64::try_from(t.div_euclid(NANOS)).unwrap_or(i64::MAX),
        nanos: t.rem_euclid(NANOS) as i32,
    }
}
