//! A Python grpcio client, stubs generated from proto/ at test time.
//!
//! Runs tests/python/client.py against the real binary: the scenario of
//! `polyglot.rs` (Emit, EmitBatch, SubmitBatch, Tail, Usage). The script
//! asserts every answer itself and prints a JSON summary; this test then
//! checks it against the server (see `polyglot::check_summary`).

use std::path::Path;
use std::process::Command;

use crate::common::Binary;
use crate::polyglot::{check_summary, run_client, start_with_socket, Expected};

#[tokio::test]
async fn python_grpcio_client() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(dir.path(), &[]).await;
    run(&bin, &bin.addr.to_string()).await;
}

/// grpcio over the Unix socket, as a stock client: `unix:/path` and no
/// authority override, so grpcio sends the %-encoded path as `:authority`
/// (stock h2 refused it with PROTOCOL_ERROR: issue 9, item 0).
#[tokio::test]
async fn python_grpcio_client_over_a_unix_socket() {
    let (dir, run_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (bin, target) = start_with_socket(dir.path(), run_dir.path()).await;
    run(&bin, &target).await;
}

/// Runs tests/python/client.py against `target` (an address of `bin`) and
/// checks its summary.
async fn run(bin: &Binary, target: &str) {
    let scratch = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(target).arg(scratch.path());
    let summary = run_client(
        cmd,
        "`python3` is not on PATH; this test needs python3 with grpcio and grpcio-tools \
         (run scripts/test, which installs them)",
    );
    check_summary(
        &summary,
        bin,
        Expected {
            prefix: "py",
            batches: 5,
            rejected_batches: 4,
        },
    )
    .await;
}
