//! The `picket` binary: every Picket command behind one executable.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use picket_cli::cmd;

/// Picket: a small, safe service-mesh sidecar with its own SPIFFE certificate authority.
#[derive(Debug, Parser)]
#[command(name = "picket", version, about)]
struct Cli {
    #[command(flatten)]
    global: cmd::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole local mesh on loopback and walk through what it does.
    Demo(cmd::demo::DemoArgs),
    /// The embedded certificate authority.
    #[command(subcommand)]
    Ca(cmd::ca::CaCommand),
    /// Run the sidecar.
    Proxy(cmd::proxy::ProxyArgs),
    /// Check, test, explain and format authorization policy files offline.
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCommand),
    /// Service graph, unexpected edges, blast radius and a least-privilege policy from flow logs.
    Analyze(cmd::analyze::AnalyzeArgs),
    /// Add the sidecar to Kubernetes workloads in YAML manifests (or take it out again).
    Inject(cmd::inject::InjectArgs),
    /// Program the nat-table rules that send a pod's TCP through its sidecar.
    Iptables(cmd::iptables::IptablesArgs),
    /// The mutating admission webhook that injects the sidecar into new pods.
    #[command(subcommand)]
    Injector(cmd::inject::InjectorCommand),
    /// Watch the Kubernetes cluster and serve sidecars their destinations over mTLS.
    Controller(cmd::controller::ControllerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own account; only errors reach the log unless RUST_LOG says more.
    let default_level = if matches!(cli.command, Command::Demo(_)) {
        "error"
    } else {
        "info"
    };
    cmd::run_main(cli.global.log_format, default_level, async move {
        match cli.command {
            Command::Demo(args) => cmd::demo::run(args).await.map(|()| true),
            Command::Ca(c) => cmd::ca::run(c).await.map(|()| true),
            Command::Proxy(args) => cmd::proxy::run(args).await.map(|()| true),
            Command::Policy(c) => cmd::policy::run(c),
            Command::Analyze(args) => cmd::analyze::run(args).await.map(|()| true),
            Command::Iptables(args) => cmd::iptables::run(args).map(|()| true),
            Command::Inject(args) => cmd::inject::run(args).map(|()| true),
            Command::Injector(c) => cmd::inject::run_injector(c).await.map(|()| true),
            Command::Controller(args) => cmd::controller::run(args).await.map(|()| true),
        }
    })
}
