//! The byte budget of records handed to the sinks and not yet written
//! (`--max-queue-bytes`): what bounds memory when the sinks are slower than
//! the callers (a slow disk, a stalled pass-through upstream).
//!
//! Room is taken at the RPC edge, after validation and before the records go
//! to the sink, and given back only once the sink's write has an answer
//! (whether or not the caller is still there: a call that gives up does not
//! take its records out of the sink's queue). A caller without room waits,
//! first come first served, up to [`QUEUE_WAIT`] or most of its own
//! deadline, then gets RESOURCE_EXHAUSTED.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::status::Error;
use crate::metrics::metrics;
use crate::sink::Record;

/// The longest a call waits for room. Long enough to ride out a burst or a
/// slow sync; short enough that an overloaded server answers
/// RESOURCE_EXHAUSTED (and the client backs off) instead of piling up calls.
pub(crate) const QUEUE_WAIT: Duration = Duration::from_secs(5);

/// `--max-queue-bytes`. Safe for concurrent use.
pub(crate) struct Budget {
    room: Arc<Semaphore>,
    /// In bytes; at most `u32::MAX` (what one acquire can ask for).
    limit: u32,
}

/// Room taken for one write; given back when dropped.
pub(crate) struct Held {
    _permit: Option<OwnedSemaphorePermit>,
    bytes: u32,
}

impl Drop for Held {
    fn drop(&mut self) {
        metrics().queue_bytes.dec_by(i64::from(self.bytes));
    }
}

// === impl Budget ===

impl Budget {
    pub(crate) fn new(limit: u64) -> Budget {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX).max(1);
        Budget {
            room: Arc::new(Semaphore::new(limit as usize)),
            limit,
        }
    }

    /// Takes room for `records`, waiting up to `wait`. A request larger than
    /// the whole budget waits until it has the budget to itself, so it is
    /// slowed down, never refused for its size alone (sizes are limited by
    /// `--max-message-bytes`).
    pub(crate) async fn take(&self, records: &[Record], wait: Duration) -> Result<Held, Error> {
        let bytes: usize = records.iter().map(|r| r.line.len()).sum();
        let cost = u32::try_from(bytes).unwrap_or(u32::MAX).min(self.limit);
        if cost == 0 {
            return Ok(Held {
                _permit: None,
                bytes: 0,
            });
        }
        let permit = match self.room.clone().try_acquire_many_owned(cost) {
            Ok(p) => p,
            Err(_) => tokio::time::timeout(wait, self.room.clone().acquire_many_owned(cost))
                .await
                .ok()
                // The semaphore is never closed.
                .and_then(Result::ok)
                .ok_or(Error::QueueFull {
                    limit: u64::from(self.limit),
                    waited: wait,
                })?,
        };
        metrics().queue_bytes.inc_by(i64::from(cost));
        Ok(Held {
            _permit: Some(permit),
            bytes: cost,
        })
    }
}

/// How long a call may wait for room: [`QUEUE_WAIT`], or nine tenths of
/// what is left of the client's deadline when that is shorter, so that the
/// client still hears why before its own deadline ends the call.
pub(crate) fn wait_within(deadline: Option<Instant>) -> Duration {
    match deadline {
        Some(d) => QUEUE_WAIT.min(d.saturating_duration_since(Instant::now()) * 9 / 10),
        None => QUEUE_WAIT,
    }
}

/// The deadline a client sent with its call (`grpc-timeout`), if any.
pub(crate) fn deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    grpc_timeout(value).map(|t| Instant::now() + t)
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit.
fn grpc_timeout(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_as_clients_send_them() {
        assert_eq!(grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        for bad in ["", "S", "5", "5s", "123456789S", "-1S", "1.5S", "5é"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_waits_for_room_then_is_refused_naming_the_limit() {
        let budget = Budget::new(1000);
        let record = |n: usize| {
            let mut r = Record::entry(crate::record::Entry {
                kind: crate::record::Kind::VmComputeStart,
                vm_id: "vm".into(),
                snapshot_id: String::new(),
                source_snapshot_id: String::new(),
                reason: None,
                hypervisor: String::new(),
                shape: Default::default(),
                emitted_at: time::OffsetDateTime::UNIX_EPOCH,
                id: String::new(),
            });
            r.line = vec![b'x'; n];
            r
        };
        let first = budget.take(&[record(600)], QUEUE_WAIT).await.expect("room");
        let start = Instant::now();
        let refused = budget.take(&[record(600)], Duration::from_secs(2)).await;
        assert!(
            matches!(refused, Err(Error::QueueFull { limit: 1000, .. })),
            "no room"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        // Room comes back when the first write has its answer.
        let second = [record(600)];
        let waiter = budget.take(&second, QUEUE_WAIT);
        drop(first);
        assert!(waiter.await.is_ok());
        // Larger than the whole budget: it takes all of it, alone.
        let big = budget.take(&[record(5000)], QUEUE_WAIT).await;
        assert!(big.is_ok());
    }
}
