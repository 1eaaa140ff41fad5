//! Pass-through forwarding and health: with no spool, the upstream's
//! reachability is the sidecar's health, and it heals by itself.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::common::{emit_req, free_port, health_status, vm_entry, Binary};

/// Waits until the server reports `want`; returns how long that took.
pub(crate) async fn wait_health(
    addr: SocketAddr,
    want: ServingStatus,
    within: Duration,
) -> Duration {
    let mut health = HealthClient::new(crate::common::channel(addr).await);
    let start = Instant::now();
    while health_status(&mut health, "").await != want as i32 {
        assert!(
            start.elapsed() < within,
            "health not {want:?} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// A failed upstream turns health NOT_SERVING; once it is back, health is
/// SERVING again within 5 s with no client write, and writes go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_health_comes_back_with_the_upstream_and_no_write() {
    let (agg_dir, side_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let agg_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let sink = format!("grpc={agg_addr}");
    let sidecar = Binary::start(
        side_dir.path(),
        &["--sink", &sink, "--forward-mode", "pass-through"],
    )
    .await;
    let mut client = sidecar.client().await;
    let s = client
        .emit(emit_req(vm_entry("pth-vm", "pth-0")))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    wait_health(
        sidecar.addr,
        ServingStatus::NotServing,
        Duration::from_secs(5),
    )
    .await;

    // The upstream returns; nobody writes.
    let _aggregator = Binary::start_at(agg_addr, agg_dir.path(), &[]).await;
    let took = wait_health(sidecar.addr, ServingStatus::Serving, Duration::from_secs(5)).await;
    eprintln!("health back {took:?} after the upstream");
    assert!(
        crate::common::entries(agg_dir.path()).is_empty(),
        "health came back through a write"
    );
    client
        .emit(emit_req(vm_entry("pth-vm", "pth-1")))
        .await
        .expect("writes go through again");
    assert!(sidecar.log_text().contains("upstream answers again"));
}

/// With nothing written, health follows the upstream: NOT_SERVING within
/// 5 s of the upstream dying, SERVING within 5 s of its return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_health_follows_the_upstream_with_no_write() {
    let (agg_dir, side_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let agg_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut aggregator = Binary::start_at(agg_addr, agg_dir.path(), &[]).await;
    let sink = format!("grpc={agg_addr}");
    let sidecar = Binary::start(
        side_dir.path(),
        &["--sink", &sink, "--forward-mode", "pass-through"],
    )
    .await;
    wait_health(sidecar.addr, ServingStatus::Serving, Duration::from_secs(5)).await;
    aggregator.kill9();
    let took = wait_health(
        sidecar.addr,
        ServingStatus::NotServing,
        Duration::from_secs(5),
    )
    .await;
    eprintln!("NOT_SERVING {took:?} after the upstream died");
    let _aggregator = Binary::start_at(agg_addr, agg_dir.path(), &[]).await;
    let took = wait_health(sidecar.addr, ServingStatus::Serving, Duration::from_secs(5)).await;
    eprintln!("SERVING {took:?} after the upstream came back");
    let mut client = sidecar.client().await;
    client
        .emit(emit_req(vm_entry("vm-pt", "pt-follow")))
        .await
        .expect("writes go through");
}
