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
