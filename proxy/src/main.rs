//! The `picket` binary: every Picket command behind one executable.

use clap::{Parser, Subcommand};

use picket_proxy::cmd;

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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The demo prints its own account; only warnings and errors go to the log unless RUST_LOG says otherwise.
    let default_level = if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    };
    cmd::init_logging(cli.log_format, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("picket: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Demo(args) => cmd::demo::run(args).await,
            Command::Ca(c) => cmd::ca::run(c).await,
            Command::Proxy(args) => cmd::proxy::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("picket: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
