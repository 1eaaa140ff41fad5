//! The log through its public API, on real files: positions, dedupe across
//! seals and restarts, rebuilt indexes, legacy files, damaged tails,
//! interrupted seals, retention and readers.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;

pub(super) struct Rec {
    pub(super) key: Option<String>,
    pub(super) line: Vec<u8>,
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
