//! The report as text for a terminal and as one self-contained HTML page (inline SVG and CSS,
//! no scripts, nothing fetched).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

use super::{FlagKind, NodeKind, PolicyAnswer, Report, rfc3339, short_name};
use picket_proxy::telemetry::alert::Severity;

fn opt_time(t: Option<time::OffsetDateTime>) -> String {
    t.map_or_else(|| "-".to_owned(), rfc3339)
}

fn alerts_text(alerts: &BTreeMap<picket_proxy::telemetry::AlertKind, u64>) -> String {
    alerts
        .iter()
        .map(|(k, n)| format!("{}x{n}", k.as_str()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The report for a terminal.
pub fn render_text(r: &Report) -> String {
    let mut o = String::new();
    let s = &r.summary;
    let _ = writeln!(o, "Picket flow analysis");
    let _ = writeln!(o, "  files:    {}", s.files.join(", "));
    let _ = writeln!(
        o,
        "  records:  {} flows, {} alerts, {} unreadable lines",
        s.records, s.alerts, s.bad_lines
    );
    let _ = writeln!(
        o,
        "  paired:   {} requests recorded by both sidecars, counted once",
        s.paired
    );
    if let Some(e) = &s.first_error {
        let _ = writeln!(o, "  first unreadable line: {e}");
    }
    let _ = writeln!(
        o,
        "  period:   {} .. {}",
        opt_time(s.first_seen),
        opt_time(s.last_seen)
    );
    if let Some(b) = s.baseline_until {
        let _ = writeln!(o, "  baseline: until {}", rfc3339(b));
    }
    if let Some(p) = s.policies {
        let _ = writeln!(o, "  policy:   {p} policies checked");
    }

    let _ = writeln!(o, "\nNodes ({})", r.nodes.len());
    let width = r.nodes.iter().map(|n| n.name.len()).max().unwrap_or(0);
    for n in &r.nodes {
        let alerts = if n.alerts.is_empty() {
            String::new()
        } else {
            format!(
                "  alerts: {} (worst {})",
                alerts_text(&n.alerts),
                n.max_severity.map_or("-", Severity::as_str)
            )
        };
        let kind = match n.kind {
            NodeKind::Workload => "",
            NodeKind::Egress => "  [egress]",
            NodeKind::Address => "  [address]",
        };
        let _ = writeln!(
            o,
            "  {:width$}  out {:>8}  in {:>8}{kind}{alerts}",
            n.name, n.requests_out, n.requests_in
        );
    }

    let _ = writeln!(o, "\nEdges ({})", r.edges.len());
    for e in &r.edges {
        let ports: Vec<String> = e.ports.iter().map(u16::to_string).collect();
        let mut marks = Vec::new();
        if e.new {
            marks.push("NEW".to_owned());
        }
        if let Some(p) = e.policy {
            marks.push(format!(
                "policy: {}",
                match p {
                    PolicyAnswer::Allow => "allow",
                    PolicyAnswer::Deny => "DENY",
                    PolicyAnswer::Partial => "PARTIAL",
                }
            ));
        }
        let _ = writeln!(
            o,
            "  {} -> {}  requests {} (allowed {}, denied {}, 5xx {})  ports {}  [{}]  {}",
            short_name(&e.source),
            short_name(&e.destination),
            e.requests,
            e.allowed,
            e.denied,
            e.errors,
            if ports.is_empty() {
                "-".to_owned()
            } else {
                ports.join(",")
            },
            e.protocols.join(","),
            marks.join("  ")
        );
        for route in e.routes.iter().take(10) {
            let mut m = String::new();
            if route.new {
                m.push_str("  NEW");
            }
            if route.policy == Some(PolicyAnswer::Deny) {
                m.push_str("  policy: DENY");
            }
            if route.denied > 0 {
                let _ = write!(m, "  denied {}", route.denied);
            }
            let _ = writeln!(o, "      {:>8}  {}{m}", route.requests, route.route);
        }
        if e.routes.len() > 10 {
            let _ = writeln!(o, "      ... {} more routes", e.routes.len() - 10);
        }
    }

    let _ = writeln!(o, "\nFlags ({})", r.flags.len());
    for f in &r.flags {
        let kind = match f.kind {
            FlagKind::NotAllowedByPolicy => "not allowed by policy",
            FlagKind::NewEdge => "new edge",
            FlagKind::NewRoute => "new route",
        };
        let _ = writeln!(
            o,
            "  {kind:<22} {} -> {}{}  ({} requests) {}",
            short_name(&f.source),
            short_name(&f.destination),
            f.route
                .as_deref()
                .map(|r| format!("  {r}"))
                .unwrap_or_default(),
            f.requests,
            f.detail
        );
    }

    render_egress_text(&mut o, r);
    render_users_text(&mut o, r);

    let _ = writeln!(o, "\nBlast radius");
    for b in &r.blast_radius {
        let names = |v: &[String]| -> String {
            if v.is_empty() {
                "nothing".to_owned()
            } else {
                v.iter()
                    .map(|n| short_name(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let _ = writeln!(o, "  {}", short_name(&b.identity));
        let _ = writeln!(
            o,
            "      reached:       {} (transitively: {})",
            names(&b.reached),
            names(&b.reached_transitive)
        );
        if !b.egress.is_empty() {
            let _ = writeln!(o, "      egress:        {}", names(&b.egress));
        }
        if let (Some(d), Some(t)) = (&b.reachable, &b.reachable_transitive) {
            let _ = writeln!(
                o,
                "      policy allows: {} (transitively: {})",
                names(d),
                names(t)
            );
        }
    }
    o
}

/// Connections to destinations outside the mesh, by source.
fn render_egress_text(o: &mut String, r: &Report) {
    let egress: Vec<&super::EdgeReport> = r.edges.iter().filter(|e| e.egress).collect();
    let _ = writeln!(o, "\nEgress, outside the mesh ({})", egress.len());
    for e in egress {
        let ports: Vec<String> = e.ports.iter().map(u16::to_string).collect();
        let _ = writeln!(
            o,
            "  {} -> {}  connections {}  ports {}  bytes sent {} received {}{}",
            short_name(&e.source),
            e.destination,
            e.requests,
            if ports.is_empty() {
                "-".to_owned()
            } else {
                ports.join(",")
            },
            e.bytes_in,
            e.bytes_out,
            if e.new { "  NEW" } else { "" }
        );
    }
}

fn render_egress_html(o: &mut String, r: &Report) {
    let egress: Vec<&super::EdgeReport> = r.edges.iter().filter(|e| e.egress).collect();
    let _ = write!(
        o,
        "<h2>Egress, outside the mesh ({})</h2><table><tr><th>source</th><th>destination</th><th>connections</th><th>ports</th><th>bytes sent</th><th>bytes received</th><th>first seen</th><th>last seen</th></tr>",
        egress.len()
    );
    for e in egress {
        let ports: Vec<String> = e.ports.iter().map(u16::to_string).collect();
        let _ = write!(
            o,
            "<tr class=\"egress\"><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&short_name(&e.source)),
            esc(&e.destination),
            e.requests,
            ports.join(", "),
            e.bytes_in,
            e.bytes_out,
            esc(&rfc3339(e.first_seen)),
            esc(&rfc3339(e.last_seen))
        );
    }
    o.push_str("</table>");
}

/// User-level edges: per service, its busiest end users and the rest summed.
fn render_users_text(o: &mut String, r: &Report) {
    let _ = writeln!(o, "\nUser edges ({} services)", r.user_edges.len());
    for u in &r.user_edges {
        let _ = writeln!(
            o,
            "  -> {}  {} requests from {}{} principals",
            short_name(&u.destination),
            u.requests,
            if u.principals_capped { "at least " } else { "" },
            u.principals
        );
        for e in &u.top {
            let denied = if e.denied > 0 {
                format!("  denied {}", e.denied)
            } else {
                String::new()
            };
            let _ = writeln!(o, "      {:>8}  {}{denied}", e.requests, e.principal);
        }
        if u.others.requests > 0 {
            let _ = writeln!(
                o,
                "      {:>8}  ({} other principals{})",
                u.others.requests,
                u.others.principals,
                if u.principals_capped { " and more" } else { "" }
            );
        }
    }
}

fn render_users_html(o: &mut String, r: &Report) {
    let _ = write!(
        o,
        "<h2>User edges ({})</h2><table><tr><th>end user (iss/sub)</th><th>service</th><th>requests</th><th>denied</th></tr>",
        r.user_edges.len()
    );
    for u in &r.user_edges {
        let dest = esc(&short_name(&u.destination));
        for e in &u.top {
            let _ = write!(
                o,
                "<tr class=\"user\"><td>{}</td><td>{dest}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(&e.principal),
                e.requests,
                e.denied
            );
        }
        if u.others.requests > 0 {
            let _ = write!(
                o,
                "<tr class=\"user-others\"><td>{} other principals{}</td><td>{dest}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                u.others.principals,
                if u.principals_capped { " and more" } else { "" },
                u.others.requests,
                u.others.denied
            );
        }
    }
    o.push_str("</table>");
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn severity_fill(s: Option<Severity>) -> (&'static str, &'static str) {
    match s {
        None => ("#e7f0fd", "#1c3d6e"),
        Some(Severity::Low) => ("#fff3bf", "#5c4400"),
        Some(Severity::Medium) => ("#ffd8a8", "#5c2d00"),
        Some(Severity::High) => ("#ff8787", "#4a0000"),
        Some(Severity::Critical) => ("#c92a2a", "#ffffff"),
    }
}

/// Edge colours: the legend and the arrow markers use the same table.
const EDGE_STYLES: [(&str, &str, &str); 5] = [
    ("allow", "#2f9e44", "allowed"),
    ("mixed", "#f08c00", "some denied"),
    ("deny", "#e03131", "denied"),
    ("policy", "#7048e8", "not allowed by the given policy"),
    ("unknown", "#868e96", "no verdict recorded"),
];

fn edge_style(e: &super::EdgeReport) -> &'static str {
    if matches!(e.policy, Some(PolicyAnswer::Deny | PolicyAnswer::Partial)) {
        "policy"
    } else if e.denied > 0 && e.allowed == 0 && e.denied >= e.requests {
        "deny"
    } else if e.denied > 0 {
        "mixed"
    } else if e.allowed == 0 {
        "unknown"
    } else {
        "allow"
    }
}

const NODE_W: i64 = 210;
const NODE_H: i64 = 46;
const COL_GAP: i64 = 300;
const ROW_GAP: i64 = 86;
const MARGIN: i64 = 40;

/// Columns by longest path from the nodes nothing calls (edges that close a cycle are left
/// out), rows ordered by the mean row of each node's callers to keep lines from crossing.
fn layout(r: &Report) -> (Vec<(i64, i64)>, i64, i64) {
    let index: BTreeMap<&str, usize> = r
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let n = r.nodes.len();
    let mut out_edges: Vec<Vec<usize>> = vec![Vec::new(); n];
    for e in &r.edges {
        if let (Some(&s), Some(&d)) = (
            index.get(e.source.as_str()),
            index.get(e.destination.as_str()),
        ) && s != d
            && !out_edges[s].contains(&d)
        {
            out_edges[s].push(d);
        }
    }
    // Depth-first search marks the edges that close cycles; the rest form a DAG.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; n];
    let mut dag: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut has_caller = vec![false; n];
    for e in &out_edges {
        for &d in e {
            has_caller[d] = true;
        }
    }
    let starts: Vec<usize> = (0..n).filter(|i| !has_caller[*i]).chain(0..n).collect();
    for start in starts {
        if mark[start] != Mark::New {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        mark[start] = Mark::Open;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&d) = out_edges[node].get(*next) {
                *next += 1;
                match mark[d] {
                    Mark::Open => {} // closes a cycle
                    Mark::Done => dag[node].push(d),
                    Mark::New => {
                        dag[node].push(d);
                        mark[d] = Mark::Open;
                        stack.push((d, 0));
                    }
                }
            } else {
                mark[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    // Longest path, in topological order.
    let mut indegree = vec![0usize; n];
    for e in &dag {
        for &d in e {
            indegree[d] += 1;
        }
    }
    let mut level = vec![0usize; n];
    let mut queue: VecDeque<usize> = (0..n).filter(|i| indegree[*i] == 0).collect();
    while let Some(i) = queue.pop_front() {
        for &d in &dag[i] {
            level[d] = level[d].max(level[i] + 1);
            indegree[d] -= 1;
            if indegree[d] == 0 {
                queue.push_back(d);
            }
        }
    }
    let mut columns: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, l) in level.iter().enumerate() {
        columns.entry(*l).or_default().push(i);
    }
    let mut row = vec![0f64; n];
    let mut callers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (s, e) in dag.iter().enumerate() {
        for &d in e {
            callers[d].push(s);
        }
    }
    let mut pos = vec![(0, 0); n];
    let mut max_rows = 0;
    for (col, members) in columns.iter_mut() {
        let key = |i: &usize| -> f64 {
            let c = &callers[*i];
            if c.is_empty() {
                f64::MAX
            } else {
                c.iter().map(|p| row[*p]).sum::<f64>() / c.len() as f64
            }
        };
        members.sort_by(|a, b| key(a).total_cmp(&key(b)).then(a.cmp(b)));
        max_rows = max_rows.max(members.len());
        for (r_i, &i) in members.iter().enumerate() {
            row[i] = r_i as f64;
            pos[i] = (
                MARGIN + *col as i64 * COL_GAP,
                MARGIN + 50 + r_i as i64 * ROW_GAP,
            );
        }
    }
    let width = MARGIN * 2 + columns.len().max(1) as i64 * COL_GAP;
    let height = MARGIN * 2 + 90 + max_rows.max(1) as i64 * ROW_GAP;
    (pos, width, height)
}

fn svg(r: &Report) -> String {
    let (pos, width, height) = layout(r);
    let index: BTreeMap<&str, usize> = r
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg id="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="service graph"><defs>"#
    );
    for (name, color, _) in EDGE_STYLES {
        let _ = write!(
            o,
            r#"<marker id="arrow-{name}" viewBox="0 0 10 10" refX="10" refY="5" markerUnits="userSpaceOnUse" markerWidth="11" markerHeight="11" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>"#
        );
    }
    o.push_str("</defs>");
    let mut long_edges = 0i64;
    for e in &r.edges {
        let (Some(&s), Some(&d)) = (
            index.get(e.source.as_str()),
            index.get(e.destination.as_str()),
        ) else {
            continue;
        };
        let style = edge_style(e);
        let color = EDGE_STYLES
            .iter()
            .find(|(n, _, _)| *n == style)
            .map_or("#868e96", |(_, c, _)| c);
        let (sx, sy) = pos[s];
        let (dx, dy) = pos[d];
        let path = if s == d {
            let (x, y) = (sx + NODE_W / 2, sy);
            format!(
                "M{} {y} C{} {} {} {} {} {y}",
                x - 20,
                x - 40,
                y - 50,
                x + 40,
                y - 50,
                x + 20
            )
        } else if dx > sx + COL_GAP {
            // Skips a column: over the top of every node, one lane per long edge.
            let lane = MARGIN + 12 - 7 * (long_edges % 4);
            long_edges += 1;
            let (x1, y1) = (sx + NODE_W, sy + NODE_H / 2);
            let (x2, y2) = (dx, dy + NODE_H / 2);
            format!(
                "M{x1} {y1} C{} {y1} {} {lane} {} {lane} L{} {lane} C{} {lane} {} {y2} {x2} {y2}",
                x1 + 40,
                x1 + 40,
                x1 + 80,
                x2 - 80,
                x2 - 40,
                x2 - 40
            )
        } else if dx > sx {
            let (x1, y1) = (sx + NODE_W, sy + NODE_H / 2);
            let (x2, y2) = (dx, dy + NODE_H / 2);
            let mid = (x1 + x2) / 2;
            format!("M{x1} {y1} C{mid} {y1} {mid} {y2} {x2} {y2}")
        } else {
            // Backwards or within a column: loop around underneath.
            let (x1, y1) = (sx + NODE_W / 2, sy + NODE_H);
            let (x2, y2) = (dx + NODE_W / 2, dy + NODE_H);
            let low = y1.max(y2) + 60;
            format!("M{x1} {y1} C{x1} {low} {x2} {low} {x2} {y2}")
        };
        let w = 1.5 + (e.requests.max(1) as f64).log10();
        let dash = if e.new {
            r#" stroke-dasharray="7 4""#
        } else {
            ""
        };
        let _ = write!(
            o,
            r#"<path class="edge edge-{style}" d="{path}" fill="none" stroke="{color}" stroke-width="{w:.1}"{dash} marker-end="url(#arrow-{style})"><title>{} → {}: {} requests, {} allowed, {} denied{}</title></path>"#,
            esc(&short_name(&e.source)),
            esc(&short_name(&e.destination)),
            e.requests,
            e.allowed,
            e.denied,
            if e.new { ", new after baseline" } else { "" }
        );
    }
    for (i, n) in r.nodes.iter().enumerate() {
        let (x, y) = pos[i];
        let (fill, ink) = severity_fill(n.max_severity);
        let (stroke, dash, kind) = match n.kind {
            NodeKind::Workload => ("#495057", "", ""),
            NodeKind::Egress => ("#0b7285", r#" stroke-dasharray="6 3" stroke-width="2""#, "egress · "),
            NodeKind::Address => ("#868e96", r#" stroke-dasharray="2 2""#, ""),
        };
        let alerts = if n.alerts.is_empty() {
            String::new()
        } else {
            format!(" · alerts: {}", alerts_text(&n.alerts))
        };
        let _ = write!(
            o,
            r##"<g class="node node-{kind_class}" data-id="{id}"><title>{id}{alerts_t}</title><rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="8" fill="{fill}" stroke="{stroke}"{dash}/><text x="{tx}" y="{ty}" fill="{ink}" font-size="14" font-weight="600" text-anchor="middle">{name}</text><text x="{tx}" y="{ty2}" fill="{ink}" font-size="11" text-anchor="middle">{kind}out {out} · in {inn}{sev}</text></g>"##,
            kind_class = match n.kind {
                NodeKind::Workload => "workload",
                NodeKind::Egress => "egress",
                NodeKind::Address => "address",
            },
            id = esc(&n.id),
            alerts_t = esc(&alerts),
            tx = x + NODE_W / 2,
            ty = y + 19,
            ty2 = y + 36,
            name = esc(&n.name),
            out = n.requests_out,
            inn = n.requests_in,
            sev = n
                .max_severity
                .map(|s| format!(" · {}", s.as_str()))
                .unwrap_or_default(),
        );
    }
    o.push_str("</svg>");
    o
}

const CSS: &str = "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#212529;background:#fff}\
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}\
.meta{color:#495057;font-size:13px}\
.graph{overflow:auto;border:1px solid #dee2e6;border-radius:8px;background:#fcfcfd}\
table{border-collapse:collapse;font-size:13px;margin-top:4px}\
th,td{border-bottom:1px solid #e9ecef;padding:4px 10px;text-align:left;vertical-align:top}\
th{background:#f1f3f5}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.legend span{display:inline-block;margin-right:14px;font-size:12px}\
.sw{display:inline-block;width:12px;height:12px;border-radius:3px;margin-right:4px;vertical-align:-2px}\
.flag-not_allowed_by_policy{color:#7048e8}.flag-new_edge,.flag-new_route{color:#e8590c}";

/// The report as one self-contained HTML page.
pub fn render_html(r: &Report) -> String {
    let mut o = String::new();
    let s = &r.summary;
    let _ = write!(
        o,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Picket flow analysis</title><style>{CSS}</style></head><body>"
    );
    let _ = write!(
        o,
        "<h1>Picket flow analysis</h1><div class=\"meta\">{} flow records, {} alerts, {} unreadable lines · {} .. {}{}{}</div>",
        s.records,
        s.alerts,
        s.bad_lines,
        esc(&opt_time(s.first_seen)),
        esc(&opt_time(s.last_seen)),
        s.baseline_until
            .map(|b| format!(" · baseline until {}", esc(&rfc3339(b))))
            .unwrap_or_default(),
        s.policies
            .map(|p| format!(" · {p} policies checked"))
            .unwrap_or_default(),
    );
    o.push_str("<h2>Service graph</h2><div class=\"legend\">");
    for (_, color, label) in EDGE_STYLES {
        let _ = write!(
            o,
            "<span><i class=\"sw\" style=\"background:{color}\"></i>{label}</span>"
        );
    }
    o.push_str("<span>dashed: new after the baseline</span><span><i class=\"sw\" style=\"border:2px dashed #0b7285\"></i>egress: outside the mesh</span>");
    for (sev, label) in [
        (None, "no alerts"),
        (Some(Severity::Low), "low"),
        (Some(Severity::Medium), "medium"),
        (Some(Severity::High), "high"),
        (Some(Severity::Critical), "critical"),
    ] {
        let _ = write!(
            o,
            "<span><i class=\"sw\" style=\"background:{};border:1px solid #495057\"></i>{label}</span>",
            severity_fill(sev).0
        );
    }
    o.push_str("</div><div class=\"graph\">");
    o.push_str(&svg(r));
    o.push_str("</div>");

    let _ = write!(
        o,
        "<h2>Flags ({})</h2><table><tr><th>kind</th><th>source</th><th>destination</th><th>route</th><th>requests</th><th>detail</th></tr>",
        r.flags.len()
    );
    for f in &r.flags {
        let kind = serde_json::to_value(f.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = write!(
            o,
            "<tr class=\"flag-{kind}\"><td>{kind}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            esc(&short_name(&f.source)),
            esc(&short_name(&f.destination)),
            esc(f.route.as_deref().unwrap_or("")),
            f.requests,
            esc(&f.detail)
        );
    }
    o.push_str("</table>");

    let _ = write!(
        o,
        "<h2>Edges ({})</h2><table><tr><th>source</th><th>destination</th><th>requests</th><th>allowed</th><th>denied</th><th>ports</th><th>protocols</th><th>routes (busiest)</th></tr>",
        r.edges.len()
    );
    for e in &r.edges {
        let routes: Vec<String> = e
            .routes
            .iter()
            .take(5)
            .map(|x| format!("{} ({})", esc(&x.route), x.requests))
            .collect();
        let ports: Vec<String> = e.ports.iter().map(u16::to_string).collect();
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&short_name(&e.source)),
            esc(&short_name(&e.destination)),
            e.requests,
            e.allowed,
            e.denied,
            ports.join(", "),
            e.protocols.join(", "),
            routes.join("<br>")
        );
    }
    o.push_str("</table>");

    render_egress_html(&mut o, r);
    render_users_html(&mut o, r);

    o.push_str("<h2>Blast radius</h2><table><tr><th>identity</th><th>reached</th><th>reached transitively</th><th>egress reached</th><th>policy allows</th><th>policy allows transitively</th></tr>");
    for b in &r.blast_radius {
        let names = |v: &[String]| -> String {
            v.iter()
                .map(|n| esc(&short_name(n)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&short_name(&b.identity)),
            names(&b.reached),
            names(&b.reached_transitive),
            names(&b.egress),
            b.reachable.as_deref().map_or("-".to_owned(), names),
            b.reachable_transitive
                .as_deref()
                .map_or("-".to_owned(), names),
        );
    }
    o.push_str("</table></body></html>\n");
    o
}
