//! The admin listener: health, metrics and the current identity.

use anyhow::{Context, Result, ensure};
use http::{StatusCode, Version};
use picket_tests::clients::{body_text, curl, get};
use picket_tests::wait::READY_TIMEOUT;
use picket_tests::{
    App, Mesh, Sidecar, TestCa, TestProxy, assert_eventually, closed_port, spiffe_id,
};

#[tokio::test]
async fn admin_reports_health_metrics_and_identity_without_secrets() -> Result<()> {
    let mesh = Mesh::start().await?;
    // One request so that request metrics have samples.
    curl(&["-H", "Host: orders", &mesh.outbound_url("/")])
        .await?
        .described()?;

    for path in ["/live", "/ready"] {
        let (status, body) = mesh.orders.admin_get(path).await?;
        ensure!(status == StatusCode::OK, "{path} answered {status}: {body}");
    }

    let (status, metrics) = mesh.orders.admin_get("/metrics").await?;
    ensure!(status == StatusCode::OK, "/metrics answered {status}");
    ensure!(
        metrics.contains("# TYPE picket_"),
        "no picket_ metric families:\n{metrics}"
    );

    let (status, body) = mesh.orders.admin_get("/identity").await?;
    ensure!(
        status == StatusCode::OK,
        "/identity answered {status}: {body}"
    );
    ensure!(
        !body.contains("PRIVATE KEY"),
        "/identity leaks a private key"
    );
    let identity: serde_json::Value = serde_json::from_str(&body)?;
    ensure!(
        identity["spiffe_id"] == spiffe_id("shop", "orders").as_str(),
        "{identity}"
    );
    ensure!(
        identity["serial"].as_str().is_some_and(|s| !s.is_empty()),
        "{identity}"
    );
    crate::rotation::not_after(&identity)?;
    Ok(())
}

/// A non-loopback IPv4 address of this machine, from `ip -4 -o addr`.
async fn non_loopback_address() -> Result<std::net::IpAddr> {
    let out = tokio::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .await
        .context("cannot run ip (scripts/install-test-deps installs iproute2)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("this machine has no global IPv4 address: {text}"))
}

#[tokio::test]
async fn admin_on_a_non_loopback_address_serves_only_health_and_metrics() -> Result<()> {
    let ca = TestCa::start().await?;
    let app = App::http("orders").await?;
    let orders = TestProxy::spawn(
        &ca,
        Sidecar::new("shop", "orders", app.addr()).admin_listen("0.0.0.0:0"),
    )
    .await?;
    let port = orders.addrs().admin.port();
    let outside = std::net::SocketAddr::new(non_loopback_address().await?, port);
    let inside = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    for (path, public) in [
        ("/live", true),
        ("/ready", true),
        ("/metrics", true),
        ("/identity", false),
        ("/policy", false),
        ("/alerts", false),
    ] {
        let resp = get(outside, Version::HTTP_11, "sidecar", path).await?;
        let status = resp.status();
        let body = body_text(resp).await?;
        let want = if public {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        ensure!(status == want, "{path} on {outside}: {status} {body}");
        if !public {
            ensure!(body.contains("only /live, /ready and /metrics"), "{body}");
        }
        let resp = get(inside, Version::HTTP_11, "sidecar", path).await?;
        ensure!(
            resp.status() == StatusCode::OK,
            "{path} on loopback: {}",
            resp.status()
        );
    }
    Ok(())
}

/// Reads from `tcp` until the server closes it; `Ok(bytes)` when it did within `deadline`.
async fn closed_within(
    tcp: &mut tokio::net::TcpStream,
    deadline: std::time::Duration,
) -> Result<usize> {
    use tokio::io::AsyncReadExt as _;
    let mut seen = 0;
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return seen,
                Ok(n) => seen += n,
            }
        }
    };
    tokio::time::timeout(deadline, read_all)
        .await
        .map_err(|_| anyhow::anyhow!("the connection was still open after {deadline:?}"))
}

/// The admin listener has the same header timeout as the data path: a client that trickles
/// its request head a byte at a time is closed once `timeouts.handshake` has passed, however
/// often it sends.
#[tokio::test]
async fn admin_closes_a_connection_that_trickles_its_request_head() -> Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let ca = TestCa::start().await?;
    let proxy = TestProxy::spawn(
        &ca,
        Sidecar::new("shop", "orders", closed_port()?).yaml("timeouts: { handshake: 1s }"),
    )
    .await?;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addrs().admin).await?;
    let (mut reader, mut writer) = tcp.split();
    let started = std::time::Instant::now();
    let trickle = async {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
        for byte in b"GET /live HTTP/1.1\r\nHost: admin\r\nX-Slow: "
            .iter()
            .cycle()
        {
            tick.tick().await;
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
    };
    let closed = async {
        use tokio::io::AsyncReadExt as _;
        let mut buf = [0u8; 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        () = closed => {}
        () = trickle => {}
        () = tokio::time::sleep(std::time::Duration::from_secs(20)) => {
            anyhow::bail!("a trickling admin client was still connected after 20 s");
        }
    }
    let took = started.elapsed();
    ensure!(
        took >= std::time::Duration::from_millis(900),
        "closed after {took:?}, before the 1 s header timeout"
    );
    Ok(())
}

/// The admin listener has the same connection limit as the data path: past
/// `limits.max_connections` a connection is closed at once, and a freed slot is usable again.
#[tokio::test]
async fn admin_refuses_connections_past_the_limit() -> Result<()> {
    let ca = TestCa::start().await?;
    let proxy = TestProxy::spawn(
        &ca,
        Sidecar::new("shop", "orders", closed_port()?).yaml("limits: { max_connections: 2 }"),
    )
    .await?;
    let admin = proxy.addrs().admin;
    let first = tokio::net::TcpStream::connect(admin).await?;
    let _second = tokio::net::TcpStream::connect(admin).await?;
    let mut third = tokio::net::TcpStream::connect(admin).await?;
    let seen = closed_within(&mut third, std::time::Duration::from_secs(10)).await?;
    ensure!(seen == 0, "the refused connection received {seen} bytes");
    drop(first);
    assert_eventually!(
        READY_TIMEOUT,
        proxy
            .admin_get("/live")
            .await
            .is_ok_and(|(s, _)| s == StatusCode::OK),
        "the admin listener did not serve again after a connection closed"
    );
    Ok(())
}
