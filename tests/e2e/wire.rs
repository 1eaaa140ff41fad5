//! The Go-compatible encoding, pinned to the bytes Go writes
//! (`../shared/vectors/seed-wire.json`), through the library API.

use meterd::record::{Check, Limits};
use meterd::sink::Record;
use time::OffsetDateTime;

use crate::common::{pb_batch_from_go, pb_entry_from_go, vector_lines};

/// The Go package writes the caller's zone; meterd writes UTC. This vector
/// is the same instant as `...T10:15:30.5Z`.
pub const OFFSET_VECTOR: &str = "vm-compute-start-offset-time";

/// What meterd writes for a vector: the vector itself, or its UTC form.
pub fn expected_entry_line(name: &str, line: &str) -> String {
    if name == OFFSET_VECTOR {
        line.replace("2026-05-28T12:15:30.5+02:00", "2026-05-28T10:15:30.5Z")
    } else {
        line.to_owned()
    }
}

fn check() -> Check<'static> {
    static LIMITS: std::sync::OnceLock<Limits> = std::sync::OnceLock::new();
    Check {
        limits: LIMITS.get_or_init(Limits::default),
        now: OffsetDateTime::now_utc(),
    }
}

#[test]
fn every_entry_vector_encodes_to_gos_bytes() {
    let vectors = vector_lines("entries");
    assert!(vectors.len() >= 11, "all entry vectors are covered");
    for (name, line) in vectors {
        let entry = check()
            .entry(pb_entry_from_go(&line))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let record = Record::entry(entry);
        let got = String::from_utf8(record.line).unwrap();
        assert_eq!(
            got,
            format!("{}\n", expected_entry_line(&name, &line)),
            "vector {name}"
        );
    }
}

#[test]
fn every_batch_vector_encodes_to_gos_bytes() {
    for (name, line) in vector_lines("metric_batches") {
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        let mut got = Vec::new();
        if let Some(array) = value.as_array() {
            let batches: Vec<_> = array
                .iter()
                .map(|b| check().batch(pb_batch_from_go(b)).unwrap())
                .collect();
            meterd::wire::batch_array(&batches, &mut got);
        } else {
            let batch = check().batch(pb_batch_from_go(&value)).unwrap();
            meterd::wire::batch_json(&batch, &mut got);
        }
        assert_eq!(String::from_utf8(got).unwrap(), line, "vector {name}");
    }
}

#[test]
fn entry_id_is_written_only_when_set_and_after_the_seed_fields() {
    let (_, line) = &vector_lines("entries")[0];
    let mut pb = pb_entry_from_go(line);
    pb.id = "evt-1".into();
    let got = String::from_utf8(Record::entry(check().entry(pb).unwrap()).line).unwrap();
    let want = format!("{},\"id\":\"evt-1\"}}\n", line.strip_suffix('}').unwrap());
    assert_eq!(got, want);
}

#[test]
fn strings_escape_exactly_as_go_does() {
    let cases: &[(&str, &str)] = &[
        ("plain", r#""plain""#),
        ("<a&b>", r#""\u003ca\u0026b\u003e""#),
        ("q\"b\\s", r#""q\"b\\s""#),
        ("\u{2028}\u{2029}", r#""\u2028\u2029""#),
        ("\n\r\t\u{8}\u{c}\u{1}\u{1f}", r#""\n\r\t\b\f\u0001\u001f""#),
        ("é €", "\"é €\""),
        ("\u{7f}", "\"\u{7f}\""),
    ];
    for (input, want) in cases {
        let mut out = Vec::new();
        meterd::wire::string(input, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), *want, "input {input:?}");
    }
}

#[test]
fn recovery_reader_accepts_go_lines_with_zone_offsets() {
    for (name, line) in vector_lines("entries") {
        let mut with_id = line.strip_suffix('}').unwrap().to_owned();
        with_id.push_str(",\"id\":\"k\"}");
        let key = meterd::ledger::entry_key(with_id.as_bytes())
            .unwrap_or_else(|_| panic!("{name} is readable"))
            .expect("has a key");
        assert_eq!(&*key, "k");
        // Lines without an id are keyed by their content, as the edge
        // keys such entries, however the line is framed.
        let key = meterd::ledger::entry_key(line.as_bytes())
            .unwrap()
            .expect("a content key");
        assert_eq!(&*key, &*meterd::wire::content_key(line.as_bytes()));
        assert!(key.starts_with("h-"), "{key}");
        let framed = format!("{line}\n");
        assert_eq!(
            meterd::ledger::entry_key(framed.as_bytes())
                .unwrap()
                .as_deref(),
            Some(&*key)
        );
    }
    for (name, line) in vector_lines("metric_batches") {
        if line.starts_with('{') {
            let key = meterd::ledger::batch_key(line.as_bytes())
                .unwrap_or_else(|_| panic!("{name} is readable"));
            assert!(key.is_some());
        }
    }
    assert!(meterd::ledger::entry_key(b"{\"kind\":\"vm.comp").is_err());
}
