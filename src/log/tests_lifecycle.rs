//! The lives of segments, through the log's public API on real files: a
//! seal interrupted at any step, retention and release deleting segments,
//! lines of any length, the key snapshot of a clean shutdown, readers
//! sharing a sealed segment's record index, snapshots taken while segments
//! are sealed.

use std::time::Duration;

use super::tests::{append, config, open, read_all, rec, Rec};
use super::*;

/// The files as a seal leaves them after each of its steps, as a crash
/// would: every one opens with every record exactly once.
#[tokio::test]
async fn a_seal_interrupted_at_any_step_is_finished_or_undone() {
    for step in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let log = open(&cfg).await;
        append(&log, vec![rec(Some("a"), 1), rec(Some("b"), 2)]).await;
        log.close().await.unwrap();
        let n = names::Names::new(dir.path(), "entries");
        let data = std::fs::File::open(n.active_data()).unwrap();
        let len = data.metadata().unwrap().len();
        let t = times::read(&n.active_times()).unwrap().unwrap();
        let keyed = [(keys::hash("a"), 0), (keys::hash("b"), len / 2)];
        if step >= 1 {
            segment::write_keys(&n, &data, 1, 2, len, &t.commits, &keyed).unwrap();
        }
        if step >= 2 {
            let sha = chain::sha256_of(&data, len).unwrap();
            chain::write_seal(&n, 1, 2, len, sha, None, 1).unwrap();
        }
        if step >= 3 {
            std::fs::rename(n.active_times(), n.sealed(1, names::TIMES)).unwrap();
        }
        if step >= 4 {
            std::fs::rename(n.active_data(), n.sealed(1, names::DATA)).unwrap();
        }
        let log = open(&cfg).await;
        assert_eq!(
            append(&log, vec![rec(Some("a"), 3), rec(Some("c"), 4)]).await,
            [Appended::Duplicate, Appended::Written(3)],
            "step {step}"
        );
        let positions: Vec<u64> = read_all(&log, 0).iter().map(|l| l.position).collect();
        assert_eq!(positions, [1, 2, 3], "step {step}");
        log.close().await.unwrap();
    }
}

#[tokio::test]
async fn retention_deletes_only_old_sealed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.retention = Some(Duration::from_secs(60));
    assert!(cfg.check().unwrap_err().contains("--dedupe-window"));
    cfg.dedupe_window = Duration::from_millis(200);
    cfg.retention = None;
    cfg.retention_bytes = Some(1);
    let log = open(&cfg).await;
    append(&log, vec![rec(Some("a"), 1)]).await;
    log.seal().await.unwrap();
    append(&log, vec![rec(Some("b"), 2)]).await;
    // Over the size, but inside the window: kept.
    log.seal().await.unwrap();
    assert_eq!(log.segments().len(), 2);
    std::thread::sleep(Duration::from_millis(250));
    // The writer's next tick deletes them (both are sealed and old).
    let mut end = log.subscribe();
    append(&log, vec![rec(Some("c"), 3)]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !log.segments().is_empty() {
        assert!(std::time::Instant::now() < deadline, "retention never ran");
        let _ = tokio::time::timeout(Duration::from_millis(100), end.changed()).await;
    }
    assert_eq!(log.first(), 3, "the active file is never deleted");
    assert_eq!(log.reader(1).err(), Some(SeekError::Pruned { first: 3 }));
    assert_eq!(read_all(&log, 0).len(), 1);
    log.close().await.unwrap();
}

#[tokio::test]
async fn release_deletes_delivered_segments_and_positions_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_max_bytes = 40; // two records a segment
    let log = open(&cfg).await;
    for i in 0..10 {
        append(&log, vec![rec(Some(&format!("k{i}")), i)]).await;
    }
    let sealed = log.segments();
    assert!(sealed.len() >= 3, "{sealed:?}");
    let mut r = log.reader(0).unwrap();
    let window = r.read(5, 1 << 20).unwrap();
    assert_eq!(window.len(), 5);
    log.release(5).await.unwrap();
    assert!(log.first() > 1 && log.first() <= 6, "{}", log.first());
    let rest: Vec<u64> = r
        .read(100, 1 << 20)
        .unwrap()
        .iter()
        .map(|l| l.position)
        .collect();
    assert_eq!(rest, (6..=10).collect::<Vec<_>>());
    log.release(10).await.unwrap();
    log.close().await.unwrap();
    // Every segment delivered is gone, positions carry on after a restart.
    let log = open(&cfg).await;
    assert!(log.first() > 6);
    assert_eq!(
        append(&log, vec![rec(Some("new"), 11)]).await,
        [Appended::Written(11)]
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_line_of_any_length_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let log = open(&cfg).await;
    let big = format!(
        "{{\"id\":\"big\",\"n\":1,\"pad\":\"{}\"}}\n",
        "x".repeat(3 << 20)
    );
    let out = append(
        &log,
        vec![
            Rec {
                key: Some("big".into()),
                line: big.clone().into_bytes(),
            },
            rec(Some("small"), 2),
        ],
    )
    .await;
    assert_eq!(out, [Appended::Written(1), Appended::Written(2)]);
    let mut r = log.reader(0).unwrap();
    let first = r.read(10, 1024).unwrap();
    assert_eq!(
        first.len(),
        1,
        "a byte limit still returns one whole record"
    );
    assert_eq!(first[0].line, big.as_bytes());
    assert_eq!(r.read(10, 1024).unwrap()[0].position, 2);
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_clean_shutdown_leaves_a_key_snapshot_that_the_next_start_uses_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let log = open(&cfg).await;
    append(
        &log,
        vec![rec(Some("a"), 1), rec(None, 2), rec(Some("b"), 3)],
    )
    .await;
    log.close().await.unwrap();
    let snapshot = dir.path().join("entries.keys");
    assert!(snapshot.exists());
    let log = open(&cfg).await;
    assert!(!snapshot.exists(), "used once, then removed");
    assert_eq!(
        append(&log, vec![rec(Some("a"), 4), rec(Some("c"), 5)]).await,
        [Appended::Duplicate, Appended::Written(4)]
    );
    log.close().await.unwrap();

    // A snapshot that does not describe the file (here: the file grew
    // behind it) is ignored; the file is read instead.
    let stale = std::fs::read(&snapshot).unwrap();
    let log = open(&cfg).await;
    append(&log, vec![rec(Some("d"), 6)]).await;
    log.close().await.unwrap();
    std::fs::write(&snapshot, stale).unwrap();
    let log = open(&cfg).await;
    assert_eq!(
        append(&log, vec![rec(Some("d"), 7), rec(Some("c"), 8)]).await,
        [Appended::Duplicate, Appended::Duplicate]
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn readers_of_one_sealed_segment_share_its_commits_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&config(dir.path())).await;
    for i in 0..50 {
        append(&log, vec![rec(None, i)]).await; // a group per record
    }
    log.seal().await.unwrap();
    append(&log, vec![rec(None, 50)]).await;
    let mut readers: Vec<_> = (0..3).map(|_| log.reader(0).unwrap()).collect();
    for r in &mut readers {
        assert_eq!(r.read(1, 1 << 20).unwrap()[0].position, 1);
    }
    {
        let spans = log.shared.sealed_spans.lock().unwrap();
        assert_eq!(spans.len(), 1, "one copy for the segment");
        let held = spans.values().next().expect("the segment's span");
        assert_eq!(held.commits.strong_count(), 3, "held by the three readers");
    }
    drop(readers);
    {
        // The last reader gone, nothing is kept.
        let spans = log.shared.sealed_spans.lock().unwrap();
        assert!(spans.values().all(|s| s.commits.strong_count() == 0));
    }
    log.close().await.unwrap();
}

/// `meterd usage --ledger` beside a running meterd: a snapshot taken while
/// segments are sealed sees every durable record exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_see_every_durable_record_once_while_segments_are_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // A seal after every group or two.
    cfg.segment_max_bytes = 40;
    let log = open(&cfg).await;
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let (dir, acked, stop) = (dir.path().to_path_buf(), acked.clone(), stop.clone());
        let taken = taken.clone();
        std::thread::spawn(move || {
            let mut snapshots = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let before = acked.load(std::sync::atomic::Ordering::SeqCst);
                let snap = Snapshot::open(&dir, "entries").unwrap();
                assert!(snap.end() >= before, "{} < {before}", snap.end());
                let mut r = snap.reader(0).unwrap();
                let mut next = 1;
                loop {
                    let got = r.read(1000, 1 << 20).unwrap();
                    if got.is_empty() {
                        break;
                    }
                    for l in got {
                        assert_eq!(l.position, next, "snapshot {snapshots}");
                        let want = format!("{{\"id\":\"k{next}\",\"n\":{next}}}\n");
                        assert_eq!(l.line, want.as_bytes());
                        next += 1;
                    }
                }
                assert_eq!(next - 1, snap.end(), "snapshot {snapshots} read to its end");
                snapshots += 1;
                taken.store(snapshots, std::sync::atomic::Ordering::SeqCst);
            }
            snapshots
        })
    };
    // Writes (and seals) go on until the reader has taken enough
    // snapshots, however busy the machine is.
    let mut k = 0usize;
    while k < 1500 || taken.load(std::sync::atomic::Ordering::SeqCst) <= 10 {
        k += 1;
        assert!(k < 50_000, "the reader took too few snapshots");
        append(&log, vec![rec(Some(&format!("k{k}")), k)]).await;
        acked.store(k as u64, std::sync::atomic::Ordering::SeqCst);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let snapshots = reader.join().unwrap();
    assert!(snapshots > 10, "{snapshots} snapshots");
    assert!(log.segments().len() > 100);
    log.close().await.unwrap();
}
