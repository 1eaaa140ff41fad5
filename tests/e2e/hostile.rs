//! Hostile writers, spoken as raw HTTP/2 (the h2 crate as a client) so that
//! a test can do what no well-behaved gRPC library does: declare a large
//! message and never finish it, or trickle it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::common::{batch, free_port, Binary};

/// What became of one hostile stream.
struct Outcome {
    /// Bytes of the message the server let the client send.
    sent: u64,
    /// `grpc-status` and `grpc-message` of the answer.
    status: Option<(i32, String)>,
}

fn grpc_status(h: &http::HeaderMap) -> Option<(i32, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = h
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(|m| {
            percent_encoding::percent_decode_str(m)
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    Some((code, message))
}

/// On a connection of its own, opens `method` and sends a gRPC message
/// header declaring `len` bytes, then `len - 1` of them as fast as HTTP/2
/// flow control allows, and never the last one. Returns once the server
/// answered the call, with how far the client got.
async fn unfinished_message(addr: std::net::SocketAddr, method: &str, len: u32) -> Outcome {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("h2 ready");
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{addr}/metering.v1.MeteringService/{method}"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).expect("send request");
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let sender = tokio::spawn(async move {
        let mut header = vec![0u8];
        header.extend_from_slice(&len.to_be_bytes());
        let mut left = u64::from(len) - 1;
        let mut pending = Bytes::from(header);
        loop {
            while !pending.is_empty() {
                send.reserve_capacity(pending.len());
                let Some(Ok(n)) = std::future::poll_fn(|cx| send.poll_capacity(cx)).await else {
                    return;
                };
                let n = n.min(pending.len());
                let chunk = pending.split_to(n);
                if send.send_data(chunk, false).is_err() {
                    return;
                }
                counter.fetch_add(n as u64, Ordering::SeqCst);
            }
            if left == 0 {
                // Never the last byte: the message stays unfinished.
                std::future::pending::<()>().await;
            }
            let n = left.min(16 * 1024);
            left -= n;
            pending = Bytes::from(vec![0u8; n as usize]);
        }
    });
    let response = response.await.expect("response headers");
    let mut status = grpc_status(response.headers());
    if status.is_none() {
        let mut body = response.into_body();
        while let Some(data) = body.data().await {
            if data.is_err() {
                break;
            }
        }
        if let Ok(Some(trailers)) = body.trailers().await {
            status = grpc_status(&trailers);
        }
    }
    sender.abort();
    Outcome {
        sent: sent.load(Ordering::SeqCst) - 5,
        status,
    }
}

const MIB: u32 = 1 << 20;

/// Streams that declare big messages and do not finish them: at most
/// `--max-in-flight-bytes` of them are read; the others are held back by
/// HTTP/2 flow control (they cannot send more than a window) and, after
/// waiting, get RESOURCE_EXHAUSTED naming the flag; one that took room and
/// trickles gets RESOURCE_EXHAUSTED after `--message-read-timeout`. Then
/// the server serves normal traffic at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_that_never_finish_their_messages_are_held_back_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let meterd = Binary::start(
        dir.path(),
        &[
            "--max-in-flight-bytes",
            "4MiB",
            "--message-read-timeout",
            "2s",
            "--metrics-listen",
            &metrics_addr,
        ],
    )
    .await;
    let started = Instant::now();
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let method = if i % 2 == 0 {
                "SubmitBatch"
            } else {
                "EmitBatch"
            };
            tokio::spawn(unfinished_message(meterd.addr, method, 3 * MIB))
        })
        .collect();
    let mut outcomes = Vec::new();
    for call in calls {
        let outcome = tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .expect("every hostile call is answered (the server does not wait forever)")
            .expect("task");
        outcomes.push(outcome);
    }
    let mut slow = 0;
    let mut full = 0;
    for o in &outcomes {
        let (code, message) = o.status.clone().expect("a grpc-status");
        assert_eq!(code, 8, "RESOURCE_EXHAUSTED: {message}");
        if message.contains("--message-read-timeout") {
            // It had room: all but its last byte went in.
            assert_eq!(o.sent, u64::from(3 * MIB) - 1, "{message}");
            slow += 1;
        } else {
            assert!(message.contains("--max-in-flight-bytes"), "{message}");
            // Held back by flow control: one HTTP/2 window at most, not
            // the message.
            assert!(o.sent < u64::from(2 * MIB), "sent {} ({message})", o.sent);
            full += 1;
        }
    }
    assert!(slow >= 1 && full >= 1, "slow {slow}, full {full}");
    eprintln!("6 hostile streams answered in {:?}", started.elapsed());

    let m = crate::ops::scrape(&metrics_addr).await;
    assert_eq!(m.get("meterd_in_flight_bytes"), Some(&0.0), "{m:?}");
    assert_eq!(m.get("meterd_in_flight_refused_total"), Some(&6.0), "{m:?}");
    let log = meterd.log_text();
    assert!(
        log.matches("in-flight bytes full").count() <= 3,
        "logged once per change of state:\n{log}"
    );

    // Normal traffic goes on at once.
    let mut client = meterd.client().await;
    let mut stream = client
        .submit_batch(tokio_stream::iter(vec![
            meterd::pb::SubmitBatchRequest::new(vec![batch("after", "model-a")]),
        ]))
        .await
        .expect("stream")
        .into_inner();
    let r = stream.message().await.expect("answer").expect("one");
    assert_eq!(r.env_responses["model-a"].acks, vec!["after"]);
}

/// Waits until a connection the server closes is closed: reads to the end
/// (the server's SETTINGS may come first); a reset counts as closed too.
async fn closed_by_server(mut tcp: TcpStream, within: Duration) -> Duration {
    use tokio::io::AsyncReadExt as _;
    let started = Instant::now();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(within, tcp.read_to_end(&mut sink))
        .await
        .expect("the server closes the connection");
    started.elapsed()
}

async fn gauge(metrics: &str, name: &str) -> f64 {
    crate::ops::scrape(metrics)
        .await
        .get(name)
        .copied()
        .unwrap_or(-1.0)
}

/// Waits (with a deadline) until the server has `n` connections open.
async fn until_open(metrics: &str, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let open = gauge(metrics, "meterd_connections_open").await;
        if open == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} connections open, want {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connections that never send the HTTP/2 preface, or only part of it, are
/// closed after `--handshake-timeout`; a connection that speaks HTTP/2 is
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_send_the_preface_are_closed() {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let meterd = Binary::start(
        dir.path(),
        &[
            "--handshake-timeout",
            "1s",
            "--metrics-listen",
            &metrics_addr,
        ],
    )
    .await;
    // Connected first: older than the timeout by the time it is used.
    let mut client = meterd.client().await;
    let silent = TcpStream::connect(meterd.addr).await.unwrap();
    let mut partial = TcpStream::connect(meterd.addr).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let (a, b) = tokio::join!(
        closed_by_server(silent, Duration::from_secs(20)),
        closed_by_server(partial, Duration::from_secs(20)),
    );
    // Closed by the timeout, not at once.
    assert!(
        a >= Duration::from_millis(500) && b >= Duration::from_millis(500),
        "{a:?} {b:?}"
    );
    let m = crate::ops::scrape(&metrics_addr).await;
    assert_eq!(
        m.get("meterd_connections_handshake_timed_out_total"),
        Some(&2.0),
        "{m:?}"
    );
    // A real client on a connection older than the timeout is served.
    client
        .emit(crate::common::emit_req(crate::common::vm_entry(
            "vm-1", "h-1",
        )))
        .await
        .expect("served");
}

/// Beyond `--max-connections` a new connection is closed at once (counted,
/// logged once); the open ones are served, and once one closes a new
/// client gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let meterd = Binary::start(
        dir.path(),
        &["--max-connections", "2", "--metrics-listen", &metrics_addr],
    )
    .await;
    // The readiness probe's connection is gone first.
    until_open(&metrics_addr, 0.0).await;
    let mut first = meterd.client().await;
    let mut second = meterd.client().await;
    until_open(&metrics_addr, 2.0).await;
    for _ in 0..3 {
        let extra = TcpStream::connect(meterd.addr).await.unwrap();
        closed_by_server(extra, Duration::from_secs(10)).await;
    }
    let m = crate::ops::scrape(&metrics_addr).await;
    assert_eq!(
        m.get("meterd_connections_refused_total"),
        Some(&3.0),
        "{m:?}"
    );
    let log = meterd.log_text();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("--max-connections"))
            .count(),
        1,
        "logged once:\n{log}"
    );
    for (c, id) in [(&mut first, "c-1"), (&mut second, "c-2")] {
        c.emit(crate::common::emit_req(crate::common::vm_entry("vm", id)))
            .await
            .expect("open connections are served");
    }
    drop(first);
    until_open(&metrics_addr, 1.0).await;
    let mut third = meterd.client().await;
    third
        .emit(crate::common::emit_req(crate::common::vm_entry(
            "vm", "c-3",
        )))
        .await
        .expect("a new client gets in");
}

/// A connection without a call is closed after `--idle-timeout`; a Tail
/// follower's connection is not, however long it waits for records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_followers_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let meterd = Binary::start(
        dir.path(),
        &["--idle-timeout", "1s", "--metrics-listen", &metrics_addr],
    )
    .await;
    let mut reader = meterd.reader().await;
    let mut follow = reader
        .tail(meterd::pb::TailRequest {
            follow: true,
            ..crate::common::tail_entries(0)
        })
        .await
        .expect("tail")
        .into_inner();
    let caught_up = follow.message().await.expect("tail").expect("caught up");
    assert!(caught_up.caught_up);

    // An HTTP/2 connection that never makes a call.
    let tcp = TcpStream::connect(meterd.addr).await.unwrap();
    let (_client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::time::timeout(Duration::from_secs(20), connection)
        .await
        .expect("the idle connection is closed by the server")
        .ok();
    let m = crate::ops::scrape(&metrics_addr).await;
    assert!(
        m.get("meterd_connections_idle_closed_total")
            .copied()
            .unwrap_or(0.0)
            >= 1.0,
        "{m:?}"
    );

    // The follower, idle for as long, still gets what is written now.
    let mut client = meterd.client().await;
    client
        .emit(crate::common::emit_req(crate::common::vm_entry(
            "vm-f", "f-1",
        )))
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(20), follow.message())
        .await
        .expect("the follower gets the record")
        .expect("tail stream open")
        .expect("a response");
    assert_eq!(r.records.len(), 1);
}

/// Waits until the server's resident memory has not grown for a second
/// (what it buffers for clients that stopped reading is in place), and
/// returns it in KiB; fails at once when it passes `limit_kib`.
async fn settled_rss(meterd: &Binary, limit_kib: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut peak = meterd.rss_kib();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rss = meterd.rss_kib();
        assert!(rss <= limit_kib, "resident {rss} KiB, over {limit_kib} KiB");
        if rss > peak {
            peak = rss;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_secs(1) {
            return peak;
        }
        assert!(Instant::now() < deadline, "memory never settled: {rss} KiB");
    }
}

/// Tail followers far behind that stop reading: meterd reads nothing ahead
/// for them, so each costs about one response in HTTP/2's send buffer,
/// whatever is left to read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_followers_that_stop_reading_cost_a_fixed_amount() {
    const FOLLOWERS: u64 = 16;
    let dir = tempfile::tempdir().unwrap();
    let meterd = Binary::start(dir.path(), &["--fsync", "never"]).await;
    let mut client = meterd.client().await;
    for call in 0..100 {
        let entries = (0..1000)
            .map(|i| {
                let mut e =
                    crate::common::vm_entry(&format!("vm-{call}-{i}"), &format!("t-{call}-{i}"));
                e.hypervisor = "cloud-hypervisor-with-a-long-name".repeat(3);
                e
            })
            .collect();
        let r = client
            .emit_batch(meterd::pb::EmitBatchRequest::new(entries))
            .await
            .expect("emit batch")
            .into_inner();
        assert!(r.results.iter().all(|r| r.rejected.is_empty()));
    }
    let ledger_bytes: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    assert!(ledger_bytes > 20 << 20, "ledger of {ledger_bytes} bytes");
    let before = meterd.rss_kib();

    let mut followers = Vec::new();
    for _ in 0..FOLLOWERS {
        // Each on its own connection: flow control per connection.
        let mut reader = meterd.reader().await;
        let mut stream = reader
            .tail(meterd::pb::TailRequest {
                follow: true,
                ..crate::common::tail_entries(0)
            })
            .await
            .expect("tail")
            .into_inner();
        let first = stream
            .message()
            .await
            .expect("tail")
            .expect("first response");
        assert!(!first.records.is_empty());
        followers.push((reader, stream)); // and never read again
    }
    let per_follower_limit_kib = 3 * 1024;
    let settled = settled_rss(&meterd, before + FOLLOWERS * per_follower_limit_kib).await;
    eprintln!(
        "{FOLLOWERS} stalled followers over a {} MiB ledger: {} KiB more resident, {} KiB each",
        ledger_bytes >> 20,
        settled.saturating_sub(before),
        settled.saturating_sub(before) / FOLLOWERS
    );
    drop(followers);
}

/// VMs started ten years before `end` and never stopped, and the Usage
/// request by the hour over those ten years (87,672 rows per VM).
async fn ten_years_by_the_hour(meterd: &Binary, vms: usize) -> meterd::pb::UsageRequest {
    use meterd::pb::{Granularity, Kind};
    let mut client = meterd.client().await;
    for i in 0..vms {
        let mut e = crate::common::entry_at(
            Kind::VmComputeStart,
            &format!("vm-decade-{i}"),
            "2016-01-01T00:00:00Z",
            (2, 1 << 30, 0),
        );
        e.id = format!("decade-{i}");
        client.emit(crate::common::emit_req(e)).await.expect("emit");
    }
    meterd::pb::UsageRequest {
        start_time: Some(crate::common::ts("2016-01-01T00:00:00Z")),
        end_time: Some(crate::common::ts("2026-01-01T00:00:00Z")),
        granularity: Granularity::Hour as i32,
        ..Default::default()
    }
}

/// A Usage by the hour over ten years: rows are cut as they are sent, so
/// the call's memory does not grow with the range or the granularity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_over_ten_years_by_the_hour_streams_in_bounded_memory() {
    const VMS: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let meterd = Binary::start(dir.path(), &[]).await;
    let req = ten_years_by_the_hour(&meterd, VMS).await;
    let before = meterd.rss_kib();
    let pid = meterd.pid();
    let peak = Arc::new(AtomicU64::new(before));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(crate::common::rss_kib(pid), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut reader = meterd.reader().await;
    let mut stream = reader.usage(req).await.expect("usage").into_inner();
    let (mut rows, mut responses) = (0usize, 0usize);
    while let Some(r) = stream.message().await.expect("usage message") {
        rows += r.rows.len();
        responses += 1;
    }
    sampling.abort();
    assert_eq!(rows, VMS * 87_672, "every hour of ten years, per VM");
    let grew = peak.load(Ordering::SeqCst).saturating_sub(before);
    eprintln!("{rows} rows in {responses} responses; resident memory grew by {grew} KiB at most");
    assert!(grew < 16 * 1024, "grew by {grew} KiB");
}

/// Beyond `--max-usage-calls` a Usage call waits, then gets
/// RESOURCE_EXHAUSTED naming the flag; once the running one ends, the next
/// is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_calls_beyond_the_cap_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let meterd = Binary::start(dir.path(), &["--max-usage-calls", "1"]).await;
    let req = ten_years_by_the_hour(&meterd, 1).await;
    // Running, and held: its client reads one response and stops.
    let mut slow = meterd.reader().await;
    let mut running = slow.usage(req.clone()).await.expect("usage").into_inner();
    running.message().await.expect("first").expect("a response");

    let mut other = meterd.reader().await;
    let refused = async {
        let mut s = other.usage(req.clone()).await?.into_inner();
        while s.message().await?.is_some() {}
        Ok::<_, tonic::Status>(())
    }
    .await
    .expect_err("over the cap");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("--max-usage-calls"),
        "{}",
        refused.message()
    );

    drop(running);
    drop(slow);
    // The slot comes free once the running call has noticed its client left.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut reader = meterd.reader().await;
        let got = async {
            let mut s = reader.usage(req.clone()).await?.into_inner();
            let mut rows = 0;
            while let Some(r) = s.message().await? {
                rows += r.rows.len();
            }
            Ok::<_, tonic::Status>(rows)
        }
        .await;
        match got {
            Ok(rows) => {
                assert_eq!(rows, 87_672);
                break;
            }
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                assert!(Instant::now() < deadline, "the slot never came free");
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    let log = meterd.log_text();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("usage calls busy"))
            .count(),
        1,
        "logged once when refusing starts (its end once calls have gone through for 5 s):\n{log}"
    );
}
