//! The `picket` binary: every Picket command behind one executable.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use picket_cli::cmd;

/// mimalloc: measured 5-10 % less CPU time per proxied request than glibc's malloc, for about
/// 0.4 MiB more private memory (see ARCHITECTURE.md, "Runtime and memory").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Picket: a small, safe service-mesh sidecar with its own SPIFFE certificate authority.
#[derive(Debug, Parser)]
#[command(name = "picket", version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = cmd::LogFormat::Text)]
    log_format: cmd::LogFormat,
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

/// One CPU (the affinity mask and cgroup quota both count): a current-thread runtime, which
/// needs no cross-thread wake-ups or work stealing. More: one worker per CPU.
fn runtime_builder() -> tokio::runtime::Builder {
    match std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own account; only errors reach the log unless RUST_LOG says more.
    let default_level = if matches!(cli.command, Command::Demo(_)) {
        "error"
    } else {
        "info"
    };
    cmd::init_logging(cli.log_format, default_level);
    let runtime = match runtime_builder().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("picket: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
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
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        // A policy check or test that found problems, already reported.
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("picket: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line, `outer: cause: cause`, each cause printed once: a
/// message that already quotes its cause (`cannot read x: No such file`) is not followed by
/// that cause again.
fn error_chain(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}
