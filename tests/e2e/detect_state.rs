//! The detectors' learned state across a restart: a sidecar that knew its identity before it
//! was restarted reports a new edge at once, without a new learning window.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use http::{Method, StatusCode, Version};
use picket_proxy::telemetry::AlertKind;
use picket_tests::clients::{body_text, empty, request, send};
use picket_tests::telemetry::{TelemetryYaml, alerts};
use picket_tests::{App, TestCa, TestProxy, closed_port, eventually, spiffe_id};
use picket_tests::{Sidecar, Upstream};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

async fn call(proxy: &TestProxy, method: Method, path: &str) -> Result<StatusCode> {
    let req = request(method, Version::HTTP_11, "orders", path, empty())?;
    let resp = send(proxy.addrs().outbound, req).await?;
    let status = resp.status();
    body_text(resp).await?;
    Ok(status)
}

async fn detectors(proxy: &TestProxy) -> Result<Value> {
    let (status, body) = proxy.admin_get("/detectors").await?;
    ensure!(status == StatusCode::OK, "/detectors: {status} {body}");
    serde_json::from_str(&body).with_context(|| body.clone())
}

#[tokio::test]
async fn a_restart_followed_at_once_by_a_new_edge_alerts() -> Result<()> {
    let ca = TestCa::start().await?;
    let app = App::http("orders").await?;
    let orders = TestProxy::spawn(&ca, Sidecar::new("shop", "orders", app.addr())).await?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("frontend-detectors.json");
    let telemetry = TelemetryYaml::new()
        .detector("learning_window", "2s")
        .detector("state_file", &state.display().to_string())
        .to_yaml();
    let app_port = closed_port()?;
    let frontend = || {
        Sidecar::new("shop", "frontend", app_port)
            .upstream(Upstream::http(
                "orders",
                orders.addrs().inbound,
                &spiffe_id("shop", "orders"),
            ))
            .yaml(&telemetry)
    };

    // The first life: the frontend's identity learns its one edge, visibly.
    let mut first = TestProxy::spawn(&ca, frontend()).await?;
    ensure!(call(&first, Method::GET, "/api/orders/1").await? == StatusCode::OK);
    let learning = detectors(&first).await?;
    ensure!(
        learning["learning"][0]["identity"] == spiffe_id("shop", "frontend").as_str(),
        "{learning}"
    );
    let (_, metrics) = first.admin_get("/metrics").await?;
    ensure!(
        metrics.contains("picket_detector_identities_learning_total 1"),
        "{metrics}"
    );
    eventually(WAIT, async || {
        let d = detectors(&first).await?;
        ensure!(d["learning"].as_array().is_some_and(Vec::is_empty), "{d}");
        Ok(())
    })
    .await?;
    ensure!(call(&first, Method::GET, "/api/orders/2").await? == StatusCode::OK);
    ensure!(alerts(&first).await?.is_empty(), "a learned edge alerted");
    first.terminate().await?;
    first.wait_exit(WAIT).await?;
    ensure!(state.is_file(), "no state file written at shutdown");

    // The second life starts knowing the identity: a new edge right away is an alert.
    let second = TestProxy::spawn(&ca, frontend()).await?;
    let d = detectors(&second).await?;
    ensure!(d["learning"].as_array().is_some_and(Vec::is_empty), "{d}");
    ensure!(d["tables"]["edges"] == 1, "{d}");
    ensure!(call(&second, Method::POST, "/api/orders").await? == StatusCode::OK);
    let listed = eventually(WAIT, async || {
        let listed = alerts(&second).await?;
        ensure!(!listed.is_empty(), "no alert yet");
        Ok(listed)
    })
    .await?;
    ensure!(
        listed.len() == 1 && listed[0].kind == AlertKind::NewEdge,
        "{listed:#?}"
    );
    ensure!(
        listed[0].summary.contains("POST /api/orders"),
        "{:?}",
        listed[0]
    );
    let (_, metrics) = second.admin_get("/metrics").await?;
    ensure!(
        metrics.contains("picket_detector_identities_learning_total 0"),
        "{metrics}"
    );
    Ok(())
}

/// A TCP connection to a destination the frontend never reached alerts while it is open, and
/// its flow log shows it open, then still open (interim, bytes so far), then ended.
#[tokio::test]
async fn a_long_lived_tcp_connection_to_a_new_destination_alerts_before_it_closes() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir()?;
    let flows = dir.path().join("frontend.jsonl");
    let mut telemetry = TelemetryYaml::new()
        .flow_log(&flows)
        .detector("learning_window", "0s")
        .to_yaml();
    telemetry.push_str("  active_timeout: 1s\n");
    let mesh = picket_tests::Mesh::start_with(picket_tests::MeshOptions {
        tcp: true,
        frontend_yaml: telemetry,
        ..Default::default()
    })
    .await?;
    let mut conn = tokio::net::TcpStream::connect(mesh.frontend.upstream("orders")?).await?;
    conn.write_all(b"hello").await?;
    let mut echo = [0u8; 5];
    conn.read_exact(&mut echo).await?;
    ensure!(&echo == b"hello");

    // Open: the detectors have seen it.
    let listed = eventually(WAIT, async || {
        let listed = alerts(&mesh.frontend).await?;
        ensure!(!listed.is_empty(), "no alert while the connection is open");
        Ok(listed)
    })
    .await?;
    ensure!(
        listed.len() == 1
            && listed[0].kind == AlertKind::NewEdge
            && listed[0].summary.ends_with("tcp for the first time"),
        "{listed:#?}"
    );
    // Still open after the active timeout: an interim record with the bytes so far.
    let interim = eventually(WAIT, async || {
        let lines =
            picket_tests::telemetry::log_lines(&flows, picket_proxy::telemetry::LineType::Flow)?;
        let interim = lines.iter().find(|l| l["phase"] == "interim").cloned();
        interim.with_context(|| format!("no interim record yet: {lines:?}"))
    })
    .await?;
    ensure!(
        interim["bytes_in"] == 5 && interim["bytes_out"] == 5,
        "{interim}"
    );
    let open = picket_tests::telemetry::log_lines(&flows, picket_proxy::telemetry::LineType::Flow)?;
    ensure!(open[0]["phase"] == "open", "{open:?}");
    ensure!(
        open[0]["destination_identity"] == spiffe_id("shop", "orders").as_str(),
        "{open:?}"
    );

    // Closed: the end record, once.
    drop(conn);
    let end = eventually(WAIT, async || {
        let lines =
            picket_tests::telemetry::log_lines(&flows, picket_proxy::telemetry::LineType::Flow)?;
        let end: Vec<&Value> = lines.iter().filter(|l| l["phase"] == "end").collect();
        ensure!(end.len() == 1, "no end record yet: {lines:?}");
        Ok(end[0].clone())
    })
    .await?;
    ensure!(end["bytes_in"] == 5 && end["bytes_out"] == 5, "{end}");
    ensure!(
        alerts(&mesh.frontend).await?.len() == 1,
        "the end record alerted again"
    );
    Ok(())
}

/// An identity bound to its addresses (a static map, as for VMs) and presented from another
/// address: a high-severity alert and, as configured here, a refused connection. An identity
/// presented from its own addresses passes without an alert.
#[tokio::test]
async fn an_identity_presented_from_a_foreign_address_is_refused_and_alerted() -> Result<()> {
    let ca = TestCa::start().await?;
    let app = App::http("orders").await?;
    let frontend_id = spiffe_id("shop", "frontend");
    let reports_id = spiffe_id("shop", "reports");
    // The sidecars all run on loopback: the frontend is bound to a network it is not on.
    let binding = format!(
        "telemetry:
  detectors:
    learning_window: 0s
    address_binding:
      action: deny
      identities:
        \"{frontend_id}\": [192.0.2.0/24]
        \"{reports_id}\": [127.0.0.0/8, \"::1/128\"]
"
    );
    let orders = TestProxy::spawn(
        &ca,
        Sidecar::new("shop", "orders", app.addr()).yaml(&binding),
    )
    .await?;
    let caller = |sa: &str| {
        Sidecar::new("shop", sa, app.addr()).upstream(Upstream::http(
            "orders",
            orders.addrs().inbound,
            &spiffe_id("shop", "orders"),
        ))
    };
    let reports = TestProxy::spawn(&ca, caller("reports")).await?;
    ensure!(call(&reports, Method::GET, "/api/orders").await? == StatusCode::OK);
    let frontend = TestProxy::spawn(&ca, caller("frontend")).await?;
    let got = call(&frontend, Method::GET, "/api/orders").await?;
    ensure!(got != StatusCode::OK, "a foreign address was served: {got}");

    let listed = eventually(WAIT, async || {
        let listed = alerts(&orders).await?;
        ensure!(
            listed.iter().any(|a| a.kind == AlertKind::ForeignAddress),
            "{listed:#?}"
        );
        Ok(listed)
    })
    .await?;
    let foreign: Vec<_> = listed
        .iter()
        .filter(|a| a.kind == AlertKind::ForeignAddress)
        .collect();
    ensure!(foreign.len() == 1, "{foreign:#?}");
    let a = foreign[0];
    ensure!(
        a.severity == picket_proxy::telemetry::Severity::High
            && a.source_identity.as_deref() == Some(frontend_id.as_str())
            && a.evidence.get("denied") == Some(&1)
            && a.evidence.get("announced_for_another") == Some(&0),
        "{a:?}"
    );
    ensure!(
        !listed.iter().any(
            |a| a.source_identity.as_deref() == Some(reports_id.as_str())
                && a.kind == AlertKind::ForeignAddress
        ),
        "{listed:#?}"
    );
    let (_, metrics) = orders.admin_get("/metrics").await?;
    ensure!(
        metrics.contains("outcome=\"refused_foreign_address\""),
        "{metrics}"
    );
    Ok(())
}

/// A webhook receiver: answers 503 to the first POST (the sidecar must retry), then 200, and
/// writes every body it accepted as one line of `bodies`.
const RECEIVER: &str = r#"
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
seen = {"n": 0}
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        seen["n"] += 1
        if seen["n"] == 1:
            self.send_response(503); self.send_header("content-length", "0"); self.end_headers(); return
        with open(sys.argv[1], "ab") as f:
            f.write(body + b"\n")
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a):
        pass
s = HTTPServer(("127.0.0.1", 0), H)
print("port", s.server_address[1], flush=True)
s.serve_forever()
"#;

fn check_falco(line: &str) -> Result<picket_proxy::telemetry::sink::FalcoAlert> {
    let v: Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
    for (field, ok) in [
        ("output", v["output"].is_string()),
        ("priority", v["priority"].is_string()),
        ("rule", v["rule"].is_string()),
        ("time", v["time"].is_string()),
        ("output_fields", v["output_fields"].is_object()),
        ("source", v["source"].is_string()),
        ("tags", v["tags"].is_array()),
        ("hostname", v["hostname"].is_string()),
    ] {
        ensure!(ok, "Falco field {field} missing or mistyped: {line}");
    }
    ensure!(
        [
            "Emergency",
            "Alert",
            "Critical",
            "Error",
            "Warning",
            "Notice",
            "Informational",
            "Debug"
        ]
        .contains(&v["priority"].as_str().unwrap_or_default()),
        "not a Falco priority: {line}"
    );
    let time = v["time"].as_str().unwrap_or_default();
    time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("time is not RFC 3339: {time}"))?;
    Ok(serde_json::from_value(v)?)
}

/// Alerts go to their own JSON-lines file and to a webhook (retried after a failure), both
/// in Falco's JSON output format.
#[tokio::test]
async fn alerts_reach_their_own_file_and_a_webhook_as_falco_json() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bodies = dir.path().join("webhook.jsonl");
    let mut receiver = tokio::process::Command::new("python3");
    receiver.arg("-c").arg(RECEIVER).arg(&bodies);
    let receiver = picket_tests::Daemon::spawn("receiver", receiver, dir.path())?;
    let port: u16 = eventually(WAIT, async || {
        let log = receiver.log_text();
        let port = log
            .lines()
            .find_map(|l| l.strip_prefix("port "))
            .context("the receiver has not started")?;
        Ok(port.trim().parse()?)
    })
    .await?;
    let alert_file = dir.path().join("alerts.jsonl");
    let yaml = format!(
        "telemetry:
  alerts:
    path: \"{}\"
    format: falco
    webhook: {{ url: \"http://127.0.0.1:{port}/picket\", retries: 3, timeout: 2s }}
",
        alert_file.display()
    );
    let mesh = picket_tests::Mesh::start_with(picket_tests::MeshOptions {
        orders_yaml: yaml,
        ..Default::default()
    })
    .await?;
    let req = request(Method::GET, Version::HTTP_11, "orders", "/admin", empty())?;
    let resp = send(mesh.outbound(), req).await?;
    body_text(resp).await?;

    let lines = eventually(WAIT, async || {
        let text = std::fs::read_to_string(&alert_file).unwrap_or_default();
        ensure!(
            text.ends_with('\n') && !text.is_empty(),
            "no alert line yet"
        );
        Ok(text)
    })
    .await?;
    let first = lines.lines().next().context("empty")?;
    let alert = check_falco(first)?;
    ensure!(alert.rule == "picket_sensitive_path", "{first}");
    ensure!(alert.source == "picket", "{first}");
    ensure!(
        alert.output_fields["picket.source_identity"] == spiffe_id("shop", "frontend").as_str(),
        "{first}"
    );
    ensure!(
        alert.output_fields["picket.identity"] == spiffe_id("shop", "orders").as_str(),
        "{first}"
    );
    ensure!(
        !lines.contains("\"type\":\"flow\""),
        "flows in the alert file: {lines}"
    );

    // The webhook refused the first POST; the retry delivered the same alert.
    let posted = eventually(WAIT, async || {
        let text = std::fs::read_to_string(&bodies).unwrap_or_default();
        ensure!(!text.is_empty(), "nothing delivered yet");
        Ok(text)
    })
    .await?;
    let delivered = check_falco(posted.lines().next().context("empty")?)?;
    ensure!(
        delivered.rule == alert.rule && delivered.time == alert.time,
        "{posted}"
    );
    Ok(())
}
