//! `TestProxy`: a sidecar (`picket proxy`) as a child process, configured for a test.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, Result};
use http::{StatusCode, Version};
use serde::Deserialize;
use tempfile::TempDir;

use crate::ca::{TestCa, spiffe_id};
use crate::clients::{body_text, get};
use crate::process::{Daemon, picket_sidecar};

/// One outbound upstream of a sidecar.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Name, matched against `Host` on the shared outbound listener.
    pub name: String,
    /// The remote sidecar's inbound address.
    pub address: SocketAddr,
    /// The SPIFFE ID the remote sidecar must present.
    pub identity: String,
    /// `http` or `tcp`.
    pub protocol: &'static str,
}

impl Upstream {
    /// An HTTP upstream.
    pub fn http(name: &str, address: SocketAddr, identity: &str) -> Self {
        Self {
            name: name.to_owned(),
            address,
            identity: identity.to_owned(),
            protocol: "http",
        }
    }

    /// An opaque TCP upstream.
    pub fn tcp(name: &str, address: SocketAddr, identity: &str) -> Self {
        Self {
            protocol: "tcp",
            ..Self::http(name, address, identity)
        }
    }
}

/// What a sidecar is started with. Every listener binds `127.0.0.1:0`; each upstream gets its
/// own listener too.
#[derive(Debug, Clone)]
pub struct Sidecar {
    /// Kubernetes-style namespace of the workload.
    pub namespace: String,
    /// Service account of the workload.
    pub service_account: String,
    /// The local app the inbound side forwards to.
    pub app: SocketAddr,
    /// Outbound upstreams.
    pub upstreams: Vec<Upstream>,
    /// Extra top-level YAML sections (`timeouts:`, `limits:`), appended to the file.
    pub extra_yaml: String,
    /// Policy documents written to the sidecar's policy directory; by default one that admits
    /// any authenticated peer, so tests that are not about policy see plain mTLS behaviour.
    pub policy: String,
    /// Workload labels.
    pub labels: Vec<(String, String)>,
    /// The admin listener's address (`127.0.0.1:0` by default).
    pub admin_listen: String,
}

/// A policy admitting every authenticated peer to the workloads of `namespace`.
pub fn allow_authenticated(namespace: &str) -> String {
    format!(
        "apiVersion: picket.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: allow-authenticated, namespace: {namespace} }}\nspec:\n  action: ALLOW\n  rules:\n  - from: [{{ source: {{ principals: [\"*\"] }} }}]\n"
    )
}

impl Sidecar {
    /// A sidecar for `ns/<namespace>/sa/<service_account>` in front of `app`.
    pub fn new(namespace: &str, service_account: &str, app: SocketAddr) -> Self {
        Self {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            app,
            upstreams: Vec::new(),
            extra_yaml: String::new(),
            policy: allow_authenticated(namespace),
            labels: Vec::new(),
            admin_listen: "127.0.0.1:0".to_owned(),
        }
    }

    /// Binds the admin listener to `addr` (such as `0.0.0.0:0`).
    pub fn admin_listen(mut self, addr: &str) -> Self {
        addr.clone_into(&mut self.admin_listen);
        self
    }

    /// Replaces the policy documents.
    pub fn policy(mut self, yaml: &str) -> Self {
        yaml.clone_into(&mut self.policy);
        self
    }

    /// Adds a workload label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Adds an upstream.
    pub fn upstream(mut self, upstream: Upstream) -> Self {
        self.upstreams.push(upstream);
        self
    }

    /// Appends top-level YAML.
    pub fn yaml(mut self, extra: &str) -> Self {
        self.extra_yaml.push_str(extra);
        self.extra_yaml.push('\n');
        self
    }

    /// The SPIFFE ID the sidecar will hold.
    pub fn spiffe_id(&self) -> String {
        spiffe_id(&self.namespace, &self.service_account)
    }

    /// The configuration file for a sidecar that reaches `ca`.
    fn config_yaml(&self, ca: &CaAccess, token_file: &str, policy_dir: &str) -> Result<String> {
        let q = |s: &str| serde_json::to_string(s);
        let mut y = String::new();
        writeln!(y, "identity:")?;
        writeln!(y, "  trust_domain: {}", q(crate::TRUST_DOMAIN)?)?;
        writeln!(y, "  namespace: {}", q(&self.namespace)?)?;
        writeln!(y, "  service_account: {}", q(&self.service_account)?)?;
        writeln!(y, "ca:")?;
        let (first, fallbacks) = ca.urls.split_first().context("no CA URL")?;
        writeln!(y, "  url: {}", q(first)?)?;
        if !fallbacks.is_empty() {
            writeln!(y, "  fallback_urls: {}", serde_json::to_string(fallbacks)?)?;
        }
        writeln!(
            y,
            "  trust_bundle: {}",
            q(&ca.bundle.display().to_string())?
        )?;
        writeln!(y, "  join_token_file: {}", q(token_file)?)?;
        writeln!(y, "inbound:")?;
        writeln!(y, "  listen: \"127.0.0.1:0\"")?;
        writeln!(y, "  app: \"{}\"", self.app)?;
        writeln!(y, "outbound:")?;
        writeln!(y, "  listen: \"127.0.0.1:0\"")?;
        writeln!(
            y,
            "  upstreams:{}",
            if self.upstreams.is_empty() { " []" } else { "" }
        )?;
        for u in &self.upstreams {
            writeln!(y, "  - name: {}", q(&u.name)?)?;
            writeln!(y, "    listen: \"127.0.0.1:0\"")?;
            writeln!(y, "    address: \"{}\"", u.address)?;
            writeln!(y, "    identity: {}", q(&u.identity)?)?;
            writeln!(y, "    protocol: {}", u.protocol)?;
        }
        writeln!(y, "admin:")?;
        writeln!(y, "  listen: \"{}\"", self.admin_listen)?;
        writeln!(y, "workload:")?;
        writeln!(
            y,
            "  labels: {{{}}}",
            self.labels
                .iter()
                .map(|(k, v)| Ok(format!("{}: {}", q(k)?, q(v)?)))
                .collect::<Result<Vec<_>>>()?
                .join(", ")
        )?;
        if !self.extra_yaml.contains("\npolicy:") && !self.extra_yaml.starts_with("policy:") {
            writeln!(y, "policy:")?;
            writeln!(y, "  path: {}", q(policy_dir)?)?;
        }
        y.push_str(&self.extra_yaml);
        Ok(y)
    }
}

/// How a sidecar reaches its CA: `ca.url` and `ca.fallback_urls`, the trust bundle file, and
/// the credential for its first certificate (a join token or a service-account token).
#[derive(Debug, Clone)]
pub struct CaAccess {
    /// The CA URLs, the first is `ca.url`.
    pub urls: Vec<String>,
    /// The trust bundle file.
    pub bundle: std::path::PathBuf,
    /// What the token file holds.
    pub token: String,
}

/// The addresses a sidecar reports in its ready file once it holds a certificate and every
/// listener is bound.
#[derive(Debug, Clone, Deserialize)]
pub struct ProxyAddrs {
    /// mTLS listener for peers.
    pub inbound: SocketAddr,
    /// Shared plaintext outbound listener (routes by `Host`).
    pub outbound: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Per-upstream plaintext listeners, by upstream name.
    pub upstreams: HashMap<String, SocketAddr>,
}

/// A running sidecar; killed when dropped.
#[derive(Debug)]
pub struct TestProxy {
    daemon: Daemon,
    addrs: ProxyAddrs,
    spiffe_id: String,
    policy_dir: std::path::PathBuf,
    _dir: TempDir,
}

impl TestProxy {
    /// Writes the configuration and a fresh join token, starts `picket-sidecar proxy` (the
    /// pods' binary; the network-namespace pods and the failure tests run `picket proxy`), and
    /// waits for its ready file.
    pub async fn spawn(ca: &TestCa, sidecar: Sidecar) -> Result<Self> {
        let identity = format!("ns/{}/sa/{}", sidecar.namespace, sidecar.service_account);
        let access = CaAccess {
            urls: vec![ca.url()],
            bundle: ca.bundle_path(),
            token: ca.token(&identity).await?,
        };
        Self::spawn_with(&access, sidecar).await
    }

    /// Like [`TestProxy::spawn`], for a CA reached as `ca` says (several replicas, a
    /// service-account token).
    pub async fn spawn_with(ca: &CaAccess, sidecar: Sidecar) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let token_file = dir.path().join("join-token");
        std::fs::write(&token_file, &ca.token)?;
        let policy_dir = dir.path().join("policy");
        std::fs::create_dir(&policy_dir)?;
        std::fs::write(policy_dir.join("policy.yaml"), &sidecar.policy)?;
        let config = dir.path().join("sidecar.yaml");
        std::fs::write(
            &config,
            sidecar.config_yaml(
                ca,
                &token_file.display().to_string(),
                &policy_dir.display().to_string(),
            )?,
        )?;
        let ready_file = dir.path().join("ready.json");

        let mut cmd = picket_sidecar()?;
        cmd.arg("proxy")
            .arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready_file);
        let name = format!("sidecar-{}-{}", sidecar.namespace, sidecar.service_account);
        let mut daemon = Daemon::spawn(&name, cmd, dir.path())?;
        let addrs = daemon.wait_ready(&ready_file).await?;
        Ok(Self {
            daemon,
            addrs,
            spiffe_id: sidecar.spiffe_id(),
            policy_dir,
            _dir: dir,
        })
    }

    /// The sidecar's join token file (`ca.join_token_file`).
    pub fn token_file(&self) -> std::path::PathBuf {
        self._dir.path().join("join-token")
    }

    /// The directory the sidecar loads its policy from (watched for changes).
    pub fn policy_dir(&self) -> &std::path::Path {
        &self.policy_dir
    }

    /// The addresses from the ready file.
    pub fn addrs(&self) -> &ProxyAddrs {
        &self.addrs
    }

    /// The local listener of upstream `name`.
    pub fn upstream(&self, name: &str) -> Result<SocketAddr> {
        self.addrs.upstreams.get(name).copied().with_context(|| {
            format!(
                "the ready file lists no upstream {name:?}: {:?}",
                self.addrs
            )
        })
    }

    /// The SPIFFE ID this sidecar holds.
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// The child process.
    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Resident memory now (`VmRSS`), KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        self.daemon.proc_status_kib("VmRSS")
    }

    /// Peak resident memory so far (`VmHWM`), KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        self.daemon.proc_status_kib("VmHWM")
    }

    /// `GET path` on the admin listener: status and body.
    pub async fn admin_get(&self, path: &str) -> Result<(StatusCode, String)> {
        let resp = get(self.addrs.admin, Version::HTTP_11, "localhost", path).await?;
        let status = resp.status();
        Ok((status, body_text(resp).await?))
    }

    /// `GET /identity` on the admin listener, as JSON.
    pub async fn identity(&self) -> Result<serde_json::Value> {
        let (status, body) = self.admin_get("/identity").await?;
        anyhow::ensure!(
            status == StatusCode::OK,
            "/identity answered {status}: {body}"
        );
        serde_json::from_str(&body).with_context(|| format!("/identity is not JSON: {body}"))
    }

    /// The serial of the certificate the sidecar serves now, from `/identity`.
    pub async fn serial(&self) -> Result<String> {
        let identity = self.identity().await?;
        identity["serial"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("/identity has no serial: {identity}"))
    }

    /// Sends SIGTERM (graceful drain).
    pub async fn terminate(&self) -> Result<()> {
        self.daemon.signal("TERM").await
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.daemon.wait_exit(timeout).await
    }
}
