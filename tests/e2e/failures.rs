//! Failures at the edges: the app or the peer sidecar is gone, and a sidecar is asked to stop
//! while a request is in flight.

use std::time::Duration;

use anyhow::{Result, ensure};
use http::{StatusCode, Version};
use picket_tests::clients::{body_text, curl, described, get};
use picket_tests::wait::READY_TIMEOUT;
use picket_tests::{
    Mesh, MeshOptions, Sidecar, TestCa, TestProxy, Upstream, assert_eventually, closed_port,
    spiffe_id,
};

#[tokio::test]
async fn app_down_answers_502() -> Result<()> {
    let ca = TestCa::start().await?;
    let orders =
        TestProxy::spawn(&ca, Sidecar::new("shop", "orders", closed_port().await?)).await?;
    let upstream = Upstream::http(
        "orders",
        orders.addrs().inbound,
        &spiffe_id("shop", "orders"),
    );
    let frontend = TestProxy::spawn(
        &ca,
        Sidecar::new("shop", "frontend", closed_port().await?).upstream(upstream),
    )
    .await?;
    let url = format!("http://{}/", frontend.addrs().outbound);
    let got = curl(&["-H", "Host: orders", &url]).await?;
    ensure!(got.status == 502, "expected 502, got {got:?}");
    Ok(())
}

#[tokio::test]
async fn remote_sidecar_down_answers_503() -> Result<()> {
    let ca = TestCa::start().await?;
    let upstream = Upstream::http("orders", closed_port().await?, &spiffe_id("shop", "orders"));
    let frontend = TestProxy::spawn(
        &ca,
        Sidecar::new("shop", "frontend", closed_port().await?).upstream(upstream),
    )
    .await?;
    let url = format!("http://{}/", frontend.addrs().outbound);
    let got = curl(&["-H", "Host: orders", &url]).await?;
    ensure!(got.status == 503, "expected 503, got {got:?}");
    Ok(())
}

/// Which sidecar of the mesh receives SIGTERM.
#[derive(Debug, Clone, Copy)]
enum Side {
    Client,
    Server,
}

/// Starts a slow request through the mesh, sends SIGTERM to one sidecar once the app holds the
/// request, and checks that the request still completes and the sidecar exits cleanly.
async fn sigterm_lets_in_flight_request_finish(side: Side) -> Result<()> {
    let mut mesh = Mesh::start_with(MeshOptions {
        extra_yaml: "timeouts: { drain: 10s }".to_owned(),
        ..MeshOptions::default()
    })
    .await?;
    let outbound = mesh.outbound();
    let in_flight = tokio::spawn(async move {
        described(get(outbound, Version::HTTP_11, "orders", "/slow?ms=1500").await?).await
    });

    let app = mesh.app.addr();
    assert_eventually!(
        READY_TIMEOUT,
        app_in_flight(app).await? > 0,
        "the slow request never reached the app"
    );
    let sidecar = match side {
        Side::Client => &mut mesh.frontend,
        Side::Server => &mut mesh.orders,
    };
    sidecar.terminate().await?;

    let seen = in_flight.await??;
    ensure!(seen.path == "/slow?ms=1500", "{seen:?}");
    let status = sidecar.wait_exit(Duration::from_secs(20)).await?;
    ensure!(
        status.success(),
        "the sidecar exited with {status} after SIGTERM"
    );
    Ok(())
}

/// Requests the app is handling now, from its `/stats`.
async fn app_in_flight(app: std::net::SocketAddr) -> Result<u64> {
    let resp = get(app, Version::HTTP_11, "app", "/stats").await?;
    ensure!(
        resp.status() == StatusCode::OK,
        "/stats answered {}",
        resp.status()
    );
    let stats: serde_json::Value = serde_json::from_str(&body_text(resp).await?)?;
    stats["in_flight"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("/stats has no in_flight: {stats}"))
}

#[tokio::test]
async fn sigterm_on_server_sidecar_lets_in_flight_request_finish() -> Result<()> {
    sigterm_lets_in_flight_request_finish(Side::Server).await
}

#[tokio::test]
async fn sigterm_on_client_sidecar_lets_in_flight_request_finish() -> Result<()> {
    sigterm_lets_in_flight_request_finish(Side::Client).await
}
