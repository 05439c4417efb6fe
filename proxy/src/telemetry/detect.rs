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

/// One flow as every detector reads it, worked out once.
struct Seen<'f, 'r> {
    flow: &'f FlowRecord<'r>,
    now: i64,
    learning: bool,
    src: Source<'f>,
    source_label: String,
    destination: String,
    route: std::borrow::Cow<'f, str>,
}

/// What one flow adds to its source's distinct-item windows (digests; a port as itself).
struct ScanItems {
    port: Option<u64>,
    route: Option<u64>,
    destination: u64,
}

/// The window and thresholds of the scan and burst detectors.
struct Limits {
    window: i64,
    fanout: usize,
    deny: usize,
    not_found: usize,
}

/// `port_scan`, `path_scan` and `fan_out`: distinct ports, failing routes and destinations
/// of one source inside the window.
fn scans(
    state: &mut SourceState,
    seen: &Seen<'_, '_>,
    items: &ScanItems,
    limits: &Limits,
    pending: &mut Vec<Pending>,
) {
    let (now, window, threshold) = (seen.now, limits.window, limits.fanout);
    let label = &seen.source_label;
    if let Some(p) = items.port {
        let n = state.ports.observe(p, now, window, threshold);
        if n >= threshold {
            pending.push(Pending {
                kind: AlertKind::PortScan,
                severity: Severity::High,
                destination: None,
                evidence: vec![("distinct_ports", n as u64)],
                window: true,
                first_seen: state.ports.oldest().unwrap_or(now),
                summary: format!("{label} reached {n} distinct ports"),
            });
        }
    }
    if let Some(r) = items.route {
        let n = state.failing_routes.observe(r, now, window, threshold);
        if n >= threshold {
            pending.push(Pending {
                kind: AlertKind::PathScan,
                severity: Severity::High,
                destination: Some(seen.destination.clone()),
                evidence: vec![("distinct_failing_routes", n as u64)],
                window: true,
                first_seen: state.failing_routes.oldest().unwrap_or(now),
                summary: format!(
                    "{label} tried {n} distinct routes of {} that failed",
                    seen.destination
                ),
            });
        }
    }
    let n = state
        .destinations
        .observe(items.destination, now, window, threshold);
    if n >= threshold {
        pending.push(Pending {
            kind: AlertKind::FanOut,
            severity: Severity::High,
            destination: None,
            evidence: vec![("distinct_destinations", n as u64)],
            window: true,
            first_seen: state.destinations.oldest().unwrap_or(now),
            summary: format!("{label} reached {n} distinct destinations"),
        });
    }
}

/// `deny_burst`, `invalid_token_burst` and `not_found_burst`: denials, refused end-user
/// tokens and 404 answers of one source inside the window.
fn bursts(
    state: &mut SourceState,
    seen: &Seen<'_, '_>,
    limits: &Limits,
    pending: &mut Vec<Pending>,
) {
    let (flow, now, window) = (seen.flow, seen.now, limits.window);
    let label = &seen.source_label;
    if flow.denied() {
        let n = state.denials.observe(now, window, limits.deny);
        if n >= limits.deny {
            pending.push(Pending {
                kind: AlertKind::DenyBurst,
                severity: Severity::High,
                destination: Some(seen.destination.clone()),
                evidence: vec![("denied", n as u64)],
                window: true,
                first_seen: state.denials.times.front().copied().unwrap_or(now),
                summary: format!("{label} was denied {n} times"),
            });
        }
    }
    if let Some(reason) = flow.token_error.as_deref() {
        let n = state.invalid_tokens.observe(now, window, limits.deny);
        if n >= limits.deny {
            pending.push(Pending {
                kind: AlertKind::InvalidTokenBurst,
                severity: Severity::High,
                destination: Some(seen.destination.clone()),
                evidence: vec![("invalid_tokens", n as u64)],
                window: true,
                first_seen: state.invalid_tokens.times.front().copied().unwrap_or(now),
                summary: format!("{label} sent {n} requests with a refused token (last: {reason})"),
            });
        }
    }
    if flow.status == Some(404) {
        let n = state.not_found.observe(now, window, limits.not_found);
        if n >= limits.not_found {
            pending.push(Pending {
                kind: AlertKind::NotFoundBurst,
                severity: Severity::Medium,
                destination: Some(seen.destination.clone()),
                evidence: vec![("not_found", n as u64)],
                window: true,
                first_seen: state.not_found.times.front().copied().unwrap_or(now),
                summary: format!("{label} got {n} answers 404 Not Found"),
            });
        }
    }
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

    /// Looks at one finished request or connection; returns the alerts it raises. Each
    /// detector is one method below, reading the same [`Seen`] (worked out once per flow) and
    /// adding what it finds to one list, which [`Self::emit`] rate-limits. They are methods,
    /// not implementations of a trait: they share the per-source tables and the rate limiter,
    /// and there is no second set of detectors to choose between at run time.
    pub fn observe_flow(&mut self, flow: &FlowRecord<'_>, now: OffsetDateTime) -> Vec<Alert> {
        let now = millis(now);
        let src = Self::flow_source(flow);
        let seen = Seen {
            flow,
            now,
            learning: self.learning(now),
            source_label: src.label(),
            src,
            destination: Self::flow_destination(flow),
            route: flow.route(),
        };
        let mut pending: Vec<Pending> = Vec::new();
        self.new_edge(&seen, &mut pending);
        self.new_source_address(&seen, &mut pending);
        self.windowed(&seen, &mut pending);
        self.sensitive_path(&seen, &mut pending);
        self.metadata_call(&seen, &mut pending);
        self.emit(&seen.src, &seen.source_label, pending, now)
    }

    /// `new_edge`: a (source, destination, port, route) never seen before or in the baseline.
    fn new_edge(&mut self, seen: &Seen<'_, '_>, pending: &mut Vec<Pending>) {
        let flow = seen.flow;
        let edge = self.edge_key(
            &seen.source_label,
            &seen.destination,
            flow.destination_port,
            &seen.route,
        );
        if self.baseline.contains(&edge) || self.edges.contains(edge) {
            return;
        }
        self.edges.entry(edge, || ());
        if seen.learning {
            return;
        }
        let port = flow
            .destination_port
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        pending.push(Pending {
            kind: AlertKind::NewEdge,
            severity: Severity::Medium,
            destination: Some(seen.destination.clone()),
            evidence: vec![("requests", 1)],
            window: false,
            first_seen: seen.now,
            summary: format!(
                "{} reached {}{port} {} for the first time",
                seen.source_label, seen.destination, seen.route
            ),
        });
    }

    /// `new_source_address`: a known identity from an address it never used (inbound only,
    /// where the peer's address is meaningful).
    fn new_source_address(&mut self, seen: &Seen<'_, '_>, pending: &mut Vec<Pending>) {
        if seen.flow.direction != Direction::Inbound {
            return;
        }
        let (Some(id), Some(ip)) = (seen.src.identity, seen.src.ip) else {
            return;
        };
        let key = self.digest(&["addr", id], 0);
        let known = self.addresses.contains(key);
        let addrs = self.addresses.entry(key, Vec::new);
        if addrs.contains(&ip) {
            return;
        }
        if addrs.len() >= ADDRESSES_PER_IDENTITY {
            addrs.remove(0);
        }
        addrs.push(ip);
        if known && !seen.learning {
            pending.push(Pending {
                kind: AlertKind::NewSourceAddress,
                severity: Severity::Low,
                destination: None,
                evidence: vec![("known_addresses", addrs.len() as u64 - 1)],
                window: false,
                first_seen: seen.now,
                summary: format!("{id} connected from {ip}, an address it never used"),
            });
        }
    }

    /// The windowed counters of the flow's source: the scans and the bursts.
    fn windowed(&mut self, seen: &Seen<'_, '_>, pending: &mut Vec<Pending>) {
        let flow = seen.flow;
        let skey = self.digest(&["source", &seen.source_label], 0);
        let failed = flow.denied() || flow.status.is_some_and(|s| (400..500).contains(&s));
        let items = ScanItems {
            port: flow.destination_port.map(u64::from),
            route: (failed && flow.protocol != FlowProtocol::Tcp)
                .then(|| self.digest(&["route", &seen.route], 0)),
            destination: self.digest(&["dest", &seen.destination], 0),
        };
        let limits = Limits {
            window: duration_ms(self.cfg.window),
            fanout: self.cfg.fanout_threshold,
            deny: self.cfg.deny_burst_threshold,
            not_found: self.cfg.not_found_burst_threshold,
        };
        let state = self.sources.entry(skey, SourceState::default);
        scans(state, seen, &items, &limits, pending);
        bursts(state, seen, &limits, pending);
    }

    /// `sensitive_path`: a request for a configured sensitive path prefix.
    fn sensitive_path(&self, seen: &Seen<'_, '_>, pending: &mut Vec<Pending>) {
        let flow = seen.flow;
        let Some(path) = flow.path.as_deref() else {
            return;
        };
        let Some(rule) = self.sensitive.iter().find(|r| r.matches(path)) else {
            return;
        };
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
            destination: Some(format!("{} {}", seen.destination, rule.prefix)),
            evidence,
            window: false,
            first_seen: seen.now,
            summary: format!(
                "{} requested {path} on {}{}",
                seen.source_label,
                seen.destination,
                if succeeded { " and it succeeded" } else { "" }
            ),
        });
    }

    /// `metadata_access`: an outbound call to a cloud metadata address or name.
    fn metadata_call(&self, seen: &Seen<'_, '_>, pending: &mut Vec<Pending>) {
        let flow = seen.flow;
        if flow.direction != Direction::Outbound {
            return;
        }
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
            pending.push(self.metadata_alert(&seen.source_label, host, seen.now));
        }
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
                + (s.denials.times.capacity()
                    + s.not_found.times.capacity()
                    + s.invalid_tokens.times.capacity())
                    * 8
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
mod tests;
