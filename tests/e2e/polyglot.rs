//! Clients in other languages, each against the real binary: Python
//! (grpcio, `tests/python/client.py`, run from `python.rs`), Node
//! (`@grpc/grpc-js` + `@grpc/proto-loader`, `tests/node/client.js`) and Go
//! (grpc-go from Debian's packages, `tests/go/client.go`).
//!
//! The three play one scenario on a fresh ledger, their ids prefixed with
//! `py-`, `node-` or `go-` (`P-` below), and assert every answer themselves:
//!
//! 1. health is SERVING;
//! 2. `Emit` a compute start of `P-vm-1` (2 vCPUs, 1 GiB, `cloud-hypervisor`)
//!    at 2025-03-03T08:00:00Z, id `P-vm-1-boot`; the same again is a
//!    duplicate; an entry without `vm_id` (id `P-bad-1`) is INVALID_ARGUMENT;
//! 3. `EmitBatch` of the VM's stop at 10:30:00.25 (`P-vm-1-stop`), an entry
//!    without `vm_id` (`P-bad-2`, rejected on its own) and a 10 GiB snapshot
//!    start of `P-snap-1` at 09:00 (`P-snap-1-start`);
//! 4. `SubmitBatch`: pipelined requests mixing good batches (unit
//!    `postgresql/0`, credentials `macaroon`) and bad ones;
//! 5. `Tail` of the entries from 0, then resumed after the first position;
//! 6. `Usage` of 2025-03-03 (UTC) in day buckets: the VM ran 9000.25 s
//!    (vcpu_seconds "18000.5"), the snapshot is open from 09:00 to midnight.
//!
//! Each prints a JSON summary of what it was acknowledged for and what Tail
//! and Usage answered; [`check_summary`] checks it against the server: the
//! ledger holds exactly the acknowledged records, Tail's records are the
//! ledger's lines at their positions, and Usage's rows are what the server
//! answers a Rust client for the same query.
//!
//! The toolchains are installed by scripts/test; a missing one fails the test.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use meterd::pb::{Family, Granularity, UsageRequest, UsageRow};
use meterd::record::timestamp_to_time;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::common::{self, ts, Binary};

/// What differs between the clients: their id prefix and their SubmitBatch plan.
pub struct Expected {
    /// `py`, `node` or `go`.
    pub prefix: &'static str,
    /// Batches acknowledged.
    pub batches: usize,
    /// Batches rejected.
    pub rejected_batches: usize,
}

/// Runs a client and returns its JSON summary; panics with its output when
/// it fails. `missing` explains what to install when the program is not found.
pub fn run_client(mut cmd: Command, missing: &str) -> Value {
    let what = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| {
        if e.kind() == ErrorKind::NotFound {
            panic!("{missing}");
        }
        panic!("could not run {what}: {e}")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({})\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: the summary is not JSON ({e}):\n{stdout}"))
}

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
    let mut out: Vec<String> = values.iter().map(|v| string(v, field)).collect();
    out.sort();
    out
}

fn string(v: &Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string {field:?} in {v}"))
        .to_owned()
}

fn array<'a>(v: &'a Value, field: &str) -> &'a [Value] {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("no array {field:?} in {v}"))
}

/// An RFC 3339 time, in a canonical spelling (clients write fractions differently).
fn canonical_time(s: &str) -> String {
    OffsetDateTime::parse(s, &Rfc3339)
        .unwrap_or_else(|e| panic!("time {s:?}: {e}"))
        .format(&Rfc3339)
        .unwrap()
}

fn pb_time(t: &Option<prost_types::Timestamp>) -> String {
    let t = t.as_ref().expect("a timestamp");
    timestamp_to_time(t)
        .expect("a valid timestamp")
        .format(&Rfc3339)
        .unwrap()
}

/// A usage row as the clients summarize it (64-bit integers as strings).
fn row_json(r: &UsageRow) -> Value {
    json!({
        "family": Family::try_from(r.family).expect("known family").as_str_name(),
        "id": r.id,
        "hypervisor": r.hypervisor,
        "bucket_start": pb_time(&r.bucket_start),
        "bucket_end": pb_time(&r.bucket_end),
        "running_nanos": r.running_nanos.to_string(),
        "vcpu_seconds": r.vcpu_seconds,
        "mem_byte_seconds": r.mem_byte_seconds,
        "storage_byte_seconds": r.storage_byte_seconds,
        "intervals": r.intervals,
        "open": r.open,
    })
}

/// Checks a client's summary against the server `bin` it talked to.
pub async fn check_summary(summary: &Value, bin: &Binary, want: Expected) {
    let p = want.prefix;
    assert_eq!(summary["health"], "SERVING", "summary: {summary}");

    // Entries: the ledger holds exactly the recorded ones, in the order they
    // were acknowledged, with what was sent.
    let acked = array(summary, "entries");
    let ids: Vec<String> = acked.iter().map(|e| string(e, "id")).collect();
    assert_eq!(
        ids,
        [
            format!("{p}-vm-1-boot"),
            format!("{p}-vm-1-stop"),
            format!("{p}-snap-1-start")
        ],
        "recorded entries: {summary}"
    );
    let lines = common::entries(&bin.ledger);
    let entries = parse_lines(&lines);
    assert_eq!(
        entries.iter().map(|e| string(e, "id")).collect::<Vec<_>>(),
        ids,
        "ledger entries (want exactly the recorded ones, in order): {lines:#?}"
    );
    for (got, want) in entries.iter().zip(acked) {
        for field in ["kind", "vm_id", "snapshot_id"] {
            assert_eq!(
                got[field].as_str().unwrap_or_default(),
                want[field].as_str().unwrap_or_default(),
                "entry field {field}: ledger {got}, client {want}"
            );
        }
        assert_eq!(
            canonical_time(&string(got, "emitted_at")),
            canonical_time(&string(want, "emitted_at")),
            "emitted_at: ledger {got}, client {want}"
        );
        assert_eq!(got["hypervisor"], "cloud-hypervisor", "{got}");
    }
    let gib = 1u64 << 30;
    assert_eq!(entries[0]["reason"], "boot", "{}", entries[0]);
    assert_eq!(entries[0]["shape"], json!({"cpu": 2, "mem_bytes": gib}));
    assert_eq!(entries[1]["reason"], "stop-user", "{}", entries[1]);
    assert_eq!(entries[1]["shape"], json!({"cpu": 2, "mem_bytes": gib}));
    assert_eq!(
        entries[1]["emitted_at"], "2025-03-03T10:30:00.25Z",
        "{}",
        entries[1]
    );
    assert_eq!(entries[2]["shape"], json!({"storage_bytes": 10 * gib}));

    assert_eq!(
        summary["duplicates"],
        json!([format!("{p}-vm-1-boot")]),
        "{summary}"
    );
    let refused = array(summary, "rejected_entries");
    assert_eq!(
        refused.iter().map(|r| string(r, "id")).collect::<Vec<_>>(),
        [format!("{p}-bad-1"), format!("{p}-bad-2")],
        "rejected entries: {summary}"
    );
    assert!(
        string(&refused[0], "reason").starts_with("entry.vm_id: "),
        "{summary}"
    );
    assert!(
        string(&refused[1], "reason").starts_with("entries[1].vm_id: "),
        "{summary}"
    );

    // Batches: exactly the acknowledged ones, none of the rejected.
    let acked = array(summary, "batches");
    assert_eq!(acked.len(), want.batches, "acknowledged batches: {summary}");
    let batches = parse_lines(&common::batches(&bin.ledger));
    assert_eq!(
        sorted_field(&batches, "uuid"),
        sorted_field(acked, "uuid"),
        "ledger batches vs acknowledged batches"
    );
    for b in &batches {
        let uuid = string(b, "uuid");
        assert!(uuid.starts_with(&format!("{p}-")), "batch {uuid}");
        let ack = acked
            .iter()
            .find(|a| a["uuid"] == uuid)
            .unwrap_or_else(|| panic!("batch {uuid} in the ledger was not acknowledged"));
        assert_eq!(b["env-uuid"], ack["model_uuid"], "batch {uuid}: {b}");
        assert_eq!(b["unit-name"], "postgresql/0", "batch {uuid}: {b}");
        assert_eq!(b["credentials"], "bWFjYXJvb24=", "batch {uuid}: {b}");
    }
    let rejected = array(summary, "rejected");
    assert_eq!(rejected.len(), want.rejected_batches, "rejected: {summary}");
    for r in rejected {
        let uuid = string(r, "uuid");
        assert!(
            !batches.iter().any(|b| b["uuid"] == uuid),
            "rejected batch {uuid} was written"
        );
    }

    // Tail: the client saw the ledger's lines at positions 1, 2, 3, and
    // resuming after 1 gave the rest.
    let tail = array(summary, "tail");
    let seen: Vec<(u64, String)> = tail
        .iter()
        .map(|r| (r["position"].as_u64().expect("position"), string(r, "line")))
        .collect();
    let ledger: Vec<(u64, String)> = (1..).zip(lines.iter().cloned()).collect();
    assert_eq!(seen, ledger, "Tail from 0 vs the ledger");
    assert_eq!(
        summary["tail_resumed"],
        json!({"after": 1, "positions": [2, 3]}),
        "{summary}"
    );

    // Usage: the client's rows are what the server answers to Rust.
    let mut reader = bin.reader().await;
    let mut stream = reader
        .usage(UsageRequest {
            start_time: Some(ts("2025-03-03T00:00:00Z")),
            end_time: Some(ts("2025-03-04T00:00:00Z")),
            granularity: Granularity::Day as i32,
            time_zone: "UTC".into(),
            ..Default::default()
        })
        .await
        .expect("usage")
        .into_inner();
    let (mut rows, mut anomalies) = (Vec::new(), Vec::new());
    while let Some(r) = stream.message().await.expect("usage message") {
        rows.extend(r.rows.iter().map(row_json));
        anomalies.extend(r.anomalies);
    }
    assert!(anomalies.is_empty(), "{anomalies:#?}");
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert_eq!(rows[0]["vcpu_seconds"], "18000.5", "{rows:#?}");
    let mut usage = array(summary, "usage").to_vec();
    for row in &mut usage {
        for field in ["bucket_start", "bucket_end"] {
            row[field] = json!(canonical_time(&string(row, field)));
        }
    }
    assert_eq!(usage, rows, "the client's Usage rows vs the server's");
    assert_eq!(summary["anomalies"], json!([]), "{summary}");
}

/// `tests/node` and `tests/go`.
fn tests_dir(lang: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(lang)
}

/// A server listening on TCP and on a Unix socket, and the socket's target
/// (`unix:/path`) as stock clients take it.
pub async fn start_with_socket(ledger: &Path, run: &Path) -> (Binary, String) {
    let sock = run.join("meterd.sock");
    let target = format!("unix:{}", sock.display());
    // Ready once TCP health answers: every listener is bound before serving.
    let bin = Binary::start(ledger, &["--listen", &target]).await;
    assert!(sock.exists(), "no socket at {}", sock.display());
    (bin, target)
}

/// Node: `node tests/node/client.js TARGET`, with the packages `npm ci`
/// installed in tests/node (scripts/test does).
async fn node(bin: &Binary, target: &str) {
    let node = tests_dir("node");
    assert!(
        node.join("node_modules/@grpc/grpc-js").is_dir()
            && node.join("node_modules/@grpc/proto-loader").is_dir(),
        "{}/node_modules lacks @grpc/grpc-js or @grpc/proto-loader: run `npm ci` there \
         (scripts/test does)",
        node.display()
    );
    let mut cmd = Command::new("node");
    cmd.arg(node.join("client.js")).arg(target);
    let summary = run_client(
        cmd,
        "`node` is not on PATH; this test needs Node.js and npm (scripts/test installs them)",
    );
    let want = Expected {
        prefix: "node",
        batches: 3,
        rejected_batches: 2,
    };
    check_summary(&summary, bin, want).await;
}

#[tokio::test]
async fn node_grpc_js_client() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(dir.path(), &[]).await;
    node(&bin, &bin.addr.to_string()).await;
}

/// grpc-js on the sidecar's Unix socket, `unix:/path` as it is.
#[tokio::test]
async fn node_grpc_js_client_over_a_unix_socket() {
    let (dir, run) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (bin, target) = start_with_socket(dir.path(), run.path()).await;
    node(&bin, &target).await;
}

/// The Go client, built once per test run by tests/go/build (stubs from
/// proto/ with protoc, grpc-go from Debian's packages, GOPATH mode), with
/// Go's build cache in the target directory.
fn go_client() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let out = tmp.join("meterd-go-client");
        let build = tests_dir("go").join("build");
        let status = Command::new(&build)
            .arg(&out)
            .env("GOCACHE", tmp.join("go-build"))
            .status()
            .unwrap_or_else(|e| panic!("could not run {}: {e}", build.display()));
        assert!(
            status.success(),
            "{} failed ({status}); it needs golang-go protobuf-compiler protoc-gen-go \
             protoc-gen-go-grpc golang-google-grpc-dev golang-google-protobuf-dev \
             golang-github-golang-protobuf-1-5-dev (scripts/test installs them)",
            build.display()
        );
        out
    })
}

/// Go: the client built from tests/go/client.go, run as `CLIENT TARGET`.
async fn go(bin: &Binary, target: &str) {
    let mut cmd = Command::new(go_client());
    cmd.arg(target);
    let summary = run_client(cmd, "the Go client was built but cannot be run");
    let want = Expected {
        prefix: "go",
        batches: 3,
        rejected_batches: 2,
    };
    check_summary(&summary, bin, want).await;
}

#[tokio::test]
async fn go_grpc_client() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(dir.path(), &[]).await;
    go(&bin, &bin.addr.to_string()).await;
}

/// grpc-go on the sidecar's Unix socket, `unix:/path` as it is.
#[tokio::test]
async fn go_grpc_client_over_a_unix_socket() {
    let (dir, run) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (bin, target) = start_with_socket(dir.path(), run.path()).await;
    go(&bin, &target).await;
}
