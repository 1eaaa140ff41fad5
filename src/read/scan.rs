//! Scanning a range of the entries stream for usage: every record lent to
//! the caller with its position, receive time and usage fields, straight
//! from the segment files, without allocating per record.

use crate::log::LogReader;
use crate::usage::EntryRef;
use crate::wire;

use super::{ReadError, Source};

/// Records per read from the log; with [`CHUNK_BYTES`], what one read holds.
const CHUNK_RECORDS: usize = 64 * 1024;
/// Bytes per read from the log (the reader's own buffer is separate).
const CHUNK_BYTES: usize = 8 << 20;

/// Calls `f` for every entry with a position in `(after, upto]`, in order.
/// `f` may stop the scan by returning an error, which is handed back.
/// Blocking.
pub fn entries<E>(
    source: &dyn Source,
    after: u64,
    upto: u64,
    f: impl FnMut(u64, i64, EntryRef<'_>) -> Result<(), E>,
) -> Result<Result<(), E>, ReadError> {
    entries_where(source, after, upto, |_| true, f)
}

/// As [`entries`], for the records whose position `want` accepts (asked
/// once per position, in order); the others are passed over undecoded,
/// which costs a small part of decoding them.
pub fn entries_where<E>(
    source: &dyn Source,
    after: u64,
    upto: u64,
    mut want: impl FnMut(u64) -> bool,
    mut f: impl FnMut(u64, i64, EntryRef<'_>) -> Result<(), E>,
) -> Result<Result<(), E>, ReadError> {
    if after >= upto {
        return Ok(Ok(()));
    }
    let mut reader = source.reader(after).map_err(ReadError::from)?;
    if reader.next_position() != after + 1 {
        // The reader starts later only when retention removed the records.
        return Err(ReadError::Pruned {
            first: reader.next_position(),
        });
    }
    let mut stop: Option<Result<(), E>> = None;
    let mut damage: Option<ReadError> = None;
    while reader.next_position() <= upto && stop.is_none() && damage.is_none() {
        let left = usize::try_from(upto + 1 - reader.next_position()).unwrap_or(usize::MAX);
        let visited = visit(
            &mut reader,
            left.min(CHUNK_RECORDS),
            |position, received, line| {
                if stop.is_some() || damage.is_some() || !want(position) {
                    return;
                }
                match wire::entry_fields(line) {
                    Ok(e) => {
                        let entry = EntryRef {
                            kind: e.kind,
                            vm_id: &e.vm_id,
                            snapshot_id: &e.snapshot_id,
                            hypervisor: &e.hypervisor,
                            shape: e.shape,
                            emitted_at: e.emitted_at,
                        };
                        if let Err(err) = f(position, received, entry) {
                            stop = Some(Err(err));
                        }
                    }
                    Err(err) => {
                        damage = Some(ReadError::Damaged {
                            position,
                            reason: err.to_string(),
                        })
                    }
                }
            },
        )?;
        if visited == 0 {
            // Durable records cannot vanish short of `upto`; if they do,
            // the files were changed under the log.
            return Err(ReadError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the log ends at {} but records up to {upto} were durable",
                    reader.next_position() - 1
                ),
            )));
        }
    }
    if let Some(d) = damage {
        return Err(d);
    }
    Ok(stop.unwrap_or(Ok(())))
}

fn visit(
    reader: &mut LogReader,
    max: usize,
    f: impl FnMut(u64, i64, &[u8]),
) -> Result<usize, ReadError> {
    reader.visit(max, CHUNK_BYTES, f).map_err(ReadError::from)
}
