//! The `meterd` binary: Unix sockets, `emit` and `health`, shutdown, flag errors.

use std::process::{Command, Stdio};
use std::time::Duration;

use meterd::cli::client::connect;
use meterd::pb::metering_service_client::MeteringServiceClient;
use meterd::server::ListenAddr;

use crate::common::{emit_req, entries, free_port, meterd_bin, vm_entry, Binary};

/// Runs `meterd ARGS`, returning (exit success, stdout, stderr).
fn meterd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(meterd_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run meterd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn emit_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("meterd.sock");
    let sock_arg = format!("unix:{}", sock.display());
    let ledger = dir.path().join("ledger");
    let server = Binary::start(&ledger, &["--listen", &sock_arg]).await;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
    }

    // A tonic client over the socket.
    let channel = connect(&ListenAddr::Unix(sock.clone()), Duration::from_secs(5))
        .await
        .expect("connect unix");
    let mut client = MeteringServiceClient::new(channel);
    let r = client
        .emit(emit_req(vm_entry("vm-uds", "uds-1")))
        .await
        .expect("emit over uds")
        .into_inner();
    assert!(!r.duplicate);

    // The command-line client over the socket: accepted, duplicate, rejected.
    let args = [
        "emit",
        "--addr",
        &sock_arg,
        "--kind",
        "vm.compute.stop",
        "--vm-id",
        "vm-uds",
        "--reason",
        "stop-user",
        "--cpu",
        "4",
        "--mem",
        "4GiB",
        "--id",
        "uds-2",
    ];
    let (ok, stdout, _) = meterd(&args);
    assert!(ok && stdout.trim() == "ok", "{stdout}");
    let (ok, stdout, _) = meterd(&args);
    assert!(ok && stdout.trim() == "duplicate", "{stdout}");
    let (ok, _, stderr) = meterd(&["emit", "--addr", &sock_arg, "--kind", "snap.storage.start"]);
    assert!(!ok);
    assert!(
        stderr.contains("entry.snapshot_id: must be set for kind snap.storage.start"),
        "{stderr}"
    );
    let (ok, _, stderr) = meterd(&[
        "emit", "--addr", &sock_arg, "--kind", "vm.nope", "--vm-id", "x",
    ]);
    assert!(!ok && stderr.contains("--kind"), "{stderr}");
    let (ok, _, stderr) = meterd(&[
        "emit",
        "--addr",
        &sock_arg,
        "--kind",
        "vm.compute.start",
        "--vm-id",
        "x",
        "--mem",
        "lots",
    ]);
    assert!(!ok && stderr.contains("\"lots\" is not a size"), "{stderr}");
    let (ok, _, stderr) = meterd(&[
        "emit",
        "--addr",
        &sock_arg,
        "--kind",
        "vm.compute.start",
        "--vm-id",
        "x",
        "--reason",
        "bored",
    ]);
    assert!(
        !ok && stderr.contains("--reason: unknown reason"),
        "{stderr}"
    );

    let (ok, stdout, _) = meterd(&["health", "--addr", &sock_arg]);
    assert!(ok && stdout.trim() == "SERVING", "{stdout}");

    drop(server);
    let lines = entries(&ledger);
    assert_eq!(lines.len(), 2);
    assert!(lines[1].starts_with("{\"kind\":\"vm.compute.stop\",\"vm_id\":\"vm-uds\",\"reason\":\"stop-user\",\"shape\":{\"cpu\":4,\"mem_bytes\":4294967296},"), "{}", lines[1]);
}

#[tokio::test]
async fn sigterm_finishes_syncs_removes_the_socket_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let sock_arg = format!("unix:{}", sock.display());
    let mut server = Binary::start(dir.path(), &["--listen", &sock_arg]).await;
    let mut client = server.client().await;
    client.emit(emit_req(vm_entry("vm-1", "a"))).await.unwrap();
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(!sock.exists(), "socket removed on shutdown");
    assert_eq!(entries(dir.path()).len(), 1);
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced_but_a_live_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("stale.sock");
    // A socket file left behind by a crashed run: bound, then abandoned.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let sock_arg = format!("unix:{}", sock.display());
    let server = Binary::start(&dir.path().join("l1"), &["--listen", &sock_arg]).await;
    let (ok, _, _) = meterd(&["health", "--addr", &sock_arg]);
    assert!(ok);

    let (ok, _, stderr) = meterd(&[
        "serve",
        "--listen",
        &sock_arg,
        "--ledger",
        &dir.path().join("l2").display().to_string(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("in use by a running server"), "{stderr}");
    drop(server);
}

#[tokio::test]
async fn serve_with_no_ledger_flag_uses_the_default_directory_and_says_so() {
    let home = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(meterd_bin())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env_remove("STATE_DIRECTORY")
        .env_remove("XDG_STATE_HOME")
        .env("HOME", home.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = ListenAddr::Tcp(format!("127.0.0.1:{port}"));
    let mut client = None;
    for _ in 0..200 {
        if let Ok(ch) = connect(&addr, Duration::from_secs(1)).await {
            client = Some(MeteringServiceClient::new(ch));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut client = client.expect("server up");
    client.emit(emit_req(vm_entry("vm-1", ""))).await.unwrap();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let default = home.path().join(".local/state/meterd");
    assert_eq!(entries(&default).len(), 1);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(&default.display().to_string()),
        "start-up log names the ledger: {log}"
    );
}

#[test]
fn bad_flags_fail_with_a_precise_message() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["serve", "--fsync", "sometimes"],
            "unknown fsync policy \"sometimes\"",
        ),
        (
            &["serve", "--listen", "nowhere"],
            "neither HOST:PORT nor unix:/path",
        ),
        (&["serve", "--listen", "unix:"], "unix: needs a socket path"),
        (&["serve", "--sink", "kafka"], "unknown sink \"kafka\""),
        (&["serve", "--sink", "nop=x"], "sink nop takes no target"),
        (&["serve", "--sink", "grpc"], "sink grpc needs a target"),
        (&["serve", "--dedupe-window", "soon"], "--dedupe-window"),
    ];
    for (args, want) in cases {
        let (ok, _, stderr) = meterd(args);
        assert!(!ok, "{args:?} must fail");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

#[test]
fn an_unknown_sink_or_a_forwarding_sink_without_target_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (sink, want) in [
        ("kafka=127.0.0.1:9092", "unknown sink \"kafka\""),
        ("grpc", "sink grpc needs a target"),
        ("grpc=localhost", "missing port"),
    ] {
        let (ok, _, stderr) = meterd(&[
            "check-config",
            "--ledger",
            &dir.path().display().to_string(),
            "--sink",
            sink,
        ]);
        assert!(!ok, "{sink} must be refused");
        assert!(stderr.contains(want), "{sink}: {stderr}");
    }
}

#[test]
fn health_of_an_absent_server_fails() {
    let (ok, _, stderr) = meterd(&[
        "health",
        "--addr",
        &format!("127.0.0.1:{}", free_port()),
        "--timeout",
        "1s",
    ]);
    assert!(!ok);
    assert!(stderr.contains("connect to"), "{stderr}");
}

#[tokio::test]
async fn sighup_seals_the_active_files_into_segments() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    client
        .emit(emit_req(vm_entry("vm-1", "before")))
        .await
        .unwrap();
    let sealed = dir.path().join("entries.00000000000000000001.jsonl");
    Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sealed.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no segment after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client
        .emit(emit_req(vm_entry("vm-1", "after")))
        .await
        .unwrap();
    let dup = client
        .emit(emit_req(vm_entry("vm-1", "before")))
        .await
        .unwrap()
        .into_inner();
    assert!(dup.duplicate, "keys of the sealed segment are still known");
    drop(server);
    let old = std::fs::read_to_string(&sealed).unwrap();
    let live = std::fs::read_to_string(dir.path().join(meterd::ledger::ENTRIES_FILE)).unwrap();
    assert!(old.contains("\"id\":\"before\"") && old.lines().count() == 1);
    assert!(live.contains("\"id\":\"after\"") && live.lines().count() == 1);
}

#[test]
fn a_retention_shorter_than_the_dedupe_window_is_refused() {
    for cmd in ["check-config", "serve"] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(meterd_bin())
            .args([
                cmd,
                "--retention",
                "1h",
                "--dedupe-window",
                "2h",
                "--ledger",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{cmd}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--retention") && stderr.contains("--dedupe-window"),
            "{cmd}: {stderr}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(meterd_bin())
        .args([
            "check-config",
            "--retention",
            "30days",
            "--retention-bytes",
            "10GiB",
            "--ledger",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("retention = \"30days\""), "{text}");
}
