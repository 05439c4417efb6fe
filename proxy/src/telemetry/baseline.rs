//! Burst counters with learned rates: what the burst detectors count, per key, and the rate
//! each key learned, so that a burst is a departure from the key's own history with the
//! configured threshold as a floor.
//!
//! One [`Counter`] is one kind of event (a denial, a 404, an authentication failure), counted
//! per key at a [`Scope`] (per source, per edge, per route). A new counter is one more
//! variant: its alert kind, what it counts, its scope and its floor.
//!
//! A key's [`Rate`] keeps two fixed windows (the previous and the current one) for a sliding
//! estimate of the events in the last `window`, and the learned rate: the mean events per
//! window, taught by every finished window while the source learns and afterwards by the
//! windows that stayed below the threshold (an exponentially weighted mean, the first
//! [`MEAN_WINDOWS`] windows weighted equally). An attack therefore never teaches its own
//! burst, and idle windows teach zero.

use serde::Serialize;

use super::alert::{AlertKind, Severity};
use super::config::DetectorConfig;
use super::flow::FlowEvent;

/// What a burst counter is keyed by, besides the counter itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The source alone.
    Source,
    /// Source and destination.
    Edge,
    /// Source, destination and route.
    Route,
}

/// One kind of event counted in bursts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Counter {
    /// Requests or connections denied by policy.
    Denied,
    /// Answers 404 Not Found.
    NotFound,
    /// Answers 401, and 403 sent by the application (a policy denial is [`Counter::Denied`]).
    AuthFailed,
    /// Requests whose end-user token was refused.
    InvalidToken,
}

impl Counter {
    /// Every counter.
    pub const ALL: [Counter; 4] = [
        Self::Denied,
        Self::NotFound,
        Self::AuthFailed,
        Self::InvalidToken,
    ];

    /// The wire name (admin `/detectors`, state file).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Denied => "denied",
            Self::NotFound => "not_found",
            Self::AuthFailed => "auth_failed",
            Self::InvalidToken => "invalid_token",
        }
    }

    /// The counter of a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The alert a burst raises.
    pub fn kind(self) -> AlertKind {
        match self {
            Self::Denied => AlertKind::DenyBurst,
            Self::NotFound => AlertKind::NotFoundBurst,
            Self::AuthFailed => AlertKind::AuthFailureBurst,
            Self::InvalidToken => AlertKind::InvalidTokenBurst,
        }
    }

    /// How urgent a burst is.
    pub fn severity(self) -> Severity {
        match self {
            Self::Denied | Self::AuthFailed | Self::InvalidToken => Severity::High,
            Self::NotFound => Severity::Medium,
        }
    }

    /// What the counter is keyed by.
    pub fn scope(self) -> Scope {
        match self {
            Self::Denied | Self::InvalidToken => Scope::Source,
            Self::NotFound => Scope::Edge,
            Self::AuthFailed => Scope::Route,
        }
    }

    /// The configured floor.
    pub fn floor(self, cfg: &DetectorConfig) -> usize {
        match self {
            Self::Denied | Self::InvalidToken => cfg.deny_burst_threshold,
            Self::NotFound => cfg.not_found_burst_threshold,
            Self::AuthFailed => cfg.auth_failure_burst_threshold,
        }
    }

    /// Whether `flow` is one of the events this counter counts.
    pub fn counts(self, flow: &FlowEvent<'_>) -> bool {
        match self {
            Self::Denied => flow.denied(),
            Self::NotFound => flow.status == Some(404),
            Self::AuthFailed => match flow.status {
                Some(401) => true,
                Some(403) => flow.application_answer(),
                _ => false,
            },
            Self::InvalidToken => flow.token_error.is_some(),
        }
    }

    /// The evidence name of the count.
    pub fn evidence(self) -> &'static str {
        match self {
            Self::Denied => "denied",
            Self::NotFound => "not_found",
            Self::AuthFailed => "auth_failures",
            Self::InvalidToken => "invalid_tokens",
        }
    }

    /// One sentence for the alert.
    pub fn summary(self, source: &str, n: u64, destination: &str, route: &str) -> String {
        match self {
            Self::Denied => format!("{source} was denied {n} times"),
            Self::NotFound => {
                format!("{source} got {n} answers 404 Not Found from {destination}")
            }
            Self::AuthFailed => format!(
                "{source} failed to authenticate {n} times on {destination} {route} (401/403)"
            ),
            Self::InvalidToken => format!("{source} sent {n} requests with a refused token"),
        }
    }
}

/// Windows weighted equally before the learned rate becomes an exponentially weighted mean.
pub const MEAN_WINDOWS: u32 = 16;

/// Idle windows folded one by one at most; past it the learned rate is zero anyway
/// ((15/16)^256 < 1e-7).
const MAX_IDLE_FOLDS: i64 = 256;

/// The counts and the learned rate of one key.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Rate {
    /// Start of the current fixed window, Unix milliseconds.
    pub window_start: i64,
    /// Events in the current window.
    pub current: u32,
    /// Events in the previous window.
    pub previous: u32,
    /// Learned events per window.
    pub learned: f64,
    /// Windows taught so far.
    pub windows: u32,
}

/// `window_start` of a rate seeded from a baseline: its first event starts its windows.
const UNSTARTED: i64 = i64::MIN;

impl Rate {
    /// A rate learned elsewhere (a baseline): `learned` events per window, as if taught by
    /// `windows` windows; its windows start with its first event.
    pub fn seeded(learned: f64, windows: u32) -> Self {
        Self {
            window_start: UNSTARTED,
            current: 0,
            previous: 0,
            learned,
            windows,
        }
    }

    /// A key first seen at `now`, with nothing learned.
    pub fn new(now: i64) -> Self {
        Self {
            window_start: now,
            current: 0,
            previous: 0,
            learned: 0.0,
            windows: 0,
        }
    }

    /// The threshold in force: `factor` times the learned rate, at least `floor`.
    pub fn threshold(&self, floor: usize, factor: u32) -> u64 {
        let learned = (self.learned * f64::from(factor)).ceil();
        // Saturating float-to-int conversion: a learned rate never exceeds u32 per window.
        let learned = if learned.is_finite() && learned > 0.0 {
            learned as u64
        } else {
            0
        };
        learned.max(floor as u64)
    }

    fn teach(&mut self, count: f64) {
        self.windows = self.windows.saturating_add(1);
        let weight = 1.0 / f64::from(self.windows.min(MEAN_WINDOWS));
        self.learned += weight * (count - self.learned);
    }

    /// Moves to the window holding `now`; finished windows teach the learned rate when
    /// `learning`, or when they stayed below `threshold`.
    fn roll(&mut self, now: i64, window: i64, learning: bool, threshold: u64) {
        if self.window_start == UNSTARTED {
            self.window_start = now;
            return;
        }
        let window = window.max(1);
        let elapsed = now.saturating_sub(self.window_start);
        if elapsed < window {
            return;
        }
        let passed = elapsed / window;
        if learning || u64::from(self.current) < threshold {
            self.teach(f64::from(self.current));
        }
        for _ in 1..passed.min(MAX_IDLE_FOLDS) {
            self.teach(0.0);
        }
        self.previous = if passed == 1 { self.current } else { 0 };
        self.current = 0;
        self.window_start = self
            .window_start
            .saturating_add(passed.saturating_mul(window));
    }

    /// Counts one event at `now` and returns the sliding estimate of events in the last
    /// `window` (the previous window weighted by how much of it is still inside) and the
    /// threshold in force.
    pub fn observe(
        &mut self,
        now: i64,
        window: i64,
        learning: bool,
        floor: usize,
        factor: u32,
    ) -> (u64, u64) {
        let threshold = self.threshold(floor, factor);
        self.roll(now, window, learning, threshold);
        self.current = self.current.saturating_add(1);
        (self.estimate(now, window), self.threshold(floor, factor))
    }

    /// The sliding estimate of events in the `window` ending at `now`.
    pub fn estimate(&self, now: i64, window: i64) -> u64 {
        let window = window.max(1);
        let into = now.saturating_sub(self.window_start).clamp(0, window);
        #[allow(clippy::cast_precision_loss)]
        let left = 1.0 - into as f64 / window as f64;
        let estimate = f64::from(self.previous) * left + f64::from(self.current);
        if estimate.is_finite() && estimate > 0.0 {
            estimate.round() as u64
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests;
