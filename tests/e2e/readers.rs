//! Writer and reader tokens kept apart, against the real binary: a writer
//! token does not open LedgerService, a reader token does not open
//! MeteringService, every combination of configured files, health under
//! `--auth-all-services`, SIGHUP reloading reader tokens, the CLI's `--token`.

use std::path::Path;
use std::process::Command;

use meterd::pb::UsageRequest;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;

use crate::common::{emit_req, meterd_bin, tail_entries, ts, vm_entry, wait_until, Binary};

const WRITER: &str = "writer-token-1";
const READER: &str = "reader-token-1";

fn authed<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(t) = token {
        let v: MetadataValue<_> = format!("Bearer {t}").parse().unwrap();
        req.metadata_mut().insert("authorization", v);
    }
    req
}

/// The code of an Emit with `token` (OK when it was recorded).
async fn emit_code(server: &Binary, token: Option<&str>) -> Code {
    let mut client = server.client().await;
    match client
        .emit(authed(emit_req(vm_entry("vm-1", "")), token))
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// The code of a Tail with `token` (OK once it has read to the end).
async fn tail_code(server: &Binary, token: Option<&str>) -> Code {
    let mut reader = server.reader().await;
    let mut stream = match reader.tail(authed(tail_entries(0), token)).await {
        Ok(s) => s.into_inner(),
        Err(s) => return s.code(),
    };
    loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return Code::Ok,
            Err(s) => return s.code(),
        }
    }
}

async fn usage_code(server: &Binary, token: Option<&str>) -> Code {
    let mut reader = server.reader().await;
    let req = UsageRequest {
        start_time: Some(ts("2026-01-01T00:00:00Z")),
        end_time: Some(ts("2026-02-01T00:00:00Z")),
        ..Default::default()
    };
    match reader.usage(authed(req, token)).await {
        Ok(s) => {
            let mut s = s.into_inner();
            loop {
                match s.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Code::Ok,
                    Err(e) => return e.code(),
                }
            }
        }
        Err(s) => s.code(),
    }
}

fn token_file(dir: &Path, name: &str, token: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("# {name}\n{token}\n")).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn writer_and_reader_tokens_open_only_their_own_service() {
    let dir = tempfile::tempdir().unwrap();
    let w = token_file(dir.path(), "writers", WRITER);
    let r = token_file(dir.path(), "readers", READER);
    let server = Binary::start(
        &dir.path().join("ledger"),
        &["--auth-token-file", &w, "--reader-token-file", &r],
    )
    .await;
    use Code::*;
    for (token, emit, read) in [
        (Some(WRITER), Ok, PermissionDenied),
        (Some(READER), PermissionDenied, Ok),
        (None, Unauthenticated, Unauthenticated),
        (Some("nobody"), Unauthenticated, Unauthenticated),
    ] {
        assert_eq!(emit_code(&server, token).await, emit, "Emit with {token:?}");
        assert_eq!(tail_code(&server, token).await, read, "Tail with {token:?}");
        assert_eq!(
            usage_code(&server, token).await,
            read,
            "Usage with {token:?}"
        );
    }
    // The refusal says why, without the token.
    let mut reader = server.reader().await;
    let s = reader
        .tail(authed(tail_entries(0), Some(WRITER)))
        .await
        .unwrap_err();
    assert!(s
        .message()
        .contains("a writer token does not open metering.v1.LedgerService"));
    assert!(!s.message().contains(WRITER) && !server.log_text().contains(WRITER));
    // Health stays open without --auth-all-services.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        crate::common::channel(server.addr).await,
    );
    health.check(HealthCheckRequest::default()).await.unwrap();
}

#[tokio::test]
async fn writer_tokens_alone_keep_the_ledger_closed_reader_tokens_alone_leave_writes_open() {
    let dir = tempfile::tempdir().unwrap();
    let w = token_file(dir.path(), "writers", WRITER);
    let server = Binary::start(&dir.path().join("a"), &["--auth-token-file", &w]).await;
    assert_eq!(emit_code(&server, Some(WRITER)).await, Code::Ok);
    // The ledger holds batch credentials: no reader tokens, no reader.
    assert_eq!(
        tail_code(&server, Some(WRITER)).await,
        Code::PermissionDenied
    );
    assert_eq!(tail_code(&server, None).await, Code::Unauthenticated);
    drop(server);

    let r = token_file(dir.path(), "readers", READER);
    let server = Binary::start(&dir.path().join("b"), &["--reader-token-file", &r]).await;
    assert_eq!(emit_code(&server, None).await, Code::Ok);
    assert_eq!(tail_code(&server, None).await, Code::Unauthenticated);
    assert_eq!(tail_code(&server, Some(READER)).await, Code::Ok);
}

#[tokio::test]
async fn auth_all_services_takes_either_token_for_health() {
    let dir = tempfile::tempdir().unwrap();
    let w = token_file(dir.path(), "writers", WRITER);
    let r = token_file(dir.path(), "readers", READER);
    let mut server = Binary::spawn(
        &dir.path().join("ledger"),
        &[
            "--auth-token-file",
            &w,
            "--reader-token-file",
            &r,
            "--auth-all-services",
        ],
    );
    let channel = loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("meterd exited: {status}");
        }
        if let Ok(ch) = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
        {
            break ch;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let check = |token: Option<&'static str>| {
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        async move {
            health
                .check(authed(HealthCheckRequest::default(), token))
                .await
                .map(|_| ())
                .map_err(|s| s.code())
        }
    };
    // Until it serves, a refusal can also mean "not up yet": wait for the writer's.
    let mut ok = check(Some(WRITER)).await;
    for _ in 0..500 {
        if ok.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        ok = check(Some(WRITER)).await;
    }
    assert_eq!(ok, Ok(()));
    assert_eq!(check(Some(READER)).await, Ok(()));
    assert_eq!(check(None).await, Err(Code::Unauthenticated));
    server.kill9();
}

#[tokio::test]
async fn sighup_reloads_reader_tokens_and_the_cli_sends_them() {
    let dir = tempfile::tempdir().unwrap();
    let w = token_file(dir.path(), "writers", WRITER);
    let r = token_file(dir.path(), "readers", READER);
    let server = Binary::start(
        &dir.path().join("ledger"),
        &["--auth-token-file", &w, "--reader-token-file", &r],
    )
    .await;
    assert_eq!(emit_code(&server, Some(WRITER)).await, Code::Ok);
    let addr = server.addr.to_string();
    let cli = |token: &str| {
        Command::new(meterd_bin())
            .args([
                "tail", "--addr", &addr, "--stream", "entries", "--token", token,
            ])
            .output()
            .unwrap()
    };
    let out = cli(READER);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let out = cli(WRITER);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED: a writer token"),
        "{out:?}"
    );

    token_file(dir.path(), "readers", "reader-token-2");
    server.signal("HUP");
    wait_until("the new reader token to work", || {
        cli("reader-token-2").status.success()
    })
    .await;
    assert_eq!(
        tail_code(&server, Some(READER)).await,
        Code::Unauthenticated
    );
}
