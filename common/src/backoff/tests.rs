#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::{Backoff, renewal_delay};

#[test]
fn renews_at_two_thirds_of_lifetime_within_jitter() {
    let d = renewal_delay(0, 30, 0, 0.5);
    assert_eq!(d, Duration::from_secs(20));
    let early = renewal_delay(0, 3000, 0, 0.0);
    let late = renewal_delay(0, 3000, 0, 1.0);
    assert_eq!(early, Duration::from_secs(1850));
    assert_eq!(late, Duration::from_secs(2150));
}

#[test]
fn overdue_renewal_is_immediate() {
    assert_eq!(renewal_delay(0, 30, 100, 0.5), Duration::ZERO);
}

#[test]
fn full_jitter_spans_zero_to_the_doubling_ceiling() {
    let b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    assert_eq!(b.delay(0, 0.0), Duration::ZERO);
    assert_eq!(b.delay(0, 1.0), Duration::from_millis(500));
    assert_eq!(b.delay(1, 0.5), Duration::from_millis(500));
    assert_eq!(b.delay(3, 1.0), Duration::from_secs(4));
    assert_eq!(b.delay(10, 1.0), Duration::from_secs(30));
    assert_eq!(b.delay(u32::MAX, 1.0), Duration::from_secs(30));
}

#[test]
fn backoff_grows_and_caps() {
    let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    assert!(b.next_delay() <= Duration::from_millis(500));
    for _ in 0..40 {
        assert!(b.next_delay() <= Duration::from_secs(30));
    }
}
