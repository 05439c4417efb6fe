//! Transparent interception: the nat-table rules that send a pod's TCP through its sidecar.
//!
//! ```text
//! PREROUTING -> PICKET_INBOUND  : excluded inbound ports RETURN, everything else REDIRECT :7143
//! OUTPUT     -> PICKET_OUTPUT   : the proxy's own UID RETURN (no loops), loopback RETURN,
//!                                 excluded ports and CIDRs RETURN, everything else REDIRECT :7140
//! ```
//!
//! Applying is idempotent: the chains are flushed and refilled, and the jumps into them are
//! added only when missing. Cleanup removes the jumps and the chains. Rules are built here as
//! plain argument lists (tested without root), and run through whichever `iptables` binary is
//! given, so both iptables-nft and iptables-legacy work.

use std::net::IpAddr;
use std::process::Command;

/// Chain for inbound redirection.
pub const INBOUND_CHAIN: &str = "PICKET_INBOUND";
/// Chain for outbound redirection.
pub const OUTPUT_CHAIN: &str = "PICKET_OUTPUT";

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
    /// Outbound destination networks left alone, as `addr/len`.
    pub exclude_outbound_cidrs: Vec<(IpAddr, u8)>,
}

/// One `iptables -t nat ...` invocation, as its arguments after `-t nat`.
pub type Rule = Vec<String>;

fn rule(parts: &[&str]) -> Rule {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

impl Interception {
    /// The rules that fill the two chains (after they are created and flushed).
    pub fn chain_rules(&self) -> Vec<Rule> {
        let mut rules = Vec::new();
        // Inbound: leave excluded ports alone, and connections made straight to the sidecar.
        let mut skip_in = self.exclude_inbound_ports.clone();
        skip_in.push(self.inbound_port);
        for p in &skip_in {
            rules.push(rule(&[
                "-A",
                INBOUND_CHAIN,
                "-p",
                "tcp",
                "--dport",
                &p.to_string(),
                "-j",
                "RETURN",
            ]));
        }
        rules.push(rule(&[
            "-A",
            INBOUND_CHAIN,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &self.inbound_port.to_string(),
        ]));
        // Outbound: the sidecar's own connections must leave untouched, or they would loop.
        rules.push(rule(&[
            "-A",
            OUTPUT_CHAIN,
            "-m",
            "owner",
            "--uid-owner",
            &self.proxy_uid.to_string(),
            "-j",
            "RETURN",
        ]));
        rules.push(rule(&["-A", OUTPUT_CHAIN, "-o", "lo", "-j", "RETURN"]));
        for p in &self.exclude_outbound_ports {
            rules.push(rule(&[
                "-A",
                OUTPUT_CHAIN,
                "-p",
                "tcp",
                "--dport",
                &p.to_string(),
                "-j",
                "RETURN",
            ]));
        }
        for (addr, len) in &self.exclude_outbound_cidrs {
            rules.push(rule(&[
                "-A",
                OUTPUT_CHAIN,
                "-d",
                &format!("{addr}/{len}"),
                "-j",
                "RETURN",
            ]));
        }
        rules.push(rule(&[
            "-A",
            OUTPUT_CHAIN,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &self.outbound_port.to_string(),
        ]));
        rules
    }
}

/// The jumps from the built-in chains into Picket's, as `(built-in chain, rule spec)`.
pub fn jumps() -> [(&'static str, Rule); 2] {
    [
        ("PREROUTING", rule(&["-p", "tcp", "-j", INBOUND_CHAIN])),
        ("OUTPUT", rule(&["-p", "tcp", "-j", OUTPUT_CHAIN])),
    ]
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
}

/// Runs iptables commands, or prints them.
#[derive(Debug)]
pub struct Runner {
    /// `iptables`, `iptables-nft` or `iptables-legacy` (or the ip6tables variants).
    pub binary: String,
    /// Print instead of running.
    pub dry_run: bool,
    /// Commands printed in dry-run mode, in order.
    pub printed: Vec<String>,
}

impl Runner {
    fn command_line(&self, args: &[String]) -> String {
        format!("{} -t nat {}", self.binary, args.join(" "))
    }

    /// Runs one command; `Ok(false)` when it exited non-zero and `tolerate` is set.
    fn run(&mut self, args: &[String], tolerate: bool) -> Result<bool, IptablesError> {
        if self.dry_run {
            self.printed.push(self.command_line(args));
            return Ok(true);
        }
        let out = Command::new(&self.binary)
            .arg("-t")
            .arg("nat")
            .args(args)
            .output()
            .map_err(|source| IptablesError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        if out.status.success() {
            return Ok(true);
        }
        if tolerate {
            return Ok(false);
        }
        Err(IptablesError::Failed {
            command: self.command_line(args),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }

    /// Creates (or flushes) the chains, fills them, and adds the jumps that are missing.
    /// Running it twice leaves the same rules.
    pub fn apply(&mut self, rules: &Interception) -> Result<(), IptablesError> {
        for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
            // -N fails when the chain exists; then it is flushed instead.
            if !self.run(&["-N".into(), chain.into()], true)? {
                self.run(&["-F".into(), chain.into()], false)?;
            }
        }
        for r in rules.chain_rules() {
            self.run(&r, false)?;
        }
        for (builtin, spec) in jumps() {
            let mut check = vec!["-C".to_owned(), builtin.to_owned()];
            check.extend(spec.iter().cloned());
            let present = !self.dry_run && self.run(&check, true)?;
            if !present {
                let mut add = vec!["-A".to_owned(), builtin.to_owned()];
                add.extend(spec);
                self.run(&add, false)?;
            }
        }
        Ok(())
    }

    /// Removes the jumps and the chains; missing pieces are not an error.
    pub fn cleanup(&mut self) -> Result<(), IptablesError> {
        for (builtin, spec) in jumps() {
            let mut del = vec!["-D".to_owned(), builtin.to_owned()];
            del.extend(spec);
            // Delete every copy, should an older run have added more than one.
            for _ in 0..16 {
                if !self.run(&del, true)? || self.dry_run {
                    break;
                }
            }
        }
        for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
            self.run(&["-F".into(), chain.into()], true)?;
            self.run(&["-X".into(), chain.into()], true)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Interception {
        Interception {
            proxy_uid: 1337,
            inbound_port: 7143,
            outbound_port: 7140,
            exclude_inbound_ports: vec![7191],
            exclude_outbound_ports: vec![7443],
            exclude_outbound_cidrs: vec![("169.254.0.0".parse().unwrap(), 16)],
        }
    }

    fn lines(rules: &[Rule]) -> Vec<String> {
        rules.iter().map(|r| r.join(" ")).collect()
    }

    #[test]
    fn proxy_uid_returns_before_any_redirect() {
        let l = lines(&sample().chain_rules());
        let uid = l
            .iter()
            .position(|r| r.contains("--uid-owner 1337"))
            .unwrap();
        let redirect = l
            .iter()
            .position(|r| r.starts_with("-A PICKET_OUTPUT") && r.contains("REDIRECT"))
            .unwrap();
        assert!(uid < redirect, "{l:#?}");
    }

    #[test]
    fn exclusions_come_before_redirects() {
        let l = lines(&sample().chain_rules());
        assert_eq!(
            l,
            vec![
                "-A PICKET_INBOUND -p tcp --dport 7191 -j RETURN",
                "-A PICKET_INBOUND -p tcp --dport 7143 -j RETURN",
                "-A PICKET_INBOUND -p tcp -j REDIRECT --to-ports 7143",
                "-A PICKET_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-A PICKET_OUTPUT -o lo -j RETURN",
                "-A PICKET_OUTPUT -p tcp --dport 7443 -j RETURN",
                "-A PICKET_OUTPUT -d 169.254.0.0/16 -j RETURN",
                "-A PICKET_OUTPUT -p tcp -j REDIRECT --to-ports 7140",
            ]
        );
    }

    #[test]
    fn dry_run_prints_the_exact_commands() {
        let mut r = Runner {
            binary: "iptables".into(),
            dry_run: true,
            printed: Vec::new(),
        };
        r.apply(&sample()).unwrap();
        assert_eq!(r.printed[0], "iptables -t nat -N PICKET_INBOUND");
        assert!(
            r.printed
                .contains(&"iptables -t nat -A PREROUTING -p tcp -j PICKET_INBOUND".to_owned())
        );
        assert!(
            r.printed
                .contains(&"iptables -t nat -A OUTPUT -p tcp -j PICKET_OUTPUT".to_owned())
        );
    }
}
