//! How `meterd usage` prints an answer: an aligned table for a person at a
//! terminal (anomalies listed after the rows), CSV with a header row for a
//! spreadsheet, or one JSON object per line for `jq`. Times are printed in
//! the query's time zone, with their offset, so a DST day reads as it is.

use std::io::{self, Write};

use jiff::tz::TimeZone;
use serde_json::json;

use crate::pb::{AnomalyType, Family, UsageAnomaly, UsageRow};

/// How `meterd usage` prints its answer (`--format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal, anomalies listed after the rows.
    Table,
    /// One header row, then one row per usage row and per anomaly.
    Csv,
    /// One JSON object per usage row and per anomaly.
    Jsonl,
}

/// Rows and anomalies of (part of) an answer.
#[derive(Debug, Default)]
pub struct Rows {
    pub rows: Vec<UsageRow>,
    pub anomalies: Vec<UsageAnomaly>,
}

/// The printer. CSV and JSON lines are written as chunks arrive; a table is
/// written at the end, when its column widths are known.
pub struct Output<W: Write> {
    format: Format,
    tz: TimeZone,
    out: W,
    table: Rows,
    header_done: bool,
}

const CSV_HEADER: &str = "record,family,id,hypervisor,bucket_start,bucket_end,running_nanos,vcpu_seconds,mem_byte_seconds,storage_byte_seconds,intervals,open,anomaly,at,position";

impl<W: Write> Output<W> {
    pub fn new(format: Format, tz: TimeZone, out: W) -> Output<W> {
        Output {
            format,
            tz,
            out,
            table: Rows::default(),
            header_done: false,
        }
    }

    pub fn add(&mut self, chunk: Rows) -> io::Result<()> {
        match self.format {
            Format::Table => {
                self.table.rows.extend(chunk.rows);
                self.table.anomalies.extend(chunk.anomalies);
            }
            Format::Csv => {
                if !self.header_done {
                    writeln!(self.out, "{CSV_HEADER}")?;
                    self.header_done = true;
                }
                for r in &chunk.rows {
                    let fields = [
                        "usage".into(),
                        family(r.family).into(),
                        r.id.clone(),
                        r.hypervisor.clone(),
                        self.time(r.bucket_start.as_ref()),
                        self.time(r.bucket_end.as_ref()),
                        r.running_nanos.to_string(),
                        r.vcpu_seconds.clone(),
                        r.mem_byte_seconds.clone(),
                        r.storage_byte_seconds.clone(),
                        r.intervals.to_string(),
                        r.open.to_string(),
                        String::new(),
                        String::new(),
                        String::new(),
                    ];
                    self.csv_line(&fields)?;
                }
                for a in &chunk.anomalies {
                    let mut fields = vec![String::new(); 15];
                    fields[0] = "anomaly".into();
                    fields[1] = family(a.family).into();
                    fields[2] = a.id.clone();
                    fields[12] = anomaly(a.r#type).into();
                    fields[13] = self.time(a.at.as_ref());
                    fields[14] = a.position.to_string();
                    self.csv_line(&fields)?;
                }
            }
            Format::Jsonl => {
                for r in &chunk.rows {
                    let v = json!({
                        "type": "usage", "family": family(r.family), "id": r.id,
                        "hypervisor": r.hypervisor,
                        "bucket_start": self.time(r.bucket_start.as_ref()),
                        "bucket_end": self.time(r.bucket_end.as_ref()),
                        "running_nanos": r.running_nanos,
                        "vcpu_seconds": r.vcpu_seconds, "mem_byte_seconds": r.mem_byte_seconds,
                        "storage_byte_seconds": r.storage_byte_seconds,
                        "intervals": r.intervals, "open": r.open,
                    });
                    writeln!(self.out, "{v}")?;
                }
                for a in &chunk.anomalies {
                    let v = json!({
                        "type": "anomaly", "anomaly": anomaly(a.r#type),
                        "family": family(a.family), "id": a.id,
                        "at": self.time(a.at.as_ref()), "position": a.position,
                    });
                    writeln!(self.out, "{v}")?;
                }
            }
        }
        Ok(())
    }

    /// Writes what is still held (the table) and flushes.
    pub fn finish(mut self) -> io::Result<()> {
        if self.format == Format::Csv && !self.header_done {
            writeln!(self.out, "{CSV_HEADER}")?;
        }
        if self.format == Format::Table {
            let table = std::mem::take(&mut self.table);
            let rows: Vec<Vec<String>> = table
                .rows
                .iter()
                .map(|r| {
                    vec![
                        family(r.family).into(),
                        r.id.clone(),
                        self.time(r.bucket_start.as_ref()),
                        self.time(r.bucket_end.as_ref()),
                        r.hypervisor.clone(),
                        running(r.running_nanos),
                        r.vcpu_seconds.clone(),
                        r.mem_byte_seconds.clone(),
                        r.storage_byte_seconds.clone(),
                        r.intervals.to_string(),
                        if r.open { "open" } else { "" }.into(),
                    ]
                })
                .collect();
            if rows.is_empty() {
                writeln!(self.out, "no usage in the range")?;
            } else {
                let header = [
                    "FAMILY",
                    "ID",
                    "BUCKET START",
                    "BUCKET END",
                    "HYPERVISOR",
                    "RUNNING",
                    "VCPU-S",
                    "MEM BYTE-S",
                    "STORAGE BYTE-S",
                    "INTERVALS",
                    "OPEN",
                ];
                // Numbers right-aligned, text left-aligned.
                let right = [
                    false, false, false, false, false, true, true, true, true, true, false,
                ];
                table_out(&mut self.out, &header, &right, &rows)?;
            }
            if !table.anomalies.is_empty() {
                writeln!(self.out, "\nanomalies:")?;
                let rows: Vec<Vec<String>> = table
                    .anomalies
                    .iter()
                    .map(|a| {
                        vec![
                            anomaly(a.r#type).into(),
                            family(a.family).into(),
                            a.id.clone(),
                            self.time(a.at.as_ref()),
                            a.position.to_string(),
                        ]
                    })
                    .collect();
                let header = ["ANOMALY", "FAMILY", "ID", "AT", "POSITION"];
                table_out(
                    &mut self.out,
                    &header,
                    &[false, false, false, false, true],
                    &rows,
                )?;
            }
        }
        self.out.flush()
    }

    fn time(&self, ts: Option<&prost_types::Timestamp>) -> String {
        let Some(ts) = ts else { return String::new() };
        match jiff::Timestamp::new(ts.seconds, ts.nanos) {
            Ok(t) => t
                .to_zoned_datetime(self.tz.clone())
                .strftime("%Y-%m-%dT%H:%M:%S%.f%:z")
                .to_string(),
            Err(_) => format!("{}.{:09}", ts.seconds, ts.nanos),
        }
    }

    /// One CSV record, quoting fields as RFC 4180 says. A field that a
    /// spreadsheet would run as a formula (it starts with `=`, `+`, `-`,
    /// `@`, a tab or a carriage return: an id such as `=HYPERLINK(...)` is
    /// client data) is written as text: a `'` before it, and quoted
    /// (OWASP's rule against CSV injection).
    fn csv_line(&mut self, fields: &[String]) -> io::Result<()> {
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                self.out.write_all(b",")?;
            }
            if f.starts_with(['=', '+', '-', '@', '\t', '\r']) {
                write!(self.out, "\"'{}\"", f.replace('"', "\"\""))?;
            } else if f.contains([',', '"', '\n', '\r']) {
                write!(self.out, "\"{}\"", f.replace('"', "\"\""))?;
            } else {
                self.out.write_all(f.as_bytes())?;
            }
        }
        self.out.write_all(b"\n")
    }
}

fn table_out(
    out: &mut impl Write,
    header: &[&str],
    right: &[bool],
    rows: &[Vec<String>],
) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| -> io::Result<()> {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            if right[i] {
                text.extend(std::iter::repeat_n(' ', pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, &mut header.iter().copied())?;
    for r in rows {
        line(out, &mut r.iter().map(String::as_str))?;
    }
    Ok(())
}

/// `H:MM:SS`, with the nanoseconds when there are any.
fn running(nanos: i64) -> String {
    let secs = nanos / 1_000_000_000;
    let frac = nanos % 1_000_000_000;
    let base = format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac == 0 {
        base
    } else {
        let f = format!("{frac:09}");
        format!("{base}.{}", f.trim_end_matches('0'))
    }
}

fn family(f: i32) -> &'static str {
    match Family::try_from(f) {
        Ok(Family::VmCompute) => "vm.compute",
        Ok(Family::VmStorage) => "vm.storage",
        Ok(Family::SnapStorage) => "snap.storage",
        _ => "?",
    }
}

fn anomaly(t: i32) -> &'static str {
    match AnomalyType::try_from(t) {
        Ok(AnomalyType::OrphanStop) => "orphan-stop",
        Ok(AnomalyType::DuplicateStart) => "duplicate-start",
        Ok(AnomalyType::StartWhileOpen) => "start-while-open",
        Ok(AnomalyType::StopShapeMismatch) => "stop-shape-mismatch",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_reads_as_hours_minutes_seconds() {
        assert_eq!(running(0), "0:00:00");
        assert_eq!(running(23 * 3600 * 1_000_000_000), "23:00:00");
        assert_eq!(running(90 * 1_000_000_000 + 500_000_000), "0:01:30.5");
    }
}
