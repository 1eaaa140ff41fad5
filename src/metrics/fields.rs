//! The `field` label of `meterd_records_rejected_total`: field paths mapped
//! to a fixed set of names, so that what a client sends cannot add series.

/// The entry fields a rule names, relative to the entry.
const ENTRY_FIELDS: [&str; 11] = [
    "kind",
    "reason",
    "vm_id",
    "snapshot_id",
    "source_snapshot_id",
    "id",
    "hypervisor",
    "shape.cpu",
    "shape.mem_bytes",
    "shape.storage_bytes",
    "emitted_at",
];

/// Every value the `field` label of `meterd_records_rejected_total` can
/// take: field paths with their indexes dropped, as `Check` names them
/// under `Emit` (`entry.`), `EmitBatch` (`entries[].`) and `SubmitBatch`.
const FIELDS: &[&str] = &[
    "entry",
    "entries",
    "batches",
    "upstream",
    // A request element that could not be decoded (src/pb/lenient.rs).
    "undecodable",
    "uuid",
    "model_uuid",
    "unit_name",
    "model_name",
    "charm_url",
    "credentials",
    "reseller_credentials",
    "sla_credentials",
    "created",
    "metrics",
    "metrics[].key",
    "metrics[].value",
    "metrics[].time",
    "metrics[].labels",
    "metrics[].labels[]",
    "entry.kind",
    "entry.reason",
    "entry.vm_id",
    "entry.snapshot_id",
    "entry.source_snapshot_id",
    "entry.id",
    "entry.hypervisor",
    "entry.shape.cpu",
    "entry.shape.mem_bytes",
    "entry.shape.storage_bytes",
    "entry.emitted_at",
    "entries[].kind",
    "entries[].reason",
    "entries[].vm_id",
    "entries[].snapshot_id",
    "entries[].source_snapshot_id",
    "entries[].id",
    "entries[].hypervisor",
    "entries[].shape.cpu",
    "entries[].shape.mem_bytes",
    "entries[].shape.storage_bytes",
    "entries[].emitted_at",
];

const _: () = assert!(FIELDS.len() == 20 + 2 * ENTRY_FIELDS.len());

/// The label value for a field path: one of a fixed set of names, `other`
/// for anything unexpected, so that no client can grow the number of
/// series. Indexes are dropped (`metrics[3].key` is `metrics[].key`), and a
/// label's key, which is client text and may hold anything (`]` and quotes
/// included), is cut off whole: `metrics[0].labels["k"]` is
/// `metrics[].labels[]`.
pub fn field_label(path: &str) -> &'static str {
    const LABELS: &str = ".labels[";
    let (head, keyed) = match path.find(LABELS) {
        Some(i) => (&path[..i + LABELS.len() - 1], true),
        None => (path, false),
    };
    let mut name = String::with_capacity(head.len() + 2);
    let mut in_index = false;
    for c in head.chars() {
        match c {
            '[' => {
                in_index = true;
                name.push('[');
            }
            ']' => {
                in_index = false;
                name.push(']');
            }
            _ if in_index => {}
            _ => name.push(c),
        }
    }
    if keyed {
        name.push_str("[]");
    }
    FIELDS
        .iter()
        .find(|f| **f == name)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_labels_come_from_a_fixed_set() {
        for (path, want) in [
            ("entry", "entry"),
            ("entry.vm_id", "entry.vm_id"),
            ("entries[17].shape.cpu", "entries[].shape.cpu"),
            ("entries", "entries"),
            ("metrics[3].key", "metrics[].key"),
            ("metrics[0].labels", "metrics[].labels"),
            (r#"metrics[0].labels["k"]"#, "metrics[].labels[]"),
            (r#"metrics[0].labels["a]b"]"#, "metrics[].labels[]"),
            (
                r#"metrics[0].labels["]\"\u{1}x.labels[y"]"#,
                "metrics[].labels[]",
            ),
            ("metrics[0].labels[\"ключ]\"]", "metrics[].labels[]"),
            ("upstream", "upstream"),
            ("entry.nonsense", "other"),
            ("", "other"),
            ("]]]", "other"),
        ] {
            assert_eq!(field_label(path), want, "{path}");
        }
        // Every name the validation can produce is in the set.
        for f in ENTRY_FIELDS {
            assert_eq!(field_label(&format!("entry.{f}")), format!("entry.{f}"));
            assert_eq!(
                field_label(&format!("entries[0].{f}")),
                format!("entries[].{f}")
            );
        }
    }
}
