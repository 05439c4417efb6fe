//! Least-privilege policy suggestions and detector baselines from observed traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use picket_proxy::telemetry::detect::{BaselineEdge, BaselineRate, class_names};
use picket_proxy::telemetry::flow::LineType;

use super::policy::{principal, workload};
use super::read::Aggregate;

/// How suggestions are made.
#[derive(Debug, Clone)]
pub struct SuggestOptions {
    /// Paths under one prefix collapse to `prefix/*` once this many distinct next segments
    /// were seen (default 3).
    pub collapse_threshold: usize,
    /// Write `mode: dry-run` instead of `mode: enforce`.
    pub dry_run: bool,
}

impl Default for SuggestOptions {
    fn default() -> Self {
        Self {
            collapse_threshold: 3,
            dry_run: false,
        }
    }
}

/// One `to` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Operation {
    methods: Vec<String>,
    paths: Vec<String>,
    ports: Vec<u16>,
}

fn quote(s: &str) -> String {
    // A JSON string is a valid YAML double-quoted scalar.
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{}\"", s.escape_default()))
}

fn list<T: AsRef<str>>(items: &[T]) -> String {
    let inner: Vec<String> = items.iter().map(|s| quote(s.as_ref())).collect();
    format!("[{}]", inner.join(", "))
}

/// The operations that cover exactly the observed admitted requests of one edge, with paths
/// collapsed.
fn operations(
    allowed_paths: &BTreeSet<&str>,
    tcp: bool,
    ports: &[u16],
    k: usize,
) -> Vec<Operation> {
    let mut by_path: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for mp in allowed_paths {
        if let Some((m, p)) = mp.split_once(' ') {
            by_path.entry(p).or_default().insert(m);
        }
    }
    let patterns = super::paths::collapse(by_path.keys().copied(), k);
    // Each observed path goes to its exact pattern, else the longest prefix pattern.
    let mut methods_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (path, methods) in &by_path {
        let target = patterns
            .iter()
            .filter(|pat| match pat.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => pat.as_str() == *path,
            })
            .max_by_key(|pat| (!pat.ends_with('*'), pat.len()));
        if let Some(t) = target {
            methods_of
                .entry(t)
                .or_default()
                .extend(methods.iter().copied());
        }
    }
    let mut by_methods: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    for (pattern, methods) in methods_of {
        let key: Vec<String> = methods.into_iter().map(str::to_owned).collect();
        by_methods.entry(key).or_default().push(pattern.to_owned());
    }
    let mut ops: Vec<Operation> = by_methods
        .into_iter()
        .map(|(methods, paths)| Operation {
            methods,
            paths,
            ports: ports.to_vec(),
        })
        .collect();
    if tcp {
        // Without ports this is an operation with no fields: the rule gets no `to` at all.
        ops.push(Operation {
            methods: Vec::new(),
            paths: Vec::new(),
            ports: ports.to_vec(),
        });
    }
    ops.sort();
    ops
}

fn policy_name(service_account: &str) -> String {
    let mut name = format!("{service_account}-observed");
    name.truncate(63);
    name.trim_end_matches('-').to_owned()
}

pub(crate) fn suggest(
    agg: &Aggregate,
    label: &str,
    until: Option<time::OffsetDateTime>,
    opts: &SuggestOptions,
) -> String {
    let plan = Plan::of(agg, label, opts);
    let mut out = String::new();
    write_header(&mut out, agg, label, until, &plan);
    for (destination, sources) in plan.by_destination {
        if let Some(w) = workload(destination, label) {
            write_policy(&mut out, &w, label, sources, opts);
        }
    }
    out
}

/// What a suggestion allows, from the admitted traffic between identities.
struct Plan<'a> {
    /// destination -> source -> operations
    by_destination: BTreeMap<&'a str, BTreeMap<&'a str, Vec<Operation>>>,
    /// Sources without an identity, whose traffic no policy can name.
    skipped: BTreeSet<&'a str>,
    /// The flow records behind the plan.
    admitted: u64,
}

impl<'a> Plan<'a> {
    fn of(agg: &'a Aggregate, label: &str, opts: &SuggestOptions) -> Self {
        let names = &agg.nodes;
        let mut plan = Plan {
            by_destination: BTreeMap::new(),
            skipped: BTreeSet::new(),
            admitted: 0,
        };
        for (&(s, d), e) in &agg.edges {
            let (source, destination) = (names.name(s), names.name(d));
            if workload(destination, label).is_none() || !e.counted() {
                continue;
            }
            if e.allowed_paths.is_empty() && !e.allowed_tcp {
                continue;
            }
            if principal(source).is_none() {
                plan.skipped.insert(source);
                continue;
            }
            plan.admitted += e.allowed_records;
            let paths: BTreeSet<&str> = e.allowed_paths.iter().map(AsRef::as_ref).collect();
            let ports: Vec<u16> = e.suggested_ports().iter().copied().collect();
            let ops = operations(&paths, e.allowed_tcp, &ports, opts.collapse_threshold);
            if !ops.is_empty() {
                plan.by_destination
                    .entry(destination)
                    .or_default()
                    .insert(source, ops);
            }
        }
        plan
    }
}

/// The comment lines above the policies: where they come from, what was left out.
fn write_header(
    out: &mut String,
    agg: &Aggregate,
    label: &str,
    until: Option<time::OffsetDateTime>,
    plan: &Plan<'_>,
) {
    let span = match (agg.first_ts, agg.last_ts, until) {
        (Some(a), _, Some(u)) => format!(
            " seen {} to {} (the baseline)",
            super::rfc3339(super::ts(a)),
            super::rfc3339(u)
        ),
        (Some(a), Some(b), None) => format!(
            " seen {} to {}",
            super::rfc3339(super::ts(a)),
            super::rfc3339(super::ts(b))
        ),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "# Suggested by `picket analyze` from {} admitted flow records{span}.",
        plan.admitted
    );
    let _ = writeln!(
        out,
        "# One ALLOW policy per destination workload (selected by label `{label}` = service account)."
    );
    let _ = writeln!(
        out,
        "# Review before applying: everything not listed here will be denied."
    );
    for s in &plan.skipped {
        let _ = writeln!(
            out,
            "# Not included: traffic from {s}, which has no identity."
        );
    }
    if plan.by_destination.is_empty() {
        let _ = writeln!(
            out,
            "# No admitted traffic between identities was observed."
        );
    }
}

/// One destination workload's ALLOW policy; sources with the same operations share a rule.
fn write_policy(
    out: &mut String,
    w: &picket_policy::Workload,
    label: &str,
    sources: BTreeMap<&str, Vec<Operation>>,
    opts: &SuggestOptions,
) {
    let sa = w.labels.get(label).cloned().unwrap_or_default();
    let mut rules: BTreeMap<Vec<Operation>, Vec<&str>> = BTreeMap::new();
    for (source, ops) in sources {
        if let Some(p) = principal(source) {
            rules.entry(ops).or_default().push(p);
        }
    }
    let _ = writeln!(out, "---");
    let _ = writeln!(out, "apiVersion: picket.dev/v1");
    let _ = writeln!(out, "kind: AuthorizationPolicy");
    let _ = writeln!(out, "metadata:");
    let _ = writeln!(out, "  name: {}", quote(&policy_name(&sa)));
    let _ = writeln!(out, "  namespace: {}", quote(&w.namespace));
    let _ = writeln!(out, "spec:");
    let _ = writeln!(out, "  selector:");
    let _ = writeln!(out, "    matchLabels:");
    let _ = writeln!(out, "      {}: {}", quote(label), quote(&sa));
    let _ = writeln!(out, "  action: ALLOW");
    let _ = writeln!(
        out,
        "  mode: {}",
        if opts.dry_run { "dry-run" } else { "enforce" }
    );
    let _ = writeln!(out, "  rules:");
    for (ops, principals) in rules {
        write_rule(out, &ops, &principals);
    }
}

/// One rule: its principals, and its operations unless one of them allows anything.
fn write_rule(out: &mut String, ops: &[Operation], principals: &[&str]) {
    let _ = writeln!(out, "  - from:");
    let _ = writeln!(out, "    - source:");
    let _ = writeln!(out, "        principals: {}", list(principals));
    if ops.iter().any(|op| op == &Operation::default()) {
        // Opaque TCP on unknown ports: anything from these principals.
        return;
    }
    let _ = writeln!(out, "    to:");
    for op in ops {
        let _ = writeln!(out, "    - operation:");
        if !op.methods.is_empty() {
            let _ = writeln!(out, "        methods: {}", list(&op.methods));
        }
        if !op.paths.is_empty() {
            let _ = writeln!(out, "        paths: {}", list(&op.paths));
        }
        if !op.ports.is_empty() {
            let ports: Vec<String> = op.ports.iter().map(u16::to_string).collect();
            let _ = writeln!(out, "        ports: {}", list(&ports));
        }
    }
}

pub(crate) fn baseline(agg: &Aggregate) -> String {
    let mut lines: BTreeSet<String> = BTreeSet::new();
    for (&(s, d), e) in &agg.edges {
        for (route, r) in &e.routes {
            if !r.in_baseline {
                continue;
            }
            // Both sides' ports: each sidecar's detectors key edges on the port its own
            // records carry (dialled outbound, the application's inbound).
            let all = r.all_ports();
            let ports: Vec<Option<u16>> = if all.is_empty() {
                vec![None]
            } else {
                all.into_iter().map(Some).collect()
            };
            for port in ports {
                let edge = BaselineEdge {
                    line_type: LineType::Edge,
                    source: agg.nodes.name(s).to_owned(),
                    destination: agg.nodes.name(d).to_owned(),
                    port,
                    route: route.to_string(),
                    status_classes: class_names(r.baseline_classes),
                };
                if let Ok(line) = serde_json::to_string(&edge) {
                    lines.insert(line);
                }
            }
        }
    }
    // Burst rates over the baseline period (at least a minute, so that a short log does
    // not make a few events look like a high rate): the side that saw more.
    let span_ms = match (agg.first_ts, agg.baseline_last_ts) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    };
    #[allow(clippy::cast_precision_loss)]
    let span_secs = (span_ms.max(60_000) as f64) / 1000.0;
    for ((counter, s, d, route), sides) in &agg.rates {
        let events = sides[0].max(sides[1]);
        #[allow(clippy::cast_precision_loss)]
        let rate = BaselineRate {
            line_type: LineType::Rate,
            counter: counter.as_str().to_owned(),
            source: agg.nodes.name(*s).to_owned(),
            destination: if *d == u32::MAX {
                String::new()
            } else {
                agg.nodes.name(*d).to_owned()
            },
            route: route.to_string(),
            per_second: events as f64 / span_secs,
        };
        if let Ok(line) = serde_json::to_string(&rate) {
            lines.insert(line);
        }
    }
    let mut out = String::new();
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
    out
}
