//! Seals: on sealing a segment the log writes `<segment>.seal`, a small
//! JSON file with the segment's positions, length and SHA-256, and the
//! SHA-256 of the previous seal. The seals of a stream form a chain, as
//! CloudTrail's digest files do: changing a sealed record changes its
//! segment's hash, redoing that seal changes the next seal's link, and
//! rewriting the whole chain changes its head, which an outsider can keep
//! (`LedgerService.Head`, `meterd verify --head`). Retention deletes a
//! segment but keeps its seal, so the chain stays whole.

use std::fs::File;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::names::{Names, SEAL};

/// The format of the seal files this meterd writes.
pub const FORMAT: u32 = 1;

/// What a seal file says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// The format of this file (1).
    pub format: u32,
    /// `entries` or `batches`.
    pub stream: String,
    /// First and last position of the segment.
    pub first: u64,
    pub last: u64,
    /// Records in the segment (`last - first + 1`).
    pub count: u64,
    /// Length of the segment file in bytes.
    pub bytes: u64,
    /// SHA-256 of the segment file, hex.
    pub sha256: String,
    /// SHA-256 of the previous seal file of the stream, hex; `null` for the first.
    pub prev_seal_sha256: Option<String>,
    /// When it was sealed (RFC 3339, UTC).
    pub sealed_at: String,
}

/// The head of a stream's chain: the newest seal and its file's hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Last position of the newest sealed segment.
    pub last: u64,
    /// SHA-256 of its seal file.
    pub hash: [u8; 32],
}

impl Head {
    pub fn hex(&self) -> String {
        hex(&self.hash)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// SHA-256 of a seal file's bytes: the link the next seal records.
pub fn link(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// RFC 3339 in UTC with nanoseconds, for `sealed_at`.
pub(crate) fn rfc3339(unix_nanos: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(unix_nanos))
        .map(|t| t.to_string())
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

impl Seal {
    /// The file's bytes: one line of JSON.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Reads a seal file's bytes, checking what can be checked alone.
    pub fn parse(bytes: &[u8]) -> Result<Seal, String> {
        let s: Seal = serde_json::from_slice(bytes).map_err(|e| format!("not a seal: {e}"))?;
        if s.format != FORMAT {
            return Err(format!("seal format {} is not known", s.format));
        }
        if s.count == 0 || s.first == 0 || s.last != s.first + s.count - 1 {
            return Err(format!(
                "first {}, last {} and count {} disagree",
                s.first, s.last, s.count
            ));
        }
        if s.sha256.len() != 64 || !s.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("sha256 is not 64 hex digits".into());
        }
        Ok(s)
    }
}

/// Reads a seal file: its seal and its link. Blocking.
pub(crate) fn read(path: &Path) -> io::Result<(Result<Seal, String>, [u8; 32])> {
    let bytes = std::fs::read(path)?;
    Ok((Seal::parse(&bytes), link(&bytes)))
}

/// Writes the seal of segment `first`, linked to `prev`,
/// through a synced temporary file; the caller syncs the directory.
/// Returns the new head. Blocking.
pub(crate) fn write_seal(
    names: &Names,
    first: u64,
    count: u64,
    len: u64,
    sha256: [u8; 32],
    prev: Option<Head>,
    now: i64,
) -> io::Result<Head> {
    let seal = Seal {
        format: FORMAT,
        stream: names.stream.to_owned(),
        first,
        last: first + count - 1,
        count,
        bytes: len,
        sha256: hex(&sha256),
        prev_seal_sha256: prev.map(|h| h.hex()),
        sealed_at: rfc3339(now),
    };
    let bytes = seal.encode();
    names.write_file(&names.sealed(first, SEAL), &bytes)?;
    Ok(Head {
        last: seal.last,
        hash: link(&bytes),
    })
}

/// SHA-256 of `[0, len)` of `data`. Blocking.
pub(crate) fn sha256_of(data: &File, len: u64) -> io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let want = usize::try_from(len - at)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = super::walk::read_at_most(data, &mut buf[..want], at)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_round_trips_and_its_link_is_the_hash_of_its_bytes() {
        let s = Seal {
            format: FORMAT,
            stream: "entries".into(),
            first: 11,
            last: 20,
            count: 10,
            bytes: 1234,
            sha256: hex(&[0xab; 32]),
            prev_seal_sha256: None,
            sealed_at: rfc3339(1_700_000_000_123_456_789),
        };
        let bytes = s.encode();
        assert_eq!(Seal::parse(&bytes).unwrap(), s);
        assert!(std::str::from_utf8(&bytes)
            .unwrap()
            .contains(r#""sealed_at":"2023-11-14T22:13:20.123456789Z""#));
        assert_eq!(link(&bytes), <[u8; 32]>::from(Sha256::digest(&bytes)));
        let bad = Seal { last: 21, ..s };
        assert!(Seal::parse(&bad.encode()).is_err());
        assert!(Seal::parse(b"{").is_err());
        assert_eq!(hex(&[0x01, 0xfe]), "01fe");
    }
}
