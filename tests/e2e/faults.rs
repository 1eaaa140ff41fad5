//! Faults and abuse: a filesystem that fills up, and raw HTTP/2 requests
//! that no well-behaved gRPC client sends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use meterd::pb::SubmitBatchRequest;
use prost::Message as _;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::{batch, emit_req, entries, health_status, vm_entry, Binary};

/// A small tmpfs, unmounted on drop. `None` where mounting is not allowed
/// (not root): the `/dev/full` tests in `ledger.rs` cover that case.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// With `METERD_REQUIRE_TMPFS=1` (set by `scripts/test` when it runs as
    /// root, as CI does) a tmpfs that cannot be mounted fails the test
    /// instead of skipping it: a test that cannot fail where it should run
    /// proves nothing.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status();
        let ok = status.as_ref().is_ok_and(|s| s.success());
        if !ok && std::env::var_os("METERD_REQUIRE_TMPFS").is_some_and(|v| v == "1") {
            panic!("METERD_REQUIRE_TMPFS=1 but mounting a tmpfs failed: {status:?}");
        }
        ok.then_some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn wait_health(bin: &Binary, want: ServingStatus) {
    wait_health_within(bin, want, Duration::from_secs(10)).await
}

async fn wait_health_within(bin: &Binary, want: ServingStatus, within: Duration) {
    let ch = crate::common::channel(bin.addr).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let deadline = Instant::now() + within;
    while health_status(&mut health, "").await != want as i32 {
        assert!(Instant::now() < deadline, "health never became {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_fails_loudly_loses_nothing_and_recovers() {
    let Some(fs) = Tmpfs::mount("1m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root); /dev/full tests cover ENOSPC");
        return;
    };
    // The ledger lives on the small filesystem; the server log (written
    // beside the ledger path) stays outside it, through a symlink.
    let outside = tempfile::tempdir().unwrap();
    let ledger = outside.path().join("ledger");
    std::fs::create_dir(fs.path().join("ledger")).unwrap();
    std::os::unix::fs::symlink(fs.path().join("ledger"), &ledger).unwrap();
    // Leave ~48 KiB free.
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![0u8; 1024 * 1024 - 48 * 1024]).unwrap();

    let mut server = Binary::start(&ledger, &[]).await;
    let mut client = server.client().await;
    let mut acked = Vec::new();
    let mut failed_id = None;
    for i in 0..10_000 {
        let id = format!("full-{i}");
        match client.emit(emit_req(vm_entry("vm-full", &id))).await {
            Ok(_) => acked.push(id),
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                assert!(
                    s.message().contains("No space left on device"),
                    "{}",
                    s.message()
                );
                failed_id = Some(id);
                break;
            }
        }
    }
    let failed_id = failed_id.expect("the filesystem never filled up");
    assert!(acked.len() > 20, "only {} entries fit", acked.len());
    wait_health(&server, ServingStatus::NotServing).await;
    // Batches fail the same way while the disk is full.
    let mut stream = client
        .submit_batch(tokio_stream::iter(vec![SubmitBatchRequest::new(vec![
            batch("full-b", "m"),
        ])]))
        .await
        .unwrap()
        .into_inner();
    let s = stream.next().await.unwrap().unwrap_err();
    assert_eq!(s.code(), Code::Unavailable);

    // Space comes back: health heals by itself, with no client write (a
    // readiness probe or a load balancer sends none), within 5 s; then the
    // refused record is written on retry.
    std::fs::remove_file(&filler).unwrap();
    wait_health_within(&server, ServingStatus::Serving, Duration::from_secs(5)).await;
    assert!(
        server.log_text().contains("takes writes again"),
        "{}",
        server.log_text()
    );
    let r = client
        .emit(emit_req(vm_entry("vm-full", &failed_id)))
        .await
        .expect("writes resume once space is freed");
    assert!(!r.get_ref().duplicate, "the failed id was left free");
    acked.push(failed_id);

    // After a restart every acknowledged entry is there once, no line torn.
    assert!(server.terminate().success());
    let _server = Binary::start(&ledger, &[]).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for id in crate::common::field_values(&entries(&ledger), "id") {
        *counts.entry(id).or_default() += 1;
    }
    for id in &acked {
        assert_eq!(counts.get(id), Some(&1), "{id}");
    }
    assert_eq!(counts.len(), acked.len(), "nothing unacknowledged was kept");
    drop(fs);
}

/// A full disk under load: 200 calls refused, one log line for the
/// episode (not one per call), health NOT_SERVING without a flap until the
/// disk has room again, then SERVING by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_load_logs_once_and_health_does_not_flap() {
    let Some(fs) = Tmpfs::mount("1m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root)");
        return;
    };
    let outside = tempfile::tempdir().unwrap();
    let ledger = outside.path().join("ledger");
    std::fs::create_dir(fs.path().join("ledger")).unwrap();
    std::os::unix::fs::symlink(fs.path().join("ledger"), &ledger).unwrap();
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![0u8; 1024 * 1024 - 48 * 1024]).unwrap();
    let server = Binary::start(&ledger, &[]).await;
    let mut client = server.client().await;
    let mut i = 0;
    loop {
        i += 1;
        assert!(i < 10_000, "the filesystem never filled up");
        if client
            .emit(emit_req(vm_entry("vm-full", &format!("load-{i}"))))
            .await
            .is_err()
        {
            break;
        }
    }
    wait_health(&server, ServingStatus::NotServing).await;
    let lines_before = server.log_text().lines().count();

    // Every status the health service publishes from now on.
    let ch = crate::common::channel(server.addr).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "metering.v1.MeteringService".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::NotServing as i32);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let watching = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = watch.message().await {
                seen.lock().unwrap().push(r.status);
            }
        })
    };
    let started = Instant::now();
    for n in 0..200 {
        let s = client
            .emit(emit_req(vm_entry("vm-full", &format!("refused-{n}"))))
            .await
            .expect_err("the disk is full");
        assert!(
            matches!(s.code(), Code::Unavailable | Code::ResourceExhausted),
            "{s:?}"
        );
    }
    // Long enough for the writer's probes (every second) to have run.
    while started.elapsed() < Duration::from_secs(3) {
        let _ = client
            .emit(emit_req(vm_entry("vm-full", "refused-more")))
            .await;
    }
    let log = server.log_text();
    let new_lines: Vec<&str> = log.lines().skip(lines_before).collect();
    assert!(
        new_lines.len() <= 2,
        "{} lines logged for the refused calls:\n{}",
        new_lines.len(),
        new_lines.join("\n")
    );
    assert_eq!(
        seen.lock().unwrap().clone(),
        Vec::<i32>::new(),
        "health changed while the disk was full"
    );

    std::fs::remove_file(&filler).unwrap();
    wait_health_within(&server, ServingStatus::Serving, Duration::from_secs(5)).await;
    client
        .emit(emit_req(vm_entry("vm-full", "after")))
        .await
        .expect("writes resume");
    watching.abort();
    drop(fs);
}

/// What a raw HTTP/2 gRPC call got: the HTTP status and `grpc-status`
/// (from the headers of a trailers-only answer, or from the trailers).
#[derive(Debug)]
struct RawAnswer {
    http: u16,
    grpc_status: Option<i32>,
    grpc_message: String,
}

async fn raw_call(
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, String)],
    body: Vec<u8>,
) -> Result<RawAnswer, h2::Error> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await?;
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in extra {
        req = req.header(*k, v.as_str());
    }
    let (response, mut send) = client.send_request(req.body(()).unwrap(), false)?;
    send.send_data(Bytes::from(body), true)?;
    let response = response.await?;
    let http = response.status().as_u16();
    let (parts, mut recv) = response.into_parts();
    let mut headers = parts.headers;
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        let _ = recv.flow_control().release_capacity(chunk.len());
    }
    if let Some(trailers) = recv.trailers().await? {
        headers.extend(trailers);
    }
    Ok(RawAnswer {
        http,
        grpc_status: headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse().ok()),
        grpc_message: headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    })
}

fn framed(flag: u8, declared_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&declared_len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Extra request headers.
type Headers = Vec<(&'static str, String)>;

const EMIT: &str = "/metering.v1.MeteringService/Emit";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http2_requests_get_an_error_and_the_server_stays_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(dir.path(), &[]).await;
    let good = emit_req(vm_entry("vm-raw", "raw-1")).encode_to_vec();
    let good_len = u32::try_from(good.len()).unwrap();

    // A well-formed raw call works, so the failures below are about the input.
    let ok = raw_call(server.addr, EMIT, &[], framed(0, good_len, &good))
        .await
        .unwrap();
    assert_eq!((ok.http, ok.grpc_status), (200, Some(0)), "{ok:?}");

    let cases: Vec<(&str, Headers, Vec<u8>)> = vec![
        (
            "a frame cut inside its 5-byte prefix",
            vec![],
            vec![0, 0, 0],
        ),
        (
            "a declared length larger than the body",
            vec![],
            framed(0, good_len + 100, &good),
        ),
        (
            "a declared length beyond --max-message-bytes",
            vec![],
            framed(0, u32::MAX, &good[..10]),
        ),
        (
            "the compressed flag without a grpc-encoding",
            vec![],
            framed(1, good_len, &good),
        ),
        (
            "an unknown grpc-encoding",
            vec![("grpc-encoding", "snappy-zz".into())],
            framed(1, good_len, &good),
        ),
        (
            "a body that is not protobuf",
            vec![],
            framed(0, 4, &[0xff, 0xff, 0xff, 0xff]),
        ),
    ];
    for (what, headers, body) in cases {
        let answer = raw_call(server.addr, EMIT, &headers, body).await;
        match answer {
            Ok(a) => {
                let code = a
                    .grpc_status
                    .unwrap_or_else(|| panic!("{what}: no grpc-status: {a:?}"));
                assert_ne!(code, 0, "{what}: answered OK: {a:?}");
                eprintln!("{what}: grpc-status {code} {:?}", a.grpc_message);
            }
            // A stream reset is an error answer too.
            Err(e) => eprintln!("{what}: {e}"),
        }
    }

    // A huge metadata header: refused (reset, GOAWAY or an error status).
    let huge = "x".repeat(1024 * 1024);
    match raw_call(
        server.addr,
        EMIT,
        &[("x-huge", huge)],
        framed(0, good_len, &good),
    )
    .await
    {
        Ok(a) => assert!(
            a.http != 200 || a.grpc_status.is_some_and(|c| c != 0),
            "a 1 MiB header was accepted: {a:?}"
        ),
        Err(e) => eprintln!("huge header: {e}"),
    }

    // The server is still healthy and only the one good call was written.
    wait_health(&server, ServingStatus::Serving).await;
    let mut client = server.client().await;
    client
        .emit(emit_req(vm_entry("vm-raw", "raw-2")))
        .await
        .unwrap();
    assert_eq!(
        crate::common::field_values(&entries(dir.path()), "id"),
        vec!["raw-1", "raw-2"]
    );
}
