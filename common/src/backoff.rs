//! When to try again: exponential backoff with full jitter, and when to renew a certificate.

use std::time::Duration;

use crate::crypto::random_unit;

/// Exponential backoff with full jitter: the n-th delay is drawn uniformly from
/// `[0, min(cap, base × 2ⁿ)]`, so clients that failed together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff whose ceiling starts at `base` and doubles up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.delay(self.attempt, random_unit());
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// The ceiling for attempt `attempt`, scaled by `unit` (in `[0, 1)`).
    fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.cap);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// When to renew a certificate usable from `start` to `not_after` (Unix seconds), seen at
/// `now`: at two thirds of that lifetime, moved by up to ±5 % of it by `jitter_unit` (in
/// `[0, 1)`, 0.5 for none) so a fleet started together spreads out.
pub fn renewal_delay(start: i64, not_after: i64, now: i64, jitter_unit: f64) -> Duration {
    let lifetime = (not_after - start).max(1) as f64;
    let at = start as f64 + lifetime * (2.0 / 3.0) + lifetime * 0.1 * (jitter_unit - 0.5);
    let secs = (at - now as f64).max(0.0);
    Duration::from_secs_f64(secs)
}

#[cfg(test)]
mod tests;
