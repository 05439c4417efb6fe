//! The report as text for a terminal and as one self-contained HTML page (inline SVG, CSS and
//! one inline script for zoom and moving; a content security policy lets it fetch nothing).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::layout::{NODE_H, NODE_W, layout};
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
    render_summary_text(&mut o, r);
    render_nodes_text(&mut o, r);
    render_edges_text(&mut o, r);
    render_flags_text(&mut o, r);
    render_egress_text(&mut o, r);
    render_users_text(&mut o, r);
    render_blast_radius_text(&mut o, r);
    o
}

/// What was read, over which time, against what.
fn render_summary_text(o: &mut String, r: &Report) {
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
}

/// Each node with its requests out and in, kind and alerts.
fn render_nodes_text(o: &mut String, r: &Report) {
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
}

/// Each edge with its counts and marks, and its ten busiest routes.
fn render_edges_text(o: &mut String, r: &Report) {
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
}

/// The flags raised: routes the policy denies, new edges and routes.
fn render_flags_text(o: &mut String, r: &Report) {
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
}

/// What each identity reached, and what the policy would let it reach.
fn render_blast_radius_text(o: &mut String, r: &Report) {
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

/// The path of one edge through the points its route gives: curves between columns,
/// straight through the columns it passes.
fn edge_path(points: &[(f64, f64)]) -> String {
    let mut d = String::new();
    let Some(&(x0, y0)) = points.first() else {
        return d;
    };
    let _ = write!(d, "M{x0:.1} {y0:.1}");
    let mut prev = (x0, y0);
    for (k, &(x, y)) in points.iter().enumerate().skip(1) {
        if k.is_multiple_of(2) {
            let _ = write!(d, " L{x:.1} {y:.1}");
        } else {
            let mid = (prev.0 + x) / 2.0;
            let _ = write!(d, " C{mid:.1} {:.1} {mid:.1} {y:.1} {x:.1} {y:.1}", prev.1);
        }
        prev = (x, y);
    }
    d
}

fn svg(r: &Report) -> String {
    let drawn = drawn_edges(r);
    let pairs: Vec<(usize, usize)> = drawn.iter().map(|&(_, s, d)| (s, d)).collect();
    let lay = layout(r.nodes.len(), &pairs);
    let (width, height) = (lay.width.ceil(), lay.height.ceil());
    let mut o = String::new();
    // Drawn at most at its natural size, shrunk to the page's width (and most of the window's
    // height) otherwise; the script zooms and moves by changing the view box.
    let _ = write!(
        o,
        r#"<svg id="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" preserveAspectRatio="xMidYMin meet" style="max-width:{width}px" tabindex="0" role="img" aria-label="service graph" data-crossings="{}"><defs>"#,
        lay.crossings
    );
    for (name, color, _) in EDGE_STYLES {
        let _ = write!(
            o,
            r#"<marker id="arrow-{name}" viewBox="0 0 10 10" refX="10" refY="5" markerUnits="userSpaceOnUse" markerWidth="11" markerHeight="11" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>"#
        );
    }
    o.push_str("</defs>");
    for (k, &(e, s, d)) in drawn.iter().enumerate() {
        let route = lay.routes.get(k).cloned().unwrap_or_default();
        let (path, marker) = if s == d || route.points.is_empty() {
            (self_loop(lay.pos[s]), "marker-end")
        } else if route.reversed {
            // Drawn from the called node back: the arrow goes at the start.
            (edge_path(&route.points), "marker-start")
        } else {
            (edge_path(&route.points), "marker-end")
        };
        svg_edge(&mut o, e, &path, marker);
    }
    for (i, n) in r.nodes.iter().enumerate() {
        svg_node(&mut o, n, lay.pos[i]);
    }
    o.push_str("</svg>");
    o
}

/// The edges whose two ends are nodes of the report, with their ends' indices.
fn drawn_edges(r: &Report) -> Vec<(&super::EdgeReport, usize, usize)> {
    let index: BTreeMap<&str, usize> = r
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    r.edges
        .iter()
        .filter_map(|e| {
            let s = *index.get(e.source.as_str())?;
            let d = *index.get(e.destination.as_str())?;
            Some((e, s, d))
        })
        .collect()
}

/// A call to itself: a loop over the top of the box at `(x, y)`.
fn self_loop((x, y): (f64, f64)) -> String {
    let x = x + NODE_W / 2.0;
    format!(
        "M{:.1} {y:.1} C{:.1} {:.1} {:.1} {:.1} {:.1} {y:.1}",
        x - 20.0,
        x - 40.0,
        y - 34.0,
        x + 40.0,
        y - 34.0,
        x + 20.0
    )
}

/// One edge's line along `path`, its arrow at `marker`, coloured by its style, as wide as the
/// logarithm of its requests, with its counts as the tooltip.
fn svg_edge(o: &mut String, e: &super::EdgeReport, path: &str, marker: &str) {
    let style = edge_style(e);
    let color = EDGE_STYLES
        .iter()
        .find(|(n, _, _)| *n == style)
        .map_or("#868e96", |(_, c, _)| c);
    let w = 1.5 + (e.requests.max(1) as f64).log10();
    let dash = if e.new {
        r#" stroke-dasharray="7 4""#
    } else {
        ""
    };
    let _ = write!(
        o,
        r#"<path class="edge edge-{style}" d="{path}" fill="none" stroke="{color}" stroke-width="{w:.1}"{dash} {marker}="url(#arrow-{style})"><title>{} → {}: {} {}, {} allowed, {} denied{}</title></path>"#,
        esc(&short_name(&e.source)),
        esc(&short_name(&e.destination)),
        e.requests,
        if e.egress { "connections" } else { "requests" },
        e.allowed,
        e.denied,
        if e.new { ", new after baseline" } else { "" }
    );
}

/// One node's box at `(x, y)`: filled by its worst alert, outlined by its kind, with its
/// name and requests.
fn svg_node(o: &mut String, n: &super::NodeReport, (x, y): (f64, f64)) {
    let (fill, ink) = severity_fill(n.max_severity);
    let (stroke, dash, kind, kind_class) = match n.kind {
        NodeKind::Workload => ("#495057", "", "", "workload"),
        NodeKind::Egress => (
            "#0b7285",
            r#" stroke-dasharray="6 3" stroke-width="2""#,
            "egress · ",
            "egress",
        ),
        NodeKind::Address => ("#868e96", r#" stroke-dasharray="2 2""#, "", "address"),
    };
    let alerts = if n.alerts.is_empty() {
        String::new()
    } else {
        format!(" · alerts: {}", alerts_text(&n.alerts))
    };
    let _ = write!(
        o,
        r##"<g class="node node-{kind_class}" data-id="{id}"><title>{id}{alerts_t}</title><rect x="{x:.1}" y="{y:.1}" width="{NODE_W}" height="{NODE_H}" rx="8" fill="{fill}" stroke="{stroke}"{dash}/><text x="{tx:.1}" y="{ty:.1}" fill="{ink}" font-size="14" font-weight="600" text-anchor="middle">{name}</text><text x="{tx:.1}" y="{ty2:.1}" fill="{ink}" font-size="11" text-anchor="middle">{kind}out {out} · in {inn}{sev}</text></g>"##,
        id = esc(&n.id),
        alerts_t = esc(&alerts),
        tx = x + NODE_W / 2.0,
        ty = y + 19.0,
        ty2 = y + 36.0,
        name = esc(&fit_label(&n.name)),
        out = n.requests_out,
        inn = n.requests_in,
        sev = n
            .max_severity
            .map(|s| format!(" · {}", s.as_str()))
            .unwrap_or_default(),
    );
}

/// Characters of a name that fit a box; longer names are cut with an ellipsis (the full id
/// is the box's tooltip).
const LABEL_CHARS: usize = 26;

fn fit_label(name: &str) -> String {
    if name.chars().count() <= LABEL_CHARS {
        return name.to_owned();
    }
    let mut s: String = name.chars().take(LABEL_CHARS - 1).collect();
    s.push('…');
    s
}

/// Zoom (wheel, buttons, keys) and moving (drag, arrow keys) by changing the graph's view
/// box; "fit" goes back to the whole graph. Inline: the page fetches nothing.
const SCRIPT: &str = r#"(function(){
var s=document.getElementById('graph');if(!s)return;
var b=s.viewBox.baseVal,f=[b.x,b.y,b.width,b.height];
function set(x,y,w,h){b.x=x;b.y=y;b.width=w;b.height=h;}
function fit(){set(f[0],f[1],f[2],f[3]);}
function centre(){return {x:b.x+b.width/2,y:b.y+b.height/2};}
function at(e){var m=s.getScreenCTM();if(!m)return centre();var p=s.createSVGPoint();p.x=e.clientX;p.y=e.clientY;return p.matrixTransform(m.inverse());}
function zoom(k,c){var w=b.width*k;if(w<f[2]/40||w>f[2]*4)return;c=c||centre();set(c.x-(c.x-b.x)*k,c.y-(c.y-b.y)*k,w,b.height*k);}
function unit(){var r=s.getBoundingClientRect();return Math.max(b.width/Math.max(r.width,1),b.height/Math.max(r.height,1));}
s.addEventListener('wheel',function(e){e.preventDefault();zoom(e.deltaY<0?1/1.2:1.2,at(e));},{passive:false});
var drag=null;
s.addEventListener('pointerdown',function(e){drag={x:e.clientX,y:e.clientY,bx:b.x,by:b.y,k:unit()};s.setPointerCapture(e.pointerId);s.classList.add('moving');});
s.addEventListener('pointermove',function(e){if(drag)set(drag.bx-(e.clientX-drag.x)*drag.k,drag.by-(e.clientY-drag.y)*drag.k,b.width,b.height);});
function stop(){drag=null;s.classList.remove('moving');}
s.addEventListener('pointerup',stop);s.addEventListener('pointercancel',stop);
s.addEventListener('keydown',function(e){var st=b.width/10,a={'+':function(){zoom(1/1.2);},'=':function(){zoom(1/1.2);},'-':function(){zoom(1.2);},'0':fit,
ArrowLeft:function(){set(b.x-st,b.y,b.width,b.height);},ArrowRight:function(){set(b.x+st,b.y,b.width,b.height);},
ArrowUp:function(){set(b.x,b.y-st,b.width,b.height);},ArrowDown:function(){set(b.x,b.y+st,b.width,b.height);}}[e.key];
if(a){e.preventDefault();a();}});
document.getElementById('zoom-in').addEventListener('click',function(){zoom(1/1.2);});
document.getElementById('zoom-out').addEventListener('click',function(){zoom(1.2);});
document.getElementById('zoom-fit').addEventListener('click',fit);
})();"#;

const CSS: &str = "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#212529;background:#fff}\
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}\
.meta{color:#495057;font-size:13px}\
.graph{overflow:hidden;border:1px solid #dee2e6;border-radius:8px;background:#fcfcfd}\
.graph svg{display:block;width:100%;height:auto;max-height:70vh;margin:0 auto;cursor:grab;touch-action:none}\
.graph svg.moving{cursor:grabbing}.graph svg:focus{outline:2px solid #74c0fc}\
.zoom{margin:6px 0;font-size:12px;color:#495057}.zoom button{font:inherit;min-width:30px;margin-right:4px}\
table{border-collapse:collapse;font-size:13px;margin-top:4px}\
th,td{border-bottom:1px solid #e9ecef;padding:4px 10px;text-align:left;vertical-align:top}\
th{background:#f1f3f5}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.legend span{display:inline-block;margin-right:14px;font-size:12px}\
.sw{display:inline-block;width:12px;height:12px;border-radius:3px;margin-right:4px;vertical-align:-2px}\
.flag-not_allowed_by_policy{color:#7048e8}.flag-new_edge,.flag-new_route{color:#e8590c}";

/// The report as one self-contained HTML page.
pub fn render_html(r: &Report) -> String {
    let mut o = String::new();
    render_head_html(&mut o, r);
    render_graph_html(&mut o, r);
    render_flags_html(&mut o, r);
    render_edges_html(&mut o, r);
    render_egress_html(&mut o, r);
    render_users_html(&mut o, r);
    render_blast_radius_html(&mut o, r);
    let _ = writeln!(o, "<script>{SCRIPT}</script></body></html>");
    o
}

/// The page's head, its title and what was read.
fn render_head_html(o: &mut String, r: &Report) {
    let s = &r.summary;
    let _ = write!(
        o,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Picket flow analysis</title><style>{CSS}</style></head><body>"
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
}

/// The service graph: its legend, the zoom buttons and the SVG.
fn render_graph_html(o: &mut String, r: &Report) {
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
    o.push_str("</div><div class=\"zoom\"><button type=\"button\" id=\"zoom-in\" title=\"zoom in (+)\">+</button><button type=\"button\" id=\"zoom-out\" title=\"zoom out (-)\">−</button><button type=\"button\" id=\"zoom-fit\" title=\"whole graph (0)\">fit</button> wheel or +/−: zoom · drag or arrow keys: move</div><div class=\"graph\">");
    o.push_str(&svg(r));
    o.push_str("</div>");
}

/// The flags as a table.
fn render_flags_html(o: &mut String, r: &Report) {
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
}

/// The edges as a table, with their five busiest routes.
fn render_edges_html(o: &mut String, r: &Report) {
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
}

/// What each identity reached, and what the policy would let it reach, as a table.
fn render_blast_radius_html(o: &mut String, r: &Report) {
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
    o.push_str("</table>");
}
