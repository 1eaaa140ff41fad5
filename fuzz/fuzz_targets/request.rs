//! Request decoding plus validation, as the server does it: protobuf bytes
//! from the wire → EmitRequest / SubmitBatchRequest → `Check`. Must never
//! panic; whatever passes validation must encode to a ledger line that the
//! spool's decoder reads back to the same line.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meterd::pb::{EmitRequest, SubmitBatchRequest};
use meterd::record::{Check, Limits};
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let check = Check {
        limits: &limits,
        now: time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000),
    };
    if let Ok(req) = EmitRequest::decode(data) {
        if let Some(entry) = req.entry {
            if let Ok(entry) = check.entry(entry) {
                let mut line = Vec::new();
                meterd::wire::entry_line(&entry, &mut line);
                let back = meterd::wire::decode_entry(&line).expect("own entry line decodes");
                let mut again = Vec::new();
                meterd::wire::entry_line(&back, &mut again);
                assert_eq!(line, again, "entry line round trip");
            }
        }
    }
    if let Ok(req) = SubmitBatchRequest::decode(data) {
        // Every position answered: decoded, or kept aside as undecodable.
        let n = req.len();
        let positions: Vec<_> = req.into_positions().collect();
        assert_eq!(positions.len(), n, "a position per batch");
        for batch in positions.into_iter().flatten() {
            if let Ok(batch) = check.batch(batch) {
                let mut line = Vec::new();
                meterd::wire::batch_line(&batch, &mut line);
                let back = meterd::wire::decode_batch(&line).expect("own batch line decodes");
                let mut again = Vec::new();
                meterd::wire::batch_line(&back, &mut again);
                assert_eq!(line, again, "batch line round trip");
            }
        }
    }
});
