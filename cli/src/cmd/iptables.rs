//! `picket iptables`: program (or print, or remove) the transparent interception rules, for
//! IPv4 and IPv6, each family in one atomic `iptables-restore`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use picket_k8s::iptables::{Interception, Ipv6Outcome, Printed, Runner};

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
    /// Outbound destination networks not to intercept, `addr/len` (IPv4 or IPv6), parsed as
    /// policy `ipBlocks` are (a bare address is one host; host bits set is an error).
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_cidrs: Vec<picket_common::Cidr>,
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
    /// What is printed on stdout: text, the dry run's restore inputs as they would be fed;
    /// json and yaml, the dry run's steps and what happened to IPv6.
    #[command(flatten)]
    output: super::OutputArgs,
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
                .map(|c| (c.addr(), c.prefix_len()))
                .collect(),
        };
        runner.apply(&interception)?
    };
    report(&args, &runner.printed, &outcome)
}

/// A run as `iptables -o json|yaml` prints it.
#[derive(serde::Serialize)]
struct Report<'a> {
    dry_run: bool,
    cleanup: bool,
    steps: &'a [Printed],
    /// `applied`, `no_ipv6` (the kernel has none) or `skipped`.
    ipv6: &'static str,
    /// Why the IPv6 rules were skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv6_skipped_because: Option<&'a str>,
}

/// Prints the dry run's steps (text) or the whole report (json, yaml) on stdout; in text,
/// what happened to IPv6 goes to stderr.
fn report(args: &IptablesArgs, printed: &[Printed], outcome: &Ipv6Outcome) -> anyhow::Result<()> {
    let output = args.output.output;
    if output == super::Output::Text {
        match outcome {
            Ipv6Outcome::Applied => {}
            Ipv6Outcome::NoIpv6 => eprintln!("picket iptables: the kernel has no IPv6; IPv4 only"),
            Ipv6Outcome::Skipped(why) => eprintln!(
                "picket iptables: IPv6 rules not installed (no IPv6 address beyond loopback and \
                 link-local in this namespace): {why}"
            ),
        }
    }
    let (ipv6, ipv6_skipped_because) = match outcome {
        Ipv6Outcome::Applied => ("applied", None),
        Ipv6Outcome::NoIpv6 => ("no_ipv6", None),
        Ipv6Outcome::Skipped(why) => ("skipped", Some(why.as_str())),
    };
    let report = Report {
        dry_run: args.dry_run,
        cleanup: args.cleanup,
        steps: printed,
        ipv6,
        ipv6_skipped_because,
    };
    output.print(&report, || {
        printed.iter().map(|p| format!("{p}\n")).collect::<String>()
    })
}
