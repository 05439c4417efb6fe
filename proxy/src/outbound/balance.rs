//! Balancing over the endpoints of a destination the discovery source knows.
//!
//! ```text
//! connection to a known address -> Balanced (one per address; follows the source's channel)
//!   -> EndpointSet (rebuilt when the answer changes; an endpoint that stays, same address and
//!      identity, keeps its HTTP/2 connection, latency estimate and failure state)
//!   -> power of two choices per request (HTTP) or per connection (opaque TCP): two distinct
//!      endpoints drawn at random, the lower load wins; load = peak-EWMA latency × (in flight + 1)
//!   -> that endpoint's mTLS connection, which verifies the SPIFFE ID pinned to it
//! ```
//!
//! Failure accrual: an endpoint whose connection attempts fail `failures` times in a row
//! (connect failure, TLS failure, a connection broken with a request in flight) is set aside
//! for a backoff ([`picket_common::backoff`], doubling up to `backoff_max`); once it is due,
//! the next pick that draws it sends one probe, and a probe that succeeds brings it back.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use picket_ca::SpiffeId;
use picket_common::backoff::Backoff;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::UpstreamCtx;
use crate::config::BalancerSettings;
use crate::discover::{Destination, Resolution};
use crate::metrics::Metrics;

/// The latency estimate of an endpoint that has not answered yet (Linkerd's default). Its
/// first answer replaces it.
pub(super) const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// What the balancer shares with every endpoint: its settings and its counters.
#[derive(Debug)]
pub(super) struct Tuning {
    pub(super) settings: BalancerSettings,
    metrics: Arc<Metrics>,
    chosen: Counter,
}

impl Tuning {
    pub(super) fn new(settings: BalancerSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            settings,
            chosen: metrics.balancer_counter("chosen"),
            metrics,
        }
    }
}

/// One destination address the source was asked about, following its answers.
///
/// A request reads the answer without a lock: a task follows the source's channel and only
/// marks the answer stale; the next request that sees the mark reads the channel and, for a
/// new `Known` answer, rebuilds the endpoints.
#[derive(Debug)]
pub(super) struct Balanced {
    /// The address the app dialled.
    pub(super) addr: SocketAddr,
    rx: watch::Receiver<Resolution>,
    /// Set by the follower when the source answered again.
    stale: Arc<AtomicBool>,
    /// The answer as last read, endpoints made ready.
    cached: ArcSwap<Current>,
    rebuild: Mutex<()>,
    /// Stops the follower when the destination is dropped.
    _follow: DropGuard,
}

/// The source's answer, with the endpoints made ready for a `Known` one.
#[derive(Debug, Clone)]
pub(super) enum Current {
    Pending,
    Unknown,
    Known(Arc<EndpointSet>),
}

impl Balanced {
    /// Follows `rx`; must run inside the runtime (it spawns the follower).
    pub(super) fn new(addr: SocketAddr, rx: watch::Receiver<Resolution>) -> Self {
        let stale = Arc::new(AtomicBool::new(true));
        let stop = CancellationToken::new();
        let mut follow = rx.clone();
        let (mark, stopped) = (Arc::clone(&stale), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stopped.cancelled() => break,
                    changed = follow.changed() => {
                        if changed.is_err() {
                            // The source ended: its last answer stays.
                            break;
                        }
                        mark.store(true, Ordering::Release);
                    }
                }
            }
        });
        Self {
            addr,
            rx,
            stale,
            cached: ArcSwap::from_pointee(Current::Pending),
            rebuild: Mutex::new(()),
            _follow: stop.drop_guard(),
        }
    }

    /// Waits at most `wait` for an answer other than `Pending`; whether one came.
    pub(super) async fn settle(&self, wait: Duration) -> bool {
        if !matches!(*self.rx.borrow(), Resolution::Pending) {
            return true;
        }
        let mut rx = self.rx.clone();
        let answered = rx.wait_for(|r| !matches!(r, Resolution::Pending));
        matches!(tokio::time::timeout(wait, answered).await, Ok(Ok(_)))
    }

    /// The current answer; a new `Known` answer's endpoints are made with `make` (the mTLS
    /// context of a meshed endpoint, pinned to its identity), keeping the endpoints that stay.
    pub(super) fn current(
        &self,
        make: &dyn Fn(SocketAddr, SpiffeId) -> Option<UpstreamCtx>,
    ) -> Current {
        if !self.stale.load(Ordering::Acquire) {
            return Current::clone(&self.cached.load());
        }
        let _one = self.rebuild.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.stale.swap(false, Ordering::AcqRel) {
            // Another request rebuilt it meanwhile.
            return Current::clone(&self.cached.load());
        }
        let answer = match &*self.rx.borrow() {
            Resolution::Pending => Current::Pending,
            Resolution::Unknown => Current::Unknown,
            Resolution::Known(d) => {
                let old = self.cached.load_full();
                let old = match &*old {
                    Current::Known(set) => Some(Arc::clone(set)),
                    _ => None,
                };
                match old {
                    Some(set) if Arc::ptr_eq(&set.source, d) => Current::Known(set),
                    old => Current::Known(Arc::new(EndpointSet::build(
                        Arc::clone(d),
                        old.as_deref(),
                        make,
                    ))),
                }
            }
        };
        self.cached.store(Arc::new(answer.clone()));
        answer
    }
}

/// The endpoints of one `Known` answer.
#[derive(Debug)]
pub(super) struct EndpointSet {
    source: Arc<Destination>,
    /// Endpoints with a sidecar, each with its mTLS contexts.
    pub(super) meshed: Vec<Arc<Endpoint>>,
    /// Endpoints without a sidecar.
    pub(super) unmeshed: Vec<Arc<Endpoint>>,
}

/// Which endpoints a pick draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pool {
    /// Those with a sidecar.
    Meshed,
    /// All of them (`outbound.unmeshed: plaintext`).
    All,
}

impl EndpointSet {
    fn build(
        source: Arc<Destination>,
        old: Option<&Self>,
        make: &dyn Fn(SocketAddr, SpiffeId) -> Option<UpstreamCtx>,
    ) -> Self {
        let mut meshed = Vec::new();
        let mut unmeshed = Vec::new();
        for e in &source.endpoints {
            let kept = old.and_then(|o| {
                o.meshed
                    .iter()
                    .chain(&o.unmeshed)
                    .find(|x| x.addr == e.address && x.identity == e.identity)
            });
            let endpoint = match (kept, &e.identity) {
                (Some(x), _) => Arc::clone(x),
                (None, None) => Arc::new(Endpoint::new(e.address, None, None)),
                (None, Some(id)) => match id.parse::<SpiffeId>() {
                    Ok(pinned) => match make(e.address, pinned) {
                        Some(ctx) => Arc::new(Endpoint::new(
                            e.address,
                            Some(id.clone()),
                            Some(Arc::new(ctx)),
                        )),
                        None => continue,
                    },
                    Err(err) => {
                        // Fail closed: an endpoint whose identity cannot be checked gets nothing.
                        tracing::warn!(endpoint = %e.address, identity = %id, error = %err, "endpoint left out: its identity is not a SPIFFE ID");
                        continue;
                    }
                },
            };
            if endpoint.upstream.is_some() {
                meshed.push(endpoint);
            } else {
                unmeshed.push(endpoint);
            }
        }
        Self {
            source,
            meshed,
            unmeshed,
        }
    }

    /// The `Service` behind the address, when the source named one.
    pub(super) fn service(&self) -> Option<&str> {
        self.source.service.as_deref()
    }

    fn get(&self, pool: Pool, i: usize) -> Option<&Arc<Endpoint>> {
        match pool {
            Pool::Meshed => self.meshed.get(i),
            Pool::All => self
                .meshed
                .get(i)
                .or_else(|| self.unmeshed.get(i.checked_sub(self.meshed.len())?)),
        }
    }

    fn len(&self, pool: Pool) -> usize {
        match pool {
            Pool::Meshed => self.meshed.len(),
            Pool::All => self.meshed.len() + self.unmeshed.len(),
        }
    }

    /// Picks an endpoint of `pool` by the power of two choices; `None` when the pool is empty
    /// or every endpoint in it is set aside.
    pub(super) fn pick(&self, pool: Pool, tuning: &Arc<Tuning>) -> Option<Lease> {
        let now = Instant::now();
        let n = self.len(pool);
        let chosen = match n {
            0 => return None,
            1 => self.get(pool, 0).and_then(|e| e.usable(now)),
            _ => {
                let a = random_below(n);
                let b = (a + 1 + random_below(n - 1)) % n;
                let pair = (self.get(pool, a), self.get(pool, b));
                match pair {
                    (Some(x), Some(y)) => {
                        let tau = tuning.settings.decay;
                        better(x.usable(now), y.usable(now), now, tau)
                            .or_else(|| self.least_loaded(pool, now, tau))
                    }
                    _ => None,
                }
            }
        }?;
        tuning.chosen.inc();
        let (endpoint, probe) = chosen;
        endpoint.pending.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            measure: endpoint.upstream.as_ref().is_none_or(|u| u.h2.connected()),
            endpoint,
            tuning: Arc::clone(tuning),
            start: now,
            probe,
            done: false,
        })
    }

    /// Both drawn endpoints were set aside: the least loaded ready endpoint of the pool, or
    /// else one whose probe is due.
    fn least_loaded(
        &self,
        pool: Pool,
        now: Instant,
        tau: Duration,
    ) -> Option<(Arc<Endpoint>, bool)> {
        let all = || (0..self.len(pool)).filter_map(|i| self.get(pool, i));
        if let Some(ready) = all()
            .filter(|e| e.health.ready())
            .min_by(|a, b| a.load(now, tau).total_cmp(&b.load(now, tau)))
        {
            return Some((Arc::clone(ready), false));
        }
        all()
            .find(|e| e.health.claim_probe(now))
            .map(|e| (Arc::clone(e), true))
    }
}

/// The better of two candidates: a due probe first, then the lower load.
fn better(
    a: Option<(Arc<Endpoint>, bool)>,
    b: Option<(Arc<Endpoint>, bool)>,
    now: Instant,
    tau: Duration,
) -> Option<(Arc<Endpoint>, bool)> {
    match (a, b) {
        (Some(a), Some(b)) => {
            if a.1 || (!b.1 && a.0.load(now, tau) <= b.0.load(now, tau)) {
                // A probe claimed on `b` but not used is handed back.
                if b.1 {
                    b.0.health.unclaim(now);
                }
                Some(a)
            } else {
                if a.1 {
                    a.0.health.unclaim(now);
                }
                Some(b)
            }
        }
        (a, b) => a.or(b),
    }
}

/// One endpoint of a destination.
#[derive(Debug)]
pub(super) struct Endpoint {
    pub(super) addr: SocketAddr,
    /// The identity the source pinned (absent: no sidecar).
    identity: Option<String>,
    /// The mTLS contexts, pinned to the identity (meshed endpoints only).
    pub(super) upstream: Option<Arc<UpstreamCtx>>,
    latency: Mutex<PeakEwma>,
    pending: AtomicU32,
    health: Health,
}

impl Endpoint {
    fn new(addr: SocketAddr, identity: Option<String>, upstream: Option<Arc<UpstreamCtx>>) -> Self {
        Self {
            addr,
            identity,
            upstream,
            latency: Mutex::new(PeakEwma::new(Instant::now())),
            pending: AtomicU32::new(0),
            health: Health::default(),
        }
    }

    /// This endpoint if it may be picked now, and whether the pick is its probe.
    fn usable(self: &Arc<Self>, now: Instant) -> Option<(Arc<Self>, bool)> {
        if self.health.ready() {
            return Some((Arc::clone(self), false));
        }
        self.health
            .claim_probe(now)
            .then(|| (Arc::clone(self), true))
    }

    /// The load: the latency estimate (nanoseconds) times the requests in flight plus one.
    fn load(&self, now: Instant, tau: Duration) -> f64 {
        let cost = self
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .estimate(now, tau);
        cost * f64::from(self.pending.load(Ordering::Relaxed).saturating_add(1))
    }
}

/// Peak-EWMA latency (Linkerd's and Finagle's): a sample above the estimate replaces it at
/// once; a lower sample is averaged in with weight `1 − e^(−Δt/τ)` (Δt since the last
/// sample), so a slow endpoint is avoided at once and trusted again gradually. Read without a
/// sample, the estimate fades as `e^(−Δt/τ)`.
#[derive(Debug)]
struct PeakEwma {
    /// Nanoseconds.
    cost: f64,
    stamp: Instant,
    observed: bool,
}

impl PeakEwma {
    fn new(now: Instant) -> Self {
        Self {
            cost: DEFAULT_RTT.as_secs_f64() * 1e9,
            stamp: now,
            observed: false,
        }
    }

    /// `e^(−Δt/τ)`, Δt since the last sample.
    fn decay(&self, now: Instant, tau: Duration) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        (-elapsed / tau.as_secs_f64().max(1e-9)).exp()
    }

    /// The estimate at `now`: it fades while no sample comes.
    fn estimate(&self, now: Instant, tau: Duration) -> f64 {
        self.cost * self.decay(now, tau)
    }

    fn observe(&mut self, rtt: Duration, now: Instant, tau: Duration) {
        let rtt = rtt.as_secs_f64() * 1e9;
        self.cost = if !self.observed || rtt > self.estimate(now, tau) {
            rtt
        } else {
            let w = self.decay(now, tau);
            self.cost * w + rtt * (1.0 - w)
        };
        self.observed = true;
        self.stamp = now;
    }
}

/// Failure accrual of one endpoint.
#[derive(Debug, Default)]
struct Health {
    /// Consecutive failures.
    failures: AtomicU32,
    /// Set aside (the fast check; the details are in `state`).
    aside: AtomicBool,
    state: Mutex<Aside>,
}

#[derive(Debug, Default)]
struct Aside {
    /// When a probe may go.
    until: Option<Instant>,
    /// A probe is in flight.
    probing: bool,
    backoff: Option<Backoff>,
}

impl Health {
    fn ready(&self) -> bool {
        !self.aside.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Aside> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims the probe of an endpoint set aside whose backoff has passed.
    fn claim_probe(&self, now: Instant) -> bool {
        let mut s = self.lock();
        if self.ready() || s.probing || s.until.is_none_or(|u| now < u) {
            return false;
        }
        s.probing = true;
        true
    }

    /// Hands back a probe claimed and not sent.
    fn unclaim(&self, now: Instant) {
        let mut s = self.lock();
        s.probing = false;
        s.until = Some(now);
    }

    /// A failure; the backoff when it sets the endpoint aside (again).
    fn failed(&self, probe: bool, settings: &BalancerSettings, now: Instant) -> Option<Duration> {
        let mut s = self.lock();
        if !self.ready() {
            // Only the probe's outcome counts while set aside.
            if !probe {
                return None;
            }
            s.probing = false;
            let delay = s
                .backoff
                .get_or_insert_with(|| Backoff::new(settings.backoff, settings.backoff_max))
                .next_delay();
            s.until = Some(now + delay);
            return Some(delay);
        }
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures < settings.failures {
            return None;
        }
        let mut backoff = Backoff::new(settings.backoff, settings.backoff_max);
        let delay = backoff.next_delay();
        *s = Aside {
            until: Some(now + delay),
            probing: false,
            backoff: Some(backoff),
        };
        self.aside.store(true, Ordering::Relaxed);
        Some(delay)
    }

    /// A success; whether it brought the endpoint back.
    fn succeeded(&self) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        if self.ready() {
            return false;
        }
        *self.lock() = Aside::default();
        self.aside.store(false, Ordering::Relaxed);
        true
    }
}

/// How a picked endpoint did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// It answered (any status) or the connection opened: a latency sample, failures reset.
    Answered,
    /// It could not be reached: connect or TLS failure, or the connection broke.
    Failed,
    /// No answer within the request timeout: the wait is a latency sample (a peak), not a
    /// failure of the endpoint's reachability.
    TimedOut,
    /// Neither (the client went away, the request body was malformed, the peer was
    /// draining): the endpoint's failure count and estimate stay as they are.
    Neutral,
}

/// A request or connection on a picked endpoint: counts it in flight until it ends, and takes
/// its outcome to the endpoint.
#[derive(Debug)]
pub(super) struct Lease {
    pub(super) endpoint: Arc<Endpoint>,
    tuning: Arc<Tuning>,
    start: Instant,
    probe: bool,
    /// Whether the time to the answer is a latency sample (the connection was already open:
    /// a handshake is no measure of the endpoint's latency).
    measure: bool,
    done: bool,
}

impl Lease {
    /// Makes the time to the outcome a latency sample even though it includes the connection's
    /// setup: what an opaque TCP connection or a plain connection measures.
    pub(super) fn measuring_setup(mut self) -> Self {
        self.measure = true;
        self
    }

    /// Records the outcome.
    pub(super) fn finish(mut self, outcome: Outcome) {
        self.done = true;
        let now = Instant::now();
        let tau = self.tuning.settings.decay;
        let e = &self.endpoint;
        match outcome {
            Outcome::Answered => {
                if self.measure {
                    e.latency
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .observe(now.saturating_duration_since(self.start), now, tau);
                }
                if e.health.succeeded() {
                    self.tuning.metrics.balancer("probed_back");
                    tracing::info!(endpoint = %e.addr, "endpoint probed back in");
                }
            }
            Outcome::Failed => {
                if let Some(delay) = e.health.failed(self.probe, &self.tuning.settings, now) {
                    self.tuning.metrics.balancer("set_aside");
                    tracing::warn!(endpoint = %e.addr, backoff = ?delay, probe = self.probe, "endpoint set aside after failures");
                }
            }
            Outcome::TimedOut => {
                e.latency
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .observe(now.saturating_duration_since(self.start), now, tau);
                if self.probe {
                    e.health.unclaim(now);
                }
            }
            Outcome::Neutral => {
                if self.probe {
                    e.health.unclaim(now);
                }
            }
        }
    }
}

/// How often a rate-limited log line may be written.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// One log line a minute at most for one kind of event; the metric counts every event.
#[derive(Debug, Default)]
pub(super) struct LogLimit {
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimit {
    /// Whether a line may be written now, with the number of events left unlogged since the
    /// last line.
    pub(super) fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match s.0 {
            Some(last) if now.saturating_duration_since(last) < LOG_EVERY => {
                s.1 = s.1.saturating_add(1);
                None
            }
            _ => {
                let suppressed = s.1;
                *s = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.pending.fetch_sub(1, Ordering::Relaxed);
        if !self.done && self.probe {
            self.endpoint.health.unclaim(Instant::now());
        }
    }
}

/// A uniform index below `n` (at least 1): xorshift64 per thread, seeded from the system's
/// random generator. Picks need no secrecy, and this costs a few instructions where the
/// cryptographic generator costs a lock and hundreds.
fn random_below(n: usize) -> usize {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        let n = n.max(1) as u64;
        usize::try_from(x % n).unwrap_or(0)
    })
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    // Without the system generator the picks are still spread, only predictable.
    let _ = picket_common::crypto::fill_random(&mut b);
    u64::from_le_bytes(b) | 1
}

#[cfg(test)]
mod tests;
