//! `Emit` end to end: every vector through a real server into the ledger,
//! and every validation rule broken once.

use meterd::pb::{self, Kind, Reason};
use meterd::record::time_to_timestamp;
use meterd::server;
use tonic::Code;

use crate::common::{emit_req, entries, pb_entry_from_go, vector_lines, vm_entry, Server};
use crate::wire::expected_entry_line;

#[tokio::test]
async fn every_entry_vector_lands_in_the_ledger_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::jsonl(dir.path()).await;
    let mut client = server.client().await;
    let vectors = vector_lines("entries");
    for (name, line) in &vectors {
        let resp = client
            .emit(emit_req(pb_entry_from_go(line)))
            .await
            .unwrap_or_else(|s| panic!("{name}: {s:?}"))
            .into_inner();
        assert!(!resp.duplicate);
    }
    server.stop().await;
    let want: Vec<String> = vectors
        .iter()
        .map(|(n, l)| expected_entry_line(n, l))
        .collect();
    assert_eq!(entries(dir.path()), want);
}

#[tokio::test]
async fn unset_emitted_at_is_stamped_with_the_receive_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::jsonl(dir.path()).await;
    let mut client = server.client().await;
    let before = time::OffsetDateTime::now_utc();
    let mut entry = vm_entry("vm-1", "");
    entry.emitted_at = None;
    let resp = client.emit(emit_req(entry)).await.unwrap().into_inner();
    let after = time::OffsetDateTime::now_utc();
    let stamped = resp.emitted_at.expect("stamped time returned");
    let stamped_t = meterd::record::timestamp_to_time(&stamped).unwrap();
    assert!(
        stamped_t >= before && stamped_t <= after,
        "{stamped_t} not in [{before}, {after}]"
    );
    server.stop().await;
    let lines = entries(dir.path());
    assert_eq!(lines.len(), 1);
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(
        crate::common::ts(v["emitted_at"].as_str().unwrap()),
        stamped
    );
}

#[tokio::test]
async fn reasons_are_not_tied_to_start_or_stop() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::jsonl(dir.path()).await;
    let mut client = server.client().await;
    // As the seed system does: a restore closes compute, a crash closes storage.
    for (kind, reason) in [
        (Kind::VmComputeStop, Reason::Restore),
        (Kind::VmStorageStop, Reason::StopCrash),
        (Kind::VmComputeStart, Reason::StopUser),
    ] {
        let mut e = vm_entry("vm-r", "");
        e.kind = kind as i32;
        e.reason = reason as i32;
        client.emit(emit_req(e)).await.expect("accepted");
    }
    server.stop().await;
    assert_eq!(entries(dir.path()).len(), 3);
}

/// One entry per rule, with the field the error must name.
fn broken_entries() -> Vec<(&'static str, pb::Entry, &'static str)> {
    let ok = || vm_entry("vm-1", "id-1");
    let snap = || pb::Entry {
        kind: Kind::SnapStorageStart as i32,
        snapshot_id: "snap-1".into(),
        emitted_at: Some(crate::common::recent()),
        ..Default::default()
    };
    let long = "x".repeat(257);
    let future =
        time_to_timestamp(time::OffsetDateTime::now_utc() + std::time::Duration::from_secs(3600));
    vec![
        (
            "kind unspecified",
            pb::Entry { kind: 0, ..ok() },
            "entry.kind",
        ),
        ("kind unknown", pb::Entry { kind: 99, ..ok() }, "entry.kind"),
        (
            "vm kind without vm_id",
            pb::Entry {
                vm_id: String::new(),
                ..ok()
            },
            "entry.vm_id",
        ),
        (
            "snap kind without snapshot_id",
            pb::Entry {
                snapshot_id: String::new(),
                ..snap()
            },
            "entry.snapshot_id",
        ),
        (
            "reason unknown",
            pb::Entry { reason: 42, ..ok() },
            "entry.reason",
        ),
        (
            "vm_id too long",
            pb::Entry {
                vm_id: long.clone(),
                ..ok()
            },
            "entry.vm_id",
        ),
        (
            "snapshot_id too long",
            pb::Entry {
                snapshot_id: long.clone(),
                ..snap()
            },
            "entry.snapshot_id",
        ),
        (
            "source_snapshot_id too long",
            pb::Entry {
                source_snapshot_id: long.clone(),
                ..ok()
            },
            "entry.source_snapshot_id",
        ),
        (
            "id too long",
            pb::Entry {
                id: long.clone(),
                ..ok()
            },
            "entry.id",
        ),
        (
            "hypervisor too long",
            pb::Entry {
                hypervisor: "h".repeat(4097),
                ..ok()
            },
            "entry.hypervisor",
        ),
        (
            "control character in vm_id",
            pb::Entry {
                vm_id: "vm\n2".into(),
                ..ok()
            },
            "entry.vm_id",
        ),
        (
            "control character in hypervisor",
            pb::Entry {
                hypervisor: "qemu\u{0}".into(),
                ..ok()
            },
            "entry.hypervisor",
        ),
        (
            "control character in id",
            pb::Entry {
                id: "a\u{1b}[31m".into(),
                ..ok()
            },
            "entry.id",
        ),
        (
            "negative cpu",
            pb::Entry {
                shape: Some(pb::Shape {
                    cpu: -1,
                    ..Default::default()
                }),
                ..ok()
            },
            "entry.shape.cpu",
        ),
        (
            "negative mem",
            pb::Entry {
                shape: Some(pb::Shape {
                    mem_bytes: -1,
                    ..Default::default()
                }),
                ..ok()
            },
            "entry.shape.mem_bytes",
        ),
        (
            "negative storage",
            pb::Entry {
                shape: Some(pb::Shape {
                    storage_bytes: -5,
                    ..Default::default()
                }),
                ..ok()
            },
            "entry.shape.storage_bytes",
        ),
        (
            "emitted_at in the future",
            pb::Entry {
                emitted_at: Some(future),
                ..ok()
            },
            "entry.emitted_at",
        ),
        (
            "emitted_at nanos out of range",
            pb::Entry {
                emitted_at: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: 1_000_000_000,
                }),
                ..ok()
            },
            "entry.emitted_at",
        ),
        (
            "emitted_at beyond year 9999",
            pb::Entry {
                emitted_at: Some(prost_types::Timestamp {
                    seconds: 253_402_300_800,
                    nanos: 0,
                }),
                ..ok()
            },
            "entry.emitted_at",
        ),
        (
            "emitted_at before year 1",
            pb::Entry {
                emitted_at: Some(prost_types::Timestamp {
                    seconds: -62_135_596_801,
                    nanos: 0,
                }),
                ..ok()
            },
            "entry.emitted_at",
        ),
    ]
}

#[tokio::test]
async fn every_rule_broken_once_gets_invalid_argument_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::jsonl(dir.path()).await;
    let mut client = server.client().await;
    for (rule, entry, field) in broken_entries() {
        let status = client.emit(emit_req(entry)).await.expect_err(rule);
        assert_eq!(status.code(), Code::InvalidArgument, "{rule}: {status:?}");
        assert!(
            status.message().starts_with(&format!("{field}: ")),
            "{rule}: message {:?} should name {field}",
            status.message()
        );
    }
    let status = client
        .emit(pb::EmitRequest { entry: None })
        .await
        .expect_err("missing entry");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "entry: must be set");
    server.stop().await;
    assert!(
        entries(dir.path()).is_empty(),
        "nothing written for bad input"
    );
}

#[tokio::test]
async fn limits_are_flags_and_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = server::Config::default();
    config.limits.max_id_len = 8;
    config.limits.max_clock_skew = std::time::Duration::ZERO;
    config.max_message_bytes = 1024;
    let server = Server::jsonl_with(dir.path(), config).await;
    let mut client = server.client().await;

    let status = client
        .emit(emit_req(vm_entry("vm-123456789", "")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "entry.vm_id: longer than 8 bytes");

    // Over the message size: refused before decoding.
    let mut big = vm_entry("vm-1", "");
    big.hypervisor = "h".repeat(2000);
    let status = client.emit(emit_req(big)).await.unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    assert!(
        status.message().contains("message length too large"),
        "{status:?}"
    );

    // A time just ahead of the server's clock is beyond a zero skew.
    let mut ahead = vm_entry("vm-1", "");
    ahead.emitted_at = Some(time_to_timestamp(
        time::OffsetDateTime::now_utc() + std::time::Duration::from_secs(5),
    ));
    let status = client.emit(emit_req(ahead)).await.unwrap_err();
    assert_eq!(
        status.message(),
        "entry.emitted_at: more than 0s in the future"
    );

    client
        .emit(emit_req(vm_entry("vm-1", "")))
        .await
        .expect("valid entry accepted");
    server.stop().await;
    assert_eq!(entries(dir.path()).len(), 1);
}
