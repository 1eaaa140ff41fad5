//! Damaged ledgers: a small ledger (three sealed segments and an active
//! file, with their record files, key indexes and seals) is changed by the
//! input: bytes flipped, inserted, deleted or zeroed, files truncated,
//! removed or renamed. Opening it and reading every position must not
//! panic or hang, must never give a position another record's bytes, and
//! must give every record whose bytes (and record file) the changes left
//! alone, at its position.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meterd::log::fuzz::{damaged_ledger, Read};

const RECORDS: u64 = 24;

struct Base {
    /// Every file of the ledger, by name.
    files: Vec<(String, Vec<u8>)>,
    /// Per position (index 0 = position 1): its line, file and offset.
    records: Vec<(Vec<u8>, String, usize)>,
}

fn line(n: u64) -> Vec<u8> {
    format!("{{\"kind\":\"vm.compute.start\",\"vm_id\":\"vm-{n}\",\"shape\":{{\"cpu\":2}},\"emitted_at\":\"2026-01-01T00:00:00Z\",\"id\":\"k{n}\"}}\n").into_bytes()
}

fn scratch() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn config(dir: &Path) -> meterd::log::LogConfig {
    let mut c = meterd::ledger::LedgerConfig::new(dir);
    // `always`: at most the last group may be taken for one whose data a
    // crash kept from the disk (see the end-of-file rule below).
    c.fsync = meterd::ledger::Fsync::Always;
    c.stream("entries", meterd::ledger::entry_key)
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = tempfile::tempdir_in(scratch()).expect("tempdir");
        let mut records = Vec::new();
        for (first, sealed) in [(1u64, true), (7, true), (13, true), (19, false)] {
            let lines: Vec<(Vec<u8>, i64)> = (first..first + 6)
                .map(|n| (line(n), 1_700_000_000_000_000_000 + (n as i64 / 2) * 1000))
                .collect();
            let file = if sealed {
                format!("entries.{first:020}.jsonl")
            } else {
                "entries.jsonl".to_owned()
            };
            let mut offset = 0;
            for (l, _) in &lines {
                records.push((l.clone(), file.clone(), offset));
                offset += l.len();
            }
            meterd::log::testing::write_segment(
                dir.path(),
                "entries",
                first,
                sealed,
                lines.iter().map(|(l, r)| (l.as_slice(), *r)),
            )
            .expect("write segment");
        }
        // One start: seals and key indexes, as a running meterd leaves them.
        let (end, _) = damaged_ledger(&config(dir.path())).expect("the base opens");
        assert_eq!(end, RECORDS);
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| {
                let e = e.expect("entry");
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).expect("read"))
            })
            .collect();
        files.sort();
        Base { files, records }
    })
}

/// Where each record is now, and whether its bytes are untouched.
struct Track {
    place: Vec<(String, usize, usize, bool)>,
    /// Changes other than to the bytes of data files: the start may refuse.
    structural: bool,
    active_times_touched: bool,
    /// The active file's record file is gone or unreadable: its lines are
    /// taken as they are (all that is left to go by; cutting them would
    /// lose acknowledged records), so their bytes cannot be checked.
    active_unchecked: bool,
    /// A sealed segment's data file was removed or renamed, or its record
    /// file, seal or key index changed.
    segment_gone: bool,
}

impl Track {
    fn spoil_file(&mut self, file: &str) {
        for p in &mut self.place {
            if p.0 == file {
                p.3 = false;
            }
        }
    }
    fn touch(&mut self, file: &str) {
        if let Some(data) = file.strip_suffix(".times") {
            // Records whose checks were changed are not owed.
            self.spoil_file(&format!("{data}.jsonl"));
            self.structural = true;
            if file == "entries.times" {
                self.active_times_touched = true;
                self.active_unchecked = true;
            }
        } else if !file.ends_with(".jsonl") {
            self.structural = true;
        }
        if file != "entries.times" && file.starts_with("entries.0") && !file.ends_with(".jsonl") {
            self.segment_gone = true;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let base = base();
    let dir = tempfile::tempdir_in(scratch()).expect("tempdir");
    let mut files: Vec<(String, Vec<u8>)> = base.files.clone();
    let mut t = Track {
        place: base
            .records
            .iter()
            .map(|(l, f, o)| (f.clone(), *o, l.len(), true))
            .collect(),
        structural: false,
        active_times_touched: false,
        active_unchecked: false,
        segment_gone: false,
    };
    let mut ops = data.chunks_exact(6).take(8);
    for op in ops.by_ref() {
        let fi = usize::from(op[1]) % files.len();
        let name = files[fi].0.clone();
        let at = usize::from(u16::from_le_bytes([op[2], op[3]]));
        let len = files[fi].1.len();
        let at = if len == 0 { 0 } else { at % (len + 1) };
        let n = usize::from(op[4] % 32) + 1;
        match op[0] % 7 {
            0 if at < len => {
                files[fi].1[at] ^= 1 << (op[5] % 8);
                for p in t.place.iter_mut().filter(|p| p.0 == name) {
                    if p.1 <= at && at < p.1 + p.2 {
                        p.3 = false;
                    }
                }
                t.touch(&name);
            }
            1 => {
                files[fi].1.splice(at..at, std::iter::repeat_n(op[5], n));
                for p in t.place.iter_mut().filter(|p| p.0 == name) {
                    if p.1 < at && at < p.1 + p.2 {
                        p.3 = false;
                    } else if p.1 >= at {
                        p.1 += n;
                    }
                }
                t.touch(&name);
            }
            2 => {
                let end = (at + n).min(len);
                files[fi].1.drain(at..end);
                for p in t.place.iter_mut().filter(|p| p.0 == name) {
                    if p.1 < end && at < p.1 + p.2 {
                        p.3 = false;
                    } else if p.1 >= end {
                        p.1 -= end - at;
                    }
                }
                t.touch(&name);
            }
            3 => {
                files[fi].1.truncate(at);
                let last = t
                    .place
                    .iter()
                    .filter(|p| p.0 == name)
                    .map(|p| p.1)
                    .max();
                for p in t.place.iter_mut().filter(|p| p.0 == name) {
                    // A last record that lost only its newline is still whole.
                    let only_newline = Some(p.1) == last && p.1 + p.2 - 1 == at;
                    if p.1 + p.2 > at && !only_newline {
                        p.3 = false;
                    }
                }
                t.touch(&name);
            }
            4 => {
                files.remove(fi);
                t.spoil_file(&name);
                t.touch(&name);
                t.structural = true;
                if name == "entries.times" || name == "entries.jsonl" {
                    t.active_times_touched = true;
                }
                t.active_unchecked |= name == "entries.times";
                t.segment_gone |= name.ends_with(".jsonl") && name != "entries.jsonl";
                if files.is_empty() {
                    break;
                }
            }
            5 => {
                // Renamed to another segment's name for the same kind of file.
                let ext = name.rsplit('.').next().unwrap_or("jsonl").to_owned();
                let to = format!("entries.{:020}.{ext}", u64::from(op[5] % 40) + 1);
                t.spoil_file(&name);
                t.spoil_file(&to);
                t.touch(&name);
                t.touch(&to);
                files.retain(|f| f.0 != to);
                if let Some(f) = files.iter_mut().find(|f| f.0 == name) {
                    f.0 = to;
                }
                t.structural = true;
                t.active_times_touched |= name.starts_with("entries.") && !name.contains("000");
                t.active_unchecked |= name == "entries.times";
                t.segment_gone |= name.ends_with(".jsonl") && name != "entries.jsonl";
            }
            _ => {
                let end = (at + n * 4).min(len);
                files[fi].1[at..end].fill(0);
                for p in t.place.iter_mut().filter(|p| p.0 == name) {
                    if p.1 < end && at < p.1 + p.2 {
                        p.3 = false;
                    }
                }
                t.touch(&name);
            }
        }
    }
    for (name, bytes) in &files {
        std::fs::write(dir.path().join(name), bytes).expect("write");
    }
    // An active file shorter than its record file says, everything before
    // its last group whole: what a crash between the two syncs leaves, so
    // that last group (one record here) is cut as never acknowledged.
    let base_active = base.files.iter().find(|f| f.0 == "entries.jsonl").map_or(0, |f| f.1.len());
    let active_shortened = files
        .iter()
        .find(|f| f.0 == "entries.jsonl")
        .is_some_and(|f| f.1.len() < base_active);
    if active_shortened {
        t.place[RECORDS as usize - 1].3 = false;
    }
    let got = damaged_ledger(&config(dir.path()));
    let (end, reads) = match got {
        Ok(v) => v,
        Err(e) => {
            assert!(t.structural, "a start refused a ledger whose data bytes alone changed: {e}");
            return;
        }
    };
    if !t.active_times_touched {
        let owed = if active_shortened { RECORDS - 1 } else { RECORDS };
        assert!(end >= owed, "positions lost at the end: {end}");
    }
    let mut last = 0;
    for (position, read) in &reads {
        assert!(*position > last, "position {position} given twice or out of order");
        last = *position;
        let in_active = base.records[(*position).clamp(1, RECORDS) as usize - 1].1 == "entries.jsonl";
        // With the active file's record file gone, and a segment's data or
        // every witness of its count gone too, nothing may be left that
        // says where the active file starts.
        if t.active_unchecked && (in_active || t.segment_gone) {
            continue;
        }
        if let Read::Record(l) = read {
            assert!(*position <= RECORDS, "a record at {position}, past what was written");
            assert_eq!(
                l,
                &base.records[(*position - 1) as usize].0,
                "position {position} holds another record's bytes; files {:?}; reads {:?}",
                files.iter().map(|f| (&f.0, f.1.len())).collect::<Vec<_>>(),
                reads.iter().map(|(p, r)| (p, match r { Read::Record(l) => String::from_utf8_lossy(&l[l.len().saturating_sub(8)..]).into_owned(), Read::Lost(m) => m.clone() })).collect::<Vec<_>>()
            );
        }
    }
    for (i, p) in t.place.iter().enumerate() {
        let position = i as u64 + 1;
        if p.3 {
            assert!(
                reads
                    .iter()
                    .any(|(q, r)| *q == position && matches!(r, Read::Record(_))),
                "intact record {position} ({} at {}) was not given: {:?}; files {:?}",
                p.0,
                p.1,
                reads.iter().find(|(q, _)| *q == position),
                files.iter().map(|f| (&f.0, f.1.len())).collect::<Vec<_>>(),
            );
        }
    }
});
