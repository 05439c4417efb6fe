//! Durations as people write them in flags and config files: `500ms`, `90s`, `30m`, `24h`, `7d`.
//!
//! One whole number followed by one unit, nothing else: no spaces, no fractions, no compound
//! forms like `1h30m`. Zero is accepted here; callers that need a positive value say so.

use std::time::Duration;

/// Why a string is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Not a whole number followed by a unit.
    #[error(
        "invalid duration {0:?}: write a whole number followed by ms, s, m, h or d (e.g. 90s, 24h)"
    )]
    Syntax(String),
    /// The unit is not one of `ms`, `s`, `m`, `h`, `d`.
    #[error("invalid duration {input:?}: unknown unit {unit:?}; use ms, s, m, h or d")]
    Unit {
        /// The whole input.
        input: String,
        /// The unit as written.
        unit: String,
    },
    /// The value does not fit in a duration.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses `500ms`, `90s`, `30m`, `24h` or `7d`.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let split = input
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(input.len());
    let (digits, unit) = input.split_at(split);
    if digits.is_empty() || unit.is_empty() {
        return Err(DurationError::Syntax(input.to_owned()));
    }
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(DurationError::Unit {
                input: input.to_owned(),
                unit: unit.to_owned(),
            });
        }
    };
    // `digits` holds only ASCII digits, so the only way to fail is to be too long.
    let value: u64 = digits
        .parse()
        .map_err(|_| DurationError::Overflow(input.to_owned()))?;
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| DurationError::Overflow(input.to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("30m").unwrap(), Duration::from_secs(30 * 60));
        assert_eq!(parse("24h").unwrap(), Duration::from_secs(24 * 3600));
        assert_eq!(parse("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_what_is_not_one_number_and_one_unit() {
        for bad in ["", "24", "h", "1.5h", "-1s", " 1s", "1s ", "1h30m", "+1s"] {
            assert!(
                matches!(
                    parse(bad),
                    Err(DurationError::Syntax(_) | DurationError::Unit { .. })
                ),
                "{bad:?} should be rejected"
            );
        }
        assert!(matches!(parse("3w"), Err(DurationError::Unit { unit, .. }) if unit == "w"));
    }

    #[test]
    fn rejects_overflow() {
        assert!(matches!(
            parse("99999999999999999999s"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse("18446744073709551615d"),
            Err(DurationError::Overflow(_))
        ));
    }
}
