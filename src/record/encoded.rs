//! A validated record, encoded once at the edge, and what became of it.
//! Every sink writes the same bytes, no sink encodes under a lock, and the
//! log below the ledger and the spools sees only the line and its key.

use std::sync::Arc;

use super::{Entry, MetricBatch};
use crate::log::LogRecord;

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

/// What became of one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Newly recorded.
    Written,
    /// Already recorded earlier (same key within the dedupe window); not written again.
    Duplicate,
    /// Refused for good by an upstream that acks for the client
    /// (pass-through forwarding), with its reason.
    Rejected(Arc<str>),
}

// === impl Record ===

impl Record {
    /// Encodes a validated entry once, for every sink.
    pub fn entry(entry: Entry) -> Record {
        let mut line = Vec::with_capacity(256);
        crate::wire::entry_line(&entry, &mut line);
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
        crate::wire::batch_line(&batch, &mut line);
        Record {
            key: Some(batch.uuid.as_str().into()),
            line,
            body: Body::Batch(batch),
        }
    }

    pub fn is_entry(&self) -> bool {
        matches!(self.body, Body::Entry(_))
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
    let mut key = String::with_capacity(2 + 32);
    key.push_str("h-");
    for b in &digest[..16] {
        // Writing to a String cannot fail.
        let _ = std::fmt::Write::write_fmt(&mut key, format_args!("{b:02x}"));
    }
    key.into()
}

impl LogRecord for Record {
    fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    fn line(&self) -> &[u8] {
        &self.line
    }
}
