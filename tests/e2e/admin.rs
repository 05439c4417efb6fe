//! The admin listener: health, metrics and the current identity.

use anyhow::{Context, Result, ensure};
use http::{StatusCode, Version};
use picket_tests::clients::{body_text, curl, get};
use picket_tests::{App, Mesh, Sidecar, TestCa, TestProxy, spiffe_id};

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
