//! Reading a checkpoint's pending records back from the log: the
//! checkpoint holds their positions only (see [`Pending`]).

use crate::usage::{EntryRef, UnixNanos};

use super::checkpoint::Pending;
use super::{scan, ReadError, Source};

/// Listed positions at most this far apart are read in one scan (the
/// records between decoded and passed over) rather than each from a new
/// reader, which seeks through the segment's receive times.
const GAP: u64 = 256;

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
        let scanned = scan::entries(
            source,
            a.saturating_sub(1),
            run[run.len() - 1],
            |position, received, e| {
                if run.get(next) != Some(&position) {
                    return Ok(());
                }
                next += 1;
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
