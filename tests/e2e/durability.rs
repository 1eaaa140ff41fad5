//! Acknowledged means durable, seen from outside: the real binary runs
//! under `strace`, and every Emit's reply must reach the client only after
//! an `fdatasync` of the ledger file that began after the write holding its
//! record. The same check on `--fsync never` finds the replies unsynced,
//! which shows that it can fail (a kill -9 test cannot: the page cache
//! survives it).

use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::{emit_req, free_port, vm_entry, Binary};

/// What strace saw of the ledger file.
#[derive(Debug, Default)]
struct Trace {
    /// Start time and shown data of each write to `entries.jsonl`.
    writes: Vec<(f64, String)>,
    /// Start and end time of each `fdatasync`/`fsync` of `entries.jsonl`.
    syncs: Vec<(f64, f64)>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Parses `strace -f -y -ttt -T` output, joining `<unfinished ...>` and
/// `resumed` halves by process id.
fn parse(text: &str) -> Trace {
    let mut trace = Trace::default();
    let mut unfinished: std::collections::HashMap<&str, (f64, &str)> = Default::default();
    for line in text.lines() {
        // strace pads the pid to five columns: `4934  1795…` but `49341 1795…`.
        let Some((pid, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Some((ts, rest)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(ts) = ts.parse::<f64>() else { continue };
        let (start, call) = if let Some(call) = rest.strip_suffix(" <unfinished ...>") {
            unfinished.insert(pid, (ts, call));
            continue;
        } else if rest.starts_with("<... ") {
            match unfinished.remove(pid) {
                Some((start, call)) => (start, call),
                None => continue,
            }
        } else {
            (ts, rest)
        };
        // A complete line ends with its duration: `= 0 <0.000123>`.
        let end = if rest.starts_with("<... ") {
            ts
        } else {
            let dur = rest
                .rsplit_once('<')
                .and_then(|(_, d)| d.trim_end_matches('>').parse::<f64>().ok())
                .unwrap_or(0.0);
            ts + dur
        };
        if !call.contains("entries.jsonl>") {
            continue;
        }
        if call.starts_with("write(") || call.starts_with("pwrite64(") {
            trace.writes.push((start, call.to_owned()));
        } else if call.starts_with("fdatasync(") || call.starts_with("fsync(") {
            trace.syncs.push((start, end));
        }
    }
    trace
}

/// Runs meterd under strace with `--fsync POLICY`, makes `n` Emits one
/// after the other, and returns the trace with each reply's arrival time.
async fn traced(policy: &str, n: usize) -> (Trace, Vec<f64>) {
    let dir = tempfile::tempdir().unwrap();
    let trace_path = dir.path().join("strace.txt");
    let ledger = dir.path().join("ledger");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = std::fs::File::create(dir.path().join("meterd.log")).unwrap();
    let child = Command::new("strace")
        .args(["-f", "-qq", "-y", "-ttt", "-T", "-s", "400"])
        .args(["-e", "trace=write,pwrite64,writev,fdatasync,fsync"])
        .arg("-o")
        .arg(&trace_path)
        .arg(crate::common::meterd_bin())
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--fsync",
            policy,
            "--ledger",
        ])
        .arg(&ledger)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("strace is installed (scripts/test installs it)");
    let mut server = Binary {
        child,
        addr,
        ledger,
        log: dir.path().join("meterd.log"),
    };
    server.wait_ready().await;
    let mut client = server.client().await;
    let mut replies = Vec::with_capacity(n);
    for i in 0..n {
        client
            .emit(emit_req(vm_entry("vm-sync", &format!("sync-{i}"))))
            .await
            .unwrap();
        replies.push(now());
    }
    // strace blocks fatal signals sent to it: stop meterd itself, and
    // strace exits with its status.
    let strace = server.child.id();
    let children = std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children"))
        .expect("strace's children");
    let meterd = children
        .split_whitespace()
        .next()
        .expect("meterd runs under strace");
    Command::new("kill")
        .args(["-TERM", meterd])
        .status()
        .unwrap();
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", server.log_text());
    let text = std::fs::read_to_string(&trace_path).unwrap();
    (parse(&text), replies)
}

/// The records whose reply arrived before a sync that began after their write.
fn unsynced_replies(trace: &Trace, replies: &[f64]) -> Vec<usize> {
    let mut bad = Vec::new();
    for (i, &reply) in replies.iter().enumerate() {
        let needle = format!("sync-{i}\\\"");
        let Some(&(written, _)) = trace.writes.iter().find(|(_, data)| data.contains(&needle))
        else {
            panic!("no write of record {i} in the trace: {trace:?}");
        };
        let synced = trace
            .syncs
            .iter()
            .any(|&(start, end)| start >= written && end <= reply);
        if !synced {
            bad.push(i);
        }
    }
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_leaves_after_the_sync_of_its_write() {
    let (trace, replies) = traced("always", 20).await;
    assert!(trace.writes.len() >= 20, "{trace:?}");
    assert_eq!(unsynced_replies(&trace, &replies), Vec::<usize>::new());

    // The check itself can fail: without syncs, every reply is unsynced.
    let (trace, replies) = traced("never", 5).await;
    assert_eq!(unsynced_replies(&trace, &replies), vec![0, 1, 2, 3, 4]);
}
