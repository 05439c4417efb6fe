//! `picket iptables`: program (or print, or remove) the transparent interception rules.

#![allow(clippy::print_stdout)]

use anyhow::Context;

use picket_k8s::iptables::{Interception, Runner};

/// Arguments of `picket iptables`.
#[derive(Debug, clap::Args)]
pub struct IptablesArgs {
    /// UID the sidecar runs as; its own traffic is never redirected.
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    /// The sidecar's inbound listener port.
    #[arg(long, default_value_t = 7143)]
    inbound_port: u16,
    /// The sidecar's outbound listener port.
    #[arg(long, default_value_t = 7140)]
    outbound_port: u16,
    /// Inbound ports not to intercept (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports not to intercept.
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_ports: Vec<u16>,
    /// Outbound destination networks not to intercept, `addr/len`.
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_cidrs: Vec<String>,
    /// The iptables binary: iptables, iptables-nft or iptables-legacy.
    #[arg(long, default_value = "iptables")]
    iptables: String,
    /// Print the commands instead of running them.
    #[arg(long)]
    dry_run: bool,
    /// Remove the rules instead of adding them.
    #[arg(long)]
    cleanup: bool,
}

/// Runs `picket iptables`.
pub fn run(args: IptablesArgs) -> anyhow::Result<()> {
    let mut runner = Runner {
        binary: args.iptables.clone(),
        dry_run: args.dry_run,
        printed: Vec::new(),
    };
    if args.cleanup {
        runner.cleanup()?;
    } else {
        let interception = Interception {
            proxy_uid: args.proxy_uid,
            inbound_port: args.inbound_port,
            outbound_port: args.outbound_port,
            exclude_inbound_ports: args.exclude_inbound_ports.clone(),
            exclude_outbound_ports: args.exclude_outbound_ports.clone(),
            exclude_outbound_cidrs: args
                .exclude_outbound_cidrs
                .iter()
                .map(|c| {
                    picket_proxy::config::parse_cidr(c)
                        .with_context(|| format!("{c:?}: expected addr/len"))
                })
                .collect::<anyhow::Result<_>>()?,
        };
        runner.apply(&interception)?;
    }
    for line in &runner.printed {
        println!("{line}");
    }
    Ok(())
}
