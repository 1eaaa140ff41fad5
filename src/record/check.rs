//! Validation: protobuf input in, a domain record or the first broken rule
//! (`field: rule`) out. The one place input is checked.

use std::sync::atomic::{AtomicI64, Ordering};

use time::OffsetDateTime;

use super::{timestamp_to_time, Entry, Invalid, Kind, Limits, Metric, MetricBatch, Reason, Shape};
use crate::pb;

/// Validates protobuf input against the limits at one instant (`now`).
pub struct Check<'a> {
    pub limits: &'a Limits,
    pub now: OffsetDateTime,
}

// === impl Check ===

impl Check<'_> {
    /// Converts an `Entry`, or names the first field that breaks a rule.
    /// Field names are relative to the entry (`vm_id`, `shape.cpu`).
    pub fn entry(&self, pb: pb::Entry) -> Result<Entry, Invalid> {
        let kind = match pb::Kind::try_from(pb.kind) {
            Ok(k) => Kind::from_pb(k).ok_or_else(|| Invalid::new("kind", "must be set"))?,
            Err(_) => return Err(Invalid::new("kind", format!("unknown value {}", pb.kind))),
        };
        let reason = match pb::Reason::try_from(pb.reason) {
            Ok(r) => Reason::from_pb(r),
            Err(_) => {
                return Err(Invalid::new(
                    "reason",
                    format!("unknown value {}", pb.reason),
                ))
            }
        };
        self.id("vm_id", &pb.vm_id)?;
        self.id("snapshot_id", &pb.snapshot_id)?;
        self.id("source_snapshot_id", &pb.source_snapshot_id)?;
        self.id("id", &pb.id)?;
        self.text("hypervisor", &pb.hypervisor)?;
        if kind.is_vm() && pb.vm_id.is_empty() {
            return Err(Invalid::new(
                "vm_id",
                format!("must be set for kind {}", kind.as_str()),
            ));
        }
        if !kind.is_vm() && pb.snapshot_id.is_empty() {
            return Err(Invalid::new(
                "snapshot_id",
                format!("must be set for kind {}", kind.as_str()),
            ));
        }
        let shape = pb.shape.unwrap_or_default();
        for (name, value) in [
            ("shape.cpu", shape.cpu),
            ("shape.mem_bytes", shape.mem_bytes),
            ("shape.storage_bytes", shape.storage_bytes),
        ] {
            if value < 0 {
                return Err(Invalid::new(name, "must not be negative"));
            }
        }
        let emitted_at = match pb.emitted_at {
            None => unique_stamp(self.now),
            Some(ts) => self.time("emitted_at", ts)?,
        };
        Ok(Entry {
            kind,
            vm_id: pb.vm_id,
            snapshot_id: pb.snapshot_id,
            source_snapshot_id: pb.source_snapshot_id,
            reason,
            hypervisor: pb.hypervisor,
            shape: Shape {
                cpu: shape.cpu,
                mem_bytes: shape.mem_bytes,
                storage_bytes: shape.storage_bytes,
            },
            emitted_at,
            id: pb.id,
        })
    }

    /// Converts a `MetricBatch`, or names the first field that breaks a rule.
    /// Counts are checked before anything inside the batch is looked at.
    pub fn batch(&self, pb: pb::MetricBatch) -> Result<MetricBatch, Invalid> {
        let limits = self.limits;
        if pb.metrics.len() > limits.max_metrics_per_batch {
            return Err(Invalid::new(
                "metrics",
                format!(
                    "{} metrics exceed the limit of {} per batch",
                    pb.metrics.len(),
                    limits.max_metrics_per_batch
                ),
            ));
        }
        self.required_id("uuid", &pb.uuid)?;
        self.required_id("model_uuid", &pb.model_uuid)?;
        if pb.unit_name.is_empty() {
            return Err(Invalid::new("unit_name", "must not be empty"));
        }
        self.text("unit_name", &pb.unit_name)?;
        self.text("model_name", &pb.model_name)?;
        self.text("charm_url", &pb.charm_url)?;
        for (name, bytes) in [
            ("credentials", &pb.credentials),
            ("reseller_credentials", &pb.reseller_credentials),
            ("sla_credentials", &pb.sla_credentials),
        ] {
            if bytes.len() > limits.max_credential_bytes {
                return Err(Invalid::new(
                    name,
                    format!("longer than {} bytes", limits.max_credential_bytes),
                ));
            }
        }
        let created = match pb.created {
            None => self.now,
            Some(ts) => self.time("created", ts)?,
        };
        let metrics = pb
            .metrics
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                self.metric(m)
                    .map_err(|e| e.within(&format!("metrics[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MetricBatch {
            uuid: pb.uuid,
            model_uuid: pb.model_uuid,
            model_name: pb.model_name,
            unit_name: pb.unit_name,
            charm_url: pb.charm_url,
            created,
            metrics,
            credentials: pb.credentials,
            reseller_credentials: pb.reseller_credentials,
            sla_credentials: pb.sla_credentials,
        })
    }

    fn metric(&self, pb: pb::Metric) -> Result<Metric, Invalid> {
        if pb.key.is_empty() {
            return Err(Invalid::new("key", "must not be empty"));
        }
        self.text("key", &pb.key)?;
        self.text("value", &pb.value)?;
        let time = match pb.time {
            None => return Err(Invalid::new("time", "must be set")),
            Some(ts) => self.time("time", ts)?,
        };
        if pb.labels.len() > self.limits.max_labels_per_metric {
            return Err(Invalid::new(
                "labels",
                format!(
                    "{} labels exceed the limit of {}",
                    pb.labels.len(),
                    self.limits.max_labels_per_metric
                ),
            ));
        }
        for (k, v) in &pb.labels {
            self.text("labels", k)?;
            // The field name (with the key) is built only for the error.
            self.text("", v).map_err(|e| Invalid {
                field: format!("labels[{k:?}]"),
                ..e
            })?;
        }
        Ok(Metric {
            key: pb.key,
            value: pb.value,
            time,
            labels: pb.labels,
        })
    }

    fn required_id(&self, field: &str, value: &str) -> Result<(), Invalid> {
        if value.is_empty() {
            return Err(Invalid::new(field, "must not be empty"));
        }
        self.id(field, value)
    }

    fn id(&self, field: &str, value: &str) -> Result<(), Invalid> {
        check_str(field, value, self.limits.max_id_len)
    }

    fn text(&self, field: &str, value: &str) -> Result<(), Invalid> {
        check_str(field, value, self.limits.max_string_len)
    }

    /// A valid protobuf Timestamp, not further ahead of `now` than the skew.
    fn time(&self, field: &str, ts: prost_types::Timestamp) -> Result<OffsetDateTime, Invalid> {
        let t = timestamp_to_time(&ts).ok_or_else(|| {
            Invalid::new(
                field,
                "not a valid timestamp (years 0001 to 9999, nanos 0 to 999999999)",
            )
        })?;
        if t > self.now + self.limits.max_clock_skew {
            return Err(Invalid::new(
                field,
                format!(
                    "more than {} in the future",
                    humantime::format_duration(self.limits.max_clock_skew)
                ),
            ));
        }
        Ok(t)
    }
}

fn check_str(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.len() > max {
        return Err(Invalid::new(field, format!("longer than {max} bytes")));
    }
    // Control characters would let one record masquerade as several in
    // line-oriented tools downstream; JSON escaping alone does not protect them.
    // Checked on the bytes (C0 and DEL are single bytes, C1 is 0xC2 0x80..=0x9F
    // in UTF-8), decoding characters only to name the one found.
    let b = value.as_bytes();
    let control = b.iter().enumerate().any(|(i, &c)| {
        c < 0x20 || c == 0x7f || (c == 0xc2 && matches!(b.get(i + 1), Some(0x80..=0x9f)))
    });
    if let Some(c) = control
        .then(|| value.chars().find(|c| c.is_control()))
        .flatten()
    {
        return Err(Invalid::new(
            field,
            format!("contains control character U+{:04X}", c as u32),
        ));
    }
    Ok(())
}

/// The receive time stamped on an entry that came without `emitted_at`,
/// unique within the process: one nanosecond after the previous stamp when
/// the clock has not moved past it. Without it, two calls with the same
/// content stamped in the same nanosecond (or two such entries in one
/// `EmitBatch`, which share one `now`) would have the same content key, and
/// the second would be answered "duplicate" and not written.
fn unique_stamp(now: OffsetDateTime) -> OffsetDateTime {
    static LAST: AtomicI64 = AtomicI64::new(i64::MIN);
    let want = i64::try_from(now.unix_timestamp_nanos()).unwrap_or(i64::MAX);
    let next = |last: i64| want.max(last.saturating_add(1));
    // The closure always returns Some: the update cannot fail.
    let prev = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(next(last))
        })
        .unwrap_or_else(|last| last);
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(next(prev))).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::check_str;
    use crate::record::timestamp_to_time;

    /// Years 0001 to 9999 and nanos 0 to 999,999,999, exactly.
    #[test]
    fn timestamps_at_the_edges_of_the_range() {
        let ts = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        let rfc = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        let first = timestamp_to_time(&ts(-62_135_596_800, 0)).unwrap();
        assert_eq!(rfc(first), "0001-01-01T00:00:00Z");
        let last = timestamp_to_time(&ts(253_402_300_799, 999_999_999)).unwrap();
        assert_eq!(rfc(last), "9999-12-31T23:59:59.999999999Z");
        let t = timestamp_to_time(&ts(1_795_665_220, 897_092_605)).unwrap();
        assert_eq!(t.unix_timestamp_nanos(), 1_795_665_220_897_092_605);
        for (s, n) in [
            (-62_135_596_801, 999_999_999),
            (253_402_300_800, 0),
            (0, -1),
            (0, 1_000_000_000),
            (i64::MIN, 0),
            (i64::MAX, 0),
        ] {
            assert_eq!(timestamp_to_time(&ts(s, n)), None, "{s} {n}");
        }
    }

    /// The byte scan finds exactly the characters `char::is_control` finds.
    #[test]
    fn control_characters_are_found_on_the_bytes() {
        for c in (0..=0x10ffffu32).filter_map(char::from_u32) {
            let s = format!("a{c}b");
            let found = check_str("f", &s, 64).is_err();
            assert_eq!(found, c.is_control(), "U+{:04X}", c as u32);
        }
    }
}
