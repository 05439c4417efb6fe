//! Lateral-movement detectors: cheap, bounded, deterministic.
//!
//! Every table is capped at `max_tracked` entries. Tables of what was learned (known
//! identities, edges, routes' status classes, identities' addresses) keep what they hold when
//! full and refuse new keys ([`Learned`]): evicting would let a flood of new keys flush learned
//! state, which would then be learned again silently. Refusals are counted and shown. The
//! tables of windows and counters evict the entry inserted first ([`Bounded`]). Keys
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
//! | `deny_burst` | denials past the source's learned rate, `deny_burst_threshold` at least |
//! | `not_found_burst` | 404s from one destination past the edge's learned rate, `not_found_burst_threshold` at least |
//! | `auth_failure_burst` | 401s and application 403s on one route past the route's learned rate, `auth_failure_burst_threshold` at least |
//! | `unauthenticated` | a handshake failure `not_tls`, `no_client_cert`, `untrusted`, `foreign_trust_domain` |
//! | `new_source_address` | after the learning window, a known identity connects from an IP it never used that the cluster does not announce for it |
//! | `sensitive_path` | a request for a configured sensitive path prefix |
//! | `metadata_access` | an outbound call to a cloud metadata address |
//! | `invalid_token_burst` | `deny_burst_threshold` requests whose end-user token was refused (401) |
//! | `status_class_new` | a route (source, destination, `METHOD /template`) answers `status_class_threshold` times with a status class it never answered after it learned |
//!
//! Each alert is rate-limited per (kind, source, destination): repeats within `rate_limit`
//! are counted and reported as `suppressed` in the next alert.
//!
//! Learning is per source identity: the first `learning_window` after an identity is first
//! seen (sources without an identity: after the sidecar started) its edges and burst rates
//! are learned, not reported. Identities in the baseline are known from the start.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::BufRead;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::alert::{Alert, AlertKind, Severity};
use super::baseline::{Counter, Rate, Scope};
use super::config::{Bound, DetectorConfig, ForeignAddressAction};
use super::flow::{FlowEvent, FlowProtocol, FlowRecord, LineType};
use crate::direction::Direction;

mod persist;
pub use persist::{Restored, STATE_VERSION};

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
    /// The status classes the route answered (`2xx`, `4xx`, ...), learned by the
    /// `status_class_new` detector; absent: learned from the first answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status_classes: Vec<String>,
}

/// A burst counter's observed rate in a baseline file (`"type":"rate"` lines, written by
/// `picket analyze --baseline-file`): the key starts with this rate learned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineRate {
    /// Always [`LineType::Rate`].
    #[serde(rename = "type")]
    pub line_type: LineType,
    /// `denied`, `not_found` or `auth_failed`.
    pub counter: String,
    /// Source SPIFFE ID (or IP).
    pub source: String,
    /// Destination, for counters keyed by edge or route.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination: String,
    /// Route, for counters keyed by route.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub route: String,
    /// Events per second over the observed period.
    pub per_second: f64,
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

/// Slots of the [`DigestMemo`].
const MEMO_SLOTS: usize = 64;
/// The longest digest input the memo keeps (longer ones are always computed).
const MEMO_MAX_INPUT: usize = 512;

/// The digests of recent inputs, each kept with its whole input: a flow repeats the digests
/// of the flows before it (its source, destination, edge and identity), and comparing an input
/// with the one kept costs a fraction of SipHash over it.
///
/// A hit needs the exact same input and key, so the memo never changes a digest; it is a
/// direct-mapped cache whose slot comes from a cheap non-cryptographic mix of the input.
/// Inputs are attacker-influenced (paths, addresses), so that mix is not DoS-resistant, and
/// need not be: two inputs that fall into one slot only evict each other and are computed
/// with SipHash as without the memo. The work per flow stays bounded (one slot looked at, at
/// most [`MEMO_MAX_INPUT`] bytes compared) and so does its memory (at most [`MEMO_SLOTS`]
/// inputs of that size).
#[derive(Debug, Default)]
struct Memo<V> {
    key: [u64; 2],
    slots: Vec<Option<MemoSlot<V>>>,
    /// The input being looked up, built here to spare an allocation per lookup.
    scratch: Vec<u8>,
}

#[derive(Debug)]
struct MemoSlot<V> {
    input: Box<[u8]>,
    n: u64,
    value: V,
}

/// The memo of single digests.
type DigestMemo = Memo<u64>;

impl<V: Copy> Memo<V> {
    /// The slot of `input` and `n`: a multiply-rotate mix over 8-byte words.
    fn slot(input: &[u8], n: u64) -> usize {
        const M: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut h = n.wrapping_mul(M);
        for chunk in input.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            h = (h ^ u64::from_le_bytes(word))
                .wrapping_mul(M)
                .rotate_left(29);
        }
        // The top bits are the best mixed; MEMO_SLOTS is a power of two.
        (h >> (64 - MEMO_SLOTS.trailing_zeros())) as usize
    }

    fn heap_bytes(&self) -> usize {
        self.scratch.capacity()
            + self.slots.capacity() * size_of::<Option<MemoSlot<V>>>()
            + self
                .slots
                .iter()
                .flatten()
                .map(|s| s.input.len())
                .sum::<usize>()
    }

    /// The value of `parts` and `n` under `key`: from the memo when it holds exactly this
    /// input, else computed by `compute` and kept.
    fn get(&mut self, key: [u64; 2], parts: &[&str], n: u64, compute: impl FnOnce() -> V) -> V {
        if self.key != key || self.slots.is_empty() {
            self.key = key;
            self.slots.clear();
            self.slots.resize_with(MEMO_SLOTS, || None);
        }
        self.scratch.clear();
        for p in parts {
            // 0xff never occurs in UTF-8, so the encoding is unambiguous, as the digest's.
            self.scratch.extend_from_slice(p.as_bytes());
            self.scratch.push(0xff);
        }
        if self.scratch.len() > MEMO_MAX_INPUT {
            return compute();
        }
        let i = Self::slot(&self.scratch, n);
        if let Some(Some(slot)) = self.slots.get(i)
            && slot.n == n
            && *slot.input == *self.scratch
        {
            return slot.value;
        }
        let value = compute();
        if let Some(entry) = self.slots.get_mut(i) {
            *entry = Some(MemoSlot {
                input: self.scratch.as_slice().into(),
                n,
                value,
            });
        }
        value
    }
}

/// A map capped at `cap` entries. When full, a table of windows and counters (`KEEP` false)
/// evicts the entry inserted first; a table of learned state ([`Learned`]) refuses new keys.
#[derive(Debug)]
struct Bounded<V, const KEEP: bool = false> {
    map: DigestMap<V>,
    order: VecDeque<u64>,
    cap: usize,
    /// New keys refused because the table was full (learned tables only).
    refused: u64,
    /// Refusals already handed to [`Detectors::take_refused`].
    reported: u64,
}

/// A table of learned state: when full it keeps every entry and refuses new keys, so that
/// nothing learned can be flushed out by a flood of new keys and learned again silently.
type Learned<V> = Bounded<V, true>;

impl<V, const KEEP: bool> Bounded<V, KEEP> {
    fn new(cap: usize) -> Self {
        Self {
            map: DigestMap::default(),
            order: VecDeque::new(),
            cap: cap.max(1),
            refused: 0,
            reported: 0,
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn contains(&self, key: u64) -> bool {
        self.map.contains_key(&key)
    }

    fn is_full(&self) -> bool {
        self.map.len() >= self.cap
    }

    /// The entries, oldest first.
    fn in_order(&self) -> impl Iterator<Item = (u64, &V)> {
        self.order
            .iter()
            .filter_map(|k| self.map.get(k).map(|v| (*k, v)))
    }

    fn heap_bytes(&self) -> usize {
        // hashbrown: one control byte per bucket plus the slots; the deque's ring buffer.
        self.map.capacity() * (size_of::<(u64, V)>() + 1) + self.order.capacity() * 8
    }
}

impl<V> Learned<V> {
    /// The entry for `key`, inserted with `make` if absent; `None` (counted) when it is absent
    /// and the table is full: nothing learned is evicted to make room.
    fn entry(&mut self, key: u64, make: impl FnOnce() -> V) -> Option<&mut V> {
        if !self.map.contains_key(&key) {
            if self.is_full() {
                self.refused += 1;
                return None;
            }
            self.order.push_back(key);
        }
        Some(self.map.entry(key).or_insert_with(make))
    }

    /// Refusals since the last call, as `table`'s report (whether they are its first); none
    /// when there were none.
    fn take_refused(&mut self, table: LearnedTable) -> Option<Refused> {
        let count = self.refused - self.reported;
        let first = self.reported == 0;
        self.reported = self.refused;
        (count > 0).then_some(Refused {
            table,
            count,
            first,
        })
    }
}

impl<V> Bounded<V> {
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

/// Windowed counters of one source.
#[derive(Debug, Default)]
struct SourceState {
    ports: Distinct,
    failing_routes: Distinct,
    destinations: Distinct,
}

/// One burst counter's key, spelled out, and its rate.
#[derive(Debug, Clone)]
struct RateEntry {
    counter: Counter,
    source: Box<str>,
    destination: Box<str>,
    route: Box<str>,
    rate: Rate,
}

/// A source identity the detectors know, and since when.
#[derive(Debug, Clone)]
struct KnownIdentity {
    name: Box<str>,
    /// First seen, Unix milliseconds; `i64::MIN` when known from a baseline.
    first_seen: i64,
}

/// The status classes one route answered one source with (`status_class_new`).
#[derive(Debug, Clone)]
struct RouteClasses {
    /// `source`, `destination` and `route`, each ended by a newline (which none of them can
    /// hold): one allocation instead of three.
    names: Box<str>,
    /// First seen, Unix milliseconds; `i64::MIN` when known from a baseline.
    first_seen: i64,
    /// Bit `c` set: the route answered class `c`xx (1 to 5).
    learned: u8,
    /// Start of the fixed window in which classes not learned are counted.
    window_start: i64,
    /// Answers of each class not learned (index `c - 1`) in that window.
    new_answers: [u16; 5],
}

impl RouteClasses {
    fn new(source: &str, destination: &str, route: &str, first_seen: i64) -> Self {
        Self {
            names: format!("{source}\n{destination}\n{route}\n").into(),
            first_seen,
            learned: 0,
            window_start: first_seen,
            new_answers: [0; 5],
        }
    }

    /// (source, destination, route).
    fn parts(&self) -> (&str, &str, &str) {
        let mut it = self.names.split('\n');
        let source = it.next().unwrap_or_default();
        let destination = it.next().unwrap_or_default();
        let route = it.next().unwrap_or_default();
        (source, destination, route)
    }
}

/// The status class (1 to 5) of a status code, when it is one.
fn class_of(status: u16) -> Option<u8> {
    u8::try_from(status / 100)
        .ok()
        .filter(|c| (1..=5).contains(c))
}

/// The names of the classes in `mask` (`["2xx", "4xx"]`; bit `c` is class `c`xx).
pub fn class_names(mask: u8) -> Vec<String> {
    (1..=5u8)
        .filter(|c| mask & (1 << c) != 0)
        .map(|c| format!("{c}xx"))
        .collect()
}

/// The mask of class names (`2xx`; case-insensitive); `None` when one is not a class.
fn parse_classes<S: AsRef<str>>(names: &[S]) -> Option<u8> {
    names.iter().try_fold(0u8, |mask, n| {
        let n = n.as_ref().to_ascii_lowercase();
        let c = n.strip_suffix("xx")?.parse::<u8>().ok()?;
        (1..=5).contains(&c).then(|| mask | (1 << c))
    })
}

/// The status class a flow counts for `status_class_new`: an answer of the route itself, not
/// a policy denial, a refused token or an error the sidecar made.
pub fn route_answer_class(flow: &FlowEvent<'_>) -> Option<u8> {
    if flow.protocol == FlowProtocol::Tcp
        || flow.denied()
        || flow.token_error.is_some()
        || flow.sidecar_answer
    {
        return None;
    }
    class_of(flow.status?)
}

/// The detectors' parameters and learned state, as admin `/detectors` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct DetectorState {
    /// The configuration in force.
    pub parameters: Parameters,
    /// How full each table is.
    pub tables: Tables,
    /// Identities still in their learning window.
    pub learning: Vec<IdentityView>,
    /// Every burst counter key with its learned rate and threshold.
    pub burst_counters: Vec<CounterView>,
    /// Every route with the status classes it answered (`status_class_new`).
    pub routes: Vec<RouteView>,
}

/// One route's learned status classes.
#[derive(Debug, Clone, Serialize)]
pub struct RouteView {
    /// The source.
    pub source: String,
    /// The destination.
    pub destination: String,
    /// `METHOD /path/template`.
    pub route: String,
    /// The classes it answered, `2xx` ...
    pub status_classes: Vec<String>,
    /// While the route still learns: when it stops (absent when known from a baseline or
    /// learned).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub learning_until: Option<OffsetDateTime>,
}

/// The detector configuration in force.
#[derive(Debug, Clone, Serialize)]
pub struct Parameters {
    /// `learning_window`, seconds.
    pub learning_window_secs: u64,
    /// `window`, seconds.
    pub window_secs: u64,
    /// `fanout_threshold`.
    pub fanout_threshold: usize,
    /// `deny_burst_threshold` (a floor).
    pub deny_burst_threshold: usize,
    /// `not_found_burst_threshold` (a floor).
    pub not_found_burst_threshold: usize,
    /// `auth_failure_burst_threshold` (a floor).
    pub auth_failure_burst_threshold: usize,
    /// `status_class_threshold` (a floor).
    pub status_class_threshold: usize,
    /// `baseline_factor`.
    pub baseline_factor: u32,
    /// `rate_limit`, seconds.
    pub rate_limit_secs: u64,
    /// `max_tracked`.
    pub max_tracked: usize,
    /// `sensitive_paths`.
    pub sensitive_paths: Vec<String>,
    /// `metadata_addresses`.
    pub metadata_addresses: Vec<String>,
}

/// Entries in each detector table.
#[derive(Debug, Clone, Serialize)]
pub struct Tables {
    /// Learned edges.
    pub edges: usize,
    /// Edges of the baseline file.
    pub baseline_edges: usize,
    /// Sources with scan windows.
    pub sources: usize,
    /// Identities with remembered addresses.
    pub identities_with_addresses: usize,
    /// Addresses with handshake failures.
    pub handshake_sources: usize,
    /// Alert rate-limit keys.
    pub rate_limit_keys: usize,
    /// Burst counter keys.
    pub burst_counters: usize,
    /// Source identities known (learning or learned).
    pub known_identities: usize,
    /// Routes with learned status classes.
    pub routes: usize,
    /// New keys the full tables of learned state refused since the sidecar started.
    pub refused: RefusedCounts,
}

/// New keys refused by each table of learned state because it was full (`max_tracked`):
/// what was learned is kept, what is new is judged unknown.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedCounts {
    /// Source identities: such an identity does not learn, its flows are reported.
    pub known_identities: u64,
    /// Edges: such an edge stays new and raises `new_edge` (rate-limited).
    pub edges: u64,
    /// Routes: such a route's status classes are not judged.
    pub routes: u64,
    /// Identities' addresses: every address of such an identity is new.
    pub identities_with_addresses: u64,
}

/// A table of learned state that refuses new keys when full.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum LearnedTable {
    /// Known source identities.
    Identities,
    /// Learned edges.
    Edges,
    /// Routes with their status classes.
    Routes,
    /// Addresses each identity used.
    Addresses,
}

impl LearnedTable {
    /// The name `/detectors`, the metric label and the log use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identities => "known_identities",
            Self::Edges => "edges",
            Self::Routes => "routes",
            Self::Addresses => "identities_with_addresses",
        }
    }
}

/// Refusals of one learned table since they were last taken ([`Detectors::take_refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The table.
    pub table: LearnedTable,
    /// New keys refused.
    pub count: u64,
    /// The table's first refusals: logged once.
    pub first: bool,
}

/// An identity in its learning window.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityView {
    /// The SPIFFE ID.
    pub identity: String,
    /// When its learning window closes.
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// One burst counter key.
#[derive(Debug, Clone, Serialize)]
pub struct CounterView {
    /// `denied`, `not_found`, `auth_failed`, `invalid_token`.
    pub counter: &'static str,
    /// The alert it raises.
    pub alert: AlertKind,
    /// What it is keyed by.
    pub scope: Scope,
    /// The source.
    pub source: String,
    /// The destination (edge and route scopes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// The route (route scope).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Learned events per window.
    pub learned_per_window: f64,
    /// Windows that taught the learned rate.
    pub windows_learned: u32,
    /// Events in the window ending now (sliding estimate).
    pub last_window_count: u64,
    /// The count that alerts.
    pub threshold: u64,
}

/// What the detectors make of an identity presented from an address (inbound, after the
/// handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAddress {
    /// Nothing to report: an address the identity used before, its first address, one used
    /// while the identity learns, or an identity bound to its addresses (`address_binding`).
    Quiet,
    /// A known identity from an address it never used, after learning: a new replica or a
    /// credential used elsewhere. Settle it with [`Detectors::settle_source_address`].
    New,
}

/// What the discovery source announces for a new source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// The address is a pod the cluster announces for the very identity presented: a replica.
    Replica,
    /// The cluster announces the address for a pod without a sidecar, or does not know it as
    /// a pod's address (one it announces for another identity is a foreign address).
    Elsewhere,
    /// Nothing is known: no announced sets (file mode), or no answer in time.
    Unknown,
}

/// A source identity whose learning window opened: logged and counted by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearningStarted {
    /// The SPIFFE ID.
    pub identity: String,
    /// When its learning window closes.
    pub until: OffsetDateTime,
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
    /// The SipHash key of every digest: random per installation, kept in the state file so
    /// that persisted digests stay valid.
    key: [u64; 2],
    /// Recent digests by input (a cache: never changes a digest).
    memo: RefCell<DigestMemo>,
    /// The memo of whole flows' keys.
    flow_memo: RefCell<Memo<FlowKeys>>,
    /// The last host [`Self::names_metadata`] judged, and its answer: an app calls the same
    /// few hosts over and over, and parsing one as an address cost about 1,100 instructions.
    metadata_last: RefCell<Option<(Box<str>, bool)>>,
    started: Option<i64>,
    baseline: HashSet<u64, BuildHasherDefault<DigestHasher>>,
    edges: Learned<()>,
    sources: Bounded<SourceState>,
    identities: Learned<KnownIdentity>,
    rates: Bounded<RateEntry>,
    routes: Learned<RouteClasses>,
    learning_started: Vec<LearningStarted>,
    addresses: Learned<Vec<IpAddr>>,
    handshakes: Bounded<HandshakeState>,
    rate: Bounded<RateState>,
}

/// Source addresses remembered per identity.
const ADDRESSES_PER_IDENTITY: usize = 16;

/// Adds `ip` to an identity's addresses, forgetting the oldest past
/// [`ADDRESSES_PER_IDENTITY`].
fn remember_address(addrs: &mut Vec<IpAddr>, ip: IpAddr) {
    if addrs.len() >= ADDRESSES_PER_IDENTITY {
        addrs.remove(0);
    }
    addrs.push(ip);
}

/// A fresh digest key from the system random generator. Should it fail (it does not on any
/// supported system), the key is derived from the clock and the process id: digests then
/// stay correct, only less secret.
fn random_key() -> [u64; 2] {
    let mut bytes = [0u8; 16];
    if picket_common::crypto::fill_random(&mut bytes).is_err() {
        let t = OffsetDateTime::now_utc().unix_timestamp_nanos();
        bytes = (t ^ i128::from(std::process::id())).to_le_bytes();
    }
    let (a, b) = bytes.split_at(8);
    let word = |s: &[u8]| u64::from_le_bytes(<[u8; 8]>::try_from(s).unwrap_or_default());
    [word(a), word(b)]
}

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
    match host_part(addr) {
        HostPart::Ip(ip) => ip.to_string(),
        HostPart::Name(h) => h.to_ascii_lowercase(),
    }
}

/// The host of a `Host` value, as [`host_only`] names it, borrowed.
enum HostPart<'a> {
    Ip(IpAddr),
    /// Not lowercased yet.
    Name(&'a str),
}

fn host_part(addr: &str) -> HostPart<'_> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return HostPart::Ip(sa.ip());
    }
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return HostPart::Ip(ip);
    }
    let h = match addr.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => addr,
    };
    let h = h
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.');
    // `[v6]` without a port, or a bracketed address with a trailing dot.
    match h.parse::<IpAddr>() {
        Ok(ip) => HostPart::Ip(ip),
        Err(_) => HostPart::Name(h),
    }
}

/// Who a flow came from, as a detector key and for the alert.
struct Source<'r> {
    identity: Option<&'r str>,
    ip: Option<IpAddr>,
}

impl<'r> Source<'r> {
    /// Borrowed when the source has an identity (every flow between sidecars): the detectors
    /// read it per flow, and a copy cost an allocation each time.
    fn label(&self) -> Cow<'r, str> {
        match (self.identity, self.ip) {
            (Some(id), _) => Cow::Borrowed(id),
            (None, Some(ip)) => Cow::Owned(ip.to_string()),
            (None, None) => Cow::Borrowed("unknown"),
        }
    }
}

struct Pending {
    kind: AlertKind,
    /// What tells this alert apart from others of its kind, source and destination in the
    /// rate limit: the class of a `status_class_new` (each new class of a route is reported,
    /// so a success that follows new failures is not silenced by them); `None` for the rest.
    status_class: Option<u8>,
    severity: Severity,
    destination: Option<String>,
    evidence: Vec<(&'static str, u64)>,
    window: bool,
    first_seen: i64,
    summary: String,
}

impl Pending {
    /// The part of the rate-limit key beside kind, source and destination: the status class
    /// (1 to 5), or 0 when the alert has none.
    fn rate_limit_class(&self) -> u64 {
        self.status_class.map_or(0, u64::from)
    }
}

/// One flow as every detector reads it, worked out once.
struct Seen<'f, 'r> {
    flow: &'f FlowEvent<'r>,
    now: i64,
    learning: bool,
    keys: FlowKeys,
    src: Source<'f>,
    source_label: Cow<'f, str>,
    destination: Cow<'f, str>,
    route: Cow<'f, str>,
}

/// The digests one flow's tables are keyed by, computed together and memoized per distinct
/// (identity, source, destination, port, route): each is the digest its table always used
/// ([`Detectors::digest`] of the same parts), so state saved before reads the same. A flow
/// repeats the ones before it, and one lookup of the whole tuple cost less than one per
/// table (seven to nine per flow).
#[derive(Debug, Clone, Copy, Default)]
struct FlowKeys {
    /// The source identity's key in the table of identities, when the flow names one.
    identity: Option<u64>,
    edge: u64,
    source: u64,
    destination: u64,
    /// Of the route alone (a scan's distinct item).
    route: u64,
    /// Of (source, destination, route): its answered status classes.
    status: u64,
    /// Each burst counter's key, in [`Counter::ALL`]'s order.
    rates: [u64; Counter::ALL.len()],
}

/// The destination and route a burst counter's rate is kept per: its scope decides.
fn rate_scope<'a>(counter: Counter, destination: &'a str, route: &'a str) -> (&'a str, &'a str) {
    match counter.scope() {
        Scope::Source => ("", ""),
        Scope::Edge => (destination, ""),
        Scope::Route => (destination, route),
    }
}

/// What one flow adds to its source's distinct-item windows (digests; a port as itself).
struct ScanItems {
    port: Option<u64>,
    route: Option<u64>,
    destination: u64,
}

/// The window and threshold of the scan detectors.
struct Limits {
    window: i64,
    fanout: usize,
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
                status_class: None,
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
                status_class: None,
                severity: Severity::High,
                destination: Some(seen.destination.to_string()),
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
            status_class: None,
            severity: Severity::High,
            destination: None,
            evidence: vec![("distinct_destinations", n as u64)],
            window: true,
            first_seen: state.destinations.oldest().unwrap_or(now),
            summary: format!("{label} reached {n} distinct destinations"),
        });
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
            key: random_key(),
            memo: RefCell::default(),
            flow_memo: RefCell::default(),
            metadata_last: RefCell::default(),
            started: None,
            baseline: HashSet::default(),
            edges: Learned::new(cap),
            sources: Bounded::new(cap),
            identities: Learned::new(cap),
            rates: Bounded::new(cap),
            routes: Learned::new(cap),
            learning_started: Vec::new(),
            addresses: Learned::new(cap),
            handshakes: Bounded::new(cap),
            rate: Bounded::new(cap),
        }
    }

    /// Adds every edge of a baseline (flow lines and `"type":"edge"` lines; alerts and
    /// unreadable lines are skipped) and every burst rate (`"type":"rate"` lines), and returns
    /// how many distinct edges it holds now. The sources it names are known: they do not
    /// learn.
    pub fn load_baseline(&mut self, reader: impl BufRead) -> std::io::Result<usize> {
        for line in reader.lines() {
            let line = line?;
            if let Ok(flow) = serde_json::from_str::<FlowRecord<'_>>(&line) {
                if flow.line_type == LineType::Flow {
                    let event = flow.event();
                    let key = self.flow_edge_key(&event);
                    self.baseline.insert(key);
                    if let Some(id) = event.source_identity {
                        self.know_identity(id);
                    }
                    if let Some(class) = route_answer_class(&event) {
                        let source = Self::flow_source(&event).label();
                        let destination = Self::flow_destination(&event);
                        self.know_classes(&source, &destination, &event.route(), 1 << class);
                    }
                }
            } else if let Ok(edge) = serde_json::from_str::<BaselineEdge>(&line)
                && edge.line_type == LineType::Edge
            {
                let key = self.edge_key(&edge.source, &edge.destination, edge.port, &edge.route);
                self.baseline.insert(key);
                self.know_identity(&edge.source);
                // A class that is not one is an unreadable line's part: skipped with it.
                if let Some(mask) = parse_classes(&edge.status_classes).filter(|m| *m != 0) {
                    self.know_classes(&edge.source, &edge.destination, &edge.route, mask);
                }
            } else if let Ok(rate) = serde_json::from_str::<BaselineRate>(&line)
                && rate.line_type == LineType::Rate
            {
                self.seed_rate(&rate);
            }
        }
        Ok(self.baseline.len())
    }

    fn digest(&self, parts: &[&str], n: u64) -> u64 {
        match self.memo.try_borrow_mut() {
            Ok(mut memo) => memo.get(self.key, parts, n, || self.sip_digest(parts, n)),
            Err(_) => self.sip_digest(parts, n),
        }
    }

    fn sip_digest(&self, parts: &[&str], n: u64) -> u64 {
        // SipHash-2-4 with this installation's key: `std::hash::SipHasher` is deprecated in
        // favour of hashers whose algorithm may change between Rust releases, and digests
        // kept in the state file must mean the same after an upgrade.
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new_with_keys(self.key[0], self.key[1]);
        for p in parts {
            h.write(p.as_bytes());
            h.write_u8(0xff);
        }
        h.write_u64(n);
        h.finish()
    }

    /// The keys of a flow from `identity` (the source's, when it has one), labelled `source`,
    /// to `destination` on `port` and `route`: from the memo of whole flows when it holds this
    /// one, else each digest computed as its table's own.
    fn flow_keys(
        &self,
        identity: Option<&str>,
        source: &str,
        destination: &str,
        port: Option<u16>,
        route: &str,
    ) -> FlowKeys {
        let compute = || FlowKeys {
            identity: identity.map(|id| self.identity_key(id)),
            edge: self.edge_key(source, destination, port, route),
            source: self.digest(&["source", source], 0),
            destination: self.digest(&["dest", destination], 0),
            route: self.digest(&["route", route], 0),
            status: self.route_key(source, destination, route),
            rates: Counter::ALL.map(|c| self.rate_key(c, source, destination, route)),
        };
        // A leading tag keeps "no identity" apart from any identity's name.
        let (tag, id) = identity.map_or(("n", ""), |id| ("i", id));
        let parts = [tag, id, source, destination, route];
        let port = port.map_or(u64::MAX, u64::from);
        match self.flow_memo.try_borrow_mut() {
            Ok(mut memo) => memo.get(self.key, &parts, port, compute),
            Err(_) => compute(),
        }
    }

    /// The key of `counter`'s burst rate for a flow.
    fn rate_key(&self, counter: Counter, source: &str, destination: &str, route: &str) -> u64 {
        let (dest, route) = rate_scope(counter, destination, route);
        self.digest(&["rate", counter.as_str(), source, dest, route], 0)
    }

    fn edge_key(&self, source: &str, destination: &str, port: Option<u16>, route: &str) -> u64 {
        let port = port.map_or(u64::MAX, u64::from);
        self.digest(&["edge", source, destination, route], port)
    }

    fn flow_source<'r>(flow: &'r FlowEvent<'_>) -> Source<'r> {
        Source {
            identity: flow.source_identity,
            ip: flow.source_address.map(|a| a.ip()),
        }
    }

    /// Borrowed when the destination has an identity, as [`Source::label`].
    fn flow_destination<'r>(flow: &FlowEvent<'r>) -> Cow<'r, str> {
        if let Some(id) = flow.destination_identity {
            return Cow::Borrowed(id);
        }
        if let Some(h) = flow.host {
            return Cow::Owned(host_only(h));
        }
        flow.destination_address
            .map_or(Cow::Borrowed("unknown"), |a| Cow::Owned(a.ip().to_string()))
    }

    fn flow_edge_key(&self, flow: &FlowEvent<'_>) -> u64 {
        let source = Self::flow_source(flow).label();
        let destination = Self::flow_destination(flow);
        self.edge_key(&source, &destination, flow.destination_port, &flow.route())
    }

    /// Starts the burst counter of `rate` with its rate learned, as if it had been learning for
    /// [`MEAN_WINDOWS`](super::baseline::MEAN_WINDOWS) windows. Unknown counters are skipped.
    fn seed_rate(&mut self, rate: &BaselineRate) {
        let Some(counter) = Counter::parse(&rate.counter) else {
            return;
        };
        if !rate.per_second.is_finite() || rate.per_second < 0.0 {
            return;
        }
        self.know_identity(&rate.source);
        let key = self.rate_key(counter, &rate.source, &rate.destination, &rate.route);
        let (dest, route) = rate_scope(counter, &rate.destination, &rate.route);
        let learned = rate.per_second * self.cfg.window.as_secs_f64();
        let entry = self.rates.entry(key, || RateEntry {
            counter,
            source: rate.source.as_str().into(),
            destination: dest.into(),
            route: route.into(),
            rate: Rate::seeded(learned, super::baseline::MEAN_WINDOWS),
        });
        entry.rate.learned = learned;
        entry.rate.windows = entry.rate.windows.max(super::baseline::MEAN_WINDOWS);
    }

    /// Adds the classes of `mask` to the route's learned classes, as known from a baseline:
    /// the route does not learn any more.
    fn know_classes(&mut self, source: &str, destination: &str, route: &str, mask: u8) {
        let key = self.route_key(source, destination, route);
        if let Some(entry) = self.routes.entry(key, || {
            RouteClasses::new(source, destination, route, i64::MIN)
        }) {
            entry.first_seen = i64::MIN;
            entry.learned |= mask;
        }
    }

    /// The key of `identity` in the table of known identities.
    fn identity_key(&self, identity: &str) -> u64 {
        self.digest(&["identity", identity], 0)
    }

    fn route_key(&self, source: &str, destination: &str, route: &str) -> u64 {
        self.digest(&["status", source, destination, route], 0)
    }

    /// Marks `identity` as known: it learns nothing more and is reported from the start.
    fn know_identity(&mut self, identity: &str) {
        let key = self.identity_key(identity);
        if let Some(entry) = self.identities.entry(key, || KnownIdentity {
            name: identity.into(),
            first_seen: i64::MIN,
        }) {
            entry.first_seen = i64::MIN;
        }
    }

    /// Whether flows of `identity` (the name and its [`Self::identity_key`]; or, without one,
    /// of this sidecar's unauthenticated sources) are learned rather than reported at `now`,
    /// as [`Self::learns`] says; the first flow of an identity opens its learning window (an
    /// identity the full table of known identities cannot take does not learn: its flows are
    /// reported).
    fn learning(&mut self, identity: Option<(&str, u64)>, now: i64) -> bool {
        let start = *self.started.get_or_insert(now);
        let Some((id, key)) = identity else {
            return self.in_learning_window(start, now);
        };
        let learns = self.learns_key(key, now);
        if self.identities.contains(key) {
            return learns;
        }
        let kept = self
            .identities
            .entry(key, || KnownIdentity {
                name: id.into(),
                first_seen: now,
            })
            .is_some();
        if kept && learns {
            self.learning_started.push(LearningStarted {
                identity: id.to_owned(),
                until: from_millis(now.saturating_add(duration_ms(self.cfg.learning_window))),
            });
        }
        learns
    }

    /// Whether a learning window that opened at `start` (ms) is still open at `now`.
    fn in_learning_window(&self, start: i64, now: i64) -> bool {
        now.saturating_sub(start) < duration_ms(self.cfg.learning_window)
    }

    /// The identities whose learning window opened since the last call.
    pub fn take_learning_started(&mut self) -> Vec<LearningStarted> {
        std::mem::take(&mut self.learning_started)
    }

    /// New keys each learned table refused since the last call because it was full (tables
    /// with none left out), and whether it is that table's first refusal.
    pub fn take_refused(&mut self) -> Vec<Refused> {
        [
            self.identities.take_refused(LearnedTable::Identities),
            self.edges.take_refused(LearnedTable::Edges),
            self.routes.take_refused(LearnedTable::Routes),
            self.addresses.take_refused(LearnedTable::Addresses),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Looks at one finished request or connection; returns the alerts it raises. Each
    /// detector is one method below, reading the same [`Seen`] (worked out once per flow) and
    /// adding what it finds to one list, which [`Self::emit`] rate-limits. They are methods,
    /// not implementations of a trait: they share the per-source tables and the rate limiter,
    /// and there is no second set of detectors to choose between at run time.
    pub fn observe_flow(&mut self, flow: &FlowRecord<'_>, now: OffsetDateTime) -> Vec<Alert> {
        self.observe_event(&flow.event(), now)
    }

    /// [`Self::observe_flow`] on the compact event the request path hands over (the fields
    /// of the record the detectors read), so a request is looked at without its whole record.
    pub fn observe_event(&mut self, flow: &FlowEvent<'_>, now: OffsetDateTime) -> Vec<Alert> {
        let now = millis(now);
        let src = Self::flow_source(flow);
        let source_label = src.label();
        let destination = Self::flow_destination(flow);
        let route = flow.route();
        let keys = self.flow_keys(
            src.identity,
            &source_label,
            &destination,
            flow.destination_port,
            &route,
        );
        let learning = self.learning(src.identity.zip(keys.identity), now);
        let seen = Seen {
            flow,
            now,
            learning,
            keys,
            source_label,
            src,
            destination,
            route,
        };
        let mut pending: Vec<Pending> = Vec::new();
        self.new_edge(&seen, &mut pending);
        self.windowed(&seen, &mut pending);
        self.status_class_new(&seen, &mut pending);
        self.sensitive_path(&seen, &mut pending);
        self.metadata_call(&seen, &mut pending);
        self.emit(&seen.src, &seen.source_label, pending, now)
    }

    /// `new_edge`: a (source, destination, port, route) never seen before or in the baseline.
    fn new_edge(&mut self, seen: &Seen<'_, '_>, pending: &mut Vec<Pending>) {
        let flow = seen.flow;
        let edge = seen.keys.edge;
        if self.baseline.contains(&edge) || self.edges.contains(edge) {
            return;
        }
        // An edge the full table refuses stays new: it is reported (rate-limited), not
        // forgotten in silence.
        let _kept = self.edges.entry(edge, || ());
        if seen.learning {
            return;
        }
        let port = flow
            .destination_port
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        pending.push(Pending {
            kind: AlertKind::NewEdge,
            status_class: None,
            severity: Severity::Medium,
            destination: Some(seen.destination.to_string()),
            evidence: vec![("requests", 1)],
            window: false,
            first_seen: seen.now,
            summary: format!(
                "{} reached {}{port} {} for the first time",
                seen.source_label, seen.destination, seen.route
            ),
        });
    }

    /// Whether `identity` learns at `now` (ms), without making it known: the one rule of
    /// learning windows. An identity not seen yet would open its window now (so with a
    /// learning window of zero it does not learn).
    fn learns(&self, identity: &str, now: i64) -> bool {
        self.learns_key(self.identity_key(identity), now)
    }

    /// [`Self::learns`] of the identity whose [`Self::identity_key`] is `key`.
    fn learns_key(&self, key: u64, now: i64) -> bool {
        match self.identities.map.get(&key) {
            Some(i) => self.in_learning_window(i.first_seen, now),
            // Not seen yet: its window would open now, unless the full table cannot take it.
            None => !self.identities.is_full() && self.in_learning_window(now, now),
        }
    }

    /// `new_source_address`, first step: a peer presented `identity` from `ip` (inbound, once
    /// per connection, where the peer's address is meaningful). Addresses of an identity
    /// that learns, and its first address, are remembered; identities bound to their
    /// addresses are checked by `address_binding` instead.
    pub fn observe_peer_address(
        &mut self,
        identity: &str,
        ip: IpAddr,
        now: OffsetDateTime,
    ) -> PeerAddress {
        if self.cfg.address_binding.check(identity, ip) != Bound::Unknown {
            return PeerAddress::Quiet;
        }
        let now = millis(now);
        let learning = self.learns(identity, now);
        let key = self.digest(&["addr", identity], 0);
        let known = self.addresses.contains(key);
        // An identity whose addresses the full table cannot take has no address it is known
        // from: past its learning window every address it uses is new.
        let Some(addrs) = self.addresses.entry(key, Vec::new) else {
            return if learning {
                PeerAddress::Quiet
            } else {
                PeerAddress::New
            };
        };
        if addrs.contains(&ip) {
            return PeerAddress::Quiet;
        }
        if known && !learning {
            return PeerAddress::New;
        }
        remember_address(addrs, ip);
        PeerAddress::Quiet
    }

    /// `new_source_address`, second step: what the cluster announces for a new address of
    /// `identity`. The address is remembered either way; a replica (the cluster announces the
    /// address for this identity) raises nothing, anything else the low-severity alert.
    pub fn settle_source_address(
        &mut self,
        identity: &str,
        source: SocketAddr,
        announced: Announced,
        now: OffsetDateTime,
    ) -> Vec<Alert> {
        let now = millis(now);
        let ip = source.ip();
        let key = self.digest(&["addr", identity], 0);
        let known = match self.addresses.entry(key, Vec::new) {
            Some(addrs) if addrs.contains(&ip) => return Vec::new(),
            Some(addrs) => {
                remember_address(addrs, ip);
                addrs.len() as u64 - 1
            }
            // Not remembered (the table is full): judged as an address never used.
            None => 0,
        };
        let elsewhere = announced == Announced::Elsewhere;
        if announced == Announced::Replica {
            return Vec::new();
        }
        let pending = Pending {
            kind: AlertKind::NewSourceAddress,
            status_class: None,
            severity: Severity::Low,
            destination: None,
            evidence: vec![
                ("known_addresses", known),
                ("announced_elsewhere", u64::from(elsewhere)),
            ],
            window: false,
            first_seen: now,
            summary: format!(
                "{identity} connected from {ip}, an address it never used{}",
                if elsewhere {
                    " and that the cluster does not announce for it"
                } else {
                    ""
                }
            ),
        };
        let src = Source {
            identity: Some(identity),
            ip: Some(ip),
        };
        self.emit(&src, identity, vec![pending], now)
    }

    /// `status_class_new`: a route answers the source with a status class it never answered
    /// it with, `status_class_threshold` times within `window`, once the route learned. A
    /// route learns every class while its source learns and during the `learning_window`
    /// after the route was first seen, and always its first class. A class is reported once:
    /// it is then one the route answers.
    fn status_class_new(&mut self, seen: &Seen<'_, '_>, pending: &mut Vec<Pending>) {
        let Some(class) = route_answer_class(seen.flow) else {
            return;
        };
        let key = seen.keys.status;
        let learning_window = duration_ms(self.cfg.learning_window);
        let window = duration_ms(self.cfg.window);
        let threshold = self.cfg.status_class_threshold;
        let now = seen.now;
        // A route the full table refuses is not judged (counted in the refusals).
        let Some(entry) = self.routes.entry(key, || {
            RouteClasses::new(&seen.source_label, &seen.destination, &seen.route, now)
        }) else {
            return;
        };
        let bit = 1u8 << class;
        if entry.learned & bit != 0 {
            return;
        }
        if entry.learned == 0
            || seen.learning
            || now.saturating_sub(entry.first_seen) < learning_window
        {
            entry.learned |= bit;
            return;
        }
        if now.saturating_sub(entry.window_start) >= window {
            entry.window_start = now;
            entry.new_answers = [0; 5];
        }
        let slot = usize::from(class - 1);
        let n = entry.new_answers[slot].saturating_add(1);
        entry.new_answers[slot] = n;
        if usize::from(n) < threshold {
            return;
        }
        let known = entry.learned;
        entry.learned |= bit;
        entry.new_answers[slot] = 0;
        // Success where the route only ever refused or failed: perhaps a way around a check.
        let severity = if class == 2 && known & 0b1100 == 0 {
            Severity::High
        } else {
            Severity::Medium
        };
        pending.push(Pending {
            kind: AlertKind::StatusClassNew,
            status_class: Some(class),
            severity,
            destination: Some(format!("{} {}", seen.destination, seen.route)),
            evidence: vec![
                ("status_class", u64::from(class)),
                ("status", u64::from(seen.flow.status.unwrap_or_default())),
                ("answers", u64::from(n)),
                ("threshold", threshold as u64),
            ],
            window: true,
            first_seen: entry.window_start,
            summary: format!(
                "{} {} answered {} with {class}xx {n} times, a status class it never answered before (known: {})",
                seen.destination,
                seen.route,
                seen.source_label,
                class_names(known).join(", ")
            ),
        });
    }

    /// The windowed counters of the flow's source: the scans and the bursts.
    fn windowed(&mut self, seen: &Seen<'_, '_>, pending: &mut Vec<Pending>) {
        let flow = seen.flow;
        let skey = seen.keys.source;
        let failed = flow.denied() || flow.status.is_some_and(|s| (400..500).contains(&s));
        let items = ScanItems {
            port: flow.destination_port.map(u64::from),
            route: (failed && flow.protocol != FlowProtocol::Tcp).then_some(seen.keys.route),
            destination: seen.keys.destination,
        };
        let limits = Limits {
            window: duration_ms(self.cfg.window),
            fanout: self.cfg.fanout_threshold,
        };
        let state = self.sources.entry(skey, SourceState::default);
        scans(state, seen, &items, &limits, pending);
        // Burst counters, each against the rate its key learned.
        for (counter, key) in Counter::ALL.into_iter().zip(seen.keys.rates) {
            if counter.counts(flow) {
                pending.extend(self.count_burst(counter, key, seen));
            }
        }
    }

    /// `sensitive_path`: a request for a configured sensitive path prefix.
    fn sensitive_path(&self, seen: &Seen<'_, '_>, pending: &mut Vec<Pending>) {
        let flow = seen.flow;
        let Some(path) = flow.path else {
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
            status_class: None,
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
        // The Host is named only when it is a metadata address: every outbound request
        // passes here, and formatting it cost more than the check.
        let host = by_address.or_else(|| {
            let raw = flow.host?;
            self.names_metadata(raw).then(|| host_only(raw))
        });
        if let Some(host) = host {
            pending.push(self.metadata_alert(&seen.source_label, host, seen.now));
        }
    }

    /// Counts one event of `counter` (its rate's key is `key`) and returns the burst alert
    /// when the key's sliding count reached its threshold (never while the source learns).
    fn count_burst(&mut self, counter: Counter, key: u64, seen: &Seen<'_, '_>) -> Option<Pending> {
        let (source, destination) = (&*seen.source_label, &*seen.destination);
        let (now, learning) = (seen.now, seen.learning);
        let (dest, route) = rate_scope(counter, destination, &seen.route);
        let window = duration_ms(self.cfg.window);
        let floor = counter.floor(&self.cfg);
        let factor = self.cfg.baseline_factor;
        let entry = self.rates.entry(key, || RateEntry {
            counter,
            source: source.into(),
            destination: dest.into(),
            route: route.into(),
            rate: Rate::new(now),
        });
        let (n, threshold) = entry.rate.observe(now, window, learning, floor, factor);
        if learning || n < threshold {
            return None;
        }
        let first_seen = if entry.rate.previous > 0 {
            now.saturating_sub(window)
        } else {
            entry.rate.window_start
        };
        let learned = entry.rate.learned.round();
        let learned = if learned.is_finite() && learned > 0.0 {
            learned as u64
        } else {
            0
        };
        let label = match counter.scope() {
            Scope::Source | Scope::Edge => destination.to_owned(),
            Scope::Route => format!("{destination} {route}"),
        };
        Some(Pending {
            kind: counter.kind(),
            status_class: None,
            severity: counter.severity(),
            destination: Some(label),
            evidence: vec![
                (counter.evidence(), n),
                ("threshold", threshold),
                ("learned_per_window", learned),
            ],
            window: true,
            first_seen,
            summary: counter.summary(source, n, destination, route),
        })
    }

    /// Whether the host of `addr` (as [`host_only`] names it) is a configured metadata
    /// address: the same IP address in any spelling, or the same name in any case.
    fn names_metadata(&self, addr: &str) -> bool {
        let Ok(mut last) = self.metadata_last.try_borrow_mut() else {
            return self.judge_metadata(addr);
        };
        match last.as_ref() {
            Some((host, named)) if **host == *addr => *named,
            _ => {
                let named = self.judge_metadata(addr);
                *last = Some((addr.into(), named));
                named
            }
        }
    }

    /// [`Self::names_metadata`] without the memo.
    fn judge_metadata(&self, addr: &str) -> bool {
        match host_part(addr) {
            HostPart::Ip(ip) => self.metadata_ips.contains(&ip),
            HostPart::Name(h) => self.cfg.metadata_addresses.iter().any(|m| {
                m.len() == h.len()
                    && m.bytes()
                        .zip(h.bytes())
                        .all(|(a, b)| a == b.to_ascii_lowercase())
            }),
        }
    }

    fn metadata_alert(&self, source_label: &str, host: String, now: i64) -> Pending {
        Pending {
            kind: AlertKind::MetadataAccess,
            status_class: None,
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
        if !self.names_metadata(host) {
            return Vec::new();
        }
        let p = self.metadata_alert(own_identity, host_only(host), now);
        let src = Source {
            identity: Some(own_identity),
            ip: None,
        };
        self.emit(&src, own_identity, vec![p], now)
    }

    /// A peer presented `identity` from `source`, an address that belongs to another
    /// identity: outside the identity's binding, or (`owner`) a pod the cluster announces for
    /// that other identity.
    pub fn observe_foreign_address(
        &mut self,
        identity: &str,
        source: SocketAddr,
        owner: Option<&str>,
        now: OffsetDateTime,
    ) -> Vec<Alert> {
        let now = millis(now);
        let ip = source.ip();
        let denied = self.cfg.address_binding.action == ForeignAddressAction::Deny;
        let whose = match owner {
            Some(other) => format!("which the cluster announces for {other}"),
            None => "which is not one of its addresses".to_owned(),
        };
        let pending = Pending {
            kind: AlertKind::ForeignAddress,
            status_class: None,
            severity: Severity::High,
            destination: None,
            evidence: vec![
                ("denied", u64::from(denied)),
                ("announced_for_another", u64::from(owner.is_some())),
            ],
            window: false,
            first_seen: now,
            summary: format!(
                "{identity} was presented from {ip}, {whose}{}",
                if denied {
                    "; the connection was closed"
                } else {
                    ""
                }
            ),
        };
        let src = Source {
            identity: Some(identity),
            ip: Some(ip),
        };
        self.emit(&src, identity, vec![pending], now)
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
            status_class: None,
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
                p.rate_limit_class(),
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
    /// sources, rate-limit keys, burst counter keys, known identities, routes).
    pub fn tracked(&self) -> [usize; 8] {
        [
            self.edges.len(),
            self.sources.len(),
            self.addresses.len(),
            self.handshakes.len(),
            self.rate.len(),
            self.rates.len(),
            self.identities.len(),
            self.routes.len(),
        ]
    }

    /// The parameters and learned state at `now`: the body of admin `/detectors`.
    pub fn state(&self, now: OffsetDateTime) -> DetectorState {
        let now_ms = millis(now);
        DetectorState {
            parameters: self.parameters(),
            tables: self.tables(),
            learning: self.learning_identities(now_ms),
            burst_counters: self.burst_counters(now_ms),
            routes: self.route_views(now_ms),
        }
    }

    /// The configuration in force, as `/detectors` shows it.
    fn parameters(&self) -> Parameters {
        let c = &self.cfg;
        Parameters {
            learning_window_secs: c.learning_window.as_secs(),
            window_secs: c.window.as_secs(),
            fanout_threshold: c.fanout_threshold,
            deny_burst_threshold: c.deny_burst_threshold,
            not_found_burst_threshold: c.not_found_burst_threshold,
            auth_failure_burst_threshold: c.auth_failure_burst_threshold,
            status_class_threshold: c.status_class_threshold,
            baseline_factor: c.baseline_factor,
            rate_limit_secs: c.rate_limit.as_secs(),
            max_tracked: c.max_tracked,
            sensitive_paths: c.sensitive_paths.clone(),
            metadata_addresses: c.metadata_addresses.clone(),
        }
    }

    /// How full each table is.
    fn tables(&self) -> Tables {
        let [
            edges,
            sources,
            addresses,
            handshakes,
            rate_limits,
            counters,
            identities,
            routes,
        ] = self.tracked();
        Tables {
            edges,
            baseline_edges: self.baseline.len(),
            sources,
            identities_with_addresses: addresses,
            handshake_sources: handshakes,
            rate_limit_keys: rate_limits,
            burst_counters: counters,
            known_identities: identities,
            routes,
            refused: RefusedCounts {
                known_identities: self.identities.refused,
                edges: self.edges.refused,
                routes: self.routes.refused,
                identities_with_addresses: self.addresses.refused,
            },
        }
    }

    /// The identities still in their learning window at `now_ms`, by name.
    fn learning_identities(&self, now_ms: i64) -> Vec<IdentityView> {
        let learning_window = duration_ms(self.cfg.learning_window);
        let mut learning: Vec<IdentityView> = self
            .identities
            .map
            .values()
            .filter(|i| i.first_seen != i64::MIN)
            .filter(|i| now_ms.saturating_sub(i.first_seen) < learning_window)
            .map(|i| IdentityView {
                identity: i.name.to_string(),
                until: from_millis(i.first_seen.saturating_add(learning_window)),
            })
            .collect();
        learning.sort_by(|a, b| a.identity.cmp(&b.identity));
        learning
    }

    /// Every route with its learned status classes at `now_ms`, in a stable order.
    fn route_views(&self, now_ms: i64) -> Vec<RouteView> {
        let learning_window = duration_ms(self.cfg.learning_window);
        let mut routes: Vec<RouteView> = self
            .routes
            .map
            .values()
            .map(|r| {
                let (source, destination, route) = r.parts();
                let until = r.first_seen.saturating_add(learning_window);
                RouteView {
                    source: source.to_owned(),
                    destination: destination.to_owned(),
                    route: route.to_owned(),
                    status_classes: class_names(r.learned),
                    learning_until: (r.first_seen != i64::MIN && now_ms < until)
                        .then(|| from_millis(until)),
                }
            })
            .collect();
        routes.sort_by(|a, b| {
            (&a.source, &a.destination, &a.route).cmp(&(&b.source, &b.destination, &b.route))
        });
        routes
    }

    /// Every burst counter with its learned rate and threshold at `now_ms`, in a stable order.
    fn burst_counters(&self, now_ms: i64) -> Vec<CounterView> {
        let window = duration_ms(self.cfg.window);
        let mut counters: Vec<CounterView> = self
            .rates
            .map
            .values()
            .map(|r| CounterView {
                counter: r.counter.as_str(),
                alert: r.counter.kind(),
                scope: r.counter.scope(),
                source: r.source.to_string(),
                destination: (!r.destination.is_empty()).then(|| r.destination.to_string()),
                route: (!r.route.is_empty()).then(|| r.route.to_string()),
                learned_per_window: r.rate.learned,
                windows_learned: r.rate.windows,
                last_window_count: r.rate.estimate(now_ms, window),
                threshold: r
                    .rate
                    .threshold(r.counter.floor(&self.cfg), self.cfg.baseline_factor),
            })
            .collect();
        counters.sort_by(|a, b| {
            (a.counter, &a.source, &a.destination, &a.route).cmp(&(
                b.counter,
                &b.source,
                &b.destination,
                &b.route,
            ))
        });
        counters
    }

    /// Heap bytes held by the tables, from their capacities (an estimate that ignores
    /// allocator overhead).
    pub fn heap_bytes(&self) -> usize {
        let per_source = |s: &SourceState| {
            (s.ports.items.capacity()
                + s.failing_routes.items.capacity()
                + s.destinations.items.capacity())
                * 16
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
            + self.rates.heap_bytes()
            + self
                .rates
                .map
                .values()
                .map(|r| r.source.len() + r.destination.len() + r.route.len())
                .sum::<usize>()
            + self.identities.heap_bytes()
            + self
                .identities
                .map
                .values()
                .map(|i| i.name.len())
                .sum::<usize>()
            + self.routes.heap_bytes()
            + self
                .routes
                .map
                .values()
                .map(|r| r.names.len())
                .sum::<usize>()
            + self.baseline.capacity() * 9
            + self.memo.try_borrow().map_or(0, |m| m.heap_bytes())
            + self.flow_memo.try_borrow().map_or(0, |m| m.heap_bytes())
            + self
                .metadata_last
                .try_borrow()
                .map_or(0, |m| m.as_ref().map_or(0, |(host, _)| host.len()))
    }

    /// Whether `path` is one of the configured sensitive paths.
    pub fn is_sensitive_path(&self, path: &str) -> bool {
        self.sensitive.iter().any(|r| r.matches(path))
    }
}

#[cfg(test)]
mod tests;
