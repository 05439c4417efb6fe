//! `TestCa`: the embedded CA as a child process (`picket ca init` then `picket ca serve`), plus
//! helpers to mint join tokens and certificates from it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use picket_ca::api::CertificateResponse;
use picket_ca::client::CaClient;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Deserialize;
use tempfile::TempDir;

use crate::process::{Daemon, picket, run_ok};

/// The trust domain every test CA is created with.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// `spiffe://cluster.local/ns/<namespace>/sa/<service_account>`.
pub fn spiffe_id(namespace: &str, service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
}

/// A running CA with its state in a temporary directory.
#[derive(Debug)]
pub struct TestCa {
    dir: TempDir,
    listen: SocketAddr,
    names: Vec<String>,
    daemon: Option<Daemon>,
}

#[derive(Debug, Deserialize)]
struct CaReady {
    listen: SocketAddr,
}

impl TestCa {
    /// Initialises a CA for [`TRUST_DOMAIN`] with default settings and starts serving it.
    pub async fn start() -> Result<Self> {
        Self::start_with(&[]).await
    }

    /// Like [`TestCa::start`], with extra `picket ca init` arguments such as
    /// `["--leaf-ttl", "60s"]`.
    pub async fn start_with(init_args: &[&str]) -> Result<Self> {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), init_args).await
    }

    /// A CA serving on `listen` (port 0 picks one), e.g. a bridge address that test network
    /// namespaces can reach.
    pub async fn start_at(listen: SocketAddr, init_args: &[&str]) -> Result<Self> {
        Self::start_at_with_names(listen, &[], init_args).await
    }

    /// [`TestCa::start_at`] with extra names (`--san`) on the CA's serving certificate, e.g.
    /// the IPv4 and IPv6 bridge addresses of a CA listening on `[::]` for both families.
    pub async fn start_at_with_names(
        listen: SocketAddr,
        names: &[String],
        init_args: &[&str],
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let state = dir.path().join("state");
        run_ok(
            picket()?
                .args(["ca", "init", "--trust-domain", TRUST_DOMAIN, "--state-dir"])
                .arg(&state)
                .args(init_args),
        )
        .await?;
        let bundle = run_ok(picket()?.args(["ca", "bundle", "--state-dir"]).arg(&state)).await?;
        if !bundle.contains("-----BEGIN CERTIFICATE-----") {
            bail!("`picket ca bundle` printed no certificate:\n{bundle}");
        }
        std::fs::write(dir.path().join("trust-bundle.pem"), bundle)?;
        let mut ca = Self {
            dir,
            listen,
            names: names.to_vec(),
            daemon: None,
        };
        ca.serve().await?;
        Ok(ca)
    }

    /// Starts `picket ca serve` on the current listen address and waits until it is ready.
    async fn serve(&mut self) -> Result<()> {
        let ready_file = self.dir.path().join("ca-ready.json");
        let _ = std::fs::remove_file(&ready_file);
        let mut cmd = picket()?;
        cmd.args(["ca", "serve", "--state-dir"])
            .arg(self.state_dir())
            .arg("--listen")
            .arg(self.listen.to_string())
            .arg("--ready-file")
            .arg(&ready_file);
        for name in &self.names {
            cmd.arg("--san").arg(name);
        }
        let mut daemon = Daemon::spawn("ca", cmd, self.dir.path())?;
        let ready: CaReady = daemon.wait_ready(&ready_file).await?;
        self.listen = ready.listen;
        self.daemon = Some(daemon);
        Ok(())
    }

    /// Kills the CA process (as a crash would); its state stays.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.kill().await?;
        }
        Ok(())
    }

    /// Stops the CA if it runs and starts it again from the same state, on the same address
    /// so that sidecars configured with [`TestCa::url`] reach it again.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.serve().await
    }

    /// The process id of the running CA, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Daemon::pid)
    }

    /// What the running CA process has logged so far (empty when it is stopped).
    pub fn log_text(&self) -> String {
        self.daemon
            .as_ref()
            .map(Daemon::log_text)
            .unwrap_or_default()
    }

    /// The CA's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `https://IP:PORT` of the CA API.
    pub fn url(&self) -> String {
        format!("https://{}", self.listen)
    }

    /// `https://IP:PORT` of the CA API reached at `ip` (one of its names), on its port.
    pub fn url_at(&self, ip: std::net::IpAddr) -> String {
        format!("https://{}", SocketAddr::new(ip, self.listen.port()))
    }

    /// A PEM file with the trust bundle, as printed by `picket ca bundle` at start.
    pub fn bundle_path(&self) -> PathBuf {
        self.dir.path().join("trust-bundle.pem")
    }

    /// The trust bundle, PEM.
    pub fn bundle_pem(&self) -> Result<String> {
        read(&self.bundle_path())
    }

    /// A single-use join token for `identity` (`ns/<namespace>/sa/<service-account>`).
    pub async fn token(&self, identity: &str) -> Result<String> {
        self.token_with(identity, &[]).await
    }

    /// A join token with extra `picket ca token create` arguments (`--ttl 5m`, `--uses 2`).
    pub async fn token_with(&self, identity: &str, extra: &[&str]) -> Result<String> {
        let out = run_ok(
            picket()?
                .args(["ca", "token", "create", "--state-dir"])
                .arg(self.state_dir())
                .args(["--identity", identity])
                .args(extra),
        )
        .await?;
        let token = out.trim();
        if token.is_empty() || token.contains(char::is_whitespace) {
            bail!("`picket ca token create` printed {out:?}, not one token");
        }
        Ok(token.to_owned())
    }

    /// A client of the CA API that trusts this CA's bundle.
    pub fn client(&self) -> Result<CaClient> {
        CaClient::new(&self.url(), self.bundle_pem()?.as_bytes())
            .context("cannot build the CA client")
    }

    /// Mints a token for `identity` and has the CA issue a certificate for a fresh key.
    pub async fn issue(&self, identity: &str) -> Result<Svid> {
        let token = self.token(identity).await?;
        let key = rcgen::KeyPair::generate()?;
        let response = self
            .client()?
            .issue_with_token(
                &csr_pem(&key, &format!("spiffe://{TRUST_DOMAIN}/{identity}"))?,
                &token,
            )
            .await?;
        Ok(Svid { key, response })
    }
}

/// A certificate signing request for `key`, asking for the URI SAN `uri`.
pub fn csr_pem(key: &rcgen::KeyPair, uri: &str) -> Result<String> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into()?)];
    Ok(params.serialize_request(key)?.pem()?)
}

/// A key pair and the CA's answer for it.
#[derive(Debug)]
pub struct Svid {
    /// The private key.
    pub key: rcgen::KeyPair,
    /// What the CA returned.
    pub response: CertificateResponse,
}

impl Svid {
    /// The certificate chain, leaf first.
    pub fn chain(&self) -> Result<Vec<CertificateDer<'static>>> {
        certs_from_pem(&self.response.chain_pem)
    }

    /// The private key, PKCS#8 DER.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key.serialize_der()).into()
    }

    /// The chain and key as rustls uses them to sign.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>> {
        let signer = picket_common::crypto::provider()
            .key_provider
            .load_private_key(self.private_key())?;
        Ok(Arc::new(CertifiedKey::new(self.chain()?, signer)))
    }
}

/// Every certificate in a PEM text.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        bail!("no certificate in PEM text");
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}
