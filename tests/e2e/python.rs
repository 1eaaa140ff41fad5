//! A Python grpcio client, stubs generated from proto/ at test time.
//!
//! Runs tests/python/client.py against the real binary. The script asserts
//! every answer itself and prints a JSON summary of what it was acknowledged
//! for; this test then checks that the ledger holds exactly those records.

use std::io::ErrorKind;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::common::{self, Binary};

fn parse_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("ledger line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// The string values of `field` in each object, sorted.
fn sorted_field(values: &[Value], field: &str) -> Vec<String> {
    let mut out: Vec<String> = values
        .iter()
        .map(|v| {
            v[field]
                .as_str()
                .unwrap_or_else(|| panic!("no string {field:?} in {v}"))
                .to_owned()
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn python_grpcio_client() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(dir.path(), &[]).await;
    run_client(&bin.addr.to_string(), dir.path());
}

/// grpcio over the Unix socket, as a stock client: `unix:/path` and no
/// authority override, so grpcio sends the %-encoded path as `:authority`
/// (stock h2 refused it with PROTOCOL_ERROR: issue 9, item 0).
#[tokio::test]
async fn python_grpcio_client_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let sock = run.path().join("meterd.sock");
    let target = format!("unix:{}", sock.display());
    // Ready once TCP health answers: every listener is bound before serving.
    let _bin = Binary::start(dir.path(), &["--listen", &target]).await;
    assert!(sock.exists(), "no socket at {}", sock.display());
    run_client(&target, dir.path());
}

/// Runs tests/python/client.py against `target` and checks that the ledger
/// in `ledger` holds exactly what it was acknowledged for.
fn run_client(target: &str, ledger: &Path) {
    let scratch = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client.py");

    let out = Command::new("python3")
        .arg(&script)
        .arg(target)
        .arg(scratch.path())
        .output()
        .unwrap_or_else(|e| {
            if e.kind() == ErrorKind::NotFound {
                panic!(
                    "`python3` is not on PATH; this test needs python3 with grpcio and \
                     grpcio-tools (run scripts/test, which installs them)"
                )
            }
            panic!("could not run python3 {}: {e}", script.display())
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} failed ({})\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}",
        script.display(),
        out.status
    );
    let summary: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the script's summary is not JSON ({e}):\n{stdout}"));
    assert_eq!(summary["health"], "SERVING", "summary: {summary}");

    // Entries: exactly the one that was acknowledged, as sent.
    let acked_entries = summary["entries"].as_array().expect("summary.entries");
    assert_eq!(acked_entries.len(), 1, "summary: {summary}");
    let entries = parse_lines(&common::entries(ledger));
    assert_eq!(
        entries.len(),
        1,
        "ledger entries (want exactly the acknowledged one): {entries:#?}"
    );
    let (got, want) = (&entries[0], &acked_entries[0]);
    for field in ["id", "kind", "vm_id"] {
        assert_eq!(got[field], want[field], "entry field {field}: ledger {got}");
    }
    assert_eq!(got["reason"], "boot", "{got}");
    assert_eq!(got["hypervisor"], "cloud-hypervisor", "{got}");
    assert_eq!(
        got["shape"],
        serde_json::json!({"cpu": 2, "mem_bytes": 1u64 << 30}),
        "{got}"
    );

    // Batches: exactly the acknowledged ones, none of the rejected.
    let acked = summary["batches"].as_array().expect("summary.batches");
    assert_eq!(acked.len(), 5, "acknowledged batches: {summary}");
    let batches = parse_lines(&common::batches(ledger));
    assert_eq!(
        sorted_field(&batches, "uuid"),
        sorted_field(acked, "uuid"),
        "ledger batches vs acknowledged batches"
    );
    for b in &batches {
        let uuid = b["uuid"].as_str().unwrap_or_default();
        let ack = acked
            .iter()
            .find(|a| a["uuid"] == uuid)
            .unwrap_or_else(|| panic!("batch {uuid} in the ledger was not acknowledged"));
        assert_eq!(b["env-uuid"], ack["model_uuid"], "batch {uuid}: {b}");
        assert_eq!(b["unit-name"], "postgresql/0", "batch {uuid}: {b}");
        assert_eq!(b["credentials"], "bWFjYXJvb24=", "batch {uuid}: {b}");
    }
    let rejected = summary["rejected"].as_array().expect("summary.rejected");
    assert_eq!(rejected.len(), 4, "rejected: {summary}");
    for r in rejected {
        let uuid = r["uuid"].as_str().unwrap_or_default();
        assert!(
            !batches.iter().any(|b| b["uuid"] == uuid),
            "rejected batch {uuid} was written"
        );
    }
}
