//! Who may talk to whom: the inbound side accepts only mesh certificates of its trust domain,
//! and the outbound side accepts only the peer identity it expects.

use std::net::SocketAddr;

use anyhow::{Result, ensure};
use http::Version;
use picket_proxy::echo::Description;
use picket_tests::clients::{HttpClient, curl, described, request, tls_client_config, tls_connect};
use picket_tests::{App, Mesh, Sidecar, TestCa, TestProxy, Upstream, spiffe_id};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A plain HTTP/1.1 request the inbound must never pass to the app unauthenticated.
const REQUEST: &[u8] = b"GET /secret HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n";

/// What the echo app's answers contain and nothing else does.
const APP_MARKER: &str = "\"app\":\"orders\"";

/// Calls the inbound listener directly over mTLS with `identity`, as a peer sidecar would
/// (ALPN h2), and returns what the app saw.
async fn call_inbound(
    inbound: SocketAddr,
    identity: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
) -> Result<Description> {
    let tls = tls_connect(inbound, tls_client_config(Some(identity), &[b"h2"])?).await?;
    let mut client = HttpClient::handshake(tls, Version::HTTP_2).await?;
    let req = request(
        http::Method::GET,
        Version::HTTP_2,
        "orders",
        "/",
        picket_tests::clients::empty(),
    )?;
    described(client.send(req).await?).await
}

#[tokio::test]
async fn inbound_refuses_plaintext_http() -> Result<()> {
    let mesh = Mesh::start().await?;
    let url = format!("http://{}/secret", mesh.orders.addrs().inbound);
    let got = curl(&["-H", "Host: orders", &url]).await?;
    ensure!(
        got.status != 200 && !got.body.contains(APP_MARKER),
        "plaintext got through: {got:?}"
    );
    Ok(())
}

#[tokio::test]
async fn inbound_refuses_tls_client_without_certificate() -> Result<()> {
    let mesh = Mesh::start().await?;
    let inbound = mesh.orders.addrs().inbound;

    // Control: the same openssl call with a mesh certificate reaches the app, so the refusal
    // below is the missing certificate and nothing else.
    let svid = mesh.ca.issue("ns/shop/sa/frontend").await?;
    let dir = tempfile::tempdir()?;
    // `-cert` sends only the leaf; the issuer goes in `-cert_chain`.
    const END: &str = "-----END CERTIFICATE-----";
    let (leaf, issuers) = svid
        .response
        .chain_pem
        .split_once(END)
        .ok_or_else(|| anyhow::anyhow!("no certificate in the chain"))?;
    let files = [
        ("leaf.pem", format!("{leaf}{END}\n")),
        ("issuers.pem", issuers.to_owned()),
        ("key.pem", svid.key.serialize_pem()),
    ];
    let mut paths = Vec::new();
    for (name, pem) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, pem)?;
        paths.push(path.display().to_string());
    }
    let args = [
        "-cert",
        &paths[0],
        "-cert_chain",
        &paths[1],
        "-key",
        &paths[2],
    ];
    let with_cert = s_client(inbound, &args).await?;
    ensure!(
        with_cert.contains(APP_MARKER),
        "a mesh client did not reach the app:\n{with_cert}"
    );

    let without = s_client(inbound, &[]).await?;
    ensure!(
        !without.contains(APP_MARKER),
        "a client without certificate reached the app:\n{without}"
    );
    Ok(())
}

async fn s_client(addr: SocketAddr, extra: &[&str]) -> Result<String> {
    let out = picket_tests::clients::openssl_s_client(addr, extra, REQUEST).await?;
    Ok(format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[tokio::test]
async fn inbound_refuses_certificate_from_foreign_trust_domain() -> Result<()> {
    let mesh = Mesh::start().await?;
    let inbound = mesh.orders.addrs().inbound;

    let svid = mesh.ca.issue("ns/shop/sa/frontend").await?;
    let seen = call_inbound(inbound, (svid.chain()?, svid.private_key())).await?;
    ensure!(
        seen.peer_identity == Some(spiffe_id("shop", "frontend")),
        "{seen:?}"
    );

    let foreign = foreign_svid("spiffe://evil.example/ns/shop/sa/frontend")?;
    let refused = call_inbound(inbound, foreign).await;
    ensure!(
        refused.is_err(),
        "a foreign certificate reached the app: {refused:?}"
    );
    Ok(())
}

/// A certificate chain for `uri` from a throwaway CA that no sidecar trusts.
fn foreign_svid(uri: &str) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let root_key = rcgen::KeyPair::generate()?;
    let mut root = rcgen::CertificateParams::new(Vec::<String>::new())?;
    root.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let root_cert = root.self_signed(&root_key)?;
    let issuer = rcgen::Issuer::new(root, root_key);

    let leaf_key = rcgen::KeyPair::generate()?;
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new())?;
    leaf.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into()?)];
    leaf.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    let chain = vec![leaf_cert.der().clone(), root_cert.der().clone()];
    Ok((
        chain,
        PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
    ))
}

#[tokio::test]
async fn outbound_refuses_peer_with_unexpected_identity() -> Result<()> {
    let ca = TestCa::start().await?;
    let app = App::http("payments").await?;
    let payments = TestProxy::spawn(&ca, Sidecar::new("shop", "payments", app.addr())).await?;
    // frontend believes `orders` lives where the payments sidecar listens.
    let upstream = Upstream::http(
        "orders",
        payments.addrs().inbound,
        &spiffe_id("shop", "orders"),
    );
    let frontend = TestProxy::spawn(
        &ca,
        Sidecar::new("shop", "frontend", picket_tests::closed_port()?).upstream(upstream),
    )
    .await?;

    let url = format!("http://{}/", frontend.addrs().outbound);
    let got = curl(&["-H", "Host: orders", &url]).await?;
    ensure!(got.status == 503, "expected 503, got {got:?}");
    ensure!(
        !got.body.contains("\"app\""),
        "the payments app answered: {got:?}"
    );
    Ok(())
}
