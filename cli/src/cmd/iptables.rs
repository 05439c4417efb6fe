//! `picket iptables`: program (or print, or remove) the transparent interception rules, for
//! IPv4 and IPv6, each family in one atomic `iptables-restore`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use anyhow::Context;

use picket_k8s::iptables::{Interception, Ipv6Outcome, Runner};

/// Arguments of `picket iptables`.
#[derive(Debug, clap::Args)]
pub struct IptablesArgs {
    /// UID the sidecar runs as; its own traffic is never redirected.
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    /// The sidecar's inbound listener port.
    #[arg(long, default_value_t = 7143, value_parser = clap::value_parser!(u16).range(1..))]
    inbound_port: u16,
    /// The sidecar's outbound listener port.
    #[arg(long, default_value_t = 7140, value_parser = clap::value_parser!(u16).range(1..))]
    outbound_port: u16,
    /// Inbound ports not to intercept (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports not to intercept.
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_ports: Vec<u16>,
    /// Outbound destination networks not to intercept, `addr/len` (IPv4 or IPv6).
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_cidrs: Vec<String>,
    /// The IPv4 tool family: iptables, iptables-nft or iptables-legacy (`<name>-save` and
    /// `<name>-restore` are run; IPv6 uses the matching ip6tables ones).
    #[arg(long, default_value = "iptables")]
    iptables: String,
    /// The IPv6 tool family, when it is not the one matching `--iptables`.
    #[arg(long)]
    ip6tables: Option<String>,
    /// Print the exact restore input for each family instead of running it.
    #[arg(long)]
    dry_run: bool,
    /// Remove the rules instead of adding them.
    #[arg(long)]
    cleanup: bool,
}

/// Runs `picket iptables`.
pub fn run(args: IptablesArgs) -> anyhow::Result<()> {
    let mut runner = Runner::new(&args.iptables, args.dry_run);
    if let Some(ip6tables) = &args.ip6tables {
        runner.ip6tables = ip6tables.clone();
    }
    let outcome = if args.cleanup {
        runner.cleanup()?
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
                    picket_proxy::config::parse_cidr(c).with_context(|| {
                        format!("--exclude-outbound-cidrs {c:?}: expected addr/len")
                    })
                })
                .collect::<anyhow::Result<_>>()?,
        };
        runner.apply(&interception)?
    };
    for text in &runner.printed {
        println!("{text}");
    }
    match outcome {
        Ipv6Outcome::Applied => {}
        Ipv6Outcome::NoIpv6 => eprintln!("picket iptables: the kernel has no IPv6; IPv4 only"),
        Ipv6Outcome::Skipped(why) => eprintln!(
            "picket iptables: IPv6 rules not installed (no IPv6 address beyond loopback and \
             link-local in this namespace): {why}"
        ),
    }
    Ok(())
}
