//! The Go-compatible JSON encoding, written once: the ledger, stderr and the
//! HTTP upstream all produce these bytes. They match Go's `encoding/json`
//! exactly (see `../shared/vectors/seed-wire.json`): `omitempty` as the Go
//! structs tag it, `<`, `>`, `&`, U+2028 and U+2029 escaped, RFC 3339 times
//! with trimmed fractional seconds, base64 bytes, `null` for nil slices and
//! sorted map keys.

use base64::Engine as _;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::record::{Entry, MetricBatch};

/// Appends one JSONL ledger line for an entry (with its trailing `\n`), as the
/// Go package's `Entry.WriteTo` writes it. `id` (an extension) is written only
/// when set, after the seed fields.
pub fn entry_line(e: &Entry, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"kind\":");
    string(e.kind.as_str(), out);
    opt_string(b",\"vm_id\":", &e.vm_id, out);
    opt_string(b",\"snapshot_id\":", &e.snapshot_id, out);
    opt_string(b",\"source_snapshot_id\":", &e.source_snapshot_id, out);
    if let Some(r) = e.reason {
        opt_string(b",\"reason\":", r.as_str(), out);
    }
    opt_string(b",\"hypervisor\":", &e.hypervisor, out);
    out.extend_from_slice(b",\"shape\":{");
    let mut sep: &[u8] = b"";
    for (name, v) in [
        (&b"\"cpu\":"[..], e.shape.cpu),
        (b"\"mem_bytes\":", e.shape.mem_bytes),
        (b"\"storage_bytes\":", e.shape.storage_bytes),
    ] {
        if v != 0 {
            out.extend_from_slice(sep);
            out.extend_from_slice(name);
            int(v, out);
            sep = b",";
        }
    }
    out.extend_from_slice(b"},\"emitted_at\":");
    time_value(e.emitted_at, out);
    opt_string(b",\"id\":", &e.id, out);
    out.extend_from_slice(b"}\n");
}

/// Appends Go's `json.Marshal` of a Juju `MetricBatch` (no newline).
pub fn batch_json(b: &MetricBatch, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"uuid\":");
    string(&b.uuid, out);
    out.extend_from_slice(b",\"env-uuid\":");
    string(&b.model_uuid, out);
    out.extend_from_slice(b",\"model-name\":");
    string(&b.model_name, out);
    out.extend_from_slice(b",\"unit-name\":");
    string(&b.unit_name, out);
    out.extend_from_slice(b",\"charm-url\":");
    string(&b.charm_url, out);
    out.extend_from_slice(b",\"created\":");
    time_value(b.created, out);
    out.extend_from_slice(b",\"metrics\":");
    if b.metrics.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        out.push(b'[');
        for (i, m) in b.metrics.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"key\":");
            string(&m.key, out);
            out.extend_from_slice(b",\"value\":");
            string(&m.value, out);
            out.extend_from_slice(b",\"time\":");
            time_value(m.time, out);
            if !m.labels.is_empty() {
                out.extend_from_slice(b",\"labels\":{");
                // BTreeMap iterates in byte order of the keys, as Go sorts them.
                for (j, (k, v)) in m.labels.iter().enumerate() {
                    if j > 0 {
                        out.push(b',');
                    }
                    string(k, out);
                    out.push(b':');
                    string(v, out);
                }
                out.push(b'}');
            }
            out.push(b'}');
        }
        out.push(b']');
    }
    out.extend_from_slice(b",\"credentials\":");
    bytes_value(&b.credentials, out);
    out.extend_from_slice(b",\"reseller-credentials\":");
    bytes_value(&b.reseller_credentials, out);
    out.extend_from_slice(b",\"sla-credentials\":");
    bytes_value(&b.sla_credentials, out);
    out.push(b'}');
}

/// Appends one JSONL ledger line for a batch (with its trailing `\n`).
pub fn batch_line(b: &MetricBatch, out: &mut Vec<u8>) {
    batch_json(b, out);
    out.push(b'\n');
}

/// Appends the Juju collector's HTTP body: a JSON array of batches.
pub fn batch_array<'a>(batches: impl IntoIterator<Item = &'a MetricBatch>, out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, b) in batches.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        batch_json(b, out);
    }
    out.push(b']');
}

fn opt_string(prefix: &[u8], s: &str, out: &mut Vec<u8>) {
    if !s.is_empty() {
        out.extend_from_slice(prefix);
        string(s, out);
    }
}

fn int(v: i64, out: &mut Vec<u8>) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(v).as_bytes());
}

/// Go's `time.Time.MarshalJSON`: RFC 3339 with nanoseconds, trailing zeros
/// trimmed. Times are always UTC here, so the zone is `Z`.
fn time_value(t: OffsetDateTime, out: &mut Vec<u8>) {
    out.push(b'"');
    // The record types only hold times in years 1..=9999 (checked at the
    // edge), which the fast path always writes.
    if !rfc3339::write_utc(t, out) && t.format_into(out, &Rfc3339).is_err() {
        out.extend_from_slice(b"0001-01-01T00:00:00Z");
    }
    out.push(b'"');
}

/// Go's `[]byte` encoding: standard padded base64, `null` when nil. Protobuf
/// cannot tell nil from empty, so an empty field is written as nil.
fn bytes_value(b: &[u8], out: &mut Vec<u8>) {
    if b.is_empty() {
        out.extend_from_slice(b"null");
        return;
    }
    out.push(b'"');
    let start = out.len();
    let len = base64::encoded_len(b.len(), true).unwrap_or(0);
    out.resize(start + len, 0);
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(b, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + written);
    out.push(b'"');
}

/// Go's string encoding with HTML escaping on (the `json.Marshal` default).
pub fn string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    // Unescaped bytes are copied in runs, from `start` up to `i`.
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        // (escape, how many input bytes it replaces)
        let (escape, width): (&[u8], usize) = match b {
            b'"' => (b"\\\"", 1),
            b'\\' => (b"\\\\", 1),
            b'\n' => (b"\\n", 1),
            b'\r' => (b"\\r", 1),
            b'\t' => (b"\\t", 1),
            0x08 => (b"\\b", 1),
            0x0c => (b"\\f", 1),
            // U+2028 and U+2029 (E2 80 A8 / E2 80 A9): JavaScript line breaks.
            0xE2 if bytes.get(i + 1) == Some(&0x80) && bytes.get(i + 2) == Some(&0xA8) => {
                (b"\\u2028", 3)
            }
            0xE2 if bytes.get(i + 1) == Some(&0x80) && bytes.get(i + 2) == Some(&0xA9) => {
                (b"\\u2029", 3)
            }
            // Other control bytes, and HTML's <, > and &, as \u00XX.
            0x00..=0x1f | b'<' | b'>' | b'&' => (b"", 1),
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(escape);
        }
        i += width;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

mod decode;
mod fields;
mod record;
pub mod rfc3339;
pub use decode::{decode_batch, decode_entry, DecodeError};
pub use fields::{entry_fields, EntryFields};
pub use record::{content_key, Body, Record};
