//! A validated record, encoded once at the edge.
//! Every sink writes the same bytes, no sink encodes under a lock, and the
//! log below the ledger and the spools sees only the line and its key.

use crate::record::{Entry, MetricBatch};

/// A validated record with its Go-compatible JSON line.
#[derive(Clone)]
pub struct Record {
    /// De-duplication key: the entry `id`, the batch uuid, or for an entry
    /// without an id its [`content_key`]. Kept beside the line, never in it:
    /// the line stays the Go encoding of what the client sent. Always set
    /// for records made here; `Option` because the log's contract allows
    /// records without one.
    pub key: Option<Box<str>>,
    /// The JSONL line, including its trailing newline.
    pub line: Vec<u8>,
    /// The record itself, for sinks that forward structured data.
    pub body: Body,
}

/// What a record is.
#[derive(Clone, Debug)]
pub enum Body {
    Entry(Entry),
    Batch(MetricBatch),
    /// A batch whose structured form was dropped at the edge because no
    /// sink reads it (`Sink::needs_body`): its line is the record, and
    /// [`Record::batch_body`] decodes it again if asked.
    BatchLine,
}

impl std::fmt::Debug for Record {
    // The line is left out: it holds batch credentials in base64.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("key", &self.key)
            .field("body", &self.body)
            .finish()
    }
}

// === impl Record ===

impl Record {
    /// Encodes a validated entry once, for every sink.
    pub fn entry(entry: Entry) -> Record {
        let mut line = Vec::with_capacity(256);
        super::entry_line(&entry, &mut line);
        let key = if entry.id.is_empty() {
            content_key(&line)
        } else {
            entry.id.as_str().into()
        };
        Record {
            key: Some(key),
            line,
            body: Body::Entry(entry),
        }
    }

    /// Encodes a validated batch once, for every sink.
    pub fn batch(batch: MetricBatch) -> Record {
        let mut line = Vec::with_capacity(512 + 128 * batch.metrics.len());
        super::batch_line(&batch, &mut line);
        Record {
            key: Some(batch.uuid.as_str().into()),
            line,
            body: Body::Batch(batch),
        }
    }

    pub fn is_entry(&self) -> bool {
        matches!(self.body, Body::Entry(_))
    }

    /// The record with a batch's structured form dropped (an entry's is
    /// kept: it is small). Decoding a batch allocates a string per field,
    /// label and metric; freeing them here, on the thread that decoded
    /// them, rather than wherever the last reference to the record ends,
    /// is a tenth of SubmitBatch's CPU with mimalloc.
    pub fn without_body(mut self) -> Record {
        if matches!(self.body, Body::Batch(_)) {
            self.body = Body::BatchLine;
        }
        self
    }

    /// A batch record's structured form, decoded from its line if it was
    /// dropped; `None` for an entry, or a line that does not decode (never
    /// for a line encoded here).
    pub fn batch_body(&self) -> Option<std::borrow::Cow<'_, MetricBatch>> {
        match &self.body {
            Body::Batch(b) => Some(std::borrow::Cow::Borrowed(b)),
            Body::BatchLine => super::decode_batch(&self.line)
                .ok()
                .map(std::borrow::Cow::Owned),
            Body::Entry(_) => None,
        }
    }
}

/// The key of an entry without an `id`: `h-` and 32 hex digits of the
/// SHA-256 of its line (hashed with exactly one trailing newline, however
/// the line is framed). Given to every such entry at the edge, before the
/// sinks, so that every sink that de-duplicates (the ledger, a spool, an
/// upstream meterd, JetStream) takes a re-send of the same content (same
/// `emitted_at` included) as the same record: a client's retry after a
/// partial failure is then written once everywhere. An entry without
/// `emitted_at` is stamped with its receive time, so each of its sends is
/// a new record.
pub fn content_key(line: &[u8]) -> Box<str> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(line);
    if !line.ends_with(b"\n") {
        hasher.update(b"\n");
    }
    let digest = hasher.finalize();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut key = String::with_capacity(2 + 32);
    key.push_str("h-");
    for b in &digest[..16] {
        key.push(char::from(HEX[usize::from(b >> 4)]));
        key.push(char::from(HEX[usize::from(b & 15)]));
    }
    key.into()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::record::Metric;

    #[test]
    fn content_keys_are_the_first_half_of_the_lines_sha256_in_hex() {
        // printf '{"a":1}\n' | sha256sum
        let want = "h-e346432021b04179518d9614f3560ccd";
        assert_eq!(&*content_key(b"{\"a\":1}\n"), want);
        assert_eq!(&*content_key(b"{\"a\":1}"), want);
    }

    #[test]
    fn a_batch_without_its_body_keeps_its_line_and_key_and_decodes_back() {
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(1_795_676_400_123_456_789)
            .expect("a valid time");
        let batch = MetricBatch {
            uuid: "b-1".into(),
            model_uuid: "m-1".into(),
            model_name: "prod".into(),
            unit_name: "app/0".into(),
            charm_url: "ch:amd64/app-1".into(),
            created: at,
            metrics: vec![Metric {
                key: "cpu \"ms\"".into(),
                value: "12.5".into(),
                time: at,
                labels: BTreeMap::from([("db".into(), "main".into())]),
            }],
            credentials: b"secret".to_vec(),
            reseller_credentials: Vec::new(),
            sla_credentials: Vec::new(),
        };
        let full = Record::batch(batch.clone());
        let lean = full.clone().without_body();
        assert!(matches!(lean.body, Body::BatchLine));
        assert_eq!(lean.line, full.line);
        assert_eq!(lean.key, full.key);
        assert!(!lean.is_entry());
        assert_eq!(lean.batch_body().as_deref(), Some(&batch));
        assert_eq!(full.batch_body().as_deref(), Some(&batch));
    }
}
