//! Kubelet probes through an intercepted pod: a Deployment with ordinary HTTP, TCP and gRPC
//! probes on its serving ports goes through `picket inject`; the pod (a network namespace)
//! runs the app, the iptables step with the injected arguments and a sidecar with the health
//! listener the injector rendered. A "kubelet" in the root namespace runs the rewritten probes
//! against the pod address, as the real one does. A second container has an HTTPS probe (its
//! self-signed certificate is not verified, as the kubelet does not verify it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use picket_k8s::inject::{CONFIG_ANNOTATION, HEALTH_PORT};
use picket_tests::netns::PodNet;
use picket_tests::process::{Daemon, output, picket_bin};
use picket_tests::{TestCa, eventually};
use serde_json::json;
use tokio::process::Command;

const HTTP_PORT: u16 = 8080;
const GRPC_PORT: u16 = 9000;
const HTTPS_PORT: u16 = 8443;
/// The probes' `timeoutSeconds`.
const PROBE_TIMEOUT_SECONDS: u64 = 2;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn deployment() -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{ name: orders, namespace: pods }}
spec:
  selector: {{ matchLabels: {{ app: orders }} }}
  template:
    metadata: {{ labels: {{ app: orders }} }}
    spec:
      containers:
        - name: api
          image: orders:1
          ports: [{{ name: http, containerPort: {HTTP_PORT} }}, {{ containerPort: {GRPC_PORT} }}]
          readinessProbe:
            httpGet:
              path: /ready?deep=1
              port: http
              httpHeaders: [{{ name: X-Probe, value: kubelet }}]
            timeoutSeconds: {PROBE_TIMEOUT_SECONDS}
          livenessProbe:
            tcpSocket: {{ port: {HTTP_PORT} }}
            timeoutSeconds: {PROBE_TIMEOUT_SECONDS}
          startupProbe:
            grpc: {{ port: {GRPC_PORT} }}
            timeoutSeconds: {PROBE_TIMEOUT_SECONDS}
        - name: tls
          image: orders:1
          ports: [{{ containerPort: {HTTPS_PORT} }}]
          readinessProbe:
            httpGet:
              path: /ready?deep=1
              port: {HTTPS_PORT}
              scheme: HTTPS
              httpHeaders: [{{ name: X-Probe, value: kubelet }}]
            timeoutSeconds: {PROBE_TIMEOUT_SECONDS}
"
    )
}

/// One rewritten probe as the kubelet would run it.
#[derive(Debug)]
struct KubeletProbe {
    kind: String,
    path: String,
    port: u64,
}

/// What the kubelet sees: the status code, and the body length.
async fn run_probe(pod_ip: &str, probe: &KubeletProbe) -> Result<(u16, usize)> {
    // The kubelet gives up after timeoutSeconds; allow one more second for the answer.
    let out = output(Command::new("curl").args([
        "-sS",
        "-o",
        "/dev/stderr",
        "-w",
        "%{http_code}",
        "--max-time",
        &(PROBE_TIMEOUT_SECONDS + 2).to_string(),
        &format!("http://{pod_ip}:{}{}", probe.port, probe.path),
    ]))
    .await?;
    let code: u16 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    Ok((code, out.stderr.len()))
}

async fn expect_statuses(
    pod_ip: &str,
    probes: &[KubeletProbe],
    want: &[(&str, u16)],
    when: &str,
) -> Result<()> {
    eventually(Duration::from_secs(10), async || {
        for (kind, status) in want {
            let probe = probes
                .iter()
                .find(|p| p.kind == *kind)
                .with_context(|| format!("no {kind}"))?;
            let (code, body) = run_probe(pod_ip, probe).await?;
            ensure!(
                code == *status,
                "{when}: {kind} answered {code}, expected {status}"
            );
            ensure!(
                body == 0,
                "{when}: {kind} answered with a body of {body} bytes"
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn rewritten_probes_reach_the_app_and_fail_when_it_does() -> Result<()> {
    let net = PodNet::create(1).await?;
    let pod_ip = net.pods[0].ip.to_string();
    let ca = TestCa::start_at((net.gateway(), 0).into(), &[]).await?;
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )?;

    // Inject as a user would.
    let injected = picket_tests::k8s::picket_inject_ok(&[], &deployment()).await?;
    let doc = &picket_tests::k8s::documents(&injected)?[0];
    let template = &doc["spec"]["template"];
    let mut probes = Vec::new();
    for (container, kind) in [
        (0, "readinessProbe"),
        (0, "livenessProbe"),
        (0, "startupProbe"),
        (1, "readinessProbe"),
    ] {
        let probe = &template["spec"]["containers"][container][kind];
        let get = &probe["httpGet"];
        ensure!(
            probe.get("tcpSocket").is_none() && probe.get("grpc").is_none(),
            "{kind} was not rewritten: {probe}"
        );
        let kind = if container == 0 {
            kind.to_owned()
        } else {
            format!("https {kind}")
        };
        probes.push(KubeletProbe {
            kind,
            path: get["path"].as_str().context("no path")?.to_owned(),
            port: get["port"].as_u64().context("no port")?,
        });
    }
    ensure!(probes.iter().all(|p| p.port == u64::from(HEALTH_PORT)));

    // The sidecar: the injector's rendered configuration, with this test's CA, token and
    // identity (the downward API and the projected token do that in a cluster).
    let rendered = template["metadata"]["annotations"][CONFIG_ANNOTATION]
        .as_str()
        .context("no sidecar config")?;
    let mut config = picket_tests::k8s::documents(rendered)?
        .pop()
        .context("empty config")?;
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, ca.bundle_pem()?)?;
    let token = dir.path().join("token");
    std::fs::write(&token, ca.token("ns/pods/sa/orders").await?)?;
    config["identity"] =
        json!({"trust_domain": "cluster.local", "namespace": "pods", "service_account": "orders"});
    config["ca"] = json!({"url": ca.url(), "trust_bundle": bundle, "join_token_file": token});
    config["admin"] = json!({"listen": "127.0.0.1:7191"});
    if let Some(policy) = config.get_mut("policy") {
        *policy = json!({});
    }
    let config_file = dir.path().join("sidecar.yaml");
    std::fs::write(&config_file, serde_json::to_string_pretty(&config)?)?;

    // The app, then the iptables step with the injected arguments, then the sidecar.
    let state = dir.path().join("state");
    std::fs::write(&state, "ok")?;
    let (cert, key) = (dir.path().join("app.pem"), dir.path().join("app.key"));
    let out = output(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-subj", "/CN=app", "-days", "1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    )
    .await?;
    ensure!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut app = net.exec(0, "python3");
    app.arg(fixture("probe_app.py"))
        .args(["0.0.0.0", &HTTP_PORT.to_string(), &GRPC_PORT.to_string()])
        .arg(&state)
        .arg(HTTPS_PORT.to_string())
        .arg(&cert)
        .arg(&key);
    let mut app = Daemon::spawn("probe-app", app, dir.path())?;
    app.wait_log("listening", Duration::from_secs(20)).await?;
    let init_args: Vec<String> = template["spec"]["initContainers"][0]["args"]
        .as_array()
        .context("no init args")?
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    ensure!(
        init_args.join(" ").contains(&format!("{HEALTH_PORT}")),
        "the health port is intercepted: {init_args:?}"
    );
    let out = output(
        net.exec(0, &picket_bin()?.display().to_string())
            .args(&init_args)
            .args(["--iptables", "iptables-nft"]),
    )
    .await?;
    ensure!(
        out.status.success(),
        "picket iptables: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sidecar = net.sidecar(0, &config_file, "sidecar", dir.path()).await?;

    // Healthy: every probe passes, carried to the app (the HTTP one keeps its path, query
    // and header, or the app would answer 400), with no body.
    let all_ok = [
        ("readinessProbe", 200),
        ("livenessProbe", 200),
        ("startupProbe", 200),
        ("https readinessProbe", 200),
    ];
    expect_statuses(&pod_ip, &probes, &all_ok, "healthy").await?;

    // The app's own port is still mTLS only from outside: plaintext gets no HTTP answer.
    let out = output(Command::new("curl").args([
        "-sS",
        "--max-time",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{pod_ip}:{HTTP_PORT}/ready?deep=1"),
    ]))
    .await?;
    let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(
        !out.status.success() && code == "000",
        "plaintext reached the app port from outside: exit {:?}, status {code}",
        out.status.code()
    );

    // Unhealthy: the HTTP probe gets the app's 500, gRPC is NOT_SERVING; the app still
    // accepts connections, so the TCP probe passes (as the kubelet's would).
    std::fs::write(&state, "fail")?;
    expect_statuses(
        &pod_ip,
        &probes,
        &[
            ("readinessProbe", 500),
            ("https readinessProbe", 500),
            ("startupProbe", 503),
            ("livenessProbe", 200),
        ],
        "app failing",
    )
    .await?;

    // Hanging past the probe's timeout: the HTTP probe fails within it.
    std::fs::write(&state, "hang")?;
    let started = std::time::Instant::now();
    let readiness = &probes[0];
    let (code, _) = run_probe(&pod_ip, readiness).await?;
    ensure!(code == 503, "a hanging app answered {code}");
    ensure!(
        started.elapsed() < Duration::from_secs(PROBE_TIMEOUT_SECONDS + 2),
        "the probe was not bounded by its timeout"
    );

    // The app stops listening: every probe fails although the sidecar is up and ready.
    std::fs::write(&state, "ok")?;
    app.kill().await?;
    let out = output(net.exec(0, "curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://127.0.0.1:7191/ready",
    ]))
    .await?;
    let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if code != "200" {
        bail!("the sidecar is not ready ({code}); the check below would prove nothing");
    }
    expect_statuses(
        &pod_ip,
        &probes,
        &[
            ("readinessProbe", 503),
            ("livenessProbe", 503),
            ("startupProbe", 503),
            ("https readinessProbe", 503),
        ],
        "app down",
    )
    .await?;
    drop(sidecar);
    Ok(())
}
