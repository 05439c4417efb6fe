//! WebSocket through the mesh, with Python's `websockets` as the app and the client
//! (`tests/fixtures/ws_app.py`, `ws_client.py`): the app behind an `orders` sidecar, the client
//! on the upstream listener of a `frontend` sidecar, so every WebSocket is an HTTP/1.1 upgrade
//! at both ends and an extended CONNECT stream (RFC 8441) on the HTTP/2 mTLS connection between
//! the sidecars. Policy decides on the upgrade; the tunnel opens only after the app's 101; bytes
//! a client sends before the 101 never reach the app; an idle tunnel is closed; every tunnel is
//! recorded as an opaque TCP connection is: open (which the detectors act on), interim while
//! it lasts, and its end with its bytes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use picket_proxy::telemetry::LineType;
use picket_tests::mesh::FlowLogged;
use picket_tests::process::{output_within, start_fixture_app};
use picket_tests::telemetry::{TelemetryYaml, log_lines};
use picket_tests::wait::eventually;
use picket_tests::{Sidecar, TestCa, spiffe_id};
use serde_json::Value;
use tokio::process::{Child, Command};

/// The frontend may open WebSockets (GET) on `/public/*`; nothing else is allowed.
const POLICY: &str = r#"
apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: { name: public-ws, namespace: shop }
spec:
  rules:
  - from: [{ source: { principals: ["cluster.local/ns/shop/sa/frontend"] } }]
    to: [{ operation: { methods: ["GET"], paths: ["/public/*"] } }]
"#;

/// The `websockets` server, logging what it receives.
struct WsApp {
    _child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl WsApp {
    async fn start(dir: &Path) -> Result<Self> {
        let log = dir.join("ws-app.jsonl");
        std::fs::write(&log, b"")?;
        let (child, addr) = start_fixture_app("ws_app.py", &log, "websockets").await?;
        Ok(Self {
            _child: child,
            addr,
            log,
        })
    }

    fn events(&self) -> Result<Vec<Value>> {
        std::fs::read_to_string(&self.log)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("bad log line {l}")))
            .collect()
    }
}

/// The app behind `orders`, and `frontend` calling it; both write flow logs.
struct Mesh {
    _ca: TestCa,
    app: WsApp,
    pair: FlowLogged,
    _dir: tempfile::TempDir,
}

impl Mesh {
    async fn start(frontend_yaml: &str) -> Result<Self> {
        Self::start_with(frontend_yaml, TelemetryYaml::new()).await
    }

    /// [`Mesh::start`] with `telemetry` (its flow log set here) on both sidecars.
    async fn start_with(frontend_yaml: &str, telemetry: TelemetryYaml) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = TestCa::start().await?;
        let app = WsApp::start(dir.path()).await?;
        let orders = Sidecar::new("shop", "orders", app.addr).policy(POLICY);
        let pair = FlowLogged::start(&ca, dir.path(), &telemetry, orders, frontend_yaml).await?;
        Ok(Self {
            _ca: ca,
            app,
            pair,
            _dir: dir,
        })
    }

    /// The frontend's listener for `orders`.
    fn entry(&self) -> Result<SocketAddr> {
        self.pair.frontend.upstream("orders")
    }

    fn url(&self, path: &str) -> Result<String> {
        Ok(format!("ws://{}{path}", self.entry()?))
    }
}

/// Runs the client with `args` and parses what it prints.
async fn client(args: &[&str]) -> Result<Value> {
    let script = picket_tests::k8s::repo_root().join("tests/fixtures/ws_client.py");
    let out = output_within(
        Command::new("python3").arg(script).args(args),
        Duration::from_secs(90),
    )
    .await?;
    ensure!(
        out.status.success(),
        "ws_client.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "ws_client.py printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The WebSocket flow records of a flow log (the whole record, or the end record, of each
/// tunnel), once there are `n`.
async fn websocket_flows(path: &Path, n: usize) -> Result<Vec<Value>> {
    eventually(Duration::from_secs(20), async || {
        let flows: Vec<Value> = log_lines(path, LineType::Flow)?
            .into_iter()
            .filter(|f| {
                f["protocol"] == "websocket" && (f["phase"].is_null() || f["phase"] == "end")
            })
            .collect();
        ensure!(
            flows.len() >= n,
            "{} of {n} WebSocket flow records: {flows:#?}",
            flows.len()
        );
        Ok(flows)
    })
    .await
}

#[tokio::test]
async fn websocket_through_two_sidecars_obeys_policy_and_carries_64_mib() -> Result<()> {
    let mesh = Mesh::start("").await?;

    let allowed = client(&["echo", &mesh.url("/public/ws")?, "hello"]).await?;
    ensure!(
        allowed["status"] == 101 && allowed["echo"] == "hello",
        "{allowed}"
    );
    let denied = client(&["echo", &mesh.url("/private/ws")?, "hello"]).await?;
    ensure!(
        denied["status"] == 403,
        "a denied upgrade answered {denied}"
    );

    let bulk = client(&["bulk", &mesh.url("/public/bulk")?, "64"]).await?;
    ensure!(
        bulk["match"] == true && bulk["received"] == 64u64 << 20,
        "64 MiB there and back: {bulk}"
    );
    eprintln!(
        "64 MiB each way through two sidecars in {}s",
        bulk["seconds"]
    );

    let events = mesh.app.events()?;
    let opened: Vec<&Value> = events.iter().filter(|e| e["event"] == "open").collect();
    ensure!(
        opened.len() == 2
            && opened
                .iter()
                .all(|e| e["identity"] == spiffe_id("shop", "frontend"))
            && opened.iter().all(|e| e["path"] != "/private/ws"),
        "the app saw these WebSockets open: {opened:#?}"
    );

    // One record per tunnel on each side, written when the tunnel ended, with its bytes (the
    // WebSocket frames: a little more than the payload).
    for (side, path, status) in [
        ("orders", &mesh.pair.orders_flows, 200),
        ("frontend", &mesh.pair.frontend_flows, 101),
    ] {
        let flows = websocket_flows(path, 2).await?;
        let bulk_flow = flows
            .iter()
            .find(|f| f["path"] == "/public/bulk")
            .with_context(|| format!("{side}: no record of the bulk tunnel: {flows:#?}"))?;
        let bytes = |k: &str| bulk_flow[k].as_u64().unwrap_or_default();
        ensure!(
            bulk_flow["status"] == status
                && bulk_flow["method"] == "GET"
                && bytes("bytes_in") >= 64 << 20
                && bytes("bytes_out") >= 64 << 20,
            "{side}: {bulk_flow:#}"
        );
    }
    let orders_flows = log_lines(&mesh.pair.orders_flows, LineType::Flow)?;
    ensure!(
        orders_flows.iter().any(|f| f["path"] == "/private/ws"
            && f["status"] == 403
            && f["protocol"] != "websocket"),
        "no deny record for /private/ws: {orders_flows:#?}"
    );
    // The refused upgrade was the orders sidecar's answer, and the frontend's record says so
    // (`x-picket-sidecar-answer`, believed from the verified peer).
    let frontend_flows = log_lines(&mesh.pair.frontend_flows, LineType::Flow)?;
    ensure!(
        frontend_flows.iter().any(|f| f["path"] == "/private/ws"
            && f["status"] == 403
            && f["sidecar_answer"] == true
            && f["peer_sidecar_answer"] == true),
        "the frontend did not record the refusal as the peer sidecar's: {frontend_flows:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn websocket_bytes_sent_before_the_101_never_reach_the_app() -> Result<()> {
    let mesh = Mesh::start("").await?;
    let entry = mesh.entry()?;
    let (host, port) = (entry.ip().to_string(), entry.port().to_string());

    // The handshake and a frame in one write: the tunnel is closed, the frame goes nowhere.
    let early = client(&["early", &host, &port, "/public/early"]).await?;
    ensure!(
        early["closed"] == true,
        "the connection stayed open: {early}"
    );
    // The app refuses the handshake (404): no tunnel, and the GET that followed it on the
    // connection is an ordinary request that policy decides (403), never tunnel data.
    let refused = client(&["refused", &host, &port, "/public/refuse", "/private/x"]).await?;
    let statuses: Vec<u64> = refused["statuses"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    ensure!(
        statuses.first() == Some(&404) && statuses.get(1).is_none_or(|s| *s == 403),
        "{refused}"
    );

    let frontend = websocket_flows(&mesh.pair.frontend_flows, 1).await?;
    ensure!(
        frontend
            .iter()
            .all(|f| f["bytes_in"] == 0 && f["bytes_out"] == 0),
        "a refused tunnel carried bytes: {frontend:#?}"
    );
    let events = mesh.app.events()?;
    ensure!(
        events.iter().all(|e| e["event"] != "message"),
        "data sent before the 101 reached the app: {events:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn idle_websocket_tunnel_is_closed_and_recorded() -> Result<()> {
    let mesh = Mesh::start("timeouts:\n  idle: 1s\n").await?;
    let url = mesh.url("/public/idle")?;
    let closed = client(&["idle", &url]).await?;
    let after = closed["closed_after"].as_f64().unwrap_or(f64::MAX);
    ensure!(
        (0.5..30.0).contains(&after),
        "closed after {after}s: {closed}"
    );
    let flows = websocket_flows(&mesh.pair.frontend_flows, 1).await?;
    ensure!(
        flows.iter().any(|f| f["path"] == "/public/idle"),
        "{flows:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_websocket_opens_on_a_connection_that_was_parked() -> Result<()> {
    // The frontend parks the app's idle HTTP/1 connection after 100 ms: the upgrade arrives on
    // a connection that holds no HTTP state, and the tunnel takes the socket over from there.
    let mesh = Mesh::start("timeouts: { park: 100ms }\n").await?;
    let script = picket_tests::k8s::repo_root().join("tests/fixtures/park_client.py");
    let out = output_within(
        Command::new("python3")
            .arg(script)
            .arg("websocket")
            .arg(mesh.entry()?.to_string())
            .arg(mesh.pair.frontend.addrs().admin.to_string())
            .arg("100"),
        Duration::from_secs(60),
    )
    .await?;
    ensure!(
        out.status.success(),
        "park_client.py websocket failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(result["responses"][0]["status"] == 404, "{result}");
    ensure!(result["upgrade_status"] == 101, "{result}");
    ensure!(result["echo"] == "hello after a park", "{result}");
    ensure!(result["parks"].as_f64().unwrap_or(0.0) >= 1.0, "{result}");
    Ok(())
}

/// A WebSocket that stays open is seen while it lasts, as an opaque TCP connection is: its
/// open record reaches the detectors at once on both sides (a new edge alerts before the
/// tunnel closes), an interim record follows every active timeout with the bytes so far, and
/// the end record comes once, when it closes, without alerting again.
#[tokio::test]
async fn a_long_lived_websocket_reaches_the_detectors_and_the_flow_log_before_it_closes()
-> Result<()> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let telemetry = TelemetryYaml::new()
        .active_timeout("1s")
        .detector("learning_window", "0s");
    let mesh = Mesh::start_with("", telemetry).await?;
    let script = picket_tests::k8s::repo_root().join("tests/fixtures/ws_client.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(["hold", &mesh.url("/public/chat")?, "hello"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdout = BufReader::new(child.stdout.take().context("client stdout")?).lines();
    let opened = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
        .await
        .context("the client did not open its WebSocket in time")??
        .context("the client exited before opening")?;
    ensure!(opened.contains("\"echo\": \"hello\""), "{opened}");

    let phases = |path: &Path| -> Result<Vec<Value>> {
        Ok(log_lines(path, LineType::Flow)?
            .into_iter()
            .filter(|f| f["protocol"] == "websocket")
            .collect())
    };
    // Open: on both sides, and the detectors alerted while the tunnel is still open.
    for (side, proxy, path) in [
        ("frontend", &mesh.pair.frontend, &mesh.pair.frontend_flows),
        ("orders", &mesh.pair.orders, &mesh.pair.orders_flows),
    ] {
        let alerts = eventually(Duration::from_secs(15), async || {
            let alerts = picket_tests::telemetry::alerts(proxy).await?;
            ensure!(
                alerts
                    .iter()
                    .any(|a| a.kind == picket_proxy::telemetry::AlertKind::NewEdge),
                "{side}: no new_edge alert while the WebSocket is open: {alerts:#?}"
            );
            Ok(alerts)
        })
        .await?;
        let interim = eventually(Duration::from_secs(15), async || {
            let flows = phases(path)?;
            ensure!(
                flows.first().is_some_and(|f| f["phase"] == "open"),
                "{side}: the first record is not the open one: {flows:#?}"
            );
            let interim = flows
                .iter()
                .find(|f| f["phase"] == "interim")
                .with_context(|| format!("{side}: no interim record yet: {flows:#?}"))?;
            Ok(interim.clone())
        })
        .await?;
        let bytes = |k: &str| interim[k].as_u64().unwrap_or_default();
        // The callee's side decided the upgrade: its records carry the decision.
        ensure!(
            interim["path"] == "/public/chat"
                && (side == "frontend" || interim["verdict"] == "allow")
                && bytes("bytes_in") > 0
                && bytes("bytes_out") > 0,
            "{side}: {interim:#}"
        );
        ensure!(
            phases(path)?.iter().all(|f| f["phase"] != "end"),
            "{side}: ended before the client closed"
        );
        let open = &phases(path)?[0];
        ensure!(
            open["path"] == "/public/chat" && open["bytes_in"] == 0,
            "{side}: {open}"
        );
        eprintln!("{side}: {} alerts while open", alerts.len());
    }

    // Closed: one end record on each side, and no alert more.
    let before = picket_tests::telemetry::alerts(&mesh.pair.frontend)
        .await?
        .len();
    drop(child.stdin.take());
    let closed = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
        .await
        .context("the client did not close in time")??;
    ensure!(
        closed.as_deref() == Some("{\"closed\": true}"),
        "{closed:?}"
    );
    for (side, path) in [
        ("frontend", &mesh.pair.frontend_flows),
        ("orders", &mesh.pair.orders_flows),
    ] {
        let end = websocket_flows(path, 1).await?;
        ensure!(
            end.len() == 1
                && end[0]["phase"] == "end"
                && end[0]["bytes_in"].as_u64().unwrap_or_default() > 0,
            "{side}: {end:#?}"
        );
    }
    ensure!(
        picket_tests::telemetry::alerts(&mesh.pair.frontend)
            .await?
            .len()
            == before,
        "the end record alerted"
    );
    let _ = child.wait().await;
    Ok(())
}

/// With every request traced, a WebSocket's tunnel is a span of its own on each sidecar,
/// named `websocket`: a child of that sidecar's span of the upgrade request (which ends with
/// the agreement), a client span on the caller's sidecar and a server span on the callee's,
/// ended when the tunnel closed with the bytes each way (the flow record's) and how it ended.
/// The flow records keep the request's IDs, so the two sides' records still pair.
#[tokio::test]
async fn a_websocket_tunnel_is_a_span_of_its_own_under_its_upgrade_request_on_both_sidecars()
-> Result<()> {
    use picket_tests::otlp::{OtlpReceiver, SPAN_KIND_CLIENT, SPAN_KIND_SERVER};
    let otlp = OtlpReceiver::start().await?;
    let mesh = Mesh::start_with("", TelemetryYaml::new().otlp(&otlp.endpoint())).await?;
    let echo = client(&["echo", &mesh.url("/public/traced")?, "hello"]).await?;
    ensure!(echo["status"] == 101 && echo["echo"] == "hello", "{echo}");

    let tunnels = otlp
        .wait_for_spans(2, Duration::from_secs(20), |s| s.name == "websocket")
        .await?;
    ensure!(tunnels.len() == 2, "{tunnels:#?}");
    let trace = otlp.trace(&tunnels[0].trace_id);
    for (side, kind, service, flows) in [
        (
            "frontend",
            SPAN_KIND_CLIENT,
            "frontend.shop",
            &mesh.pair.frontend_flows,
        ),
        (
            "orders",
            SPAN_KIND_SERVER,
            "orders.shop",
            &mesh.pair.orders_flows,
        ),
    ] {
        let tunnel = tunnels
            .iter()
            .find(|s| s.kind == kind)
            .with_context(|| format!("{side}: no tunnel span: {tunnels:#?}"))?;
        let request = trace
            .iter()
            .find(|s| tunnel.is_child_of(s))
            .with_context(|| format!("{side}: the tunnel span has no parent here: {trace:#?}"))?;
        ensure!(
            request.name == "GET /public/traced"
                && request.kind == kind
                && request.resource.get("service.name").map(String::as_str) == Some(service)
                && tunnel.resource.get("service.name").map(String::as_str) == Some(service),
            "{side}: the tunnel's parent is not this sidecar's request span: {request:#?} {tunnel:#?}"
        );
        let end = websocket_flows(flows, 1).await?;
        let end = &end[0];
        let (from_client, to_client) = (
            end["bytes_in"].as_u64().unwrap_or_default(),
            end["bytes_out"].as_u64().unwrap_or_default(),
        );
        // A client span sends what came from its client; a server span sends to its caller.
        let (sent, received) = if kind == SPAN_KIND_CLIENT {
            (from_client, to_client)
        } else {
            (to_client, from_client)
        };
        ensure!(from_client > 0 && to_client > 0, "{side}: {end}");
        ensure!(
            tunnel.attr("picket.network.bytes_sent") == Some(sent.to_string().as_str())
                && tunnel.attr("picket.network.bytes_received")
                    == Some(received.to_string().as_str())
                && tunnel.attr("picket.tunnel.end_cause") == Some("closed")
                && tunnel.attr("network.protocol.name") == Some("websocket")
                && tunnel.attr("url.path") == Some("/public/traced")
                && tunnel.attr("picket.source.identity")
                    == Some(spiffe_id("shop", "frontend").as_str())
                && tunnel.attr("picket.destination.identity")
                    == Some(spiffe_id("shop", "orders").as_str()),
            "{side}: {tunnel:#?} against {end}"
        );
        // The records keep the request's IDs.
        ensure!(
            end["trace_id"] == request.trace_id.as_str()
                && end["span_id"] == request.span_id.as_str(),
            "{side}: {end} against {request:#?}"
        );
    }
    Ok(())
}
