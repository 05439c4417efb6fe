//! Parked HTTP/1 connections: an app's idle keep-alive connection gives up its HTTP buffers
//! after `timeouts.park` and is served again when bytes arrive, on the same socket, with
//! nothing lost or added. Real clients on the frontend sidecar's plaintext listener for
//! `orders`: curl, and raw sockets with h11 (`tests/fixtures/park_client.py`), which waits for
//! each park on the sidecar's `picket_http1_parks_total` and `picket_http1_parked_connections`.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use http::Version;
use picket_tests::clients::{curl_command, described, get};
use picket_tests::mesh::{Mesh, MeshOptions};
use picket_tests::process::output_within;
use picket_tests::prom::scrape;
use picket_tests::wait::READY_TIMEOUT;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The park delay of these tests: short, so that a test waits fractions of a second for a park.
const PARK_MS: u64 = 100;

async fn mesh(frontend_timeouts: &str) -> Result<Mesh> {
    Mesh::start_with(MeshOptions {
        frontend_yaml: format!("timeouts: {{ park: {PARK_MS}ms{frontend_timeouts} }}"),
        ..MeshOptions::default()
    })
    .await
}

fn client_command(scenario: &str, mesh: &Mesh) -> Result<Command> {
    let script = picket_tests::k8s::repo_root().join("tests/fixtures/park_client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(scenario)
        .arg(mesh.frontend.upstream("orders")?.to_string())
        .arg(mesh.frontend.addrs().admin.to_string())
        .arg(PARK_MS.to_string());
    Ok(cmd)
}

/// Runs a scenario of `park_client.py` to its end and returns what it printed.
async fn scenario(name: &str, mesh: &Mesh) -> Result<Value> {
    let out = output_within(&mut client_command(name, mesh)?, Duration::from_secs(60)).await?;
    ensure!(
        out.status.success(),
        "park_client.py {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("park_client.py printed {stdout:?}"))
}

/// The paths the app saw, in response order; every response kept the connection alive.
fn paths(result: &Value) -> Result<Vec<String>> {
    let responses = result["responses"].as_array().context("no responses")?;
    responses
        .iter()
        .map(|r| {
            ensure!(r["status"] == 200, "a response was not 200: {result}");
            ensure!(
                r["connection"]
                    .as_str()
                    .is_none_or(|c| !c.eq_ignore_ascii_case("close")),
                "a response closed the connection: {result}"
            );
            r["path"]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("a response named no path: {result}"))
        })
        .collect()
}

#[tokio::test]
async fn curl_reuses_a_kept_alive_connection_across_a_park() -> Result<()> {
    let mesh = mesh("").await?;
    let url = format!("http://{}/public/a", mesh.frontend.upstream("orders")?);
    // One transfer a second on one connection: the connection is idle past the park delay
    // between the two.
    let out = output_within(
        curl_command()
            .args(["--output", "/dev/null", "--output", "/dev/null"])
            .args(["--write-out", "%{http_code} %{num_connects}\n"])
            .args(["--rate", "1/s", "--header", "Host: orders", &url, &url]),
        Duration::from_secs(60),
    )
    .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(
        lines == ["200 1", "200 0"],
        "curl's two transfers (status, new connections): {lines:?}"
    );
    let metrics = scrape(mesh.frontend.addrs().admin).await?;
    let parks = metrics
        .value("picket_http1_parks_total", &[])
        .unwrap_or(0.0);
    ensure!(
        parks >= 1.0,
        "the connection was never parked (parks {parks})"
    );
    Ok(())
}

#[tokio::test]
async fn pipelined_partial_and_split_requests_survive_parks() -> Result<()> {
    let mesh = mesh("").await?;
    let pipelined = scenario("pipelined", &mesh).await?;
    ensure!(
        paths(&pipelined)?
            == [
                "/public/one",
                "/public/two",
                "/public/three",
                "/public/four"
            ],
        "pipelined: {pipelined}"
    );
    // Half of the next head was read with the previous request and kept through the park.
    let partial = scenario("partial", &mesh).await?;
    ensure!(
        paths(&partial)? == ["/public/one", "/public/two", "/public/three"],
        "partial: {partial}"
    );
    // Half a head wakes the connection; a pause past the park delay does not park it again.
    let split = scenario("split", &mesh).await?;
    ensure!(
        paths(&split)? == ["/public/one", "/public/two", "/public/three"],
        "split: {split}"
    );
    let requests = app_stats(mesh.app.addr()).await?["requests"].clone();
    ensure!(requests == 10, "the app saw {requests} requests, not 10");
    Ok(())
}

#[tokio::test]
async fn a_parked_connection_is_closed_when_its_next_head_is_due() -> Result<()> {
    // Without parking, hyper closes a kept-alive connection whose next request head has not
    // come within the header timeout; a parked connection keeps that deadline.
    let mesh = mesh(", handshake: 1s").await?;
    let held = scenario("hold", &mesh).await?;
    ensure!(held["end"] == "eof", "the parked connection ended: {held}");
    let parked = parked(&mesh).await?;
    ensure!(
        parked == 0.0,
        "{parked} connections still counted as parked"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_closes_parked_connections_and_lets_active_ones_finish() -> Result<()> {
    let mut mesh = mesh(", drain: 30s").await?;
    let mut holder = client_command("hold", &mesh)?
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(holder.stdout.take().context("no stdout")?).lines();
    let first = tokio::time::timeout(READY_TIMEOUT, lines.next_line())
        .await
        .context("the client never reported its connection parked")??
        .context("the client ended before its connection was parked")?;
    ensure!(first.contains("\"parked\": true"), "client said {first}");

    let entry = mesh.frontend.upstream("orders")?;
    let active = tokio::spawn(async move {
        described(get(entry, Version::HTTP_11, "orders", "/slow?ms=2500").await?).await
    });
    let app = mesh.app.addr();
    picket_tests::assert_eventually!(
        READY_TIMEOUT,
        app_stats(app).await?["in_flight"].as_u64().unwrap_or(0) > 0,
        "the slow request never reached the app"
    );
    mesh.frontend.terminate().await?;

    let end = tokio::time::timeout(READY_TIMEOUT, lines.next_line())
        .await
        .context("the parked connection was not closed at SIGTERM")??
        .context("the client printed no end")?;
    let end: Value = serde_json::from_str(&end)?;
    ensure!(end["end"] == "eof", "the parked connection ended: {end}");
    // Draining (the slow request is still in flight): the closed park is no longer counted.
    let parked = parked(&mesh).await?;
    ensure!(
        parked == 0.0,
        "{parked} connections still counted as parked while draining"
    );
    let seen = active.await??;
    ensure!(seen.path == "/slow?ms=2500", "{seen:?}");
    let status = mesh.frontend.wait_exit(Duration::from_secs(40)).await?;
    ensure!(status.success(), "the sidecar exited with {status}");
    Ok(())
}

/// The app's `/stats`: requests seen and in flight.
async fn app_stats(app: std::net::SocketAddr) -> Result<Value> {
    let resp = get(app, Version::HTTP_11, "app", "/stats").await?;
    Ok(serde_json::from_str(
        &picket_tests::clients::body_text(resp).await?,
    )?)
}

/// The frontend's count of parked connections (`picket_http1_parked_connections`), -1 when
/// the gauge is missing.
async fn parked(mesh: &Mesh) -> Result<f64> {
    let metrics = scrape(mesh.frontend.addrs().admin).await?;
    Ok(metrics
        .value("picket_http1_parked_connections", &[])
        .unwrap_or(-1.0))
}
