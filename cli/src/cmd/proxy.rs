//! `picket proxy`: run the sidecar from a configuration file.

use std::path::PathBuf;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use picket_proxy::config::{Config, IdentityOverride};

/// Arguments of `picket proxy`.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// The sidecar configuration (YAML).
    #[arg(long)]
    config: PathBuf,
    /// Once ready, write the bound addresses here as JSON (for supervisors and tests).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// The workload's namespace, when the file leaves it out (Kubernetes: downward API).
    #[arg(long, env = "PICKET_NAMESPACE")]
    namespace: Option<String>,
    /// The workload's service account, when the file leaves it out.
    #[arg(long, env = "PICKET_SERVICE_ACCOUNT")]
    service_account: Option<String>,
}

/// Runs the sidecar until SIGTERM or SIGINT, then drains.
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let config = Config::load(
        &args.config,
        &IdentityOverride {
            namespace: args.namespace.clone(),
            service_account: args.service_account.clone(),
        },
    )?;
    let shutdown = CancellationToken::new();
    super::cancel_on_signal(shutdown.clone())?;
    let ready_file = args.ready_file.clone();
    let mut ready_error = None;
    picket_proxy::sidecar::run(config, shutdown, |addrs| {
        if let Some(path) = &ready_file
            && let Err(e) = serde_json::to_value(addrs)
                .map_err(anyhow::Error::from)
                .and_then(|v| super::write_ready_file(path, &v))
        {
            ready_error = Some(e);
        }
    })
    .await
    .context("sidecar failed")?;
    if let Some(e) = ready_error {
        return Err(e.context("cannot write the ready file"));
    }
    Ok(())
}
