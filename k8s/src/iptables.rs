//! Transparent interception: the nat-table rules that send a pod's TCP through its sidecar,
//! for IPv4 (`iptables`) and IPv6 (`ip6tables`).
//!
//! ```text
//! PREROUTING -> PICKET_INBOUND  : excluded inbound ports RETURN, every other SYN REDIRECT :7143
//! OUTPUT     -> PICKET_OUTPUT   : the proxy's own UID RETURN (no loops), loopback RETURN,
//!                                 excluded ports and CIDRs RETURN, every other SYN REDIRECT :7140
//! ```
//!
//! The REDIRECT rules match only a connection's first packet (SYN set, ACK clear:
//! [`FIRST_PACKET`]). Connections already open when the rules go in keep going where they went.
//! This matters when a namespace had no nat table before (a pod meshed while it serves, as in
//! a migration through permissive mode): connection tracking starts with the table, and it
//! takes the next packet of a connection opened before then as a NEW connection ("loose"
//! pickup, `nf_conntrack_tcp_loose`), so a REDIRECT for every TCP packet would send that
//! packet to the sidecar's port, where no such connection exists, and the kernel would answer
//! with a reset: the call in flight at the switch failed. Only a SYN can open a connection,
//! so every new connection is still redirected.
//!
//! Each family's rules are applied in ONE `iptables-restore --noflush` run (one kernel table
//! replacement with iptables-legacy, one nft transaction with iptables-nft): it either takes
//! effect whole or not at all. The restore input is computed as the transition from the rules
//! in force (read with `iptables-save -t nat`) to the wanted ones, so that applying twice
//! leaves the same rules (the jumps into Picket's chains are added only when missing, extra
//! copies are removed), and cleanup is the transition to "no Picket rules". Only Picket's
//! chains and its two jumps are touched; other rules of the table are left alone.
//!
//! IPv6 rules are installed whenever the kernel has IPv6. If they cannot be installed in a
//! namespace that has IPv6 addresses beyond loopback and link-local, the step fails closed:
//! the IPv4 change made just before is rolled back to the rules that were in force, and the
//! error says why (the pod does not start rather than leak IPv6 traffic past the sidecar).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv6Addr};
use std::process::{Command, Stdio};

/// The match of a REDIRECT rule: a connection's first packet (SYN without ACK), spelled as
/// `iptables-save` writes `--syn`. See the module documentation for why.
pub const FIRST_PACKET: &str = "-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN";

/// Chain for inbound redirection.
pub const INBOUND_CHAIN: &str = "PICKET_INBOUND";
/// Chain for outbound redirection.
pub const OUTPUT_CHAIN: &str = "PICKET_OUTPUT";
const CHAINS: [&str; 2] = [INBOUND_CHAIN, OUTPUT_CHAIN];

/// An address family, with the table tools that serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4, `iptables`.
    V4,
    /// IPv6, `ip6tables`.
    V6,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }

    fn matches(self, addr: IpAddr) -> bool {
        matches!(
            (self, addr),
            (Self::V4, IpAddr::V4(_)) | (Self::V6, IpAddr::V6(_))
        )
    }
}

/// What to redirect and what to leave alone.
#[derive(Debug, Clone)]
pub struct Interception {
    /// UID the sidecar runs as; its traffic is never redirected.
    pub proxy_uid: u32,
    /// Port of the sidecar's inbound listener.
    pub inbound_port: u16,
    /// Port of the sidecar's outbound listener.
    pub outbound_port: u16,
    /// Inbound destination ports left alone (e.g. the admin port for probes).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destination networks left alone, as `addr/len` (either family; each
    /// family's rules take the networks of that family).
    pub exclude_outbound_cidrs: Vec<(IpAddr, u8)>,
}

/// One rule line of the restore input, as `iptables-save` writes it (`-A CHAIN ...`).
pub type Rule = String;

impl Interception {
    /// The rules that fill the two chains for `family`, in order.
    pub fn chain_rules(&self, family: Family) -> Vec<Rule> {
        let mut rules = Vec::new();
        // Inbound: leave excluded ports alone, and connections made straight to the sidecar.
        let mut skip_in = self.exclude_inbound_ports.clone();
        skip_in.push(self.inbound_port);
        for p in &skip_in {
            rules.push(format!(
                "-A {INBOUND_CHAIN} -p tcp -m tcp --dport {p} -j RETURN"
            ));
        }
        rules.push(format!(
            "-A {INBOUND_CHAIN} {FIRST_PACKET} -j REDIRECT --to-ports {}",
            self.inbound_port
        ));
        // Outbound: the sidecar's own connections must leave untouched, or they would loop.
        rules.push(format!(
            "-A {OUTPUT_CHAIN} -m owner --uid-owner {} -j RETURN",
            self.proxy_uid
        ));
        rules.push(format!("-A {OUTPUT_CHAIN} -o lo -j RETURN"));
        for p in &self.exclude_outbound_ports {
            rules.push(format!(
                "-A {OUTPUT_CHAIN} -p tcp -m tcp --dport {p} -j RETURN"
            ));
        }
        for (addr, len) in &self.exclude_outbound_cidrs {
            if family.matches(*addr) {
                rules.push(format!("-A {OUTPUT_CHAIN} -d {addr}/{len} -j RETURN"));
            }
        }
        rules.push(format!(
            "-A {OUTPUT_CHAIN} {FIRST_PACKET} -j REDIRECT --to-ports {}",
            self.outbound_port
        ));
        rules
    }
}

/// The jumps from the built-in chains into Picket's, as `iptables-save` writes them.
pub fn jumps() -> [String; 2] {
    [
        format!("-A PREROUTING -p tcp -j {INBOUND_CHAIN}"),
        format!("-A OUTPUT -p tcp -j {OUTPUT_CHAIN}"),
    ]
}

/// Picket's part of one family's nat table: its chains (with their rules) and how many
/// copies of each jump into them exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PicketRules {
    /// Chain name -> rule lines, for the chains that exist.
    pub chains: BTreeMap<String, Vec<Rule>>,
    /// How many copies of each of [`jumps`] exist.
    pub jumps: [usize; 2],
}

impl PicketRules {
    /// The rules `interception` wants for `family`, with one jump each.
    pub fn wanted(interception: &Interception, family: Family) -> Self {
        let mut chains: BTreeMap<String, Vec<Rule>> = CHAINS
            .iter()
            .map(|c| ((*c).to_owned(), Vec::new()))
            .collect();
        for rule in interception.chain_rules(family) {
            let chain = rule
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            chains.entry(chain).or_default().push(rule);
        }
        Self {
            chains,
            jumps: [1, 1],
        }
    }

    /// Picket's part of `iptables-save -t nat` output.
    pub fn from_save(save: &str) -> Self {
        let mut rules = Self::default();
        let jumps = jumps();
        let mut in_nat = false;
        for line in save.lines().map(str::trim) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
                continue;
            }
            if !in_nat {
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                if CHAINS.contains(&name) {
                    rules.chains.entry(name.to_owned()).or_default();
                }
                continue;
            }
            if let Some(i) = jumps.iter().position(|j| j == line) {
                rules.jumps[i] += 1;
                continue;
            }
            let mut words = line.split_whitespace();
            if words.next() == Some("-A")
                && let Some(chain) = words.next()
                && CHAINS.contains(&chain)
            {
                rules
                    .chains
                    .entry(chain.to_owned())
                    .or_default()
                    .push(line.to_owned());
            }
        }
        rules
    }
}

/// The `iptables-restore --noflush` input that turns `current` into `target`: Picket's
/// chains declared (created or flushed) and refilled, jumps added or removed to the wanted
/// count, chains no longer wanted flushed and deleted. Other rules are not mentioned, so
/// they stay as they are.
pub fn transition(current: &PicketRules, target: &PicketRules) -> String {
    let mut out = String::from("*nat\n");
    for chain in target.chains.keys() {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for rules in target.chains.values() {
        for rule in rules {
            out.push_str(rule);
            out.push('\n');
        }
    }
    for (i, jump) in jumps().iter().enumerate() {
        let (have, want) = (current.jumps[i], target.jumps[i]);
        for _ in have..want {
            out.push_str(jump);
            out.push('\n');
        }
        let delete = jump.replacen("-A ", "-D ", 1);
        for _ in want..have {
            out.push_str(&delete);
            out.push('\n');
        }
    }
    for chain in current.chains.keys() {
        if !target.chains.contains_key(chain) {
            out.push_str(&format!("-F {chain}\n-X {chain}\n"));
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// Why the rules could not be applied or removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IptablesError {
    /// The binary could not be run.
    #[error("cannot run {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The binary ran and failed.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// The IPv6 rules could not be installed in a namespace with IPv6 addresses; nothing was
    /// changed (the IPv4 rules were rolled back).
    #[error(
        "the namespace has IPv6 addresses ({addresses}) but the IPv6 rules cannot be installed, \
         so IPv6 traffic would bypass the sidecar; nothing was changed: {source}"
    )]
    Ipv6Required {
        /// The addresses found.
        addresses: String,
        /// Why the IPv6 rules failed.
        source: Box<IptablesError>,
    },
    /// A family's change failed after the other family's had been applied, and undoing that
    /// one failed too: the rules are in an unknown state.
    #[error("{source}; rolling back the {family} rules also failed: {rollback}")]
    RollbackFailed {
        /// The family whose rollback failed.
        family: &'static str,
        /// The first failure.
        source: Box<IptablesError>,
        /// The rollback failure.
        rollback: Box<IptablesError>,
    },
}

/// The IPv6 addresses of this network namespace other than loopback and link-local (from
/// `/proc/net/if_inet6`); `None` when the kernel has no IPv6 at all.
pub fn routable_ipv6_addresses() -> Option<Vec<Ipv6Addr>> {
    let text = std::fs::read_to_string("/proc/net/if_inet6").ok()?;
    Some(parse_if_inet6(&text))
}

fn parse_if_inet6(text: &str) -> Vec<Ipv6Addr> {
    text.lines()
        .filter_map(|line| {
            let hex = line.split_whitespace().next()?;
            let bits = u128::from_str_radix(hex, 16).ok()?;
            let addr = Ipv6Addr::from(bits);
            let link_local = addr.segments()[0] & 0xffc0 == 0xfe80;
            (!addr.is_loopback() && !link_local).then_some(addr)
        })
        .collect()
}

/// Applies, prints or removes the rules of both families.
#[derive(Debug)]
pub struct Runner {
    /// `iptables`, `iptables-nft` or `iptables-legacy`: `<binary>-save` and
    /// `<binary>-restore` are run for IPv4.
    pub iptables: String,
    /// The same for IPv6 (`ip6tables`, `ip6tables-nft`, `ip6tables-legacy`).
    pub ip6tables: String,
    /// Print the restore input instead of running it.
    pub dry_run: bool,
    /// What a dry run would do, step by step.
    pub printed: Vec<Printed>,
    /// IPv6 addresses beyond loopback and link-local (`None`: the kernel has no IPv6).
    pub ipv6_addresses: Option<Vec<Ipv6Addr>>,
}

/// One step of a dry run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Printed {
    /// The input a family's restore command would be fed.
    Restore {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// The command line.
        command: String,
        /// Its standard input.
        input: String,
    },
    /// The rules in force could not be read (no rights, for a dry run); the restore input
    /// that follows is shown as for a table without Picket's rules.
    Unread {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// Why they could not be read.
        error: String,
    },
}

impl std::fmt::Display for Printed {
    /// As `iptables --dry-run` prints it: a comment line naming the command, then the input.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Restore { command, input, .. } => write!(f, "# {command}\n{input}"),
            Self::Unread { family, error } => write!(
                f,
                "# cannot read the {family} rules in force ({error}); shown as for a table \
                 without Picket's rules"
            ),
        }
    }
}

/// What happened to IPv6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipv6Outcome {
    /// IPv6 rules were applied (or removed).
    Applied,
    /// The kernel has no IPv6.
    NoIpv6,
    /// The IPv6 tools failed in a namespace with no IPv6 address beyond loopback and
    /// link-local; only IPv4 was intercepted. The text says why.
    Skipped(String),
}

impl Runner {
    /// A runner for `iptables` (`iptables`, `iptables-nft` or `iptables-legacy`); the IPv6
    /// binary is the matching `ip6tables` one.
    pub fn new(iptables: &str, dry_run: bool) -> Self {
        let ip6tables = match iptables.rsplit_once('/') {
            Some((dir, base)) => format!("{dir}/{}", base.replacen("iptables", "ip6tables", 1)),
            None => iptables.replacen("iptables", "ip6tables", 1),
        };
        Self {
            iptables: iptables.to_owned(),
            ip6tables,
            dry_run,
            printed: Vec::new(),
            ipv6_addresses: routable_ipv6_addresses(),
        }
    }

    fn binary(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.iptables,
            Family::V6 => &self.ip6tables,
        }
    }

    fn save(&self, family: Family) -> Result<PicketRules, IptablesError> {
        let binary = format!("{}-save", self.binary(family));
        let out = Command::new(&binary)
            .args(["-t", "nat"])
            .output()
            .map_err(|source| IptablesError::Spawn {
                binary: binary.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(IptablesError::Failed {
                command: format!("{binary} -t nat"),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(PicketRules::from_save(&String::from_utf8_lossy(
            &out.stdout,
        )))
    }

    fn restore_command(&self, family: Family) -> String {
        format!("{}-restore --noflush --wait 10", self.binary(family))
    }

    fn restore(&mut self, family: Family, input: &str) -> Result<(), IptablesError> {
        if self.dry_run {
            self.printed.push(Printed::Restore {
                family: family.name(),
                command: self.restore_command(family),
                input: input.to_owned(),
            });
            return Ok(());
        }
        let binary = format!("{}-restore", self.binary(family));
        let spawn_err = |source| IptablesError::Spawn {
            binary: binary.clone(),
            source,
        };
        let mut child = Command::new(&binary)
            .args(["--noflush", "--wait", "10"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).map_err(spawn_err)?;
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if out.status.success() {
            return Ok(());
        }
        Err(IptablesError::Failed {
            command: self.restore_command(family),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }

    /// The rules in force, for a dry run that may lack the rights to read them: then an
    /// empty table is assumed and the printed input says so.
    fn current(&mut self, family: Family) -> Result<PicketRules, IptablesError> {
        match self.save(family) {
            Ok(rules) => Ok(rules),
            Err(e) if self.dry_run => {
                self.printed.push(Printed::Unread {
                    family: family.name(),
                    error: e.to_string(),
                });
                Ok(PicketRules::default())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves both families to the rules `target` gives, IPv4 first. If IPv6 then fails, the
    /// IPv4 change is undone; the failure is an error when the namespace has routable IPv6
    /// addresses (fail closed), and reported as [`Ipv6Outcome::Skipped`] otherwise.
    fn change(
        &mut self,
        target: impl Fn(Family) -> PicketRules,
    ) -> Result<Ipv6Outcome, IptablesError> {
        let v4_before = self.current(Family::V4)?;
        let v4_after = target(Family::V4);
        self.restore(Family::V4, &transition(&v4_before, &v4_after))?;
        let Some(addresses) = self.ipv6_addresses.clone() else {
            return Ok(Ipv6Outcome::NoIpv6);
        };
        let v6 = match self.current(Family::V6) {
            Ok(v6_before) => {
                let input = transition(&v6_before, &target(Family::V6));
                self.restore(Family::V6, &input)
            }
            Err(e) => Err(e),
        };
        let Err(v6_error) = v6 else {
            return Ok(Ipv6Outcome::Applied);
        };
        if addresses.is_empty() {
            return Ok(Ipv6Outcome::Skipped(v6_error.to_string()));
        }
        // Fail closed, and leave IPv4 as it was.
        if let Err(rollback) = self.restore(Family::V4, &transition(&v4_after, &v4_before)) {
            return Err(IptablesError::RollbackFailed {
                family: Family::V4.name(),
                source: Box::new(v6_error),
                rollback: Box::new(rollback),
            });
        }
        Err(IptablesError::Ipv6Required {
            addresses: addresses
                .iter()
                .map(Ipv6Addr::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            source: Box::new(v6_error),
        })
    }

    /// Installs the rules for both families. Running it twice leaves the same rules.
    pub fn apply(&mut self, rules: &Interception) -> Result<Ipv6Outcome, IptablesError> {
        self.change(|family| PicketRules::wanted(rules, family))
    }

    /// Removes Picket's jumps and chains from both families; missing pieces are not an error.
    pub fn cleanup(&mut self) -> Result<Ipv6Outcome, IptablesError> {
        self.change(|_| PicketRules::default())
    }
}

#[cfg(test)]
mod tests;
