//! `Head`: per stream, where its chain of seals ends (see `log::chain`).

use tonic::Status;

use crate::ledger::Ledger;
use crate::pb::{self, HeadRequest, HeadResponse, StreamHead};
use crate::record::Invalid;

use super::super::status;

/// Answers at once from what the writers keep in memory; reads no file.
pub(super) fn head(ledger: &Ledger, req: &HeadRequest) -> Result<HeadResponse, Status> {
    let mut streams = Vec::new();
    for (i, &s) in req.streams.iter().enumerate() {
        match pb::Stream::try_from(s) {
            Ok(pb::Stream::Unspecified) => {
                return Err(status::invalid(Invalid::new(
                    format!("streams[{i}]"),
                    "must not be STREAM_UNSPECIFIED",
                )))
            }
            Ok(s) => streams.push(s),
            Err(_) => {
                return Err(status::invalid(Invalid::new(
                    format!("streams[{i}]"),
                    format!("unknown value {s}"),
                )))
            }
        }
    }
    if streams.is_empty() {
        streams = vec![pb::Stream::Entries, pb::Stream::Batches];
    }
    streams.sort_unstable();
    streams.dedup();
    let heads = streams
        .into_iter()
        .map(|s| {
            let log = match s {
                pb::Stream::Batches => &ledger.batches,
                _ => &ledger.entries,
            };
            let head = log.head();
            StreamHead {
                stream: s as i32,
                last_sealed_position: head.map_or(0, |h| h.last),
                chain_head: head.map(|h| h.hex()).unwrap_or_default(),
                last_position: log.end(),
            }
        })
        .collect();
    Ok(HeadResponse { heads })
}
