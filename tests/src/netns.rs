//! Pod-like network namespaces for transparent-interception tests: several namespaces joined by
//! veth pairs to one bridge in the root namespace, each with its own address. Root is required
//! (CI runs as root); without it the tests fail with a clear message instead of skipping.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use tokio::process::Command;

use crate::ca::{TRUST_DOMAIN, TestCa};
use crate::process::{Daemon, output, picket_bin};

/// The sidecar's user and group id in the pods (what `picket iptables --proxy-uid` exempts).
pub const PROXY_UID: &str = "1337";

/// `tests/fixtures/plain_app.py`: a plain HTTP app that answers with what it saw as JSON.
pub fn plain_app_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/plain_app.py")
}

/// A temporary directory every pod's processes may write (the sidecar runs as [`PROXY_UID`]).
pub fn shared_dir() -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )?;
    Ok(dir)
}

/// The port the plain app listens on in a pod (the sidecar's `inbound.app`).
pub const POD_APP_PORT: u16 = 8080;

/// A policy document that admits every mesh identity to the workloads of namespace `pods`.
pub const ADMIT_ANY: &str = "apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: { name: admit, namespace: pods }
spec:
  action: ALLOW
  rules:
  - from: [{ source: { principals: [\"*\"] } }]
";

/// Pods on a bridge with the test CA on the bridge's gateway, where every pod reaches it, and
/// a directory every pod's processes may write, holding the CA's bundle (`bundle.pem`).
#[derive(Debug)]
pub struct CaPods {
    /// The pods and their bridge.
    pub net: PodNet,
    /// The CA, listening on the bridge's gateway.
    pub ca: TestCa,
    /// The shared directory (see [`shared_dir`]).
    pub dir: tempfile::TempDir,
}

/// What one pod's sidecar configuration adds to the shared part [`CaPods::sidecar_config`]
/// writes.
#[derive(Debug, Default, Clone, Copy)]
pub struct PodYaml<'a> {
    /// Lines under `outbound:`, each indented by two spaces and ending in a newline.
    pub outbound: &'a str,
    /// Whole sections (such as `controller:`), each line ending in a newline.
    pub sections: &'a str,
    /// Lines under `telemetry:` after the flow log, each indented and ending in a newline.
    pub telemetry: &'a str,
    /// One more policy document beside [`ADMIT_ANY`] (empty: none).
    pub policy: &'a str,
}

impl CaPods {
    /// `n` IPv4 pods and the CA on their bridge.
    pub async fn start(n: usize) -> Result<Self> {
        let net = PodNet::create(n).await?;
        let ca = TestCa::start_at((net.gateway(), 0).into(), &[]).await?;
        let dir = shared_dir()?;
        std::fs::write(dir.path().join("bundle.pem"), ca.bundle_pem()?)?;
        Ok(Self { net, ca, dir })
    }

    /// Where the sidecar of workload `name` writes its flow log.
    pub fn flow_log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.jsonl"))
    }

    /// Writes what the sidecar of pod workload `name` needs into the shared directory and
    /// returns the path of its configuration (`NAME.yaml`): a join token for service account
    /// `sa` of namespace `pods`, a policy directory with [`ADMIT_ANY`] (and `yaml.policy`),
    /// and a configuration that intercepts both ways (inbound to the app on
    /// [`POD_APP_PORT`], passthrough allowed), has the admin listener on loopback, a 2 s
    /// protocol detection timeout and its flow log at [`CaPods::flow_log`].
    pub async fn sidecar_config(&self, name: &str, sa: &str, yaml: PodYaml<'_>) -> Result<PathBuf> {
        let dir = self.dir.path();
        let token = dir.join(format!("{name}.token"));
        std::fs::write(&token, self.ca.token(&format!("ns/pods/sa/{sa}")).await?)?;
        let policy = dir.join(format!("{name}-policy"));
        std::fs::create_dir(&policy)?;
        std::fs::write(policy.join("policy.yaml"), ADMIT_ANY)?;
        if !yaml.policy.is_empty() {
            std::fs::write(policy.join("extra.yaml"), yaml.policy)?;
        }
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "identity: {{ trust_domain: {TRUST_DOMAIN}, namespace: pods, service_account: {sa} }}
ca: {{ url: \"{url}\", trust_bundle: \"{bundle}\", join_token_file: \"{token}\" }}
inbound: {{ listen: \"0.0.0.0:7143\", app: \"127.0.0.1:{POD_APP_PORT}\", transparent: true }}
outbound:
  listen: \"127.0.0.1:7140\"
  transparent: true
  passthrough: allow
{outbound}{sections}admin: {{ listen: \"127.0.0.1:7191\" }}
policy: {{ path: \"{policy}\" }}
timeouts: {{ detect: 2s }}
telemetry:
  flow_log: {{ path: \"{flows}\" }}
{telemetry}",
                url = self.ca.url(),
                bundle = dir.join("bundle.pem").display(),
                token = token.display(),
                policy = policy.display(),
                flows = self.flow_log(name).display(),
                outbound = yaml.outbound,
                sections = yaml.sections,
                telemetry = yaml.telemetry,
            ),
        )?;
        Ok(config)
    }
}

/// The value of header `name` in what the plain app saw (`{"headers": [[name, value]...]}`).
pub fn seen_header<'a>(seen: &'a Value, name: &str) -> Option<&'a str> {
    seen["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0].as_str() == Some(name))
        .and_then(|h| h[1].as_str())
}

/// Which address families a pod has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// IPv4 only.
    V4,
    /// IPv6 only (loopback still has 127.0.0.1, as in any Linux namespace).
    V6,
    /// Both.
    Dual,
}

impl Stack {
    fn has_v4(self) -> bool {
        self != Self::V6
    }

    fn has_v6(self) -> bool {
        self != Self::V4
    }
}

/// One namespace ("pod").
#[derive(Debug, Clone)]
pub struct Pod {
    /// The network namespace name.
    pub netns: String,
    /// Its IPv4 address on the bridge (configured unless the pod is [`Stack::V6`]).
    pub ip: Ipv4Addr,
    /// Its IPv6 address on the bridge (unless the pod is [`Stack::V4`]).
    pub ip6: Option<Ipv6Addr>,
    /// Its families.
    pub stack: Stack,
}

impl Pod {
    /// Its address of the family asked for, if it has one.
    pub fn addr(&self, v6: bool) -> Option<IpAddr> {
        match (v6, self.stack.has_v4()) {
            (true, _) => self.ip6.map(IpAddr::V6),
            (false, true) => Some(IpAddr::V4(self.ip)),
            (false, false) => None,
        }
    }
}

/// A bridge with pods attached; everything is removed on drop.
#[derive(Debug)]
pub struct PodNet {
    bridge: String,
    gateway: Ipv4Addr,
    prefix: [u8; 3],
    prefix6: [u16; 3],
    /// The pods.
    pub pods: Vec<Pod>,
}

async fn run(args: &[&str]) -> Result<()> {
    let out = output(Command::new(args[0]).args(&args[1..])).await?;
    ensure!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Fails unless the test runs as root with `ip` available.
pub async fn require_root() -> Result<()> {
    let out = output(Command::new("id").arg("-u")).await?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        bail!("this test needs root (network namespaces and iptables); CI runs it as root");
    }
    let ip = output(Command::new("ip").arg("-V"))
        .await
        .context("the `ip` command (iproute2) is missing: run scripts/install-test-deps")?;
    ensure!(ip.status.success(), "`ip -V` failed");
    Ok(())
}

impl PodNet {
    /// Creates a bridge and `n` IPv4 pods on a fresh /24.
    pub async fn create(n: usize) -> Result<Self> {
        Self::create_stacks(&vec![Stack::V4; n]).await
    }

    /// Creates a bridge (with a fresh IPv4 /24 and a fresh IPv6 ULA /64) and one pod per
    /// entry of `stacks`, with the families it names.
    pub async fn create_stacks(stacks: &[Stack]) -> Result<Self> {
        require_root().await?;
        let mut rnd = [0u8; 3];
        picket_common::crypto::fill_random(&mut rnd).map_err(|e| anyhow::anyhow!("{e}"))?;
        let id = format!("{:02x}{:02x}", rnd[0], rnd[1]);
        // 10.231.X.0/24, X from 1 to 250: test hosts that exist only in these namespaces.
        let prefix = [10, 231, 1 + rnd[2] % 250];
        let gateway = Ipv4Addr::new(prefix[0], prefix[1], prefix[2], 1);
        let bridge = format!("pk{id}br");
        // fd00:231:<id>::/64: inside the chart's default meshed fd00::/8, unique per run.
        let prefix6 = [0xfd00, 0x0231, u16::from_be_bytes([rnd[0], rnd[1]])];
        let mut net = Self {
            bridge: bridge.clone(),
            gateway,
            prefix,
            prefix6,
            pods: Vec::new(),
        };
        run(&["ip", "link", "add", &bridge, "type", "bridge"]).await?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{gateway}/24"),
            "dev",
            &bridge,
        ])
        .await?;
        // No duplicate address detection: the addresses are usable at once.
        run(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{}/64", net.gateway6()),
            "dev",
            &bridge,
            "nodad",
        ])
        .await?;
        run(&["ip", "link", "set", &bridge, "up"]).await?;
        for (index, stack) in stacks.iter().copied().enumerate() {
            let i = index + 1;
            let netns = format!("pk{id}n{i}");
            let host_if = format!("pk{id}h{i}");
            let pod_if = format!("pk{id}p{i}");
            let ip = Ipv4Addr::new(prefix[0], prefix[1], prefix[2], 10 + i as u8);
            let ip6 = stack.has_v6().then(|| net.host6(10 + i as u16));
            run(&["ip", "netns", "add", &netns]).await?;
            net.pods.push(Pod {
                netns: netns.clone(),
                ip,
                ip6,
                stack,
            });
            run(&[
                "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &pod_if,
            ])
            .await?;
            run(&["ip", "link", "set", &host_if, "master", &bridge]).await?;
            run(&["ip", "link", "set", &host_if, "up"]).await?;
            run(&["ip", "link", "set", &pod_if, "netns", &netns]).await?;
            let in_ns = |rest: &[&str]| {
                let mut v = vec!["ip", "netns", "exec", netns.as_str()];
                v.extend_from_slice(rest);
                v.into_iter().map(str::to_owned).collect::<Vec<_>>()
            };
            let mut cmds = vec![in_ns(&["ip", "link", "set", "lo", "up"])];
            if stack.has_v4() {
                cmds.push(in_ns(&[
                    "ip",
                    "addr",
                    "add",
                    &format!("{ip}/24"),
                    "dev",
                    &pod_if,
                ]));
            }
            if let Some(ip6) = ip6 {
                cmds.push(in_ns(&[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("{ip6}/64"),
                    "dev",
                    &pod_if,
                    "nodad",
                ]));
            }
            cmds.push(in_ns(&["ip", "link", "set", &pod_if, "up"]));
            if stack.has_v4() {
                cmds.push(in_ns(&[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &gateway.to_string(),
                ]));
            }
            if stack.has_v6() {
                let gw6 = net.gateway6().to_string();
                cmds.push(in_ns(&["ip", "-6", "route", "add", "default", "via", &gw6]));
            }
            for cmd in cmds {
                let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
                run(&args).await?;
            }
        }
        Ok(net)
    }

    /// The bridge's address in the root namespace.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The bridge's IPv6 address in the root namespace.
    pub fn gateway6(&self) -> Ipv6Addr {
        self.host6(1)
    }

    fn host6(&self, host: u16) -> Ipv6Addr {
        let [a, b, c] = self.prefix6;
        Ipv6Addr::new(a, b, c, 0, 0, 0, 0, host)
    }

    /// The IPv6 network as `fd00:231:X::/64`.
    pub fn cidr6(&self) -> String {
        let [a, b, c] = self.prefix6;
        format!("{a:x}:{b:x}:{c:x}::/64")
    }

    /// The bridge interface name (for packet capture).
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The network as `a.b.c.0/24`.
    pub fn cidr(&self) -> String {
        format!(
            "{}.{}.{}.0/24",
            self.prefix[0], self.prefix[1], self.prefix[2]
        )
    }

    /// A command that runs `program` inside pod `i`'s namespace.
    pub fn exec(&self, i: usize, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.pods[i].netns, program]);
        cmd
    }

    /// `curl -sS` in pod `i` with extra `headers`: its exit code, and its standard output
    /// followed by its standard error (empty unless curl failed).
    pub async fn curl(&self, i: usize, url: &str, headers: &[&str]) -> Result<(i32, String)> {
        let mut cmd = self.exec(i, "curl");
        cmd.args(["-sS", "--max-time", "10"]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        cmd.arg(url);
        let out = output(&mut cmd).await?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        ))
    }

    /// `picket iptables --proxy-uid 1337 ARGS` in pod `i`.
    pub async fn picket_iptables(&self, i: usize, args: &[&str]) -> Result<std::process::Output> {
        output(
            self.exec(i, &picket_bin()?.display().to_string())
                .args(["iptables", "--proxy-uid", PROXY_UID])
                .args(args),
        )
        .await
    }

    /// Sets up pod `i`'s interception as the injector's init step does (`picket iptables`
    /// with the nft backend, the admin port 7191 left out) and fails unless it succeeds.
    pub async fn intercept(&self, i: usize) -> Result<()> {
        let out = self
            .picket_iptables(
                i,
                &[
                    "--exclude-inbound-ports",
                    "7191",
                    "--iptables",
                    "iptables-nft",
                ],
            )
            .await?;
        ensure!(
            out.status.success(),
            "picket iptables in pod {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Pod `i`'s nat table as `save` (`iptables-nft-save`, ...) prints it, without counters
    /// and comments, so two dumps compare by rules alone.
    pub async fn nat_rules(&self, i: usize, save: &str) -> Result<String> {
        let out = output(self.exec(i, save).args(["-t", "nat"])).await?;
        ensure!(out.status.success(), "{save} failed");
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// Makes pod `node` a Kubernetes node's Service data path, as kube-proxy's iptables mode
    /// does: connections to `service` (a cluster IP and port) are DNATed in `PREROUTING` to one
    /// of `backends`, drawn per connection with the `statistic` match (the first with
    /// probability 1/n, the next 1/(n-1) of the rest, ...), and masqueraded so the answers come
    /// back through the node. Each pod of `clients` routes `service`'s address through the node.
    pub async fn kube_proxy(
        &self,
        node: usize,
        service: std::net::SocketAddrV4,
        backends: &[std::net::SocketAddrV4],
        clients: &[usize],
    ) -> Result<()> {
        let in_node = |args: &[&str]| {
            let mut cmd = self.exec(node, args[0]);
            cmd.args(&args[1..]);
            cmd
        };
        for sysctl in [
            "net.ipv4.ip_forward=1",
            // Answers to a DNATed connection leave by the interface they came in on: no
            // redirect may send the client around the node.
            "net.ipv4.conf.all.send_redirects=0",
        ] {
            let out = output(&mut in_node(&["sysctl", "-qw", sysctl])).await?;
            ensure!(out.status.success(), "sysctl {sysctl} in the node failed");
        }
        let ip = service.ip().to_string();
        let port = service.port().to_string();
        let n = backends.len();
        for (k, backend) in backends.iter().enumerate() {
            let mut rule = vec![
                "iptables-nft",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                &ip,
                "-p",
                "tcp",
                "--dport",
                &port,
            ];
            let probability = format!("{:.5}", 1.0 / (n - k) as f64);
            if k + 1 < n {
                rule.extend(["-m", "statistic", "--mode", "random", "--probability"]);
                rule.push(&probability);
            }
            let to = backend.to_string();
            rule.extend(["-j", "DNAT", "--to-destination", &to]);
            let out = output(&mut in_node(&rule)).await?;
            ensure!(
                out.status.success(),
                "{}: {}",
                rule.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let masquerade = [
            "iptables-nft",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-m",
            "conntrack",
            "--ctstate",
            "DNAT",
            "-j",
            "MASQUERADE",
        ];
        let out = output(&mut in_node(&masquerade)).await?;
        ensure!(
            out.status.success(),
            "masquerade in the node: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let node_ip = self.pods[node].ip.to_string();
        for client in clients {
            let out = output(self.exec(*client, "ip").args([
                "route",
                "replace",
                &format!("{ip}/32"),
                "via",
                &node_ip,
            ]))
            .await?;
            ensure!(
                out.status.success(),
                "route to {ip} in pod{client}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts the plain app in the root namespace on `ip`:`port`, outside the mesh, answering
    /// as `outside`; logs go under `dir`.
    pub fn outside_app(&self, ip: IpAddr, port: u16, dir: &Path) -> Result<Daemon> {
        let mut outside = Command::new("python3");
        outside
            .arg(plain_app_script())
            .arg(ip.to_string())
            .arg(port.to_string())
            .arg("outside");
        Daemon::spawn("outside-app", outside, dir)
    }

    /// Starts the plain app in pod `i` on `bind`:`port`, answering as `name`, and waits until
    /// it listens; logs go under `dir`.
    pub async fn plain_app(
        &self,
        i: usize,
        bind: &str,
        port: u16,
        name: &str,
        dir: &Path,
    ) -> Result<Daemon> {
        let mut app = self.exec(i, "python3");
        app.arg(plain_app_script())
            .args([bind, &port.to_string(), name]);
        let app = Daemon::spawn(&format!("app-{name}"), app, dir)?;
        app.wait_log("listening", Duration::from_secs(10)).await?;
        Ok(app)
    }

    /// Starts `picket proxy --config CONFIG` in pod `i` as [`PROXY_UID`] (as the injected
    /// sidecar runs) and waits for its ready file; `label` names its log under `dir`.
    pub async fn sidecar(
        &self,
        i: usize,
        config: &Path,
        label: &str,
        dir: &Path,
    ) -> Result<Daemon> {
        let ready = dir.join(format!("{label}.ready"));
        let mut cmd = self.exec(i, "setpriv");
        cmd.args(["--reuid", PROXY_UID, "--regid", PROXY_UID, "--clear-groups"])
            .arg(picket_bin()?)
            .args(["proxy", "--config"])
            .arg(config)
            .arg("--ready-file")
            .arg(&ready);
        let mut daemon = Daemon::spawn(label, cmd, dir)?;
        let _: Value = daemon.wait_ready(&ready).await?;
        Ok(daemon)
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        for pod in &self.pods {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &pod.netns])
                .status();
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}
