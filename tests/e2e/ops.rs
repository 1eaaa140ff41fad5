//! Operating meterd: Prometheus metrics, overload, configuration from flags,
//! environment and file, JSON logs, socket modes.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use meterd::pb::{self, SubmitBatchRequest};
use meterd::server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::common::{
    batch, emit_req, entries, free_port, meterd_bin, rss_kib, vm_entry, Binary, Server,
};
use crate::submit_batch::submit_all;

/// GETs `/metrics` and returns `series -> value` for every sample line.
pub(crate) async fn scrape(addr: &str) -> HashMap<String, f64> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.lines()
        .filter(|l| l.starts_with("meterd_"))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
        .collect()
}

#[tokio::test]
async fn metrics_show_exactly_the_calls_made() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let server = Binary::start(dir.path(), &["--metrics-listen", &metrics_addr]).await;
    let mut client = server.client().await;

    client.emit(emit_req(vm_entry("vm-1", "a"))).await.unwrap();
    client.emit(emit_req(vm_entry("vm-2", "b"))).await.unwrap();
    let mut stop = vm_entry("vm-1", "c");
    stop.kind = pb::Kind::VmComputeStop as i32;
    stop.reason = pb::Reason::StopUser as i32;
    client.emit(emit_req(stop)).await.unwrap();
    assert!(
        client
            .emit(emit_req(vm_entry("vm-1", "a")))
            .await
            .unwrap()
            .into_inner()
            .duplicate
    );
    client.emit(emit_req(vm_entry("", "d"))).await.unwrap_err();
    client
        .emit(emit_req(pb::Entry {
            kind: 0,
            ..vm_entry("vm-1", "e")
        }))
        .await
        .unwrap_err();
    let mut no_unit = batch("b-3", "m");
    no_unit.unit_name.clear();
    submit_all(
        &mut client,
        vec![SubmitBatchRequest::new(vec![
            batch("b-1", "m"),
            batch("b-2", "m"),
            no_unit,
        ])],
    )
    .await;
    submit_all(
        &mut client,
        vec![SubmitBatchRequest::new(vec![batch("b-1", "m")])],
    )
    .await;

    let m = scrape(&metrics_addr).await;
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("{k} missing from {m:#?}"))
    };
    assert_eq!(get(r#"meterd_requests_total{rpc="Emit",code="OK"}"#), 4.0);
    assert_eq!(
        get(r#"meterd_requests_total{rpc="Emit",code="INVALID_ARGUMENT"}"#),
        2.0
    );
    assert_eq!(
        get(r#"meterd_requests_total{rpc="SubmitBatch",code="OK"}"#),
        2.0
    );
    assert_eq!(
        get(r#"meterd_records_accepted_total{type="entry",kind="vm.compute.start",reason="boot"}"#),
        2.0
    );
    assert_eq!(
        get(
            r#"meterd_records_accepted_total{type="entry",kind="vm.compute.stop",reason="stop-user"}"#
        ),
        1.0
    );
    assert_eq!(
        get(r#"meterd_records_accepted_total{type="batch",kind="",reason=""}"#),
        2.0
    );
    assert_eq!(
        get(r#"meterd_records_rejected_total{type="entry",field="entry.vm_id"}"#),
        1.0
    );
    assert_eq!(
        get(r#"meterd_records_rejected_total{type="entry",field="entry.kind"}"#),
        1.0
    );
    assert_eq!(
        get(r#"meterd_records_rejected_total{type="batch",field="unit_name"}"#),
        1.0
    );
    assert_eq!(get(r#"meterd_duplicates_skipped_total{type="entry"}"#), 1.0);
    assert_eq!(get(r#"meterd_duplicates_skipped_total{type="batch"}"#), 1.0);
    let entries_bytes = std::fs::metadata(dir.path().join("entries.jsonl"))
        .unwrap()
        .len() as f64;
    let batches_bytes = std::fs::metadata(dir.path().join("batches.jsonl"))
        .unwrap()
        .len() as f64;
    assert_eq!(
        get(r#"meterd_ledger_written_bytes_total{file="entries.jsonl"}"#),
        entries_bytes
    );
    assert_eq!(
        get(r#"meterd_ledger_written_bytes_total{file="batches.jsonl"}"#),
        batches_bytes
    );
    assert_eq!(
        get("meterd_ledger_group_commit_records_sum"),
        5.0,
        "3 entries + 2 batches written"
    );
    assert!(get("meterd_ledger_sync_seconds_count") >= 1.0);
    assert_eq!(get("meterd_in_flight_requests"), 0.0);
}

#[tokio::test]
async fn beyond_the_in_flight_cap_calls_get_resource_exhausted_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = server::Config {
        max_in_flight: 3,
        ..Default::default()
    };
    let server = Server::jsonl_with(dir.path(), config).await;
    let mut client = server.client().await;

    // Three open streams hold every slot.
    let mut senders = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let (tx, rx) = mpsc::channel::<SubmitBatchRequest>(1);
        let mut c = client.clone();
        streams.push(
            c.submit_batch(ReceiverStream::new(rx))
                .await
                .expect("admitted")
                .into_inner(),
        );
        senders.push(tx);
    }
    let status = client
        .emit(emit_req(vm_entry("vm-1", "x")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("--max-in-flight"), "{status:?}");
    let (tx, rx) = mpsc::channel::<SubmitBatchRequest>(1);
    let status = client
        .clone()
        .submit_batch(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    drop(tx);

    // Closing one stream frees its slot.
    drop(senders.pop());
    let mut s = streams.pop().unwrap();
    while s.message().await.unwrap().is_some() {}
    let mut admitted = false;
    for _ in 0..100 {
        if client.emit(emit_req(vm_entry("vm-1", "x"))).await.is_ok() {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(admitted);
    drop(senders);
    drop(streams);
    server.stop().await;
    assert_eq!(entries(dir.path()).len(), 1, "refused calls wrote nothing");
}

/// The bound stated in docs/operations.md: under a flood of calls far beyond the cap,
/// the server stays under 64 MiB resident.
const OVERLOAD_RSS_BOUND_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_server_sheds_load_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(dir.path(), &["--max-in-flight", "8"]).await;
    let client = server.client().await;
    // Hold every slot with slow callers: open streams that never finish.
    let mut held = Vec::new();
    for _ in 0..8 {
        let (tx, rx) = mpsc::channel::<SubmitBatchRequest>(1);
        let resp = client
            .clone()
            .submit_batch(ReceiverStream::new(rx))
            .await
            .expect("admitted");
        held.push((tx, resp));
    }
    let tasks: Vec<_> = (0..2000)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move { c.emit(emit_req(vm_entry("vm-1", &format!("o-{i}")))).await })
        })
        .collect();
    let mut exhausted = 0;
    for t in tasks {
        if let Err(s) = t.await.unwrap() {
            assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
            exhausted += 1;
        }
    }
    assert_eq!(
        exhausted, 2000,
        "every call beyond the cap is refused, none queued"
    );
    let rss = rss_kib(server.child.id());
    eprintln!("overload: {exhausted} calls refused, server resident {rss} KiB");
    assert!(rss < OVERLOAD_RSS_BOUND_KIB, "resident {rss} KiB");
    assert!(entries(dir.path()).is_empty());
    drop(held);
}

fn check_config(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(meterd_bin());
    cmd.arg("check-config").args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("METERD_")) {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn value_of(toml_text: &str, key: &str) -> String {
    let t: toml::Table = toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}: {toml_text}"));
    t.get(key)
        .unwrap_or_else(|| panic!("{key} in {toml_text}"))
        .to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn configuration_precedence_is_flag_then_env_then_file_then_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "meterd.toml", "max-id-len = 10\nfsync = \"never\"\nlisten = [\"127.0.0.1:7000\", \"unix:/tmp/m.sock\"]\nmax_in_flight = 7\n");
    let cfg = ["--config", file.as_str()];

    let (ok, out, err) = check_config(&[], &[]);
    assert!(ok, "{err}");
    assert_eq!(value_of(&out, "max-id-len"), "256", "default");
    assert_eq!(value_of(&out, "fsync"), "\"always\"");

    let (ok, out, err) = check_config(&cfg, &[]);
    assert!(ok, "{err}");
    assert_eq!(value_of(&out, "max-id-len"), "10", "file over default");
    assert_eq!(value_of(&out, "fsync"), "\"never\"");
    assert_eq!(
        value_of(&out, "max-in-flight"),
        "7",
        "snake_case keys are accepted too"
    );
    assert_eq!(
        value_of(&out, "listen"),
        r#"["127.0.0.1:7000", "unix:/tmp/m.sock"]"#
    );

    let (ok, out, err) = check_config(
        &cfg,
        &[
            ("METERD_MAX_ID_LEN", "20"),
            ("METERD_LISTEN", "127.0.0.1:7001"),
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(value_of(&out, "max-id-len"), "20", "env over file");
    assert_eq!(value_of(&out, "listen"), r#"["127.0.0.1:7001"]"#);
    assert_eq!(
        value_of(&out, "fsync"),
        "\"never\"",
        "file still fills the rest"
    );

    let mut args = cfg.to_vec();
    args.extend(["--max-id-len", "30"]);
    let (ok, out, err) = check_config(&args, &[("METERD_MAX_ID_LEN", "20")]);
    assert!(ok, "{err}");
    assert_eq!(value_of(&out, "max-id-len"), "30", "flag over env");

    // The config file path itself may come from the environment.
    let (ok, out, _) = check_config(&[], &[("METERD_CONFIG", &file)]);
    assert!(ok);
    assert_eq!(value_of(&out, "max-id-len"), "10");
}

#[test]
fn invalid_configuration_fails_with_a_precise_message() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = write(dir.path(), "unknown.toml", "fsinc = \"always\"\n");
    let (ok, _, err) = check_config(&["--config", &unknown], &[]);
    assert!(!ok);
    assert!(err.contains("unknown key \"fsinc\""), "{err}");

    let invalid = write(dir.path(), "invalid.toml", "fsync = \"sometimes\"\n");
    let (ok, _, err) = check_config(&["--config", &invalid], &[]);
    assert!(!ok);
    assert!(
        err.contains("invalid.toml") && err.contains("unknown fsync policy \"sometimes\""),
        "{err}"
    );

    let broken = write(dir.path(), "broken.toml", "fsync = \n");
    let (ok, _, err) = check_config(&["--config", &broken], &[]);
    assert!(!ok);
    assert!(err.contains("broken.toml"), "{err}");

    let (ok, _, err) = check_config(&[], &[("METERD_MAX_IN_FLIGHT", "many")]);
    assert!(!ok);
    assert!(err.contains("--max-in-flight"), "{err}");

    let (ok, _, err) = check_config(&["--config", "/nonexistent/meterd.toml"], &[]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/meterd.toml"), "{err}");

    let tokens = write(dir.path(), "empty-tokens", "# none\n");
    let (ok, _, err) = check_config(&["--auth-token-file", &tokens], &[]);
    assert!(!ok);
    assert!(err.contains("holds no token"), "{err}");

    let bad_cert = write(dir.path(), "cert.pem", "not a certificate");
    let (ok, _, err) = check_config(&["--tls-cert", &bad_cert, "--tls-key", &bad_cert], &[]);
    assert!(!ok);
    assert!(err.contains("--tls-cert"), "{err}");

    let (ok, _, err) = check_config(&["--unix-mode", "0999"], &[]);
    assert!(!ok);
    assert!(err.contains("not an octal file mode"), "{err}");
}

#[test]
fn check_config_redacts_secrets() {
    let spec: meterd::sink::SinkSpec = "nats=nats://billing:hunter2@127.0.0.1:4222/x"
        .parse()
        .unwrap();
    assert_eq!(
        spec.to_string(),
        "nats=nats://billing:REDACTED@127.0.0.1:4222/x"
    );
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(dir.path(), "tokens", "very-secret-token\n");
    let (ok, out, err) = check_config(&["--auth-token-file", &tokens], &[]);
    assert!(ok, "{err}");
    assert!(!out.contains("very-secret-token"));
    assert!(out.contains("auth-token-file"));
}

#[tokio::test]
async fn json_logs_and_unix_socket_mode() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("m.sock");
    let port = free_port();
    let mut child = Command::new(meterd_bin())
        .args([
            "serve",
            "--log-format",
            "json",
            "--unix-mode",
            "0600",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--listen",
            &format!("unix:{}", sock.display()),
            "--ledger",
        ])
        .arg(dir.path().join("ledger"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(child.wait().unwrap().success());
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 3, "{stderr}");
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{l}"
        );
    }
}
