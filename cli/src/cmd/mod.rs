//! Command-line front ends. Each submodule parses its arguments with clap and calls the
//! libraries; `anyhow` is used here and nowhere else in the proxy.

pub mod analyze;
pub mod ca;
pub mod controller;
pub mod demo;
pub mod inject;
pub mod iptables;
pub mod policy;
pub mod proxy;

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use serde::Serialize;

/// The options of every command of both binaries, flattened into each one's top level.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How logs are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The format of what a command prints on standard output: one definition, flattened into
/// every command that prints data (`-o, --output`). Messages and per-item reports go to
/// standard error in every format, so standard output holds exactly one document.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct OutputArgs {
    /// Output format: text (for people), json or yaml (for programs).
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// The `-o, --output` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// One JSON document.
    Json,
    /// One YAML document.
    Yaml,
}

impl Output {
    /// `value` in this format; `text` makes the text form.
    pub fn render<T: Serialize>(
        self,
        value: &T,
        text: impl FnOnce() -> String,
    ) -> anyhow::Result<String> {
        match self {
            Self::Text => Ok(text()),
            Self::Json => {
                let mut json = serde_json::to_string_pretty(value)?;
                json.push('\n');
                Ok(json)
            }
            Self::Yaml => serde_saphyr::to_string(value).context("cannot write YAML"),
        }
    }

    /// Prints `value` in this format on standard output.
    pub fn print<T: Serialize>(
        self,
        value: &T,
        text: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        print_stdout(&self.render(value, text)?)
    }
}

/// Writes `text` to standard output and flushes it (a closed pipe is an error, not a panic).
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// Kubernetes objects as one JSON document, as kubectl prints them: the object itself when
/// there is one, else a `v1` `List` of them.
pub fn object_list(mut objects: Vec<serde_json::Value>) -> serde_json::Value {
    if objects.len() == 1
        && let Some(only) = objects.pop()
    {
        return only;
    }
    serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": objects })
}

/// Sets up `tracing` on stderr. `RUST_LOG` (read here, once) overrides `default_level`.
pub fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// How each binary runs its command: logging on stderr, the runtime, and the exit status.
/// `command` returns `Ok(false)` when it found problems and already reported them (a policy
/// check); an error is printed as one line, exit status 2.
pub fn run_main(
    format: LogFormat,
    default_level: &str,
    command: impl Future<Output = anyhow::Result<bool>>,
) -> ExitCode {
    init_logging(format, default_level);
    let runtime = match runtime_builder().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("picket: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("picket: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
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

/// Writes `value` as JSON to `path` atomically (temp file then rename), so a reader polling
/// for the file never sees half of it.
pub fn write_ready_file(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(value)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Binds a server's listener; the address it got (port 0 picks one).
pub async fn bind(
    addr: std::net::SocketAddr,
) -> anyhow::Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Writes the ready file of a server with one listener: `{"listen": "IP:PORT"}`.
pub fn announce_listener(path: &Path, local: std::net::SocketAddr) -> anyhow::Result<()> {
    write_ready_file(path, &serde_json::json!({ "listen": local.to_string() }))
        .with_context(|| format!("cannot write the ready file {}", path.display()))
}

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn cancel_on_signal(token: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        token.cancel();
    });
    Ok(())
}
