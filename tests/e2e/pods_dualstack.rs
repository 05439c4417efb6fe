//! IPv6 and dual stack: pods that are IPv4-only, IPv6-only and dual-stack on one bridge, each
//! with a plain app on `::`, a sidecar and the rules of `picket iptables` (both families).
//! IPv6 is intercepted and carried over mTLS, policy matches an IPv6 source, flow records
//! carry IPv6 addresses, and tcpdump shows no IPv6 request crossing in plaintext. Then the
//! atomicity of the rules: a failure of one family leaves both as they were, and a pod with
//! IPv6 addresses fails closed.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use picket_tests::netns::{PodNet, Stack, seen_header, shared_dir};
use picket_tests::process::{Daemon, output};
use picket_tests::{TestCa, eventually};
use serde_json::Value;
use tokio::process::Command;

const APP_PORT: u16 = 8080;
const OUTSIDE_PORT: u16 = 9090;

fn url(ip: IpAddr, port: u16, path: &str) -> String {
    format!("http://{}{path}", SocketAddr::new(ip, port))
}

async fn seen_by_app(
    net: &PodNet,
    from: usize,
    to: IpAddr,
    path: &str,
    marker: &str,
) -> Result<Value> {
    let marker_header = format!("x-marker: {marker}");
    let (code, body) = net
        .curl(from, &url(to, APP_PORT, path), &[&marker_header])
        .await?;
    ensure!(
        code == 0,
        "curl from pod{} to {to} exited {code}: {body}",
        from + 1
    );
    serde_json::from_str(&body).with_context(|| format!("not JSON: {body}"))
}

/// `picket iptables` in pod `i` with the nft binaries (both families).
async fn picket_iptables(net: &PodNet, i: usize, args: &[&str]) -> Result<std::process::Output> {
    let args = [&["--iptables", "iptables-nft"], args].concat();
    net.picket_iptables(i, &args).await
}

/// pod3 (dual-stack) admits pod1 by identity, and pod2's IPv6 address on `/by-address` only.
fn policy_for(i: usize, net: &PodNet) -> String {
    let rules = if i == 2 {
        let pod2 = net.pods[1].ip6.map(|a| a.to_string()).unwrap_or_default();
        format!(
            "  - from: [{{ source: {{ principals: [\"cluster.local/ns/pods/sa/pod1\"] }} }}]
  - from: [{{ source: {{ ipBlocks: [\"{pod2}/128\"] }} }}]
    to: [{{ operation: {{ paths: [\"/by-address\"] }} }}]
"
        )
    } else {
        "  - from: [{ source: { principals: [\"*\"] } }]\n".to_owned()
    };
    format!(
        "apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: {{ name: admit, namespace: pods }}
spec:
  action: ALLOW
  rules:
{rules}"
    )
}

struct Mesh {
    _processes: Vec<Daemon>,
    _ca: TestCa,
    net: PodNet,
    dir: tempfile::TempDir,
}

async fn start() -> Result<Mesh> {
    let net = PodNet::create_stacks(&[Stack::V4, Stack::V6, Stack::Dual]).await?;
    // One CA on both families: IPv4 pods reach it on the bridge's IPv4 address, the others
    // on its IPv6 address.
    let names = [net.gateway().to_string(), net.gateway6().to_string()];
    let ca = TestCa::start_at_with_names("[::]:0".parse()?, &names, &[]).await?;
    let dir = shared_dir()?;
    std::fs::write(dir.path().join("bundle.pem"), ca.bundle_pem()?)?;
    let mut processes = Vec::new();

    // A plaintext server outside the mesh, on the bridge's IPv6 address.
    processes.push(net.outside_app(net.gateway6().into(), OUTSIDE_PORT, dir.path())?);

    for i in 0..3 {
        let n = i + 1;
        processes.push(
            net.plain_app(i, "::", APP_PORT, &format!("pod{n}"), dir.path())
                .await?,
        );

        let out = picket_iptables(&net, i, &["--exclude-inbound-ports", "7191"]).await?;
        ensure!(
            out.status.success(),
            "picket iptables in pod{n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v6_rules = net.nat_rules(i, "ip6tables-nft-save").await?;
        ensure!(
            v6_rules.contains("-A PICKET_OUTPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j REDIRECT --to-ports 7140"),
            "pod{n} has no IPv6 rules:\n{v6_rules}"
        );

        let token = dir.path().join(format!("pod{n}.token"));
        std::fs::write(&token, ca.token(&format!("ns/pods/sa/pod{n}")).await?)?;
        let policy_dir = dir.path().join(format!("policy{n}"));
        std::fs::create_dir(&policy_dir)?;
        std::fs::write(policy_dir.join("policy.yaml"), policy_for(i, &net))?;
        let ca_url = if net.pods[i].stack == Stack::V4 {
            ca.url_at(net.gateway().into())
        } else {
            ca.url_at(net.gateway6().into())
        };
        let config = format!(
            "identity: {{ trust_domain: cluster.local, namespace: pods, service_account: pod{n} }}
ca: {{ url: \"{ca_url}\", trust_bundle: \"{bundle}\", join_token_file: \"{token}\" }}
inbound: {{ listen: \"0.0.0.0:7143\", transparent: true }}
outbound:
  listen: \"127.0.0.1:7140\"
  transparent: true
  meshed:
  - {{ cidr: \"{cidr4}\", ports: [{APP_PORT}], identity: any }}
  - {{ cidr: \"{cidr6}\", ports: [{APP_PORT}], identity: any }}
  passthrough: allow
admin: {{ listen: \"0.0.0.0:7191\" }}
policy: {{ path: \"{policy}\" }}
timeouts: {{ detect: 2s }}
telemetry: {{ flow_log: {{ path: \"{flows}\" }} }}
",
            bundle = dir.path().join("bundle.pem").display(),
            token = token.display(),
            cidr4 = net.cidr(),
            cidr6 = net.cidr6(),
            policy = policy_dir.display(),
            flows = dir.path().join(format!("flows{n}.jsonl")).display(),
        );
        let config_file = dir.path().join(format!("pod{n}.yaml"));
        std::fs::write(&config_file, config)?;
        let label = format!("sidecar-pod{n}");
        processes.push(net.sidecar(i, &config_file, &label, dir.path()).await?);
    }
    Ok(Mesh {
        _processes: processes,
        _ca: ca,
        net,
        dir,
    })
}

fn random_marker(prefix: &str) -> Result<String> {
    let mut bytes = [0u8; 8];
    picket_common::crypto::fill_random(&mut bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(format!(
        "{prefix}-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

#[tokio::test]
async fn ipv4_ipv6_and_dual_stack_pods_are_intercepted_and_leak_nothing() -> Result<()> {
    let mesh = start().await?;
    let net = &mesh.net;
    let v4 = |i: usize| net.pods[i].addr(false).context("no IPv4 address");
    let v6 = |i: usize| net.pods[i].addr(true).context("no IPv6 address");

    let capture = mesh.dir.path().join("bridge.pcap");
    let mut tcpdump = Command::new("tcpdump");
    tcpdump
        .args(["-i", "any", "-U", "--immediate-mode", "-n", "-w"])
        .arg(&capture)
        .arg(format!("tcp port {APP_PORT} or tcp port {OUTSIDE_PORT}"));
    let mut tcpdump = Daemon::spawn("tcpdump", tcpdump, mesh.dir.path())?;
    tcpdump
        .wait_log("listening on", Duration::from_secs(10))
        .await?;

    // IPv6-only pod2 -> dual-stack pod3 over IPv6: intercepted, mTLS, identity delivered, and
    // allowed by pod3's ipBlocks rule for pod2's IPv6 address on /by-address only.
    let secret6 = random_marker("picket-v6-secret")?;
    let seen = seen_by_app(net, 1, v6(2)?, "/by-address", &secret6).await?;
    ensure!(seen["app"] == "pod3", "{seen}");
    ensure!(
        seen_header(&seen, "x-picket-peer-identity")
            == Some("spiffe://cluster.local/ns/pods/sa/pod2"),
        "pod3 saw {seen}"
    );
    ensure!(
        seen_header(&seen, "x-marker") == Some(secret6.as_str()),
        "{seen}"
    );
    let (code, body) = net.curl(1, &url(v6(2)?, APP_PORT, "/other"), &[]).await?;
    ensure!(
        code == 0 && body.contains("forbidden"),
        "pod2 -> pod3 /other should be denied by policy: {code} {body}"
    );

    // Dual-stack pod3 -> IPv6-only pod2 and IPv4-only pod1; IPv4-only pod1 -> pod3 over IPv4.
    let secret6b = random_marker("picket-v6-secret")?;
    let seen = seen_by_app(net, 2, v6(1)?, "/hello", &secret6b).await?;
    ensure!(
        seen["app"] == "pod2"
            && seen_header(&seen, "x-picket-peer-identity")
                == Some("spiffe://cluster.local/ns/pods/sa/pod3"),
        "{seen}"
    );
    let secret4 = random_marker("picket-v4-secret")?;
    let seen = seen_by_app(net, 0, v4(2)?, "/hello", &secret4).await?;
    ensure!(
        seen["app"] == "pod3"
            && seen_header(&seen, "x-picket-peer-identity")
                == Some("spiffe://cluster.local/ns/pods/sa/pod1"),
        "{seen}"
    );
    let seen = seen_by_app(net, 2, v4(0)?, "/hello", "v4").await?;
    ensure!(
        seen["app"] == "pod1" && seen_header(&seen, "x-picket-peer-identity").is_some(),
        "{seen}"
    );

    // The kubelet reaches an IPv6-only pod's sidecar probes on the pod's IPv6 address.
    let out =
        output(Command::new("curl").args(["-sS", "--max-time", "5", &url(v6(1)?, 7191, "/ready")]))
            .await?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("ready"),
        "pod2's admin port over IPv6: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Plaintext from the root namespace to pod3's IPv6 app port is refused (no HTTP answer).
    let out = output(Command::new("curl").args([
        "-sS",
        "--max-time",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url(v6(2)?, APP_PORT, "/hello"),
    ]))
    .await?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == "000",
        "plaintext IPv6 reached pod3's app"
    );

    // An IPv6 destination outside the meshed networks passes through in plaintext: the
    // capture's control, proving it sees IPv6 payloads.
    let control = "picket-plaintext-v6-control";
    let control_header = format!("x-marker: {control}");
    let (code, body) = net
        .curl(
            1,
            &url(net.gateway6().into(), OUTSIDE_PORT, "/out"),
            &[&control_header],
        )
        .await?;
    ensure!(
        code == 0 && body.contains("\"outside\""),
        "pod2 -> outside: {code} {body}"
    );

    tcpdump.signal("INT").await?;
    tcpdump.wait_exit(Duration::from_secs(10)).await?;
    let wire = std::fs::read(&capture)?;
    let contains = |needle: &str| wire.windows(needle.len()).any(|w| w == needle.as_bytes());
    ensure!(
        contains(control),
        "the capture saw no IPv6 plaintext at all; it proves nothing"
    );
    for secret in [&secret6, &secret6b, &secret4] {
        ensure!(
            !contains(secret),
            "{secret} crossed the bridge in plaintext"
        );
    }

    // pod3's flow records carry pod2's IPv6 address as the source, and the decision.
    let pod2 = v6(1)?.to_string();
    let flows = mesh.dir.path().join("flows3.jsonl");
    eventually(Duration::from_secs(10), async || {
        let text = std::fs::read_to_string(&flows).unwrap_or_default();
        let records: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let by_address = records
            .iter()
            .find(|r| r.to_string().contains("/by-address"))
            .with_context(|| format!("no flow record for /by-address yet:\n{text}"))?;
        ensure!(
            by_address.to_string().contains(&format!("[{pod2}]"))
                || by_address.to_string().contains(&pod2),
            "the record lacks pod2's IPv6 source: {by_address}"
        );
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn rules_apply_atomically_and_fail_closed_when_ipv6_cannot_be_intercepted() -> Result<()> {
    let net = PodNet::create_stacks(&[Stack::Dual, Stack::V4]).await?;
    let (dual, v4_only) = (0, 1);

    // The dry run prints the exact restore input: fed to the restore tools by hand, it makes
    // the same rules as a real run.
    let dry = picket_iptables(
        &net,
        dual,
        &["--exclude-inbound-ports", "7191", "--dry-run"],
    )
    .await?;
    ensure!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let printed = String::from_utf8_lossy(&dry.stdout).into_owned();
    ensure!(
        net.nat_rules(dual, "iptables-nft-save")
            .await?
            .lines()
            .all(|l| !l.contains("PICKET")),
        "the dry run changed rules"
    );
    for section in printed.split("# ").filter(|s| !s.trim().is_empty()) {
        let (command, input) = section.split_once('\n').context("no restore input")?;
        let mut words = command.split_whitespace();
        let tool = words.next().context("no tool")?;
        let mut restore = net.exec(dual, tool);
        restore.args(words).stdin(std::process::Stdio::piped());
        let mut child = restore.spawn()?;
        use tokio::io::AsyncWriteExt as _;
        child
            .stdin
            .take()
            .context("no stdin")?
            .write_all(input.as_bytes())
            .await?;
        ensure!(
            child.wait().await?.success(),
            "{tool} refused the printed input:\n{input}"
        );
    }
    let by_hand = (
        net.nat_rules(dual, "iptables-nft-save").await?,
        net.nat_rules(dual, "ip6tables-nft-save").await?,
    );
    ensure!(
        by_hand.1.contains("REDIRECT --to-ports 7143"),
        "no IPv6 section printed:\n{printed}"
    );
    let out = picket_iptables(&net, dual, &["--cleanup"]).await?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for save in ["iptables-nft-save", "ip6tables-nft-save"] {
        let rules = net.nat_rules(dual, save).await?;
        ensure!(
            !rules.contains("PICKET"),
            "cleanup left rules in {save}:\n{rules}"
        );
    }
    let out = picket_iptables(&net, dual, &["--exclude-inbound-ports", "7191"]).await?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let applied = (
        net.nat_rules(dual, "iptables-nft-save").await?,
        net.nat_rules(dual, "ip6tables-nft-save").await?,
    );
    ensure!(
        applied == by_hand,
        "the dry run's input differs from what was applied"
    );
    // Idempotent.
    let out = picket_iptables(&net, dual, &["--exclude-inbound-ports", "7191"]).await?;
    ensure!(out.status.success());
    ensure!(
        (
            net.nat_rules(dual, "iptables-nft-save").await?,
            net.nat_rules(dual, "ip6tables-nft-save").await?,
        ) == applied,
        "a second apply changed the rules"
    );

    // Something else in the namespace makes the IPv6 change impossible: a rule jumping from
    // POSTROUTING into Picket's inbound chain, where the kernel refuses REDIRECT.
    let sabotage = async |i: usize| -> Result<()> {
        for args in [
            &[
                "-t",
                "nat",
                "-D",
                "PREROUTING",
                "-p",
                "tcp",
                "-j",
                "PICKET_INBOUND",
            ][..],
            &["-t", "nat", "-F", "PICKET_INBOUND"],
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-p",
                "udp",
                "-j",
                "PICKET_INBOUND",
            ],
        ] {
            let out = output(net.exec(i, "ip6tables-nft").args(args)).await?;
            ensure!(
                out.status.success(),
                "ip6tables-nft {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    sabotage(dual).await?;
    let before = (
        net.nat_rules(dual, "iptables-nft-save").await?,
        net.nat_rules(dual, "ip6tables-nft-save").await?,
    );
    let out = picket_iptables(&net, dual, &["--exclude-inbound-ports", "7191,9999"]).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "the apply succeeded without IPv6 interception"
    );
    ensure!(
        stderr.contains("IPv6 addresses")
            && stderr.contains(&net.pods[dual].ip6.context("no v6")?.to_string()),
        "{stderr}"
    );
    let after = (
        net.nat_rules(dual, "iptables-nft-save").await?,
        net.nat_rules(dual, "ip6tables-nft-save").await?,
    );
    ensure!(
        after == before,
        "a failed apply changed the rules:\nbefore:\n{}\n{}\nafter:\n{}\n{}",
        before.0,
        before.1,
        after.0,
        after.1
    );
    ensure!(
        !after.0.contains("9999"),
        "the IPv4 change was not rolled back"
    );

    // In a pod with no IPv6 address beyond link-local, the same IPv6 failure is reported and
    // IPv4 is intercepted.
    let out = picket_iptables(&net, v4_only, &["--exclude-inbound-ports", "7191"]).await?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sabotage(v4_only).await?;
    let out = picket_iptables(&net, v4_only, &["--exclude-inbound-ports", "7191,9999"]).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "{stderr}");
    ensure!(stderr.contains("IPv6 rules not installed"), "{stderr}");
    ensure!(
        net.nat_rules(v4_only, "iptables-nft-save")
            .await?
            .contains("--dport 9999")
    );
    Ok(())
}
