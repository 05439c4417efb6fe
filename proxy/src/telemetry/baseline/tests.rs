use super::*;
use crate::telemetry::flow::{FlowRecord, Verdict};

const W: i64 = 60_000;

#[test]
fn a_new_key_alerts_at_its_floor() {
    let mut r = Rate::new(0);
    let mut last = (0, 0);
    for i in 0..10 {
        last = r.observe(i * 100, W, false, 10, 3);
    }
    assert_eq!(last, (10, 10));
}

#[test]
fn a_steady_rate_is_learned_and_stays_below_its_threshold() {
    let mut r = Rate::new(0);
    // 45 events a minute, 10 minutes of learning, then an hour.
    let mut worst = 0u64;
    for i in 0..(70 * 45) {
        let now = i * W / 45;
        let learning = now < 10 * W;
        let (n, threshold) = r.observe(now, W, learning, 20, 3);
        if !learning {
            assert!(n < threshold, "{n} >= {threshold} at {now}: {r:?}");
            worst = worst.max(n);
        }
    }
    assert!((44.0..=46.0).contains(&r.learned), "{r:?}");
    assert!(worst <= 46, "{worst}");
}

#[test]
fn a_burst_does_not_teach_itself() {
    let mut r = Rate::new(0);
    for i in 0..100 {
        r.observe(i * 1000, W, false, 10, 3);
    }
    // The burst window is not taught: the next window's threshold is still the floor.
    let (_, threshold) = r.observe(2 * W + 1, W, false, 10, 3);
    assert_eq!(threshold, 10, "{r:?}");
}

#[test]
fn a_seeded_rate_starts_with_its_first_event() {
    let mut r = Rate::seeded(45.0, MEAN_WINDOWS);
    let (n, threshold) = r.observe(1_000_000, W, false, 20, 3);
    assert_eq!((n, threshold), (1, 135));
    assert_eq!(r.window_start, 1_000_000);
    assert!((r.learned - 45.0).abs() < 1e-9);
}

#[test]
fn idle_windows_teach_zero() {
    let mut r = Rate::new(0);
    for i in 0..30 {
        r.observe(i * 1000, W, true, 10, 3);
    }
    r.observe(W + 1, W, true, 10, 3);
    assert!(r.learned > 10.0, "{r:?}");
    r.observe(400 * W, W, false, 10, 3);
    assert!(r.learned < 0.001, "{r:?}");
    assert_eq!(r.previous, 0);
}

#[test]
fn application_403_is_an_auth_failure_and_a_policy_denial_is_not() {
    let mut f = FlowRecord::new(
        time::OffsetDateTime::UNIX_EPOCH,
        crate::direction::Direction::Inbound,
        super::super::flow::FlowProtocol::Http1,
    );
    f.status = Some(403);
    f.verdict = Some(Verdict::Allow);
    assert!(Counter::AuthFailed.counts(&f.event()));
    f.verdict = Some(Verdict::Deny);
    assert!(!Counter::AuthFailed.counts(&f.event()));
    assert!(Counter::Denied.counts(&f.event()));
    f.verdict = None;
    assert!(
        !Counter::AuthFailed.counts(&f.event()),
        "no verdict: cannot tell"
    );
    f.status = Some(401);
    assert!(Counter::AuthFailed.counts(&f.event()));
    for c in Counter::ALL {
        assert_eq!(Counter::parse(c.as_str()), Some(c));
    }
}
