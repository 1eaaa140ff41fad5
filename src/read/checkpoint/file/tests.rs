//! Round trips of a checkpoint file, and its refusal of damage.

use super::*;

#[test]
fn round_trips_and_refuses_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("entries.00000000000000000001.usage");
    let (meta, blocks, body) = sample();
    write(&path, &meta, &blocks, &body).unwrap();
    assert_eq!(read_meta(&path), Some(meta));
    assert_eq!(read_body(&path, &meta).unwrap(), body);
    assert_eq!(read_blocks(&path, &meta).unwrap(), blocks);
    let other = Meta { count: 4, ..meta };
    assert!(read_body(&path, &other).is_err());

    let bytes = std::fs::read(&path).unwrap();
    assert_flips_noticed(&path, &meta, &blocks, &body, &bytes);
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    assert!(read_body(&path, &meta).is_err());

    // A file of the previous version (intact, with its own CRC) reads
    // as missing: it is rebuilt, never decoded with this layout.
    let mut old = bytes.clone();
    for version in [b"MTU1", b"MTU2"] {
        old[..4].copy_from_slice(version);
        let crc = crc32fast::hash(&old[..HEADER_LEN - 4]);
        old[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &old).unwrap();
        assert_eq!(read_meta(&path), None);
    }

    assert_bad_pending_refused(&path, &meta, &blocks, &body);

    let mut p = Pending::default();
    for i in 1..=5 {
        p.add(i);
    }
    assert_eq!(
        p,
        Pending {
            listed: vec![1],
            rest_from: Some(2)
        }
    );
}

/// A checkpoint's header, block index and body with every kind of field.
fn sample() -> (Meta, Blocks, Body) {
    let meta = Meta {
        from: 1,
        first: 1,
        count: 3,
        data_len: 600,
        min_emitted: -5,
        max_emitted: 1 << 70,
        received_max: 42,
        before: 1 << 69,
    };
    let mut open = BTreeMap::new();
    open.insert(
        (Family::SnapStorage, "snap-é".to_owned()),
        OpenState {
            since: -7,
            shape: Shape {
                cpu: 0,
                mem_bytes: 0,
                storage_bytes: 1 << 40,
            },
            hypervisor: "ch".into(),
            position: 2,
        },
    );
    let body = Body {
        state: Checkpoint {
            before: meta.before,
            open,
        },
        pending: Pending {
            listed: vec![1, 2],
            rest_from: Some(3),
        },
    };
    let blocks = Blocks {
        per: 2,
        min_emitted: vec![-5, 1 << 70],
    };
    (meta, blocks, body)
}

/// Asserts that flipping any one byte of the file `bytes` is noticed.
fn assert_flips_noticed(path: &Path, meta: &Meta, blocks: &Blocks, body: &Body, bytes: &[u8]) {
    for i in 0..bytes.len() {
        let mut b = bytes.to_vec();
        b[i] ^= 0x10;
        std::fs::write(path, &b).unwrap();
        let ok = read_meta(path).is_some_and(|m| m == *meta)
            && read_body(path, meta).is_ok_and(|got| got == *body)
            && read_blocks(path, meta).is_ok_and(|got| got == *blocks);
        assert!(!ok, "a flipped byte at {i} went unnoticed");
    }
}

/// Asserts that pending positions outside the segment's range, or out of
/// order, read as damage.
fn assert_bad_pending_refused(path: &Path, meta: &Meta, blocks: &Blocks, body: &Body) {
    // Positions outside the segment's range, or out of order, are damage.
    for pending in [
        Pending {
            listed: vec![2, 1],
            rest_from: None,
        },
        Pending {
            listed: vec![4],
            rest_from: None,
        },
        Pending {
            listed: vec![0],
            rest_from: None,
        },
        Pending {
            listed: vec![2],
            rest_from: Some(2),
        },
        Pending {
            listed: vec![],
            rest_from: Some(4),
        },
    ] {
        let bad = Body {
            pending,
            ..body.clone()
        };
        write(path, meta, blocks, &bad).unwrap();
        assert!(read_body(path, meta).is_err(), "{:?}", bad.pending);
    }
}
