//! No life after expiry: a TLS session made with a certificate cannot be resumed once that
//! certificate has expired, neither at a sidecar's inbound listener nor at the CA (where a
//! resumed session would let an expired certificate renew itself).
//!
//! A peer with a deliberately short-lived certificate (signed with the CA's own issuer key,
//! as the CA would sign it) connects with `openssl s_client -sess_out`, which saves any
//! session ticket the server sends; once the certificate has expired it connects again with
//! `-sess_in`, which offers that ticket. Both servers send no ticket, so the second
//! connection is a full handshake and the expired certificate is refused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use picket_tests::clients::openssl_s_client;
use picket_tests::{App, Sidecar, TestCa, TestProxy, spiffe_id};
use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

/// How long the short-lived peer certificate is valid after it is made.
const PEER_LIFETIME: Duration = Duration::from_secs(4);

/// What the echo app's answers contain and nothing else does.
const APP_MARKER: &str = "\"app\":\"orders\"";

/// Files of a client identity for `openssl s_client`.
struct PeerFiles {
    leaf: PathBuf,
    issuer: PathBuf,
    key: PathBuf,
    not_after: OffsetDateTime,
}

/// A `spiffe://cluster.local/ns/shop/sa/frontend` certificate valid for [`PEER_LIFETIME`],
/// signed by the CA's issuer.
fn short_lived_peer(ca: &TestCa, dir: &Path) -> Result<PeerFiles> {
    let state = ca.state_dir();
    let issuer_pem = std::fs::read_to_string(state.join("issuer.pem"))?;
    let issuer_key = KeyPair::from_pem(&std::fs::read_to_string(state.join("issuer.key"))?)?;
    let issuer = Issuer::from_ca_cert_pem(&issuer_pem, issuer_key)?;
    let now = OffsetDateTime::now_utc();
    let not_after = now + PEER_LIFETIME;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![SanType::URI(spiffe_id("shop", "frontend").try_into()?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = now - Duration::from_secs(60);
    params.not_after = not_after;
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let files = PeerFiles {
        leaf: dir.join("leaf.pem"),
        issuer: dir.join("issuer.pem"),
        key: dir.join("key.pem"),
        not_after: not_after.truncate_to_second(),
    };
    std::fs::write(&files.leaf, cert.pem())?;
    std::fs::write(&files.issuer, issuer_pem)?;
    std::fs::write(&files.key, key.serialize_pem())?;
    Ok(files)
}

/// One `openssl s_client` call presenting the peer certificate; `session` is `-sess_out` on
/// the first call and `-sess_in` on the second. Returns stdout and stderr together.
async fn s_client(
    addr: SocketAddr,
    peer: &PeerFiles,
    session: (&str, &Path),
    extra: &[&str],
    request: &[u8],
) -> Result<String> {
    let path = |p: &Path| p.display().to_string();
    let (leaf, issuer, key, sess) = (
        path(&peer.leaf),
        path(&peer.issuer),
        path(&peer.key),
        path(session.1),
    );
    let mut args = vec![
        "-tls1_3",
        "-cert",
        &leaf,
        "-cert_chain",
        &issuer,
        "-key",
        &key,
        session.0,
        &sess,
    ];
    args.extend_from_slice(extra);
    let out = openssl_s_client(addr, &args, request).await?;
    Ok(format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Saves a session from a successful call made before expiry, then checks that no ticket was
/// sent, and that after expiry a call offering the saved session is refused.
async fn expired_peer_cannot_resume(
    what: &str,
    addr: SocketAddr,
    peer: &PeerFiles,
    dir: &Path,
    extra: &[&str],
    request: &[u8],
    success_marker: &str,
) -> Result<()> {
    let session = dir.join(format!("{what}.session"));
    let first = s_client(addr, peer, ("-sess_out", &session), extra, request).await?;
    ensure!(
        first.contains(success_marker),
        "{what}: the first connection, made before expiry, failed:\n{first}"
    );
    ensure!(
        !first.contains("New Session Ticket arrived"),
        "{what}: the server sent a session ticket:\n{first}"
    );
    ensure!(
        OffsetDateTime::now_utc() < peer.not_after,
        "{what}: the certificate expired before the first connection finished; the test \
         machine is too slow for a {PEER_LIFETIME:?} certificate"
    );

    // Wait for the clock (not for the server): the certificate's end of validity, plus one
    // second for the whole-second resolution of certificate times.
    let expired_at = peer.not_after + Duration::from_secs(1);
    let left = expired_at - OffsetDateTime::now_utc();
    if left.is_positive() {
        tokio::time::sleep(left.try_into().context("negative wait")?).await;
    }

    // s_client writes the session file only when a session can be resumed; offer it if
    // there is one, so a server that had kept one is caught resuming it.
    let second = if session.exists() {
        s_client(addr, peer, ("-sess_in", &session), extra, request).await?
    } else {
        let fresh = dir.join(format!("{what}.second.session"));
        s_client(addr, peer, ("-sess_out", &fresh), extra, request).await?
    };
    ensure!(
        !second.contains(success_marker) && !second.contains("Reused, TLS"),
        "{what}: a connection made after the certificate expired succeeded:\n{second}"
    );
    ensure!(
        second.to_lowercase().contains("certificate expired"),
        "{what}: the connection after expiry failed, but not for the expired certificate:\n\
         {second}"
    );
    Ok(())
}

#[tokio::test]
async fn expired_certificate_cannot_resume_a_session() -> Result<()> {
    let ca = TestCa::start().await?;
    let app = App::http("orders").await?;
    let orders = TestProxy::spawn(&ca, Sidecar::new("shop", "orders", app.addr())).await?;
    let dir = tempfile::tempdir()?;

    // Both servers are asked with the same certificate, one after the other, within its
    // lifetime; then both are asked again after it expired.
    let peer = short_lived_peer(&ca, dir.path())?;
    let inbound = orders.addrs().inbound;
    let ca_addr: SocketAddr = ca
        .url()
        .trim_start_matches("https://")
        .parse()
        .context("CA URL")?;
    let (inbound_run, ca_run) = tokio::join!(
        expired_peer_cannot_resume(
            "inbound",
            inbound,
            &peer,
            dir.path(),
            &[],
            b"GET / HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n",
            APP_MARKER,
        ),
        expired_peer_cannot_resume(
            "ca",
            ca_addr,
            &peer,
            dir.path(),
            &["-alpn", "http/1.1"],
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 200",
        ),
    );
    inbound_run?;
    ca_run?;
    Ok(())
}
