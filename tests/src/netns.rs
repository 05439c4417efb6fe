//! Pod-like network namespaces for transparent-interception tests: several namespaces joined by
//! veth pairs to one bridge in the root namespace, each with its own address. Root is required
//! (CI runs as root); without it the tests fail with a clear message instead of skipping.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail, ensure};
use tokio::process::Command;

use crate::process::output;

/// One namespace ("pod").
#[derive(Debug, Clone)]
pub struct Pod {
    /// The network namespace name.
    pub netns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
}

/// A bridge with pods attached; everything is removed on drop.
#[derive(Debug)]
pub struct PodNet {
    bridge: String,
    gateway: Ipv4Addr,
    prefix: [u8; 3],
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
    /// Creates a bridge and `n` pods on a fresh /24.
    pub async fn create(n: usize) -> Result<Self> {
        require_root().await?;
        let mut rnd = [0u8; 3];
        picket_common::crypto::fill_random(&mut rnd).map_err(|e| anyhow::anyhow!("{e}"))?;
        let id = format!("{:02x}{:02x}", rnd[0], rnd[1]);
        // 10.231.X.0/24, X from 1 to 250: test hosts that exist only in these namespaces.
        let prefix = [10, 231, 1 + rnd[2] % 250];
        let gateway = Ipv4Addr::new(prefix[0], prefix[1], prefix[2], 1);
        let bridge = format!("pk{id}br");
        let mut net = Self {
            bridge: bridge.clone(),
            gateway,
            prefix,
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
        run(&["ip", "link", "set", &bridge, "up"]).await?;
        for i in 1..=n {
            let netns = format!("pk{id}n{i}");
            let host_if = format!("pk{id}h{i}");
            let pod_if = format!("pk{id}p{i}");
            let ip = Ipv4Addr::new(prefix[0], prefix[1], prefix[2], 10 + i as u8);
            run(&["ip", "netns", "add", &netns]).await?;
            net.pods.push(Pod {
                netns: netns.clone(),
                ip,
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
            for cmd in [
                in_ns(&["ip", "link", "set", "lo", "up"]),
                in_ns(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &pod_if]),
                in_ns(&["ip", "link", "set", &pod_if, "up"]),
                in_ns(&["ip", "route", "add", "default", "via", &gateway.to_string()]),
            ] {
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
