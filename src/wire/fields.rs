//! Reading the fields of an entry line that usage needs, borrowed from the
//! line: no allocation per record (ids and names are slices of the line
//! unless they hold JSON escapes). It accepts and refuses exactly the lines
//! [`super::decode_entry`] does, and gives the same values.
//!
//! Scans read millions of lines, so the lines meterd itself writes (the Go
//! encoding: fixed key order, no whitespace, no escapes) are read by a
//! strict byte scanner; any line it does not fully recognise goes to the
//! general serde path, so the scanner only ever answers where serde would
//! give the same answer.

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
    match canonical(line) {
        Some(fields) => Ok(fields),
        None => general(line),
    }
}

/// Any JSON entry line, through serde.
fn general(line: &[u8]) -> Result<EntryFields<'_>, DecodeError> {
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

/// A line exactly as the Go encoding writes it (see `super::entry_line`),
/// or `None`.
fn canonical(line: &[u8]) -> Option<EntryFields<'_>> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    // One pass over the whole line instead of one per string: no escapes,
    // no control characters (which JSON strings cannot hold raw), valid
    // UTF-8. Written as a fold, not `any`, so that it vectorizes.
    let plain = body
        .iter()
        .fold(true, |ok, &b| ok & (b >= 0x20) & (b != b'\\'));
    if !plain {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    let mut c = Cursor { text, at: 0 };
    // The literals are byte arrays of known length, so that comparing them
    // compiles to a few loads, not a call to `memcmp` (a fifth of a scan's
    // time when they were `&str` prefixes).
    c.literal(b"{\"kind\":")?;
    let kind = kind_of(c.string()?).ok()?;
    let vm_id = c.optional(b",\"vm_id\":")?;
    let snapshot_id = c.optional(b",\"snapshot_id\":")?;
    c.optional(b",\"source_snapshot_id\":")?;
    let reason = c.optional(b",\"reason\":")?;
    if !reason.is_empty() && !reason_known(reason) {
        return None;
    }
    let hypervisor = c.optional(b",\"hypervisor\":")?;
    c.literal(b",\"shape\":{")?;
    // Each field is there only when non-zero, a comma before all but the
    // first one given.
    let mut given = false;
    let shape = Shape {
        cpu: c.shape_field(&mut given, b"\"cpu\":", b",\"cpu\":")?,
        mem_bytes: c.shape_field(&mut given, b"\"mem_bytes\":", b",\"mem_bytes\":")?,
        storage_bytes: c.shape_field(&mut given, b"\"storage_bytes\":", b",\"storage_bytes\":")?,
    };
    c.literal(b"},\"emitted_at\":")?;
    let emitted_at = rfc3339::unix_nanos(c.string()?)?;
    c.optional(b",\"id\":")?;
    c.literal(b"}")?;
    if !c.rest().is_empty() {
        return None;
    }
    Some(EntryFields {
        kind,
        vm_id: Cow::Borrowed(vm_id),
        snapshot_id: Cow::Borrowed(snapshot_id),
        hypervisor: Cow::Borrowed(hypervisor),
        shape,
        emitted_at,
    })
}

/// A position in a line already known to be plain text.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        self.text.get(self.at..).unwrap_or("")
    }

    fn has<const N: usize>(&self, lit: &[u8; N]) -> bool {
        self.rest().as_bytes().first_chunk::<N>() == Some(lit)
    }

    fn literal<const N: usize>(&mut self, lit: &[u8; N]) -> Option<()> {
        self.has(lit).then(|| self.at += N)
    }

    /// `prefix` and a string after it, or `""` when the line goes on with
    /// something else.
    fn optional<const N: usize>(&mut self, prefix: &[u8; N]) -> Option<&'a str> {
        if self.has(prefix) {
            self.at += N;
            self.string()
        } else {
            Some("")
        }
    }

    /// A shape field: `bare` (the first one given) or `comma` (a later
    /// one) and an integer; 0 when the line goes on with something else.
    fn shape_field<const N: usize, const M: usize>(
        &mut self,
        given: &mut bool,
        bare: &[u8; N],
        comma: &[u8; M],
    ) -> Option<i64> {
        let skip = match *given {
            false if self.has(bare) => N,
            true if self.has(comma) => M,
            _ => return Some(0),
        };
        self.at += skip;
        *given = true;
        self.integer()
    }

    /// A string (the line has no escapes, so it ends at the next quote).
    fn string(&mut self) -> Option<&'a str> {
        let rest = self.rest().strip_prefix('"')?;
        let end = memchr::memchr(b'"', rest.as_bytes())?;
        self.at += end + 2;
        rest.get(..end)
    }

    /// A JSON integer within i64, written without leading zeros.
    fn integer(&mut self) -> Option<i64> {
        let rest = self.rest().as_bytes();
        let (negative, digits) = match rest.strip_prefix(b"-") {
            Some(d) => (true, d),
            None => (false, rest),
        };
        let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        // Leading zeros are not JSON; 18 digits always fit, longer numbers
        // are left to serde (which knows i64's exact bounds).
        if n == 0 || n > 18 || (n > 1 && digits[0] == b'0') {
            return None;
        }
        let v = digits[..n]
            .iter()
            .fold(0i64, |v, &d| v * 10 + i64::from(d - b'0'));
        self.at += usize::from(negative) + n;
        // "-0" is 0 for serde too.
        Some(if negative { -v } else { v })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::decode_entry;

    fn same(line: &str) {
        same_bytes(line.as_bytes());
    }

    fn same_bytes(bytes: &[u8]) {
        let line = String::from_utf8_lossy(bytes);
        let full = decode_entry(bytes);
        let fields = entry_fields(bytes);
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
        assert!(canonical(lines[0].as_bytes()).is_some());
        // Every byte of valid lines changed, removed, doubled in turn.
        for base in &lines[..2] {
            let base = base.as_bytes();
            for i in 0..base.len() {
                for b in [
                    b'"', b'0', b'9', b'-', b'x', b'\\', b'}', b'{', b',', b':', b' ', 0x01, 0xC3,
                    0xA9,
                ] {
                    let mut l = base.to_vec();
                    l[i] = b;
                    same_bytes(&l);
                    l.insert(i, b);
                    same_bytes(&l);
                }
                let mut l = base.to_vec();
                l.remove(i);
                same_bytes(&l);
            }
        }
        // Lines the encoder writes, whatever the values.
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..2000 {
            let pick = |rng: &mut fastrand::Rng| {
                [
                    "", "a", "vm-1", "é", "<&>", "a\"b", "x\\y", "\u{7f}", "\u{2028}",
                ][rng.usize(..9)]
                .to_owned()
            };
            let e = crate::record::Entry {
                kind: crate::record::Kind::VmStorageStop,
                vm_id: pick(&mut rng),
                snapshot_id: pick(&mut rng),
                source_snapshot_id: pick(&mut rng),
                reason: rng.bool().then_some(crate::record::Reason::StopCrash),
                hypervisor: pick(&mut rng),
                shape: Shape {
                    cpu: [0, 1, i64::MAX, 123_456_789_012_345_678][rng.usize(..4)],
                    mem_bytes: rng.i64(..),
                    storage_bytes: [0, 7][rng.usize(..2)],
                },
                emitted_at: time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(rng.i64(-60_000_000_000..250_000_000_000)) * 1_000_000_000
                        + i128::from(rng.u32(..1_000_000_000)) * i128::from(rng.u8(..2)),
                )
                .unwrap(),
                id: pick(&mut rng),
            };
            let mut line = Vec::new();
            crate::wire::entry_line(&e, &mut line);
            same_bytes(&line);
        }
    }
}
