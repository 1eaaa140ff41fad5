//! What `Tail` sends: records of one stream read from the segment files,
//! decoded, filtered by kind, cut into responses of bounded size.

use crate::log::{LogReader, ReadError as LogReadError};
use crate::pb;
use crate::record::Invalid;
use crate::wire;

use super::{ReadError, Source};

/// Records per response, at most.
pub const MAX_RECORDS: usize = 1024;
/// Ledger bytes per response, at most, except that a record always comes
/// whole. With each record's decoded copy beside its line, a response stays
/// near 330 KiB, far under gRPC's usual 4 MiB receive limit, unless one
/// record alone is larger (a batch may be up to `--max-message-bytes`).
/// It is also what a follower that stops reading costs: the response
/// waiting in HTTP/2's send buffer (nothing is read ahead of the client).
pub const MAX_BYTES: usize = 128 * 1024;

/// A log of the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Entries,
    Batches,
}

/// A checked `TailRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub stream: Stream,
    pub after: u64,
    pub follow: bool,
    /// `pb::Kind` values to send; empty sends every record.
    pub kinds: Vec<i32>,
}

impl Request {
    /// The request, or the field that breaks a rule (`stream`, `kinds`,
    /// `kinds[i]`).
    pub fn from_pb(req: &pb::TailRequest) -> Result<Request, Invalid> {
        let stream = match pb::Stream::try_from(req.stream) {
            Ok(pb::Stream::Entries) => Stream::Entries,
            Ok(pb::Stream::Batches) => Stream::Batches,
            Ok(pb::Stream::Unspecified) => {
                return Err(Invalid::new(
                    "stream",
                    "must be set (STREAM_ENTRIES or STREAM_BATCHES)",
                ))
            }
            Err(_) => {
                return Err(Invalid::new(
                    "stream",
                    format!("unknown value {}", req.stream),
                ))
            }
        };
        if stream == Stream::Batches && !req.kinds.is_empty() {
            return Err(Invalid::new(
                "kinds",
                "filters entries only; must be empty for STREAM_BATCHES",
            ));
        }
        for (i, &k) in req.kinds.iter().enumerate() {
            match pb::Kind::try_from(k) {
                Ok(pb::Kind::Unspecified) => {
                    return Err(Invalid::new(
                        format!("kinds[{i}]"),
                        "must not be KIND_UNSPECIFIED",
                    ))
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(Invalid::new(
                        format!("kinds[{i}]"),
                        format!("unknown value {k}"),
                    ))
                }
            }
        }
        Ok(Request {
            stream,
            after: req.after,
            follow: req.follow,
            kinds: req.kinds.clone(),
        })
    }
}

/// One response read from the log.
#[derive(Debug)]
pub struct Chunk {
    /// `position` is the last position read; `caught_up` is set when the
    /// reader reached what was durable when it finished.
    pub response: pb::TailResponse,
    /// A record that could not be decoded: `response` holds those before it
    /// and covers up to the one before it; the stream must end with this.
    pub damage: Option<ReadError>,
}

/// Reads the next response's worth of records. Blocking.
pub fn chunk(
    source: &dyn Source,
    reader: &mut LogReader,
    req: &Request,
) -> Result<Chunk, ReadError> {
    let mut records = Vec::new();
    let mut position = reader.next_position().saturating_sub(1);
    let mut damage: Option<ReadError> = None;
    let visited = reader.visit(MAX_RECORDS, MAX_BYTES, |at, received, line| {
        if damage.is_some() {
            return;
        }
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        match decode(req.stream, line) {
            Ok(record) => {
                position = at;
                let wanted = match &record {
                    pb::tail_record::Record::Entry(e) => {
                        req.kinds.is_empty() || req.kinds.contains(&e.kind)
                    }
                    pb::tail_record::Record::Batch(_) => true,
                };
                if wanted {
                    records.push(pb::TailRecord {
                        position: at,
                        received_at: Some(crate::usage::timestamp(i128::from(received))),
                        record: Some(record),
                        line: line.to_vec(),
                    });
                }
            }
            Err(e) => {
                damage = Some(ReadError::Damaged {
                    position: at,
                    reason: e.to_string(),
                })
            }
        }
    });
    match visited {
        Ok(_) => {}
        // Damage on disk ends the call after every record before it; the
        // reader is past it, so a new call with `after` at the damage goes
        // on with the records behind it.
        Err(e @ (LogReadError::Damaged { .. } | LogReadError::Missing { .. })) => {
            let resume = reader.next_position().saturating_sub(1);
            damage = Some(ReadError::DataLoss(format!(
                "{e}; every record before it was sent; resume with after = {resume} for the records after it"
            )));
        }
        Err(e) => return Err(e.into()),
    }
    let caught_up = damage.is_none() && reader.next_position() > source.end();
    Ok(Chunk {
        response: pb::TailResponse {
            records,
            position,
            caught_up,
        },
        damage,
    })
}

fn decode(stream: Stream, line: &[u8]) -> Result<pb::tail_record::Record, wire::DecodeError> {
    Ok(match stream {
        Stream::Entries => pb::tail_record::Record::Entry((&wire::decode_entry(line)?).into()),
        Stream::Batches => pb::tail_record::Record::Batch((&wire::decode_batch(line)?).into()),
    })
}
