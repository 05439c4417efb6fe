#![allow(clippy::unwrap_used)]
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
