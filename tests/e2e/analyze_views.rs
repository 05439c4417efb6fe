//! `picket analyze` views beyond the service graph, through the real binary on flow logs
//! written with the sidecar's own record type: user-level edges (end users per service),
//! egress destinations (passthrough connections out of the mesh), and the two sides of a
//! request paired by trace context.

use anyhow::{Context, Result, ensure};
use picket_proxy::direction::Direction;
use picket_proxy::telemetry::{FlowProtocol, FlowRecord, Verdict};
use picket_tests::analyze::{analyze, analyze_html, analyze_json, write_flow_log};
use picket_tests::spiffe_id;
use serde_json::Value;
use time::OffsetDateTime;

fn at(ms: i64) -> Result<OffsetDateTime> {
    Ok(OffsetDateTime::from_unix_timestamp_nanos(
        (1_700_000_000_000 + i128::from(ms)) * 1_000_000,
    )?)
}

/// An HTTP request from `src` to `dst` as one sidecar records it.
fn request<'a>(
    ms: i64,
    direction: Direction,
    src: &'a str,
    dst: &'a str,
) -> Result<FlowRecord<'a>> {
    let inbound = direction == Direction::Inbound;
    Ok(FlowRecord {
        source_identity: Some(src.into()),
        source_address: Some("10.1.0.7:41000".parse()?),
        destination_identity: Some(dst.into()),
        destination_port: Some(if inbound { 8080 } else { 7143 }),
        method: Some("GET".into()),
        path: Some("/api/items/7".into()),
        status: Some(200),
        verdict: inbound.then_some(Verdict::Allow),
        ..FlowRecord::new(at(ms)?, direction, FlowProtocol::Http1)
    })
}

#[tokio::test]
async fn analyze_shows_end_users_per_service_bounded_to_the_busiest() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let frontend = spiffe_id("shop", "frontend");
    let catalog = spiffe_id("shop", "catalog");
    let mut inbound = Vec::new();
    let mut outbound = Vec::new();
    // User k makes k requests; both sidecars log each request, the callee's with the
    // principal of the token it validated.
    let principals: Vec<String> = (1..=6).map(|k| format!("https://idp.test/u{k}")).collect();
    let mut ms = 0;
    for (k, p) in principals.iter().enumerate() {
        for _ in 0..=k {
            ms += 1;
            outbound.push(request(ms, Direction::Outbound, &frontend, &catalog)?);
            inbound.push(FlowRecord {
                request_principal: Some(p.as_str().into()),
                ..request(ms, Direction::Inbound, &frontend, &catalog)?
            });
        }
    }
    let files = [
        write_flow_log(&dir.path().join("frontend.jsonl"), &outbound)?,
        write_flow_log(&dir.path().join("catalog.jsonl"), &inbound)?,
    ];
    let report = analyze_json(&files, &["--top-users", "2"]).await?;
    let users = report["user_edges"].as_array().context("user_edges")?;
    ensure!(users.len() == 1, "{users:#?}");
    let u = &users[0];
    ensure!(u["destination"] == catalog.as_str(), "{u:#}");
    ensure!(u["principals"] == 6 && u["requests"] == 21, "{u:#}");
    let top: Vec<(&str, u64)> = u["top"]
        .as_array()
        .context("top")?
        .iter()
        .map(|e| {
            (
                e["principal"].as_str().unwrap_or_default(),
                e["requests"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    ensure!(
        top == [("https://idp.test/u6", 6), ("https://idp.test/u5", 5)],
        "{top:?}"
    );
    ensure!(
        u["others"]["principals"] == 4 && u["others"]["requests"] == 10,
        "{u:#}"
    );

    let text = analyze(&files, &["--top-users", "2"]).await?;
    ensure!(
        text.contains("-> shop/catalog  21 requests from 6 principals")
            && text.contains("6  https://idp.test/u6")
            && text.contains("10  (4 other principals)"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn analyze_shows_egress_destinations_as_nodes_of_their_own() -> Result<()> {
    use picket_proxy::telemetry::flow::FlowPhase;
    let dir = tempfile::tempdir()?;
    let frontend = spiffe_id("shop", "frontend");
    let catalog = spiffe_id("shop", "catalog");
    let outside: std::net::SocketAddr = "198.51.100.20:443".parse()?;
    let mut caller = vec![request(1, Direction::Outbound, &frontend, &catalog)?];
    let callee = vec![request(1, Direction::Inbound, &frontend, &catalog)?];
    // The catalog fetches from outside the mesh twice, through passthrough.
    for ms in [10, 20] {
        let open = FlowRecord {
            source_identity: Some(catalog.as_str().into()),
            source_address: Some("10.1.0.8:50000".parse()?),
            destination_address: Some(outside),
            destination_port: Some(outside.port()),
            phase: Some(FlowPhase::Open),
            ..FlowRecord::new(at(ms)?, Direction::Outbound, FlowProtocol::Tcp)
        };
        let end = FlowRecord {
            phase: Some(FlowPhase::End),
            bytes_in: 40,
            bytes_out: 1000,
            ..open.clone()
        };
        caller.extend([open, end]);
    }
    let files = [
        write_flow_log(&dir.path().join("frontend-and-catalog-out.jsonl"), &caller)?,
        write_flow_log(&dir.path().join("catalog-in.jsonl"), &callee)?,
    ];
    let report = analyze_json(&files, &[]).await?;
    let node = report["nodes"]
        .as_array()
        .context("nodes")?
        .iter()
        .find(|n| n["id"] == "198.51.100.20")
        .context("the egress destination is no node")?;
    ensure!(
        node["kind"] == "egress" && node["requests_in"] == 2,
        "{node:#}"
    );
    let edge = report["edges"]
        .as_array()
        .context("edges")?
        .iter()
        .find(|e| e["destination"] == "198.51.100.20")
        .context("no egress edge")?;
    ensure!(
        edge["egress"] == true
            && edge["source"] == catalog.as_str()
            && edge["requests"] == 2
            && edge["ports"] == serde_json::json!([443])
            && edge["bytes_out"] == 2000,
        "{edge:#}"
    );
    let fr = report["blast_radius"]
        .as_array()
        .context("blast_radius")?
        .iter()
        .find(|b| b["identity"] == frontend.as_str())
        .context("frontend blast radius")?;
    ensure!(
        fr["egress"] == serde_json::json!(["198.51.100.20"]),
        "{fr:#}"
    );

    let text = analyze(&files, &[]).await?;
    ensure!(
        text.contains("shop/catalog -> 198.51.100.20  connections 2  ports 443"),
        "{text}"
    );
    let html = std::fs::read_to_string(analyze_html(&files, &[], dir.path()).await?)?;
    ensure!(html.contains(r#"<g class="node node-egress" data-id="198.51.100.20">"#));
    Ok(())
}

#[tokio::test]
async fn analyze_pairs_the_two_sides_of_a_request_by_trace_context_not_by_names() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let frontend = spiffe_id("shop", "frontend");
    let catalog = spiffe_id("shop", "catalog");
    // The caller's sidecar named the callee by its expectation, the callee's by itself.
    let expectation = "spiffe://cluster.local/*";
    let (mut caller, mut callee) = (Vec::new(), Vec::new());
    let traces: Vec<(String, String)> = (1..=8u64)
        .map(|i| {
            (
                format!("{:032x}", 0x4bf9_0000 + i),
                format!("{:016x}", 0x00f0_0000 + i),
            )
        })
        .collect();
    for (i, (trace, client_span)) in traces.iter().enumerate() {
        let ms = i64::try_from(i)?;
        caller.push(FlowRecord {
            trace_id: Some(trace.as_str().into()),
            span_id: Some(client_span.as_str().into()),
            ..request(ms, Direction::Outbound, &frontend, expectation)?
        });
        callee.push(FlowRecord {
            trace_id: Some(trace.as_str().into()),
            span_id: Some("0000000000abcdef".into()),
            parent_span_id: Some(client_span.as_str().into()),
            ..request(ms, Direction::Inbound, &frontend, &catalog)?
        });
    }
    let files = [
        write_flow_log(&dir.path().join("frontend.jsonl"), &caller)?,
        write_flow_log(&dir.path().join("catalog.jsonl"), &callee)?,
    ];
    let report = analyze_json(&files, &[]).await?;
    let ids: Vec<&str> = report["nodes"]
        .as_array()
        .context("nodes")?
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    ensure!(ids == [catalog.as_str(), frontend.as_str()], "{ids:?}");
    let edges = report["edges"].as_array().context("edges")?;
    ensure!(
        edges.len() == 1 && edges[0]["requests"] == 8 && edges[0]["allowed"] == 8,
        "{edges:#?}"
    );
    ensure!(report["summary"]["paired"] == 8, "{:#}", report["summary"]);
    Ok(())
}

/// Measures the drawn graph in the browser: every node's box on screen, before and after one
/// click on "zoom in", and the window's size. Appended to a copy of the report; the page's
/// own content security policy admits inline scripts.
const PROBE: &str = r#"<script>(function(){
function boxes(){return Array.prototype.map.call(document.querySelectorAll('#graph g.node rect'),function(r){var b=r.getBoundingClientRect();return [b.left,b.top,b.right,b.bottom];});}
var out={width:window.innerWidth,height:window.innerHeight,before:boxes()};
document.getElementById('zoom-in').click();
out.zoomed=boxes();
var pre=document.createElement('pre');pre.id='probe';pre.textContent=JSON.stringify(out);document.body.appendChild(pre);
})();</script>"#;

/// 20 services, seven columns deep: a gateway, four web frontends each calling two services
/// of its own and one of its neighbour's, three stores, a chain of caches that calls back
/// (a cycle), and an audit service the gateway calls directly (skipping two columns).
fn twenty_services() -> Vec<(String, String)> {
    let name = |s: &str| spiffe_id("shop", s);
    let mut calls = Vec::new();
    for f in 0..4usize {
        let web = format!("web-{}", f + 1);
        calls.push(("gateway".to_owned(), web.clone()));
        for s in [2 * f, 2 * f + 1, 2 * f + 2].into_iter().filter(|s| *s < 8) {
            calls.push((web.clone(), format!("service-{}", s + 1)));
        }
    }
    for s in 0..8usize {
        calls.push((
            format!("service-{}", s + 1),
            format!("store-{}", 1 + s * 3 / 8),
        ));
    }
    for (a, b) in [
        ("store-1", "cache-1"),
        ("cache-1", "cache-2"),
        ("cache-2", "cache-3"),
        ("cache-3", "cache-1"),
        ("service-8", "audit"),
        ("gateway", "audit"),
    ] {
        calls.push((a.to_owned(), b.to_owned()));
    }
    calls
        .into_iter()
        .map(|(a, b)| (name(&a), name(&b)))
        .collect()
}

#[tokio::test]
async fn the_html_graph_of_twenty_services_fits_a_1280_pixel_window_without_overlaps() -> Result<()>
{
    const WINDOW: (u32, u32) = (1280, 900);
    let dir = tempfile::tempdir()?;
    let calls = twenty_services();
    let mut flows = Vec::new();
    for (i, (a, b)) in calls.iter().enumerate() {
        flows.push(request(i64::try_from(i)?, Direction::Inbound, a, b)?);
    }
    let services: std::collections::BTreeSet<&String> =
        calls.iter().flat_map(|(a, b)| [a, b]).collect();
    ensure!(services.len() == 20, "{} services", services.len());
    let log = write_flow_log(&dir.path().join("flows.jsonl"), &flows)?;
    let html = std::fs::read_to_string(analyze_html(&[log], &[], dir.path()).await?)?;
    let probe_page = dir.path().join("probe.html");
    std::fs::write(
        &probe_page,
        html.replacen("</body>", &format!("{PROBE}</body>"), 1),
    )?;
    let dom =
        picket_tests::browser::dump_dom_in(&format!("file://{}", probe_page.display()), WINDOW)
            .await?;
    let json = dom
        .split_once("<pre id=\"probe\">")
        .and_then(|(_, rest)| rest.split_once("</pre>"))
        .map(|(json, _)| json)
        .context("the probe did not run (no <pre id=\"probe\">): is the graph there?")?;
    let probe: Value = serde_json::from_str(json).context("probe output")?;
    let boxes = |key: &str| -> Result<Vec<[f64; 4]>> {
        probe[key]
            .as_array()
            .context("boxes")?
            .iter()
            .map(|b| Ok(serde_json::from_value::<[f64; 4]>(b.clone())?))
            .collect()
    };
    let (width, height) = (
        probe["width"].as_f64().context("width")?,
        probe["height"].as_f64().context("height")?,
    );
    ensure!(width == 1280.0, "window {width} wide");
    let before = boxes("before")?;
    ensure!(before.len() == 20, "{} node boxes drawn", before.len());
    for (i, b) in before.iter().enumerate() {
        ensure!(
            b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= width && b[3] <= height,
            "node {i} at {b:?} is outside the {width}x{height} window: {probe}"
        );
        ensure!(
            b[2] - b[0] > 20.0,
            "node {i} is drawn too small to read: {b:?}"
        );
        for (j, c) in before.iter().enumerate().skip(i + 1) {
            let apart = b[2] <= c[0] || c[2] <= b[0] || b[3] <= c[1] || c[3] <= b[1];
            ensure!(apart, "nodes {i} {b:?} and {j} {c:?} overlap");
        }
    }
    // Zooming in makes every box larger.
    let zoomed = boxes("zoomed")?;
    ensure!(zoomed.len() == 20);
    for (b, z) in before.iter().zip(&zoomed) {
        let grew = (z[2] - z[0]) / (b[2] - b[0]);
        ensure!(grew > 1.1, "zoom in changed a box from {b:?} to {z:?}");
    }
    Ok(())
}
