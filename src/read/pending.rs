//! Reading a checkpoint's pending records back from the log: the
//! checkpoint holds their positions only (see [`Pending`]).

use crate::usage::{EntryRef, UnixNanos};

use super::checkpoint::Pending;
use super::{scan, ReadError, Source};

/// Listed positions at most this far apart are read in one pass over the
/// records between (passed over undecoded, a few milliseconds per 10,000),
/// farther ones each from a new reader (which seeks by the segment's
/// receive times, then line by line: a read of up to a commit group).
const GAP: u64 = 1 << 20;

/// Calls `f` for every pending record of a checkpoint with `before` whose
/// segment ends at `last`, in position order. `f` may stop the scan by
/// returning an error, which is handed back. Blocking.
pub fn entries<E>(
    source: &dyn Source,
    pending: &Pending,
    before: UnixNanos,
    last: u64,
    mut f: impl FnMut(u64, i64, EntryRef<'_>) -> Result<(), E>,
) -> Result<Result<(), E>, ReadError> {
    let listed = &pending.listed;
    let mut i = 0;
    while let Some(&a) = listed.get(i) {
        let mut j = i + 1;
        while listed.get(j).is_some_and(|&p| p - listed[j - 1] <= GAP) {
            j += 1;
        }
        let run = &listed[i..j];
        let mut next = 0;
        let want = |position: u64| {
            let listed = run.get(next) == Some(&position);
            next += usize::from(listed);
            listed
        };
        let last_listed = run[run.len() - 1];
        let scanned = scan::entries_where(
            source,
            a.saturating_sub(1),
            last_listed,
            want,
            |position, received, e| {
                // Listed because it is at or after `before`; a record that is
                // not was folded into the state, and must not count twice.
                if e.emitted_at < before {
                    return Ok(());
                }
                f(position, received, e)
            },
        )?;
        if scanned.is_err() {
            return Ok(scanned);
        }
        i = j;
    }
    match pending.rest_from {
        Some(from) if from <= last => scan::entries(
            source,
            from.saturating_sub(1),
            last,
            |position, received, e| {
                if e.emitted_at < before {
                    return Ok(());
                }
                f(position, received, e)
            },
        ),
        _ => Ok(Ok(())),
    }
}
