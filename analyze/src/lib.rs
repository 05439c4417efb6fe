//! `picket analyze`: the service graph, unexpected edges, blast radius and a least-privilege
//! policy suggestion, from flow logs.
//!
//! Input is any number of flow logs (JSON lines; alert lines colour the graph, edge lines are
//! ignored). A request that crossed two sidecars appears in both logs; edge and route counts
//! take the larger side, and verdicts come from the inbound side, which enforces policy. Policy
//! questions (checks and suggestions) use the inbound side's ports, the application's: an
//! outbound record carries the port dialled, the peer sidecar's, and is used only for edges
//! with no inbound record.
//!
//! picket-analyze reads files and evaluates policies through picket-policy. It reads the
//! sidecar's own record types (`picket_proxy::telemetry`) so writer and reader cannot drift
//! apart, and must not use the data path itself (listeners, forwarding, TLS).

mod paths;
mod policy;
mod read;
mod render;
mod suggest;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use time::OffsetDateTime;

use picket_proxy::telemetry::alert::{AlertKind, Severity};

pub use paths::collapse;
pub use render::{render_html, render_text};
pub use suggest::SuggestOptions;

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
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        Self {
            files: Vec::new(),
            policy: None,
            baseline_until: None,
            workload_label: "app".to_owned(),
            progress: false,
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

/// One identity (or address or host) in the graph.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// SPIFFE ID, IP address or host name.
    pub id: String,
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
    let names = &agg.nodes;
    let mut edges: Vec<EdgeReport> = Vec::with_capacity(agg.edges.len());
    let mut flags = Vec::new();
    let mut reqs_out: BTreeMap<u32, u64> = BTreeMap::new();
    let mut reqs_in: BTreeMap<u32, u64> = BTreeMap::new();
    let checker = opts
        .policy
        .as_ref()
        .map(|p| policy::Checker::new(p, &opts.workload_label));
    for (&(s, d), e) in &agg.edges {
        let c = e.counts();
        *reqs_out.entry(s).or_default() += c.requests;
        *reqs_in.entry(d).or_default() += c.requests;
        let source = names.name(s).to_owned();
        let destination = names.name(d).to_owned();
        let edge_new = has_baseline && !e.in_baseline;
        let mut routes: Vec<RouteReport> = e
            .routes
            .iter()
            .map(|(route, r)| {
                let (answer, detail) = match &checker {
                    Some(ch) => ch.route(&source, &destination, route, r, e),
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
        let answers: Vec<PolicyAnswer> = routes.iter().filter_map(|r| r.policy).collect();
        let policy = if answers.is_empty() {
            None
        } else if answers.iter().all(|a| *a == PolicyAnswer::Allow) {
            Some(PolicyAnswer::Allow)
        } else if answers.iter().all(|a| *a == PolicyAnswer::Deny) {
            Some(PolicyAnswer::Deny)
        } else {
            Some(PolicyAnswer::Partial)
        };
        for r in &routes {
            if r.policy == Some(PolicyAnswer::Deny) {
                flags.push(Flag {
                    kind: FlagKind::NotAllowedByPolicy,
                    source: source.clone(),
                    destination: destination.clone(),
                    route: Some(r.route.clone()),
                    requests: r.requests,
                    detail: r.policy_detail.clone().unwrap_or_default(),
                });
            }
        }
        if edge_new {
            flags.push(Flag {
                kind: FlagKind::NewEdge,
                source: source.clone(),
                destination: destination.clone(),
                route: None,
                requests: c.requests,
                detail: format!(
                    "first seen {} after the baseline",
                    rfc3339(ts(e.first_seen))
                ),
            });
        } else if has_baseline {
            for r in routes.iter().filter(|r| r.new) {
                flags.push(Flag {
                    kind: FlagKind::NewRoute,
                    source: source.clone(),
                    destination: destination.clone(),
                    route: Some(r.route.clone()),
                    requests: r.requests,
                    detail: "route first seen after the baseline".to_owned(),
                });
            }
        }
        edges.push(EdgeReport {
            source,
            destination,
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
            new: edge_new,
            policy,
            routes,
            routes_dropped: e.routes_overflow(),
        });
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

    let mut nodes: Vec<NodeReport> = names
        .names
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let i = i as u32;
            let alerts = agg.alerts.get(&i);
            NodeReport {
                id: id.to_string(),
                name: short_name(id),
                requests_out: reqs_out.get(&i).copied().unwrap_or(0),
                requests_in: reqs_in.get(&i).copied().unwrap_or(0),
                alerts: alerts.map(|a| a.by_kind.clone()).unwrap_or_default(),
                max_severity: alerts.and_then(|a| a.max_severity),
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));

    let blast_radius = policy::blast_radius(agg, checker.as_ref());

    Report {
        summary: Summary {
            files: opts.files.iter().map(|f| f.display().to_string()).collect(),
            records: agg.records,
            alerts: agg.alert_lines,
            bad_lines: agg.bad_lines,
            first_error: agg.first_error.clone(),
            first_seen: agg.first_ts.map(ts),
            last_seen: agg.last_ts.map(ts),
            baseline_until: opts.baseline_until,
            policies: opts.policy.as_ref().map(picket_policy::PolicySet::len),
        },
        nodes,
        edges,
        flags,
        blast_radius,
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
    /// port, route) observed (in the baseline period, when one was given).
    pub fn baseline_edges(&self) -> String {
        suggest::baseline(&self.agg)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;
    use picket_proxy::direction::Direction;
    use picket_proxy::telemetry::flow::{FlowProtocol, FlowRecord, Verdict};

    pub(crate) const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
    pub(crate) const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
    pub(crate) const CATALOG: &str = "spiffe://cluster.local/ns/shop/sa/catalog";
    pub(crate) const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";
    pub(crate) const DB: &str = "spiffe://cluster.local/ns/data/sa/db";

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000 + secs).unwrap()
    }

    #[allow(clippy::too_many_arguments)]
    fn flow(
        ts: i64,
        direction: Direction,
        src: &'static str,
        dst: &'static str,
        method: Option<&'static str>,
        path: Option<String>,
        status: Option<u16>,
        verdict: Verdict,
    ) -> FlowRecord<'static> {
        FlowRecord {
            source_identity: Some(src.into()),
            source_address: Some("10.0.0.1:40000".parse().unwrap()),
            destination_identity: Some(dst.into()),
            destination_port: Some(if method.is_some() { 8080 } else { 5432 }),
            method: method.map(Into::into),
            path: path.map(Into::into),
            status,
            verdict: Some(verdict),
            bytes_out: 100,
            ..FlowRecord::new(
                at(ts),
                direction,
                if method.is_some() {
                    FlowProtocol::Http1
                } else {
                    FlowProtocol::Tcp
                },
            )
        }
    }

    /// The recorded scenario: a day of normal traffic (both sidecars' views of frontend ->
    /// orders), then an attack from the frontend after t = 1000 s.
    pub(crate) fn recorded() -> Vec<FlowRecord<'static>> {
        use Direction::{Inbound, Outbound};
        let mut v = Vec::new();
        for i in 0..300i64 {
            let t = i * 3;
            let id = 100 + i % 40;
            for dir in [Outbound, Inbound] {
                v.push(flow(
                    t,
                    dir,
                    FRONTEND,
                    ORDERS,
                    Some("GET"),
                    Some(format!("/api/orders/{id}")),
                    Some(200),
                    Verdict::Allow,
                ));
            }
            if i % 5 == 0 {
                v.push(flow(
                    t,
                    Inbound,
                    FRONTEND,
                    ORDERS,
                    Some("POST"),
                    Some("/api/orders".into()),
                    Some(201),
                    Verdict::Allow,
                ));
            }
            if i % 3 == 0 {
                v.push(flow(
                    t,
                    Inbound,
                    FRONTEND,
                    CATALOG,
                    Some("GET"),
                    Some(format!("/api/items/{}", i % 7)),
                    Some(200),
                    Verdict::Allow,
                ));
            }
            if i % 4 == 0 {
                v.push(flow(
                    t,
                    Inbound,
                    ORDERS,
                    PAYMENTS,
                    Some("POST"),
                    Some("/api/charge".into()),
                    Some(200),
                    Verdict::Allow,
                ));
                v.push(flow(
                    t,
                    Inbound,
                    ORDERS,
                    DB,
                    None,
                    None,
                    None,
                    Verdict::Allow,
                ));
            }
            // A probe that does not exist must not be suggested.
            if i == 7 {
                v.push(flow(
                    t,
                    Inbound,
                    FRONTEND,
                    ORDERS,
                    Some("GET"),
                    Some("/favicon.ico".into()),
                    Some(404),
                    Verdict::Allow,
                ));
            }
        }
        // The attack: new edge to payments, /admin probe, denied replays to db.
        for i in 0..5 {
            v.push(flow(
                1000 + i,
                Inbound,
                FRONTEND,
                PAYMENTS,
                Some("POST"),
                Some("/api/charge".into()),
                Some(200),
                Verdict::Allow,
            ));
        }
        v.push(flow(
            1010,
            Inbound,
            FRONTEND,
            ORDERS,
            Some("GET"),
            Some("/admin".into()),
            Some(404),
            Verdict::Allow,
        ));
        for i in 0..12 {
            v.push(flow(
                1020 + i,
                Inbound,
                FRONTEND,
                DB,
                None,
                None,
                None,
                Verdict::Deny,
            ));
        }
        v
    }

    pub(crate) fn write_flows(
        flows: &[FlowRecord<'_>],
        extra: &[String],
    ) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for r in flows {
            serde_json::to_writer(&mut f, r).unwrap();
            f.write_all(b"\n").unwrap();
        }
        for line in extra {
            writeln!(f, "{line}").unwrap();
        }
        f.flush().unwrap();
        f
    }

    fn alert_line() -> String {
        let a = picket_proxy::telemetry::Alert {
            line_type: picket_proxy::telemetry::LineType::Alert,
            kind: AlertKind::SensitivePath,
            severity: Severity::Medium,
            source_identity: Some(FRONTEND.into()),
            source_address: None,
            destination: Some(format!("{ORDERS} /admin")),
            evidence: BTreeMap::from([("requests".to_owned(), 1)]),
            window_secs: 0,
            first_seen: at(1010),
            last_seen: at(1010),
            summary: "probe".into(),
        };
        serde_json::to_string(&a).unwrap()
    }

    fn load(text: &str) -> picket_policy::PolicySet {
        picket_policy::load(
            &[picket_policy::Source {
                name: "p.yaml",
                text,
            }],
            &picket_policy::LoadOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
    }

    fn allowed(
        set: &picket_policy::PolicySet,
        src: &str,
        dst: &str,
        method: Option<&str>,
        path: &str,
        port: u16,
    ) -> bool {
        let w = policy::workload(dst, "app").unwrap();
        let req = picket_policy::Request {
            source_principal: policy::principal(src),
            source_ip: "10.0.0.1".parse().unwrap(),
            destination_port: port,
            sni: None,
            http: method.map(|m| picket_policy::HttpRequest {
                method: m,
                path,
                host: "x",
                headers: &[],
            }),
            auth: None,
        };
        set.for_workload(&w).evaluate(&req).is_allowed()
    }

    fn run(policy: Option<picket_policy::PolicySet>) -> Analysis {
        let file = write_flows(&recorded(), &[alert_line(), "garbage".into()]);
        analyze(AnalyzeOptions {
            files: vec![file.path().to_owned()],
            policy,
            baseline_until: Some(at(950)),
            ..AnalyzeOptions::default()
        })
        .unwrap()
    }

    #[test]
    fn builds_the_graph_with_deduplicated_counts() {
        let a = run(None);
        let r = &a.report;
        assert_eq!(r.summary.alerts, 1);
        assert_eq!(r.summary.bad_lines, 1);
        let names: Vec<&str> = r.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "data/db",
                "shop/catalog",
                "shop/frontend",
                "shop/orders",
                "shop/payments"
            ]
        );
        let fo = r
            .edges
            .iter()
            .find(|e| e.source == FRONTEND && e.destination == ORDERS)
            .unwrap();
        // 300 GETs seen by both sidecars count once; 60 POSTs, 1 favicon, 1 admin (inbound).
        assert_eq!(fo.requests, 362);
        assert_eq!(fo.ports, [8080]);
        assert_eq!(fo.routes[0].route, "GET /api/orders/{id}");
        let frontend = r.nodes.iter().find(|n| n.id == FRONTEND).unwrap();
        assert_eq!(frontend.max_severity, Some(Severity::Medium));
        let db = r
            .edges
            .iter()
            .find(|e| e.source == FRONTEND && e.destination == DB)
            .unwrap();
        assert_eq!((db.denied, db.allowed), (12, 0));
    }

    #[test]
    fn flags_edges_first_seen_after_the_baseline() {
        let a = run(None);
        let flags: Vec<(FlagKind, &str, Option<&str>)> = a
            .report
            .flags
            .iter()
            .map(|f| (f.kind, f.destination.as_str(), f.route.as_deref()))
            .collect();
        assert_eq!(
            flags,
            [
                (FlagKind::NewEdge, DB, None),
                (FlagKind::NewEdge, PAYMENTS, None),
                (FlagKind::NewRoute, ORDERS, Some("GET /admin")),
            ]
        );
    }

    #[test]
    fn blast_radius_follows_admitted_calls_transitively() {
        let a = run(None);
        let fr = a
            .report
            .blast_radius
            .iter()
            .find(|b| b.identity == FRONTEND)
            .unwrap();
        assert_eq!(
            fr.reached,
            [ORDERS, CATALOG, PAYMENTS]
                .map(String::from)
                .iter()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
        );
        // Through orders, the frontend reaches the database although its own calls were denied.
        assert!(fr.reached_transitive.contains(&DB.to_owned()), "{fr:?}");
        assert!(fr.reachable.is_none());
    }

    #[test]
    fn suggested_policy_loads_allows_the_baseline_and_denies_the_attack() {
        let a = run(None);
        let yaml = a.suggest_policy(&SuggestOptions::default());
        let set = load(&yaml);
        assert_eq!(set.len(), 4, "{yaml}");
        assert!(yaml.contains("\"/api/orders/*\""), "{yaml}");
        assert!(!yaml.contains("favicon"), "404s are not routes:\n{yaml}");
        // Everything of the baseline is allowed...
        for r in recorded()
            .iter()
            .filter(|r| r.ts <= at(950) && r.status != Some(404))
        {
            assert!(
                allowed(
                    &set,
                    r.source_identity.as_deref().unwrap(),
                    r.destination_identity.as_deref().unwrap(),
                    r.method.as_deref(),
                    r.path.as_deref().unwrap_or("/"),
                    r.destination_port.unwrap()
                ),
                "baseline request denied: {r:?}\n{yaml}"
            );
        }
        // ...and the attack is not.
        assert!(!allowed(
            &set,
            FRONTEND,
            PAYMENTS,
            Some("POST"),
            "/api/charge",
            8080
        ));
        assert!(!allowed(
            &set,
            FRONTEND,
            ORDERS,
            Some("GET"),
            "/admin",
            8080
        ));
        assert!(!allowed(&set, FRONTEND, DB, None, "/", 5432));
        assert!(!allowed(
            &set,
            FRONTEND,
            ORDERS,
            Some("DELETE"),
            "/api/orders/1",
            8080
        ));
        assert!(!allowed(
            &set,
            FRONTEND,
            ORDERS,
            Some("GET"),
            "/api/orders/1",
            9090
        ));
    }

    #[test]
    fn policy_check_flags_traffic_the_policy_denies_and_bounds_the_blast_radius() {
        let suggested = run(None).suggest_policy(&SuggestOptions::default());
        let a = run(Some(load(&suggested)));
        let not_allowed: Vec<(&str, &str)> = a
            .report
            .flags
            .iter()
            .filter(|f| f.kind == FlagKind::NotAllowedByPolicy)
            .map(|f| (f.destination.as_str(), f.route.as_deref().unwrap_or("")))
            .collect();
        assert_eq!(
            not_allowed,
            [
                (DB, "tcp"),
                (ORDERS, "GET /admin"),
                (ORDERS, "GET /favicon.ico"),
                (PAYMENTS, "POST /api/charge")
            ]
        );
        let fr = a
            .report
            .blast_radius
            .iter()
            .find(|b| b.identity == FRONTEND)
            .unwrap();
        assert_eq!(
            fr.reachable.as_deref().unwrap(),
            [CATALOG.to_owned(), ORDERS.to_owned()]
        );
        assert_eq!(
            fr.reachable_transitive.as_deref().unwrap(),
            [
                DB.to_owned(),
                PAYMENTS.to_owned(),
                CATALOG.to_owned(),
                ORDERS.to_owned()
            ]
            .iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
        );
    }

    #[test]
    fn renders_text_json_and_self_contained_html() {
        let a = run(None);
        let text = render_text(&a.report);
        assert!(text.contains("shop/frontend -> shop/orders"), "{text}");
        let json = serde_json::to_value(&a.report).unwrap();
        assert_eq!(json["nodes"].as_array().unwrap().len(), 5);
        let html = render_html(&a.report);
        for name in ["shop/frontend", "shop/orders", "shop/payments", "data/db"] {
            assert!(html.contains(&format!(">{name}</text>")), "{name}");
        }
        assert!(
            !html.contains("http://") || !html.contains("src=\"http"),
            "no external resources"
        );
        assert!(!html.contains("<script"), "no scripts");
        assert!(html.contains("edge-deny") && html.contains("stroke-dasharray"));
    }

    #[test]
    fn baseline_edges_feed_the_detectors() {
        let a = run(None);
        let edges = a.baseline_edges();
        let mut d =
            picket_proxy::telemetry::Detectors::new(&picket_proxy::telemetry::DetectorConfig {
                learning_window: std::time::Duration::ZERO,
                ..Default::default()
            });
        let n = d.load_baseline(edges.as_bytes()).unwrap();
        assert!(n >= 6, "{edges}");
        let known = &recorded()[0];
        assert!(d.observe_flow(known, at(2000)).is_empty());
        let attack = recorded()
            .into_iter()
            .find(|r| {
                r.destination_identity.as_deref() == Some(PAYMENTS)
                    && r.source_identity.as_deref() == Some(FRONTEND)
            })
            .unwrap();
        let alerts = d.observe_flow(&attack, at(2000));
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].kind, AlertKind::NewEdge);
    }

    /// The application's port, which inbound records carry and policy evaluates.
    const APP_PORT: u16 = 8080;
    /// The peer sidecar's mTLS port, which outbound records carry.
    const MESH_PORT: u16 = 7143;

    /// One request as both sidecars record it: outbound by the caller's (the port dialled,
    /// no verdict) and inbound by the callee's (the application's port, the verdict).
    fn both_sides(ts: i64, path: &str, verdict: Verdict) -> [FlowRecord<'static>; 2] {
        let status = if verdict == Verdict::Deny { 403 } else { 200 };
        let inbound = FlowRecord {
            destination_port: Some(APP_PORT),
            ..flow(
                ts,
                Direction::Inbound,
                FRONTEND,
                ORDERS,
                Some("GET"),
                Some(path.to_owned()),
                Some(status),
                verdict,
            )
        };
        let outbound = FlowRecord {
            direction: Direction::Outbound,
            destination_port: Some(MESH_PORT),
            verdict: None,
            ..inbound.clone()
        };
        [outbound, inbound]
    }

    fn analyze_flows(
        flows: &[FlowRecord<'_>],
        policy: Option<&str>,
        baseline_until: Option<OffsetDateTime>,
    ) -> Analysis {
        let file = write_flows(flows, &[]);
        analyze(AnalyzeOptions {
            files: vec![file.path().to_owned()],
            policy: policy.map(load),
            baseline_until,
            ..AnalyzeOptions::default()
        })
        .unwrap()
    }

    fn orders_edge(a: &Analysis) -> &EdgeReport {
        a.report
            .edges
            .iter()
            .find(|e| e.source == FRONTEND && e.destination == ORDERS)
            .unwrap()
    }

    const ALLOW_GET_ORDERS_ON_APP_PORT: &str = r#"
apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata:
  name: orders
  namespace: shop
spec:
  selector:
    matchLabels:
      app: orders
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/frontend"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/api/orders/*"]
        ports: ["8080"]
"#;

    #[test]
    fn a_request_logged_by_both_sidecars_counts_once_for_its_route() {
        let flows = both_sides(0, "/api/orders/1", Verdict::Allow);
        let a = analyze_flows(&flows, None, None);
        let e = orders_edge(&a);
        assert_eq!(e.requests, 1);
        assert_eq!(e.routes.len(), 1, "{:?}", e.routes);
        assert_eq!(
            (e.routes[0].route.as_str(), e.routes[0].requests),
            ("GET /api/orders/{id}", 1)
        );
        // The edge reports the port policy sees.
        assert_eq!(e.ports, [APP_PORT]);
    }

    #[test]
    fn flags_count_a_request_logged_by_both_sidecars_once() {
        // A known route in the baseline, then a new route the policy denies, both logged twice.
        let mut flows = Vec::new();
        flows.extend(both_sides(0, "/api/orders/1", Verdict::Allow));
        flows.extend(both_sides(100, "/admin", Verdict::Deny));
        let a = analyze_flows(&flows, Some(ALLOW_GET_ORDERS_ON_APP_PORT), Some(at(50)));
        let e = orders_edge(&a);
        assert_eq!((e.requests, e.denied), (2, 1));
        let admin = e.routes.iter().find(|r| r.route == "GET /admin").unwrap();
        assert_eq!((admin.requests, admin.denied), (1, 1));
        let flags: Vec<(FlagKind, Option<&str>, u64)> = a
            .report
            .flags
            .iter()
            .map(|f| (f.kind, f.route.as_deref(), f.requests))
            .collect();
        assert_eq!(
            flags,
            [
                (FlagKind::NotAllowedByPolicy, Some("GET /admin"), 1),
                (FlagKind::NewRoute, Some("GET /admin"), 1),
            ]
        );
    }

    #[test]
    fn route_counts_take_the_side_that_saw_more() {
        // Only part of the caller's log was read: the inbound side saw more.
        let mut flows = Vec::new();
        for i in 0..3 {
            flows.extend(both_sides(i, "/api/orders/1", Verdict::Allow));
        }
        flows.retain(|r| r.direction == Direction::Inbound || r.ts == at(0));
        let a = analyze_flows(&flows, None, None);
        assert_eq!(orders_edge(&a).routes[0].requests, 3);
        // Only the caller's log: its records count.
        let outbound: Vec<_> = both_sides(0, "/api/orders/1", Verdict::Allow)
            .into_iter()
            .filter(|r| r.direction == Direction::Outbound)
            .collect();
        let a = analyze_flows(&outbound, None, None);
        assert_eq!(orders_edge(&a).routes[0].requests, 1);
    }

    #[test]
    fn suggested_policy_allows_the_application_port_not_the_sidecars() {
        let flows = both_sides(0, "/api/orders/1", Verdict::Allow);
        let yaml = analyze_flows(&flows, None, None).suggest_policy(&SuggestOptions::default());
        assert!(yaml.contains(r#"ports: ["8080"]"#), "{yaml}");
        assert!(!yaml.contains("7143"), "{yaml}");
        let set = load(&yaml);
        assert!(allowed(
            &set,
            FRONTEND,
            ORDERS,
            Some("GET"),
            "/api/orders/1",
            APP_PORT
        ));
        assert!(!allowed(
            &set,
            FRONTEND,
            ORDERS,
            Some("GET"),
            "/api/orders/1",
            MESH_PORT
        ));
    }

    #[test]
    fn without_inbound_records_the_dialled_port_is_all_there_is() {
        let outbound: Vec<_> = both_sides(0, "/api/orders/1", Verdict::Allow)
            .into_iter()
            .filter(|r| r.direction == Direction::Outbound)
            .collect();
        let a = analyze_flows(&outbound, None, None);
        assert_eq!(orders_edge(&a).ports, [MESH_PORT]);
        let yaml = a.suggest_policy(&SuggestOptions::default());
        assert!(yaml.contains(r#"ports: ["7143"]"#), "{yaml}");
    }

    #[test]
    fn policy_check_of_traffic_logged_by_both_sidecars_uses_the_application_port() {
        let flows = both_sides(0, "/api/orders/1", Verdict::Allow);
        let a = analyze_flows(&flows, Some(ALLOW_GET_ORDERS_ON_APP_PORT), None);
        let e = orders_edge(&a);
        assert_eq!(e.policy, Some(PolicyAnswer::Allow), "{e:?}");
        assert_eq!(e.routes[0].policy, Some(PolicyAnswer::Allow), "{e:?}");
        assert!(
            !a.report
                .flags
                .iter()
                .any(|f| f.kind == FlagKind::NotAllowedByPolicy),
            "{:?}",
            a.report.flags
        );
        let fr = a
            .report
            .blast_radius
            .iter()
            .find(|b| b.identity == FRONTEND)
            .unwrap();
        assert_eq!(fr.reachable.as_deref().unwrap(), [ORDERS.to_owned()]);
    }

    #[test]
    fn baseline_keeps_both_sides_ports_for_both_sidecars_detectors() {
        let flows = both_sides(0, "/api/orders/1", Verdict::Allow);
        let edges = analyze_flows(&flows, None, None).baseline_edges();
        let mut d =
            picket_proxy::telemetry::Detectors::new(&picket_proxy::telemetry::DetectorConfig {
                learning_window: std::time::Duration::ZERO,
                ..Default::default()
            });
        assert_eq!(d.load_baseline(edges.as_bytes()).unwrap(), 2, "{edges}");
        // The caller's sidecar sees the outbound record, the callee's the inbound one.
        for r in both_sides(10, "/api/orders/2", Verdict::Allow) {
            assert!(d.observe_flow(&r, at(2000)).is_empty(), "{r:?}\n{edges}");
        }
    }

    /// Writes `n` synthetic flow records: 50 identities, 400 edges, a few thousand routes.
    pub(crate) fn synthetic(n: usize, out: &mut impl Write) {
        let ids: Vec<String> = (0..50)
            .map(|i| format!("spiffe://cluster.local/ns/team{}/sa/svc{i}", i % 5))
            .collect();
        let methods = ["GET", "GET", "GET", "POST", "PUT", "DELETE"];
        let base = at(0);
        for i in 0..n {
            let s = (i * 7) % 50;
            let d = (s + 1 + (i / 50) % 8) % 50;
            let r = FlowRecord {
                source_identity: Some(ids[s].as_str().into()),
                source_address: Some(std::net::SocketAddr::from((
                    [10, 0, (s / 256) as u8, s as u8],
                    40000 + (i % 1000) as u16,
                ))),
                destination_identity: Some(ids[d].as_str().into()),
                destination_port: Some(8080),
                method: Some(methods[i % methods.len()].into()),
                path: Some(format!("/api/v1/res{}/{}", i % 13, i % 997).into()),
                host: Some(format!("svc{d}").into()),
                status: Some(if i % 50 == 0 { 404 } else { 200 }),
                verdict: Some(if i % 100 == 0 {
                    Verdict::Deny
                } else {
                    Verdict::Allow
                }),
                policy: Some("team0/allow-all".into()),
                bytes_in: 120,
                bytes_out: 2048,
                duration_ms: 1.25,
                trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
                span_id: Some("00f067aa0ba902b7".into()),
                ..FlowRecord::new(
                    base + time::Duration::milliseconds(i as i64),
                    if i % 2 == 0 {
                        Direction::Inbound
                    } else {
                        Direction::Outbound
                    },
                    FlowProtocol::Http1,
                )
            };
            serde_json::to_writer(&mut *out, &r).unwrap();
            out.write_all(b"\n").unwrap();
        }
    }

    /// The figure reported in docs/telemetry.md: run with
    /// `cargo test -p picket-proxy --release analyze_one_million -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    #[allow(clippy::print_stdout)]
    fn analyze_one_million_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        synthetic(1_000_000, &mut f);
        f.flush().unwrap();
        drop(f);
        let size = std::fs::metadata(&path).unwrap().len();
        let start = std::time::Instant::now();
        let a = analyze(AnalyzeOptions {
            files: vec![path.clone()],
            baseline_until: Some(at(500)),
            ..AnalyzeOptions::default()
        })
        .unwrap();
        let read = start.elapsed();
        let yaml = a.suggest_policy(&SuggestOptions::default());
        let html = render_html(&a.report);
        let total = start.elapsed();
        println!(
            "analyze: 1,000,000 records ({} MiB) read and aggregated in {:.2} s; with suggestion and HTML {:.2} s; {} nodes, {} edges, {} flags, policy {} bytes, html {} bytes",
            size / 1_048_576,
            read.as_secs_f64(),
            total.as_secs_f64(),
            a.report.nodes.len(),
            a.report.edges.len(),
            a.report.flags.len(),
            yaml.len(),
            html.len()
        );
        assert_eq!(a.report.summary.records, 1_000_000);
    }
}
