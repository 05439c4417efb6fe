//! Reading flow logs fast: large chunks, one JSON parse per line that borrows its strings, and
//! aggregation into interned identities, edges and routes without per-line allocation for
//! anything already seen.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use picket_proxy::direction::Direction;
use picket_proxy::telemetry::alert::{Alert, AlertKind, Severity};
use picket_proxy::telemetry::baseline::{Counter, Scope};
use picket_proxy::telemetry::detect::{BaselineEdge, host_only, route_answer_class};
use picket_proxy::telemetry::flow::{
    FlowPhase, FlowProtocol, FlowRecord, LineType, Verdict, route_template,
};

use super::AnalyzeError;

/// Distinct `METHOD path` pairs kept per edge for policy suggestions.
pub(crate) const MAX_PATHS_PER_EDGE: usize = 10_000;
/// Distinct routes kept per edge.
pub(crate) const MAX_ROUTES_PER_EDGE: usize = 2_000;

/// Identities (or addresses) by number.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    ids: HashMap<Box<str>, u32>,
    pub(crate) names: Vec<Box<str>>,
}

impl Interner {
    pub(crate) fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    pub(crate) fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |n| n)
    }
}

/// Counts from one side of the sidecar pair.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) requests: u64,
    pub(crate) allowed: u64,
    pub(crate) denied: u64,
    pub(crate) errors: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
}

impl Counts {
    fn plus(self, o: Self) -> Self {
        Self {
            requests: self.requests + o.requests,
            allowed: self.allowed + o.allowed,
            denied: self.denied + o.denied,
            errors: self.errors + o.errors,
            bytes_in: self.bytes_in + o.bytes_in,
            bytes_out: self.bytes_out + o.bytes_out,
        }
    }

    fn minus(self, o: Self) -> Self {
        Self {
            requests: self.requests.saturating_sub(o.requests),
            allowed: self.allowed.saturating_sub(o.allowed),
            denied: self.denied.saturating_sub(o.denied),
            errors: self.errors.saturating_sub(o.errors),
            bytes_in: self.bytes_in.saturating_sub(o.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(o.bytes_out),
        }
    }

    fn add(&mut self, r: &FlowRecord<'_>) {
        self.requests += 1;
        match r.verdict {
            Some(Verdict::Deny) => self.denied += 1,
            Some(Verdict::Allow) => self.allowed += 1,
            None => {}
        }
        if r.status.is_some_and(|s| s >= 500) {
            self.errors += 1;
        }
        self.bytes_in += r.bytes_in;
        self.bytes_out += r.bytes_out;
    }
}

/// What one side of the sidecar pair saw of a route.
#[derive(Debug, Default)]
pub(crate) struct RouteSide {
    pub(crate) requests: u64,
    pub(crate) denied: u64,
    /// Of `requests`, those paired with the other side's record of the same request.
    pub(crate) paired: u64,
    pub(crate) paired_denied: u64,
    /// Destination ports this side recorded (at most [`MAX_PORTS_PER_ROUTE`]): the peer
    /// sidecar's port outbound, the application's inbound.
    pub(crate) ports: Vec<u16>,
}

/// One route of an edge.
#[derive(Debug, Default)]
pub(crate) struct RouteAgg {
    pub(crate) inbound: RouteSide,
    pub(crate) outbound: RouteSide,
    pub(crate) in_baseline: bool,
    pub(crate) after_baseline: bool,
    /// The status classes the route answered in the baseline period (bit `c`: `c`xx), as the
    /// `status_class_new` detector counts answers.
    pub(crate) baseline_classes: u8,
    /// A concrete request of this route, for policy evaluation.
    pub(crate) sample_path: Option<Box<str>>,
}

/// Requests and denials of a route.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RouteCounts {
    pub(crate) requests: u64,
    pub(crate) denied: u64,
}

impl RouteAgg {
    /// Requests and denials of this route, counted as [`EdgeAgg::counts`] counts them: paired
    /// requests once (by their inbound record), the rest by the side that saw more.
    pub(crate) fn counts(&self) -> RouteCounts {
        let (i, o) = (&self.inbound, &self.outbound);
        let in_rest = i.requests - i.paired.min(i.requests);
        let out_rest = o.requests - o.paired.min(o.requests);
        let rest = if in_rest >= out_rest {
            RouteCounts {
                requests: in_rest,
                denied: i.denied.saturating_sub(i.paired_denied),
            }
        } else {
            RouteCounts {
                requests: out_rest,
                denied: o.denied.saturating_sub(o.paired_denied),
            }
        };
        RouteCounts {
            requests: i.paired.min(i.requests) + rest.requests,
            denied: i.paired_denied + rest.denied,
        }
    }

    /// Every port either side recorded, as the detectors of both sidecars key edges on them.
    pub(crate) fn all_ports(&self) -> BTreeSet<u16> {
        self.inbound
            .ports
            .iter()
            .chain(&self.outbound.ports)
            .copied()
            .collect()
    }

    /// Counts a record on this route, on the side that recorded it.
    fn add(&mut self, r: &FlowRecord<'_>, before: bool) {
        let side = if r.direction == Direction::Inbound {
            &mut self.inbound
        } else {
            &mut self.outbound
        };
        side.requests += 1;
        side.denied += u64::from(r.verdict == Some(Verdict::Deny));
        if let Some(p) = r.destination_port
            && !side.ports.contains(&p)
            && side.ports.len() < MAX_PORTS_PER_ROUTE
        {
            side.ports.push(p);
        }
        if before {
            self.in_baseline = true;
            if let Some(class) = route_answer_class(&r.event()) {
                self.baseline_classes |= 1 << class;
            }
        } else {
            self.after_baseline = true;
        }
        if self.sample_path.is_none() {
            self.sample_path = r.path.as_deref().map(Into::into);
        }
    }
}

/// Distinct ports kept per route and side.
pub(crate) const MAX_PORTS_PER_ROUTE: usize = 8;

/// Everything seen from one source to one destination.
#[derive(Debug, Default)]
pub(crate) struct EdgeAgg {
    pub(crate) inbound: Counts,
    pub(crate) outbound: Counts,
    /// The part of `inbound` and `outbound` paired with the other side's record of the same
    /// request (see [`Aggregate::pair`]).
    pub(crate) inbound_paired: Counts,
    pub(crate) outbound_paired: Counts,
    pub(crate) first_seen: i64,
    pub(crate) last_seen: i64,
    /// Destination ports of inbound records (the application's, which policy evaluates).
    pub(crate) ports_in: BTreeMap<u16, u64>,
    /// Destination ports of outbound records (the port dialled: the peer sidecar's).
    pub(crate) ports_out: BTreeMap<u16, u64>,
    pub(crate) protocols: u8,
    pub(crate) routes: HashMap<Box<str>, RouteAgg>,
    /// Records of routes not kept (over the per-edge cap), per side.
    pub(crate) routes_overflow_in: u64,
    pub(crate) routes_overflow_out: u64,
    pub(crate) in_baseline: bool,
    pub(crate) after_baseline: bool,
    /// Allowed `METHOD path` pairs (no 404/405 answers), for policy suggestions.
    pub(crate) allowed_paths: HashSet<Box<str>>,
    pub(crate) paths_overflow: u64,
    /// Ports of allowed inbound traffic, for policy suggestions.
    pub(crate) allowed_ports_in: BTreeSet<u16>,
    /// Ports of allowed outbound traffic, used only without allowed inbound traffic.
    pub(crate) allowed_ports_out: BTreeSet<u16>,
    pub(crate) allowed_tcp: bool,
    /// Records behind `allowed_paths`, the allowed ports and `allowed_tcp`.
    pub(crate) allowed_records: u64,
    /// Of which inbound.
    pub(crate) allowed_inbound_records: u64,
    pub(crate) sample_source_ip: Option<IpAddr>,
    pub(crate) sample_host: Option<Box<str>>,
}

impl EdgeAgg {
    /// Requests on this edge. A request recorded by both sidecars and paired by its trace
    /// context counts once, by its inbound record (which has the verdict), on the edge the
    /// inbound record names; the rest (records without trace context, or whose other side was
    /// not read) count by the side that saw more, inbound on ties.
    pub(crate) fn counts(&self) -> Counts {
        let in_rest = self.inbound.minus(self.inbound_paired);
        let out_rest = self.outbound.minus(self.outbound_paired);
        // The inbound side enforces policy; its verdicts win when it saw the traffic.
        let rest = if in_rest.requests >= out_rest.requests {
            in_rest
        } else {
            out_rest
        };
        self.inbound_paired.plus(rest)
    }

    /// Whether any request counts on this edge once paired records are counted where their
    /// inbound record puts them.
    pub(crate) fn counted(&self) -> bool {
        self.counts().requests > 0
    }

    /// Whether policy questions take the inbound side's ports: an inbound record carries the
    /// application's port, which policy evaluates; an outbound one only the port dialled
    /// (the peer sidecar's), used when no inbound record of the edge was read.
    pub(crate) fn inbound_ports_for_policy(&self) -> bool {
        self.inbound.requests > 0
    }

    /// The edge's ports as policy sees them (see [`Self::inbound_ports_for_policy`]).
    pub(crate) fn policy_ports(&self) -> &BTreeMap<u16, u64> {
        if self.inbound_ports_for_policy() {
            &self.ports_in
        } else {
            &self.ports_out
        }
    }

    /// A route's ports as policy sees them; empty when the chosen side has none for it.
    pub(crate) fn route_policy_ports<'r>(&self, r: &'r RouteAgg) -> &'r [u16] {
        if self.inbound_ports_for_policy() {
            &r.inbound.ports
        } else {
            &r.outbound.ports
        }
    }

    /// Ports a suggested policy must keep allowing: those of admitted inbound traffic, or,
    /// when none was recorded in the period, those of admitted outbound traffic.
    pub(crate) fn suggested_ports(&self) -> &BTreeSet<u16> {
        if self.allowed_inbound_records > 0 {
            &self.allowed_ports_in
        } else {
            &self.allowed_ports_out
        }
    }

    /// Records of routes not kept, counted like the requests (the larger side).
    pub(crate) fn routes_overflow(&self) -> u64 {
        self.routes_overflow_in.max(self.routes_overflow_out)
    }

    /// Adds the bytes of a connection's `end` record (it was counted by its `open` record).
    fn add_end(&mut self, r: &FlowRecord<'_>, ts: i64) {
        let side = if r.direction == Direction::Inbound {
            &mut self.inbound
        } else {
            &mut self.outbound
        };
        side.bytes_in += r.bytes_in;
        side.bytes_out += r.bytes_out;
        self.last_seen = self.last_seen.max(ts);
    }

    /// Counts a record on the edge: its side's counts, protocol, port, period and samples.
    fn add(&mut self, r: &FlowRecord<'_>, ts: i64, before: bool) {
        self.first_seen = self.first_seen.min(ts);
        self.last_seen = self.last_seen.max(ts);
        let inbound = r.direction == Direction::Inbound;
        if inbound {
            self.inbound.add(r);
        } else {
            self.outbound.add(r);
        }
        self.protocols |= protocol_bit(r.protocol);
        if let Some(p) = r.destination_port {
            let ports = if inbound {
                &mut self.ports_in
            } else {
                &mut self.ports_out
            };
            *ports.entry(p).or_default() += 1;
        }
        if before {
            self.in_baseline = true;
        } else {
            self.after_baseline = true;
        }
        if self.sample_source_ip.is_none() {
            self.sample_source_ip = r.source_address.map(|a| a.ip());
        }
        if self.sample_host.is_none() {
            self.sample_host = r.host.as_deref().map(Into::into);
        }
    }

    /// Counts a record on its route, or as overflow when the edge keeps no more routes.
    fn add_route(&mut self, route: &str, r: &FlowRecord<'_>, before: bool) {
        let inbound = r.direction == Direction::Inbound;
        if let Some(agg) = self.routes.get_mut(route) {
            agg.add(r, before);
        } else if self.routes.len() < MAX_ROUTES_PER_EDGE {
            self.routes.entry(route.into()).or_default().add(r, before);
        } else if inbound {
            self.routes_overflow_in += 1;
        } else {
            self.routes_overflow_out += 1;
        }
    }

    /// Keeps what a least-privilege policy must keep allowing of an admitted baseline-period
    /// record: its port, its `METHOD path` (built in `buf`) or that it was TCP.
    fn add_allowed(&mut self, r: &FlowRecord<'_>, buf: &mut String) {
        let inbound = r.direction == Direction::Inbound;
        self.allowed_records += 1;
        self.allowed_inbound_records += u64::from(inbound);
        if let Some(p) = r.destination_port {
            if inbound {
                self.allowed_ports_in.insert(p);
            } else {
                self.allowed_ports_out.insert(p);
            }
        }
        match (&r.method, &r.path) {
            (Some(m), Some(p)) => {
                buf.clear();
                buf.push_str(m);
                buf.push(' ');
                buf.push_str(p);
                if !self.allowed_paths.contains(buf.as_str()) {
                    if self.allowed_paths.len() < MAX_PATHS_PER_EDGE {
                        self.allowed_paths.insert(buf.as_str().into());
                    } else {
                        self.paths_overflow += 1;
                    }
                }
            }
            _ if r.protocol == FlowProtocol::Tcp => self.allowed_tcp = true,
            _ => {}
        }
    }
}

/// Requests of one end-user principal to one destination.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UserCounts {
    pub(crate) requests: u64,
    pub(crate) denied: u64,
}

impl UserCounts {
    fn add(&mut self, o: Self) {
        self.requests += o.requests;
        self.denied += o.denied;
    }
}

/// Distinct end-user principals kept per destination; requests of further principals are
/// summed in [`UsersOf::overflow`].
pub(crate) const MAX_PRINCIPALS_PER_DESTINATION: usize = 10_000;

/// The end users (JWT `iss/sub`) whose requests reached one destination, from inbound
/// records: the inbound sidecar validates the token, so each request is counted once.
#[derive(Debug, Default)]
pub(crate) struct UsersOf {
    pub(crate) principals: HashMap<Box<str>, UserCounts>,
    /// Requests of principals not kept (over [`MAX_PRINCIPALS_PER_DESTINATION`]).
    pub(crate) overflow: UserCounts,
}

/// What pairs the two records of one request: the trace, the span the callee's sidecar got
/// as its parent (the caller sidecar's client span, or when that sidecar does not trace, the
/// caller app's span), and the caller's node.
type PairKey = (u128, u64, u32);

/// A record waiting for the other side's record of the same request.
#[derive(Debug)]
struct Unpaired {
    inbound: bool,
    edge: (u32, u32),
    route: Box<str>,
    counts: Counts,
}

/// Records kept waiting for their other side at most; later ones are counted unpaired.
pub(crate) const MAX_UNPAIRED: usize = 1_000_000;

/// Alerts recorded against one node.
#[derive(Debug, Default)]
pub(crate) struct NodeAlerts {
    pub(crate) by_kind: BTreeMap<AlertKind, u64>,
    pub(crate) max_severity: Option<Severity>,
}

/// The whole input, aggregated.
#[derive(Debug, Default)]
pub(crate) struct Aggregate {
    pub(crate) nodes: Interner,
    pub(crate) edges: HashMap<(u32, u32), EdgeAgg>,
    pub(crate) alerts: HashMap<u32, NodeAlerts>,
    /// Destinations outside the mesh, reached by passthrough connections.
    pub(crate) egress: HashSet<u32>,
    /// End users per destination node.
    pub(crate) users: HashMap<u32, UsersOf>,
    pub(crate) records: u64,
    pub(crate) alert_lines: u64,
    pub(crate) other_lines: u64,
    pub(crate) bad_lines: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) first_ts: Option<i64>,
    pub(crate) last_ts: Option<i64>,
    /// Burst counter events of the baseline period per key, inbound and outbound side.
    pub(crate) rates: HashMap<RateKey, [u64; 2]>,
    /// The last record of the baseline period, Unix ms.
    pub(crate) baseline_last_ts: Option<i64>,
    route_buf: String,
    /// Records of HTTP requests waiting for the other side's record, by pair key.
    unpaired: HashMap<PairKey, Vec<Unpaired>>,
    unpaired_len: usize,
    /// Requests whose two records were paired.
    pub(crate) paired: u64,
}

/// A burst counter key as the detectors key it: counter, source node, destination node
/// (`u32::MAX` when the counter is per source) and route (empty unless per route).
pub(crate) type RateKey = (Counter, u32, u32, Box<str>);

fn millis(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn protocol_bit(p: FlowProtocol) -> u8 {
    match p {
        FlowProtocol::Http1 => 1,
        FlowProtocol::H2 => 2,
        FlowProtocol::Grpc => 4,
        FlowProtocol::Tcp => 8,
        FlowProtocol::WebSocket => 16,
    }
}

/// Writes a record's route into `buf`: `METHOD /path/template`, either part alone, or `tcp`.
fn write_route(buf: &mut String, r: &FlowRecord<'_>) {
    buf.clear();
    match (&r.method, &r.path) {
        (Some(m), Some(p)) => {
            buf.push_str(m);
            buf.push(' ');
            buf.push_str(&route_template(p));
        }
        (None, Some(p)) => buf.push_str(&route_template(p)),
        (Some(m), None) => buf.push_str(m),
        (None, None) => buf.push_str("tcp"),
    }
}

/// Whether a record is traffic a least-privilege policy must keep allowing: admitted, to an
/// existing route. Outbound records carry no verdict, so a 403 (or a gRPC
/// PERMISSION_DENIED) seen by the caller's sidecar counts as refused too.
fn admitted(r: &FlowRecord<'_>) -> bool {
    let denied = r.verdict == Some(Verdict::Deny);
    let not_a_route = r.status.is_some_and(|s| s == 404 || s == 405);
    let refused = r.status == Some(403) || r.grpc_status == Some(7);
    !denied && !refused && !not_a_route
}

/// The protocol names in a bit set.
pub(crate) fn protocol_names(bits: u8) -> Vec<&'static str> {
    [
        FlowProtocol::Http1,
        FlowProtocol::H2,
        FlowProtocol::Grpc,
        FlowProtocol::Tcp,
        FlowProtocol::WebSocket,
    ]
    .into_iter()
    .filter(|p| bits & protocol_bit(*p) != 0)
    .map(FlowProtocol::as_str)
    .collect()
}

impl Aggregate {
    fn node_of_source(&mut self, r: &FlowRecord<'_>) -> u32 {
        match (&r.source_identity, r.source_address) {
            (Some(id), _) => self.nodes.id(id),
            (None, Some(a)) => self.nodes.id(&a.ip().to_string()),
            (None, None) => self.nodes.id("unknown"),
        }
    }

    fn node_of_destination(&mut self, r: &FlowRecord<'_>) -> u32 {
        // An egress connection's node is the name its client asked for (Host, else SNI),
        // else the address dialled.
        match (
            &r.destination_identity,
            r.host.as_ref().or(r.sni.as_ref()),
            r.destination_address,
        ) {
            (Some(id), _, _) => self.nodes.id(id),
            (None, Some(h), _) => self.nodes.id(&host_only(h)),
            (None, None, Some(a)) => self.nodes.id(&a.ip().to_string()),
            (None, None, None) => self.nodes.id("unknown"),
        }
    }

    /// Whether a record is of a passthrough connection to a destination outside the mesh: an
    /// outbound TCP record with an address dialled and no identity, neither presented nor
    /// expected (a meshed destination that did not answer keeps its expectation). Its `host`
    /// or `sni`, when the client sent one, names the node.
    fn is_egress(r: &FlowRecord<'_>) -> bool {
        r.direction == Direction::Outbound
            && r.protocol == FlowProtocol::Tcp
            && r.destination_identity.is_none()
            && r.expected_identity.is_none()
            && r.destination_address.is_some()
    }

    /// Adds one flow record. `cutoff` is the end of the baseline period, in Unix ms.
    pub(crate) fn add_flow(&mut self, r: &FlowRecord<'_>, cutoff: Option<i64>) {
        let ts = self.note_time(r);
        let src = self.node_of_source(r);
        let dst = self.node_of_destination(r);
        if Self::is_egress(r) {
            self.egress.insert(dst);
        }
        // A connection recorded while open counts once, by its `open` record; its `end`
        // record adds the bytes, and `interim` records only show it was still open.
        match r.phase {
            Some(FlowPhase::Interim) => return,
            Some(FlowPhase::End) => {
                if let Some(edge) = self.edges.get_mut(&(src, dst)) {
                    edge.add_end(r, ts);
                }
                return;
            }
            Some(FlowPhase::Open) | None => {}
        }
        let before = cutoff.is_none_or(|c| ts <= c);
        let inbound = r.direction == Direction::Inbound;
        if inbound && let Some(p) = &r.request_principal {
            self.add_user(dst, p, r);
        }
        write_route(&mut self.route_buf, r);
        if before {
            self.add_burst_events(r, src, dst, ts);
        }
        // Paired last (below), once this record is counted on its edge and route.
        let pairing = Self::pair_key(r, src).map(|key| {
            let mut counts = Counts::default();
            counts.add(r);
            let record = Unpaired {
                inbound,
                edge: (src, dst),
                route: self.route_buf.as_str().into(),
                counts,
            };
            (key, record)
        });
        let edge = self.edges.entry((src, dst)).or_insert_with(|| EdgeAgg {
            first_seen: ts,
            last_seen: ts,
            ..EdgeAgg::default()
        });
        edge.add(r, ts, before);
        edge.add_route(&self.route_buf, r, before);
        if before && admitted(r) {
            edge.add_allowed(r, &mut self.route_buf);
        }
        if let Some((key, record)) = pairing {
            self.pair(key, record);
        }
    }

    /// Counts a record and widens the time span read; returns its time in Unix ms.
    fn note_time(&mut self, r: &FlowRecord<'_>) -> i64 {
        self.records += 1;
        let ts = millis(r.ts);
        self.first_ts = Some(self.first_ts.map_or(ts, |t| t.min(ts)));
        self.last_ts = Some(self.last_ts.map_or(ts, |t| t.max(ts)));
        ts
    }

    /// Counts an inbound request of the end-user principal `p` to `dst`.
    fn add_user(&mut self, dst: u32, p: &str, r: &FlowRecord<'_>) {
        let users = self.users.entry(dst).or_default();
        let one = UserCounts {
            requests: 1,
            denied: u64::from(r.verdict == Some(Verdict::Deny)),
        };
        if let Some(c) = users.principals.get_mut(p) {
            c.add(one);
        } else if users.principals.len() < MAX_PRINCIPALS_PER_DESTINATION {
            users.principals.insert(Box::from(p), one);
        } else {
            users.overflow.add(one);
        }
    }

    /// Counts the burst counter events of a baseline-period record (route in `route_buf`),
    /// for the baseline's learned rates.
    fn add_burst_events(&mut self, r: &FlowRecord<'_>, src: u32, dst: u32, ts: i64) {
        self.baseline_last_ts = Some(self.baseline_last_ts.map_or(ts, |t| t.max(ts)));
        let inbound = r.direction == Direction::Inbound;
        for counter in Counter::ALL {
            if !counter.counts(&r.event()) {
                continue;
            }
            let key: RateKey = match counter.scope() {
                Scope::Source => (counter, src, u32::MAX, "".into()),
                Scope::Edge => (counter, src, dst, "".into()),
                Scope::Route => (counter, src, dst, self.route_buf.as_str().into()),
            };
            self.rates.entry(key).or_default()[usize::from(!inbound)] += 1;
        }
    }

    /// The key pairing a record with the other side's record of the same request: outbound,
    /// the sidecar's own client span when it traces (it sent that span as the parent), else
    /// the app's span it passed on; inbound, the parent span it got.
    fn pair_key(r: &FlowRecord<'_>, src: u32) -> Option<PairKey> {
        // An opaque TCP connection carries no trace context between the sidecars: each side's
        // span is the root of a trace of its own, so its records never pair (and need not
        // wait for a partner).
        if r.protocol == FlowProtocol::Tcp {
            return None;
        }
        let trace = u128::from_str_radix(r.trace_id.as_deref()?, 16).ok()?;
        let span = match r.direction {
            Direction::Outbound => r.span_id.as_deref().or(r.parent_span_id.as_deref()),
            Direction::Inbound => r.parent_span_id.as_deref(),
        };
        let span = u64::from_str_radix(span?, 16).ok()?;
        (trace != 0 && span != 0).then_some((trace, span, src))
    }

    /// Pairs a request's record with the other side's record of it, when that was read; else
    /// keeps it waiting. A pair counts once, on the edge of its inbound record, so a callee
    /// named differently by the two sidecars makes no second edge.
    fn pair(&mut self, key: PairKey, record: Unpaired) {
        let waiting = self.unpaired.entry(key).or_default();
        let Some(i) = waiting.iter().position(|w| w.inbound != record.inbound) else {
            if self.unpaired_len < MAX_UNPAIRED {
                waiting.push(record);
                self.unpaired_len += 1;
            }
            return;
        };
        let other = waiting.swap_remove(i);
        if waiting.is_empty() {
            self.unpaired.remove(&key);
        }
        self.unpaired_len -= 1;
        self.paired += 1;
        for side in [record, other] {
            let Some(edge) = self.edges.get_mut(&side.edge) else {
                continue;
            };
            let denied = side.counts.denied;
            let (counts, route) = if side.inbound {
                (
                    &mut edge.inbound_paired,
                    edge.routes.get_mut(&side.route).map(|r| &mut r.inbound),
                )
            } else {
                (
                    &mut edge.outbound_paired,
                    edge.routes.get_mut(&side.route).map(|r| &mut r.outbound),
                )
            };
            *counts = counts.plus(side.counts);
            if let Some(route) = route {
                route.paired += 1;
                route.paired_denied += denied;
            }
        }
    }

    /// Adds one alert line.
    pub(crate) fn add_alert(&mut self, a: &Alert) {
        self.alert_lines += 1;
        let name = match (&a.source_identity, a.source_address) {
            (Some(id), _) => id.clone(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => return,
        };
        let node = self.nodes.id(&name);
        let entry = self.alerts.entry(node).or_default();
        *entry.by_kind.entry(a.kind).or_default() += 1;
        entry.max_severity = entry.max_severity.max(Some(a.severity));
    }

    /// Parses and adds one line. Picket writes `"type"` first, so alert and edge lines are
    /// told apart by their start; lines from other writers fall back to trying each shape.
    fn line(&mut self, line: &[u8], cutoff: Option<i64>, file: &Path, lineno: u64) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let result = match leading_type(line) {
            Some(b"alert") => serde_json::from_slice::<Alert>(line).map(|a| self.add_alert(&a)),
            Some(b"edge") => {
                self.other_lines += 1;
                Ok(())
            }
            _ => match serde_json::from_slice::<FlowRecord<'_>>(line) {
                Ok(r) if r.line_type == LineType::Flow => {
                    self.add_flow(&r, cutoff);
                    Ok(())
                }
                Ok(_) => {
                    self.other_lines += 1;
                    Ok(())
                }
                Err(e) => match serde_json::from_slice::<Alert>(line) {
                    Ok(a) => {
                        self.add_alert(&a);
                        Ok(())
                    }
                    Err(_) if serde_json::from_slice::<BaselineEdge>(line).is_ok() => {
                        self.other_lines += 1;
                        Ok(())
                    }
                    Err(_) => Err(e),
                },
            },
        };
        if let Err(e) = result {
            self.bad_lines += 1;
            if self.first_error.is_none() {
                self.first_error = Some(format!("{}:{lineno}: {e}", file.display()));
            }
        }
    }
}

/// The value of `"type"` when it is the first key: `{ "type" : "alert" ...` gives `alert`.
fn leading_type(line: &[u8]) -> Option<&[u8]> {
    let skip = |s: &[u8]| -> usize { s.iter().take_while(|b| b.is_ascii_whitespace()).count() };
    let mut i = skip(line);
    let rest = line.get(i..)?.strip_prefix(b"{")?;
    i = skip(rest);
    let rest = rest.get(i..)?.strip_prefix(b"\"type\"")?;
    i = skip(rest);
    let rest = rest.get(i..)?.strip_prefix(b":")?;
    i = skip(rest);
    let rest = rest.get(i..)?.strip_prefix(b"\"")?;
    let end = rest.iter().position(|b| *b == b'"')?;
    rest.get(..end)
}

/// A progress bar on stderr, drawn only when stderr is a terminal and the input is large.
struct Progress {
    total: u64,
    done: u64,
    started: Instant,
    last_draw: Instant,
    enabled: bool,
}

/// Inputs smaller than this get no progress bar.
const PROGRESS_MIN_BYTES: u64 = 64 * 1024 * 1024;

impl Progress {
    fn new(total: u64, wanted: bool) -> Self {
        let now = Instant::now();
        Self {
            total,
            done: 0,
            started: now,
            last_draw: now,
            enabled: wanted && total >= PROGRESS_MIN_BYTES && std::io::stderr().is_terminal(),
        }
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        if self.enabled && self.last_draw.elapsed().as_millis() >= 100 {
            self.last_draw = Instant::now();
            self.draw();
        }
    }

    fn draw(&self) {
        const WIDTH: u64 = 30;
        let frac = if self.total == 0 {
            1.0
        } else {
            self.done as f64 / self.total as f64
        };
        let filled = ((frac * WIDTH as f64) as u64).min(WIDTH);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let mb = self.done as f64 / 1_048_576.0;
        let bar: String = (0..WIDTH)
            .map(|i| if i < filled { '#' } else { '-' })
            .collect();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\rreading flows [{bar}] {:>3}% {mb:.0} MiB {:.0} MiB/s",
            (frac * 100.0) as u64,
            mb / secs
        );
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.enabled {
            self.draw();
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// Size of one read.
const CHUNK: usize = 8 * 1024 * 1024;

/// Reads every file into one aggregate.
pub(crate) fn read_all(
    files: &[PathBuf],
    cutoff: Option<i64>,
    progress: bool,
) -> Result<Aggregate, AnalyzeError> {
    let total = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let mut progress = Progress::new(total, progress);
    let mut agg = Aggregate::default();
    let mut buf = vec![0u8; CHUNK];
    for path in files {
        let mut file = File::open(path).map_err(|source| AnalyzeError::Read {
            path: path.clone(),
            source,
        })?;
        let mut filled = 0usize;
        let mut lineno = 0u64;
        loop {
            if filled == buf.len() {
                // One line longer than the buffer: grow it.
                buf.resize(buf.len() * 2, 0);
            }
            let n = file
                .read(&mut buf[filled..])
                .map_err(|source| AnalyzeError::Read {
                    path: path.clone(),
                    source,
                })?;
            progress.advance(n as u64);
            let eof = n == 0;
            filled += n;
            // Every complete line in buf[..filled].
            let mut start = 0usize;
            while let Some(pos) = memchr(b'\n', &buf[start..filled]) {
                lineno += 1;
                agg.line(&buf[start..start + pos], cutoff, path, lineno);
                start += pos + 1;
            }
            if eof {
                if start < filled {
                    lineno += 1;
                    agg.line(&buf[start..filled], cutoff, path, lineno);
                }
                break;
            }
            buf.copy_within(start..filled, 0);
            filled -= start;
        }
    }
    progress.finish();
    Ok(agg)
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|b| *b == needle)
}

#[cfg(test)]
mod tests;
