//! The `picket-sidecar` binary: the sidecar alone, with the same `proxy` command and options
//! as `picket proxy`. The pods' image runs it: it links none of the CA server's, the
//! controller's, the injector's or `analyze`'s code, so a sidecar maps and touches less program
//! text (ARCHITECTURE.md, "Runtime and memory").

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use picket_cli::cmd;

/// Picket's sidecar alone; `picket` holds every other command.
#[derive(Debug, Parser)]
#[command(name = "picket-sidecar", version, about)]
struct Cli {
    #[command(flatten)]
    global: cmd::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar.
    Proxy(cmd::proxy::ProxyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cmd::run_main(cli.global.log_format, "info", async move {
        match cli.command {
            Command::Proxy(args) => cmd::proxy::run(args).await.map(|()| true),
        }
    })
}
