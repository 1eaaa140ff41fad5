//! The log through its public API, on real files: positions, dedupe across
//! seals and restarts, rebuilt indexes, legacy files, damaged tails,
//! interrupted seals, retention and readers.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;

pub(super) struct Rec {
    key: Option<String>,
    line: Vec<u8>,
}

impl LogRecord for Rec {
    fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
    fn line(&self) -> &[u8] {
        &self.line
    }
}

pub(super) fn rec(key: Option<&str>, n: usize) -> Rec {
    let line = match key {
        Some(k) => format!("{{\"id\":\"{k}\",\"n\":{n}}}\n"),
        None => format!("{{\"n\":{n}}}\n"),
    };
    Rec {
        key: key.map(Into::into),
        line: line.into_bytes(),
    }
}

pub(super) fn key_of(line: &[u8]) -> Result<Option<Cow<'_, str>>, Unreadable> {
    #[derive(serde::Deserialize)]
    struct L<'a> {
        #[serde(borrow, default)]
        id: Option<Cow<'a, str>>,
        #[allow(dead_code)]
        n: u64,
    }
    let l: L = serde_json::from_slice(line).map_err(|_| Unreadable)?;
    Ok(l.id)
}

pub(super) fn config(dir: &Path) -> LogConfig {
    LogConfig {
        dir: dir.to_path_buf(),
        stream: "entries",
        fsync: Fsync::Always,
        fsync_interval: Duration::from_secs(1),
        dedupe_window: Duration::from_secs(3600),
        segment_max_bytes: 1 << 30,
        segment_max_age: Duration::from_secs(86400),
        retention: None,
        retention_bytes: None,
        key_of,
        trusted_key_of: None,
        keep_seals: true,
        disk: Default::default(),
    }
}

pub(super) async fn append(log: &Log<Rec>, recs: Vec<Rec>) -> Vec<Appended> {
    try_append(log, recs).await.unwrap()
}

pub(super) async fn try_append(log: &Log<Rec>, recs: Vec<Rec>) -> Result<Vec<Appended>, LogError> {
    let (reply, done) = tokio::sync::oneshot::channel();
    let select = (0..recs.len()).collect();
    log.append(Append {
        records: Arc::from(recs),
        select,
        reply,
    })?;
    done.await.unwrap()
}

pub(super) async fn open(cfg: &LogConfig) -> Log<Rec> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || Log::open(cfg))
        .await
        .unwrap()
        .unwrap()
}

pub(super) fn read_all(log: &Log<Rec>, after: u64) -> Vec<LogLine> {
    let mut r = log.reader(after).unwrap();
    let mut out = Vec::new();
    loop {
        let got = r.read(7, 1 << 20).unwrap();
        if got.is_empty() {
            return out;
        }
        out.extend(got);
    }
}

pub(super) fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn positions_count_from_one_and_survive_seals_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let log = open(&cfg).await;
    assert_eq!((log.first(), log.end()), (1, 0));
    let out = append(
        &log,
        vec![rec(Some("a"), 1), rec(None, 2), rec(Some("b"), 3)],
    )
    .await;
    assert_eq!(
        out,
        [
            Appended::Written(1),
            Appended::Written(2),
            Appended::Written(3)
        ]
    );
    log.seal().await.unwrap();
    let out = append(&log, vec![rec(Some("c"), 4), rec(Some("a"), 5)]).await;
    assert_eq!(out, [Appended::Written(4), Appended::Duplicate]);
    log.close().await.unwrap();
    assert_eq!(
        names_in(dir.path()),
        [
            "entries.00000000000000000001.jsonl",
            "entries.00000000000000000001.keys",
            "entries.00000000000000000001.seal",
            "entries.00000000000000000001.times",
            "entries.jsonl",
            "entries.keys",
            "entries.times"
        ]
    );
    let sealed =
        std::fs::read_to_string(dir.path().join("entries.00000000000000000001.jsonl")).unwrap();
    assert_eq!(
        sealed,
        "{\"id\":\"a\",\"n\":1}\n{\"n\":2}\n{\"id\":\"b\",\"n\":3}\n"
    );

    let log = open(&cfg).await;
    assert_eq!(log.end(), 4);
    let out = append(
        &log,
        vec![rec(Some("b"), 6), rec(Some("c"), 7), rec(Some("d"), 8)],
    )
    .await;
    assert_eq!(
        out,
        [
            Appended::Duplicate,
            Appended::Duplicate,
            Appended::Written(5)
        ]
    );
    let lines = read_all(&log, 0);
    let positions: Vec<u64> = lines.iter().map(|l| l.position).collect();
    assert_eq!(positions, [1, 2, 3, 4, 5]);
    assert!(lines.windows(2).all(|w| w[0].received <= w[1].received));
    assert_eq!(lines[4].line, b"{\"id\":\"d\",\"n\":8}\n");
    // Resuming after any position gives the rest, with no gap or repeat.
    for after in 0..=5 {
        let rest: Vec<u64> = read_all(&log, after).iter().map(|l| l.position).collect();
        assert_eq!(rest, ((after + 1)..=5).collect::<Vec<_>>());
    }
    assert_eq!(
        log.reader(6).err(),
        Some(SeekError::Beyond { after: 6, end: 5 })
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn the_window_is_measured_on_receive_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.dedupe_window = Duration::from_millis(300);
    let log = open(&cfg).await;
    append(&log, vec![rec(Some("a"), 1)]).await;
    log.seal().await.unwrap();
    append(&log, vec![rec(Some("b"), 2)]).await;
    assert_eq!(
        append(&log, vec![rec(Some("a"), 3)]).await,
        [Appended::Duplicate]
    );
    // Wait on the clock, not on meterd: the window is wall time.
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(
        append(&log, vec![rec(Some("a"), 4), rec(Some("b"), 5)]).await,
        [Appended::Written(3), Appended::Written(4)]
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_missing_or_damaged_key_index_is_rebuilt_from_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let log = open(&cfg).await;
    let recs: Vec<Rec> = (0..500).map(|i| rec(Some(&format!("k{i}")), i)).collect();
    append(&log, recs).await;
    log.seal().await.unwrap();
    log.close().await.unwrap();
    let keys = dir.path().join("entries.00000000000000000001.keys");

    std::fs::remove_file(&keys).unwrap();
    let log = open(&cfg).await;
    assert!(keys.exists(), "rebuilt at open");
    assert_eq!(
        append(&log, vec![rec(Some("k7"), 0)]).await,
        [Appended::Duplicate]
    );
    log.close().await.unwrap();

    // Damage in the key table is found by the lookup that reads it.
    let mut bytes = std::fs::read(&keys).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0xff;
    std::fs::write(&keys, &bytes).unwrap();
    let log = open(&cfg).await;
    let all: Vec<Rec> = (0..500).map(|i| rec(Some(&format!("k{i}")), i)).collect();
    let out = append(&log, all).await;
    assert!(out.iter().all(|o| *o == Appended::Duplicate), "{out:?}");
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_hash_match_is_confirmed_against_the_stored_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let log = open(&cfg).await;
    append(&log, vec![rec(Some("a"), 1)]).await;
    log.seal().await.unwrap();
    log.close().await.unwrap();
    // Forge an index in which "b" has the hash of the record holding "a",
    // as a collision would.
    let names = names::Names::new(dir.path(), "entries");
    let data = std::fs::File::open(names.sealed(1, names::DATA)).unwrap();
    let t = times::read(&names.sealed(1, names::TIMES))
        .unwrap()
        .unwrap();
    let len = data.metadata().unwrap().len();
    segment::write_keys(
        &names,
        &data,
        1,
        1,
        len,
        &t.commits,
        &[(keys::hash("b"), 0)],
    )
    .unwrap();
    let log = open(&cfg).await;
    assert_eq!(
        append(&log, vec![rec(Some("b"), 2)]).await,
        [Appended::Written(2)]
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_ledger_of_one_file_is_sealed_once_and_keeps_deduping() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = "{\"id\":\"old-1\",\"n\":1}\nnot a record\n{\"n\":2}\n{\"id\":\"old-2\",\"n\":3}\n{\"id\":\"torn";
    std::fs::write(dir.path().join("entries.jsonl"), legacy).unwrap();
    let cfg = config(dir.path());
    let log = open(&cfg).await;
    assert_eq!(log.segments().len(), 1);
    assert_eq!(
        log.segments()[0].count,
        4,
        "a foreign line in the middle is kept"
    );
    assert_eq!(
        append(&log, vec![rec(Some("old-2"), 4), rec(Some("new"), 5)]).await,
        [Appended::Duplicate, Appended::Written(5)]
    );
    log.close().await.unwrap();
    let sealed =
        std::fs::read_to_string(dir.path().join("entries.00000000000000000001.jsonl")).unwrap();
    assert_eq!(sealed, &legacy[..legacy.len() - "{\"id\":\"torn".len()]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("entries.damaged")).unwrap(),
        "{\"id\":\"torn"
    );
    // The next start reads the index, not the file.
    let log = open(&cfg).await;
    assert_eq!(
        append(&log, vec![rec(Some("old-1"), 6)]).await,
        [Appended::Duplicate]
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn recovery_cuts_garbage_even_when_a_newline_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let log = open(&cfg).await;
    append(&log, vec![rec(Some("a"), 1), rec(Some("b"), 2)]).await;
    log.close().await.unwrap();
    // A power loss with delayed allocation: zeros, then a newline, then more.
    let path = dir.path().join("entries.jsonl");
    let mut bytes = std::fs::read(&path).unwrap();
    let good = bytes.len();
    bytes.extend_from_slice(&[0u8; 300]);
    bytes.extend_from_slice(b"\n{\"id\":\"c\",\"n\":3}\n");
    std::fs::write(&path, &bytes).unwrap();
    let log = open(&cfg).await;
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good as u64);
    assert_eq!(log.end(), 2);
    assert_eq!(
        append(&log, vec![rec(Some("c"), 3)]).await,
        [Appended::Written(3)]
    );
    let lines = read_all(&log, 0);
    assert_eq!(lines.len(), 3);
    log.close().await.unwrap();
}

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
