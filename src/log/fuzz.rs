//! Entry points for the fuzz targets in `fuzz/`; not part of the API.

/// Reads a key index file with any content and looks hashes up in it:
/// an error is fine, a panic or a wrong "found" is not.
pub fn key_index(path: &std::path::Path, probes: &[u64]) {
    let _ = super::keys::read_summary(path);
    if let Ok(index) = super::keys::KeyIndex::open(path) {
        for &h in probes {
            if let Ok(found) = index.lookup(h) {
                // Candidates are only ever exact hash matches; offsets
                // are confirmed against the data by the caller.
                let _ = found;
            }
        }
    }
}

/// Decodes a receive-time file with any content.
pub fn times(bytes: &[u8]) {
    if let Some(t) = super::times::parse(bytes) {
        assert!(t.valid_len as usize <= bytes.len());
        assert!(t
            .commits
            .windows(2)
            .all(|w| w[0].end_count < w[1].end_count));
    }
}

/// A valid key index of `keys`, as a seed for the fuzzer.
pub fn write_key_index(path: &std::path::Path, keys: &[&str]) -> std::io::Result<()> {
    let mut entries: Vec<super::keys::KeyEntry> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| super::keys::KeyEntry {
            hash: super::keys::hash(k),
            offset: i as u64 * 100,
            received: i as i64,
        })
        .collect();
    let summary = super::Summary {
        first: 1,
        count: keys.len() as u64,
        data_len: keys.len() as u64 * 100,
        received_min: 0,
        received_max: keys.len() as i64,
        tail_hash: 0,
    };
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let names = super::names::Names::new(dir, "entries");
    super::keys::write(&names, path, &summary, &mut entries)
}

/// The stable hash of a key.
pub fn hash(key: &str) -> u64 {
    super::keys::hash(key)
}

/// What a reader of a damaged stream got at one position.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// An intact record's line.
    Record(Vec<u8>),
    /// Reported damaged (or missing), with the message a reader gets.
    Lost(String),
}

/// Recovers the stream `config.stream` of `config.dir` as a start would
/// (the writer is set up, its thread is not started), then reads every
/// position with a fresh reader, going on past damage as a client would.
/// `Err` when the start refuses the directory. Returns the last durable
/// position and what was read at each position. Bounded: a reader that
/// neither gives records nor moves on is a failure (panics). Blocking.
pub fn damaged_ledger(config: &super::LogConfig) -> Result<(u64, Vec<(u64, Read)>), String> {
    use std::sync::Arc;
    let opened = super::open::open(config).map_err(|e| e.to_string())?;
    let names = super::names::Names::of(config);
    let shared = Arc::new(super::Shared::new(names, opened.active.data.clone()));
    let writer = super::writer::Writer::new(config.clone(), shared.clone(), opened);
    let end = *shared.end.borrow();
    let mut out = Vec::new();
    let mut reader = super::LogReader::new(shared.clone(), 0).map_err(|e| e.to_string())?;
    let mut stalls = 0;
    while reader.next_position() <= end {
        let before = reader.next_position();
        match reader.read(7, 1 << 20) {
            Ok(lines) => {
                for l in lines {
                    out.push((l.position, Read::Record(l.line)));
                }
            }
            Err(e @ super::ReadError::Damaged { position, .. }) => {
                out.push((position, Read::Lost(e.to_string())));
            }
            Err(e @ super::ReadError::Missing { from, to, .. }) => {
                for p in from..=to.min(from + 10_000) {
                    out.push((p, Read::Lost(e.to_string())));
                }
            }
            Err(super::ReadError::Pruned { first }) => {
                reader = super::LogReader::new(shared.clone(), first.saturating_sub(1))
                    .map_err(|e| e.to_string())?;
            }
            Err(e) => return Err(e.to_string()),
        }
        if reader.next_position() == before {
            stalls += 1;
            assert!(stalls < 3, "the reader does not move at position {before}");
        } else {
            stalls = 0;
        }
    }
    drop(writer);
    Ok((end, out))
}
