//! Damage on disk, through the log's public API on real files: a changed
//! byte, a lost newline, inserted bytes, torn and missing segments, copied
//! and overlapping files. Intact records keep their positions and stay
//! readable, damaged ones are named, and no position is ever given twice.

use std::path::Path;

use super::tests::{append, config, names_in, open, rec};
use super::*;

/// What a reader from `after` gets: each intact record's position and line,
/// or the error it stopped with (the reader is past it and goes on).
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Record(u64, String),
    Damaged(u64),
    Missing(u64, u64),
}

fn report(mut r: LogReader) -> Vec<Got> {
    let mut out = Vec::new();
    // Bounded: every call returns records or moves past damage.
    for _ in 0..10_000 {
        match r.read(3, 1 << 20) {
            Ok(lines) if lines.is_empty() => return out,
            Ok(lines) => out.extend(
                lines
                    .into_iter()
                    .map(|l| Got::Record(l.position, String::from_utf8(l.line).unwrap())),
            ),
            Err(ReadError::Damaged { position, file, .. }) => {
                assert!(file.file_name().is_some());
                out.push(Got::Damaged(position));
            }
            Err(ReadError::Missing { from, to, .. }) => out.push(Got::Missing(from, to)),
            Err(e) => panic!("unexpected {e}"),
        }
    }
    panic!("the reader does not end");
}

fn line(key: &str, n: usize) -> String {
    format!("{{\"id\":\"{key}\",\"n\":{n}}}\n")
}

fn records(range: std::ops::RangeInclusive<usize>) -> Vec<Got> {
    range
        .map(|n| Got::Record(n as u64, line(&format!("k{n}"), n)))
        .collect()
}

/// Writes `k1..=kN` in groups of `group`, sealing after each of `seal_after`.
async fn write(dir: &Path, n: usize, group: usize, seal_after: &[usize]) {
    let log = open(&config(dir)).await;
    let mut i = 1;
    while i <= n {
        let upto = (i + group - 1).min(n);
        append(
            &log,
            (i..=upto).map(|k| rec(Some(&format!("k{k}")), k)).collect(),
        )
        .await;
        if seal_after.contains(&upto) {
            log.seal().await.unwrap();
        }
        i = upto + 1;
    }
    log.close().await.unwrap();
}

fn change(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

/// Offset of the line of record `n` in `bytes`.
fn at(bytes: &[u8], n: usize) -> usize {
    let needle = line(&format!("k{n}"), n);
    bytes
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap()
}

fn seg(dir: &Path, first: u64, ext: &str) -> std::path::PathBuf {
    dir.join(format!("entries.{first:020}.{ext}"))
}

#[tokio::test]
async fn damage_in_the_active_file_keeps_the_records_after_it_and_their_positions() {
    for how in ["flip", "newline", "zeros"] {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 6, 2, &[]).await;
        change(&dir.path().join("entries.jsonl"), |b| {
            let i = at(b, 3);
            match how {
                "flip" => b[i + 3] ^= 0x20,
                // One bit: the newline ending record 3 becomes 0x0B.
                "newline" => b[i + line("k3", 3).len() - 1] = 0x0b,
                _ => b[i..i + 5].fill(0),
            }
        });
        let cfg = config(dir.path());
        let log = open(&cfg).await;
        // Nothing intact was cut and no position moved: the next is 7.
        assert_eq!(log.end(), 6, "{how}");
        let mut want = records(1..=2);
        want.push(Got::Damaged(3));
        want.extend(records(4..=6));
        assert_eq!(report(log.reader(0).unwrap()), want, "{how}");
        // Resuming at the damage goes on behind it.
        assert_eq!(report(log.reader(3).unwrap()), records(4..=6), "{how}");
        assert_eq!(
            append(&log, vec![rec(Some("k7"), 7), rec(Some("k4"), 4)]).await,
            [Appended::Written(7), Appended::Duplicate],
            "{how}"
        );
        log.close().await.unwrap();
        // The damaged file was sealed as it is; the new records are beside it.
        let names = names_in(dir.path());
        assert!(
            names.contains(&"entries.00000000000000000001.seal".to_owned()),
            "{how}: {names:?}"
        );
        let log = open(&cfg).await;
        let mut want = records(1..=2);
        want.push(Got::Damaged(3));
        want.extend(records(4..=7));
        assert_eq!(report(log.reader(0).unwrap()), want, "{how}");
        log.close().await.unwrap();
    }
}

#[tokio::test]
async fn damage_in_a_sealed_segment_is_contained_and_never_spins() {
    for how in ["flip", "newline", "insert", "delete", "zero-block"] {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 12, 3, &[9]).await;
        change(&seg(dir.path(), 1, "jsonl"), |b| {
            let i = at(b, 4);
            match how {
                "flip" => b[i + 2] ^= 1,
                "newline" => b[i + line("k4", 4).len() - 1] = 0x0b,
                // Bytes inserted or deleted inside record 4: every record
                // after it moved, and is found where it went.
                "insert" => {
                    b.splice(i + 3..i + 3, *b"xyz");
                }
                "delete" => {
                    b.drain(i + 3..i + 5);
                }
                // A zeroed block over records 4 and 5.
                _ => b[i..i + line("k4", 4).len() + 4].fill(0),
            }
        });
        let log = open(&config(dir.path())).await;
        assert_eq!(log.end(), 12, "{how}");
        let mut want = records(1..=3);
        want.push(Got::Damaged(4));
        if how == "zero-block" {
            want.push(Got::Damaged(5));
            want.extend(records(6..=12));
        } else {
            want.extend(records(5..=12));
        }
        assert_eq!(report(log.reader(0).unwrap()), want, "{how}");
        assert_eq!(report(log.reader(8).unwrap()), records(9..=12), "{how}");
        log.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_torn_last_segment_renumbers_nothing() {
    // Its last record lost its newline only: still whole. Lost more: damaged.
    for cut in [1usize, 5] {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 8, 2, &[4]).await;
        change(&seg(dir.path(), 1, "jsonl"), |b| b.truncate(b.len() - cut));
        let log = open(&config(dir.path())).await;
        let mut want = records(1..=3);
        if cut == 1 {
            want.extend(records(4..=4));
        } else {
            want.push(Got::Damaged(4));
        }
        want.extend(records(5..=8));
        assert_eq!(report(log.reader(0).unwrap()), want, "cut {cut}");
        assert_eq!(
            append(&log, vec![rec(Some("k9"), 9)]).await,
            [Appended::Written(9)]
        );
        log.close().await.unwrap();
    }
    // The same after bytes before it were deleted or inserted: the last
    // record, moved, still ends where the file does (found by the fuzzer).
    for shift in [-4i64, 6] {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 8, 2, &[4]).await;
        change(&seg(dir.path(), 1, "jsonl"), |b| {
            b.truncate(b.len() - 1);
            // In the record just before it: nothing between re-finds the shift.
            let i = at(b, 3) + 3;
            if shift < 0 {
                b.drain(i..i + 4);
            } else {
                b.splice(i..i, std::iter::repeat_n(b'x', 6));
            }
        });
        let log = open(&config(dir.path())).await;
        let mut want = records(1..=2);
        want.push(Got::Damaged(3));
        want.extend(records(4..=8));
        assert_eq!(report(log.reader(0).unwrap()), want, "shift {shift}");
        log.close().await.unwrap();
    }
}

/// Seen from beside the writer (`meterd usage --ledger`): a snapshot lists
/// again a listing with a gap (a seal may be under way), but a gap that
/// stays is a missing segment, reported for its positions like the log does.
#[tokio::test]
async fn a_snapshot_reports_a_missing_segment_for_its_positions() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 9, 3, &[3, 6]).await;
    for ext in ["jsonl", "times", "keys", "seal"] {
        std::fs::remove_file(seg(dir.path(), 4, ext)).unwrap();
    }
    let snap = Snapshot::open(dir.path(), "entries").unwrap();
    let mut want = records(1..=3);
    want.push(Got::Missing(4, 6));
    want.extend(records(7..=9));
    assert_eq!(report(snap.reader(0).unwrap()), want);
}

#[tokio::test]
async fn a_missing_segment_is_reported_for_its_positions() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 9, 3, &[3, 6]).await;
    for ext in ["jsonl", "times", "keys", "seal"] {
        std::fs::remove_file(seg(dir.path(), 4, ext)).unwrap();
    }
    let log = open(&config(dir.path())).await;
    let mut want = records(1..=3);
    want.push(Got::Missing(4, 6));
    want.extend(records(7..=9));
    assert_eq!(report(log.reader(0).unwrap()), want);
    assert_eq!(report(log.reader(5).unwrap()), {
        let mut w = vec![Got::Missing(6, 6)];
        w.extend(records(7..=9));
        w
    });
    log.close().await.unwrap();

    // The newest segment gone with every file but its seal: the active
    // file keeps its positions, and the gap is reported.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 9, 3, &[3, 6]).await;
    for ext in ["jsonl", "times", "keys"] {
        std::fs::remove_file(seg(dir.path(), 4, ext)).unwrap();
    }
    let log = open(&config(dir.path())).await;
    assert_eq!(log.end(), 9);
    let got = report(log.reader(0).unwrap());
    assert_eq!(got[3], Got::Missing(4, 6));
    assert_eq!(
        append(&log, vec![rec(Some("k10"), 10)]).await,
        [Appended::Written(10)]
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn copied_renamed_and_overlapping_segments_are_refused_by_name() {
    let cfg_open = |dir: &Path| {
        let cfg = config(dir);
        match Log::<super::tests::Rec>::open(cfg) {
            Ok(_) => panic!("opened"),
            Err(e) => e.to_string(),
        }
    };
    // A segment copied under a later name, with its files.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 9, 3, &[3, 6]).await;
    for ext in ["jsonl", "times"] {
        std::fs::copy(seg(dir.path(), 1, ext), seg(dir.path(), 20, ext)).unwrap();
    }
    let e = cfg_open(dir.path());
    assert!(
        e.contains("entries.00000000000000000020") && e.contains("copied or renamed"),
        "{e}"
    );
    // Only its data: its positions cannot be known.
    std::fs::remove_file(seg(dir.path(), 20, "times")).unwrap();
    let e = cfg_open(dir.path());
    assert!(e.contains("entries.00000000000000000020.jsonl"), "{e}");
    // Under a name inside another segment's positions, seal and all.
    std::fs::remove_file(seg(dir.path(), 20, "jsonl")).unwrap();
    for ext in ["jsonl", "times", "seal"] {
        let from = seg(dir.path(), 4, ext);
        let bytes = std::fs::read(&from).unwrap();
        std::fs::write(seg(dir.path(), 2, ext), bytes).unwrap();
    }
    let e = cfg_open(dir.path());
    assert!(e.contains("entries.00000000000000000002"), "{e}");
}

#[tokio::test]
async fn seals_chain_and_outlive_their_segments() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 9, 3, &[3, 6, 9]).await;
    let read = |first: u64| {
        let bytes = std::fs::read(seg(dir.path(), first, "seal")).unwrap();
        (chain::Seal::parse(&bytes).unwrap(), chain::link(&bytes))
    };
    let (s1, l1) = read(1);
    let (s4, l4) = read(4);
    let (s7, l7) = read(7);
    assert_eq!((s1.first, s1.last, s1.count), (1, 3, 3));
    assert_eq!(s1.prev_seal_sha256, None);
    assert_eq!(s4.prev_seal_sha256, Some(chain::hex(&l1)));
    assert_eq!(s7.prev_seal_sha256, Some(chain::hex(&l4)));
    let data = std::fs::read(seg(dir.path(), 4, "jsonl")).unwrap();
    use sha2::Digest as _;
    assert_eq!(s4.sha256, chain::hex(&sha2::Sha256::digest(&data)));
    assert_eq!(s4.bytes, data.len() as u64);
    let log = open(&config(dir.path())).await;
    assert_eq!(log.head().map(|h| (h.last, h.hash)), Some((9, l7)));
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_damaged_record_file_keeps_the_records_it_describes() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 9, 3, &[9]).await;
    // A flipped bit in the second group of the sealed segment's record file.
    change(&seg(dir.path(), 1, "times"), |b| {
        b[times::HEADER + times::COMMIT + 3 * times::CHECK + 5] ^= 1;
    });
    std::fs::remove_file(seg(dir.path(), 1, "keys")).unwrap();
    let log = open(&config(dir.path())).await;
    assert_eq!(report(log.reader(0).unwrap()), records(1..=9));
    assert_eq!(
        append(&log, vec![rec(Some("k5"), 5)]).await,
        [Appended::Duplicate]
    );
    log.close().await.unwrap();
}

/// The active file's last record lost its final newline and bytes before it
/// were inserted or deleted: it is still whole, and nothing of it is cut as
/// an unacknowledged tail; a shortened file is damage here, not a crash
/// (found by the fuzzer).
#[tokio::test]
async fn the_active_files_last_record_moved_and_without_its_newline_is_kept() {
    for shift in [2i64, -4] {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 8, 2, &[4]).await;
        change(&dir.path().join("entries.jsonl"), |b| {
            b.truncate(b.len() - 1);
            let i = at(b, 7) + 3;
            if shift < 0 {
                b.drain(i..i + 4);
            } else {
                b.splice(i..i, std::iter::repeat_n(b'x', 2));
            }
        });
        let log = open(&config(dir.path())).await;
        let mut want = records(1..=6);
        want.push(Got::Damaged(7));
        want.extend(records(8..=8));
        assert_eq!(report(log.reader(0).unwrap()), want, "shift {shift}");
        log.close().await.unwrap();
    }
}
