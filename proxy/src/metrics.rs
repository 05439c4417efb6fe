//! Prometheus metrics. Every label is bounded by design: directions, outcomes, reasons and
//! status classes come from fixed sets; no raw paths, addresses or free text.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::direction::Direction;

/// Labels of `picket_tcp_connections_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    /// Side.
    pub direction: Direction,
    /// `accepted`, `refused_limit`, `tls_failed`, `connect_failed`.
    pub outcome: &'static str,
}

/// Labels of `picket_balancer_decisions_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BalancerLabels {
    /// One of [`BALANCER_DECISIONS`].
    pub decision: &'static str,
}

/// Every value of the `decision` label of `picket_balancer_decisions_total`: an endpoint
/// `chosen` for a request or connection, `set_aside` after failures, `probed_back` after a
/// successful probe; `any_identity` (a destination the source does not know, carried with the
/// `identity: any` expectation), `unmeshed_plaintext` and `unmeshed_denied` (an endpoint
/// without a sidecar), `no_endpoints` (a known destination with no endpoint to use),
/// `pending_timeout` (the source gave no answer within `outbound.balancer.pending_wait`).
pub const BALANCER_DECISIONS: [&str; 8] = [
    "chosen",
    "set_aside",
    "probed_back",
    "any_identity",
    "unmeshed_plaintext",
    "unmeshed_denied",
    "no_endpoints",
    "pending_timeout",
];

/// Labels of `picket_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Side.
    pub direction: Direction,
    /// `1xx` .. `5xx`.
    pub status_class: &'static str,
}

/// Labels of `picket_request_duration_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// Side.
    pub direction: Direction,
}

/// Labels of `picket_tls_handshake_failures_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// Side.
    pub direction: Direction,
    /// A short reason from a fixed set, see `tls::failure_reason`.
    pub reason: &'static str,
}

/// Labels of `picket_tls_handshakes_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KxLabels {
    /// Side.
    pub direction: Direction,
    /// The negotiated key-exchange group, see [`picket_common::crypto::KxGroup::as_str`].
    pub kx: &'static str,
}

/// Labels of `picket_ca_tls_handshakes_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaKxLabels {
    /// The negotiated key-exchange group.
    pub kx: &'static str,
}

/// Labels of `picket_cert_renewals_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RenewalLabels {
    /// `ok` or `failed`.
    pub result: &'static str,
}

/// The deciding policy as a label value: `ns/name`, or `none` when the mesh default decided.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct PolicyLabel(pub Option<picket_policy::PolicyRef>);

impl EncodeLabelValue for PolicyLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        match &self.0 {
            Some(p) => fmt::Write::write_fmt(encoder, format_args!("{p}")),
            None => fmt::Write::write_str(encoder, "none"),
        }
    }
}

/// Labels of `picket_authz_decisions_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allow` or `deny` (for dry-run: what the policy would have decided).
    pub verdict: &'static str,
    /// The deciding policy.
    pub policy: PolicyLabel,
    /// `explicit-deny`, `no-allow-match`, `unauthenticated`, `default`, `allow-match`.
    pub reason: &'static str,
    /// `enforce` for the decision in force, `dry-run` for shadow verdicts.
    pub mode: &'static str,
}

/// Labels of `picket_jwt_validations_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JwtLabels {
    /// `ok`, or the reason a token was refused (`crate::jwt::TokenError::as_str`).
    pub result: &'static str,
}

/// Labels of `picket_jwt_jwks_fetches_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JwksFetchLabels {
    /// The `jwksUri` (bounded by the policy files).
    pub jwks: String,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels of `picket_jwt_jwks_key_age_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JwksLabels {
    /// The `jwksUri`.
    pub jwks: String,
}

/// The status classes of `picket_requests_total`, in the order [`status_class`] numbers them.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index of a status in [`STATUS_CLASSES`].
fn status_class(status: http::StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// The index of a direction in [`RequestSeries`].
fn direction_index(direction: Direction) -> usize {
    match direction {
        Direction::Inbound => 0,
        Direction::Outbound => 1,
    }
}

/// The series every request counts in, kept once taken from their families: a handle shares
/// its family's series (the same atomic counter or histogram), so a request counts without
/// hashing a label set and without the family's lock. Each handle is taken the first time its
/// series is used, so the exposition lists the same series as without these handles.
#[derive(Default)]
struct RequestSeries {
    requests: [[OnceLock<Counter>; STATUS_CLASSES.len()]; 2],
    duration: [OnceLock<Histogram>; 2],
}

/// The `picket_authz_decisions_total` series used so far, kept once taken from the family, as
/// [`RequestSeries`] keeps its handles: a sidecar's decisions fall on few label sets (a policy
/// with its verdict and reason), and a decision finds its series by comparing labels in this
/// list, read without a lock, instead of hashing them under the family's lock. The list holds
/// at most [`DecisionSeries::MAX`] series; a decision on another one goes to the family.
#[derive(Default)]
struct DecisionSeries {
    seen: arc_swap::ArcSwap<Vec<(DecisionLabels, Counter)>>,
}

impl DecisionSeries {
    const MAX: usize = 16;

    fn inc(
        &self,
        family: &Family<DecisionLabels, Counter>,
        verdict: &'static str,
        policy: Option<&picket_policy::PolicyRef>,
        reason: &'static str,
        mode: &'static str,
    ) {
        let same = |l: &DecisionLabels| {
            l.verdict == verdict
                && l.reason == reason
                && l.mode == mode
                && l.policy.0.as_ref() == policy
        };
        if let Some((_, counter)) = self.seen.load().iter().find(|(l, _)| same(l)) {
            counter.inc();
            return;
        }
        let labels = DecisionLabels {
            verdict,
            policy: PolicyLabel(policy.cloned()),
            reason,
            mode,
        };
        let counter = family.get_or_create(&labels).clone();
        counter.inc();
        if self.seen.load().len() < Self::MAX {
            self.seen.rcu(|seen| {
                let mut next = Vec::clone(seen);
                if next.len() < Self::MAX && !next.iter().any(|(l, _)| same(l)) {
                    next.push((labels.clone(), counter.clone()));
                }
                next
            });
        }
    }
}

/// Called before each exposition, to set gauges that are computed rather than counted.
pub type BeforeEncode = Box<dyn Fn(&Metrics) + Send + Sync>;

/// All metric handles of one sidecar.
pub struct Metrics {
    registry: Registry,
    /// Connections by direction and outcome.
    pub connections: Family<ConnLabels, Counter>,
    /// Requests by direction and status class.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency to the response head.
    pub request_duration: Family<DirectionLabels, Histogram>,
    /// Failed TLS handshakes by reason.
    pub handshake_failures: Family<HandshakeLabels, Counter>,
    /// Completed data-path TLS handshakes by key-exchange group.
    handshakes: Family<KxLabels, Counter>,
    /// Completed TLS handshakes with the CA by key-exchange group.
    ca_handshakes: Family<CaKxLabels, Counter>,
    /// Bytes spliced on opaque TCP connections, by direction.
    tcp_bytes: Family<DirectionLabels, Counter>,
    /// Requests shed because too many were in flight, by direction.
    requests_shed: Family<DirectionLabels, Counter>,
    /// HTTP/1 app connections parked between requests (`net::park`).
    pub http1_parked: Gauge<i64, AtomicI64>,
    /// Parks of HTTP/1 connections since the start.
    pub http1_parks: Counter,
    /// Not-after of the current certificate, Unix seconds.
    pub cert_expiry: Gauge<i64, AtomicI64>,
    /// Renewal attempts by result.
    pub cert_renewals: Family<RenewalLabels, Counter>,
    /// Authorization decisions.
    authz_decisions: Family<DecisionLabels, Counter>,
    /// Policy reloads that failed (the last good policy stayed in force).
    pub policy_reload_failures: Counter,
    /// Tokens validated or refused, by result.
    jwt_validations: Family<JwtLabels, Counter>,
    /// JWKS fetches by URL and result.
    jwks_fetches: Family<JwksFetchLabels, Counter>,
    /// Age of the keys in force per JWKS URL (-1 while there are none).
    jwks_key_age: Family<JwksLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Balancer decisions.
    balancer: Family<BalancerLabels, Counter>,
    before_encode: std::sync::Mutex<Vec<BeforeEncode>>,
    /// Handles of `requests` and `request_duration`, as requests use them.
    series: RequestSeries,
    /// Handles of `authz_decisions`, as decisions use them.
    decision_series: DecisionSeries,
    /// Alert and dropped-telemetry families, handed to the telemetry pipeline.
    pub telemetry: crate::telemetry::TelemetryMetrics,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn duration_histogram() -> Histogram {
    // 100 µs .. ~26 s, doubling.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 19,
    ))
}

impl Metrics {
    /// Registers every family. The exposition lists them in the order registered:
    /// authentication, the data path, identity and policy, balancing, then telemetry.
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            connections: Family::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(duration_histogram),
            handshake_failures: Family::default(),
            handshakes: Family::default(),
            ca_handshakes: Family::default(),
            tcp_bytes: Family::default(),
            requests_shed: Family::default(),
            http1_parked: Gauge::default(),
            http1_parks: Counter::default(),
            cert_expiry: Gauge::default(),
            cert_renewals: Family::default(),
            authz_decisions: Family::default(),
            policy_reload_failures: Counter::default(),
            jwt_validations: Family::default(),
            jwks_fetches: Family::default(),
            jwks_key_age: Family::default(),
            balancer: Family::default(),
            before_encode: std::sync::Mutex::new(Vec::new()),
            series: RequestSeries::default(),
            decision_series: DecisionSeries::default(),
            telemetry: crate::telemetry::TelemetryMetrics::default(),
        };
        m.register_authentication();
        m.register_data_path();
        m.register_identity_and_policy();
        m.registry.register(
            "picket_balancer_decisions",
            "Outbound balancing decisions over discovered endpoints, by decision",
            m.balancer.clone(),
        );
        m.telemetry = crate::telemetry::TelemetryMetrics::register(&mut m.registry);
        m
    }

    /// End-user request authentication: token validations and JWKS fetches.
    fn register_authentication(&mut self) {
        self.registry.register(
            "picket_jwt_validations",
            "Request tokens validated (ok) or refused, by reason",
            self.jwt_validations.clone(),
        );
        self.registry.register(
            "picket_jwt_jwks_fetches",
            "JWKS fetches by URL and result; on error the last good keys stay in force",
            self.jwks_fetches.clone(),
        );
        self.registry.register(
            "picket_jwt_jwks_key_age_seconds",
            "Seconds since the JWKS keys in force were fetched, by URL; -1 while there are none",
            self.jwks_key_age.clone(),
        );
    }

    /// The data path: connections, requests, handshakes and bytes.
    fn register_data_path(&mut self) {
        self.registry.register(
            "picket_tcp_connections",
            "TCP connections by direction and outcome",
            self.connections.clone(),
        );
        self.registry.register(
            "picket_requests",
            "HTTP requests by direction and response status class",
            self.requests.clone(),
        );
        self.registry.register(
            "picket_request_duration_seconds",
            "Time from request head to response head",
            self.request_duration.clone(),
        );
        self.registry.register(
            "picket_tls_handshake_failures",
            "Failed TLS handshakes by direction and reason",
            self.handshake_failures.clone(),
        );
        self.registry.register(
            "picket_tls_handshakes",
            "Completed mTLS handshakes with peers by direction and negotiated key-exchange group",
            self.handshakes.clone(),
        );
        self.registry.register(
            "picket_ca_tls_handshakes",
            "Completed TLS handshakes with the CA by negotiated key-exchange group",
            self.ca_handshakes.clone(),
        );
        self.registry.register(
            "picket_tcp_bytes",
            "Bytes copied on opaque TCP connections, by direction",
            self.tcp_bytes.clone(),
        );
        self.registry.register(
            "picket_requests_shed",
            "HTTP requests answered 503 at once because too many were in flight, by direction",
            self.requests_shed.clone(),
        );
        self.registry.register(
            "picket_http1_parked_connections",
            "HTTP/1 connections on plain TCP parked between requests: idle, holding no HTTP buffers",
            self.http1_parked.clone(),
        );
        self.registry.register(
            "picket_http1_parks",
            "Times an idle HTTP/1 connection on plain TCP gave up its HTTP buffers until its next request",
            self.http1_parks.clone(),
        );
    }

    /// The workload certificate, authorization decisions and policy reloads.
    fn register_identity_and_policy(&mut self) {
        self.registry.register(
            "picket_cert_expiry_timestamp_seconds",
            "Not-after of the workload certificate in force, as Unix time",
            self.cert_expiry.clone(),
        );
        self.registry.register(
            "picket_cert_renewals",
            "Certificate renewal attempts by result",
            self.cert_renewals.clone(),
        );
        self.registry.register(
            "picket_authz_decisions",
            "Authorization decisions by verdict, deciding policy, reason and mode",
            self.authz_decisions.clone(),
        );
        self.registry.register(
            "picket_policy_reload_failures",
            "Policy reloads that failed; the last good policy stayed in force",
            self.policy_reload_failures.clone(),
        );
    }

    /// How a side parks its idle HTTP/1 connections after `delay`, counted in
    /// `picket_http1_parked_connections` and `picket_http1_parks_total` (`net::park`).
    pub fn parking(&self, delay: std::time::Duration) -> crate::net::Parking {
        crate::net::Parking {
            delay,
            parked: self.http1_parked.clone(),
            parks: self.http1_parks.clone(),
        }
    }

    /// Counts a connection outcome.
    pub fn connection(&self, direction: Direction, outcome: &'static str) {
        self.connections
            .get_or_create(&ConnLabels { direction, outcome })
            .inc();
    }

    /// The counter of one balancer decision (one of [`BALANCER_DECISIONS`]), for a caller
    /// that counts it often and keeps the handle.
    pub fn balancer_counter(&self, decision: &'static str) -> Counter {
        self.balancer
            .get_or_create(&BalancerLabels { decision })
            .clone()
    }

    /// Counts one balancer decision (one of [`BALANCER_DECISIONS`]).
    pub fn balancer(&self, decision: &'static str) {
        self.balancer
            .get_or_create(&BalancerLabels { decision })
            .inc();
    }

    /// Counts a failed handshake.
    pub fn handshake_failed(&self, direction: Direction, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&HandshakeLabels { direction, reason })
            .inc();
        self.connection(direction, "tls_failed");
    }

    /// Counts a completed mTLS handshake with a peer and the group it agreed on.
    pub fn handshake(&self, direction: Direction, kx: picket_common::crypto::KxGroup) {
        self.handshakes
            .get_or_create(&KxLabels {
                direction,
                kx: kx.as_str(),
            })
            .inc();
    }

    /// Counts a completed TLS handshake with the CA and the group it agreed on.
    pub fn ca_handshake(&self, kx: picket_common::crypto::KxGroup) {
        self.ca_handshakes
            .get_or_create(&CaKxLabels { kx: kx.as_str() })
            .inc();
    }

    /// Records a finished request.
    pub fn request(
        &self,
        direction: Direction,
        status: http::StatusCode,
        elapsed: std::time::Duration,
    ) {
        let d = direction_index(direction);
        let class = status_class(status);
        self.series.requests[d][class]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        direction,
                        status_class: STATUS_CLASSES[class],
                    })
                    .clone()
            })
            .inc();
        self.series.duration[d]
            .get_or_init(|| {
                self.request_duration
                    .get_or_create(&DirectionLabels { direction })
                    .clone()
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts an authorization decision and its dry-run shadows.
    pub fn authz_decision(&self, d: &picket_policy::Decision) {
        self.decision_series.inc(
            &self.authz_decisions,
            d.verdict.as_str(),
            d.policy.as_ref(),
            d.reason.as_str(),
            "enforce",
        );
        for s in &d.shadows {
            self.decision_series.inc(
                &self.authz_decisions,
                s.would.as_str(),
                Some(&s.policy),
                "dry-run",
                "dry-run",
            );
        }
    }

    /// Counts a request shed by the per-direction request limit.
    pub fn request_shed(&self, direction: Direction) {
        self.requests_shed
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }

    /// Counts bytes spliced on an opaque TCP connection.
    pub fn tcp_bytes(&self, direction: Direction, n: u64) {
        self.tcp_bytes
            .get_or_create(&DirectionLabels { direction })
            .inc_by(n);
    }

    /// Counts a token validated (`ok`) or refused (the reason).
    pub fn jwt_validation(&self, result: &'static str) {
        self.jwt_validations
            .get_or_create(&JwtLabels { result })
            .inc();
    }

    /// Counts a JWKS fetch of `jwks` with `result` (`ok` or `error`).
    pub fn jwks_fetch(&self, jwks: &str, result: &'static str) {
        self.jwks_fetches
            .get_or_create(&JwksFetchLabels {
                jwks: jwks.to_owned(),
                result,
            })
            .inc();
    }

    /// Sets the age of the keys of `jwks` (`None`: no keys yet).
    pub fn jwks_key_age(&self, jwks: &str, age: Option<std::time::Duration>) {
        self.jwks_key_age
            .get_or_create(&JwksLabels {
                jwks: jwks.to_owned(),
            })
            .set(age.map_or(-1.0, |a| a.as_secs_f64()));
    }

    /// Registers `f` to run before each exposition.
    pub fn before_encode(&self, f: BeforeEncode) {
        self.before_encode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(f);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        for f in self
            .before_encode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            f(self);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests;
