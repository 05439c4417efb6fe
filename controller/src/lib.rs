//! picket-controller: `picket controller`, the small control side for Kubernetes.
//!
//! One watcher per resource for the whole cluster (EndpointSlices, Services, Pods,
//! Namespaces; [`cluster`]), one index of every destination address built from them
//! ([`index`]), subscriptions shared per address ([`hub`]), AuthorizationPolicy objects
//! ([`policy`]), the sidecars' discovery and policy service over mTLS with the mesh's own
//! identities ([`serve`]), and the ConfigMaps every injected
//! namespace needs ([`bundle`]). It talks to the API server with kube-rs on its own HTTPS
//! transport ([`api`]).

pub mod api;
pub mod bundle;
pub mod cluster;
pub mod hub;
pub mod index;
pub mod policy;
pub mod serve;

use std::net::SocketAddr;
use std::sync::Arc;

use picket_ca::SpiffeId;
use picket_proxy::config::CaConfig;
use picket_proxy::identity::IdentityManager;
use picket_proxy::metrics::Metrics;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use api::ApiConfig;
pub use bundle::Distributed;

/// Everything `picket controller` needs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The API server.
    pub api: ApiConfig,
    /// The controller's own identity; its trust domain is the one pod identities are spelled in.
    pub identity: SpiffeId,
    /// The Picket CA the controller gets its certificate from, like any workload.
    pub ca: CaConfig,
    /// The ConfigMaps to keep in every injected namespace.
    pub distributed: Vec<Distributed>,
    /// The policy root namespace: its policy objects go to every sidecar.
    pub root_namespace: String,
    /// How often a policy group that is not served is looked for again.
    pub policy_discovery_interval: std::time::Duration,
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControllerError {
    /// The API client could not be set up.
    #[error("Kubernetes API: {0}")]
    Api(#[from] api::ApiError),
    /// The controller's certificate could not be obtained.
    #[error("identity: {0}")]
    Identity(#[from] picket_proxy::identity::IdentityError),
    /// The TLS server could not be configured.
    #[error("discovery TLS: {0}")]
    Tls(#[from] picket_proxy::tls::TlsError),
    /// A watcher ended before its first list.
    #[error("a watcher stopped before its first list")]
    WatcherStopped,
}

/// Runs the controller until `shutdown`: the certificate first, then the watchers; the
/// discovery listener accepts once every store holds its first list, and `ready` is called
/// then with its address.
pub async fn run(
    config: ControllerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ControllerError> {
    let local = listener.local_addr().map_err(|e| api::ApiError::Exchange {
        url: "discovery listener".to_owned(),
        message: e.to_string(),
    })?;
    let client = api::ApiService::new(&config.api)?.client();
    let metrics = Arc::new(Metrics::new());
    let identity = IdentityManager::new(config.identity.clone(), &config.ca, metrics)?;
    let credentials = identity.bootstrap(&shutdown).await?;
    {
        let credentials = Arc::clone(&credentials);
        let shutdown = shutdown.clone();
        let bundle = identity.bundle_watch();
        let renew_creds = Arc::clone(&credentials);
        let renew_shutdown = shutdown.clone();
        tokio::spawn(async move { identity.run_renewals(renew_creds, renew_shutdown).await });
        tokio::spawn(async move { bundle.run(credentials, shutdown).await });
    }

    let changed = Arc::new(Notify::new());
    let namespaces_changed = Arc::new(Notify::new());
    let stores = cluster::watch(&client, &changed, &namespaces_changed, &shutdown);
    tokio::select! {
        r = stores.ready() => r.map_err(|_| ControllerError::WatcherStopped)?,
        () = shutdown.cancelled() => return Ok(()),
    }
    let Some(policy_index) =
        policy::watch(&client, config.policy_discovery_interval, &shutdown).await
    else {
        return Ok(());
    };
    let trust_domain = config.identity.trust_domain().clone();
    let hub = Arc::new(hub::Hub::new(stores.index(&trust_domain)));
    tracing::info!(
        pods = stores.pods.state().len(),
        services = stores.services.state().len(),
        endpoint_slices = stores.slices.state().len(),
        namespaces = stores.namespaces.state().len(),
        "cluster listed"
    );
    tokio::spawn(cluster::rebuild_loop(
        stores.clone(),
        trust_domain,
        Arc::clone(&hub),
        changed,
        shutdown.clone(),
    ));
    tokio::spawn(bundle::distribute(
        client,
        stores.namespaces.clone(),
        config.distributed,
        namespaces_changed,
        shutdown.clone(),
    ));
    ready(local);
    tracing::info!(listen = %local, identity = %config.identity, "discovery serving");
    let policies = serve::PolicyFeed {
        index: policy_index,
        root_namespace: config.root_namespace,
    };
    serve::serve(listener, &credentials, hub, policies, &shutdown).await?;
    Ok(())
}
