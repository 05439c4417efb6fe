#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn keys_round_trip_and_bad_keys_are_refused() {
    let k = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];
    assert_eq!(parse_key(&key_hex(k)), Some(k));
    assert_eq!(parse_key("xyz"), None);
    assert_eq!(parse_key(&"g".repeat(32)), None);
}
