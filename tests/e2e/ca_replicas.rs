//! Two CA replicas signing with the same shared material (`picket ca init --signer-dir`, as the
//! chart's replicas do with the signer Secret), each a real `picket ca serve` reviewing
//! service-account tokens with the Kubernetes API test double. A running sidecar that knows
//! both URLs keeps renewing, and a new sidecar still gets its first certificate, while one
//! replica is stopped. Join tokens are refused by a replica with a code that sends clients to
//! their next CA URL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use picket_ca::client::{CaClient, ClientError};
use picket_ca::tokenreview::testing::Review;
use picket_tests::k8s::KubeApi;

use crate::k8s_tokenreview::{kube_api, start_double};
use picket_tests::process::{Daemon, output, picket, run_ok};
use picket_tests::proxy::allow_authenticated;
use picket_tests::{App, CaAccess, Sidecar, TRUST_DOMAIN, TestProxy, eventually};
use serde::Deserialize;

/// The shortest leaf lifetime, so the running sidecar renews within about 40 s.
const LEAF_TTL: &str = "60s";
/// A renewal at two thirds of the lifetime with jitter, and room for a retry.
const RENEWAL_TIMEOUT: Duration = Duration::from_secs(70);

#[derive(Debug, Deserialize)]
struct Ready {
    listen: std::net::SocketAddr,
}

/// One replica: its own state directory (issuance record), the shared signer directory.
struct Replica {
    daemon: Option<Daemon>,
    url: String,
}

impl Replica {
    async fn start(dir: &Path, name: &str, signer: &Path, api: &KubeApi<'_>) -> Result<Self> {
        let state = dir.join(name);
        run_ok(
            picket()?
                .args(["ca", "init", "--trust-domain", TRUST_DOMAIN, "--leaf-ttl"])
                .arg(LEAF_TTL)
                .arg("--state-dir")
                .arg(&state)
                .arg("--signer-dir")
                .arg(signer),
        )
        .await?;
        let kube_ca = dir.join("kube-ca.pem");
        let own_token = dir.join("own-token");
        std::fs::write(&kube_ca, api.ca_pem)?;
        std::fs::write(&own_token, api.own_token)?;
        let ready_file = dir.join(format!("{name}-ready.json"));
        let mut cmd = picket()?;
        cmd.args(["ca", "serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&state)
            .arg("--ready-file")
            .arg(&ready_file)
            .args(["--kube-api", api.url, "--kube-ca-file"])
            .arg(&kube_ca)
            .arg("--kube-token-file")
            .arg(&own_token);
        let log_dir = dir.join(format!("{name}-logs"));
        std::fs::create_dir_all(&log_dir)?;
        let mut daemon = Daemon::spawn(name, cmd, &log_dir)?;
        let ready: Ready = daemon.wait_ready(&ready_file).await?;
        Ok(Self {
            daemon: Some(daemon),
            url: format!("https://{}", ready.listen),
        })
    }

    async fn stop(&mut self) -> Result<()> {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.kill().await?;
        }
        Ok(())
    }

    fn log(&self) -> String {
        self.daemon
            .as_ref()
            .map(Daemon::log_text)
            .unwrap_or_default()
    }
}

/// The signing material of a CA made offline (as the operator makes it), copied into a
/// directory the way a Secret volume holds it.
async fn shared_material(dir: &Path) -> Result<PathBuf> {
    let offline = dir.join("offline-ca");
    run_ok(
        picket()?
            .args(["ca", "init", "--trust-domain", TRUST_DOMAIN, "--leaf-ttl"])
            .arg(LEAF_TTL)
            .arg("--state-dir")
            .arg(&offline),
    )
    .await?;
    let signer = dir.join("signer");
    std::fs::create_dir(&signer)?;
    for file in ["issuer.pem", "issuer.key", "bundle.pem"] {
        std::fs::copy(offline.join(file), signer.join(file))?;
    }
    Ok(signer)
}

#[tokio::test]
async fn issuance_and_renewal_continue_through_the_other_replica() -> Result<()> {
    let api = start_double(&[
        ("eyJh.orders.sig", Review::ServiceAccount("shop", "orders")),
        (
            "eyJh.frontend.sig",
            Review::ServiceAccount("shop", "frontend"),
        ),
    ])
    .await?;
    let dir = tempfile::tempdir()?;
    let signer = shared_material(dir.path()).await?;
    let bundle = signer.join("bundle.pem");
    let mut first = Replica::start(dir.path(), "ca-a", &signer, &kube_api(&api)).await?;
    let second = Replica::start(dir.path(), "ca-b", &signer, &kube_api(&api)).await?;
    let urls = vec![first.url.clone(), second.url.clone()];

    // A replica redeems no join tokens: 503 with its own code, so a client tries its next URL.
    let client = CaClient::new(&second.url, &std::fs::read(&bundle)?)?;
    let key = rcgen::KeyPair::generate()?;
    let csr = picket_tests::ca::csr_pem(&key, &format!("spiffe://{TRUST_DOMAIN}/ns/vm/sa/a"))?;
    let refused = client.issue_with_token(&csr, "a-join-token").await;
    ensure!(
        matches!(&refused, Err(ClientError::Unavailable { status: 503, message }) if message.contains("redeems no join tokens")),
        "{refused:?}"
    );
    let made = output(
        picket()?
            .args([
                "ca",
                "token",
                "create",
                "--identity",
                "ns/vm/sa/a",
                "--state-dir",
            ])
            .arg(dir.path().join("ca-b")),
    )
    .await?;
    ensure!(
        !made.status.success() && String::from_utf8_lossy(&made.stderr).contains("enrollment CA"),
        "a replica made a join token: {}",
        String::from_utf8_lossy(&made.stderr)
    );

    // A running sidecar, enrolled through the first replica.
    let orders_app = App::http("app").await?;
    let orders = TestProxy::spawn_with(
        &CaAccess {
            urls: urls.clone(),
            bundle: bundle.clone(),
            token: "eyJh.orders.sig".to_owned(),
        },
        Sidecar::new("shop", "orders", orders_app.addr()).policy(&allow_authenticated("shop")),
    )
    .await?;
    let enrolled = orders.serial().await?;
    ensure!(
        first.log().contains(&enrolled),
        "the first replica did not issue the first certificate"
    );

    // The first replica goes away (a node lost). A new workload still enrolls...
    first.stop().await?;
    let frontend_app = App::http("app").await?;
    let frontend = TestProxy::spawn_with(
        &CaAccess {
            urls,
            bundle,
            token: "eyJh.frontend.sig".to_owned(),
        },
        Sidecar::new("shop", "frontend", frontend_app.addr()),
    )
    .await
    .context("a new sidecar could not enroll with one replica stopped")?;
    let new_serial = frontend.serial().await?;
    ensure!(
        second.log().contains(&new_serial),
        "the second replica did not issue the new sidecar's certificate"
    );

    // ...and the running one renews through the other replica.
    eventually(RENEWAL_TIMEOUT, async || {
        let serial = orders.serial().await?;
        ensure!(
            serial != enrolled,
            "the running sidecar has not renewed yet"
        );
        ensure!(
            second.log().contains(&serial),
            "the renewal did not come from the second replica"
        );
        Ok(())
    })
    .await?;
    let (status, body) = orders.admin_get("/ready").await?;
    ensure!(
        status.is_success(),
        "the renewed sidecar is not ready: {body}"
    );
    Ok(())
}
