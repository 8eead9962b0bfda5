use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::excerpt;

/// A Kubernetes resource quantity (`100m`, `64Mi`, `1.5`, `2e3`), kept as written and read
/// the way the API server reads it: an exact decimal (no floating point), rounded up to
/// the nano unit, binary-suffixed amounts capped at 2^63-1. Negative amounts are refused,
/// as the API server refuses them in container resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quantity {
    text: String,
    amount: Amount,
}

/// A string that is not a non-negative Kubernetes quantity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not the Kubernetes quantity grammar.
    #[error("{text:?} is not a Kubernetes quantity (examples: 10m, 0.5, 64Mi, 1G)")]
    Syntax {
        /// The rejected text, shortened.
        text: String,
    },
    /// A valid quantity below zero.
    #[error("{text:?} is negative; resource quantities must be zero or more")]
    Negative {
        /// The rejected text, shortened.
        text: String,
    },
}

impl Quantity {
    /// The quantity as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Compares the amounts exactly, as the API server compares a request with its limit
    /// (`9m` equals `0.009`, `1Ki` is more than `1k`).
    pub fn compare(&self, other: &Quantity) -> Ordering {
        self.amount.cmp(&other.amount)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A non-negative exact decimal: `digits × 10^exponent`, with no leading or trailing zero
/// digit (zero has no digits), so that equal amounts have equal representations.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Amount {
    digits: Vec<u8>,
    exponent: i64,
}

impl Ord for Amount {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.digits.is_empty(), other.digits.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            // Same number of digits before the decimal point: the digits decide, read left
            // to right (a missing digit is a zero, and a prefix is the smaller number).
            (false, false) => self
                .magnitude()
                .cmp(&other.magnitude())
                .then_with(|| self.digits.cmp(&other.digits)),
        }
    }
}

impl PartialOrd for Amount {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The API server's limit on binary-suffixed amounts, 2^63-1.
const MAX_BINARY: &[u8] = b"9223372036854775807";
/// The smallest unit an amount is rounded up to, 10^-9.
const NANO_EXPONENT: i64 = -9;

impl Amount {
    fn new(digits: Vec<u8>, exponent: i64) -> Self {
        let start = digits
            .iter()
            .position(|&digit| digit != b'0')
            .unwrap_or(digits.len());
        let end = digits
            .iter()
            .rposition(|&digit| digit != b'0')
            .map_or(start, |last| last + 1);
        let trailing_zeros = (digits.len() - end) as i64;
        Amount {
            digits: digits[start..end].to_vec(),
            exponent: if start == end {
                0
            } else {
                exponent + trailing_zeros
            },
        }
    }

    /// Number of digits before the decimal point (negative for amounts below 0.1).
    fn magnitude(&self) -> i64 {
        self.digits.len() as i64 + self.exponent
    }

    /// Rounds a non-zero amount finer than 1n up to the next nano, as the API server does.
    fn round_up_to_nano(self) -> Self {
        if self.digits.is_empty() || self.exponent >= NANO_EXPONENT {
            return self;
        }
        let dropped = NANO_EXPONENT - self.exponent;
        let kept_len = (self.digits.len() as i64 - dropped).max(0) as usize;
        // The last digit is never zero, so something non-zero is always dropped: add one.
        let mut kept = self.digits[..kept_len].to_vec();
        let mut position = kept.len();
        loop {
            if position == 0 {
                kept.insert(0, b'1');
                break;
            }
            position -= 1;
            if kept[position] == b'9' {
                kept[position] = b'0';
            } else {
                kept[position] += 1;
                break;
            }
        }
        Amount::new(kept, NANO_EXPONENT)
    }
}

/// Multiplies a decimal digit string by `factor` (at most 2^60), exactly.
fn multiply(digits: &[u8], factor: u64) -> Vec<u8> {
    let mut product = Vec::with_capacity(digits.len() + 20);
    let mut carry: u128 = 0;
    for &digit in digits.iter().rev() {
        let value = u128::from(digit - b'0') * u128::from(factor) + carry;
        product.push(b'0' + (value % 10) as u8);
        carry = value / 10;
    }
    while carry > 0 {
        product.push(b'0' + (carry % 10) as u8);
        carry /= 10;
    }
    product.reverse();
    product
}

/// What a suffix multiplies the number by.
#[derive(Clone, Copy)]
enum Scale {
    /// `10^n`: decimal SI suffixes and `e` exponents.
    Decimal(i64),
    /// `2^n`: binary SI suffixes.
    Binary(u32),
}

const SUFFIXES: [(&str, Scale); 15] = [
    ("Ki", Scale::Binary(10)),
    ("Mi", Scale::Binary(20)),
    ("Gi", Scale::Binary(30)),
    ("Ti", Scale::Binary(40)),
    ("Pi", Scale::Binary(50)),
    ("Ei", Scale::Binary(60)),
    ("n", Scale::Decimal(-9)),
    ("u", Scale::Decimal(-6)),
    ("m", Scale::Decimal(-3)),
    ("k", Scale::Decimal(3)),
    ("M", Scale::Decimal(6)),
    ("G", Scale::Decimal(9)),
    ("T", Scale::Decimal(12)),
    ("P", Scale::Decimal(15)),
    ("E", Scale::Decimal(18)),
];

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || QuantityError::Syntax {
            text: excerpt(text).into_owned(),
        };
        let (number, scale) = split_suffix(text);
        let negative = number.starts_with('-');
        let unsigned = number.strip_prefix(['+', '-']).unwrap_or(number);
        let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (integer.is_empty() && fraction.is_empty())
            || !all_digits(integer)
            || !all_digits(fraction)
        {
            return Err(syntax());
        }
        let digits = [integer.as_bytes(), fraction.as_bytes()].concat();
        let fraction_len = i64::try_from(fraction.len()).map_err(|_| syntax())?;
        let amount = match scale {
            Scale::Decimal(power) => Amount::new(digits, power - fraction_len),
            Scale::Binary(power) => {
                let amount = Amount::new(multiply(&digits, 1 << power), -fraction_len);
                let max = Amount::new(MAX_BINARY.to_vec(), 0);
                if amount > max { max } else { amount }
            }
        }
        .round_up_to_nano();
        if negative && !amount.digits.is_empty() {
            return Err(QuantityError::Negative {
                text: excerpt(text).into_owned(),
            });
        }
        Ok(Quantity {
            text: text.to_owned(),
            amount,
        })
    }
}

/// Splits a quantity into its signed decimal number and the scale of its suffix (binary,
/// decimal-SI or decimal exponent).
fn split_suffix(text: &str) -> (&str, Scale) {
    if let Some(found) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| text.strip_suffix(suffix).map(|number| (number, *scale)))
    {
        return found;
    }
    if let Some(position) = text.find(['e', 'E']) {
        let exponent = &text[position + 1..];
        let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
        if !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && let Ok(exponent) = exponent.parse::<i32>()
        {
            return (&text[..position], Scale::Decimal(i64::from(exponent)));
        }
    }
    (text, Scale::Decimal(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn quantity(text: &str) -> Quantity {
        text.parse()
            .unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    #[rstest]
    #[case("9m", "0.009")]
    #[case("1", "1000m")]
    #[case("0.5", ".5")]
    #[case("64Mi", "67108864")]
    #[case("1G", "1e9")]
    #[case("2e3", "2k")]
    #[case("1E", "1e18")]
    #[case("+3k", "3000")]
    #[case("1.5Ki", "1536")]
    #[case("100m", "0.1")]
    #[case("5.", "5")]
    #[case("0", "-0")]
    #[case("0.000", "0n")]
    // Finer than a nano: rounded up, as the API server does.
    #[case("0.0000000001", "1n")]
    #[case("1.0000000001", "1.000000001")]
    #[case("0.0000000009999", "1n")]
    #[case("0.0000000001Ki", "103n")]
    // Binary amounts stop at 2^63-1.
    #[case("9Ei", "9223372036854775807")]
    #[case("16Ei", "8Ei")]
    fn equal_amounts(#[case] left: &str, #[case] right: &str) {
        assert_eq!(quantity(left).compare(&quantity(right)), Ordering::Equal);
        assert_eq!(quantity(right).compare(&quantity(left)), Ordering::Equal);
        assert_eq!(quantity(left).as_str(), left, "kept as written");
    }

    #[rstest]
    #[case("9m", "0.0091")]
    #[case("1k", "1Ki")]
    #[case("999m", "1")]
    #[case("0", "1n")]
    #[case("1n", "2n")]
    #[case("63Mi", "64Mi")]
    #[case("0.1", "1")]
    #[case("99", "100")]
    #[case("1e20", "1e21")]
    #[case("1e-3", "2m")]
    #[case("7Ei", "1e19")]
    #[case("123", "1234e-1")]
    fn smaller_amounts(#[case] smaller: &str, #[case] larger: &str) {
        assert_eq!(quantity(smaller).compare(&quantity(larger)), Ordering::Less);
        assert_eq!(
            quantity(larger).compare(&quantity(smaller)),
            Ordering::Greater
        );
    }

    #[rstest]
    #[case("")]
    #[case("Mi")]
    #[case("ten")]
    #[case("10 Mi")]
    #[case("10MB")]
    #[case("1.2.3")]
    #[case("-")]
    #[case("1e")]
    #[case(".")]
    #[case("1e1.5")]
    #[case(" 1")]
    fn rejects_invalid_quantities(#[case] text: &str) {
        let error = text.parse::<Quantity>().expect_err("invalid quantity");
        assert!(matches!(error, QuantityError::Syntax { .. }), "{error}");
        assert!(error.to_string().contains("is not a Kubernetes quantity"));
    }

    #[rstest]
    #[case("-1")]
    #[case("-64Mi")]
    #[case("-0.5m")]
    #[case("-1e-12")]
    fn refuses_negative_quantities(#[case] text: &str) {
        let error = text.parse::<Quantity>().expect_err("negative");
        assert_eq!(
            error.to_string(),
            format!("{text:?} is negative; resource quantities must be zero or more")
        );
    }

    #[test]
    fn a_huge_quantity_is_compared_exactly_and_echoed_shortened() {
        let long = format!("1{}", "0".repeat(100_000));
        let longer = format!("1{}1", "0".repeat(100_000));
        assert_eq!(quantity(&long).compare(&quantity(&longer)), Ordering::Less);
        let message = format!("x{long}").parse::<Quantity>().expect_err("bad");
        assert!(message.to_string().len() < 300, "{message}");
    }
}
