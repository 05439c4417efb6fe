//! `picket analyze` views beyond the service graph, through the real binary on flow logs
//! written with the sidecar's own record type: user-level edges (end users per service),
//! egress destinations (passthrough connections out of the mesh), and the two sides of a
//! request paired by trace context.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use picket_proxy::direction::Direction;
use picket_proxy::telemetry::{FlowProtocol, FlowRecord, Verdict};
use picket_tests::process::{picket, run_ok};
use picket_tests::spiffe_id;
use serde_json::Value;
use time::OffsetDateTime;

fn at(ms: i64) -> Result<OffsetDateTime> {
    Ok(OffsetDateTime::from_unix_timestamp_nanos(
        (1_700_000_000_000 + i128::from(ms)) * 1_000_000,
    )?)
}

/// An HTTP request from `src` to `dst` as one sidecar records it.
fn request<'a>(ms: i64, direction: Direction, src: &'a str, dst: &'a str) -> Result<FlowRecord<'a>> {
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

fn write_log(path: &Path, flows: &[FlowRecord<'_>]) -> Result<PathBuf> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in flows {
        serde_json::to_writer(&mut f, r)?;
        f.write_all(b"\n")?;
    }
    f.flush()?;
    Ok(path.to_owned())
}

async fn analyze_json(files: &[PathBuf], extra: &[&str]) -> Result<Value> {
    let out = run_ok(
        picket()?
            .arg("analyze")
            .args(files)
            .args(["-o", "json"])
            .args(extra),
    )
    .await?;
    serde_json::from_str(&out).context("analyze -o json")
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
        write_log(&dir.path().join("frontend.jsonl"), &outbound)?,
        write_log(&dir.path().join("catalog.jsonl"), &inbound)?,
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

    let text = run_ok(
        picket()?
            .arg("analyze")
            .args(&files)
            .args(["--top-users", "2"]),
    )
    .await?;
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
        write_log(&dir.path().join("frontend-and-catalog-out.jsonl"), &caller)?,
        write_log(&dir.path().join("catalog-in.jsonl"), &callee)?,
    ];
    let report = analyze_json(&files, &[]).await?;
    let node = report["nodes"]
        .as_array()
        .context("nodes")?
        .iter()
        .find(|n| n["id"] == "198.51.100.20")
        .context("the egress destination is no node")?;
    ensure!(node["kind"] == "egress" && node["requests_in"] == 2, "{node:#}");
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
    ensure!(fr["egress"] == serde_json::json!(["198.51.100.20"]), "{fr:#}");

    let text = run_ok(picket()?.arg("analyze").args(&files)).await?;
    ensure!(
        text.contains("shop/catalog -> 198.51.100.20  connections 2  ports 443"),
        "{text}"
    );
    let html_out = dir.path().join("report.html");
    run_ok(
        picket()?
            .arg("analyze")
            .args(&files)
            .args(["-o", "html", "--output-file"])
            .arg(&html_out),
    )
    .await?;
    let html = std::fs::read_to_string(&html_out)?;
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
        .map(|i| (format!("{:032x}", 0x4bf9_0000 + i), format!("{:016x}", 0x00f0_0000 + i)))
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
        write_log(&dir.path().join("frontend.jsonl"), &caller)?,
        write_log(&dir.path().join("catalog.jsonl"), &callee)?,
    ];
    let report = analyze_json(&files, &[]).await?;
    let ids: Vec<&str> = report["nodes"]
        .as_array()
        .context("nodes")?
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    ensure!(ids == [frontend.as_str(), catalog.as_str()], "{ids:?}");
    let edges = report["edges"].as_array().context("edges")?;
    ensure!(
        edges.len() == 1 && edges[0]["requests"] == 8 && edges[0]["allowed"] == 8,
        "{edges:#?}"
    );
    ensure!(report["summary"]["paired"] == 8, "{:#}", report["summary"]);
    Ok(())
}
