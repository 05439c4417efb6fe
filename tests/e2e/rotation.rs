//! Certificate lifetime: short-lived certificates rotate under traffic, and a CA outage does
//! not stop traffic while the certificates are still valid.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use http::Version;
use picket_tests::clients::{HttpClient, described, empty, get, request};
use picket_tests::{Mesh, MeshOptions, TestProxy};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::time::{Instant, interval};

/// Gap between two requests of the steady traffic.
const TRAFFIC_PERIOD: Duration = Duration::from_millis(50);

/// The `not_after` of an `/identity` answer.
pub(crate) fn not_after(identity: &serde_json::Value) -> Result<OffsetDateTime> {
    let text = identity["not_after"]
        .as_str()
        .with_context(|| format!("/identity has no not_after string: {identity}"))?;
    OffsetDateTime::parse(text, &Rfc3339)
        .with_context(|| format!("not_after {text:?} is not RFC 3339"))
}

/// Lifetime of the certificates in the rotation tests: the shortest the CA issues.
const LEAF_TTL: Duration = Duration::from_secs(60);

/// A mesh whose CA issues certificates valid for [`LEAF_TTL`].
async fn short_lived_mesh() -> Result<Mesh> {
    Mesh::start_with(MeshOptions {
        ca_init_args: vec!["--leaf-ttl".to_owned(), format!("{}s", LEAF_TTL.as_secs())],
        ..MeshOptions::default()
    })
    .await
}

/// Steady traffic: one request on the long-lived HTTP/2 connection `h2`, one on a new
/// HTTP/1.1 connection. Any failure fails the test, with the request's number.
async fn one_round(mesh: &Mesh, h2: &mut HttpClient, round: u32) -> Result<()> {
    let req = request(http::Method::GET, Version::HTTP_2, "orders", "/h2", empty())?;
    described(h2.send(req).await?)
        .await
        .with_context(|| format!("round {round}: the long-lived HTTP/2 connection failed"))?;
    described(get(mesh.outbound(), Version::HTTP_11, "orders", "/h1").await?)
        .await
        .with_context(|| format!("round {round}: a new HTTP/1.1 connection failed"))?;
    Ok(())
}

async fn serials(sidecars: [&TestProxy; 2]) -> Result<[String; 2]> {
    Ok([sidecars[0].serial().await?, sidecars[1].serial().await?])
}

#[tokio::test]
async fn short_lived_certificates_rotate_without_failed_requests() -> Result<()> {
    let mesh = short_lived_mesh().await?;
    let sidecars = [&mesh.frontend, &mesh.orders];
    let first = serials(sidecars).await?;
    // Renewing at about two thirds of the lifetime means not in the first third of it.
    let mut earliest_renewal = OffsetDateTime::now_utc() + LEAF_TTL;
    for sidecar in sidecars {
        earliest_renewal =
            earliest_renewal.min(not_after(&sidecar.identity().await?)? - LEAF_TTL * 2 / 3);
    }
    let mut h2 = HttpClient::connect(mesh.outbound(), Version::HTTP_2).await?;

    // Renewal is due at about two thirds of the lifetime; allow for jitter and backoff.
    let deadline = Instant::now() + LEAF_TTL + Duration::from_secs(30);
    let mut tick = interval(TRAFFIC_PERIOD);
    let mut round = 0;
    loop {
        tick.tick().await;
        round += 1;
        one_round(&mesh, &mut h2, round).await?;
        let now = serials(sidecars).await?;
        if now != first {
            ensure!(
                OffsetDateTime::now_utc() >= earliest_renewal,
                "renewed too early, before {earliest_renewal}: serials {first:?} -> {now:?}"
            );
        }
        if now[0] != first[0] && now[1] != first[1] {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no rotation within {:?}: serials {first:?} -> {now:?}",
            LEAF_TTL + Duration::from_secs(30)
        );
    }
    // The connection opened before the rotation keeps working after it.
    for extra in 1..=10 {
        tick.tick().await;
        one_round(&mesh, &mut h2, round + extra).await?;
    }
    Ok(())
}

#[tokio::test]
async fn traffic_flows_while_ca_is_down_and_certificates_are_valid() -> Result<()> {
    let mut mesh = short_lived_mesh().await?;
    mesh.ca.stop().await?;
    let mut h2 = HttpClient::connect(mesh.outbound(), Version::HTTP_2).await?;

    // Keep going past the renewal point (two thirds of the lifetime), which now fails, until
    // shortly before the first certificate expires.
    let mut expiry = OffsetDateTime::now_utc() + Duration::from_secs(3600);
    for sidecar in [&mesh.frontend, &mesh.orders] {
        expiry = expiry.min(not_after(&sidecar.identity().await?)?);
    }
    let left: Duration = (expiry - OffsetDateTime::now_utc() - Duration::from_secs(3))
        .try_into()
        .context("the certificates expire too soon")?;
    let until = Instant::now() + left;
    let mut tick = interval(TRAFFIC_PERIOD);
    let mut round = 0;
    while Instant::now() < until {
        tick.tick().await;
        round += 1;
        one_round(&mesh, &mut h2, round).await?;
    }
    ensure!(round > 0, "no request was sent");
    Ok(())
}

#[tokio::test]
async fn expired_workload_enrolls_again_with_a_new_join_token() -> Result<()> {
    let mut mesh = short_lived_mesh().await?;
    mesh.ca.stop().await?;
    // The CA stays down past the orders certificate's end of validity.
    let expiry = not_after(&mesh.orders.identity().await?)?;
    let wait: Duration = (expiry - OffsetDateTime::now_utc() + Duration::from_secs(2))
        .try_into()
        .context("the certificate has already expired")?;
    tokio::time::sleep(wait).await;
    mesh.ca.restart().await?;

    // The spent join token is refused, and the sidecar says what to do.
    picket_tests::assert_eventually!(
        Duration::from_secs(40),
        mesh.orders
            .daemon()
            .log_text()
            .contains("picket ca token create --identity ns/shop/sa/orders"),
        "the sidecar did not tell the operator to create a new join token:\n{}",
        mesh.orders.daemon().log_text()
    );

    // A new token for the same identity, written to the same file: each sidecar enrolls
    // again by itself.
    for (sidecar, identity) in [
        (&mesh.orders, "ns/shop/sa/orders"),
        (&mesh.frontend, "ns/shop/sa/frontend"),
    ] {
        let expired_serial = sidecar.serial().await?;
        let token = mesh.ca.token(identity).await?;
        std::fs::write(sidecar.token_file(), token)?;
        picket_tests::assert_eventually!(
            Duration::from_secs(40),
            sidecar.serial().await? != expired_serial
                && not_after(&sidecar.identity().await?)? > OffsetDateTime::now_utc(),
            "{identity} did not enroll again with the new token"
        );
    }
    described(get(mesh.outbound(), Version::HTTP_11, "orders", "/again").await?)
        .await
        .context("a request after enrolling again failed")?;
    Ok(())
}
