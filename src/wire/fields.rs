//! Reading the fields of an entry line that usage needs, borrowed from the
//! line: no allocation per record (ids and names are slices of the line
//! unless they hold JSON escapes). It accepts and refuses exactly the lines
//! [`super::decode_entry`] does, and gives the same values.

use std::borrow::Cow;

use serde::Deserialize;

use super::decode::{kind_of, reason_known, DecodeError};
use super::rfc3339;
use crate::record::{Kind, Shape};

/// The fields of an entry line, borrowed from it.
#[derive(Debug)]
pub struct EntryFields<'a> {
    pub kind: Kind,
    pub vm_id: Cow<'a, str>,
    pub snapshot_id: Cow<'a, str>,
    pub hypervisor: Cow<'a, str>,
    pub shape: Shape,
    /// `emitted_at` in Unix nanoseconds.
    pub emitted_at: i128,
}

/// Every field `decode_entry` reads, so that both refuse the same lines
/// (a field of the wrong type is an error even where usage ignores it).
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    vm_id: Cow<'a, str>,
    #[serde(borrow, default)]
    snapshot_id: Cow<'a, str>,
    #[serde(borrow, default)]
    #[allow(dead_code)]
    source_snapshot_id: Cow<'a, str>,
    #[serde(borrow, default)]
    reason: Cow<'a, str>,
    #[serde(borrow, default)]
    hypervisor: Cow<'a, str>,
    #[serde(default)]
    shape: LineShape,
    #[serde(borrow)]
    emitted_at: Cow<'a, str>,
    #[serde(borrow, default)]
    #[allow(dead_code)]
    id: Cow<'a, str>,
}

#[derive(Default, Deserialize)]
struct LineShape {
    #[serde(default)]
    cpu: i64,
    #[serde(default)]
    mem_bytes: i64,
    #[serde(default)]
    storage_bytes: i64,
}

/// The usage fields of one entry line.
pub fn entry_fields(line: &[u8]) -> Result<EntryFields<'_>, DecodeError> {
    let l: Line = serde_json::from_slice(line).map_err(|e| DecodeError(e.to_string()))?;
    let kind = kind_of(&l.kind)?;
    if !l.reason.is_empty() && !reason_known(&l.reason) {
        return Err(DecodeError(format!("unknown reason {:?}", l.reason)));
    }
    let emitted_at = match rfc3339::unix_nanos(&l.emitted_at) {
        Some(t) => t,
        None => super::decode::time(&l.emitted_at)?.unix_timestamp_nanos(),
    };
    Ok(EntryFields {
        kind,
        vm_id: l.vm_id,
        snapshot_id: l.snapshot_id,
        hypervisor: l.hypervisor,
        shape: Shape {
            cpu: l.shape.cpu,
            mem_bytes: l.shape.mem_bytes,
            storage_bytes: l.shape.storage_bytes,
        },
        emitted_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::decode_entry;

    fn same(line: &str) {
        let full = decode_entry(line.as_bytes());
        let fields = entry_fields(line.as_bytes());
        match (full, fields) {
            (Ok(e), Ok(f)) => {
                assert_eq!(e.kind, f.kind, "{line}");
                assert_eq!(e.vm_id, f.vm_id, "{line}");
                assert_eq!(e.snapshot_id, f.snapshot_id, "{line}");
                assert_eq!(e.hypervisor, f.hypervisor, "{line}");
                assert_eq!(e.shape, f.shape, "{line}");
                assert_eq!(e.emitted_at.unix_timestamp_nanos(), f.emitted_at, "{line}");
            }
            (Err(_), Err(_)) => {}
            (a, b) => panic!("{line}: decode_entry {a:?}, entry_fields {b:?}"),
        }
    }

    #[test]
    fn reads_what_decode_entry_reads_and_refuses_what_it_refuses() {
        let lines = [
            r#"{"kind":"vm.compute.start","vm_id":"vm-7f3a","reason":"boot","hypervisor":"cloud-hypervisor","shape":{"cpu":4,"mem_bytes":4294967296},"emitted_at":"2026-05-28T10:15:30Z","id":"vm-7f3a-boot-1"}"#,
            r#"{"kind":"snap.storage.stop","snapshot_id":"s\u003c1\u003e","source_snapshot_id":"x","shape":{"storage_bytes":1},"emitted_at":"2026-05-28T12:15:30.5+02:00"}"#,
            r#"{"kind":"vm.storage.stop","vm_id":"v","shape":{},"emitted_at":"2026-05-28T10:15:60Z"}"#,
            r#"{"kind":"vm.storage.stop","vm_id":"v","shape":{},"emitted_at":"2026-05-28t10:15:30z"}"#,
            r#"{"kind":"vm.storage.stop","vm_id":"v","emitted_at":"2026-05-28T10:15:30Z","extra":[1,2]}"#,
            r#"{"kind":"vm.storage.stop","vm_id":"v","reason":"nope","emitted_at":"2026-05-28T10:15:30Z"}"#,
            r#"{"kind":"vm.explode","vm_id":"v","emitted_at":"2026-05-28T10:15:30Z"}"#,
            r#"{"kind":"vm.storage.stop","vm_id":"v"}"#,
            r#"{"kind":"vm.storage.stop","vm_id":7,"emitted_at":"2026-05-28T10:15:30Z"}"#,
            r#"{"kind":"vm.storage.stop","id":7,"emitted_at":"2026-05-28T10:15:30Z"}"#,
            r#"{"kind":"vm.storage.stop","kind":"vm.storage.stop","emitted_at":"2026-05-28T10:15:30Z"}"#,
            r#"{"kind":"vm.compute.stop","vm_id":"v","shape":{"cpu":-1},"emitted_at":"2026-05-28T10:15:30Z"}"#,
            "not json",
        ];
        for line in lines {
            same(line);
        }
        // Every byte of a valid line changed in turn.
        let base = lines[0].as_bytes();
        for i in 0..base.len() {
            for b in [b'"', b'0', b'x', b'\\', b'}', b' '] {
                let mut l = base.to_vec();
                l[i] = b;
                if let Ok(s) = String::from_utf8(l) {
                    same(&s);
                }
            }
        }
    }
}
