//! Fast paths for the RFC 3339 times of ledger lines. Reading: scans read
//! millions of them; [`unix_nanos`] handles the shape Go writes
//! (`2026-03-29T01:30:00.5Z`, or with a `±HH:MM` offset) and returns `None`
//! for anything else, which callers then hand to the `time` crate's full
//! parser: so every string gets exactly the `time` crate's answer. Writing:
//! every metric of a batch carries a time; [`write_utc`] writes Go's
//! `RFC3339Nano` without the `time` crate's general formatter.

use time::{OffsetDateTime, UtcOffset};

/// Writes `t` as Go's `time.Time` marshals a UTC time: `YYYY-MM-DDTHH:MM:SS`,
/// the nanoseconds with trailing zeros trimmed (none when zero), `Z`.
/// Returns false, writing nothing, for a year outside 0..=9999.
pub fn write_utc(t: OffsetDateTime, out: &mut Vec<u8>) -> bool {
    let t = if t.offset() == UtcOffset::UTC {
        t
    } else {
        t.to_offset(UtcOffset::UTC)
    };
    let (year, month, day) = t.to_calendar_date();
    let Ok(year) = u32::try_from(year) else {
        return false;
    };
    if year > 9999 {
        return false;
    }
    let (hour, minute, second, nanos) = t.to_hms_nano();
    let two = |n: u8| [b'0' + n / 10, b'0' + n % 10];
    let y = [
        b'0' + (year / 1000) as u8,
        b'0' + (year / 100 % 10) as u8,
        b'0' + (year / 10 % 10) as u8,
        b'0' + (year % 10) as u8,
    ];
    let (mo, d, h, mi, s) = (
        two(month as u8),
        two(day),
        two(hour),
        two(minute),
        two(second),
    );
    out.extend_from_slice(&[
        y[0], y[1], y[2], y[3], b'-', mo[0], mo[1], b'-', d[0], d[1], b'T', h[0], h[1], b':',
        mi[0], mi[1], b':', s[0], s[1],
    ]);
    if nanos != 0 {
        let mut frac = [0u8; 10];
        frac[0] = b'.';
        let mut n = nanos;
        for slot in frac[1..].iter_mut().rev() {
            *slot = b'0' + (n % 10) as u8;
            n /= 10;
        }
        let mut end = frac.len();
        while frac[end - 1] == b'0' {
            end -= 1;
        }
        out.extend_from_slice(&frac[..end]);
    }
    out.push(b'Z');
    true
}

/// Unix nanoseconds of `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, or
/// `None` when `s` is not in that shape or a field is out of range.
pub fn unix_nanos(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    // 60 (a leap second) is left to the full parser.
    let second = digits(&b[17..19])?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut i = 19;
    let mut nanos: i64 = 0;
    if b[i] == b'.' {
        let start = i + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        let n = end - start;
        if n == 0 || n > 9 {
            return None;
        }
        nanos = digits(&b[start..end])? * 10i64.pow((9 - n) as u32);
        i = end;
    }
    let offset_secs = match &b[i..] {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = digits(&[*h1, *h2])?;
            let m = digits(&[*m1, *m2])?;
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(i128::from(secs) * 1_000_000_000 + i128::from(nanos))
}

/// The value of a run of ASCII digits (at most 9, so it fits).
fn digits(b: &[u8]) -> Option<i64> {
    let mut v: i64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Some(v)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    use super::{unix_nanos, write_utc};

    /// Go's format (what the `time` crate writes for UTC, which trims the
    /// fraction the same way) for times across the whole range.
    #[test]
    fn writes_what_the_time_crate_writes() {
        let mut rng = fastrand::Rng::with_seed(11);
        let lo = OffsetDateTime::parse("0000-01-01T00:00:00Z", &Rfc3339)
            .unwrap()
            .unix_timestamp_nanos();
        let hi = OffsetDateTime::parse("9999-12-31T23:59:59.999999999Z", &Rfc3339)
            .unwrap()
            .unix_timestamp_nanos();
        let mut fixed = vec![lo, hi, 0, 1, 1_000_000_000, 1_795_665_220_897_092_605];
        for _ in 0..200_000 {
            let mut n = rng.i128(lo..=hi);
            // Round fractions to whole units some of the time, so that
            // trimming is exercised.
            match rng.u8(..4) {
                0 => n -= n.rem_euclid(1_000_000_000),
                1 => n -= n.rem_euclid(1_000_000),
                2 => n -= n.rem_euclid(100),
                _ => {}
            }
            fixed.push(n);
        }
        for n in fixed {
            let t = OffsetDateTime::from_unix_timestamp_nanos(n).unwrap();
            let mut out = Vec::new();
            assert!(write_utc(t, &mut out));
            assert_eq!(String::from_utf8(out).unwrap(), t.format(&Rfc3339).unwrap());
        }
        // An offset is written as the same instant in UTC.
        let t = OffsetDateTime::parse("2026-03-29T03:30:00.5+02:00", &Rfc3339).unwrap();
        let mut out = Vec::new();
        assert!(write_utc(t, &mut out));
        assert_eq!(out, b"2026-03-29T01:30:00.5Z");
    }

    /// What the full parser says.
    fn full(s: &str) -> Option<i128> {
        OffsetDateTime::parse(s, &Rfc3339)
            .ok()
            .map(|t| t.unix_timestamp_nanos())
    }

    #[test]
    fn agrees_with_the_time_crate_wherever_it_answers() {
        let fixed = [
            "2026-03-29T01:30:00Z",
            "2026-03-29T01:30:00.5Z",
            "2026-03-29T01:30:00.123456789Z",
            "2026-03-29T03:30:00+02:00",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "2024-02-29T12:00:00-05:30",
            "1969-12-31T23:59:59.1Z",
        ];
        for s in fixed {
            assert_eq!(unix_nanos(s), full(s), "{s}");
            assert!(unix_nanos(s).is_some(), "{s}");
        }
        // Random strings near the shape: the fast path either declines or
        // gives the full parser's answer.
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet = b"0123456789-:TZ.+ zt";
        let mut answered = 0;
        for _ in 0..200_000 {
            let mut s: Vec<u8> = fixed[rng.usize(..fixed.len())].as_bytes().to_vec();
            for _ in 0..rng.usize(0..3) {
                let i = rng.usize(..s.len());
                match rng.u8(..3) {
                    0 => s[i] = alphabet[rng.usize(..alphabet.len())],
                    1 => {
                        s.remove(i);
                    }
                    _ => s.insert(i, alphabet[rng.usize(..alphabet.len())]),
                }
            }
            let s = String::from_utf8(s).unwrap();
            if let Some(fast) = unix_nanos(&s) {
                answered += 1;
                assert_eq!(Some(fast), full(&s), "{s}");
            }
        }
        assert!(answered > 10_000, "{answered}");
        // Every day of a few years, at odd times and offsets.
        for day in 0..(4 * 366) {
            let t =
                OffsetDateTime::from_unix_timestamp(1_700_000_000 + day * 86_400 + 3_723).unwrap();
            let s = t.format(&Rfc3339).unwrap();
            assert_eq!(unix_nanos(&s), full(&s), "{s}");
        }
    }
}
