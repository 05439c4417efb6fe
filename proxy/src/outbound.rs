//! Outbound: this workload's plaintext calls, carried over mutual TLS to peer sidecars.
//!
//! ```text
//! app --plaintext--> upstream listener (fixed route) or shared listener (route by Host)
//!   HTTP: hyper server (HTTP/1.1 or h2c) -> one multiplexed HTTP/2 mTLS connection per upstream
//!   TCP:  one mTLS connection per client connection, bytes spliced
//! every mTLS connection verifies the chain AND that the server's SPIFFE ID is the expected one
//! ```
//!
//! The destination is chosen by [`Route`]; an original destination from transparent
//! interception becomes one more variant. A transparent destination the discovery source
//! knows ([`crate::discover`]) is balanced over its endpoints ([`balance`]): per request for
//! HTTP, per connection for opaque TCP, each endpoint on its own mTLS connection pinned to its
//! identity.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use picket_ca::SpiffeId;
use picket_common::crypto::KxGroup;
use picket_common::server::{self, ListenerSettings};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::canonical;
use crate::config::{Config, Limits, MeshedDestination, Protocol, Timeouts, Unmeshed, Upstream};
use crate::direction::Direction;
use crate::discover::Discover;
use crate::discover::fixed::Fixed;
use crate::forward::{
    self, Body, Connect, ForwardError, H2Client, ORIG_PROTO_HEADER, ORIG_PROTO_HTTP1,
    PEER_IDENTITY_HEADER,
};
use crate::metrics::Metrics;
use crate::net::{self, IdleTimeout};
use crate::peer::PeerIdentity;
use crate::pipeline::{self, Endpoints, RequestCtx, RequestLimit, TcpFlow};
use crate::telemetry::{Parent, SpanAttrs, Telemetry};
use crate::tls::{self, ALPN_H2, Credentials, TlsError};
use crate::tunnel;

mod balance;
pub mod egress;

use balance::{Balanced, Current, EndpointSet, Lease, LogLimit, Outcome, Pool, Tuning};

/// Opens mTLS connections to one peer sidecar.
#[derive(Clone)]
struct PeerConnector {
    name: String,
    addr: SocketAddr,
    tls: TlsConnector,
    timeouts: Timeouts,
    metrics: Arc<Metrics>,
    /// The newest connection this connector opened.
    last_peer: Arc<LastPeer>,
}

/// The newest connection to an upstream: the key-exchange group it negotiated and the
/// identity the peer presented in its certificate. Its HTTP/2 connection is the one the
/// upstream's requests travel on, and its flow records name both.
#[derive(Debug, Default)]
struct LastPeer(ArcSwapOption<ConnPeer>);

/// What one mTLS connection to a peer sidecar established.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConnPeer {
    kx: KxGroup,
    /// The SPIFFE ID in the peer's verified certificate.
    identity: Option<SpiffeId>,
}

impl ConnPeer {
    fn of(conn: &rustls::ClientConnection) -> Self {
        Self {
            // A finished handshake always has a group; `Other` keeps the label bounded.
            kx: KxGroup::of(conn).unwrap_or(KxGroup::Other),
            identity: tls::peer_identity(conn.peer_certificates()),
        }
    }

    /// Names the peer in `ends`: the identity it presented, and the configured expectation
    /// beside it when that is not exactly the presented identity.
    fn name_in(&self, ends: &mut Endpoints<'_>, expected: &PeerIdentity) {
        ends.kx = Some(self.kx);
        ends.destination_identity = self
            .identity
            .as_ref()
            .map(|id| id.as_str().to_owned().into());
        ends.expected_identity = match (&self.identity, expected.exact()) {
            (Some(presented), Some(pinned)) if presented == pinned => None,
            _ => Some(expected.expectation().into()),
        };
    }
}

impl LastPeer {
    fn set(&self, peer: ConnPeer) {
        self.0.store(Some(Arc::new(peer)));
    }

    fn get(&self) -> Option<Arc<ConnPeer>> {
        self.0.load_full()
    }
}

impl PeerConnector {
    async fn open(&self) -> Result<TlsStream<TcpStream>, ForwardError> {
        let target = format!("upstream {} ({})", self.name, self.addr);
        let tcp = tokio::time::timeout(self.timeouts.connect, TcpStream::connect(self.addr))
            .await
            .map_err(|_| ForwardError::Unreachable {
                target: target.clone(),
                reason: "connect timed out".into(),
            })?
            .map_err(|e| {
                self.metrics
                    .connection(Direction::Outbound, "connect_failed");
                ForwardError::Unreachable {
                    target: target.clone(),
                    reason: e.to_string(),
                }
            })?;
        net::tune(&tcp);
        // Peers are identified by SPIFFE ID, not by name; the IP only fills the API slot.
        let server_name = ServerName::IpAddress(self.addr.ip().into());
        let handshake =
            tokio::time::timeout(self.timeouts.handshake, self.tls.connect(server_name, tcp)).await;
        let result = match handshake {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "handshake timed out",
            )),
        };
        match result {
            Ok(s) => {
                self.metrics.connection(Direction::Outbound, "accepted");
                let peer = ConnPeer::of(s.get_ref().1);
                self.metrics.handshake(Direction::Outbound, peer.kx);
                self.last_peer.set(peer);
                Ok(s)
            }
            Err(e) => {
                let reason = tls::failure_reason(&e);
                self.metrics.handshake_failed(Direction::Outbound, reason);
                tracing::warn!(upstream = %self.name, addr = %self.addr, reason, error = %e, "outbound TLS handshake failed");
                Err(ForwardError::Handshake {
                    target,
                    reason,
                    detail: e.to_string(),
                })
            }
        }
    }
}

impl Connect for PeerConnector {
    type Io = TokioIo<TlsStream<TcpStream>>;

    async fn connect(&self) -> Result<Self::Io, ForwardError> {
        self.open().await.map(TokioIo::new)
    }
}

/// One configured upstream with its connections.
pub struct UpstreamCtx {
    cfg: Upstream,
    h2: H2Client<PeerConnector>,
    /// The HTTP/2 connection requests currently travel on: its group and peer identity.
    h2_peer: Arc<LastPeer>,
    tcp: PeerConnector,
}

impl std::fmt::Debug for UpstreamCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamCtx")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// How an outbound listener picks the upstream of a request.
#[derive(Debug, Clone)]
pub enum Route {
    /// Always this upstream (its own listener).
    Fixed(Arc<UpstreamCtx>),
    /// By the request's host name (the shared outbound listener).
    ByHost,
}

/// Where the requests of one app connection go: a [`Route`], or the endpoints of a destination
/// the discovery source knows.
#[derive(Debug, Clone)]
enum Target {
    Route(Route),
    Balanced(Arc<Balanced>),
}

/// The upstream a request goes to; for a balanced destination, the endpoint's lease and the
/// address the app dialled.
struct Picked {
    upstream: Arc<UpstreamCtx>,
    lease: Option<Lease>,
    dialled: Option<SocketAddr>,
}

impl Picked {
    /// Names the destination in `ends`: the address dialled and, when balanced, the endpoint.
    fn name_in(&self, ends: &mut Endpoints<'_>) {
        let address = self.dialled.unwrap_or(self.upstream.cfg.address);
        ends.destination_address = Some(address);
        ends.destination_port = Some(address.port());
        ends.endpoint = self.dialled.map(|_| self.upstream.cfg.address);
    }
}

/// How a forwarding result counts for the endpoint that was picked.
fn outcome<T>(result: &Result<T, ForwardError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Answered,
        Err(
            ForwardError::Unreachable { .. }
            | ForwardError::Handshake { .. }
            | ForwardError::Broken(_),
        ) => Outcome::Failed,
        Err(ForwardError::Timeout(_)) => Outcome::TimedOut,
        Err(_) => Outcome::Neutral,
    }
}

/// What a WebSocket request needs beyond a request: the form the app used, how to take its
/// end of the tunnel, and the authority it named.
struct Upgrade {
    form: tunnel::Form,
    client_end: tunnel::ClientEnd,
    authority: String,
}

/// Names the peer that answered in `ctx`: the answer came over the upstream's current HTTP/2
/// connection, so its group and the identity that peer presented. Returns whether that is a
/// verified identity: every connection to a peer sidecar is mutual TLS whose certificate was
/// verified against the expectation, and its SPIFFE ID is what the record names.
fn name_peer(ctx: &mut RequestCtx<'_>, upstream: &UpstreamCtx) -> bool {
    match upstream.h2_peer.get() {
        Some(peer) => {
            peer.name_in(&mut ctx.ends, &upstream.cfg.identity);
            peer.identity.is_some()
        }
        None => false,
    }
}

/// The outbound side of one sidecar.
pub struct Outbound {
    upstreams: HashMap<String, Arc<UpstreamCtx>>,
    creds: Arc<Credentials>,
    transparent: Option<Transparent>,
    /// Upstreams made on demand for transparent destinations, by original destination.
    destinations: std::sync::Mutex<HashMap<SocketAddr, Arc<UpstreamCtx>>>,
    metrics: Arc<Metrics>,
    telemetry: Telemetry,
    /// This workload's SPIFFE ID, for spans and flow records.
    own_identity: String,
    timeouts: Timeouts,
    limits: Limits,
    listener: ListenerSettings,
    /// The HTTP servers of the outbound listeners, built once.
    servers: net::HttpServers,
    requests: RequestLimit,
    /// The discovery source, when there is one (listed destinations, or the controller).
    discover: Option<Arc<dyn Discover>>,
    /// Destinations asked of the source, by address.
    balanced: std::sync::Mutex<HashMap<SocketAddr, Arc<Balanced>>>,
    tuning: Arc<Tuning>,
    unmeshed: Unmeshed,
    /// Rate limits of the log lines about `identity: any` and refused destinations.
    any_log: LogLimit,
    refuse_log: LogLimit,
    /// The policy in force, for egress decisions (`outbound/egress.rs`).
    policy: Option<Arc<crate::authz::PolicyStore>>,
}

/// Transparent-mode settings of the shared outbound listener.
#[derive(Debug, Clone)]
struct Transparent {
    meshed: Vec<MeshedDestination>,
    passthrough: bool,
    opaque_ports: Vec<u16>,
    /// Cloud metadata IP addresses that passthrough refuses (empty: alert only).
    blocked: Vec<std::net::IpAddr>,
}

/// At most this many transparent destinations keep a connection context; past it the cache is
/// emptied (their connections close when idle) so memory stays bounded.
const MAX_DESTINATIONS: usize = 4096;

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("upstreams", &self.upstreams.keys())
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// Builds the outbound side from the configuration.
    pub fn new(
        creds: &Arc<Credentials>,
        full: &Config,
        metrics: Arc<Metrics>,
        telemetry: Telemetry,
    ) -> Result<Self, TlsError> {
        let config = &full.outbound;
        let timeouts = full.timeouts.clone();
        let limits = full.limits.clone();
        let tuning_metrics = Arc::clone(&metrics);
        let listener = full.listener_settings();
        let servers = net::HttpServers::new(&listener, metrics.parking(timeouts.park), |h2| {
            h2.enable_connect_protocol();
        });
        let mut this = Self {
            telemetry,
            own_identity: full.identity.to_string(),
            upstreams: HashMap::new(),
            creds: Arc::clone(creds),
            transparent: config.transparent.then(|| Transparent {
                meshed: config.meshed.clone(),
                passthrough: config.passthrough,
                opaque_ports: config.opaque_ports.clone(),
                blocked: if config.block_metadata {
                    full.telemetry
                        .detectors
                        .metadata_addresses
                        .iter()
                        .filter_map(|a| a.parse().ok())
                        .collect()
                } else {
                    Vec::new()
                },
            }),
            destinations: std::sync::Mutex::new(HashMap::new()),
            metrics,
            timeouts,
            listener,
            servers,
            requests: RequestLimit::new(limits.max_requests, Direction::Outbound),
            limits,
            discover: (!config.destinations.is_empty())
                .then(|| Arc::new(Fixed::new(config.destinations.clone())) as Arc<dyn Discover>),
            balanced: std::sync::Mutex::new(HashMap::new()),
            tuning: Arc::new(Tuning::new(config.balancer.clone(), tuning_metrics)),
            unmeshed: config.unmeshed,
            any_log: LogLimit::default(),
            refuse_log: LogLimit::default(),
            policy: None,
        };
        for u in &config.upstreams {
            let ctx = this.upstream_ctx(u.clone())?;
            this.upstreams.insert(u.name.clone(), Arc::new(ctx));
        }
        Ok(this)
    }

    /// Uses `source` for transparent destinations (in place of the destinations listed in the
    /// file): the controller's client in cluster mode.
    #[must_use]
    pub fn with_discover(mut self, source: Arc<dyn Discover>) -> Self {
        self.discover = Some(source);
        self
    }

    /// Decides connections to destinations outside the mesh with the egress policies of
    /// `policy` (see [`egress`]).
    #[must_use]
    pub fn with_policy(mut self, policy: Arc<crate::authz::PolicyStore>) -> Self {
        self.policy = Some(policy);
        self
    }

    fn upstream_ctx(&self, cfg: Upstream) -> Result<UpstreamCtx, TlsError> {
        let connector =
            |alpn: &[&[u8]], last_peer: &Arc<LastPeer>| -> Result<PeerConnector, TlsError> {
                Ok(PeerConnector {
                    name: cfg.name.clone(),
                    addr: cfg.address,
                    tls: TlsConnector::from(self.creds.client_config(cfg.identity.clone(), alpn)?),
                    timeouts: self.timeouts.clone(),
                    metrics: Arc::clone(&self.metrics),
                    last_peer: Arc::clone(last_peer),
                })
            };
        let h2_peer = Arc::new(LastPeer::default());
        Ok(UpstreamCtx {
            h2: H2Client::new(
                connector(&[ALPN_H2], &h2_peer)?,
                self.limits.header_list_bytes(),
            ),
            h2_peer,
            tcp: connector(&[], &Arc::new(LastPeer::default()))?,
            cfg,
        })
    }

    /// The connection context for a transparent destination, made on first use.
    fn destination(
        &self,
        addr: SocketAddr,
        identity: &PeerIdentity,
    ) -> Result<Arc<UpstreamCtx>, TlsError> {
        let mut map = self
            .destinations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(ctx) = map.get(&addr) {
            return Ok(Arc::clone(ctx));
        }
        if map.len() >= MAX_DESTINATIONS {
            map.clear();
        }
        let ctx = Arc::new(self.upstream_ctx(Upstream {
            name: addr.to_string(),
            listen: None,
            address: addr,
            identity: identity.clone(),
            protocol: Protocol::Http,
        })?);
        map.insert(addr, Arc::clone(&ctx));
        Ok(ctx)
    }

    /// The mTLS contexts of one endpoint, pinned to `identity`.
    fn endpoint_ctx(&self, addr: SocketAddr, identity: SpiffeId) -> Option<UpstreamCtx> {
        self.upstream_ctx(Upstream {
            name: addr.to_string(),
            listen: None,
            address: addr,
            identity: PeerIdentity::Exact(identity),
            protocol: Protocol::Http,
        })
        .map_err(|e| tracing::error!(endpoint = %addr, error = %e, "cannot build TLS for endpoint"))
        .ok()
    }

    /// The balancer of `orig` and its endpoints, when the source knows it; `None` when there is
    /// no source, it does not know the address, or it gave no answer within `pending_wait`.
    async fn known(&self, orig: SocketAddr) -> Option<(Arc<Balanced>, Arc<EndpointSet>)> {
        let source = self.discover.as_ref()?;
        let balanced = {
            let mut map = self
                .balanced
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match map.get(&orig) {
                Some(b) => Arc::clone(b),
                None => {
                    if map.len() >= MAX_DESTINATIONS {
                        map.clear();
                    }
                    let b = Arc::new(Balanced::new(orig, source.subscribe(orig)));
                    map.insert(orig, Arc::clone(&b));
                    b
                }
            }
        };
        if !balanced.settle(self.tuning.settings.pending_wait).await {
            self.metrics.balancer("pending_timeout");
            tracing::debug!(destination = %orig, wait = ?self.tuning.settings.pending_wait, "no answer from the discovery source: treated as unknown");
            return None;
        }
        match balanced.current(&|addr, id| self.endpoint_ctx(addr, id)) {
            Current::Known(set) => Some((balanced, set)),
            Current::Pending | Current::Unknown => None,
        }
    }

    /// Why a known destination has no endpoint to pick, counted and logged (rate-limited):
    /// the reason an HTTP request's 503 gives.
    fn refusal(&self, orig: SocketAddr, set: &EndpointSet) -> String {
        let service = set
            .service()
            .map(|s| format!(" (service {s})"))
            .unwrap_or_default();
        let (decision, reason) = if set.meshed.is_empty() && set.unmeshed.is_empty() {
            (
                "no_endpoints",
                format!("destination {orig}{service} has no ready endpoints"),
            )
        } else if set.meshed.is_empty() && self.unmeshed == Unmeshed::Deny {
            (
                "unmeshed_denied",
                format!(
                    "destination {orig}{service}: its endpoints run no sidecar and outbound.unmeshed is deny"
                ),
            )
        } else {
            (
                "no_endpoints",
                format!("destination {orig}{service}: every endpoint is set aside after failures"),
            )
        };
        self.metrics.balancer(decision);
        if let Some(suppressed) = self.refuse_log.allow() {
            tracing::warn!(destination = %orig, suppressed, "outbound refused: {reason}");
        }
        reason
    }

    /// A connection to a destination the source knows: an endpoint without a sidecar takes the
    /// whole connection as plain TCP (`outbound.unmeshed: plaintext`); otherwise opaque TCP
    /// goes to one endpoint picked for the connection, and HTTP picks one per request.
    async fn serve_balanced(
        self: Arc<Self>,
        tcp: TcpStream,
        balanced: Arc<Balanced>,
        set: Arc<EndpointSet>,
        opaque_port: bool,
        shutdown: CancellationToken,
    ) {
        let orig = balanced.addr;
        if self.unmeshed == Unmeshed::Plaintext
            && !set.unmeshed.is_empty()
            && let Some(lease) = set.pick(Pool::All, &self.tuning)
            && lease.endpoint.upstream.is_none()
        {
            self.metrics.balancer("unmeshed_plaintext");
            return self
                .passthrough(tcp, orig, Some(lease), egress::Asked::default(), None)
                .await;
        }
        let opaque =
            opaque_port || net::detect(&tcp, self.timeouts.detect).await == net::Detected::Opaque;
        if !opaque {
            return self.http(tcp, Target::Balanced(balanced), shutdown).await;
        }
        match set.pick(Pool::Meshed, &self.tuning) {
            Some(lease) => {
                if let Some(upstream) = lease.endpoint.upstream.clone() {
                    self.splice(tcp, &upstream, Some((orig, lease))).await;
                }
            }
            None => {
                let _reason = self.refusal(orig, &set);
            }
        }
    }

    /// A connection redirected to the shared listener: the endpoints of a destination the
    /// discovery source knows; mTLS for meshed destinations (HTTP or opaque by detection),
    /// plain passthrough or refusal for the rest.
    async fn transparent(
        self: Arc<Self>,
        tcp: TcpStream,
        listen: SocketAddr,
        shutdown: CancellationToken,
    ) {
        let Some(t) = &self.transparent else { return };
        let orig = match net::original_dst(&tcp) {
            Some(o) if o != listen => o,
            // Not redirected: an app using the listener explicitly, routed by Host.
            _ => return self.http(tcp, Target::Route(Route::ByHost), shutdown).await,
        };
        let opaque_port = t.opaque_ports.contains(&orig.port());
        if let Some((balanced, set)) = self.known(orig).await {
            return self
                .serve_balanced(tcp, balanced, set, opaque_port, shutdown)
                .await;
        }
        let Some(meshed) = t.meshed.iter().find(|m| m.contains(orig)) else {
            return self.egress(tcp, orig).await;
        };
        if meshed.identity.exact().is_none() {
            self.metrics.balancer("any_identity");
            if let Some(suppressed) = self.any_log.allow() {
                tracing::warn!(destination = %orig, suppressed, "outbound connection accepts any identity of the trust domain: the discovery source does not know this destination (outbound.meshed identity: any)");
            }
        }
        let ctx = match self.destination(orig, &meshed.identity) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(destination = %orig, error = %e, "cannot build TLS for destination");
                return;
            }
        };
        let opaque =
            opaque_port || net::detect(&tcp, self.timeouts.detect).await == net::Detected::Opaque;
        if opaque {
            self.splice(tcp, &ctx, None).await;
        } else {
            self.http(tcp, Target::Route(Route::Fixed(ctx)), shutdown)
                .await;
        }
    }

    /// The upstream named `name`.
    pub fn upstream(&self, name: &str) -> Option<Arc<UpstreamCtx>> {
        self.upstreams.get(name).cloned()
    }

    /// Serves one listener until `shutdown`: HTTP for [`Route::ByHost`] and HTTP upstreams,
    /// a byte splice for TCP upstreams.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        route: Route,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        let listen = listener.local_addr().ok();
        let metrics = Arc::clone(&self.metrics);
        server::accept_loop(
            listener,
            &self.listener,
            "outbound",
            &shutdown,
            &tracker,
            |_| metrics.connection(Direction::Outbound, "refused_limit"),
            |tcp, _client_addr| {
                let this = Arc::clone(&self);
                let route = route.clone();
                let shutdown = shutdown.clone();
                // Each branch is boxed: the task would otherwise be as large as the largest
                // of the three futures, for every connection, whichever it runs.
                async move {
                    match (&route, listen) {
                        (Route::Fixed(u), _) if u.cfg.protocol == Protocol::Tcp => {
                            Box::pin(this.splice(tcp, u, None)).await;
                        }
                        (Route::ByHost, Some(listen)) if this.transparent.is_some() => {
                            Box::pin(this.transparent(tcp, listen, shutdown)).await;
                        }
                        _ => Box::pin(this.http(tcp, Target::Route(route), shutdown)).await,
                    }
                }
            },
        )
        .await;
    }

    async fn http(self: Arc<Self>, tcp: TcpStream, route: Target, shutdown: CancellationToken) {
        let this = Arc::clone(&self);
        let route = Arc::new(route);
        // The app is the reader of these responses: one that stops taking data is closed
        // after `timeouts.stall`, which resets its streams towards the peer sidecar too.
        let watch = Arc::new(net::StallWatch::default());
        let guard = Arc::clone(&watch);
        // A WebSocket's client end is taken from this connection's stream (see `tunnel`).
        let client_end: tunnel::ClientEnd = tunnel::client_end::<IdleTimeout<TcpStream>>;
        let svc = hyper::service::service_fn(move |req| {
            let this = Arc::clone(&this);
            let route = Arc::clone(&route);
            let guard = Arc::clone(&guard);
            net::small_future(async move {
                let mut resp = this.request(req, &route, client_end).await;
                // Every answer to the app leaves here, without the header.
                forward::withhold_sidecar_answer(&mut resp);
                Ok::<_, Infallible>(resp.map(|b| guard.guard(b)))
            })
        });
        // The version is chosen here from the HTTP/2 preface rather than by hyper-util's
        // automatic server, whose stream wrapper would hide how many bytes a WebSocket client
        // sent before its 101 (`tunnel::client_end`).
        let Some(h2) = starts_with_h2_preface(&tcp, self.listener.header_timeout).await else {
            tracing::debug!("outbound connection closed: nothing sent within the header timeout");
            return;
        };
        let io = IdleTimeout::new(tcp, self.timeouts.idle);
        let served = net::serve_http(io, h2, svc, &self.servers, &shutdown);
        tokio::select! {
            r = served => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "outbound HTTP connection ended with an error");
                }
            }
            () = watch.stalled(self.timeouts.stall) => {
                self.metrics.connection(Direction::Outbound, "closed_stalled");
                tracing::info!(stall = ?self.timeouts.stall, "outbound connection closed: the app stopped reading a response");
            }
        }
    }

    fn resolve(
        &self,
        route: &Target,
        authority: Option<&str>,
    ) -> Result<Picked, Box<Response<Body>>> {
        let fixed = |upstream: Arc<UpstreamCtx>| Picked {
            upstream,
            lease: None,
            dialled: None,
        };
        match route {
            Target::Route(Route::Fixed(u)) => Ok(fixed(Arc::clone(u))),
            Target::Route(Route::ByHost) => {
                let host = authority.map(host_name).unwrap_or_default();
                self.upstreams
                    .get(&host)
                    .cloned()
                    .map(fixed)
                    .ok_or_else(|| {
                        Box::new(forward::error_response(
                            StatusCode::NOT_FOUND,
                            &format!("no upstream is configured for host {host:?}"),
                        ))
                    })
            }
            Target::Balanced(b) => self.pick(b),
        }
    }

    /// An endpoint of a balanced destination for one request. When the source stopped
    /// knowing the address since the connection opened, the request goes as for an unknown
    /// destination: to the address itself when it is in `outbound.meshed`.
    fn pick(&self, balanced: &Balanced) -> Result<Picked, Box<Response<Body>>> {
        let orig = balanced.addr;
        let unavailable = |reason: &str| {
            Box::new(forward::error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                reason,
            ))
        };
        let set = match balanced.current(&|addr, id| self.endpoint_ctx(addr, id)) {
            Current::Known(set) => set,
            Current::Pending | Current::Unknown => {
                let meshed = self
                    .transparent
                    .as_ref()
                    .and_then(|t| t.meshed.iter().find(|m| m.contains(orig)));
                let Some(meshed) = meshed else {
                    return Err(unavailable(&format!(
                        "destination {orig} is no longer known to the discovery source and is outside outbound.meshed"
                    )));
                };
                return self
                    .destination(orig, &meshed.identity)
                    .map(|upstream| Picked {
                        upstream,
                        lease: None,
                        dialled: None,
                    })
                    .map_err(|e| unavailable(&format!("cannot build TLS for {orig}: {e}")));
            }
        };
        match set.pick(Pool::Meshed, &self.tuning) {
            Some(lease) => match lease.endpoint.upstream.clone() {
                Some(upstream) => Ok(Picked {
                    upstream,
                    lease: Some(lease),
                    dialled: Some(orig),
                }),
                None => Err(unavailable(&self.refusal(orig, &set))),
            },
            None => Err(unavailable(&self.refusal(orig, &set))),
        }
    }

    /// One request through the pipeline ([`crate::pipeline`]): admitted, routed, traced,
    /// forwarded over the upstream's HTTP/2 mTLS connection, counted and recorded.
    async fn request(
        &self,
        req: Request<Incoming>,
        route: &Target,
        client_end: tunnel::ClientEnd,
    ) -> Response<Body> {
        let Some(_permit) = self.requests.admit(&self.metrics) else {
            return pipeline::shed_response();
        };
        let (parts, body) = req.into_parts();
        let mut ctx = RequestCtx::new(
            Direction::Outbound,
            &parts,
            Endpoints {
                source_identity: Some(self.own_identity.as_str().into()),
                ..Endpoints::default()
            },
        );
        let (authority, picked) = match self.route_request(&parts, route) {
            Ok(routed) => routed,
            Err(resp) => return ctx.unrouted(*resp, &self.metrics),
        };
        picked.name_in(&mut ctx.ends);
        match tunnel::form(&parts) {
            // Rare and larger: boxed, so it does not size every request's future.
            Some(form) => {
                let ws = Upgrade {
                    form,
                    client_end,
                    authority,
                };
                Box::pin(self.websocket(parts, &body, ctx, picked, ws)).await
            }
            None => self.forward(parts, body, ctx, picked, authority).await,
        }
    }

    /// The authority a request names and the upstream it goes to; the answer to send instead
    /// when the request is malformed or has no upstream. The same syntax rules as the
    /// receiving side apply, so that what leaves here is one unambiguous request (the
    /// receiving side decides on it).
    fn route_request(
        &self,
        parts: &http::request::Parts,
        route: &Target,
    ) -> Result<(String, Picked), Box<Response<Body>>> {
        let authority = canonical::check_head(parts)
            .and_then(|()| canonical::raw_host(parts))
            .map_err(|e| {
                tracing::info!(reason = %e, "outbound request refused as malformed");
                Box::new(forward::error_response_close(e.status, &e.reason))
            })?;
        let picked = self.resolve(route, Some(&authority))?;
        Ok((authority, picked))
    }

    /// Forwards a routed request over the upstream's HTTP/2 connection and answers it.
    async fn forward(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
        mut ctx: RequestCtx<'_>,
        picked: Picked,
        authority: String,
    ) -> Response<Body> {
        let Picked {
            upstream, lease, ..
        } = picked;
        let had_body = forward::declares_body(&parts.headers, &body);
        let mut body = match forward::body_for_forwarding(body).await {
            Ok(b) => b,
            Err(e) => {
                tracing::info!(error = %e, "outbound request refused: malformed body");
                let resp = forward::error_response_close(StatusCode::BAD_REQUEST, &e.to_string());
                return ctx.unrouted(resp, &self.metrics);
            }
        };
        if let Err(bad) = prepare(&mut parts, &authority) {
            return ctx.unrouted(*bad, &self.metrics);
        }
        forward::frame_request(&mut parts.headers, &mut body, had_body, false);
        let body_failed = body.failure_flag();
        self.trace(&mut ctx, &mut parts, &upstream, authority, false);
        let req = Request::from_parts(parts, forward::boxed(body));
        let resp = match self.send(&upstream, lease, req, Some(&body_failed)).await {
            Ok(resp) => {
                let verified = name_peer(&mut ctx, &upstream);
                forward::from_peer(resp, verified)
            }
            Err(e @ ForwardError::RequestBody(_)) => {
                tracing::info!(error = %e, "outbound request refused: malformed body");
                forward::error_response_close(StatusCode::BAD_REQUEST, &e.to_string())
            }
            Err(e) => pipeline::error_response(Direction::Outbound, &upstream.cfg.name, &e),
        };
        ctx.finish(&resp, &self.metrics, &self.telemetry);
        resp
    }

    /// Opens the request's client span and carries its context in `parts`; names the
    /// destination as far as it is known before a peer answers (only a pinned identity is).
    /// `upgrade`: a WebSocket, traced as the GET it is.
    fn trace(
        &self,
        ctx: &mut RequestCtx<'_>,
        parts: &mut http::request::Parts,
        upstream: &UpstreamCtx,
        authority: String,
        upgrade: bool,
    ) {
        let expected = &upstream.cfg.identity;
        ctx.ends.destination_identity = expected.exact().map(|id| id.as_str().to_owned().into());
        if expected.exact().is_none() {
            ctx.ends.expected_identity = Some(expected.expectation().into());
        }
        let path = parts.uri.path().to_owned();
        let method = if upgrade {
            &http::Method::GET
        } else {
            &parts.method
        };
        ctx.span = self.telemetry.client_span(
            Parent::Headers(&parts.headers),
            &SpanAttrs {
                method: method.as_str(),
                path: &path,
                server_address: Some(&authority),
                peer_address: Some(upstream.cfg.address),
                source_identity: Some(&self.own_identity),
                // A request's span names the identity the peer presented when it ends.
                destination_identity: if upgrade {
                    ctx.ends.destination_identity.as_deref()
                } else {
                    None
                },
            },
        );
        ctx.span.inject(&mut parts.headers);
        ctx.path = Some(path);
        ctx.host = Some(authority);
    }

    /// Sends `req` to the picked upstream within the request timeout, and tells the picked
    /// endpoint's balancer how it went. `body_failed`: the request body's failure flag; a
    /// body that failed is the caller's fault, not the endpoint's ([`forward::blame`]).
    async fn send(
        &self,
        upstream: &UpstreamCtx,
        lease: Option<Lease>,
        req: Request<Body>,
        body_failed: Option<&std::sync::atomic::AtomicBool>,
    ) -> Result<Response<Incoming>, ForwardError> {
        let sent = upstream
            .h2
            .send_within(req, self.timeouts.request)
            .await
            .map_err(|e| match body_failed {
                Some(failed) => forward::blame(e, failed),
                None => e,
            });
        if let Some(lease) = lease {
            lease.finish(outcome(&sent));
        }
        sent
    }

    /// A WebSocket request from the app: carried to the peer sidecar as an extended CONNECT
    /// stream (RFC 8441) on the upstream's shared HTTP/2 connection, whatever form the app
    /// used; the peer sidecar's policy decides on it. The tunnel opens only when the peer
    /// answers 2xx, which it does only once its app agreed; then the app gets its 101 (or 200
    /// over h2c). Any other answer is passed back as an ordinary response.
    async fn websocket(
        &self,
        mut parts: http::request::Parts,
        body: &Incoming,
        mut ctx: RequestCtx<'_>,
        picked: Picked,
        ws: Upgrade,
    ) -> Response<Body> {
        let Picked {
            upstream, lease, ..
        } = picked;
        let refuse = |reason: &str| forward::error_response_close(StatusCode::BAD_REQUEST, reason);
        if forward::declares_body(&parts.headers, body) {
            let resp = refuse("a WebSocket upgrade request has no body");
            return ctx.unrouted(resp, &self.metrics);
        }
        let Some(client) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return ctx.unrouted(refuse("this connection cannot be upgraded"), &self.metrics);
        };
        if let Err(bad) = prepare(&mut parts, &ws.authority) {
            return ctx.unrouted(*bad, &self.metrics);
        }
        forward::strip_framing(&mut parts.headers);
        tunnel::as_extended_connect(&mut parts);
        self.trace(&mut ctx, &mut parts, &upstream, ws.authority, true);
        let req = Request::from_parts(parts, forward::empty());
        let resp = match self.send(&upstream, lease, req, None).await {
            Err(e) => pipeline::error_response(Direction::Outbound, &upstream.cfg.name, &e),
            Ok(mut resp) if resp.status().is_success() => {
                name_peer(&mut ctx, &upstream);
                let server = hyper::upgrade::on(&mut resp);
                let (mut head, _) = resp.into_parts();
                forward::strip_hop_by_hop(&mut head.headers);
                let answer = tunnel::agreement(ws.form, head.headers);
                let flow = ctx.into_tunnel(answer.status(), &self.metrics, &self.telemetry);
                let pending = tunnel::Pending { client, server };
                let telemetry = self.telemetry.clone();
                tunnel::spawn(pending, ws.client_end, self.timeouts.idle, flow, telemetry);
                return answer;
            }
            Ok(resp) => {
                let verified = name_peer(&mut ctx, &upstream);
                forward::from_peer(resp, verified)
            }
        };
        ctx.finish(&resp, &self.metrics, &self.telemetry);
        resp
    }

    /// Opaque TCP over one mTLS connection to `upstream`; `balanced` names the address the app
    /// dialled and the lease of the endpoint picked for the connection.
    async fn splice(
        &self,
        tcp: TcpStream,
        upstream: &UpstreamCtx,
        balanced: Option<(SocketAddr, Lease)>,
    ) {
        let (dialled, lease) = match balanced {
            Some((d, l)) => (Some(d), Some(l.measuring_setup())),
            None => (None, None),
        };
        let address = dialled.unwrap_or(upstream.cfg.address);
        let mut flow = TcpFlow::new(
            Direction::Outbound,
            Endpoints {
                source_identity: Some(self.own_identity.as_str().into()),
                source_address: tcp.peer_addr().ok(),
                destination_identity: upstream
                    .cfg
                    .identity
                    .exact()
                    .map(|id| id.as_str().to_owned().into()),
                expected_identity: None,
                destination_address: Some(address),
                destination_port: Some(address.port()),
                kx: None,
                endpoint: dialled.map(|_| upstream.cfg.address),
            },
        );
        let opened = upstream.tcp.open().await;
        if let Some(lease) = lease {
            lease.finish(outcome(&opened));
        }
        match opened {
            Err(e) => {
                tracing::info!(upstream = %upstream.cfg.name, error = %e, "outbound TCP: peer unreachable");
            }
            Ok(mut peer) => {
                ConnPeer::of(peer.get_ref().1).name_in(&mut flow.ends, &upstream.cfg.identity);
                // The peer is known: the open record goes to the detectors now.
                flow.open(&self.telemetry);
                let mut client = IdleTimeout::new(tcp, self.timeouts.idle);
                if let Err(e) = flow.splice(&mut client, &mut peer, &self.telemetry).await {
                    tracing::debug!(upstream = %upstream.cfg.name, error = %e, "outbound TCP connection ended");
                }
            }
        }
        flow.finish(&self.metrics, &self.telemetry);
    }
}

/// Readies a request's head for the peer sidecar: hop-by-hop and identity headers removed,
/// the caller's HTTP version recorded in `x-picket-orig-proto`, the target made absolute
/// (`http://<authority><path>`) for HTTP/2. A target that cannot be made is a 400.
fn prepare(parts: &mut http::request::Parts, authority: &str) -> Result<(), Box<Response<Body>>> {
    let from_http1 = parts.version != Version::HTTP_2;
    forward::strip_hop_by_hop(&mut parts.headers);
    forward::remove_each(
        &mut parts.headers,
        &[PEER_IDENTITY_HEADER, ORIG_PROTO_HEADER, header::HOST],
    );
    if from_http1 {
        parts.headers.insert(
            ORIG_PROTO_HEADER,
            HeaderValue::from_static(ORIG_PROTO_HTTP1),
        );
    }
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let uri = http::uri::Authority::try_from(authority)
        .map_err(|e| ForwardError::Broken(e.to_string()))
        .and_then(|authority| forward::absolute_uri(authority, pq));
    parts.uri = uri.map_err(|_| {
        Box::new(forward::error_response_close(
            StatusCode::BAD_REQUEST,
            "invalid request target",
        ))
    })?;
    parts.version = Version::HTTP_2;
    Ok(())
}

/// Whether a plaintext connection opens with the HTTP/2 preface (h2c with prior knowledge) or
/// with anything else (HTTP/1); `None` when it sends nothing within `timeout` (the header
/// timeout, which the request head would have had to meet anyway) or closes.
async fn starts_with_h2_preface(tcp: &TcpStream, timeout: std::time::Duration) -> Option<bool> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; PREFACE.len()];
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        let seen = buf.get(..n).unwrap_or_default();
        if n >= PREFACE.len() || !PREFACE.starts_with(seen) {
            return Some(seen == PREFACE);
        }
        // A partial preface: peek returns at once while bytes are buffered, so wait a little
        // for the rest instead of spinning.
        if tokio::time::timeout_at(
            deadline,
            tokio::time::sleep(std::time::Duration::from_millis(2)),
        )
        .await
        .is_err()
        {
            return None;
        }
    }
}

/// The host part of an authority, lowercased, without port or trailing dot.
fn host_name(authority: &str) -> String {
    authority
        .parse::<http::uri::Authority>()
        .map(|a| a.host().trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
