//! Pods without Kubernetes: three network namespaces on a bridge, each with a plain app that
//! knows nothing of Picket, a sidecar running as its own UID, and the rules from
//! `picket iptables`. Inside each namespace the sidecar uses the standard ports (7140, 7143,
//! 7191): the namespace is private, and the iptables rules name those ports.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use picket_tests::TestCa;
use picket_tests::netns::{PodNet, plain_app_script, seen_header, shared_dir};
use picket_tests::process::Daemon;
use serde_json::Value;
use tokio::process::Command;

const APP_PORT: u16 = 8080;
/// A server in the root namespace, outside the mesh.
const OUTSIDE_PORT: u16 = 9090;

/// Everything one test run keeps alive; dropped in reverse order of creation.
struct Pods {
    _processes: Vec<Daemon>,
    _ca: TestCa,
    net: PodNet,
    dir: tempfile::TempDir,
}

fn sidecar_config(
    net: &PodNet,
    ca: &TestCa,
    dir: &Path,
    i: usize,
    passthrough: &str,
) -> Result<String> {
    let bundle = dir.join("bundle.pem");
    Ok(format!(
        "identity: {{ trust_domain: cluster.local, namespace: pods, service_account: pod{n} }}
ca: {{ url: \"{url}\", trust_bundle: \"{bundle}\", join_token_file: \"{token}\" }}
inbound: {{ listen: \"0.0.0.0:7143\", app: \"127.0.0.1:{APP_PORT}\", transparent: true }}
outbound:
  listen: \"127.0.0.1:7140\"
  transparent: true
  meshed: [{{ cidr: \"{cidr}\", ports: [{APP_PORT}], identity: any }}]
  passthrough: {passthrough}
admin: {{ listen: \"127.0.0.1:7191\" }}
policy: {{ path: \"{policy}\" }}
timeouts: {{ detect: 2s }}
",
        n = i + 1,
        url = ca.url(),
        bundle = bundle.display(),
        token = dir.join(format!("pod{}.token", i + 1)).display(),
        cidr = net.cidr(),
        policy = dir.join(format!("policy{}", i + 1)).display(),
    ))
}

/// pod3 admits only pod1; the others admit any mesh identity.
fn policy_for(i: usize) -> String {
    let from = if i == 2 {
        "cluster.local/ns/pods/sa/pod1"
    } else {
        "*"
    };
    format!(
        "apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: {{ name: admit, namespace: pods }}
spec:
  action: ALLOW
  rules:
  - from: [{{ source: {{ principals: [\"{from}\"] }} }}]
"
    )
}

async fn iptables(net: &PodNet, i: usize, binary: &str, extra: &[&str]) -> Result<String> {
    let args = [
        &["--exclude-inbound-ports", "7191", "--iptables", binary],
        extra,
    ]
    .concat();
    let out = net.picket_iptables(i, &args).await?;
    ensure!(
        out.status.success(),
        "picket iptables failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn start() -> Result<Pods> {
    let net = PodNet::create(3).await?;
    let ca = TestCa::start_at(SocketAddr::from((net.gateway(), 0)), &[]).await?;
    let dir = shared_dir()?;
    std::fs::write(dir.path().join("bundle.pem"), ca.bundle_pem()?)?;
    let mut processes = Vec::new();

    processes.push(net.outside_app(net.gateway().into(), OUTSIDE_PORT, dir.path())?);

    for i in 0..3 {
        let mut app = net.exec(i, "python3");
        app.arg(plain_app_script())
            .arg("0.0.0.0")
            .arg(APP_PORT.to_string())
            .arg(format!("pod{}", i + 1));
        processes.push(Daemon::spawn(
            &format!("app-pod{}", i + 1),
            app,
            dir.path(),
        )?);

        std::fs::write(
            dir.path().join(format!("pod{}.token", i + 1)),
            ca.token(&format!("ns/pods/sa/pod{}", i + 1)).await?,
        )?;
        let policy_dir = dir.path().join(format!("policy{}", i + 1));
        std::fs::create_dir(&policy_dir)?;
        std::fs::write(policy_dir.join("policy.yaml"), policy_for(i))?;
        let passthrough = if i == 1 { "deny" } else { "allow" };
        let config = dir.path().join(format!("pod{}.yaml", i + 1));
        std::fs::write(
            &config,
            sidecar_config(&net, &ca, dir.path(), i, passthrough)?,
        )?;
        let label = format!("sidecar-pod{}", i + 1);
        processes.push(net.sidecar(i, &config, &label, dir.path()).await?);
    }
    Ok(Pods {
        _processes: processes,
        _ca: ca,
        net,
        dir,
    })
}

fn app_url(ip: Ipv4Addr, path: &str) -> String {
    format!("http://{ip}:{APP_PORT}{path}")
}

async fn seen_by_app(net: &PodNet, from: usize, to: Ipv4Addr, marker: &str) -> Result<Value> {
    let marker_header = format!("x-marker: {marker}");
    let (code, body) = net
        .curl(from, &app_url(to, "/hello"), &[&marker_header])
        .await?;
    ensure!(
        code == 0,
        "curl from pod{} to {to} exited {code}: {body}",
        from + 1
    );
    serde_json::from_str(&body).with_context(|| format!("not JSON: {body}"))
}

#[tokio::test]
async fn pods_talk_through_transparent_mtls_with_policy_and_egress_control() -> Result<()> {
    let pods = start().await?;
    let net = &pods.net;
    let pod = |i: usize| net.pods[i].ip;

    // The rules, applied twice, are the same rules; nft in two pods, legacy in the third.
    let binaries = ["iptables-nft", "iptables-nft", "iptables-legacy"];
    for (i, binary) in binaries.iter().enumerate() {
        let printed = iptables(net, i, binary, &["--dry-run"]).await?;
        ensure!(
            printed.contains("REDIRECT --to-ports 7140"),
            "dry run printed:\n{printed}"
        );
        iptables(net, i, binary, &[]).await?;
        let first = net.nat_rules(i, &format!("{binary}-save")).await?;
        iptables(net, i, binary, &[]).await?;
        ensure!(
            first == net.nat_rules(i, &format!("{binary}-save")).await?,
            "second run changed the rules"
        );
    }

    // Capture what crosses between the namespaces while the apps talk (every interface of
    // the root namespace: the bridge ports see the frames bridged between pods).
    let capture = pods.dir.path().join("bridge.pcap");
    let mut tcpdump = Command::new("tcpdump");
    tcpdump
        // Immediate mode: packets reach the file as they arrive, not when a buffer block fills.
        .args(["-i", "any", "-U", "--immediate-mode", "-n", "-w"])
        .arg(&capture)
        .arg(format!("tcp port {APP_PORT} or tcp port {OUTSIDE_PORT}"));
    let tcpdump = Daemon::spawn("tcpdump", tcpdump, pods.dir.path())?;
    tcpdump
        .wait_log("listening on", Duration::from_secs(10))
        .await?;

    // pod1 -> pod2: plaintext for the apps, mTLS on the wire, identity delivered.
    let mut marker = [0u8; 8];
    picket_common::crypto::fill_random(&mut marker).map_err(|e| anyhow::anyhow!("{e}"))?;
    let secret: String = marker.iter().map(|b| format!("{b:02x}")).collect();
    let secret = format!("picket-secret-{secret}");
    let seen = seen_by_app(net, 0, pod(1), &secret).await?;
    ensure!(seen["app"] == "pod2", "{seen}");
    ensure!(
        seen_header(&seen, "x-picket-peer-identity")
            == Some("spiffe://cluster.local/ns/pods/sa/pod1"),
        "pod2 saw {seen}"
    );
    ensure!(
        seen_header(&seen, "x-marker") == Some(secret.as_str()),
        "{seen}"
    );

    // pod3 admits only pod1.
    let seen = seen_by_app(net, 0, pod(2), "allowed").await?;
    ensure!(seen["app"] == "pod3", "{seen}");
    let (code, body) = net.curl(1, &app_url(pod(2), "/hello"), &[]).await?;
    ensure!(
        code == 0 && body.contains("forbidden"),
        "pod2 -> pod3: {code} {body}"
    );

    // Outside the mesh: pod1 passes through, pod2 refuses (its egress policy).
    let outside = format!("http://{}:{OUTSIDE_PORT}/out", net.gateway());
    let control = "picket-plaintext-control";
    let control_header = format!("x-marker: {control}");
    let (code, body) = net.curl(0, &outside, &[&control_header]).await?;
    ensure!(
        code == 0 && body.contains("\"outside\""),
        "pod1 -> outside: {code} {body}"
    );
    ensure!(
        !body.contains("x-picket-peer-identity"),
        "passthrough must not add identity: {body}"
    );
    let (code, body) = net.curl(1, &outside, &[]).await?;
    ensure!(
        code != 0 && !body.contains("\"outside\""),
        "pod2 -> outside should be refused: {code} {body}"
    );

    // The wire: the plaintext control is visible, the meshed secret is not.
    tcpdump.signal("INT").await?;
    let mut tcpdump = tcpdump;
    tcpdump.wait_exit(Duration::from_secs(10)).await?;
    let wire = std::fs::read(&capture)?;
    let contains = |needle: &str| wire.windows(needle.len()).any(|w| w == needle.as_bytes());
    ensure!(
        contains(control),
        "the capture saw no plaintext at all; it proves nothing"
    );
    ensure!(
        !contains(&secret),
        "the meshed request crossed the bridge in plaintext"
    );

    // No loop: pod1's sidecar handled exactly the two meshed requests its app made (a
    // redirect loop would multiply them, or hang).
    let (code, metrics) = net.curl(0, "http://127.0.0.1:7191/metrics", &[]).await?;
    ensure!(code == 0, "pod1 admin: {code}");
    let outbound_requests: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("picket_requests_total{") && l.contains("direction=\"outbound\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    ensure!(
        outbound_requests == 2,
        "pod1 sidecar counted {outbound_requests} outbound requests:\n{metrics}"
    );

    // Removing the rules restores direct traffic (no sidecar in the path, no identity).
    for (i, binary) in binaries.iter().enumerate().take(2) {
        iptables(net, i, binary, &["--cleanup"]).await?;
    }
    let seen = seen_by_app(net, 0, pod(1), "direct").await?;
    ensure!(seen["app"] == "pod2", "{seen}");
    ensure!(
        seen_header(&seen, "x-picket-peer-identity").is_none(),
        "still through the mesh: {seen}"
    );
    Ok(())
}
