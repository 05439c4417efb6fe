//! Lateral-movement detectors: cheap, bounded, deterministic.
//!
//! Every table is capped at `max_tracked` entries and evicts the entry inserted first. Keys
//! are 64-bit SipHash digests (random keys per process) of the strings they stand for, so a
//! table entry costs a few machine words whatever the length of identities and paths. Time is
//! a parameter of every call, so tests replay scripted scenarios exactly.
//!
//! | kind | raised when (per source, inside `window` unless said) |
//! | --- | --- |
//! | `new_edge` | after the learning window, a (source, destination, port, route) never seen before or in the baseline |
//! | `port_scan` | `fanout_threshold` distinct destination ports |
//! | `path_scan` | `fanout_threshold` distinct routes answered 4xx or denied |
//! | `fan_out` | `fanout_threshold` distinct destinations |
//! | `deny_burst` | `deny_burst_threshold` denials |
//! | `not_found_burst` | `not_found_burst_threshold` 404s |
//! | `unauthenticated` | a handshake failure `not_tls`, `no_client_cert`, `untrusted`, `foreign_trust_domain` |
//! | `new_source_address` | after the learning window, a known identity from an IP it never used |
//! | `sensitive_path` | a request for a configured sensitive path prefix |
//! | `metadata_access` | an outbound call to a cloud metadata address |
//! | `invalid_token_burst` | `deny_burst_threshold` requests whose end-user token was refused (401) |
//!
//! Each alert is rate-limited per (kind, source, destination): repeats within `rate_limit`
//! are counted and reported as `suppressed` in the next alert.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::io::BufRead;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::alert::{Alert, AlertKind, Severity};
use super::config::DetectorConfig;
use super::flow::{FlowProtocol, FlowRecord, LineType};
use crate::direction::Direction;

/// One known edge in a baseline file (`"type":"edge"` lines, written by `picket analyze
/// --write-baseline`). A baseline may also be a flow log: every flow line is an edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineEdge {
    /// Always [`LineType::Edge`].
    #[serde(rename = "type")]
    pub line_type: LineType,
    /// Source SPIFFE ID (or IP when the source had none).
    pub source: String,
    /// Destination SPIFFE ID (or address or host).
    pub destination: String,
    /// Destination port, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `METHOD /path/template`, or `tcp`.
    pub route: String,
}

/// Handshake failure reasons that mean someone tried the meshed port without a valid mesh
/// identity.
pub const UNAUTHENTICATED_REASONS: [&str; 4] = [
    "not_tls",
    "no_client_cert",
    "untrusted",
    "foreign_trust_domain",
];

/// Hasher for keys that already are SipHash digests.
#[derive(Debug, Default, Clone, Copy)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type DigestMap<V> = HashMap<u64, V, BuildHasherDefault<DigestHasher>>;

/// A map capped at `cap` entries that evicts the entry inserted first.
#[derive(Debug)]
struct Bounded<V> {
    map: DigestMap<V>,
    order: VecDeque<u64>,
    cap: usize,
}

impl<V> Bounded<V> {
    fn new(cap: usize) -> Self {
        Self {
            map: DigestMap::default(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn contains(&self, key: u64) -> bool {
        self.map.contains_key(&key)
    }

    /// The entry for `key`, inserted with `make` (evicting the oldest entry) if absent.
    fn entry(&mut self, key: u64, make: impl FnOnce() -> V) -> &mut V {
        if !self.map.contains_key(&key) {
            while self.map.len() >= self.cap {
                match self.order.pop_front() {
                    Some(old) => {
                        self.map.remove(&old);
                    }
                    None => break,
                }
            }
            self.order.push_back(key);
        }
        self.map.entry(key).or_insert_with(make)
    }

    fn heap_bytes(&self) -> usize {
        // hashbrown: one control byte per bucket plus the slots; the deque's ring buffer.
        self.map.capacity() * (size_of::<(u64, V)>() + 1) + self.order.capacity() * 8
    }
}

/// Distinct items seen inside the window, most recent timestamp each, at most `cap` kept.
#[derive(Debug, Default)]
struct Distinct {
    items: Vec<(u64, i64)>,
}

impl Distinct {
    /// Records `item` at `now`; returns how many distinct items are inside the window.
    fn observe(&mut self, item: u64, now: i64, window: i64, cap: usize) -> usize {
        self.items.retain(|(_, t)| now - *t < window);
        if let Some(e) = self.items.iter_mut().find(|(k, _)| *k == item) {
            e.1 = now;
        } else {
            if self.items.len() >= cap
                && let Some(oldest) = self
                    .items
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(i, _)| i)
            {
                self.items.swap_remove(oldest);
            }
            self.items.push((item, now));
        }
        self.items.len()
    }

    fn oldest(&self) -> Option<i64> {
        self.items.iter().map(|(_, t)| *t).min()
    }
}

/// Event times inside the window, at most `cap` kept.
#[derive(Debug, Default)]
struct Burst {
    times: VecDeque<i64>,
}

impl Burst {
    fn observe(&mut self, now: i64, window: i64, cap: usize) -> usize {
        while self.times.front().is_some_and(|t| now - *t >= window) {
            self.times.pop_front();
        }
        if self.times.len() >= cap {
            self.times.pop_front();
        }
        self.times.push_back(now);
        self.times.len()
    }
}

/// Windowed counters of one source.
#[derive(Debug, Default)]
struct SourceState {
    ports: Distinct,
    failing_routes: Distinct,
    destinations: Distinct,
    denials: Burst,
    not_found: Burst,
    invalid_tokens: Burst,
}

/// Handshake failures from one IP.
#[derive(Debug)]
struct HandshakeState {
    window_start: i64,
    counts: [u64; UNAUTHENTICATED_REASONS.len()],
}

/// Per-key rate limit state.
#[derive(Debug)]
struct RateState {
    last: i64,
    suppressed: u64,
}

/// A sensitive path prefix.
#[derive(Debug, Clone)]
struct PathRule {
    prefix: String,
    /// `true` when written with a trailing `*`: any continuation matches.
    open: bool,
}

impl PathRule {
    fn parse(s: &str) -> Self {
        match s.strip_suffix('*') {
            Some(p) => Self {
                prefix: p.to_ascii_lowercase(),
                open: true,
            },
            None => Self {
                prefix: s.trim_end_matches('/').to_ascii_lowercase(),
                open: false,
            },
        }
    }

    fn matches(&self, path: &str) -> bool {
        let p = path.as_bytes();
        let pre = self.prefix.as_bytes();
        if p.len() < pre.len() || !p[..pre.len()].eq_ignore_ascii_case(pre) {
            return false;
        }
        self.open || p.len() == pre.len() || p[pre.len()] == b'/'
    }
}

/// The detectors of one sidecar.
#[derive(Debug)]
pub struct Detectors {
    cfg: DetectorConfig,
    sensitive: Vec<PathRule>,
    /// `metadata_addresses` that are IP addresses, parsed once.
    metadata_ips: Vec<IpAddr>,
    hasher: RandomState,
    started: Option<i64>,
    baseline: HashSet<u64, BuildHasherDefault<DigestHasher>>,
    edges: Bounded<()>,
    sources: Bounded<SourceState>,
    addresses: Bounded<Vec<IpAddr>>,
    handshakes: Bounded<HandshakeState>,
    rate: Bounded<RateState>,
}

/// Source addresses remembered per identity.
const ADDRESSES_PER_IDENTITY: usize = 16;

fn millis(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn from_millis(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The host part of `host`, `host:port`, `ip:port` or `[v6]:port`, lowercased.
pub fn host_only(addr: &str) -> String {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return sa.ip().to_string();
    }
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return ip.to_string();
    }
    let h = match addr.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => addr,
    };
    h.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Who a flow came from, as a detector key and for the alert.
struct Source<'r> {
    identity: Option<&'r str>,
    ip: Option<IpAddr>,
}

impl Source<'_> {
    fn label(&self) -> String {
        match (self.identity, self.ip) {
            (Some(id), _) => id.to_owned(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => "unknown".to_owned(),
        }
    }
}

struct Pending {
    kind: AlertKind,
    severity: Severity,
    destination: Option<String>,
    evidence: Vec<(&'static str, u64)>,
    window: bool,
    first_seen: i64,
    summary: String,
}

impl Detectors {
    /// Detectors with `cfg` and no baseline. The learning window starts at the first
    /// observation.
    pub fn new(cfg: &DetectorConfig) -> Self {
        let cap = cfg.max_tracked;
        Self {
            sensitive: cfg
                .sensitive_paths
                .iter()
                .map(|p| PathRule::parse(p))
                .collect(),
            metadata_ips: cfg
                .metadata_addresses
                .iter()
                .filter_map(|m| m.parse().ok())
                .collect(),
            cfg: cfg.clone(),
            hasher: RandomState::new(),
            started: None,
            baseline: HashSet::default(),
            edges: Bounded::new(cap),
            sources: Bounded::new(cap),
            addresses: Bounded::new(cap),
            handshakes: Bounded::new(cap),
            rate: Bounded::new(cap),
        }
    }

    /// Detectors with `cfg`, loading `cfg.baseline_file` when set.
    pub fn from_config(cfg: &DetectorConfig) -> std::io::Result<Self> {
        let mut this = Self::new(cfg);
        if let Some(path) = &cfg.baseline_file {
            let file = std::fs::File::open(path)?;
            let n = this.load_baseline(std::io::BufReader::new(file))?;
            tracing::info!(path = %path.display(), edges = n, "detector baseline loaded");
        }
        Ok(this)
    }

    /// Adds every edge of a baseline (flow lines and `"type":"edge"` lines; alerts and
    /// unreadable lines are skipped) and returns how many distinct edges it holds now.
    pub fn load_baseline(&mut self, reader: impl BufRead) -> std::io::Result<usize> {
        for line in reader.lines() {
            let line = line?;
            if let Ok(flow) = serde_json::from_str::<FlowRecord<'_>>(&line) {
                if flow.line_type == LineType::Flow {
                    let key = self.flow_edge_key(&flow);
                    self.baseline.insert(key);
                }
            } else if let Ok(edge) = serde_json::from_str::<BaselineEdge>(&line)
                && edge.line_type == LineType::Edge
            {
                let key = self.edge_key(&edge.source, &edge.destination, edge.port, &edge.route);
                self.baseline.insert(key);
            }
        }
        Ok(self.baseline.len())
    }

    fn digest(&self, parts: &[&str], n: u64) -> u64 {
        let mut h = self.hasher.build_hasher();
        for p in parts {
            h.write(p.as_bytes());
            h.write_u8(0xff);
        }
        h.write_u64(n);
        h.finish()
    }

    fn edge_key(&self, source: &str, destination: &str, port: Option<u16>, route: &str) -> u64 {
        let port = port.map_or(u64::MAX, u64::from);
        self.digest(&["edge", source, destination, route], port)
    }

    fn flow_source<'r>(flow: &'r FlowRecord<'_>) -> Source<'r> {
        Source {
            identity: flow.source_identity.as_deref(),
            ip: flow.source_address.map(|a| a.ip()),
        }
    }

    fn flow_destination(flow: &FlowRecord<'_>) -> String {
        if let Some(id) = &flow.destination_identity {
            return id.to_string();
        }
        if let Some(h) = &flow.host {
            return host_only(h);
        }
        flow.destination_address
            .map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string())
    }

    fn flow_edge_key(&self, flow: &FlowRecord<'_>) -> u64 {
        let source = Self::flow_source(flow).label();
        let destination = Self::flow_destination(flow);
        self.edge_key(&source, &destination, flow.destination_port, &flow.route())
    }

    fn learning(&mut self, now: i64) -> bool {
        let start = *self.started.get_or_insert(now);
        now - start < duration_ms(self.cfg.learning_window)
    }

    /// Looks at one finished request or connection; returns the alerts it raises.
    pub fn observe_flow(&mut self, flow: &FlowRecord<'_>, now: OffsetDateTime) -> Vec<Alert> {
        let now = millis(now);
        let learning = self.learning(now);
        let window = duration_ms(self.cfg.window);
        let threshold = self.cfg.fanout_threshold;
        let src = Self::flow_source(flow);
        let source_label = src.label();
        let destination = Self::flow_destination(flow);
        let route = flow.route();
        let mut pending: Vec<Pending> = Vec::new();

        // First-seen edge.
        let edge = self.edge_key(&source_label, &destination, flow.destination_port, &route);
        if !self.baseline.contains(&edge) && !self.edges.contains(edge) {
            self.edges.entry(edge, || ());
            if !learning {
                let port = flow
                    .destination_port
                    .map(|p| format!(":{p}"))
                    .unwrap_or_default();
                pending.push(Pending {
                    kind: AlertKind::NewEdge,
                    severity: Severity::Medium,
                    destination: Some(destination.clone()),
                    evidence: vec![("requests", 1)],
                    window: false,
                    first_seen: now,
                    summary: format!(
                        "{source_label} reached {destination}{port} {route} for the first time"
                    ),
                });
            }
        }

        // A known identity from a new address (inbound: the peer's address is meaningful).
        if flow.direction == Direction::Inbound
            && let (Some(id), Some(ip)) = (src.identity, src.ip)
        {
            let key = self.digest(&["addr", id], 0);
            let known = self.addresses.contains(key);
            let addrs = self.addresses.entry(key, Vec::new);
            if !addrs.contains(&ip) {
                if addrs.len() >= ADDRESSES_PER_IDENTITY {
                    addrs.remove(0);
                }
                addrs.push(ip);
                if known && !learning {
                    pending.push(Pending {
                        kind: AlertKind::NewSourceAddress,
                        severity: Severity::Low,
                        destination: None,
                        evidence: vec![("known_addresses", addrs.len() as u64 - 1)],
                        window: false,
                        first_seen: now,
                        summary: format!("{id} connected from {ip}, an address it never used"),
                    });
                }
            }
        }

        // Windowed counters of this source.
        let skey = self.digest(&["source", &source_label], 0);
        let port_item = flow.destination_port.map(u64::from);
        let dest_item = self.digest(&["dest", &destination], 0);
        let failed = flow.denied() || flow.status.is_some_and(|s| (400..500).contains(&s));
        let route_item = (failed && flow.protocol != FlowProtocol::Tcp)
            .then(|| self.digest(&["route", &route], 0));
        let deny_cap = self.cfg.deny_burst_threshold;
        let nf_cap = self.cfg.not_found_burst_threshold;
        let state = self.sources.entry(skey, SourceState::default);
        if let Some(p) = port_item {
            let n = state.ports.observe(p, now, window, threshold);
            if n >= threshold {
                pending.push(Pending {
                    kind: AlertKind::PortScan,
                    severity: Severity::High,
                    destination: None,
                    evidence: vec![("distinct_ports", n as u64)],
                    window: true,
                    first_seen: state.ports.oldest().unwrap_or(now),
                    summary: format!("{source_label} reached {n} distinct ports"),
                });
            }
        }
        if let Some(r) = route_item {
            let n = state.failing_routes.observe(r, now, window, threshold);
            if n >= threshold {
                pending.push(Pending {
                    kind: AlertKind::PathScan,
                    severity: Severity::High,
                    destination: Some(destination.clone()),
                    evidence: vec![("distinct_failing_routes", n as u64)],
                    window: true,
                    first_seen: state.failing_routes.oldest().unwrap_or(now),
                    summary: format!(
                        "{source_label} tried {n} distinct routes of {destination} that failed"
                    ),
                });
            }
        }
        let n = state
            .destinations
            .observe(dest_item, now, window, threshold);
        if n >= threshold {
            pending.push(Pending {
                kind: AlertKind::FanOut,
                severity: Severity::High,
                destination: None,
                evidence: vec![("distinct_destinations", n as u64)],
                window: true,
                first_seen: state.destinations.oldest().unwrap_or(now),
                summary: format!("{source_label} reached {n} distinct destinations"),
            });
        }
        if flow.denied() {
            let n = state.denials.observe(now, window, deny_cap);
            if n >= deny_cap {
                pending.push(Pending {
                    kind: AlertKind::DenyBurst,
                    severity: Severity::High,
                    destination: Some(destination.clone()),
                    evidence: vec![("denied", n as u64)],
                    window: true,
                    first_seen: state.denials.times.front().copied().unwrap_or(now),
                    summary: format!("{source_label} was denied {n} times"),
                });
            }
        }
        if let Some(reason) = flow.token_error.as_deref() {
            let n = state.invalid_tokens.observe(now, window, deny_cap);
            if n >= deny_cap {
                pending.push(Pending {
                    kind: AlertKind::InvalidTokenBurst,
                    severity: Severity::High,
                    destination: Some(destination.clone()),
                    evidence: vec![("invalid_tokens", n as u64)],
                    window: true,
                    first_seen: state.invalid_tokens.times.front().copied().unwrap_or(now),
                    summary: format!(
                        "{source_label} sent {n} requests with a refused token (last: {reason})"
                    ),
                });
            }
        }
        if flow.status == Some(404) {
            let n = state.not_found.observe(now, window, nf_cap);
            if n >= nf_cap {
                pending.push(Pending {
                    kind: AlertKind::NotFoundBurst,
                    severity: Severity::Medium,
                    destination: Some(destination.clone()),
                    evidence: vec![("not_found", n as u64)],
                    window: true,
                    first_seen: state.not_found.times.front().copied().unwrap_or(now),
                    summary: format!("{source_label} got {n} answers 404 Not Found"),
                });
            }
        }

        // Sensitive paths.
        if let Some(path) = flow.path.as_deref()
            && let Some(rule) = self.sensitive.iter().find(|r| r.matches(path))
        {
            let succeeded = !flow.denied() && flow.status.is_some_and(|s| s < 400);
            let mut evidence = vec![("requests", 1)];
            if let Some(s) = flow.status {
                evidence.push(("status", u64::from(s)));
            }
            pending.push(Pending {
                kind: AlertKind::SensitivePath,
                severity: if succeeded {
                    Severity::High
                } else {
                    Severity::Medium
                },
                destination: Some(format!("{destination} {}", rule.prefix)),
                evidence,
                window: false,
                first_seen: now,
                summary: format!(
                    "{source_label} requested {path} on {destination}{}",
                    if succeeded { " and it succeeded" } else { "" }
                ),
            });
        }

        // Cloud metadata.
        if flow.direction == Direction::Outbound {
            let by_address = flow
                .destination_address
                .map(|a| a.ip())
                .filter(|ip| self.metadata_ips.contains(ip))
                .map(|ip| ip.to_string());
            let host = by_address.or_else(|| {
                let host = host_only(flow.host.as_deref()?);
                self.is_metadata(&host).then_some(host)
            });
            if let Some(host) = host {
                pending.push(self.metadata_alert(&source_label, host, now));
            }
        }

        self.emit(&src, &source_label, pending, now)
    }

    /// Whether `host` (as [`host_only`] gives it) is a configured metadata address: the same
    /// IP address in any spelling, or the same name.
    fn is_metadata(&self, host: &str) -> bool {
        match host.parse::<IpAddr>() {
            Ok(ip) => self.metadata_ips.contains(&ip),
            Err(_) => self.cfg.metadata_addresses.iter().any(|m| m == host),
        }
    }

    fn metadata_alert(&self, source_label: &str, host: String, now: i64) -> Pending {
        Pending {
            kind: AlertKind::MetadataAccess,
            severity: Severity::Critical,
            summary: format!("{source_label} called the cloud metadata address {host}"),
            destination: Some(host),
            evidence: vec![("requests", 1)],
            window: false,
            first_seen: now,
        }
    }

    /// An outbound call (or connection attempt) to `host` (`ip`, `ip:port`, `[v6]:port`, or a
    /// host name with or without port) by this workload, identified as `own_identity`.
    pub fn observe_outbound_destination(
        &mut self,
        own_identity: &str,
        host: &str,
        now: OffsetDateTime,
    ) -> Vec<Alert> {
        let now = millis(now);
        let host = host_only(host);
        if !self.is_metadata(&host) {
            return Vec::new();
        }
        let p = self.metadata_alert(own_identity, host, now);
        let src = Source {
            identity: Some(own_identity),
            ip: None,
        };
        self.emit(&src, own_identity, vec![p], now)
    }

    /// A failed inbound TLS handshake from `source` with `reason` (see `tls::failure_reason`).
    /// Only the reasons in [`UNAUTHENTICATED_REASONS`] raise alerts.
    pub fn observe_handshake_failure(
        &mut self,
        source: SocketAddr,
        reason: &str,
        now: OffsetDateTime,
    ) -> Vec<Alert> {
        let Some(idx) = UNAUTHENTICATED_REASONS.iter().position(|r| *r == reason) else {
            return Vec::new();
        };
        let now = millis(now);
        let window = duration_ms(self.cfg.window);
        let ip = source.ip();
        let key = self.digest(&["handshake", &ip.to_string()], 0);
        let st = self.handshakes.entry(key, || HandshakeState {
            window_start: now,
            counts: [0; UNAUTHENTICATED_REASONS.len()],
        });
        if now - st.window_start >= window {
            st.window_start = now;
            st.counts = [0; UNAUTHENTICATED_REASONS.len()];
        }
        st.counts[idx] += 1;
        let evidence: Vec<(&'static str, u64)> = UNAUTHENTICATED_REASONS
            .iter()
            .zip(st.counts)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| (*r, n))
            .collect();
        let foreign = st.counts[2] + st.counts[3] > 0;
        let first_seen = st.window_start;
        let what = match reason {
            "not_tls" => "a plaintext connection",
            "no_client_cert" => "a TLS connection without a client certificate",
            "untrusted" => "a certificate from an untrusted CA",
            _ => "a certificate of a foreign trust domain",
        };
        let pending = Pending {
            kind: AlertKind::Unauthenticated,
            severity: if foreign {
                Severity::High
            } else {
                Severity::Medium
            },
            destination: None,
            evidence,
            window: true,
            first_seen,
            summary: format!("{ip} tried the meshed port with {what}"),
        };
        let src = Source {
            identity: None,
            ip: Some(ip),
        };
        let label = ip.to_string();
        self.emit(&src, &label, vec![pending], now)
    }

    fn emit(
        &mut self,
        src: &Source<'_>,
        source_label: &str,
        pending: Vec<Pending>,
        now: i64,
    ) -> Vec<Alert> {
        if pending.is_empty() {
            return Vec::new();
        }
        let rate_limit = duration_ms(self.cfg.rate_limit);
        let window_secs = self.cfg.window.as_secs();
        let mut out = Vec::with_capacity(pending.len());
        for p in pending {
            let key = self.digest(
                &[
                    p.kind.as_str(),
                    source_label,
                    p.destination.as_deref().unwrap_or(""),
                ],
                0,
            );
            let fresh = !self.rate.contains(key);
            let rs = self.rate.entry(key, || RateState {
                last: now,
                suppressed: 0,
            });
            if !fresh && now - rs.last < rate_limit {
                rs.suppressed += 1;
                continue;
            }
            let suppressed = std::mem::take(&mut rs.suppressed);
            rs.last = now;
            let mut evidence: BTreeMap<String, u64> = p
                .evidence
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            if suppressed > 0 {
                evidence.insert("suppressed".to_owned(), suppressed);
            }
            out.push(Alert {
                line_type: LineType::Alert,
                kind: p.kind,
                severity: p.severity,
                source_identity: src.identity.map(str::to_owned),
                source_address: src.ip,
                destination: p.destination,
                evidence,
                window_secs: if p.window { window_secs } else { 0 },
                first_seen: from_millis(p.first_seen),
                last_seen: from_millis(now),
                summary: p.summary,
            });
        }
        out
    }

    /// Entries in the detector tables: (edges, sources, identities with addresses, handshake
    /// sources, rate-limit keys).
    pub fn tracked(&self) -> [usize; 5] {
        [
            self.edges.len(),
            self.sources.len(),
            self.addresses.len(),
            self.handshakes.len(),
            self.rate.len(),
        ]
    }

    /// Heap bytes held by the tables, from their capacities (an estimate that ignores
    /// allocator overhead).
    pub fn heap_bytes(&self) -> usize {
        let per_source = |s: &SourceState| {
            (s.ports.items.capacity()
                + s.failing_routes.items.capacity()
                + s.destinations.items.capacity())
                * 16
                + (s.denials.times.capacity() + s.not_found.times.capacity()) * 8
        };
        self.edges.heap_bytes()
            + self.sources.heap_bytes()
            + self.sources.map.values().map(per_source).sum::<usize>()
            + self.addresses.heap_bytes()
            + self
                .addresses
                .map
                .values()
                .map(|v| v.capacity() * size_of::<IpAddr>())
                .sum::<usize>()
            + self.handshakes.heap_bytes()
            + self.rate.heap_bytes()
            + self.baseline.capacity() * 9
    }

    /// Whether `path` is one of the configured sensitive paths.
    pub fn is_sensitive_path(&self, path: &str) -> bool {
        self.sensitive.iter().any(|r| r.matches(path))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;
    use crate::telemetry::flow::Verdict;

    const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
    const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
    const CATALOG: &str = "spiffe://cluster.local/ns/shop/sa/catalog";
    const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000 + secs).unwrap()
    }

    fn cfg() -> DetectorConfig {
        DetectorConfig {
            learning_window: Duration::from_secs(60),
            ..DetectorConfig::default()
        }
    }

    struct F {
        dst: &'static str,
        port: u16,
        method: Option<&'static str>,
        path: String,
        status: Option<u16>,
        verdict: Verdict,
        from: &'static str,
    }

    fn http(dst: &'static str, method: &'static str, path: impl Into<String>, status: u16) -> F {
        F {
            dst,
            port: 8080,
            method: Some(method),
            path: path.into(),
            status: Some(status),
            verdict: Verdict::Allow,
            from: "10.0.0.1:40000",
        }
    }

    fn record(f: &F, ts: OffsetDateTime) -> FlowRecord<'_> {
        FlowRecord {
            source_identity: Some(FRONTEND.into()),
            source_address: Some(f.from.parse().unwrap()),
            destination_identity: Some(f.dst.into()),
            destination_port: Some(f.port),
            method: f.method.map(Into::into),
            path: (!f.path.is_empty()).then(|| f.path.as_str().into()),
            status: f.status,
            verdict: Some(f.verdict),
            ..FlowRecord::new(
                ts,
                Direction::Inbound,
                if f.method.is_some() {
                    FlowProtocol::Http1
                } else {
                    FlowProtocol::Tcp
                },
            )
        }
    }

    /// The normal life of the frontend: orders and catalog reads, order creation.
    fn benign(n: usize) -> Vec<F> {
        (0..n)
            .map(|i| match i % 4 {
                0 => http(ORDERS, "GET", format!("/api/orders/{}", 1000 + i), 200),
                1 => http(ORDERS, "POST", "/api/orders", 201),
                2 => http(CATALOG, "GET", format!("/api/items/{}", i % 7 + 1), 200),
                _ => http(CATALOG, "GET", "/api/items", 200),
            })
            .collect()
    }

    /// Detectors that learned the benign traffic during the first minute.
    fn trained() -> Detectors {
        let mut d = Detectors::new(&cfg());
        for (i, f) in benign(120).iter().enumerate() {
            let alerts = d.observe_flow(&record(f, at(0)), at(i as i64 / 4));
            assert!(alerts.is_empty(), "alert while learning: {alerts:?}");
        }
        d
    }

    /// Replays `flows` one every 100 ms after learning; returns the alert kinds raised.
    fn replay(d: &mut Detectors, flows: &[F]) -> BTreeSet<AlertKind> {
        let mut kinds = BTreeSet::new();
        for (i, f) in flows.iter().enumerate() {
            let now = at(120) + time::Duration::milliseconds(100 * i as i64);
            for a in d.observe_flow(&record(f, now), now) {
                kinds.insert(a.kind);
            }
        }
        kinds
    }

    fn kinds(list: &[AlertKind]) -> BTreeSet<AlertKind> {
        list.iter().copied().collect()
    }

    #[test]
    fn benign_replay_raises_nothing() {
        let mut d = trained();
        assert_eq!(replay(&mut d, &benign(20)), kinds(&[]));
        // Same length as the longest attack below, with new IDs in the paths.
        let longer: Vec<F> = benign(200).into_iter().skip(100).collect();
        assert_eq!(replay(&mut d, &longer), kinds(&[]));
    }

    #[test]
    fn scan_of_twenty_ports_is_a_port_scan_and_a_new_edge() {
        let flows: Vec<F> = (0..20)
            .map(|p| F {
                port: 8000 + p,
                method: None,
                path: String::new(),
                status: None,
                ..http(ORDERS, "GET", "", 0)
            })
            .collect();
        let mut d = trained();
        assert_eq!(
            replay(&mut d, &flows),
            kinds(&[AlertKind::PortScan, AlertKind::NewEdge])
        );
    }

    #[test]
    fn scan_of_twenty_paths_is_a_path_scan_with_404_burst() {
        let flows: Vec<F> = (0..20)
            .map(|i| http(ORDERS, "GET", format!("/probe{i}/x"), 404))
            .collect();
        let mut d = trained();
        assert_eq!(
            replay(&mut d, &flows),
            kinds(&[
                AlertKind::PathScan,
                AlertKind::NotFoundBurst,
                AlertKind::NewEdge
            ])
        );
    }

    #[test]
    fn calling_a_service_never_called_is_a_new_edge() {
        let mut d = trained();
        let alerts = d.observe_flow(
            &record(&http(PAYMENTS, "POST", "/api/charge", 200), at(200)),
            at(200),
        );
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let a = &alerts[0];
        assert_eq!(a.kind, AlertKind::NewEdge);
        assert_eq!(a.source_identity.as_deref(), Some(FRONTEND));
        assert_eq!(a.source_address, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(a.destination.as_deref(), Some(PAYMENTS));
        assert!(a.summary.contains("POST /api/charge"), "{}", a.summary);
        assert_eq!(a.last_seen, at(200));
    }

    #[test]
    fn new_edges_are_learned_not_reported_during_the_learning_window() {
        let mut d = Detectors::new(&cfg());
        let f = http(PAYMENTS, "POST", "/api/charge", 200);
        assert!(d.observe_flow(&record(&f, at(0)), at(0)).is_empty());
        assert!(d.observe_flow(&record(&f, at(59)), at(59)).is_empty());
        assert!(d.observe_flow(&record(&f, at(61)), at(61)).is_empty());
        let g = http(PAYMENTS, "GET", "/api/refunds", 200);
        let alerts = d.observe_flow(&record(&g, at(61)), at(61));
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].kind, AlertKind::NewEdge);
    }

    #[test]
    fn admin_probe_is_a_sensitive_path() {
        let mut d = trained();
        assert_eq!(
            replay(&mut d, &[http(ORDERS, "GET", "/admin", 404)]),
            kinds(&[AlertKind::SensitivePath, AlertKind::NewEdge])
        );
        let mut d = trained();
        let alerts = d.observe_flow(
            &record(&http(ORDERS, "GET", "/.env.local", 200), at(300)),
            at(300),
        );
        let probe = alerts
            .iter()
            .find(|a| a.kind == AlertKind::SensitivePath)
            .unwrap();
        assert_eq!(probe.severity, Severity::High, "a probe that succeeded");
        // Segment boundary: /administrator is not /admin.
        assert!(!d.is_sensitive_path("/administrator"));
        assert!(d.is_sensitive_path("/Admin/users"));
        assert!(d.is_sensitive_path("/.git/config"));
    }

    #[test]
    fn replayed_denied_calls_are_a_deny_burst() {
        let flows: Vec<F> = (0..20)
            .map(|_| F {
                verdict: Verdict::Deny,
                ..http(ORDERS, "GET", "/api/orders/1007", 403)
            })
            .collect();
        let mut d = trained();
        assert_eq!(replay(&mut d, &flows), kinds(&[AlertKind::DenyBurst]));
    }

    #[test]
    fn refused_tokens_from_one_source_are_an_invalid_token_burst() {
        let mut d = trained();
        let f = http(ORDERS, "GET", "/api/orders/1007", 401);
        let mut raised = BTreeSet::new();
        for i in 0..20 {
            let now = at(120) + time::Duration::milliseconds(100 * i);
            let mut r = record(&f, now);
            r.verdict = None;
            r.token_error = Some("bad_signature".into());
            for a in d.observe_flow(&r, now) {
                raised.insert(a.kind);
            }
        }
        assert!(raised.contains(&AlertKind::InvalidTokenBurst), "{raised:?}");
        // The same 401s without a refused token (the app's own) are no such burst.
        let mut d = trained();
        let flows: Vec<F> = (0..20)
            .map(|_| http(ORDERS, "GET", "/api/orders/1007", 401))
            .collect();
        assert!(!replay(&mut d, &flows).contains(&AlertKind::InvalidTokenBurst));
    }

    #[test]
    fn bursts_are_counted_inside_the_window_only() {
        let mut d = trained();
        let denied = F {
            verdict: Verdict::Deny,
            ..http(ORDERS, "GET", "/api/orders/1007", 403)
        };
        // Nine denials a minute apart never make ten inside one minute.
        for i in 0..30 {
            let now = at(120 + 61 * i);
            let alerts = d.observe_flow(&record(&denied, now), now);
            assert!(alerts.is_empty(), "{alerts:?}");
        }
    }

    #[test]
    fn metadata_address_calls_are_critical() {
        let mut d = trained();
        let probe = http(ORDERS, "GET", "/latest/meta-data/", 200);
        let mut f = record(&probe, at(130));
        f.direction = Direction::Outbound;
        f.destination_identity = None;
        f.destination_address = Some("169.254.169.254:80".parse().unwrap());
        let got: BTreeSet<_> = d
            .observe_flow(&f, at(130))
            .into_iter()
            .map(|a| (a.kind, a.severity))
            .collect();
        assert!(
            got.contains(&(AlertKind::MetadataAccess, Severity::Critical)),
            "{got:?}"
        );
        let alerts =
            d.observe_outbound_destination(FRONTEND, "metadata.google.internal:80", at(131));
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            alerts[0].destination.as_deref(),
            Some("metadata.google.internal")
        );
        assert!(
            d.observe_outbound_destination(FRONTEND, "[fd00:ec2::254]:80", at(131))
                .len()
                == 1
        );
        assert!(
            d.observe_outbound_destination(FRONTEND, "10.0.0.2:80", at(131))
                .is_empty()
        );
    }

    #[test]
    fn unauthenticated_attempts_are_reported_once_per_rate_limit_period() {
        let mut d = Detectors::new(&cfg());
        let src: SocketAddr = "10.9.9.9:5555".parse().unwrap();
        assert!(d.observe_handshake_failure(src, "closed", at(0)).is_empty());
        let first = d.observe_handshake_failure(src, "not_tls", at(0));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].kind, AlertKind::Unauthenticated);
        assert_eq!(first[0].severity, Severity::Medium);
        assert_eq!(first[0].evidence.get("not_tls"), Some(&1));
        for i in 1..5 {
            assert!(
                d.observe_handshake_failure(src, "not_tls", at(i))
                    .is_empty()
            );
        }
        // After the rate limit, the next one reports the suppressed repeats; a foreign
        // certificate raises the severity.
        let later = d.observe_handshake_failure(src, "foreign_trust_domain", at(400));
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].severity, Severity::High);
        assert_eq!(later[0].evidence.get("suppressed"), Some(&4));
    }

    #[test]
    fn a_known_identity_from_a_new_address_is_reported() {
        let mut d = trained();
        let f = F {
            from: "10.0.0.99:40000",
            ..http(ORDERS, "POST", "/api/orders", 201)
        };
        assert_eq!(replay(&mut d, &[f]), kinds(&[AlertKind::NewSourceAddress]));
    }

    #[test]
    fn duplicates_are_rate_limited_per_kind_source_and_destination() {
        let mut d = trained();
        let mut raised = 0;
        for i in 0..50 {
            let f = http(PAYMENTS, "GET", format!("/p{i}"), 200);
            raised += d.observe_flow(&record(&f, at(200 + i)), at(200 + i)).len();
        }
        assert_eq!(raised, 1, "one new_edge alert per source and destination");
        let f = http(PAYMENTS, "GET", "/p-late", 200);
        let later = d.observe_flow(&record(&f, at(600)), at(600));
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].evidence.get("suppressed"), Some(&49));
    }

    #[test]
    fn baseline_edges_are_known_from_the_start() {
        let c = DetectorConfig {
            learning_window: Duration::ZERO,
            ..DetectorConfig::default()
        };
        let mut d = Detectors::new(&c);
        let known = http(ORDERS, "GET", "/api/orders/5", 200);
        let flow_line = serde_json::to_string(&record(&known, at(0))).unwrap();
        let edge_line = serde_json::to_string(&BaselineEdge {
            line_type: LineType::Edge,
            source: FRONTEND.into(),
            destination: CATALOG.into(),
            port: Some(8080),
            route: "GET /api/items".into(),
        })
        .unwrap();
        let text = format!("{flow_line}\n{edge_line}\nnot json\n");
        assert_eq!(d.load_baseline(text.as_bytes()).unwrap(), 2);
        assert!(d.observe_flow(&record(&known, at(1)), at(1)).is_empty());
        let items = http(CATALOG, "GET", "/api/items", 200);
        assert!(d.observe_flow(&record(&items, at(1)), at(1)).is_empty());
        let other = http(ORDERS, "DELETE", "/api/orders/5", 200);
        let alerts = d.observe_flow(&record(&other, at(2)), at(2));
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].kind, AlertKind::NewEdge);
    }

    #[test]
    fn tables_stay_within_max_tracked() {
        let c = DetectorConfig {
            max_tracked: 100,
            learning_window: Duration::ZERO,
            rate_limit: Duration::ZERO,
            ..DetectorConfig::default()
        };
        let mut d = Detectors::new(&c);
        for i in 0..5000 {
            let f = F {
                from: "10.0.0.1:1",
                ..http(ORDERS, "GET", format!("/r{i}"), 200)
            };
            let mut r = record(&f, at(i));
            let id = format!("spiffe://cluster.local/ns/n{i}/sa/s");
            r.source_identity = Some(id.as_str().into());
            d.observe_flow(&r, at(i));
            d.observe_handshake_failure(
                SocketAddr::from(([10, 1, (i / 256) as u8, (i % 256) as u8], 1)),
                "not_tls",
                at(i),
            );
        }
        for n in d.tracked() {
            assert!(n <= 100, "{:?}", d.tracked());
        }
    }

    fn vm_rss_kib() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// The figure reported in docs/telemetry.md: run with
    /// `cargo test -p picket-proxy --release detector_memory -- --ignored --nocapture --test-threads=1`.
    #[test]
    #[ignore = "a measurement, not a check"]
    #[allow(clippy::print_stdout)]
    fn detector_memory_per_10k_edges() {
        for sources in [100usize, 1000] {
            let c = DetectorConfig {
                learning_window: Duration::from_secs(3600),
                max_tracked: 1_000_000,
                ..DetectorConfig::default()
            };
            let mut d = Detectors::new(&c);
            // `sources` x 100 routes distinct edges, all learned (no alerts).
            let ids: Vec<String> = (0..sources)
                .map(|i| format!("spiffe://cluster.local/ns/team{i}/sa/client{i}"))
                .collect();
            let paths: Vec<String> = (0..100).map(|i| format!("/api/v1/resource{i}")).collect();
            let before_rss = vm_rss_kib().unwrap_or(0);
            for (s, src) in ids.iter().enumerate() {
                for (p, path) in paths.iter().enumerate() {
                    let f = FlowRecord {
                        source_identity: Some(src.as_str().into()),
                        source_address: Some(SocketAddr::from((
                            [10, (s / 65536) as u8, (s / 256) as u8, s as u8],
                            40000,
                        ))),
                        destination_identity: Some(ORDERS.into()),
                        destination_port: Some(8080),
                        method: Some("GET".into()),
                        path: Some(path.as_str().into()),
                        status: Some(200),
                        ..FlowRecord::new(at(0), Direction::Inbound, FlowProtocol::Http1)
                    };
                    d.observe_flow(&f, at((s * 100 + p) as i64 / 1000));
                }
            }
            let after_rss = vm_rss_kib().unwrap_or(0);
            let edges = d.tracked()[0];
            let heap = d.heap_bytes();
            println!(
                "detectors, {edges} distinct edges from {sources} sources: tables {:?}; \
                 heap by capacity {} KiB = {} KiB per 10,000 edges ({} bytes/edge); \
                 VmRSS delta {} KiB = {} KiB per 10,000 edges",
                d.tracked(),
                heap / 1024,
                heap * 10_000 / edges / 1024,
                heap / edges,
                after_rss.saturating_sub(before_rss),
                after_rss.saturating_sub(before_rss) * 10_000 / edges as u64,
            );
            assert_eq!(edges, sources * 100);
        }
    }
}
