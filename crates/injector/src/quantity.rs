use std::fmt;
use std::str::FromStr;

/// A Kubernetes resource quantity (`100m`, `64Mi`, `1.5`, `2e3`), kept as written and
/// checked against the Kubernetes quantity grammar so the API server never rejects it.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantity {
    text: String,
    value: f64,
}

/// A string that is not a Kubernetes quantity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a Kubernetes quantity (examples: 10m, 0.5, 64Mi, 1G)")]
pub struct QuantityError {
    text: String,
}

impl Quantity {
    /// The quantity as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The quantity in base units (cores, bytes), precise enough to compare two quantities.
    pub fn value(&self) -> f64 {
        self.value
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

const SUFFIXES: [(&str, f64); 15] = [
    ("Ki", 1024.0),
    ("Mi", 1_048_576.0),
    ("Gi", 1_073_741_824.0),
    ("Ti", 1_099_511_627_776.0),
    ("Pi", 1_125_899_906_842_624.0),
    ("Ei", 1_152_921_504_606_846_976.0),
    ("n", 1e-9),
    ("u", 1e-6),
    ("m", 1e-3),
    ("k", 1e3),
    ("M", 1e6),
    ("G", 1e9),
    ("T", 1e12),
    ("P", 1e15),
    ("E", 1e18),
];

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || QuantityError {
            text: text.to_owned(),
        };
        let (number, scale) = split_suffix(text);
        let unsigned = number.strip_prefix(['+', '-']).unwrap_or(number);
        let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (integer.is_empty() && fraction.is_empty())
            || !all_digits(integer)
            || !all_digits(fraction)
        {
            return Err(error());
        }
        let value = number.parse::<f64>().map_err(|_| error())? * scale;
        Ok(Quantity {
            text: text.to_owned(),
            value,
        })
    }
}

/// Splits a quantity into its signed decimal number and the multiplier of its suffix
/// (binary, decimal-SI or decimal exponent).
fn split_suffix(text: &str) -> (&str, f64) {
    if let Some((number, scale)) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| text.strip_suffix(suffix).map(|number| (number, *scale)))
    {
        return (number, scale);
    }
    if let Some(position) = text.find(['e', 'E']) {
        let exponent = &text[position + 1..];
        let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
        if !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && let Ok(exponent) = exponent.parse::<i32>()
        {
            return (&text[..position], 10f64.powi(exponent));
        }
    }
    (text, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("10m", 0.01)]
    #[case("1", 1.0)]
    #[case("0.5", 0.5)]
    #[case(".5", 0.5)]
    #[case("64Mi", 67_108_864.0)]
    #[case("1G", 1e9)]
    #[case("2e3", 2000.0)]
    #[case("1E", 1e18)]
    #[case("+3k", 3000.0)]
    fn parses_valid_quantities(#[case] text: &str, #[case] expected: f64) {
        let quantity: Quantity = text.parse().expect("valid quantity");
        assert!(
            (quantity.value() - expected).abs() <= expected * 1e-12,
            "{text}"
        );
        assert_eq!(quantity.as_str(), text);
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
    fn rejects_invalid_quantities(#[case] text: &str) {
        let error = text.parse::<Quantity>().expect_err("invalid quantity");
        assert!(error.to_string().contains("is not a Kubernetes quantity"));
    }
}
