//! What a crash can leave, and what a failing disk does. A workload runs on
//! a disk that records every change the log makes (`crash_model`); from
//! every prefix of those changes the test builds the states a crash could
//! leave (the process killed: everything written is there; power lost: only
//! what was synced, names only where the directory was synced; the last
//! write torn; names durable but data not, and the other way round), opens
//! each, and checks: every acknowledged record is there, at its position,
//! nothing else is, and appending the workload again doubles nothing. A
//! disk that fails one change with ENOSPC or EIO shows that a failed write
//! or sync is never acknowledged and that the log is reopened and checked
//! before it acknowledges anything more.

use std::collections::BTreeMap;

use super::crash_model::{materialize, replay, scratch, Crash, Op, Recorder, CRASHES};
use super::disk::DiskRef;
use super::tests::{config, open, rec, try_append, Rec};
use super::*;

/// The workload's records: `k1..=kN`, each its line.
fn workload_rec(n: usize) -> Rec {
    rec(Some(&format!("k{n}")), n)
}

fn want_line(n: usize) -> Vec<u8> {
    format!("{{\"id\":\"k{n}\",\"n\":{n}}}\n").into_bytes()
}

/// Every record from the start; panics on damage (a crash is not damage).
fn read_positions(log: &Log<Rec>, what: &str) -> Vec<(u64, Vec<u8>)> {
    let mut r = log.reader(0).unwrap();
    let mut out = Vec::new();
    loop {
        match r.read(100, 1 << 20) {
            Ok(got) if got.is_empty() => return out,
            Ok(got) => out.extend(got.into_iter().map(|l| (l.position, l.line))),
            Err(e) => panic!("{what}: a crash state read as damaged: {e}"),
        }
    }
}

/// The records of a recovered log: `k1..=kN` at positions 1..=N, nothing
/// else; returns N.
fn check_contiguous(got: &[(u64, Vec<u8>)], what: &str) -> usize {
    for (i, (position, line)) in got.iter().enumerate() {
        assert_eq!(*position, i as u64 + 1, "{what}: positions contiguous");
        assert_eq!(
            line,
            &want_line(i + 1),
            "{what}: position {position} holds its own record, whole"
        );
    }
    got.len()
}

/// Groups of the workload: record numbers appended together, and whether
/// the log is sealed after the group.
const GROUPS: [(&[usize], bool); 6] = [
    (&[1], false),
    (&[2, 3], false),
    (&[4], true),
    (&[5, 6], false),
    (&[7], true),
    (&[8], false),
];
const TOTAL: usize = 8;

/// Runs the workload on a recording disk; returns the changes and, per
/// record, how many changes had been made when its append was answered.
async fn record_workload(fsync: Fsync) -> (Vec<Op>, Vec<usize>) {
    let dir = scratch();
    let disk = Recorder::new(None);
    let mut cfg = config(dir.path());
    cfg.fsync = fsync;
    cfg.disk = DiskRef(disk.clone());
    let log = open(&cfg).await;
    let mut acked_at = vec![0; TOTAL + 1];
    for (records, seal) in GROUPS {
        let recs = records.iter().map(|&n| workload_rec(n)).collect();
        let got = try_append(&log, recs).await.unwrap();
        assert!(
            got.iter().all(|a| matches!(a, Appended::Written(_))),
            "{got:?}"
        );
        let at = disk.count();
        for &n in records {
            acked_at[n] = at;
        }
        if seal {
            log.seal().await.unwrap();
        }
    }
    // A clean shutdown writes the key snapshot: its writes are crashed in too.
    log.close().await.unwrap();
    (disk.ops(), acked_at)
}

/// Opens a crash state and checks it; returns how many records it kept.
async fn check_state(state: &BTreeMap<String, Vec<u8>>, acked: usize, what: &str) -> usize {
    let dir = materialize(state);
    let cfg = config(dir.path());
    let log = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || Log::<Rec>::open(cfg))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{what}: a crash state must open: {e}"))
    };
    let got = read_positions(&log, what);
    let kept = check_contiguous(&got, what);
    assert!(
        kept >= acked,
        "{what}: {acked} records were acknowledged, {kept} recovered"
    );
    // The workload again, as a client retrying everything would send it:
    // what was kept is a duplicate, the rest goes on at the next position.
    for n in 1..=TOTAL {
        let got = try_append(&log, vec![workload_rec(n)]).await.unwrap();
        if n <= kept {
            assert_eq!(
                got,
                [Appended::Duplicate],
                "{what}: k{n} kept, so a duplicate"
            );
        } else {
            assert_eq!(
                got,
                [Appended::Written(n as u64)],
                "{what}: k{n} at its position"
            );
        }
    }
    log.close().await.unwrap();
    // And again after a restart: the same records, at the same positions.
    let log = open(&cfg).await;
    let got = read_positions(&log, what);
    assert_eq!(
        check_contiguous(&got, what),
        TOTAL,
        "{what}: after a restart"
    );
    log.close().await.unwrap();
    kept
}

async fn every_crash_state(fsync: Fsync) {
    let (ops, acked_at) = record_workload(fsync).await;
    assert!(ops.len() > 40, "{} changes", ops.len());
    assert!(ops.iter().any(|o| matches!(o, Op::Rename { .. })));
    let mut kept_somewhere = [false; TOTAL + 1];
    for k in (0..=ops.len()).rev() {
        // Acknowledged with every change it needed within the prefix; with
        // syncs on every group that holds through a power loss too.
        let acked = (1..=TOTAL).filter(|&n| acked_at[n] <= k).count();
        if std::env::var("CRASH_DEBUG").is_ok() && k == ops.len() {
            for (i, o) in ops.iter().enumerate() {
                let o = match o {
                    Op::Write { file, bytes } => format!(
                        "Write {file} {:?}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
                    ),
                    o => format!("{o:?}"),
                };
                eprintln!("{} {o}", i + 1);
            }
            eprintln!("{acked_at:?}");
        }
        for crash in CRASHES {
            // A torn write is one in flight: nothing waited for it.
            let acked = match crash {
                Crash::TornWrite => (1..=TOTAL).filter(|&n| acked_at[n] < k).count(),
                _ => acked,
            };
            let what = format!("{fsync:?}, {crash:?} after {k} of {} changes", ops.len());
            let acked = match (fsync, crash) {
                (Fsync::Always, _) | (_, Crash::Process | Crash::TornWrite) => acked,
                // Acknowledged before the sync: a power loss may lose it.
                _ => 0,
            };
            let state = replay(&ops[..k], crash);
            let kept = check_state(&state, acked, &what).await;
            kept_somewhere[kept] = true;
        }
    }
    // The states are not all the same: some keep nothing, one keeps all.
    assert!(kept_somewhere[0] && kept_somewhere[TOTAL]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_crash_state_keeps_what_was_acknowledged_synced() {
    every_crash_state(Fsync::Always).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_crash_state_is_consistent_unsynced() {
    every_crash_state(Fsync::Never).await;
}

/// Runs the workload with change `fail_at` failed with `errno`, a client
/// retrying each failed call; returns the changes made.
async fn workload_failing(fail_at: usize, errno: i32) -> (Vec<Op>, bool) {
    let dir = scratch();
    let disk = Recorder::new(Some((fail_at, errno)));
    let mut cfg = config(dir.path());
    cfg.disk = DiskRef(disk.clone());
    let what = format!("change {fail_at} failed with errno {errno}");
    let opened = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || Log::<Rec>::open(cfg))
            .await
            .unwrap()
    };
    let log = match opened {
        Ok(log) => log,
        Err(e) => {
            let want = io::Error::from_raw_os_error(errno).to_string();
            assert!(e.to_string().contains(&want), "{what}: {e}");
            open(&cfg).await
        }
    };
    for (records, seal) in GROUPS {
        let mut tries = 0;
        loop {
            tries += 1;
            let recs = records.iter().map(|&n| workload_rec(n)).collect();
            match try_append(&log, recs).await {
                Ok(got) => {
                    // Never a duplicate: a failed append counts as not written.
                    let want: Vec<Appended> = records
                        .iter()
                        .map(|&n| Appended::Written(n as u64))
                        .collect();
                    assert_eq!(got, want, "{what}");
                    break;
                }
                Err(e) => {
                    assert!(
                        tries < 3,
                        "{what}: the disk failed once, the log keeps failing: {e}"
                    );
                    assert!(
                        !*log.health().borrow(),
                        "{what}: a failed write leaves the log unhealthy"
                    );
                }
            }
        }
        if seal && log.seal().await.is_err() {
            // A failed seal leaves the records where they are; the next
            // append reopens the log.
            assert!(!*log.health().borrow(), "{what}");
        }
    }
    let _ = log.close().await;
    // Everything there once, at its position, whatever failed.
    let reopened = open(&config(dir.path())).await;
    let got = read_positions(&reopened, &what);
    assert_eq!(check_contiguous(&got, &what), TOTAL, "{what}");
    reopened.close().await.unwrap();
    let failed = disk.state.lock().unwrap().failed;
    (disk.ops(), failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_or_sync_is_never_acknowledged_nor_doubled() {
    let (ops, _) = record_workload(Fsync::Always).await;
    let mut synced_then_reopened = 0;
    for errno in [libc::ENOSPC, libc::EIO] {
        for fail_at in 1..=ops.len() + 10 {
            let (ops, failed) = workload_failing(fail_at, errno).await;
            if fail_at <= 40 {
                assert!(failed, "change {fail_at} was reached");
            }
            // After a failed sync nothing is written to the log before it
            // is opened again (and its active file checked, as at a start).
            let Some(at) = ops
                .iter()
                .position(|o| matches!(o, Op::Failed { what: "sync", .. }))
            else {
                continue;
            };
            let next_record = ops[at..]
                .iter()
                .position(|o| matches!(o, Op::Write { bytes, .. } if bytes.first() == Some(&b'{')));
            let reopened = ops[at..]
                .iter()
                .position(|o| matches!(o, Op::Create { name, .. } if name == "entries.jsonl"));
            if let Some(w) = next_record {
                assert!(
                    reopened.is_some_and(|r| r < w),
                    "change {fail_at} (a sync) failed: the log went on writing without reopening"
                );
                synced_then_reopened += 1;
            }
        }
    }
    assert!(synced_then_reopened > 4, "{synced_then_reopened}");
}

/// `fsync interval`: a sync that fails with acknowledged records not yet
/// synced. The kernel may have marked them clean unwritten; the log writes
/// them again, so that a power loss after its next sync keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_acknowledged_before_a_failed_sync_are_written_again() {
    let dir = scratch();
    let disk = Recorder::new(None);
    let mut cfg = config(dir.path());
    cfg.fsync = Fsync::Interval;
    cfg.fsync_interval = std::time::Duration::from_millis(20);
    cfg.disk = DiskRef(disk.clone());
    let log = open(&cfg).await;
    let mut health = log.health();
    assert_eq!(
        try_append(&log, vec![workload_rec(1)]).await.unwrap(),
        [Appended::Written(1)]
    );
    // Synced by the interval: the failure below concerns only the next.
    let synced = |disk: &Recorder| {
        disk.ops()
            .iter()
            .filter(|o| matches!(o, Op::Sync { .. }))
            .count()
    };
    let before = synced(&disk);
    while synced(&disk) < before + 2 {
        tokio::task::yield_now().await;
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    disk.state.lock().unwrap().fail_next_sync = Some(libc::EIO);
    let got = try_append(&log, vec![workload_rec(2), workload_rec(3)])
        .await
        .unwrap();
    assert_eq!(got, [Appended::Written(2), Appended::Written(3)]);
    health.wait_for(|h| !*h).await.unwrap();
    health.wait_for(|h| *h).await.unwrap();
    assert_eq!(
        try_append(&log, vec![workload_rec(4)]).await.unwrap(),
        [Appended::Written(4)]
    );
    log.close().await.unwrap();
    // A power loss now: everything acknowledged is on the disk.
    let state = replay(&disk.ops(), Crash::Power);
    let got = check_state(&state, 4, "after a failed sync").await;
    assert!(got >= 4);
}
