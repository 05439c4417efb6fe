//! Kubernetes without a cluster: the chart rendered and linted by the real Helm engine, every
//! manifest checked against the Kubernetes schemas, `picket inject` run as a user would, the
//! admission webhook and the CA's TokenReview attestation exercised over real HTTPS.
//!
//! The tools come from `scripts/install-k8s-test-deps` (pinned, in [`TOOLS_DIR`]); a test that
//! needs one fails, never skips, when it is missing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

use crate::ca::TRUST_DOMAIN;
use crate::process::{Daemon, output, picket, picket_bin, run_ok};
use crate::wait::COMMAND_TIMEOUT;

/// Where `scripts/install-k8s-test-deps` puts `helm-sdk` and `kubernetes-validate`.
pub const TOOLS_DIR: &str = "/opt/picket-k8s-tools/bin";
/// The Kubernetes version manifests are validated against.
pub const KUBERNETES_VERSION: &str = "1.30.0";

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts").join("picket")
}

/// A file under `tests/golden/`.
pub fn golden_path(relative: &str) -> PathBuf {
    repo_root().join("tests").join("golden").join(relative)
}

fn tool(name: &str) -> Result<PathBuf> {
    let path = Path::new(TOOLS_DIR).join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: run scripts/install-k8s-test-deps (scripts/test does); \
             the Kubernetes tests never skip",
            path.display()
        );
    }
    Ok(path)
}

/// `helm template` of the chart with `values` (a file), by the real Helm engine: one
/// multi-document YAML stream.
pub async fn helm_template(values: &Path) -> Result<String> {
    run_ok(
        Command::new(tool("helm-sdk")?)
            .arg("template")
            .arg(chart_dir())
            .arg("--values")
            .arg(values)
            .args(["--name", "picket", "--namespace", "picket"])
            .kill_on_drop(true),
    )
    .await
}

/// `helm template`, expected to fail; returns what Helm said.
pub async fn helm_template_error(values: &Path) -> Result<String> {
    let out = output(
        Command::new(tool("helm-sdk")?)
            .arg("template")
            .arg(chart_dir())
            .arg("--values")
            .arg(values)
            .kill_on_drop(true),
    )
    .await?;
    if out.status.success() {
        bail!("helm template succeeded with {}", values.display());
    }
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `helm lint --strict` of the chart with `values`; fails on any finding above INFO.
pub async fn helm_lint(values: &Path) -> Result<()> {
    run_ok(
        Command::new(tool("helm-sdk")?)
            .arg("lint")
            .arg(chart_dir())
            .arg("--values")
            .arg(values)
            .args(["--kube-version", &format!("v{KUBERNETES_VERSION}")])
            .kill_on_drop(true),
    )
    .await
    .map(drop)
}

/// Validates every document of `yaml` with `kubernetes-validate --strict` against
/// [`KUBERNETES_VERSION`]; `what` names the input in the error.
pub async fn kubernetes_validate(what: &str, yaml: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, yaml)?;
    let out = output(
        Command::new(tool("kubernetes-validate")?)
            .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
            .arg(&file)
            .kill_on_drop(true),
    )
    .await?;
    if !out.status.success() {
        bail!(
            "kubernetes-validate refused {what}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Every document of a YAML stream, read as `picket inject` reads them.
pub fn documents(yaml: &str) -> Result<Vec<Value>> {
    Ok(picket_k8s::inject::parse_manifests("yaml", yaml)?)
}

/// `value` as one YAML document, printed as `picket inject` prints.
pub fn print_yaml(value: &Value) -> Result<String> {
    Ok(picket_k8s::inject::print_manifests(std::slice::from_ref(
        value,
    ))?)
}

/// What one `picket inject` run printed.
#[derive(Debug)]
pub struct Injected {
    /// Whether it exited 0.
    pub success: bool,
    /// The manifests.
    pub stdout: String,
    /// One line per workload, or the error.
    pub stderr: String,
}

/// Runs `picket inject <args>` with `input` on standard input.
pub async fn picket_inject(args: &[&str], input: &str) -> Result<Injected> {
    let mut child = Command::new(picket_bin()?)
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run picket inject")?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    // A run refused at argument parsing exits without reading: that is its answer.
    if let Err(e) = stdin.write_all(input.as_bytes()).await
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e.into());
    }
    drop(stdin);
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .context("picket inject did not finish")??;
    Ok(Injected {
        success: out.status.success(),
        stdout: String::from_utf8(out.stdout)?,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs `picket inject <args>` on `input` and requires success.
pub async fn picket_inject_ok(args: &[&str], input: &str) -> Result<String> {
    let injected = picket_inject(args, input).await?;
    if !injected.success {
        bail!("picket inject {args:?} failed:\n{}", injected.stderr);
    }
    Ok(injected.stdout)
}

/// Compares `actual` with the golden file `tests/golden/<relative>`. On a difference the
/// actual output is written under `target/golden-actual/` and the error says how to accept it
/// (copy it over the golden file, then review the diff).
pub fn assert_golden(relative: &str, actual: &str) -> Result<()> {
    let path = golden_path(relative);
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected == actual {
        return Ok(());
    }
    let saved = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .context("the test executable is not under target/<profile>/deps")?
        .join("golden-actual")
        .join(relative);
    if let Some(dir) = saved.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&saved, actual)?;
    let first = expected
        .lines()
        .zip(actual.lines())
        .position(|(e, a)| e != a)
        .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
    bail!(
        "{} differs from the output at line {}:\n  golden: {:?}\n  actual: {:?}\n\
         to accept the new output: cp {} {}",
        path.display(),
        first + 1,
        expected.lines().nth(first),
        actual.lines().nth(first),
        saved.display(),
        path.display(),
    );
}

/// A CA whose API serves `/v1/server-certificates` to `ns/picket/sa/picket-injector` for
/// `INJECTOR_HOST`, and (with `kube`) reviews service-account tokens with a test double.
#[derive(Debug)]
pub struct KubeCa {
    dir: TempDir,
    listen: SocketAddr,
    _daemon: Daemon,
}

/// The DNS name the webhook's certificate carries in these tests.
pub const INJECTOR_HOST: &str = "picket-injector.picket.svc";
/// The webhook's identity in these tests.
pub const INJECTOR_IDENTITY: &str = "ns/picket/sa/picket-injector";

#[derive(Debug, Deserialize)]
struct Ready {
    listen: SocketAddr,
}

/// How the CA reaches the TokenReview API.
#[derive(Debug)]
pub struct KubeApi<'a> {
    /// The API server's URL.
    pub url: &'a str,
    /// Its CA certificate, PEM.
    pub ca_pem: &'a str,
    /// The CA's own service-account token.
    pub own_token: &'a str,
}

impl KubeCa {
    /// Initialises and serves a CA for [`TRUST_DOMAIN`], reviewing tokens with `kube` if given.
    pub async fn start(kube: Option<KubeApi<'_>>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let state = dir.path().join("state");
        run_ok(
            picket()?
                .args(["ca", "init", "--trust-domain", TRUST_DOMAIN, "--state-dir"])
                .arg(&state),
        )
        .await?;
        let bundle = run_ok(picket()?.args(["ca", "bundle", "--state-dir"]).arg(&state)).await?;
        std::fs::write(dir.path().join("bundle.pem"), bundle)?;
        let ready_file = dir.path().join("ca-ready.json");
        let mut cmd = picket()?;
        cmd.args(["ca", "serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&state)
            .arg("--ready-file")
            .arg(&ready_file)
            .arg("--server-name")
            .arg(format!("{INJECTOR_IDENTITY}={INJECTOR_HOST}"));
        if let Some(kube) = kube {
            std::fs::write(dir.path().join("kube-ca.pem"), kube.ca_pem)?;
            std::fs::write(dir.path().join("own-token"), kube.own_token)?;
            cmd.args(["--kube-api", kube.url, "--kube-ca-file"])
                .arg(dir.path().join("kube-ca.pem"))
                .arg("--kube-token-file")
                .arg(dir.path().join("own-token"));
        }
        let mut daemon = Daemon::spawn("ca", cmd, dir.path())?;
        let ready: Ready = daemon.wait_ready(&ready_file).await?;
        Ok(Self {
            dir,
            listen: ready.listen,
            _daemon: daemon,
        })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.listen)
    }

    /// The trust bundle file.
    pub fn bundle_path(&self) -> PathBuf {
        self.dir.path().join("bundle.pem")
    }

    /// A file holding a join token for `identity` good for `uses` certificates.
    pub async fn token_file(&self, identity: &str, uses: u32) -> Result<PathBuf> {
        let token = run_ok(
            picket()?
                .args(["ca", "token", "create", "--state-dir"])
                .arg(self.dir.path().join("state"))
                .args(["--identity", identity, "--uses", &uses.to_string()]),
        )
        .await?;
        let path = self
            .dir
            .path()
            .join(format!("{}.token", identity.replace('/', "_")));
        std::fs::write(&path, token.trim())?;
        Ok(path)
    }
}

/// `picket injector serve` on a loopback port, with a server certificate from `ca`.
#[derive(Debug)]
pub struct TestInjector {
    listen: SocketAddr,
    daemon: Daemon,
    _dir: TempDir,
}

impl TestInjector {
    /// Starts the webhook with extra settings `args` and waits until it serves.
    pub async fn start(ca: &KubeCa, args: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let token = ca.token_file(INJECTOR_IDENTITY, 5).await?;
        let ready_file = dir.path().join("ready.json");
        let mut cmd = picket()?;
        cmd.args(["injector", "serve", "--listen", "127.0.0.1:0"])
            .args(["--ca-url", &ca.url()])
            .arg("--trust-bundle-file")
            .arg(ca.bundle_path())
            .arg("--token-file")
            .arg(token)
            .arg("--ready-file")
            .arg(&ready_file)
            .args(args);
        let mut daemon = Daemon::spawn("injector", cmd, dir.path())?;
        let ready: Ready = daemon.wait_ready(&ready_file).await?;
        Ok(Self {
            listen: ready.listen,
            daemon,
            _dir: dir,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// The webhook's log so far.
    pub fn log(&self) -> String {
        self.daemon.log_text()
    }

    /// POSTs `review` to `path` (`/inject`, `/validate`) over HTTPS as the API server would
    /// (the webhook's certificate verified by its Service name against `ca`'s bundle), and
    /// returns the answer; anything but a 200 is an error.
    pub async fn review(&self, ca: &KubeCa, path: &str, review: &Value) -> Result<Value> {
        let dir = tempfile::tempdir()?;
        let body = dir.path().join("review.json");
        std::fs::write(&body, serde_json::to_vec(review)?)?;
        let port = self.listen.port();
        let resolve = format!("{INJECTOR_HOST}:{port}:127.0.0.1");
        let url = format!("https://{INJECTOR_HOST}:{port}{path}");
        let bundle = ca.bundle_path();
        let data = format!("@{}", body.display());
        let answer = crate::clients::curl(&[
            "--cacert",
            bundle.to_str().context("bundle path")?,
            "--resolve",
            &resolve,
            "--tlsv1.3",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &data,
            &url,
        ])
        .await?;
        anyhow::ensure!(
            answer.status == 200,
            "webhook answered {answer:?}\n{}",
            self.log()
        );
        Ok(serde_json::from_str(&answer.body)?)
    }
}

/// An `AdmissionReview` (`admission.k8s.io/v1`) asking to create `pod` in `namespace`.
pub fn admission_review(uid: &str, namespace: &str, operation: &str, pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    })
}
