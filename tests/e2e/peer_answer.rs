//! Answers the called workload's sidecar made itself, seen from the caller's side: the inbound
//! sidecar says so in `x-picket-sidecar-answer`, the caller's sidecar believes it (it came over
//! mutual TLS from the verified peer), marks its own flow record and keeps it from the
//! route's status classes; an app that writes the header itself is believed by no one, and
//! the caller's app never sees the header.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use picket_proxy::telemetry::{Alert, AlertKind};
use picket_tests::clients::{body_text, empty, request, send};
use picket_tests::mesh::FlowLogged;
use picket_tests::telemetry::{TelemetryYaml, alerts, wait_for_flows};
use picket_tests::{Sidecar, TestCa, TestProxy, eventually, spiffe_id};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(20);

/// The header under test.
const HEADER: &str = "x-picket-sidecar-answer";

/// An app (HTTP/1.1 and h2c) that writes `x-picket-sidecar-answer: 1` on every answer it
/// gives: `/forged/CODE` answers status `CODE`, anything else 200.
struct ForgingApp {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ForgingApp {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            // Owned by this task: stopping the app closes the connections it serves too.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                connections.spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let status = req
                            .uri()
                            .path()
                            .strip_prefix("/forged/")
                            .and_then(|c| c.parse::<u16>().ok())
                            .and_then(|c| StatusCode::from_u16(c).ok())
                            .unwrap_or(StatusCode::OK);
                        Response::builder()
                            .status(status)
                            .header(HEADER, "1")
                            .body(Full::new(Bytes::from_static(b"the app's answer\n")))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// Stops listening and closes every connection: the app is down.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// `GET path` from the frontend's app through its sidecar (HTTP/1.1 or h2c): the status, and
/// whether the answer carried the header.
async fn call(frontend: &TestProxy, version: Version, path: &str) -> Result<(u16, bool)> {
    let req = request(Method::GET, version, "orders", path, empty())?;
    let resp = send(frontend.addrs().outbound, req).await?;
    let status = resp.status().as_u16();
    let header = resp.headers().contains_key(HEADER);
    body_text(resp).await?;
    Ok((status, header))
}

/// The `status_class_new` alerts of `list`, by route (`<destination> <METHOD /template>`).
fn status_class_new(list: &[Alert]) -> Vec<String> {
    list.iter()
        .filter(|a| a.kind == AlertKind::StatusClassNew)
        .filter_map(|a| a.destination.clone())
        .collect()
}

/// Both sides run the detectors learning every route's first class at once (no learning
/// window). The app answers `GET /forged/{id}` 200 twice and then 503 three times (the
/// floor of `status_class_new`), every answer with the header forged: it is removed by the
/// orders sidecar, the caller's app never sees it, no record is marked, and both sides alert
/// on the new class (the app's own 5xx). Then `GET /api/orders` answers 200 twice and the
/// app goes down: the orders sidecar answers 502 three times, the caller's records say a
/// sidecar answered (the peer's), and neither side alerts on that route. Requests alternate
/// HTTP/1.1 and h2c between the app and its sidecar.
#[tokio::test]
async fn the_peers_own_answers_are_marked_on_the_callers_side_and_a_forged_mark_is_removed()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::start().await?;
    let app = ForgingApp::start().await?;
    let telemetry = TelemetryYaml::new().detector("learning_window", "0s");
    let orders = Sidecar::new("shop", "orders", app.addr);
    let FlowLogged {
        orders,
        frontend,
        orders_flows,
        frontend_flows,
    } = FlowLogged::start(&ca, dir.path(), &telemetry, orders, "").await?;
    let versions = [Version::HTTP_11, Version::HTTP_2].into_iter().cycle();
    let mut versions = versions;
    let mut next = || versions.next().unwrap_or(Version::HTTP_11);

    let forged = ["/forged/200", "/forged/200"]
        .into_iter()
        .chain(std::iter::repeat_n("/forged/503", 3));
    for path in forged {
        let want = if path.ends_with("503") { 503 } else { 200 };
        let got = call(&frontend, next(), path).await?;
        ensure!(got == (want, false), "GET {path}: {got:?}");
    }
    for _ in 0..2 {
        let got = call(&frontend, next(), "/api/orders").await?;
        ensure!(got == (200, false), "GET /api/orders: {got:?}");
    }
    app.stop().await;
    for _ in 0..3 {
        let got = call(&frontend, next(), "/api/orders").await?;
        ensure!(got == (502, false), "GET /api/orders, app down: {got:?}");
    }

    // The records: ten a side; the caller's marks the peer sidecar's answers only.
    let flows = wait_for_flows(&frontend_flows, 10, WAIT).await?;
    let flag = |f: &Value, k: &str| f[k].as_bool().unwrap_or(false);
    for f in &flows {
        let peer_made = f["path"] == "/api/orders" && f["status"] == 502;
        ensure!(
            flag(f, "sidecar_answer") == peer_made && flag(f, "peer_sidecar_answer") == peer_made,
            "frontend record: {f}"
        );
    }
    let flows = wait_for_flows(&orders_flows, 10, WAIT).await?;
    for f in &flows {
        let own = f["path"] == "/api/orders" && f["status"] == 502;
        ensure!(
            flag(f, "sidecar_answer") == own && f.get("peer_sidecar_answer").is_none(),
            "orders record: {f}"
        );
    }

    // The app's own new class alerts on both sides; the sidecar's 502s alert on neither.
    let orders_id = spiffe_id("shop", "orders");
    let want = vec![format!("{orders_id} GET /forged/{{id}}")];
    for (side, proxy) in [("frontend", &frontend), ("orders", &orders)] {
        let list = eventually(WAIT, async || {
            let list = alerts(proxy).await?;
            ensure!(
                !status_class_new(&list).is_empty(),
                "{side}: no status_class_new yet: {list:#?}"
            );
            Ok(list)
        })
        .await?;
        ensure!(status_class_new(&list) == want, "{side}: {list:#?}");
    }
    let learned = frontend.admin_get("/detectors").await?.1;
    let state: Value = serde_json::from_str(&learned).context("/detectors")?;
    let classes = state["routes"]
        .as_array()
        .and_then(|routes| routes.iter().find(|r| r["route"] == "GET /api/orders"))
        .map(|r| r["status_classes"].clone());
    ensure!(
        classes == Some(serde_json::json!(["2xx"])),
        "the frontend learned {classes:?} for GET /api/orders: {state:#}"
    );
    Ok(())
}
