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
mod tests;
