//! The CA as a process: `picket ca init|serve|token|bundle` and its HTTPS API.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Result, ensure};
use picket_ca::client::ClientError;
use picket_tests::ca::{Svid, csr_pem};
use picket_tests::clients::curl;
use picket_tests::process::{output, picket};
use picket_tests::{TRUST_DOMAIN, TestCa, spiffe_id};

const FRONTEND: &str = "ns/shop/sa/frontend";

fn assert_rejected(result: Result<impl std::fmt::Debug, ClientError>, status: u16) -> Result<()> {
    match result {
        Err(ClientError::Rejected { status: got, .. }) if got == status => Ok(()),
        other => anyhow::bail!("expected a {status} rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn issues_svid_for_join_token_over_https() -> Result<()> {
    let ca = TestCa::start().await?;
    let svid = ca.issue(FRONTEND).await?;

    let expected = spiffe_id("shop", "frontend");
    ensure!(svid.response.spiffe_id == expected, "{:?}", svid.response);
    let chain = svid.chain()?;
    ensure!(
        chain.len() >= 2,
        "the chain should hold the leaf and its issuer"
    );
    let leaf = picket_ca::svid::inspect_leaf(&chain[0])?;
    ensure!(leaf.id.to_string() == expected, "leaf carries {}", leaf.id);
    ensure!(
        leaf.serial_hex == svid.response.serial,
        "serial differs from the answer"
    );
    ensure!(
        svid.response.trust_bundle_pem.trim() == ca.bundle_pem()?.trim(),
        "the issued trust bundle differs from `picket ca bundle`"
    );
    Ok(())
}

#[tokio::test]
async fn takes_identity_from_token_not_from_csr() -> Result<()> {
    let ca = TestCa::start().await?;
    let token = ca.token(FRONTEND).await?;
    let key = rcgen::KeyPair::generate()?;
    let csr = csr_pem(&key, &spiffe_id("shop", "orders"))?;
    // Either the mismatch is refused, or the certificate names the token's identity.
    match ca.client()?.issue_with_token(&csr, &token).await {
        Ok(issued) => ensure!(
            issued.spiffe_id == spiffe_id("shop", "frontend"),
            "{issued:?}"
        ),
        Err(ClientError::Rejected { .. }) => {}
        Err(e) => anyhow::bail!("unexpected error: {e}"),
    }
    Ok(())
}

#[tokio::test]
async fn rejects_unknown_join_token_with_401() -> Result<()> {
    let ca = TestCa::start().await?;
    let key = rcgen::KeyPair::generate()?;
    let csr = csr_pem(&key, &spiffe_id("shop", "frontend"))?;
    let result = ca
        .client()?
        .issue_with_token(&csr, "not-a-real-token")
        .await;
    assert_rejected(result, 401)
}

#[tokio::test]
async fn join_token_is_single_use_even_across_restart() -> Result<()> {
    let mut ca = TestCa::start().await?;
    let token = ca.token(FRONTEND).await?;
    let key = rcgen::KeyPair::generate()?;
    let csr = csr_pem(&key, &spiffe_id("shop", "frontend"))?;
    ca.client()?.issue_with_token(&csr, &token).await?;

    ca.restart().await?;
    let again = ca.client()?.issue_with_token(&csr, &token).await;
    assert_rejected(again, 401)
}

#[tokio::test]
async fn renews_with_current_certificate() -> Result<()> {
    let ca = TestCa::start().await?;
    let first = ca.issue(FRONTEND).await?;

    let key = rcgen::KeyPair::generate()?;
    let csr = csr_pem(&key, &spiffe_id("shop", "frontend"))?;
    let renewed = ca.client()?.renew(&csr, first.certified_key()?).await?;
    let renewed = Svid {
        key,
        response: renewed,
    };

    ensure!(
        renewed.response.spiffe_id == first.response.spiffe_id,
        "{:?}",
        renewed.response
    );
    ensure!(
        renewed.response.serial != first.response.serial,
        "renewal reused the serial"
    );
    Ok(())
}

#[tokio::test]
async fn init_writes_private_keys_readable_by_owner_only() -> Result<()> {
    let ca = TestCa::start().await?;
    let mut keys = Vec::new();
    visit_files(&ca.state_dir(), &mut |path: &Path| {
        if std::fs::read(path)?
            .windows(11)
            .any(|w| w == b"PRIVATE KEY")
        {
            keys.push((
                path.to_owned(),
                std::fs::metadata(path)?.permissions().mode() & 0o777,
            ));
        }
        Ok(())
    })?;
    ensure!(
        !keys.is_empty(),
        "no private key file found in the CA state"
    );
    for (path, mode) in keys {
        ensure!(
            mode == 0o600,
            "{} has mode {mode:o}, want 600",
            path.display()
        );
    }
    Ok(())
}

#[tokio::test]
async fn init_refuses_to_overwrite_existing_state() -> Result<()> {
    let ca = TestCa::start().await?;
    let before = ca.bundle_pem()?;
    let out = output(
        picket()?
            .args(["ca", "init", "--trust-domain", TRUST_DOMAIN, "--state-dir"])
            .arg(ca.state_dir()),
    )
    .await?;
    ensure!(
        !out.status.success(),
        "a second `ca init` succeeded on existing state"
    );
    ensure!(!out.stderr.is_empty(), "a refused `ca init` should say why");
    let bundle = picket_tests::process::run_ok(
        picket()?
            .args(["ca", "bundle", "--state-dir"])
            .arg(ca.state_dir()),
    )
    .await?;
    ensure!(
        bundle.trim() == before.trim(),
        "the refused init changed the trust bundle"
    );
    Ok(())
}

#[tokio::test]
async fn restart_keeps_trust_bundle() -> Result<()> {
    let mut ca = TestCa::start().await?;
    let before = ca.client()?.trust_bundle().await?;
    ca.restart().await?;
    let after = ca.client()?.trust_bundle().await?;
    ensure!(
        before == after,
        "the served trust bundle changed across a restart"
    );
    ensure!(
        after.trim() == ca.bundle_pem()?.trim(),
        "served bundle differs from `ca bundle`"
    );
    // A certificate issued after the restart still chains to the same roots.
    let svid = ca.issue(FRONTEND).await?;
    ensure!(svid.response.trust_bundle_pem.trim() == ca.bundle_pem()?.trim());
    Ok(())
}

fn visit_files(dir: &Path, f: &mut impl FnMut(&Path) -> Result<()>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            visit_files(&path, f)?;
        } else {
            f(&path)?;
        }
    }
    Ok(())
}

/// The CA API answers with the right status over HTTP/1.1 and HTTP/2 alike, with real curl:
/// an answer that does not need the body (no credential, wrong path) still comes after the
/// body was read, so an HTTP/2 client sees the status and not a reset stream, and a body over
/// the limit is a 413 on both versions.
#[tokio::test]
async fn api_statuses_are_the_same_over_http1_and_http2() -> Result<()> {
    let ca = TestCa::start().await?;
    let bundle = ca.bundle_path().display().to_string();
    let big = tempfile::NamedTempFile::new()?;
    std::fs::write(big.path(), vec![b'{'; 100 * 1024])?;
    let big_body = format!("@{}", big.path().display());
    let certificates = format!("{}{}", ca.url(), picket_ca::api::CERTIFICATES_PATH);
    let unknown = format!("{}/v1/nothing-here", ca.url());
    let cases: [(&str, Vec<&str>, u16); 4] = [
        (
            "a 100 KiB body",
            vec![
                "-H",
                "Authorization: Bearer x",
                "--data-binary",
                &big_body,
                &certificates,
            ],
            413,
        ),
        (
            "a body and no credential",
            vec!["--data-binary", "{\"csr\":\"x\"}", &certificates],
            401,
        ),
        (
            "a 100 KiB body to an unknown path",
            vec!["--data-binary", &big_body, &unknown],
            404,
        ),
        ("a GET of a POST endpoint", vec![&certificates], 405),
    ];
    for version in ["--http1.1", "--http2"] {
        for (what, args, want) in &cases {
            let mut all = vec![version, "--cacert", &bundle];
            all.extend(args.iter().copied());
            let got = curl(&all).await?;
            ensure!(
                got.exit_code == Some(0) && got.status == *want,
                "{what} over {version}: expected {want}, got {got:?}"
            );
            let expected_version = if version == "--http2" { "2" } else { "1.1" };
            ensure!(
                got.http_version == expected_version,
                "{what}: curl spoke HTTP/{} instead of {version}",
                got.http_version
            );
        }
    }
    Ok(())
}
