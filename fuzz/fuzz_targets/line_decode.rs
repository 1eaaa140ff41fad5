//! The spool's line decoders on arbitrary bytes: an error, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meterd::wire::decode_entry(data);
    let _ = meterd::wire::decode_batch(data);
});
