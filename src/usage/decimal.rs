//! Exact decimals for usage figures: integer counts of 10⁻⁹ units, printed
//! with up to 9 fractional digits, never through floating point.

use std::fmt;

/// Nano-units per unit: a byte-nanosecond is 10⁻⁹ byte-seconds.
const NANOS_PER_UNIT: u128 = 1_000_000_000;

/// A non-negative exact decimal with nine fractional digits, held as a count
/// of 10⁻⁹ units. Usage is accumulated as `value × nanoseconds` (for example
/// byte-nanoseconds), which is exactly this representation of byte-seconds.
///
/// `Display` writes the integer part, then `.` and the fraction with trailing
/// zeros trimmed, or just the integer part when the fraction is zero: one
/// byte-nanosecond is `0.000000001`, one GiB for one nanosecond `1.073741824`,
/// nothing is `0`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Decimal(pub u128);

// === impl Decimal ===

impl Decimal {
    /// Zero.
    pub const ZERO: Decimal = Decimal(0);

    /// The decimal `value × nanos` 10⁻⁹ units, i.e. `value` for `nanos`
    /// nanoseconds. Exact: both factors are below 2⁶⁴, so the product is below
    /// 2¹²⁸.
    pub fn product(value: u64, nanos: u64) -> Decimal {
        Decimal(u128::from(value) * u128::from(nanos))
    }

    /// The count of 10⁻⁹ units.
    pub fn nano_units(self) -> u128 {
        self.0
    }
}

impl std::ops::Add for Decimal {
    type Output = Decimal;

    /// Exact sum. Callers keep sums below 2¹²⁸ (see `rows`: a bucket's sum is
    /// at most `i64::MAX × i64::MAX`, below 2¹²⁶), so this never overflows.
    fn add(self, other: Decimal) -> Decimal {
        Decimal(self.0 + other.0)
    }
}

impl std::ops::AddAssign for Decimal {
    fn add_assign(&mut self, other: Decimal) {
        *self = *self + other;
    }
}

impl Decimal {
    /// The integer part and the nine fractional digits' value.
    fn split(self) -> (u128, u64) {
        // A usage answer prints three of these per row: u64 division where
        // the value allows, not a call into the runtime's u128 division.
        match u64::try_from(self.0) {
            Ok(v) => (
                u128::from(v / NANOS_PER_UNIT as u64),
                v % NANOS_PER_UNIT as u64,
            ),
            // Below 10⁹: fits a u64.
            Err(_) => (self.0 / NANOS_PER_UNIT, (self.0 % NANOS_PER_UNIT) as u64),
        }
    }

    /// The `Display` text, built without the formatting machinery (the
    /// protobuf answer holds three per row).
    pub fn text(self) -> String {
        let (whole, frac) = self.split();
        let mut out = String::with_capacity(32);
        match u64::try_from(whole) {
            Ok(w) => out.push_str(itoa::Buffer::new().format(w)),
            Err(_) => out.push_str(&whole.to_string()),
        }
        push_fraction(&mut out, frac);
        out
    }
}

/// `.` and the nine digits of `frac` with trailing zeros trimmed; nothing
/// for zero.
fn push_fraction(out: &mut String, frac: u64) {
    if frac == 0 {
        return;
    }
    let mut digits = [b'0'; 9];
    let mut rest = frac;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    let used = 9 - digits.iter().rev().take_while(|&&d| d == b'0').count();
    out.push('.');
    // ASCII digits.
    out.push_str(std::str::from_utf8(&digits[..used]).unwrap_or_default());
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}
