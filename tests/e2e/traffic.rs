//! Traffic through the mesh: HTTP/1.1, HTTP/2, gRPC, opaque TCP and large streams, from the
//! frontend app through both sidecars to the orders app.

use anyhow::{Result, ensure};
use bytes::Bytes;
use http::{Method, StatusCode, Version};
use http_body_util::BodyExt;
use picket_proxy::echo::{BodyDigest, PEER_IDENTITY_HEADER, pattern_body};
use picket_tests::clients::{HttpClient, body_digest, curl, described, empty, full, request};
use picket_tests::{Mesh, MeshOptions, spiffe_id};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn http1_request_reaches_app_with_caller_identity() -> Result<()> {
    let mesh = Mesh::start().await?;
    let got = curl(&["-H", "Host: orders", &mesh.outbound_url("/api/orders?id=7")]).await?;
    let seen = got.described()?;
    ensure!(got.http_version == "1.1", "{got:?}");
    ensure!(seen.app == "orders", "{seen:?}");
    ensure!(seen.path == "/api/orders?id=7", "{seen:?}");
    ensure!(
        seen.peer_identity == Some(spiffe_id("shop", "frontend")),
        "{seen:?}"
    );
    Ok(())
}

#[tokio::test]
async fn client_supplied_identity_header_is_overwritten() -> Result<()> {
    let mesh = Mesh::start().await?;
    let forged = format!("{PEER_IDENTITY_HEADER}: {}", spiffe_id("shop", "admin"));
    let got = curl(&["-H", "Host: orders", "-H", &forged, &mesh.outbound_url("/")]).await?;
    let seen = got.described()?;
    let values: Vec<&str> = seen
        .headers
        .iter()
        .filter(|(name, _)| name == PEER_IDENTITY_HEADER)
        .map(|(_, value)| value.as_str())
        .collect();
    let frontend = spiffe_id("shop", "frontend");
    ensure!(
        values == [frontend.as_str()],
        "the app saw identity headers {values:?}"
    );
    Ok(())
}

#[tokio::test]
async fn http2_prior_knowledge_request_reaches_app() -> Result<()> {
    let mesh = Mesh::start().await?;
    let url = mesh.outbound_url("/h2?x=1");
    let got = curl(&["--http2-prior-knowledge", "-H", "Host: orders", &url]).await?;
    let seen = got.described()?;
    ensure!(
        got.http_version == "2",
        "curl spoke HTTP/{}",
        got.http_version
    );
    ensure!(seen.path == "/h2?x=1", "{seen:?}");
    ensure!(
        seen.peer_identity == Some(spiffe_id("shop", "frontend")),
        "{seen:?}"
    );
    Ok(())
}

#[tokio::test]
async fn grpc_unary_call_keeps_trailers() -> Result<()> {
    let mesh = Mesh::start().await?;
    let message = b"\x00\x00\x00\x00\x05hello";
    let mut req = request(
        Method::POST,
        Version::HTTP_2,
        "orders",
        "/grpc.Echo/Unary",
        full(Bytes::from_static(message)),
    )?;
    req.headers_mut()
        .insert("content-type", "application/grpc".parse()?);
    req.headers_mut().insert("te", "trailers".parse()?);

    let mut client = HttpClient::connect(mesh.outbound(), Version::HTTP_2).await?;
    let resp = client.send(req).await?;
    ensure!(resp.status() == StatusCode::OK, "status {}", resp.status());
    let body = resp.into_body().collect().await?;
    let trailers = body.trailers().cloned().unwrap_or_default();
    ensure!(body.to_bytes() == message[..], "the echoed message differs");
    ensure!(
        trailers.get("grpc-status").is_some_and(|v| v == "0"),
        "trailers: {trailers:?}"
    );
    ensure!(
        trailers.get("x-echo-trailer").is_some_and(|v| v == "yes"),
        "trailers: {trailers:?}"
    );
    Ok(())
}

#[tokio::test]
async fn opaque_tcp_is_carried_both_ways() -> Result<()> {
    let mesh = Mesh::start_with(MeshOptions {
        tcp: true,
        ..MeshOptions::default()
    })
    .await?;
    let payload: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 253) as u8).collect();
    let stream = tokio::net::TcpStream::connect(mesh.frontend.upstream("orders")?).await?;
    let (mut rd, mut wr) = stream.into_split();
    let send = async {
        wr.write_all(&payload).await?;
        wr.shutdown().await
    };
    let mut echoed = Vec::new();
    let (sent, received) = tokio::join!(send, rd.read_to_end(&mut echoed));
    sent?;
    received?;
    ensure!(
        echoed == payload,
        "echoed {} bytes, sent {}",
        echoed.len(),
        payload.len()
    );
    Ok(())
}

#[tokio::test]
async fn streams_64_mib_each_way_in_bounded_memory() -> Result<()> {
    const BODY: u64 = 64 * MIB;
    const MAX_GROWTH_KIB: u64 = 32 * 1024;
    let mesh = Mesh::start().await?;
    let mut client = HttpClient::connect(mesh.outbound(), Version::HTTP_11).await?;
    // Warm up connection pools and buffers before taking the baseline.
    described(
        client
            .send(request(
                Method::GET,
                Version::HTTP_11,
                "orders",
                "/",
                empty(),
            )?)
            .await?,
    )
    .await?;
    let baseline = [mesh.frontend.rss_kib()?, mesh.orders.rss_kib()?];

    let path = format!("/stream?bytes={BODY}");
    let down = client
        .send(request(
            Method::GET,
            Version::HTTP_11,
            "orders",
            &path,
            empty(),
        )?)
        .await?;
    ensure!(
        down.status() == StatusCode::OK,
        "download answered {}",
        down.status()
    );
    ensure!(
        body_digest(down).await? == BodyDigest::of_pattern(BODY),
        "download corrupted"
    );

    let up = request(
        Method::POST,
        Version::HTTP_11,
        "orders",
        "/upload",
        pattern_body(BODY),
    )?;
    let seen = described(client.send(up).await?).await?;
    let (bytes, sha256) = BodyDigest::of_pattern(BODY);
    ensure!(
        seen.body_bytes == bytes && seen.body_sha256 == sha256,
        "upload corrupted: {seen:?}"
    );

    for (sidecar, before) in [&mesh.frontend, &mesh.orders].into_iter().zip(baseline) {
        let peak = sidecar.peak_rss_kib()?;
        ensure!(
            peak.saturating_sub(before) < MAX_GROWTH_KIB,
            "{} grew from {before} KiB to a peak of {peak} KiB while streaming {BODY} bytes",
            sidecar.spiffe_id()
        );
    }
    Ok(())
}
