//! The test apps on their own, without sidecars: a control for the mesh tests, so that a
//! failure there points at the mesh and not at the app or the client.

use anyhow::{Result, ensure};
use bytes::Bytes;
use http::{Method, StatusCode, Version};
use http_body_util::BodyExt;
use picket_proxy::echo::{BodyDigest, pattern_body};
use picket_tests::App;
use picket_tests::clients::{HttpClient, body_digest, described, full, get, request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn echo_app_describes_requests_over_http1_and_h2c() -> Result<()> {
    let app = App::http("orders").await?;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut req = request(
            Method::POST,
            version,
            "orders",
            "/a/b?c=d",
            pattern_body(100_000),
        )?;
        req.headers_mut().insert("x-first", "1".parse()?);
        let seen = described(
            HttpClient::connect(app.addr(), version)
                .await?
                .send(req)
                .await?,
        )
        .await?;
        ensure!(
            seen.app == "orders" && seen.method == "POST" && seen.path == "/a/b?c=d",
            "{seen:?}"
        );
        ensure!(seen.version == format!("{version:?}"), "{seen:?}");
        ensure!(
            seen.headers.iter().any(|(k, v)| k == "x-first" && v == "1"),
            "{seen:?}"
        );
        ensure!(seen.peer_identity.is_none(), "{seen:?}");
        let (bytes, sha256) = BodyDigest::of_pattern(100_000);
        ensure!(
            seen.body_bytes == bytes && seen.body_sha256 == sha256,
            "{seen:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn echo_app_streams_pattern_and_answers_status() -> Result<()> {
    let app = App::http("orders").await?;
    let len = 1_000_003;
    let resp = get(
        app.addr(),
        Version::HTTP_11,
        "orders",
        &format!("/stream?bytes={len}"),
    )
    .await?;
    ensure!(
        body_digest(resp).await? == BodyDigest::of_pattern(len),
        "stream differs from the pattern"
    );
    let resp = get(app.addr(), Version::HTTP_2, "orders", "/status/418").await?;
    ensure!(
        resp.status() == StatusCode::IM_A_TEAPOT,
        "status {}",
        resp.status()
    );
    Ok(())
}

#[tokio::test]
async fn echo_app_answers_grpc_with_trailers() -> Result<()> {
    let app = App::http("orders").await?;
    let message = Bytes::from_static(b"\x00\x00\x00\x00\x03abc");
    let mut req = request(
        Method::POST,
        Version::HTTP_2,
        "orders",
        "/grpc.Echo/Unary",
        full(message.clone()),
    )?;
    req.headers_mut()
        .insert("content-type", "application/grpc".parse()?);
    let resp = HttpClient::connect(app.addr(), Version::HTTP_2)
        .await?
        .send(req)
        .await?;
    let body = resp.into_body().collect().await?;
    let trailers = body.trailers().cloned().unwrap_or_default();
    ensure!(
        trailers.get("grpc-status").is_some_and(|v| v == "0"),
        "{trailers:?}"
    );
    ensure!(
        trailers.get("x-echo-trailer").is_some_and(|v| v == "yes"),
        "{trailers:?}"
    );
    ensure!(body.to_bytes() == message, "the message was not echoed");
    Ok(())
}

#[tokio::test]
async fn tcp_echo_returns_bytes_and_closes_after_peer() -> Result<()> {
    let app = App::tcp_echo().await?;
    let mut stream = tokio::net::TcpStream::connect(app.addr()).await?;
    stream.write_all(b"ping").await?;
    stream.shutdown().await?;
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await?;
    ensure!(back == b"ping", "got {back:?}");
    Ok(())
}
