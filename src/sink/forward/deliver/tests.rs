//! The pipeline against a scripted upstream, on paused time.

use std::sync::Mutex;

use super::*;
use crate::record::{Entry, Kind, Shape};
use crate::sink::forward::verdict::Failure;
use crate::sink::forward::UpstreamFuture;

fn record(key: &str) -> Record {
    Record::entry(Entry {
        kind: Kind::VmComputeStart,
        vm_id: key.into(),
        snapshot_id: String::new(),
        source_snapshot_id: String::new(),
        reason: None,
        hypervisor: String::new(),
        shape: Shape::default(),
        emitted_at: time::OffsetDateTime::UNIX_EPOCH,
        id: key.into(),
    })
}

/// The answer to a request of these keys, as the n-th call (from 1).
type Rule = dyn Fn(&[String], usize) -> Result<Vec<Verdict>, UpstreamError> + Send + Sync;

/// Answers by rule; remembers the keys of every request.
struct Fake {
    answer: Box<Rule>,
    seen: Mutex<Vec<Vec<String>>>,
}

impl Upstream for Fake {
    fn deliver(&self, records: Arc<[Record]>) -> UpstreamFuture {
        let keys: Vec<String> = records
            .iter()
            .map(|r| r.key.as_deref().unwrap_or("").to_owned())
            .collect();
        let call = {
            let mut seen = self.seen.lock().unwrap();
            seen.push(keys.clone());
            seen.len()
        };
        let answer = (self.answer)(&keys, call);
        // Earlier calls answer later, so answers arrive out of order.
        let delay = Duration::from_millis(50u64.saturating_sub(call as u64 * 10));
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            answer
        })
    }
}

fn fake(
    answer: impl Fn(&[String], usize) -> Result<Vec<Verdict>, UpstreamError> + Send + Sync + 'static,
) -> Arc<Fake> {
    Arc::new(Fake {
        answer: Box::new(answer),
        seen: Mutex::new(Vec::new()),
    })
}

fn pipeline(upstream: Arc<Fake>) -> Pipeline {
    Pipeline::new(
        upstream,
        4,
        Duration::from_secs(1),
        "test".into(),
        ForwardLabels {
            sink: "test".into(),
            stream: "entries",
        },
    )
}

fn window(tag: &str, n: usize) -> Vec<Record> {
    (0..n).map(|i| record(&format!("{tag}-{i}"))).collect()
}

async fn drain(p: &mut Pipeline) -> Vec<(u64, Vec<Decision>)> {
    let stop = CancellationToken::new();
    let mut out = Vec::new();
    while !p.is_empty() {
        let done = p.next(&stop).await.expect("not stopped");
        out.push((done.end, done.decisions));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn windows_finish_in_order_though_answers_do_not() {
    let up = fake(|keys, _| Ok(vec![Verdict::Acked; keys.len()]));
    let mut p = pipeline(up.clone());
    for (i, tag) in ["a", "b", "c"].iter().enumerate() {
        p.push(window(tag, 3), 10 * (i as u64 + 1));
    }
    let done = drain(&mut p).await;
    assert_eq!(
        done.iter().map(|d| d.0).collect::<Vec<_>>(),
        vec![10, 20, 30]
    );
    assert!(done.iter().all(|d| d.1 == vec![Decision::Delivered; 3]));
    assert_eq!(up.seen.lock().unwrap().len(), 3, "one request per window");
}

#[tokio::test(start_paused = true)]
async fn a_limit_answer_splits_and_is_kept_for_later_windows() {
    let up = fake(|keys, _| {
        if keys.len() > 2 {
            Err(UpstreamError {
                class: Failure::Limit { max: Some(2) },
                message: "entries: over the limit of 2".into(),
            })
        } else {
            Ok(vec![Verdict::Acked; keys.len()])
        }
    });
    let mut p = pipeline(up.clone());
    p.push(window("a", 5), 5);
    let done = drain(&mut p).await;
    assert_eq!(done[0].1, vec![Decision::Delivered; 5]);
    let before = up.seen.lock().unwrap().len();
    p.push(window("b", 4), 9);
    drain(&mut p).await;
    let seen = up.seen.lock().unwrap();
    assert_eq!(seen.len() - before, 2, "sent in twos at once: {seen:?}");
    let sent: Vec<&String> = seen.iter().filter(|k| k.len() <= 2).flatten().collect();
    assert_eq!(sent.len(), 9, "each record delivered once: {seen:?}");
}

#[tokio::test(start_paused = true)]
async fn a_refused_request_is_narrowed_to_the_record() {
    let up = fake(|keys, _| {
        if keys.iter().any(|k| k.ends_with("-3")) {
            Err(UpstreamError {
                class: Failure::Refused("collector answered 400: bad".into()),
                message: "400".into(),
            })
        } else {
            Ok(vec![Verdict::Acked; keys.len()])
        }
    });
    let mut p = pipeline(up);
    p.push(window("a", 8), 8);
    let done = drain(&mut p).await;
    let mut want = vec![Decision::Delivered; 8];
    want[3] = Decision::DeadLetter("collector answered 400: bad".into());
    assert_eq!(done[0].1, want);
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_upstream_is_retried_one_request_at_a_time() {
    let up = fake(|keys, call| {
        if call <= 5 {
            Err(UpstreamError::transient("connection refused"))
        } else {
            Ok(vec![Verdict::Duplicate; keys.len()])
        }
    });
    let mut p = pipeline(up.clone());
    for i in 0..4 {
        p.push(window(&format!("w{i}"), 2), i + 1);
    }
    let done = drain(&mut p).await;
    assert_eq!(done.len(), 4);
    assert!(done.iter().all(|d| d.1 == vec![Decision::Delivered; 2]));
    let seen = up.seen.lock().unwrap();
    // Four at once, all refused; then the first alone, refused again,
    // then alone once more and through; then the other three at once.
    assert_eq!(seen.len(), 4 + 1 + 1 + 3, "{seen:?}");
    assert_eq!(seen[4], seen[5], "the same request probes");
}

#[tokio::test(start_paused = true)]
async fn stopping_leaves_the_window_unfinished() {
    let up = fake(|_, _| Err(UpstreamError::transient("down")));
    let mut p = pipeline(up);
    p.push(window("a", 1), 1);
    let stop = CancellationToken::new();
    stop.cancel();
    assert!(p.next(&stop).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn pass_through_splits_on_a_limit_and_isolates_a_refusal() {
    let up = fake(|keys, _| {
        if keys.len() > 3 {
            Err(UpstreamError {
                class: Failure::Limit { max: Some(3) },
                message: "entries: over the limit of 3".into(),
            })
        } else if keys.iter().any(|k| k.ends_with("-5")) {
            Err(UpstreamError {
                class: Failure::Refused("entry.kind: unknown".into()),
                message: "refused".into(),
            })
        } else {
            Ok(vec![Verdict::Acked; keys.len()])
        }
    });
    let verdicts = deliver_now(up.clone(), window("p", 8).into())
        .await
        .unwrap();
    let mut want = vec![Verdict::Acked; 8];
    want[5] = Verdict::Rejected("entry.kind: unknown".into());
    assert_eq!(verdicts, want);
    let seen = up.seen.lock().unwrap().clone();
    let delivered: Vec<&String> = seen
        .iter()
        .filter(|k| k.len() <= 3 && !k.iter().any(|k| k.ends_with("-5")))
        .flatten()
        .collect();
    assert_eq!(
        delivered.len(),
        7,
        "each good record delivered once: {seen:?}"
    );

    // A failure about the upstream fails the call: the client retries.
    let down = fake(|_, _| Err(UpstreamError::transient("down")));
    assert!(deliver_now(down, window("q", 2).into()).await.is_err());
}
