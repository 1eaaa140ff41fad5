//! Unit tests of the usage engine: every pairing rule with a hand-checked
//! example (`rules`), calendar buckets and DST (`calendar`), exact
//! arithmetic and limits (`exact`), properties over random ledgers
//! (`props`), and a synthetic ledger for timing (`synthetic`).

mod calendar;
mod exact;
mod props;
mod rules;
mod synthetic;

use time::OffsetDateTime;

use super::{Family, Granularity, IdUsage, Query, UnixNanos, Usage};
use crate::record::{Entry, Kind, Shape};

const SEC: i128 = 1_000_000_000;
const MIN: i128 = 60 * SEC;
const HOUR: i128 = 60 * MIN;
const DAY: i128 = 24 * HOUR;
const GIB: i64 = 1 << 30;

/// An RFC 3339 time as Unix nanoseconds.
fn t(s: &str) -> UnixNanos {
    s.parse::<jiff::Timestamp>()
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .as_nanosecond()
}

/// One ledger record: position, receive time, entry.
#[derive(Clone, Debug)]
struct Rec {
    position: u64,
    received_at: UnixNanos,
    entry: Entry,
}

/// A record received the moment it was emitted.
fn rec(position: u64, kind: Kind, id: &str, at: UnixNanos, shape: (i64, i64, i64)) -> Rec {
    rec_hv(position, kind, id, at, shape, "ch-1")
}

fn rec_hv(
    position: u64,
    kind: Kind,
    id: &str,
    at: UnixNanos,
    (cpu, mem_bytes, storage_bytes): (i64, i64, i64),
    hypervisor: &str,
) -> Rec {
    let (vm_id, snapshot_id) = if kind.is_vm() {
        (id.to_owned(), String::new())
    } else {
        (String::new(), id.to_owned())
    };
    Rec {
        position,
        received_at: at,
        entry: Entry {
            kind,
            vm_id,
            snapshot_id,
            source_snapshot_id: String::new(),
            reason: None,
            hypervisor: hypervisor.to_owned(),
            shape: Shape {
                cpu,
                mem_bytes,
                storage_bytes,
            },
            emitted_at: OffsetDateTime::from_unix_timestamp_nanos(at).expect("valid time"),
            id: String::new(),
        },
    }
}

/// A whole-range UTC query asked long after the range.
fn query(start: UnixNanos, end: UnixNanos) -> Query {
    Query {
        start,
        end,
        granularity: Granularity::Whole,
        time_zone: String::new(),
        as_of: None,
        families: Vec::new(),
        id: None,
        now: end + 365 * DAY,
    }
}

fn run(q: Query, recs: &[Rec]) -> Vec<IdUsage> {
    let mut usage = Usage::new(q).expect("valid query");
    for r in recs {
        usage
            .push(r.position, r.received_at, &r.entry)
            .expect("not seeded");
    }
    usage.finish().collect()
}

/// The single (family, id) of an answer.
fn only(answer: &[IdUsage]) -> &IdUsage {
    assert_eq!(answer.len(), 1, "{answer:#?}");
    &answer[0]
}

/// `(family, id)` of every id in an answer, in answer order.
fn keys(answer: &[IdUsage]) -> Vec<(Family, &str)> {
    answer.iter().map(|u| (u.family, u.id.as_str())).collect()
}
