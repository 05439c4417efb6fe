//! `picket analyze`: the service graph, unexpected edges, blast radius and a least-privilege
//! policy suggestion, from flow logs.
//!
//! Input is any number of flow logs (JSON lines; alert lines colour the graph, edge lines are
//! ignored). A request that crossed two sidecars appears in both logs: its two records are
//! paired by trace context (the caller sidecar's span is the callee sidecar's parent) and
//! count once, on the edge the inbound record names; records that cannot be paired count by
//! the side that saw more. Verdicts come from the inbound side, which enforces policy. Policy
//! questions (checks and suggestions) use the inbound side's ports, the application's: an
//! outbound record carries the port dialled, the peer sidecar's, and is used only for edges
//! with no inbound record.
//!
//! picket-analyze reads files and evaluates policies through picket-policy. It reads the
//! sidecar's own record types (`picket_proxy::telemetry`) so writer and reader cannot drift
//! apart, and must not use the data path itself (listeners, forwarding, TLS).

mod layout;
mod paths;
mod policy;
mod read;
mod render;
mod suggest;
mod users;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use time::OffsetDateTime;

use picket_proxy::telemetry::alert::{AlertKind, Severity};

pub use paths::collapse;
pub use render::{render_html, render_text};
pub use suggest::SuggestOptions;
pub use users::{DEFAULT_TOP_USERS, OtherUsers, ServiceUsers, UserEdge};

/// Why an analysis failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnalyzeError {
    /// A flow log could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The policies did not load.
    #[error("policies do not load:\n{0}")]
    Policy(String),
}

/// What to analyze and how.
#[derive(Debug)]
pub struct AnalyzeOptions {
    /// Flow logs to read.
    pub files: Vec<PathBuf>,
    /// Policies to check the observed traffic against (already loaded by the caller).
    pub policy: Option<picket_policy::PolicySet>,
    /// The end of the baseline period: edges and routes first seen after it are flagged, and
    /// policy suggestions only use traffic up to it.
    pub baseline_until: Option<OffsetDateTime>,
    /// How a destination identity maps to the workload policies select: label `KEY` equal to
    /// its service account (default `app`).
    pub workload_label: String,
    /// Draw a progress bar on stderr (only when it is a terminal and the input is large).
    pub progress: bool,
    /// End-user principals listed per service in the user-level edges; the rest are summed.
    pub top_users: usize,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        Self {
            files: Vec::new(),
            policy: None,
            baseline_until: None,
            workload_label: "app".to_owned(),
            progress: false,
            top_users: DEFAULT_TOP_USERS,
        }
    }
}

/// Totals and inputs.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The flow logs read.
    pub files: Vec<String>,
    /// Flow records read.
    pub records: u64,
    /// Requests whose outbound and inbound records were paired by trace context (each
    /// counted once).
    pub paired: u64,
    /// Alert lines read.
    pub alerts: u64,
    /// Lines that were neither a flow, an alert nor an edge.
    pub bad_lines: u64,
    /// Where the first bad line was and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// The earliest record.
    #[serde(with = "time::serde::rfc3339::option")]
    pub first_seen: Option<OffsetDateTime>,
    /// The latest record.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen: Option<OffsetDateTime>,
    /// The end of the baseline period, when given.
    #[serde(with = "time::serde::rfc3339::option")]
    pub baseline_until: Option<OffsetDateTime>,
    /// How many policies were checked against, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policies: Option<usize>,
}

/// What a node of the graph stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A workload of the mesh, named by its SPIFFE ID.
    Workload,
    /// A destination outside the mesh, reached by a passthrough connection (egress): its IP
    /// address.
    Egress,
    /// Any other address or host without an identity (a plaintext caller on a permissive
    /// port, a host that was called by name).
    Address,
}

/// One identity (or address or host) in the graph.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// SPIFFE ID, IP address or host name.
    pub id: String,
    /// What it stands for.
    pub kind: NodeKind,
    /// Short name: `namespace/service-account` for identities.
    pub name: String,
    /// Requests this node made.
    pub requests_out: u64,
    /// Requests this node received.
    pub requests_in: u64,
    /// Alerts recorded against it as a source, by kind.
    pub alerts: BTreeMap<AlertKind, u64>,
    /// The worst of those alerts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_severity: Option<Severity>,
}

/// A policy's answer for observed traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyAnswer {
    /// Every observed route is allowed.
    Allow,
    /// Every observed route is denied.
    Deny,
    /// Some routes are allowed, some denied.
    Partial,
}

/// One route of an edge.
#[derive(Debug, Clone, Serialize)]
pub struct RouteReport {
    /// `METHOD /path/template`, or `tcp`.
    pub route: String,
    /// Requests (as recorded by the side that saw more, inbound on ties).
    pub requests: u64,
    /// Of which denied.
    pub denied: u64,
    /// First seen after the baseline.
    pub new: bool,
    /// What the given policy says about a sample request of this route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyAnswer>,
    /// The decision, explained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_detail: Option<String>,
}

/// Traffic from one node to another.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeReport {
    /// Source node id.
    pub source: String,
    /// Destination node id.
    pub destination: String,
    /// Requests or connections.
    pub requests: u64,
    /// With an allow verdict.
    pub allowed: u64,
    /// With a deny verdict.
    pub denied: u64,
    /// Answered 5xx.
    pub errors: u64,
    /// Bytes from source to destination.
    pub bytes_in: u64,
    /// Bytes back.
    pub bytes_out: u64,
    /// Destination ports as policy sees them: the application's (from inbound records), or
    /// the ports dialled when only outbound records were read.
    pub ports: Vec<u16>,
    /// `http1`, `h2`, `grpc`, `tcp`.
    pub protocols: Vec<&'static str>,
    /// First record.
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    /// Last record.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// First seen after the baseline.
    pub new: bool,
    /// What the given policy says about the edge's routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyAnswer>,
    /// Routes, busiest first.
    pub routes: Vec<RouteReport>,
    /// Routes not kept (over the per-edge cap).
    #[serde(skip_serializing_if = "is_zero")]
    pub routes_dropped: u64,
    /// The destination is outside the mesh (passthrough): `requests` counts connections,
    /// `ports` the ports dialled, and no policy of the mesh decides it.
    pub egress: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Why an edge deserves a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagKind {
    /// Observed traffic the given policy would deny.
    NotAllowedByPolicy,
    /// A source-destination pair first seen after the baseline.
    NewEdge,
    /// A route of a known pair first seen after the baseline.
    NewRoute,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Flag {
    /// What kind.
    pub kind: FlagKind,
    /// Source node id.
    pub source: String,
    /// Destination node id.
    pub destination: String,
    /// The route concerned, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Requests concerned.
    pub requests: u64,
    /// Explanation.
    pub detail: String,
}

/// What one identity reached, and what it could reach.
#[derive(Debug, Clone, Serialize)]
pub struct BlastRadius {
    /// The identity.
    pub identity: String,
    /// Destinations it called with admitted traffic.
    pub reached: Vec<String>,
    /// Everything reachable by chaining admitted calls (a compromised workload's path).
    pub reached_transitive: Vec<String>,
    /// Destinations the policy lets it call (with a request seen towards them); `None`
    /// without `--policy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reachable: Option<Vec<String>>,
    /// Transitive closure of `reachable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reachable_transitive: Option<Vec<String>>,
    /// Destinations outside the mesh in `reached_transitive`: what a compromised workload
    /// could reach beyond the mesh, itself or through the workloads it calls. They are not in
    /// `reachable`, which asks the mesh's (inbound) authorization policies.
    pub egress: Vec<String>,
}

/// The result of an analysis.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Totals.
    pub summary: Summary,
    /// Nodes, by id.
    pub nodes: Vec<NodeReport>,
    /// Edges, by source then destination.
    pub edges: Vec<EdgeReport>,
    /// Findings, most important kind first.
    pub flags: Vec<Flag>,
    /// Per identity.
    pub blast_radius: Vec<BlastRadius>,
    /// End users (`iss/sub` of a validated JWT) per service, the busiest `top_users` of each
    /// listed and the rest summed.
    pub user_edges: Vec<ServiceUsers>,
}

/// The aggregated input, kept for suggestions and baselines after the report is built.
#[derive(Debug)]
pub struct Analysis {
    /// The report.
    pub report: Report,
    agg: read::Aggregate,
    workload_label: String,
    baseline_until: Option<OffsetDateTime>,
}

/// `namespace/service-account` for a SPIFFE ID, the input otherwise.
pub fn short_name(id: &str) -> String {
    match id.parse::<picket_ca::SpiffeId>() {
        Ok(s) => format!("{}/{}", s.namespace(), s.service_account()),
        Err(_) => id.to_owned(),
    }
}

fn ts(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Reads the flow logs and builds the report.
pub fn analyze(opts: AnalyzeOptions) -> Result<Analysis, AnalyzeError> {
    let cutoff = opts
        .baseline_until
        .map(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX));
    let agg = read::read_all(&opts.files, cutoff, opts.progress)?;
    let report = build(&agg, &opts, cutoff.is_some());
    Ok(Analysis {
        report,
        agg,
        workload_label: opts.workload_label,
        baseline_until: opts.baseline_until,
    })
}

fn build(agg: &read::Aggregate, opts: &AnalyzeOptions, has_baseline: bool) -> Report {
    let checker = opts
        .policy
        .as_ref()
        .map(|p| policy::Checker::new(p, &opts.workload_label));
    let mut edges: Vec<EdgeReport> = Vec::with_capacity(agg.edges.len());
    let mut flags = Vec::new();
    let mut requests = NodeRequests::default();
    let mut live: std::collections::HashSet<u32> = agg.alerts.keys().copied().collect();
    live.extend(agg.users.keys().copied());
    for (&(s, d), e) in &agg.edges {
        // All of its requests were paired with records that name another edge.
        if !e.counted() {
            continue;
        }
        live.extend([s, d]);
        requests.add(s, d, e.counts().requests);
        let edge = edge_report(agg, (s, d), e, checker.as_ref(), has_baseline);
        edge_flags(&edge, has_baseline, &mut flags);
        edges.push(edge);
    }
    edges.sort_by(|a, b| (&a.source, &a.destination).cmp(&(&b.source, &b.destination)));
    flags.sort_by(|a, b| {
        (a.kind, &a.source, &a.destination, &a.route).cmp(&(
            b.kind,
            &b.source,
            &b.destination,
            &b.route,
        ))
    });
    Report {
        summary: summary(agg, opts),
        nodes: node_reports(agg, &live, &requests),
        edges,
        flags,
        blast_radius: policy::blast_radius(agg, checker.as_ref()),
        user_edges: users::user_edges(agg, opts.top_users),
    }
}

/// Requests out of and into each node, over the edges counted.
#[derive(Default)]
struct NodeRequests {
    out: BTreeMap<u32, u64>,
    into: BTreeMap<u32, u64>,
}

impl NodeRequests {
    fn add(&mut self, source: u32, destination: u32, requests: u64) {
        *self.out.entry(source).or_default() += requests;
        *self.into.entry(destination).or_default() += requests;
    }
}

/// One edge's report: its counts, and its routes with what the policy, if any, says of them.
fn edge_report(
    agg: &read::Aggregate,
    (s, d): (u32, u32),
    e: &read::EdgeAgg,
    checker: Option<&policy::Checker<'_>>,
    has_baseline: bool,
) -> EdgeReport {
    let c = e.counts();
    let source = agg.nodes.name(s).to_owned();
    let destination = agg.nodes.name(d).to_owned();
    let routes = route_reports(e, checker, (&source, &destination), has_baseline);
    EdgeReport {
        requests: c.requests,
        allowed: c.allowed,
        denied: c.denied,
        errors: c.errors,
        bytes_in: c.bytes_in,
        bytes_out: c.bytes_out,
        ports: e.policy_ports().keys().copied().collect(),
        protocols: read::protocol_names(e.protocols),
        first_seen: ts(e.first_seen),
        last_seen: ts(e.last_seen),
        new: has_baseline && !e.in_baseline,
        policy: edge_policy(&routes),
        routes,
        routes_dropped: e.routes_overflow(),
        egress: agg.egress.contains(&d),
        source,
        destination,
    }
}

/// An edge's routes that count requests, busiest first.
fn route_reports(
    e: &read::EdgeAgg,
    checker: Option<&policy::Checker<'_>>,
    (source, destination): (&str, &str),
    has_baseline: bool,
) -> Vec<RouteReport> {
    let mut routes: Vec<RouteReport> = e
        .routes
        .iter()
        .filter(|(_, r)| r.counts().requests > 0)
        .map(|(route, r)| {
            let (answer, detail) = match checker {
                Some(ch) => ch.route(source, destination, route, r, e),
                None => (None, None),
            };
            let counts = r.counts();
            RouteReport {
                route: route.to_string(),
                requests: counts.requests,
                denied: counts.denied,
                new: has_baseline && !r.in_baseline,
                policy: answer,
                policy_detail: detail,
            }
        })
        .collect();
    routes.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.route.cmp(&b.route)));
    routes
}

/// What the policy says of an edge, from its routes' answers: all allow, all deny, or partial.
fn edge_policy(routes: &[RouteReport]) -> Option<PolicyAnswer> {
    let answers: Vec<PolicyAnswer> = routes.iter().filter_map(|r| r.policy).collect();
    if answers.is_empty() {
        None
    } else if answers.iter().all(|a| *a == PolicyAnswer::Allow) {
        Some(PolicyAnswer::Allow)
    } else if answers.iter().all(|a| *a == PolicyAnswer::Deny) {
        Some(PolicyAnswer::Deny)
    } else {
        Some(PolicyAnswer::Partial)
    }
}

/// The flags an edge raises: its routes the policy denies, and, with a baseline, the edge
/// itself when it is new, else its new routes.
fn edge_flags(edge: &EdgeReport, has_baseline: bool, flags: &mut Vec<Flag>) {
    let flag = |kind, route: Option<&RouteReport>, requests, detail| Flag {
        kind,
        source: edge.source.clone(),
        destination: edge.destination.clone(),
        route: route.map(|r| r.route.clone()),
        requests,
        detail,
    };
    for r in &edge.routes {
        if r.policy == Some(PolicyAnswer::Deny) {
            let detail = r.policy_detail.clone().unwrap_or_default();
            flags.push(flag(
                FlagKind::NotAllowedByPolicy,
                Some(r),
                r.requests,
                detail,
            ));
        }
    }
    if edge.new {
        let detail = format!("first seen {} after the baseline", rfc3339(edge.first_seen));
        flags.push(flag(FlagKind::NewEdge, None, edge.requests, detail));
    } else if has_baseline {
        for r in edge.routes.iter().filter(|r| r.new) {
            let detail = "route first seen after the baseline".to_owned();
            flags.push(flag(FlagKind::NewRoute, Some(r), r.requests, detail));
        }
    }
}

/// The nodes that appear in an edge counted, an alert or a user edge, by identity.
fn node_reports(
    agg: &read::Aggregate,
    live: &std::collections::HashSet<u32>,
    requests: &NodeRequests,
) -> Vec<NodeReport> {
    let mut nodes: Vec<NodeReport> = agg
        .nodes
        .names
        .iter()
        .enumerate()
        .map(|(i, id)| (i as u32, id))
        .filter(|(i, _)| live.contains(i))
        .map(|(i, id)| {
            let alerts = agg.alerts.get(&i);
            NodeReport {
                id: id.to_string(),
                kind: node_kind(agg, i, id),
                name: short_name(id),
                requests_out: requests.out.get(&i).copied().unwrap_or(0),
                requests_in: requests.into.get(&i).copied().unwrap_or(0),
                alerts: alerts.map(|a| a.by_kind.clone()).unwrap_or_default(),
                max_severity: alerts.and_then(|a| a.max_severity),
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    nodes
}

/// The report's summary: what was read, over which time, against what.
fn summary(agg: &read::Aggregate, opts: &AnalyzeOptions) -> Summary {
    Summary {
        files: opts.files.iter().map(|f| f.display().to_string()).collect(),
        records: agg.records,
        paired: agg.paired,
        alerts: agg.alert_lines,
        bad_lines: agg.bad_lines,
        first_error: agg.first_error.clone(),
        first_seen: agg.first_ts.map(ts),
        last_seen: agg.last_ts.map(ts),
        baseline_until: opts.baseline_until,
        policies: opts.policy.as_ref().map(picket_policy::PolicySet::len),
    }
}

fn node_kind(agg: &read::Aggregate, node: u32, id: &str) -> NodeKind {
    if agg.egress.contains(&node) {
        NodeKind::Egress
    } else if id.starts_with("spiffe://") {
        NodeKind::Workload
    } else {
        NodeKind::Address
    }
}

/// RFC 3339, or the debug form if formatting fails.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

impl Analysis {
    /// Least-privilege `picket.dev/v1` AuthorizationPolicy YAML from the observed admitted
    /// traffic (of the baseline period, when one was given).
    pub fn suggest_policy(&self, opts: &SuggestOptions) -> String {
        suggest::suggest(&self.agg, &self.workload_label, self.baseline_until, opts)
    }

    /// A baseline for the detectors: one `"type":"edge"` JSON line per (source, destination,
    /// port, route) observed, and one `"type":"rate"` line per burst counter key with the
    /// events per second it saw (in the baseline period, when one was given).
    pub fn baseline_edges(&self) -> String {
        suggest::baseline(&self.agg)
    }
}

#[cfg(test)]
pub(crate) mod tests;
