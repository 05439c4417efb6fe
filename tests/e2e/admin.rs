//! The admin listener: health, metrics and the current identity.

use anyhow::{Result, ensure};
use http::StatusCode;
use picket_tests::clients::curl;
use picket_tests::{Mesh, spiffe_id};

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
