//! `picket controller`: watches the cluster and serves sidecars their destinations and policies.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use picket_ca::SpiffeId;
use picket_controller::{ApiConfig, ControllerConfig, Distributed};
use picket_k8s::inject::{POLICY_CONFIGMAP, TRUST_BUNDLE_CONFIGMAP};
use picket_proxy::config::CaConfig;
use tokio_util::sync::CancellationToken;

/// Arguments of `picket controller`.
#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    /// Address the discovery service listens on (port 0 picks a free port).
    #[arg(long, default_value = "0.0.0.0:7150")]
    listen: SocketAddr,
    /// The controller's own SPIFFE ID (its certificate comes from the Picket CA, like any
    /// workload's); pod identities are spelled in its trust domain.
    #[arg(
        long,
        default_value = "spiffe://cluster.local/ns/picket/sa/picket-controller"
    )]
    identity: SpiffeId,
    /// The CA's URL; repeat for replicas, tried in order.
    #[arg(long = "ca-url", default_value = "https://picket-ca.picket.svc:7443")]
    ca_urls: Vec<String>,
    /// PEM roots of the mesh (the trust bundle): the CA's and the sidecars' certificates chain
    /// to them. Also the content of the picket-trust-bundle ConfigMaps it writes.
    #[arg(
        long = "trust-bundle-file",
        default_value = "/etc/picket/trust/bundle.pem"
    )]
    trust_bundle: PathBuf,
    /// The bearer credential for the CA: the projected service-account token (audience
    /// picket-ca), or a join token.
    #[arg(long, default_value = "/var/run/secrets/picket/token")]
    token_file: PathBuf,
    /// The Kubernetes API server (`https://host[:port]`).
    #[arg(
        long,
        value_name = "URL",
        default_value = "https://kubernetes.default.svc"
    )]
    kube_api: String,
    /// PEM roots for the API server's certificate.
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    kube_ca_file: PathBuf,
    /// The controller's service-account token for the API server (re-read per request).
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    kube_token_file: PathBuf,
    /// Also write this policy file into every injected namespace's picket-policy ConfigMap
    /// (file mode; without it, those ConfigMaps are left to whoever manages them).
    #[arg(long)]
    policy_file: Option<PathBuf>,
    /// The policy root namespace: its AuthorizationPolicy objects go to the sidecars of every
    /// namespace (the sidecars' `policy.root_namespace`).
    #[arg(long, default_value = "picket-system")]
    root_namespace: String,
    /// How often a policy group whose CRD is not installed (Istio's) is looked for again.
    #[arg(long, default_value = "30s", value_parser = picket_common::duration::parse)]
    policy_discovery_interval: std::time::Duration,
    /// Once serving, write {"listen":"IP:PORT"} here (for supervisors and tests).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

/// Runs the controller until SIGTERM or SIGINT.
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let mut distributed = vec![Distributed {
        name: TRUST_BUNDLE_CONFIGMAP.to_owned(),
        key: "bundle.pem".to_owned(),
        source: args.trust_bundle.clone(),
    }];
    if let Some(policy) = &args.policy_file {
        distributed.push(Distributed {
            name: POLICY_CONFIGMAP.to_owned(),
            key: "policy.yaml".to_owned(),
            source: policy.clone(),
        });
    }
    let config = ControllerConfig {
        api: ApiConfig {
            url: args.kube_api,
            ca_file: args.kube_ca_file,
            token_file: args.kube_token_file,
        },
        identity: args.identity,
        ca: CaConfig {
            urls: args.ca_urls,
            trust_bundle: args.trust_bundle,
            join_token_file: args.token_file,
        },
        distributed,
        root_namespace: args.root_namespace,
        policy_discovery_interval: args.policy_discovery_interval,
    };
    let shutdown = CancellationToken::new();
    super::cancel_on_signal(shutdown.clone())?;
    let (listener, _) = super::bind(args.listen).await?;
    let mut ready_error = None;
    let ready_file = args.ready_file;
    picket_controller::run(config, listener, shutdown, |local| {
        if let Some(path) = &ready_file
            && let Err(e) = super::announce_listener(path, local)
        {
            ready_error = Some(e);
        }
    })
    .await
    .context("controller failed")?;
    if let Some(e) = ready_error {
        return Err(e);
    }
    Ok(())
}
