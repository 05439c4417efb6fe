//! Rotating the CA's intermediate and root while the mesh carries traffic: every stage of
//! `picket ca rotate` under continuous load, with no failed connection, no failed CA request,
//! no failed renewal and no restart of the sidecars or of the CA (the running CA takes up
//! each step from its state directory). The sidecars get the new trust bundle through their
//! trust bundle file, which is replaced as a Kubernetes ConfigMap update would (and, for the
//! last stage, after the CA switched: the bundle is swapped last).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use picket_ca::client::CaClient;
use picket_tests::process::{output, picket, run_ok};
use picket_tests::prom;
use picket_tests::{Mesh, MeshOptions, TestProxy, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, interval};

/// Leaf lifetime: the shortest the CA issues, so renewals come every ~40 s.
const LEAF_TTL: &str = "60s";
/// Longest one stage may take to reach both sidecars: a renewal at two thirds of the
/// lifetime (with jitter), or the old leaves' expiry.
const STAGE_TIMEOUT: Duration = Duration::from_secs(90);
/// Gap between two connections of the load.
const LOAD_PERIOD: Duration = Duration::from_millis(50);

/// One new connection per round through the frontend sidecar's TCP upstream: each is a new
/// sidecar-to-sidecar mTLS handshake, so each checks both certificates against both bundles
/// as they are at that moment. Runs until `stop`; returns the number of rounds or the first
/// failure.
async fn tcp_load(upstream: SocketAddr, stop: Arc<AtomicBool>) -> Result<u64> {
    let mut tick = interval(LOAD_PERIOD);
    let mut rounds = 0u64;
    while !stop.load(Ordering::Acquire) {
        tick.tick().await;
        rounds += 1;
        let payload = format!("round {rounds}");
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(upstream).await?;
            stream.write_all(payload.as_bytes()).await?;
            stream.shutdown().await?;
            let mut echoed = Vec::new();
            stream.read_to_end(&mut echoed).await?;
            anyhow::Ok(echoed)
        };
        let echoed = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .with_context(|| format!("round {rounds}: no answer within 10 s"))?
            .with_context(|| format!("round {rounds}: the connection failed"))?;
        ensure!(
            echoed == payload.as_bytes(),
            "round {rounds}: echoed {:?}",
            String::from_utf8_lossy(&echoed)
        );
    }
    Ok(rounds)
}

/// One CA API request after another (a new TLS connection each) until `stop`: the running
/// CA takes up each rotation step with no request failing. Returns the number of requests or
/// the first failure.
async fn ca_load(client: CaClient, stop: Arc<AtomicBool>) -> Result<u64> {
    let mut tick = interval(Duration::from_millis(20));
    let mut requests = 0u64;
    while !stop.load(Ordering::Acquire) {
        tick.tick().await;
        requests += 1;
        client
            .trust_bundle()
            .await
            .with_context(|| format!("CA request {requests} failed"))?;
    }
    Ok(requests)
}

/// Waits until the running CA serves the trust bundle its state directory holds (it reads
/// the directory every second), checked by a client trusting that bundle.
async fn ca_serves_state(url: &str, state: &Path, stage: &str) -> Result<()> {
    let want = std::fs::read_to_string(state.join("bundle.pem"))?;
    let client = CaClient::new(url, want.as_bytes())?;
    eventually(Duration::from_secs(10), async || {
        let served = client.trust_bundle().await?;
        ensure!(
            served == want,
            "{stage}: the CA still serves its previous trust bundle"
        );
        Ok(())
    })
    .await
}

/// How many renewals the sidecar counted as failed.
async fn failed_renewals(sidecar: &TestProxy) -> Result<f64> {
    let exposition = prom::scrape(sidecar.addrs().admin).await?;
    Ok(exposition
        .value("picket_cert_renewals_total", &[("result", "failed")])
        .unwrap_or(0.0))
}

async fn rotate(state: &Path, args: &[&str]) -> Result<String> {
    run_ok(
        picket()?
            .args(["ca", "rotate"])
            .args(args)
            .arg("--state-dir")
            .arg(state),
    )
    .await
}

/// The generation in the common name of `<state>/<file>` (`Picket issuer CA 1a2b3c4d`).
async fn generation(state: &Path, file: &str) -> Result<String> {
    let out = output(
        tokio::process::Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-in"])
            .arg(state.join(file)),
    )
    .await?;
    let subject = String::from_utf8_lossy(&out.stdout).into_owned();
    subject
        .trim()
        .rsplit_once(' ')
        .map(|(_, g)| g.to_owned())
        .filter(|g| g.len() == 8 && g.bytes().all(|b| b.is_ascii_hexdigit()))
        .with_context(|| format!("no generation in the subject of {file}: {subject:?}"))
}

/// The generation of the intermediate that signed the sidecar's current certificate.
async fn served_issuer(sidecar: &TestProxy) -> Result<String> {
    let identity = sidecar.identity().await?;
    let issuer = identity["issuer"]
        .as_str()
        .with_context(|| format!("/identity has no issuer: {identity}"))?;
    Ok(issuer.rsplit(' ').next().unwrap_or_default().to_owned())
}

/// Waits until both sidecars serve a certificate from the intermediate of generation `want`.
async fn both_issued_by(mesh: &Mesh, want: &str, stage: &str) -> Result<()> {
    for sidecar in [&mesh.frontend, &mesh.orders] {
        eventually(STAGE_TIMEOUT, async || {
            let got = served_issuer(sidecar).await?;
            ensure!(
                got == want,
                "{stage}: {} still serves a certificate of intermediate {got}, not {want}",
                sidecar.spiffe_id()
            );
            Ok(())
        })
        .await?;
    }
    Ok(())
}

/// Waits until both sidecars' data path trusts `roots` roots.
async fn both_trust(mesh: &Mesh, roots: u64, stage: &str) -> Result<()> {
    for sidecar in [&mesh.frontend, &mesh.orders] {
        eventually(STAGE_TIMEOUT, async || {
            let identity = sidecar.identity().await?;
            ensure!(
                identity["trust_bundle_roots"] == roots,
                "{stage}: {} trusts {} roots, not {roots}",
                sidecar.spiffe_id(),
                identity["trust_bundle_roots"]
            );
            Ok(())
        })
        .await?;
    }
    Ok(())
}

/// Replaces the sidecars' trust bundle file with the CA's bundle, atomically (a new file
/// renamed over the old one, as a ConfigMap volume update swaps it).
async fn publish_bundle(mesh: &Mesh) -> Result<()> {
    let bundle = run_ok(
        picket()?
            .args(["ca", "bundle", "--state-dir"])
            .arg(mesh.ca.state_dir()),
    )
    .await?;
    let path = mesh.ca.bundle_path();
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bundle)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

#[tokio::test]
async fn intermediate_and_root_rotation_under_load_fail_no_connection() -> Result<()> {
    let mesh = Mesh::start_with(MeshOptions {
        ca_init_args: vec!["--leaf-ttl".to_owned(), LEAF_TTL.to_owned()],
        tcp: true,
        ..MeshOptions::default()
    })
    .await?;
    let state = mesh.ca.state_dir();
    let pids = [mesh.frontend.pid(), mesh.orders.pid()];
    let ca_pid = mesh.ca.pid().context("the CA is not running")?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(tcp_load(
        mesh.frontend.upstream("orders")?,
        Arc::clone(&stop),
    ));
    // The CA load's trust follows the rotation as a sidecar's does: the bundle file's.
    let ca_client = mesh.ca.client()?;
    let ca_load = tokio::spawn(ca_load(ca_client.clone(), Arc::clone(&stop)));
    let started = Instant::now();

    // 1. A new intermediate under the same root; the bundle does not change.
    let first_issuer = generation(&state, "issuer.pem").await?;
    ensure!(served_issuer(&mesh.frontend).await? == first_issuer);
    rotate(&state, &["intermediate"]).await?;
    let second_issuer = generation(&state, "issuer.pem").await?;
    ensure!(
        second_issuer != first_issuer,
        "the intermediate kept its subject"
    );
    both_issued_by(&mesh, &second_issuer, "intermediate rotation").await?;

    // 2. add: a second root, in the CA's bundle and then in every sidecar's bundle file.
    let old_root = generation(&state, "root.pem").await?;
    rotate(&state, &["root", "--stage", "add"]).await?;
    let new_root = generation(&state, "root.next.pem").await?;
    ensure!(
        new_root != old_root,
        "the new root has the old root's subject"
    );
    ca_serves_state(&mesh.ca.url(), &state, "root add").await?;
    publish_bundle(&mesh).await?;
    ca_client.set_trust(std::fs::read(mesh.ca.bundle_path())?.as_slice())?;
    both_trust(&mesh, 2, "root add").await?;

    // 3. switch: the CA issues under the new root; sidecars renew through a CA whose server
    // certificate now chains to the new root.
    rotate(&state, &["root", "--stage", "switch"]).await?;
    ensure!(generation(&state, "root.pem").await? == new_root);
    let third_issuer = generation(&state, "issuer.pem").await?;
    both_issued_by(&mesh, &third_issuer, "root switch").await?;

    // 4. remove: refused while a certificate of the old root is still valid, then done; the
    // bundle file is swapped last.
    let early = output(
        picket()?
            .args(["ca", "rotate", "root", "--stage", "remove", "--state-dir"])
            .arg(&state),
    )
    .await?;
    let said = String::from_utf8_lossy(&early.stderr);
    ensure!(
        !early.status.success() && said.contains("still valid"),
        "removing the old root while its certificates are valid was not refused: {said}"
    );
    // Retried once a second (each attempt is a process) until the old leaves have expired.
    let deadline = Instant::now() + STAGE_TIMEOUT;
    while let Err(e) = rotate(&state, &["root", "--stage", "remove"]).await {
        ensure!(
            Instant::now() < deadline,
            "the old root could not be removed within {STAGE_TIMEOUT:?}: {e:#}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    ca_serves_state(&mesh.ca.url(), &state, "root remove").await?;
    publish_bundle(&mesh).await?;
    ca_client.set_trust(std::fs::read(mesh.ca.bundle_path())?.as_slice())?;
    both_trust(&mesh, 1, "root remove").await?;

    // The renewal path works with the new root alone: one more renewal on both sidecars.
    let serials = [mesh.frontend.serial().await?, mesh.orders.serial().await?];
    for (sidecar, before) in [&mesh.frontend, &mesh.orders].into_iter().zip(&serials) {
        eventually(STAGE_TIMEOUT, async || {
            ensure!(
                &sidecar.serial().await? != before,
                "{} did not renew after the old root was removed",
                sidecar.spiffe_id()
            );
            Ok(())
        })
        .await?;
    }

    stop.store(true, Ordering::Release);
    let rounds = load.await.context("the load task panicked")??;
    let ca_requests = ca_load.await.context("the CA load task panicked")??;
    ensure!(
        [mesh.frontend.pid(), mesh.orders.pid()] == pids,
        "a sidecar was restarted"
    );
    ensure!(mesh.ca.pid() == Some(ca_pid), "the CA was restarted");
    for sidecar in [&mesh.frontend, &mesh.orders] {
        let failed = failed_renewals(sidecar).await?;
        ensure!(
            failed == 0.0,
            "{}: {failed} renewal(s) failed during the rotation",
            sidecar.spiffe_id()
        );
    }
    for sidecar in [&mesh.frontend, &mesh.orders] {
        let (status, body) = sidecar.admin_get("/ready").await?;
        if !status.is_success() {
            bail!(
                "{} is not ready after the rotation: {body}",
                sidecar.spiffe_id()
            );
        }
    }
    eprintln!(
        "rotation done in {:?} with {rounds} connections and {ca_requests} CA requests, none \
         failed, the CA never restarted",
        started.elapsed()
    );
    Ok(())
}
