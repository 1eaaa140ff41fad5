//! The `http` sink against a real HTTP server playing a Juju metrics
//! collector: byte-exact bodies, acks honoured, unacked batches re-sent,
//! failures retried, meter statuses relayed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use meterd::pb::{SubmitBatchRequest, SubmitBatchResponse};
use tokio_stream::StreamExt as _;

use crate::common::{batch, emit_req, meterd_bin, pb_batch_from_go, vm_entry, Binary, Client};

/// A forced answer for the next request.
#[derive(Clone, Copy, Debug)]
enum Answer {
    ServerError,
    Garbage,
    /// Answers (with a valid ack) only after meterd's --http-timeout.
    TooLate,
}

/// What the collector saw and did.
#[derive(Default)]
struct Seen {
    batch_bodies: Vec<Vec<u8>>,
    entry_bodies: Vec<Vec<u8>>,
    /// Times each batch uuid arrived.
    received: HashMap<String, usize>,
    /// Times each batch uuid was acknowledged.
    acked: HashMap<String, usize>,
}

#[derive(Default)]
struct CollectorState {
    seen: Mutex<Seen>,
    script: Mutex<VecDeque<Answer>>,
    /// Answer 500 to everything.
    down: AtomicBool,
    /// More batches than this in one POST get 413 (0: no limit).
    max_batches: std::sync::atomic::AtomicUsize,
}

/// A collector on a loopback port. Batches whose uuid contains `-hold` are
/// acknowledged only the second time they arrive; all others at once.
struct Collector {
    addr: SocketAddr,
    state: Arc<CollectorState>,
}

const GRACE_NS: i64 = 3600 * 1_000_000_000;

impl Collector {
    async fn start() -> Collector {
        let state = Arc::new(CollectorState::default());
        let app = axum::Router::new()
            .route("/metrics", post(batches).head(head))
            .route("/entries", post(entries))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Collector { addr, state }
    }

    fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.state.seen.lock().unwrap())
    }

    fn sink(&self) -> String {
        format!("http=http://{}/metrics", self.addr)
    }

    fn entries_url(&self) -> String {
        format!("http://{}/entries", self.addr)
    }
}

fn forced(state: &CollectorState) -> Option<(StatusCode, String)> {
    if state.down.load(Ordering::Relaxed) {
        return Some((StatusCode::INTERNAL_SERVER_ERROR, "down".into()));
    }
    let mut script = state.script.lock().unwrap();
    match script.front().copied() {
        Some(Answer::ServerError) => {
            script.pop_front();
            Some((StatusCode::INTERNAL_SERVER_ERROR, "oops".into()))
        }
        Some(Answer::Garbage) => {
            script.pop_front();
            Some((StatusCode::OK, "<html>not a response</html>".into()))
        }
        Some(Answer::TooLate) | None => None,
    }
}

async fn batches(State(state): State<Arc<CollectorState>>, body: Bytes) -> (StatusCode, String) {
    state.seen.lock().unwrap().batch_bodies.push(body.to_vec());
    if let Some(answer) = forced(&state) {
        return answer;
    }
    if let Some(answer) = refused(&state, &body) {
        return answer;
    }
    let too_late = matches!(
        state.script.lock().unwrap().pop_front(),
        Some(Answer::TooLate)
    );
    if too_late {
        // The ack below arrives after meterd gave up on the request; it
        // must not count, and the batches must be sent again.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    ack(&state, &body, too_late)
}

/// 413 for a POST over the collector's batch limit; 400 for one that holds
/// a batch whose uuid contains `-bad`.
fn refused(state: &CollectorState, body: &[u8]) -> Option<(StatusCode, String)> {
    let sent: Vec<serde_json::Value> =
        serde_json::from_slice(body).expect("a JSON array of batches");
    let max = state.max_batches.load(Ordering::Relaxed);
    if max > 0 && sent.len() > max {
        return Some((StatusCode::PAYLOAD_TOO_LARGE, "too many batches".into()));
    }
    sent.iter()
        .filter_map(|b| b["uuid"].as_str())
        .find(|uuid| uuid.contains("-bad"))
        .map(|uuid| {
            (
                StatusCode::BAD_REQUEST,
                format!("batch {uuid}: unknown charm"),
            )
        })
}

fn ack(state: &CollectorState, body: &[u8], too_late: bool) -> (StatusCode, String) {
    let mut seen = state.seen.lock().unwrap();
    let sent: Vec<serde_json::Value> =
        serde_json::from_slice(body).expect("a JSON array of batches");
    let mut env: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for b in sent {
        let uuid = b["uuid"].as_str().unwrap().to_owned();
        let model = b["env-uuid"].as_str().unwrap().to_owned();
        let n = seen.received.entry(uuid.clone()).or_insert(0);
        *n += 1;
        let acks = env.entry(model).or_default();
        if !uuid.contains("-hold") || *n >= 2 {
            if !too_late {
                *seen.acked.entry(uuid.clone()).or_insert(0) += 1;
            }
            acks.push(uuid);
        }
    }
    let env_responses: serde_json::Map<String, serde_json::Value> = env
        .into_iter()
        .map(|(model, acks)| {
            (
                model,
                serde_json::json!({
                    "acks": acks,
                    "model-status": {"status": "GREEN", "info": "ok"},
                    "unit-statuses": {"postgresql/0": {"status": "AMBER", "info": "grace period"}},
                }),
            )
        })
        .collect();
    let response = serde_json::json!({
        "uuid": "resp",
        "env-responses": env_responses,
        "new-grace-period": GRACE_NS,
    });
    (StatusCode::OK, response.to_string())
}

/// What meterd's probe of a pass-through collector sees: 503 while down.
async fn head(State(state): State<Arc<CollectorState>>) -> StatusCode {
    if state.down.load(Ordering::Relaxed) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn entries(State(state): State<Arc<CollectorState>>, body: Bytes) -> (StatusCode, String) {
    if let Some(answer) = forced(&state) {
        return answer;
    }
    state.seen.lock().unwrap().entry_bodies.push(body.to_vec());
    (StatusCode::OK, String::new())
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn submit(client: &mut Client, batches: Vec<meterd::pb::MetricBatch>) -> SubmitBatchResponse {
    let mut stream = client
        .submit_batch(tokio_stream::iter(vec![SubmitBatchRequest::new(batches)]))
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_wire_acks_retries_and_statuses() {
    let collector = Collector::start().await;
    // The first exchange fails with a 500, the second gets garbage, the
    // third times out.
    collector.state.script.lock().unwrap().extend([
        Answer::ServerError,
        Answer::Garbage,
        Answer::TooLate,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let sink = collector.sink();
    let entries_url = collector.entries_url();
    let server = Binary::start(
        dir.path(),
        &[
            "--sink",
            "jsonl",
            "--sink",
            &sink,
            "--http-entries-url",
            &entries_url,
            "--forward-retry-max",
            "200ms",
            "--http-timeout",
            "500ms",
            // One request at a time: the collector then sees the spool's
            // order exactly, which the byte comparison below relies on.
            "--forward-in-flight",
            "1",
        ],
    )
    .await;
    let mut client = server.client().await;

    // The Go vectors: the body must be the `batch-array` bytes exactly.
    let vectors = crate::common::vectors();
    let array = vectors["metric_batches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "batch-array")
        .unwrap()["line"]
        .as_str()
        .unwrap()
        .to_owned();
    let sent: Vec<serde_json::Value> = serde_json::from_str(&array).unwrap();
    let r = submit(&mut client, sent.iter().map(pb_batch_from_go).collect()).await;
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    wait_for("the vector batches to be acked", || {
        collector.seen(|s| {
            sent.iter()
                .all(|b| s.acked.contains_key(b["uuid"].as_str().unwrap()))
        })
    })
    .await;
    let bodies = collector.seen(|s| s.batch_bodies.clone());
    assert_eq!(bodies.len(), 4, "a 500, garbage, a timeout, then the ack");
    for body in &bodies {
        assert_eq!(
            String::from_utf8_lossy(body),
            array,
            "body differs from Go's json.Marshal"
        );
    }

    // A batch the collector holds back is re-sent until acked; the others
    // are not re-sent, and the client sees each ack once.
    let mut stream = client
        .submit_batch(tokio_stream::iter(vec![
            SubmitBatchRequest::new(vec![batch("h-1-hold", "model-h"), batch("h-2", "model-h")]),
            SubmitBatchRequest::new(vec![batch("h-3", "model-h")]),
        ]))
        .await
        .unwrap()
        .into_inner();
    let mut client_acks = Vec::new();
    while let Some(r) = stream.next().await {
        client_acks.extend(r.unwrap().env_responses["model-h"].acks.clone());
    }
    assert_eq!(client_acks, vec!["h-1-hold", "h-2", "h-3"]);
    wait_for("the held batch to be acked", || {
        collector.seen(|s| s.acked.contains_key("h-1-hold") && s.acked.contains_key("h-3"))
    })
    .await;
    // Everything before the spool's cursor has had its final answer: any
    // re-send of these batches would have happened by then.
    let spool = dir
        .path()
        .join("spool")
        .join(meterd::sink::forward::spool_name(
            "http",
            &sink["http=".len()..],
        ));
    wait_for("the spool to be delivered", || {
        crate::common::spool_pending(&spool) == 0
    })
    .await;
    collector.seen(|s| {
        assert_eq!(
            s.received["h-1-hold"], 2,
            "the unacked batch is sent again, once"
        );
        assert_eq!(s.received["h-2"], 1, "an acked batch is never sent again");
        assert_eq!(s.received["h-3"], 1);
        for (uuid, n) in &s.acked {
            assert_eq!(*n, 1, "{uuid} acked {n} times");
        }
    });

    // The collector's statuses and grace period reach SubmitBatch clients
    // of the same model.
    let r = submit(&mut client, vec![batch("h-4", "model-h")]).await;
    let env = &r.env_responses["model-h"];
    assert_eq!(env.acks, vec!["h-4"]);
    let model = env.model_status.as_ref().unwrap();
    assert_eq!(
        (model.status.as_str(), model.info.as_str()),
        ("GREEN", "ok")
    );
    let unit = &env.unit_statuses["postgresql/0"];
    assert_eq!(
        (unit.status.as_str(), unit.info.as_str()),
        ("AMBER", "grace period")
    );
    assert_eq!(
        r.new_grace_period,
        Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0
        })
    );

    // Entries go as NDJSON, the same bytes as the JSONL ledger.
    for i in 0..5 {
        client
            .emit(emit_req(vm_entry(&format!("vm-{i}"), &format!("e-{i}"))))
            .await
            .unwrap();
    }
    let ledger = std::fs::read(dir.path().join(meterd::ledger::ENTRIES_FILE)).unwrap();
    wait_for("the entries to arrive", || {
        collector.seen(|s| s.entry_bodies.concat().len() >= ledger.len())
    })
    .await;
    assert_eq!(
        String::from_utf8(collector.seen(|s| s.entry_bodies.concat())).unwrap(),
        String::from_utf8(ledger).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meter_status_turns_amber_then_red_while_the_collector_is_down_and_green_after() {
    let collector = Collector::start().await;
    collector.state.down.store(true, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let sink = collector.sink();
    // Taken before meterd starts its grace period, so RED is never early by this clock.
    let started = Instant::now();
    let server = Binary::start(
        dir.path(),
        &[
            "--sink",
            "jsonl",
            "--sink",
            &sink,
            "--http-grace-period",
            "3s",
            "--forward-retry-max",
            "100ms",
        ],
    )
    .await;
    let mut client = server.client().await;
    let status = |r: &SubmitBatchResponse| {
        let m = r.env_responses["model-s"].model_status.clone().unwrap();
        (m.status, m.info)
    };

    let r = submit(&mut client, vec![batch("s-0", "model-s")]).await;
    assert_eq!(status(&r).0, "", "no failed send yet");
    let mut i = 1;
    let mut seen_amber = false;
    loop {
        let r = submit(&mut client, vec![batch(&format!("s-{i}"), "model-s")]).await;
        i += 1;
        let (s, info) = status(&r);
        match s.as_str() {
            "" => assert!(!seen_amber, "went back to no status before recovering"),
            "AMBER" => {
                assert_eq!(info, "failed to send metrics");
                seen_amber = true;
            }
            "RED" => {
                assert!(seen_amber, "RED without AMBER first");
                assert!(
                    started.elapsed() >= Duration::from_secs(3),
                    "RED before the grace period ran out"
                );
                assert!(info.contains("grace period"), "{info}");
                break;
            }
            other => panic!("unexpected status {other}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never turned RED"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        collector.seen(|s| s.batch_bodies.len()) >= 3,
        "status changed without 3 failed sends"
    );

    // The collector returns: everything is delivered and the collector's
    // own status (GREEN) is relayed again.
    collector.state.down.store(false, Ordering::Relaxed);
    wait_for("the backlog to be acked", || {
        collector.seen(|s| (0..i).all(|n| s.acked.contains_key(&format!("s-{n}"))))
    })
    .await;
    let r = submit(&mut client, vec![batch("s-last", "model-s")]).await;
    assert_eq!(status(&r), ("GREEN".to_owned(), "ok".to_owned()));
    let log = server.log_text();
    assert_eq!(log.matches("status AMBER").count(), 1, "{log}");
    assert_eq!(log.matches("status RED").count(), 1, "{log}");
    assert_eq!(log.matches("status GREEN").count(), 1, "{log}");
}

#[test]
fn an_http_sink_alone_needs_somewhere_for_entries() {
    let out = std::process::Command::new(meterd_bin())
        .args(["check-config", "--sink", "http=http://127.0.0.1:9/metrics"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--http-entries-url"), "{stderr}");

    let out = std::process::Command::new(meterd_bin())
        .args([
            "check-config",
            "--sink",
            "http=ftp://127.0.0.1/x",
            "--sink",
            "jsonl",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("scheme must be http or https"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_splits_the_request_and_a_400_dead_letters_only_the_refused_batch() {
    let collector = Collector::start().await;
    collector.state.max_batches.store(3, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let sink = collector.sink();
    let server = Binary::start(
        dir.path(),
        &[
            "--sink",
            "jsonl",
            "--sink",
            &sink,
            "--forward-retry-max",
            "200ms",
        ],
    )
    .await;
    let mut client = server.client().await;
    // One request, so one spool write and one window of eleven.
    let uuids: Vec<String> = (0..11)
        .map(|i| match i {
            4 | 9 => format!("s-{i}-bad"),
            _ => format!("s-{i}"),
        })
        .collect();
    let r = submit(
        &mut client,
        uuids.iter().map(|u| batch(u, "model-split")).collect(),
    )
    .await;
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);

    let good: Vec<&String> = uuids.iter().filter(|u| !u.contains("-bad")).collect();
    let spool = dir
        .path()
        .join("spool")
        .join(meterd::sink::forward::spool_name(
            "http",
            &format!("http://{}/metrics", collector.addr),
        ));
    wait_for(
        "the good batches to be acked and the bad ones dead-lettered",
        || {
            collector.seen(|s| good.iter().all(|u| s.acked.contains_key(*u)))
                && crate::common::ledger_lines(&spool, "dead-letter.jsonl").len() == 2
        },
    )
    .await;
    collector.seen(|s| {
        for (uuid, n) in &s.acked {
            assert_eq!(*n, 1, "{uuid} acked {n} times");
        }
        assert!(!s.acked.keys().any(|u| u.contains("-bad")));
    });
    let dead = crate::common::ledger_lines(&spool, "dead-letter.jsonl");
    for (line, uuid) in dead.iter().zip(["s-4-bad", "s-9-bad"]) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["record"]["uuid"], uuid, "{line}");
        let reason = v["reason"].as_str().unwrap();
        assert!(
            reason.contains("400") && reason.contains("unknown charm"),
            "{reason}"
        );
    }
    // The spool drains: nothing waits behind the refused batches.
    wait_for("the spool to empty", || {
        crate::common::spool_pending(&spool) == 0
    })
    .await;
}

/// Pass-through to a collector that is down: health NOT_SERVING, and back
/// to SERVING within 5 s of the collector returning, through a `HEAD` probe
/// and with no POST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_health_follows_the_collector() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let collector = Collector::start().await;
    collector.state.down.store(true, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let sink = collector.sink();
    let server = Binary::start(
        dir.path(),
        &[
            "--sink",
            "jsonl",
            "--sink",
            &sink,
            "--forward-mode",
            "pass-through",
        ],
    )
    .await;
    let mut client = server.client().await;
    let s = client
        .submit_batch(tokio_stream::iter(vec![SubmitBatchRequest::new(vec![
            batch("pt-h-1", "m"),
        ])]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
    let within = Duration::from_secs(5);
    crate::passthrough::wait_health(server.addr, ServingStatus::NotServing, within).await;
    let posts = collector.seen(|s| s.batch_bodies.len());

    collector.state.down.store(false, Ordering::Relaxed);
    crate::passthrough::wait_health(server.addr, ServingStatus::Serving, within).await;
    assert_eq!(
        collector.seen(|s| s.batch_bodies.len()),
        posts,
        "health came back through a POST"
    );
}
