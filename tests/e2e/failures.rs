//! Failures at the edges: the app or the peer sidecar is gone, and a sidecar is asked to stop
//! while a request is in flight.

use std::time::Duration;

use anyhow::{Result, ensure};
use http::{StatusCode, Version};
use picket_tests::clients::{body_text, curl, described, get};
use picket_tests::mesh::frontend_to_orders;
use picket_tests::wait::READY_TIMEOUT;
use picket_tests::{Mesh, MeshOptions, Sidecar, TestCa, TestProxy, assert_eventually, closed_port};

#[tokio::test]
async fn app_down_answers_502() -> Result<()> {
    let ca = TestCa::start().await?;
    let orders = TestProxy::spawn(&ca, Sidecar::new("shop", "orders", closed_port()?)).await?;
    let frontend = TestProxy::spawn(&ca, frontend_to_orders(orders.addrs().inbound).await?).await?;
    let url = format!("http://{}/", frontend.addrs().outbound);
    let got = curl(&["-H", "Host: orders", &url]).await?;
    ensure!(got.status == 502, "expected 502, got {got:?}");
    Ok(())
}

/// An HTTP/1.1 app answering each request (a head without a body) with `ok`, and counting
/// the connections it accepted; with `close`, it closes each connection after one answer
/// without saying so (no `Connection: close`).
async fn counting_app(
    close: bool,
) -> Result<(
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
)> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let server = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    head.clear();
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if tcp.write_all(answer).await.is_err() || close {
                        let _ = tcp.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    Ok((addr, accepted, server))
}

/// Five requests through the mesh, one after the other, to an app from [`counting_app`]; the
/// number of connections the app accepted after each.
async fn five_requests_to(close: bool) -> Result<Vec<usize>> {
    let (app, accepted, server) = counting_app(close).await?;
    let ca = TestCa::start().await?;
    let orders = TestProxy::spawn(&ca, Sidecar::new("shop", "orders", app)).await?;
    let frontend = TestProxy::spawn(&ca, frontend_to_orders(orders.addrs().inbound).await?).await?;
    let url = format!("http://{}/", frontend.addrs().outbound);
    let mut seen = Vec::new();
    for n in 1..=5 {
        let got = curl(&["-H", "Host: orders", &url]).await?;
        ensure!(
            got.status == 200 && got.body == "ok",
            "request {n}: {got:?}"
        );
        seen.push(accepted.load(std::sync::atomic::Ordering::SeqCst));
    }
    server.abort();
    Ok(seen)
}

/// Requests one after the other reach the app on one kept-alive connection.
#[tokio::test]
async fn sequential_requests_reach_the_app_on_one_kept_alive_connection() -> Result<()> {
    let seen = five_requests_to(false).await?;
    ensure!(
        seen == [1, 1, 1, 1, 1],
        "connections after each request: {seen:?}"
    );
    Ok(())
}

/// An app that closes each kept-alive connection once it has answered, without saying so: the
/// inbound sidecar does not send the next request on the closed connection; every request
/// reaches the app, each on a new connection.
#[tokio::test]
async fn an_app_closing_kept_alive_connections_gets_every_request() -> Result<()> {
    let seen = five_requests_to(true).await?;
    ensure!(
        seen == [1, 2, 3, 4, 5],
        "connections after each request: {seen:?}"
    );
    Ok(())
}

#[tokio::test]
async fn remote_sidecar_down_answers_503() -> Result<()> {
    let ca = TestCa::start().await?;
    let frontend = TestProxy::spawn(&ca, frontend_to_orders(closed_port()?).await?).await?;
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

/// A peer sidecar that is draining (SIGTERM, a slow request still in flight) no longer takes
/// new requests: its GOAWAY or refused stream, or its closed listener, reaches the caller as
/// 503 (the peer is unavailable), never as 502.
#[tokio::test]
async fn draining_peer_sidecar_answers_new_requests_503() -> Result<()> {
    let mut mesh = Mesh::start_with(MeshOptions {
        extra_yaml: "timeouts: { drain: 20s }".to_owned(),
        ..MeshOptions::default()
    })
    .await?;
    let outbound = mesh.outbound();
    let in_flight = tokio::spawn(async move {
        described(get(outbound, Version::HTTP_11, "orders", "/slow?ms=4000").await?).await
    });
    let app = mesh.app.addr();
    assert_eventually!(
        READY_TIMEOUT,
        app_in_flight(app).await? > 0,
        "the slow request never reached the app"
    );
    mesh.orders.terminate().await?;
    assert_eventually!(
        READY_TIMEOUT,
        mesh.orders.admin_get("/ready").await?.0 == StatusCode::SERVICE_UNAVAILABLE,
        "the orders sidecar never reported draining"
    );
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let resp = get(outbound, version, "orders", "/").await?;
        let status = resp.status();
        let body = body_text(resp).await?;
        ensure!(
            status == StatusCode::SERVICE_UNAVAILABLE,
            "a request to the draining peer ({version:?}) answered {status}: {body}"
        );
    }
    let seen = in_flight.await??;
    ensure!(seen.path == "/slow?ms=4000", "{seen:?}");
    let status = mesh.orders.wait_exit(Duration::from_secs(30)).await?;
    ensure!(status.success(), "the orders sidecar exited with {status}");
    Ok(())
}

/// Past `limits.max_requests` requests in flight, a direction sheds the next request with 503
/// at once and counts it; once the slow request ends, requests pass again.
#[tokio::test]
async fn requests_past_the_in_flight_limit_are_shed_with_503() -> Result<()> {
    let mesh = Mesh::start_with(MeshOptions {
        frontend_yaml: "limits: { max_requests: 1 }".to_owned(),
        ..MeshOptions::default()
    })
    .await?;
    let outbound = mesh.outbound();
    let in_flight = tokio::spawn(async move {
        described(get(outbound, Version::HTTP_11, "orders", "/slow?ms=3000").await?).await
    });
    let app = mesh.app.addr();
    assert_eventually!(
        READY_TIMEOUT,
        app_in_flight(app).await? > 0,
        "the slow request never reached the app"
    );
    let resp = get(outbound, Version::HTTP_11, "orders", "/").await?;
    let status = resp.status();
    let body = body_text(resp).await?;
    ensure!(
        status == StatusCode::SERVICE_UNAVAILABLE && body.contains("too many requests in flight"),
        "the second request answered {status}: {body}"
    );
    let (_, metrics) = mesh.frontend.admin_get("/metrics").await?;
    ensure!(
        metrics.contains("picket_requests_shed_total{direction=\"outbound\"} 1"),
        "the shed request is not counted:\n{metrics}"
    );
    in_flight.await??;
    let resp = get(outbound, Version::HTTP_11, "orders", "/").await?;
    ensure!(
        resp.status() == StatusCode::OK,
        "after the slow request, a request answered {}",
        resp.status()
    );
    Ok(())
}

/// A sidecar configuration that cannot be read as text is refused before anything starts:
/// exit 2, the message names the file and the problem (the byte offset of invalid UTF-8, the
/// 1 MiB limit, a YAML syntax error at its place, an unknown field), and each cause appears
/// once.
#[tokio::test]
async fn unreadable_sidecar_config_exits_2_naming_the_problem_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let not_utf8 = dir.path().join("not-utf8.yaml");
    std::fs::write(&not_utf8, b"identity:\n  namespace: sh\xffop\n")?;
    let huge = dir.path().join("huge.yaml");
    std::fs::write(&huge, vec![b'#'; 1024 * 1024 + 1])?;
    let missing = dir.path().join("missing.yaml");
    // The YAML library's own rendering repeats its message under a snippet: said once here.
    let syntax = dir.path().join("syntax.yaml");
    std::fs::write(&syntax, "ca: {url: 1\n")?;
    let unknown = dir.path().join("unknown.yaml");
    std::fs::write(&unknown, "bogus: 1\n")?;
    for (path, expected) in [
        (&not_utf8, "not UTF-8: invalid byte at offset 25".to_owned()),
        (&syntax, "syntax.yaml:1:5: unclosed bracket".to_owned()),
        (&unknown, "unknown field `bogus`".to_owned()),
        (&huge, "larger than 1048576 bytes".to_owned()),
        (&missing, "No such file or directory".to_owned()),
    ] {
        let out = picket_tests::process::output(
            picket_tests::process::picket()?
                .arg("proxy")
                .arg("--config")
                .arg(path),
        )
        .await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(2),
            "{}: exit {:?}\n{stderr}",
            path.display(),
            out.status.code()
        );
        ensure!(
            stderr.contains(&expected) && stderr.contains(&path.display().to_string()),
            "{}: stderr does not say {expected:?}:\n{stderr}",
            path.display()
        );
        ensure!(
            stderr.matches(&expected).count() == 1,
            "{}: the cause is printed more than once:\n{stderr}",
            path.display()
        );
    }
    Ok(())
}
