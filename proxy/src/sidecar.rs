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
    /// The controller client (`controller:`) could not be set up.
    #[error(transparent)]
    Controller(#[from] crate::discover::controller::ControllerClientError),
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
    /// The health listener (rewritten kubelet probes), when configured.
    pub health: Option<SocketAddr>,
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

/// The IPv6 twin of a transparent listener bound to the IPv4 wildcard or loopback address:
/// IPv6 connections redirected by ip6tables arrive at the same port on `::` (inbound) or `::1`
/// (outbound). `None` when `bound` has no twin or the host has no IPv6.
async fn bind_ipv6_twin(
    what: &str,
    bound: SocketAddr,
) -> Result<Option<TcpListener>, SidecarError> {
    use std::net::{IpAddr, Ipv6Addr};
    let ip = match bound.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => Ipv6Addr::UNSPECIFIED,
        IpAddr::V4(v4) if v4.is_loopback() => Ipv6Addr::LOCALHOST,
        _ => return Ok(None),
    };
    let addr = SocketAddr::from((ip, bound.port()));
    let bind_err = |source| SidecarError::Bind {
        what: format!("{what} (IPv6)"),
        addr,
        source,
    };
    let socket = match socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    ) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(EAFNOSUPPORT) => {
            tracing::info!(listener = what, "no IPv6 on this host: IPv4 listener only");
            return Ok(None);
        }
        Err(e) => return Err(bind_err(e)),
    };
    // IPv4 stays on its own socket, so each connection keeps its family's original destination.
    socket.set_only_v6(true).map_err(bind_err)?;
    socket.set_reuse_address(true).map_err(bind_err)?;
    socket.set_nonblocking(true).map_err(bind_err)?;
    match socket.bind(&addr.into()) {
        Ok(()) => {}
        // IPv6 disabled in this namespace (no ::1 / no IPv6 address at all).
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
            tracing::info!(listener = what, %addr, "IPv6 unavailable in this namespace: IPv4 listener only");
            return Ok(None);
        }
        Err(e) => return Err(bind_err(e)),
    }
    socket.listen(1024).map_err(bind_err)?;
    let listener = TcpListener::from_std(socket.into()).map_err(bind_err)?;
    Ok(Some(listener))
}

/// `EAFNOSUPPORT` on Linux: the kernel was built without IPv6.
const EAFNOSUPPORT: i32 = 97;

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
    let state_saver = telemetry.spawn_state_saver(shutdown.clone());
    let state = Arc::new(AdminState::new(Arc::clone(&metrics), telemetry.clone()));
    let admin = Admin::start(&config, &state).await?;
    tracing::info!(identity = %config.identity, admin = %admin.addr, "sidecar starting");

    let policy = policy_store(&config, &metrics)?;
    state.policy.store(Some(Arc::clone(&policy)));
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
    let outbound = Outbound::new(&creds, &config, Arc::clone(&metrics), telemetry.clone())?
        .with_policy(Arc::clone(&policy));
    let (outbound, policy_follow) =
        cluster_mode(outbound, &config, &creds, &policy, &telemetry, &shutdown).await?;
    let outbound = Arc::new(outbound);

    let listeners = DataListeners::bind(&config, &admin).await?;
    let addrs = listeners.addrs.clone();
    let tracker = TaskTracker::new();
    let accept_tasks = listeners.serve(&inbound, &outbound, &shutdown, &tracker);
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
    drain(accept_tasks, tracker, config.timeouts.drain).await;
    renewals.abort();
    bundle_watch.abort();
    if let Some(saver) = state_saver {
        let _ = saver.await;
    }
    if !telemetry.shutdown(Duration::from_secs(5)).await {
        tracing::warn!("telemetry export did not finish within 5 s; the rest is dropped");
    }
    policy_watch.abort();
    policy_follow
        .iter()
        .for_each(tokio::task::JoinHandle::abort);
    admin.stop().await;
    tracing::info!("sidecar stopped");
    Ok(())
}

/// The listeners that answer from the start, before the certificate: admin (with its IPv6
/// twin when it listens on every address) and the health listener of rewritten probes.
struct Admin {
    addr: SocketAddr,
    health: Option<SocketAddr>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Admin {
    async fn start(config: &Config, state: &Arc<AdminState>) -> Result<Self, SidecarError> {
        let listener = bind("admin", config.admin.listen).await?;
        let addr = local(&listener, config.admin.listen);
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        // An admin port open on the pod's address (kubelet probes, scrapers) is open on its
        // IPv6 address too, or an IPv6-only pod could never be probed.
        let twin = if addr.ip().is_unspecified() {
            bind_ipv6_twin("admin", addr).await?
        } else {
            None
        };
        for l in std::iter::once(listener).chain(twin) {
            tasks.push(tokio::spawn(admin::serve(
                l,
                Arc::clone(state),
                config.listener_settings(),
                stop.clone(),
            )));
        }
        // The app's rewritten probes are answered from the start: they reach the app, not us.
        let mut health_addr = None;
        if let Some(health) = &config.health {
            let listener = bind("health", health.listen).await?;
            let bound = local(&listener, health.listen);
            health_addr = Some(bound);
            let probes = Arc::new(health.probes.clone());
            let tls = Arc::new(crate::health::probe_tls_config().map_err(TlsError::from)?);
            let twin = bind_ipv6_twin("health", bound).await?;
            for l in std::iter::once(listener).chain(twin) {
                tasks.push(tokio::spawn(crate::health::serve(
                    l,
                    Arc::clone(&probes),
                    Arc::clone(&tls),
                    config.listener_settings(),
                    stop.clone(),
                )));
            }
        }
        Ok(Self {
            addr,
            health: health_addr,
            stop,
            tasks,
        })
    }

    /// Stops the admin and health listeners, last, and waits for them.
    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Cluster mode (a `controller:` section): the controller answers for transparent
/// destinations, in place of any listed in the file (see docs/balancing.md), and sends the
/// namespace's policy objects (the follower task is returned). Its pod addresses are the
/// announced address sets peers' source addresses are checked against (a replica, or a
/// foreign address: see `telemetry::owners`).
async fn cluster_mode(
    outbound: Outbound,
    config: &Config,
    creds: &Arc<crate::tls::Credentials>,
    policy: &Arc<PolicyStore>,
    telemetry: &Telemetry,
    shutdown: &CancellationToken,
) -> Result<(Outbound, Option<tokio::task::JoinHandle<()>>), SidecarError> {
    let Some(source) = &config.controller else {
        return Ok((outbound, None));
    };
    let client = Arc::new(crate::discover::controller::ControllerDiscover::new(
        source, creds,
    )?);
    telemetry.set_address_owners(Arc::new(crate::discover::AnnouncedOwners::new(
        Arc::clone(&client) as Arc<dyn crate::discover::Discover>,
    )));
    let follow = cluster_policies(&client, policy, shutdown).await?;
    Ok((outbound.with_discover(client), Some(follow)))
}

/// Subscribes to the controller's policy set and waits for the first one to be loaded with
/// the files: a sidecar in cluster mode serves only once the namespace's policy objects are
/// in force (a set that does not load fails the start, as a bad policy file does).
async fn cluster_policies(
    client: &Arc<crate::discover::controller::ControllerDiscover>,
    policy: &Arc<PolicyStore>,
    shutdown: &CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, SidecarError> {
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let follow = tokio::spawn(crate::discover::controller::policies::follow(
        Arc::clone(client),
        Arc::clone(policy),
        first_tx,
        shutdown.clone(),
    ));
    tracing::info!("waiting for the policy set from the controller");
    tokio::select! {
        first = first_rx => match first {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                follow.abort();
                return Err(SidecarError::Policy(e));
            }
            // The follower ended without a set: only on shutdown.
            Err(_) => {}
        },
        () = shutdown.cancelled() => {}
    }
    Ok(follow)
}

/// The policy store for this workload, loaded once now (an error fails the start).
fn policy_store(config: &Config, metrics: &Arc<Metrics>) -> Result<Arc<PolicyStore>, SidecarError> {
    let policy = Arc::new(PolicyStore::new(
        config.policy.path.clone(),
        Workload {
            namespace: config.identity.namespace().to_owned(),
            labels: config.labels.clone(),
        },
        config.policy.load.clone(),
        Arc::clone(metrics),
        crate::authz::Jwt::fetching(config.jwt.clone(), metrics),
    )?);
    if config.policy.path.is_none() {
        tracing::warn!(
            default = ?config.policy.load.default_action,
            "no policy files configured: the mesh default action decides every request"
        );
    }
    Ok(policy)
}

/// The data path's listeners, bound once the certificate is in: inbound and outbound (each
/// with its IPv6 twin when transparent) and each upstream's own.
struct DataListeners {
    addrs: BoundAddrs,
    inbound: Vec<TcpListener>,
    outbound: Vec<TcpListener>,
    upstreams: Vec<(String, TcpListener)>,
}

impl DataListeners {
    async fn bind(config: &Config, admin: &Admin) -> Result<Self, SidecarError> {
        let in_listener = bind("inbound", config.inbound.listen).await?;
        let out_listener = bind("outbound", config.outbound.listen).await?;
        let mut addrs = BoundAddrs {
            inbound: local(&in_listener, config.inbound.listen),
            outbound: local(&out_listener, config.outbound.listen),
            admin: admin.addr,
            upstreams: BTreeMap::new(),
            health: admin.health,
        };
        let in_twin = if config.inbound.transparent {
            bind_ipv6_twin("inbound", addrs.inbound).await?
        } else {
            None
        };
        let out_twin = if config.outbound.transparent {
            bind_ipv6_twin("outbound", addrs.outbound).await?
        } else {
            None
        };
        let mut upstreams = Vec::new();
        for u in &config.outbound.upstreams {
            if let Some(listen) = u.listen {
                let l = bind(&format!("upstream {}", u.name), listen).await?;
                addrs.upstreams.insert(u.name.clone(), local(&l, listen));
                upstreams.push((u.name.clone(), l));
            }
        }
        Ok(Self {
            addrs,
            inbound: std::iter::once(in_listener).chain(in_twin).collect(),
            outbound: out_twin.into_iter().chain([out_listener]).collect(),
            upstreams,
        })
    }

    /// Spawns one accept loop per listener; connections join `tracker`.
    fn serve(
        self,
        inbound: &Arc<Inbound>,
        outbound: &Arc<Outbound>,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> TaskTracker {
        let accept_tasks = TaskTracker::new();
        for l in self.inbound {
            accept_tasks.spawn(Arc::clone(inbound).serve(l, shutdown.clone(), tracker.clone()));
        }
        for l in self.outbound {
            accept_tasks.spawn(Arc::clone(outbound).serve(
                l,
                Route::ByHost,
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        for (name, listener) in self.upstreams {
            if let Some(ctx) = outbound.upstream(&name) {
                accept_tasks.spawn(Arc::clone(outbound).serve(
                    listener,
                    Route::Fixed(ctx),
                    shutdown.clone(),
                    tracker.clone(),
                ));
            }
        }
        accept_tasks
    }
}

/// Stops accepting, then lets the connections in `tracker` finish until `deadline`; what is
/// left then is closed when its tasks are dropped.
async fn drain(accept_tasks: TaskTracker, tracker: TaskTracker, deadline: Duration) {
    accept_tasks.close();
    accept_tasks.wait().await;
    tracker.close();
    tracing::info!(connections = tracker.len(), deadline = ?deadline, "draining");
    if tokio::time::timeout(deadline, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = tracker.len(),
            "drain deadline passed; closing remaining connections"
        );
    }
}
