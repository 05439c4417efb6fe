//! `picket analyze` as a command on a recorded pair of flow logs (one per sidecar): the graph,
//! flagged edges, blast radius, the suggested policy (loaded and evaluated with
//! picket-policy), a detector baseline, and the HTML report.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use picket_proxy::direction::Direction;
use picket_proxy::telemetry::{FlowProtocol, FlowRecord, Verdict};
use picket_tests::analyze::{analyze, analyze_html, analyze_json, write_flow_log};
use picket_tests::process::{picket, run_ok};
use picket_tests::spiffe_id;
use time::OffsetDateTime;

fn at(secs: i64) -> Result<OffsetDateTime> {
    Ok(OffsetDateTime::from_unix_timestamp(1_700_000_000 + secs)?)
}

struct Ids {
    frontend: String,
    orders: String,
    payments: String,
}

fn ids() -> Ids {
    Ids {
        frontend: spiffe_id("shop", "frontend"),
        orders: spiffe_id("shop", "orders"),
        payments: spiffe_id("shop", "payments"),
    }
}

fn flow<'a>(
    ts: i64,
    direction: Direction,
    src: &'a str,
    dst: &'a str,
    method: &'a str,
    path: String,
    (status, verdict): (u16, Verdict),
) -> Result<FlowRecord<'a>> {
    Ok(FlowRecord {
        source_identity: Some(src.into()),
        source_address: Some("127.0.0.1:41000".parse()?),
        destination_identity: Some(dst.into()),
        destination_port: Some(8080),
        method: Some(method.into()),
        path: Some(path.into()),
        status: Some(status),
        verdict: Some(verdict),
        ..FlowRecord::new(at(ts)?, direction, FlowProtocol::Http1)
    })
}

/// Writes the frontend's (outbound) and the orders' and payments' (inbound) flow logs: normal
/// traffic until t = 600 s, then the frontend calls payments and probes orders' /admin.
fn record(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let ids = ids();
    let mut frontend = Vec::new();
    let mut inbound = Vec::new();
    for i in 0..200i64 {
        let path = format!("/api/orders/{}", 1 + i % 25);
        frontend.push(flow(
            i * 3,
            Direction::Outbound,
            &ids.frontend,
            &ids.orders,
            "GET",
            path.clone(),
            (200, Verdict::Allow),
        )?);
        inbound.push(flow(
            i * 3,
            Direction::Inbound,
            &ids.frontend,
            &ids.orders,
            "GET",
            path,
            (200, Verdict::Allow),
        )?);
        if i % 10 == 0 {
            inbound.push(flow(
                i * 3,
                Direction::Inbound,
                &ids.orders,
                &ids.payments,
                "POST",
                "/api/charge".into(),
                (201, Verdict::Allow),
            )?);
        }
    }
    for i in 0..3 {
        inbound.push(flow(
            700 + i,
            Direction::Inbound,
            &ids.frontend,
            &ids.payments,
            "POST",
            "/api/charge".into(),
            (201, Verdict::Allow),
        )?);
    }
    inbound.push(flow(
        710,
        Direction::Inbound,
        &ids.frontend,
        &ids.orders,
        "GET",
        "/admin".into(),
        (404, Verdict::Allow),
    )?);
    for i in 0..12 {
        inbound.push(flow(
            720 + i,
            Direction::Inbound,
            &ids.frontend,
            &ids.orders,
            "DELETE",
            "/api/orders/1".into(),
            (403, Verdict::Deny),
        )?);
    }
    Ok(vec![
        write_flow_log(&dir.join("frontend.jsonl"), &frontend)?,
        write_flow_log(&dir.join("inbound.jsonl"), &inbound)?,
    ])
}

fn evaluate(
    set: &picket_policy::PolicySet,
    src: &str,
    dst_sa: &str,
    method: &str,
    path: &str,
) -> bool {
    let w = picket_policy::Workload {
        namespace: "shop".into(),
        labels: [("app".to_owned(), dst_sa.to_owned())].into(),
    };
    let req = picket_policy::Request {
        source_principal: src.strip_prefix("spiffe://"),
        source_ip: [127, 0, 0, 1].into(),
        destination_port: 8080,
        sni: None,
        http: Some(picket_policy::HttpRequest {
            method,
            path,
            host: dst_sa,
            headers: &[],
        }),
        auth: None,
    };
    set.for_workload(&w).evaluate(&req).is_allowed()
}

#[tokio::test]
async fn analyze_reports_graph_flags_blast_radius_and_a_policy_that_passes_check() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let files = record(dir.path())?;
    let ids = ids();
    let policy_out = dir.path().join("suggested.yaml");
    let baseline_out = dir.path().join("edges.jsonl");
    let report = analyze_json(
        &files,
        &[
            "--baseline-until",
            "2023-11-14T22:23:20Z",
            "--suggest-policy-file",
            &policy_out.display().to_string(),
            "--baseline-file",
            &baseline_out.display().to_string(),
        ],
    )
    .await?;

    // The graph: three identities; frontend -> orders counted once although both sidecars
    // logged it.
    let names: Vec<&str> = report["nodes"]
        .as_array()
        .context("nodes")?
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    ensure!(
        names == ["shop/frontend", "shop/orders", "shop/payments"],
        "{names:?}"
    );
    let edge = report["edges"]
        .as_array()
        .context("edges")?
        .iter()
        .find(|e| e["source"] == ids.frontend.as_str() && e["destination"] == ids.orders.as_str())
        .context("frontend -> orders edge")?;
    ensure!(edge["requests"] == 213 && edge["denied"] == 12, "{edge:#}");

    // Flags: the new edge to payments and the new routes on orders.
    let flags: Vec<(String, String, String)> = report["flags"]
        .as_array()
        .context("flags")?
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or_default().to_owned(),
                f["destination"].as_str().unwrap_or_default().to_owned(),
                f["route"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    ensure!(
        flags
            == [
                ("new_edge".to_owned(), ids.payments.clone(), String::new()),
                (
                    "new_route".to_owned(),
                    ids.orders.clone(),
                    "DELETE /api/orders/{id}".to_owned()
                ),
                (
                    "new_route".to_owned(),
                    ids.orders.clone(),
                    "GET /admin".to_owned()
                ),
            ],
        "{flags:#?}"
    );

    // Blast radius: the frontend reached payments directly (the attack) and through orders.
    let fr = report["blast_radius"]
        .as_array()
        .context("blast_radius")?
        .iter()
        .find(|b| b["identity"] == ids.frontend.as_str())
        .context("frontend blast radius")?;
    ensure!(
        fr["reached_transitive"] == serde_json::json!([ids.orders, ids.payments]),
        "{fr:#}"
    );

    // The suggested policy passes `picket policy check`, allows the baseline and refuses
    // the attack.
    run_ok(picket()?.args(["policy", "check"]).arg(&policy_out)).await?;
    let yaml = std::fs::read_to_string(&policy_out)?;
    let set = picket_policy::load(
        &[picket_policy::Source {
            name: "suggested.yaml",
            text: &yaml,
        }],
        &picket_policy::LoadOptions::default(),
    )
    .map_err(|e| anyhow::anyhow!("suggested policy does not load: {e}\n{yaml}"))?;
    ensure!(set.len() == 2, "{yaml}");
    ensure!(
        evaluate(&set, &ids.frontend, "orders", "GET", "/api/orders/17"),
        "{yaml}"
    );
    ensure!(
        evaluate(&set, &ids.orders, "payments", "POST", "/api/charge"),
        "{yaml}"
    );
    ensure!(
        !evaluate(&set, &ids.frontend, "payments", "POST", "/api/charge"),
        "{yaml}"
    );
    ensure!(
        !evaluate(&set, &ids.frontend, "orders", "GET", "/admin"),
        "{yaml}"
    );
    ensure!(
        !evaluate(&set, &ids.frontend, "orders", "DELETE", "/api/orders/1"),
        "{yaml}"
    );

    // Checked against that policy, the attack is flagged as not allowed.
    let policy_dir = dir.path().join("policies");
    std::fs::create_dir(&policy_dir)?;
    std::fs::copy(&policy_out, policy_dir.join("suggested.yaml"))?;
    let text = analyze(&files, &["--policy", &policy_dir.display().to_string()]).await?;
    ensure!(
        text.lines()
            .any(|l| l.trim_start().starts_with("not allowed by policy")
                && l.contains("shop/frontend -> shop/payments  POST /api/charge")),
        "{text}"
    );
    ensure!(
        text.contains("policy allows: shop/orders (transitively: shop/orders, shop/payments)"),
        "{text}"
    );

    // The baseline names every edge of the first ten minutes.
    let baseline = std::fs::read_to_string(&baseline_out)?;
    ensure!(
        baseline
            .lines()
            .filter(|l| l.starts_with(r#"{"type":"edge""#))
            .count()
            == 2,
        "{baseline}"
    );
    ensure!(
        baseline.contains("\"route\":\"GET /api/orders/{id}\""),
        "{baseline}"
    );

    // The HTML report is one file with the graph and the node names.
    let html = std::fs::read_to_string(analyze_html(&files, &[], dir.path()).await?)?;
    for name in ["shop/frontend", "shop/orders", "shop/payments"] {
        ensure!(
            html.contains(&format!(">{name}</text>")),
            "{name} missing from the graph"
        );
    }
    ensure!(html.contains("<svg") && !html.contains(" src=") && !html.contains(" href="));
    Ok(())
}

#[tokio::test]
async fn analyze_refuses_input_without_flow_records() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, "not json\n{\"also\":\"not a flow\"}\n")?;
    let out = picket_tests::process::output(picket()?.arg("analyze").arg(&path)).await?;
    ensure!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("bad.jsonl:1"), "{err}");
    Ok(())
}
