//! Assembles one sidecar from its [`Config`]: admin first (so liveness answers while the
//! certificate is fetched), then identity, then the data-path listeners, then readiness.
//! Shutdown stops accepting, lets in-flight work finish up to the drain deadline, and returns.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::authz::{PolicyLoadError, PolicyStore};
use crate::config::Config;
use crate::identity::{IdentityError, IdentityManager};
use crate::inbound::Inbound;
use crate::metrics::Metrics;
use crate::outbound::{Outbound, Route};
use crate::telemetry::Telemetry;
use crate::tls::TlsError;
use picket_policy::Workload;

/// Why the sidecar stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: String,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No certificate could be obtained.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The policy files could not be loaded at startup.
    #[error("policy: {0}")]
    Policy(#[from] PolicyLoadError),
    /// Telemetry could not be started.
    #[error("telemetry: {0}")]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    /// TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The addresses a running sidecar is bound to.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BoundAddrs {
    /// Inbound mTLS listener.
    pub inbound: SocketAddr,
    /// Shared outbound listener.
    pub outbound: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Each upstream's own listener.
    pub upstreams: BTreeMap<String, SocketAddr>,
}

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, SidecarError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SidecarError::Bind {
            what: what.to_owned(),
            addr,
            source,
        })
}

fn local(l: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    l.local_addr().unwrap_or(fallback)
}

/// Runs a sidecar until `shutdown` is cancelled. `on_ready` is called once, when the
/// certificate is installed and every listener is bound.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&BoundAddrs),
) -> Result<(), SidecarError> {
    let metrics = Arc::new(Metrics::new());
    let telemetry = Telemetry::with_metrics(
        &config.telemetry,
        &config.identity,
        metrics.telemetry.clone(),
    )?;
    let state = Arc::new(AdminState::new(Arc::clone(&metrics), telemetry.clone()));
    let admin_listener = bind("admin", config.admin.listen).await?;
    let admin_addr = local(&admin_listener, config.admin.listen);
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        Arc::clone(&state),
        admin_stop.clone(),
    ));
    tracing::info!(identity = %config.identity, admin = %admin_addr, "sidecar starting");

    let policy = Arc::new(PolicyStore::new(
        config.policy.path.clone(),
        Workload {
            namespace: config.identity.namespace().to_owned(),
            labels: config.labels.clone(),
        },
        config.policy.load.clone(),
        Arc::clone(&metrics),
    )?);
    state.policy.store(Some(Arc::clone(&policy)));
    if config.policy.path.is_none() {
        tracing::warn!(
            default = ?config.policy.load.default_action,
            "no policy files configured: the mesh default action decides every request"
        );
    }

    let identity = IdentityManager::new(config.identity.clone(), &config.ca, Arc::clone(&metrics))?;
    let creds = identity.bootstrap(&shutdown).await?;
    state.creds.store(Some(Arc::clone(&creds)));

    let inbound = Arc::new(Inbound::new(
        &creds,
        &config,
        Arc::clone(&policy),
        Arc::clone(&metrics),
        telemetry.clone(),
    )?);
    let outbound = Arc::new(Outbound::new(
        &creds,
        &config,
        Arc::clone(&metrics),
        telemetry.clone(),
    )?);

    let tracker = TaskTracker::new();
    let in_listener = bind("inbound", config.inbound.listen).await?;
    let out_listener = bind("outbound", config.outbound.listen).await?;
    let mut addrs = BoundAddrs {
        inbound: local(&in_listener, config.inbound.listen),
        outbound: local(&out_listener, config.outbound.listen),
        admin: admin_addr,
        upstreams: BTreeMap::new(),
    };
    let mut upstream_listeners = Vec::new();
    for u in &config.outbound.upstreams {
        if let Some(listen) = u.listen {
            let l = bind(&format!("upstream {}", u.name), listen).await?;
            addrs.upstreams.insert(u.name.clone(), local(&l, listen));
            upstream_listeners.push((u.name.clone(), l));
        }
    }

    let accept_tasks = TaskTracker::new();
    accept_tasks.spawn(Arc::clone(&inbound).serve(in_listener, shutdown.clone(), tracker.clone()));
    accept_tasks.spawn(Arc::clone(&outbound).serve(
        out_listener,
        Route::ByHost,
        shutdown.clone(),
        tracker.clone(),
    ));
    for (name, listener) in upstream_listeners {
        if let Some(ctx) = outbound.upstream(&name) {
            accept_tasks.spawn(Arc::clone(&outbound).serve(
                listener,
                Route::Fixed(ctx),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
    }
    let bundle_watch = tokio::spawn(
        identity
            .bundle_watch()
            .run(Arc::clone(&creds), shutdown.clone()),
    );
    let renewals = {
        let creds = Arc::clone(&creds);
        let shutdown = shutdown.clone();
        tokio::spawn(async move { identity.run_renewals(creds, shutdown).await })
    };

    state.listening.store(true, Ordering::Release);
    let policy_watch = Arc::clone(&policy).watch(shutdown.clone());
    tracing::info!(
        inbound = %addrs.inbound,
        outbound = %addrs.outbound,
        admin = %addrs.admin,
        "sidecar ready"
    );
    on_ready(&addrs);

    shutdown.cancelled().await;
    state.draining.store(true, Ordering::Release);
    accept_tasks.close();
    accept_tasks.wait().await;
    tracker.close();
    tracing::info!(connections = tracker.len(), deadline = ?config.timeouts.drain, "draining");
    if tokio::time::timeout(config.timeouts.drain, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = tracker.len(),
            "drain deadline passed; closing remaining connections"
        );
    }
    renewals.abort();
    bundle_watch.abort();
    if !telemetry.shutdown(Duration::from_secs(5)).await {
        tracing::warn!("telemetry export did not finish within 5 s; the rest is dropped");
    }
    policy_watch.abort();
    admin_stop.cancel();
    let _ = admin_task.await;
    tracing::info!("sidecar stopped");
    Ok(())
}
