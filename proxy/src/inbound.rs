//! Inbound: peers' mutual-TLS connections to this workload.
//!
//! ```text
//! accept -> limit -> TLS 1.3 (client SVID required) -> peer SpiffeId
//!   ALPN h2 / http/1.1 -> hyper server -> the request pipeline (crate::pipeline):
//!                         admit -> canonical request (400 if it cannot be made) -> span
//!                      -> enforce per request (403 / gRPC PERMISSION_DENIED)
//!                      -> strip hop-by-hop and identity headers, set x-picket-peer-identity
//!                      -> app (HTTP/1.1 pool or one h2c conn) -> finish (metrics, flow record)
//!   no ALPN            -> policy decision for the connection (closed if denied)
//!                      -> opaque TCP splice to the app
//! ```
//!
//! Permissive mode (per port or for every port, for a migration into the mesh): the first
//! byte is peeked at accept time, before TLS. A TLS handshake record (ClientHello) goes the
//! way above; anything else is served as plaintext, HTTP or opaque TCP by detection, with no
//! peer identity: policy sees no principal, so an ALLOW naming principals never matches it.
//! Each plaintext connection is counted (`picket_tcp_connections_total{outcome="plaintext"}`),
//! reported to the plaintext (unauthenticated) detector and logged.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use picket_ca::SpiffeId;
use picket_common::crypto::KxGroup;
use picket_common::server::{self, ListenerSettings};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::authz::PolicyStore;
use crate::canonical;
use crate::config::{Config, HttpConfig, InboundMode, Limits, Timeouts};
use crate::direction::Direction;
use crate::forward::{
    self, Body, Connect, ForwardError, H2Client, ORIG_PROTO_HEADER, ORIG_PROTO_HTTP1,
    PEER_IDENTITY_HEADER,
};
use crate::metrics::Metrics;
use crate::net::{self, IdleTimeout};
use crate::pipeline::{self, Endpoints, RequestCtx, RequestLimit, TcpFlow};
use crate::telemetry::{SpanAttrs, Telemetry};
use crate::tls::{self, ALPN_H2, ALPN_HTTP1, Credentials, TlsError};
use crate::tunnel;

/// What every layer may know about an inbound connection; derived once at accept.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    /// The TCP peer.
    pub client_addr: SocketAddr,
    /// The verified identity from the peer's certificate; `None` for a plaintext connection
    /// (permissive mode).
    pub peer: Option<SpiffeId>,
    /// The identity as policy principals are written: `<trust-domain>/ns/<ns>/sa/<sa>`.
    pub principal: Option<String>,
    /// The application this connection is forwarded to.
    pub app: SocketAddr,
    /// Its connections and its address as an authority, found once per connection.
    clients: Arc<AppClients>,
    /// The destination port as policy sees it.
    pub destination_port: u16,
    /// The server name the peer asked for, if any.
    pub sni: Option<String>,
    /// The key-exchange group the handshake agreed on; `None` for a plaintext connection in
    /// permissive mode.
    pub kx: Option<KxGroup>,
    /// `x-picket-peer-identity` value, rendered once.
    peer_header: Option<HeaderValue>,
}

/// How logs name a peer without an identity.
const PLAINTEXT_PEER: &str = "(plaintext, no identity)";

impl ConnMeta {
    /// The peer's SPIFFE ID as text, if it has one.
    pub fn peer_header_str(&self) -> Option<&str> {
        self.peer_header.as_ref().and_then(|h| h.to_str().ok())
    }

    /// The peer for log lines: its SPIFFE ID, or a note that it has none.
    fn peer_label(&self) -> &str {
        self.peer_header_str().unwrap_or(PLAINTEXT_PEER)
    }

    /// What policy decides for this connection: its L4 attributes, and `http` for a request.
    pub fn policy_request<'a>(
        &'a self,
        http: Option<picket_policy::HttpRequest<'a>>,
    ) -> picket_policy::Request<'a> {
        picket_policy::Request {
            source_principal: self.principal.as_deref(),
            source_ip: self.client_addr.ip(),
            destination_port: self.destination_port,
            sni: self.sni.as_deref(),
            http,
            auth: None,
        }
    }
}

/// What requests to one application address go through: its pooled HTTP/1.1 connections and
/// its one shared h2c connection, made on first use.
struct AppClients {
    /// The address as a request target's authority.
    authority: Option<Authority>,
    http1: Arc<forward::H1Pool<AppConnector>>,
    h2: H2Client<AppConnector>,
}

impl std::fmt::Debug for AppClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppClients")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

/// Connects to the application over plaintext TCP.
#[derive(Debug, Clone)]
struct AppConnector {
    addr: SocketAddr,
    timeouts: Timeouts,
}

impl Connect for AppConnector {
    type Io = TokioIo<TcpStream>;

    async fn connect(&self) -> Result<Self::Io, ForwardError> {
        connect_app(self.addr, &self.timeouts)
            .await
            .map(TokioIo::new)
    }
}

async fn connect_app(addr: SocketAddr, timeouts: &Timeouts) -> Result<TcpStream, ForwardError> {
    let unreachable = |reason: String| ForwardError::Unreachable {
        target: format!("application at {addr}"),
        reason,
    };
    let stream = tokio::time::timeout(timeouts.connect, TcpStream::connect(addr))
        .await
        .map_err(|_| unreachable("connect timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    net::tune(&stream);
    Ok(stream)
}

/// The inbound side of one sidecar.
pub struct Inbound {
    acceptor: TlsAcceptor,
    app: Option<SocketAddr>,
    /// The connections to each application address.
    apps: std::sync::Mutex<std::collections::HashMap<SocketAddr, Arc<AppClients>>>,
    transparent: bool,
    metrics: Arc<Metrics>,
    telemetry: Telemetry,
    /// This workload's SPIFFE ID, for spans and flow records.
    own_identity: String,
    policy: Arc<PolicyStore>,
    http_cfg: HttpConfig,
    deny_details: bool,
    timeouts: Timeouts,
    limits: Limits,
    listener: ListenerSettings,
    /// The HTTP servers of the inbound listeners, built once.
    servers: net::HttpServers,
    requests: RequestLimit,
    mode: InboundMode,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

impl Inbound {
    /// Builds the inbound side forwarding to `app`.
    pub fn new(
        creds: &Arc<Credentials>,
        config: &Config,
        policy: Arc<PolicyStore>,
        metrics: Arc<Metrics>,
        telemetry: Telemetry,
    ) -> Result<Self, TlsError> {
        let app = config.inbound.app;
        let timeouts = config.timeouts.clone();
        let limits = config.limits.clone();
        let listener = config.listener_settings();
        let servers = net::HttpServers::new(&listener, metrics.parking(timeouts.park), |h2| {
            h2.enable_connect_protocol()
                .max_concurrent_streams(forward::MAX_STREAMS)
                .initial_stream_window_size(forward::STREAM_WINDOW)
                .initial_connection_window_size(forward::CONNECTION_WINDOW);
        });
        Ok(Self {
            acceptor: TlsAcceptor::from(creds.server_config()?),
            app,
            apps: std::sync::Mutex::default(),
            transparent: config.inbound.transparent,
            metrics,
            telemetry,
            own_identity: config.identity.to_string(),
            policy,
            http_cfg: config.http.clone(),
            deny_details: config.policy.deny_details,
            timeouts,
            listener,
            servers,
            requests: RequestLimit::new(limits.max_requests, Direction::Inbound),
            limits,
            mode: config.inbound.mode.clone(),
        })
    }

    /// Accepts connections until `shutdown`; connection tasks run on `tracker`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        let metrics = Arc::clone(&self.metrics);
        server::accept_loop(
            listener,
            &self.listener,
            "inbound",
            &shutdown,
            &tracker,
            |_| metrics.connection(Direction::Inbound, "refused_limit"),
            |tcp, client_addr| Arc::clone(&self).connection(tcp, client_addr, shutdown.clone()),
        )
        .await;
    }

    /// The application a connection is for: with transparent interception, the original
    /// destination port on loopback; otherwise the configured app (if any).
    fn app_for(&self, tcp: &TcpStream) -> Option<SocketAddr> {
        if self.transparent
            && let (Some(orig), Ok(local)) = (net::original_dst(tcp), tcp.local_addr())
            && orig != local
        {
            // The app is reached on the loopback address of the connection's own family.
            let loopback: std::net::IpAddr = if orig.is_ipv6() {
                std::net::Ipv6Addr::LOCALHOST.into()
            } else {
                std::net::Ipv4Addr::LOCALHOST.into()
            };
            return Some(SocketAddr::new(loopback, orig.port()));
        }
        self.app
    }

    /// The connections to `app`, made on first use.
    fn clients_for(&self, app: SocketAddr) -> Arc<AppClients> {
        let mut map = self
            .apps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(map.entry(app).or_insert_with(|| {
            let connector = AppConnector {
                addr: app,
                timeouts: self.timeouts.clone(),
            };
            Arc::new(AppClients {
                authority: Authority::try_from(app.to_string()).ok(),
                http1: Arc::new(forward::H1Pool::new(connector.clone(), self.timeouts.idle)),
                h2: H2Client::new(connector, self.limits.header_list_bytes()),
            })
        }))
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        client_addr: SocketAddr,
        shutdown: CancellationToken,
    ) {
        let Some(app) = self.app_for(&tcp) else {
            self.metrics
                .connection(Direction::Inbound, "refused_no_app");
            tracing::warn!(%client_addr, "inbound connection refused: not redirected and no inbound.app configured");
            return;
        };
        if self.mode.permits_plaintext(app.port())
            && !starts_with_tls_record(&tcp, self.timeouts.detect).await
        {
            return self.plaintext(tcp, client_addr, app, shutdown).await;
        }
        let handshake =
            tokio::time::timeout(self.timeouts.handshake, self.acceptor.accept(tcp)).await;
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return self.refused(client_addr, &e),
            Err(_) => {
                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out");
                return self.refused(client_addr, &e);
            }
        };
        let (_, session) = tls.get_ref();
        let Some(peer) = tls::peer_identity(session.peer_certificates()) else {
            // The verifier accepted a certificate, so this cannot happen; fail closed anyway.
            self.metrics
                .handshake_failed(Direction::Inbound, "not_an_svid");
            return;
        };
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let sni = session.server_name().map(str::to_owned);
        // A finished handshake always has a group; `Other` keeps the label bounded anyway.
        let kx = KxGroup::of(session).unwrap_or(KxGroup::Other);
        let Ok(peer_header) = HeaderValue::from_str(&peer.to_string()) else {
            return;
        };
        self.metrics.handshake(Direction::Inbound, kx);
        // An identity presented from an address that belongs to another (outside its
        // `address_binding`, or a pod the controller announces for another identity):
        // alerted, and refused when `address_binding.action` is deny.
        if !self
            .telemetry
            .peer_connected(&peer.to_string(), client_addr)
            .await
        {
            self.metrics
                .connection(Direction::Inbound, "refused_foreign_address");
            tracing::warn!(%client_addr, peer = %peer, "inbound connection refused: the address belongs to another identity");
            return;
        }
        self.metrics.connection(Direction::Inbound, "accepted");
        let principal = peer.to_string().trim_start_matches("spiffe://").to_owned();
        let meta = Arc::new(ConnMeta {
            client_addr,
            principal: Some(principal),
            app,
            clients: self.clients_for(app),
            destination_port: app.port(),
            sni,
            kx: Some(kx),
            peer: Some(peer),
            peer_header: Some(peer_header),
        });
        tracing::debug!(%client_addr, peer = meta.peer_label(), "inbound connection");
        let io = IdleTimeout::new(tls, self.timeouts.idle);
        match alpn.as_deref() {
            Some(ALPN_H2) | Some(ALPN_HTTP1) => {
                self.http(io, alpn.as_deref() == Some(ALPN_H2), meta, shutdown)
                    .await
            }
            _ => self.splice(io, meta).await,
        }
    }

    /// A plaintext connection on a permissive port: no identity, HTTP or opaque TCP by
    /// detection, every request still decided by policy.
    async fn plaintext(
        self: Arc<Self>,
        tcp: TcpStream,
        client_addr: SocketAddr,
        app: SocketAddr,
        shutdown: CancellationToken,
    ) {
        self.metrics.connection(Direction::Inbound, "plaintext");
        // The unauthenticated-peer detector sees it as it would in strict mode.
        self.telemetry.handshake_failed(client_addr, "not_tls");
        tracing::info!(
            %client_addr,
            port = app.port(),
            "inbound plaintext connection accepted (permissive mode): no peer identity"
        );
        let meta = Arc::new(ConnMeta {
            client_addr,
            peer: None,
            principal: None,
            app,
            clients: self.clients_for(app),
            destination_port: app.port(),
            sni: None,
            kx: None,
            peer_header: None,
        });
        let detected = net::detect(&tcp, self.timeouts.detect).await;
        let mut preface = [0u8; 3];
        let h2 = matches!(tcp.peek(&mut preface).await, Ok(3) if &preface == b"PRI");
        let io = IdleTimeout::new(tcp, self.timeouts.idle);
        match detected {
            net::Detected::Http => self.http(io, h2, meta, shutdown).await,
            net::Detected::Opaque => self.splice(io, meta).await,
        }
    }

    fn refused(&self, client_addr: SocketAddr, e: &std::io::Error) {
        let reason = tls::failure_reason(e);
        self.telemetry.handshake_failed(client_addr, reason);
        self.metrics.handshake_failed(Direction::Inbound, reason);
        tracing::warn!(%client_addr, reason, error = %e, "inbound TLS handshake refused");
    }

    async fn http<I: net::ServeIo>(
        self: Arc<Self>,
        io: I,
        h2: bool,
        meta: Arc<ConnMeta>,
        shutdown: CancellationToken,
    ) {
        let meta_label = meta.peer_label().to_owned();
        let this = Arc::clone(&self);
        // A WebSocket's client end is taken from the connection's own stream type.
        let client_end: tunnel::ClientEnd = tunnel::client_end::<I>;
        // The peer is the reader of these responses. One connection from a peer sidecar
        // carries many callers' streams, so it is closed only when it is stuck as a whole
        // (`StallWatch::stuck`): a stream stalled behind a slow caller leaves the others alone.
        let watch = Arc::new(net::StallWatch::default());
        let guard = Arc::clone(&watch);
        let svc = hyper::service::service_fn(move |req| {
            let this = Arc::clone(&this);
            let meta = Arc::clone(&meta);
            let guard = Arc::clone(&guard);
            net::small_future(async move {
                let mut resp = this.request(req, &meta, client_end).await;
                // Every answer leaves here: the app's copy of the header never does.
                forward::announce_sidecar_answer(&mut resp);
                Ok::<_, Infallible>(resp.map(|b| guard.guard(b)))
            })
        });
        let served = net::serve_http(io, h2, svc, &self.servers, &shutdown);
        tokio::select! {
            result = served => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "inbound HTTP connection ended with an error");
                }
            }
            () = watch.stuck(self.timeouts.stall) => {
                self.metrics.connection(Direction::Inbound, "closed_stalled");
                tracing::info!(
                    peer = meta_label,
                    stall = ?self.timeouts.stall,
                    "inbound connection closed: the peer took no response data"
                );
            }
        }
    }

    /// One request through the pipeline ([`crate::pipeline`]): admitted, made canonical,
    /// traced, enforced, forwarded (or answered), counted and recorded. The request forwarded
    /// is exactly the one policy judged.
    async fn request(
        &self,
        req: Request<Incoming>,
        meta: &ConnMeta,
        client_end: tunnel::ClientEnd,
    ) -> Response<Body> {
        let Some(_permit) = self.requests.admit(&self.metrics) else {
            return pipeline::shed_response();
        };
        let (mut parts, body) = req.into_parts();
        let mut ctx = RequestCtx::new(Direction::Inbound, &parts, self.ends(meta));
        match self.decide(&mut ctx, &mut parts, meta) {
            Ok(()) => self.dispatch(ctx, parts, body, meta, client_end).await,
            Err(answer) => {
                ctx.finish(&answer, &self.metrics, &self.telemetry);
                *answer
            }
        }
    }

    /// Everything decided on a request's head before it is forwarded: made canonical (400 if
    /// it cannot be), traced, its token validated (401) and policy enforced (403); an allowed
    /// request is readied for the app (the token as `jwt` says, the span's context). `Err`:
    /// the answer to send instead.
    fn decide(
        &self,
        ctx: &mut RequestCtx<'_>,
        parts: &mut http::request::Parts,
        meta: &ConnMeta,
    ) -> Result<(), Box<Response<Body>>> {
        let canonical = canonical::canonicalize(parts, &self.http_cfg).map_err(|e| {
            tracing::info!(peer = meta.peer_label(), reason = %e, "inbound request refused as malformed");
            Box::new(forward::error_response_close(e.status, &e.reason))
        })?;
        // A WebSocket's extended CONNECT is recorded as the GET policy decided on.
        ctx.method = canonical.method.clone();
        ctx.span = self.telemetry.server_span(
            &parts.headers,
            &SpanAttrs {
                method: canonical.method.as_str(),
                path: &canonical.path,
                server_address: Some(&canonical.host),
                peer_address: Some(meta.client_addr),
                source_identity: meta.peer_header_str(),
                destination_identity: Some(&self.own_identity),
            },
        );
        // One load of the policy in force for authentication and forwarding.
        let active = Arc::clone(&self.policy.current());
        let outcome = match ctx.authenticate(&active.authn, parts, &self.metrics, meta.peer_label())
        {
            Err(refused) => Err(ctx.unauthenticated(refused)),
            Ok(auth) => {
                let end_user = auth.as_ref().map(|a| &a.auth);
                match self.enforce(ctx, parts, &canonical, meta, end_user) {
                    Some(deny) => Err(deny),
                    None => Ok(auth),
                }
            }
        };
        ctx.path = Some(canonical.path);
        ctx.host = Some(canonical.host);
        let auth = outcome.map_err(Box::new)?;
        active.authn.prepare_forward(parts, auth.as_ref());
        ctx.span.inject(&mut parts.headers);
        Ok(())
    }

    /// Forwards an allowed request to the app and answers it; a WebSocket the app agreed to
    /// becomes a tunnel, whose flow record waits for its end.
    async fn dispatch(
        &self,
        ctx: RequestCtx<'_>,
        parts: http::request::Parts,
        body: Incoming,
        meta: &ConnMeta,
        client_end: tunnel::ClientEnd,
    ) -> Response<Body> {
        let forwarded = match tunnel::form(&parts) {
            // Rare and larger: boxed, so it does not size every request's future.
            Some(form) => Box::pin(self.websocket(parts, body, meta, form)).await,
            None => self.forward(parts, body, meta).await.map(|r| (r, None)),
        };
        let resp = match forwarded {
            Ok((resp, Some(pending))) => {
                let flow = ctx.into_tunnel(resp.status(), &self.metrics, &self.telemetry);
                let telemetry = self.telemetry.clone();
                tunnel::spawn(pending, client_end, self.timeouts.idle, flow, telemetry);
                return resp;
            }
            Ok((resp, None)) => resp,
            Err(ForwardError::RequestBody(reason)) => {
                tracing::info!(peer = meta.peer_label(), %reason, "inbound request refused: malformed body");
                forward::error_response_close(
                    StatusCode::BAD_REQUEST,
                    &format!("malformed request body: {reason}"),
                )
            }
            Err(e) => pipeline::error_response(
                Direction::Inbound,
                &format!("application at {}", meta.app),
                &e,
            ),
        };
        ctx.finish(&resp, &self.metrics, &self.telemetry);
        resp
    }

    /// The two ends of a request or connection from `meta`'s peer to this workload's app.
    fn ends<'a>(&'a self, meta: &'a ConnMeta) -> Endpoints<'a> {
        Endpoints {
            source_identity: meta.peer_header_str().map(Into::into),
            source_address: Some(meta.client_addr),
            destination_identity: Some(self.own_identity.as_str().into()),
            expected_identity: None,
            destination_address: Some(meta.app),
            destination_port: Some(meta.destination_port),
            kx: meta.kx,
            endpoint: None,
        }
    }

    /// Enforces the policy for a canonical request: the deny response, if denied.
    fn enforce(
        &self,
        ctx: &mut RequestCtx<'_>,
        parts: &http::request::Parts,
        canonical: &canonical::Canonical,
        meta: &ConnMeta,
        auth: Option<&picket_policy::RequestAuth>,
    ) -> Option<Response<Body>> {
        let headers: Vec<(&str, &str)> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap_or("\u{fffd}")))
            .collect();
        let mut req = meta.policy_request(Some(picket_policy::HttpRequest {
            method: canonical.method.as_str(),
            path: &canonical.path,
            host: &canonical.host,
            headers: &headers,
        }));
        req.auth = auth;
        ctx.enforce(&self.policy, &req, self.deny_details)
    }

    async fn forward(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
        meta: &ConnMeta,
    ) -> Result<Response<Body>, ForwardError> {
        let to_http1 = wants_http1(&parts);
        let had_body = forward::declares_body(&parts.headers, &body);
        let mut body = forward::body_for_forwarding(body).await?;
        forward::strip_hop_by_hop(&mut parts.headers);
        forward::frame_request(&mut parts.headers, &mut body, had_body, to_http1);
        let body_failed = body.failure_flag();
        let body = forward::boxed(body);
        self.app_headers(&mut parts.headers, meta);
        // The caller's authority: cheap clones of what the canonical head already holds.
        let authority = parts.uri.authority().cloned().or_else(|| {
            let host = parts.headers.get(header::HOST)?;
            Authority::try_from(host.as_bytes()).ok()
        });
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        self.send_to_app(parts, body, authority, pq, meta, to_http1)
            .await
            .map_err(|e| forward::blame(e, &body_failed))
    }

    /// The identity and forwarding headers of what the app receives: every copy a client may
    /// have sent of `x-picket-peer-identity` (always) and of the other meshes' identity and
    /// routing headers (as configured) removed, the forwarding headers as configured, and the
    /// verified peer identity set.
    fn app_headers(&self, headers: &mut http::HeaderMap, meta: &ConnMeta) {
        forward::remove_each(headers, &[ORIG_PROTO_HEADER, PEER_IDENTITY_HEADER]);
        forward::strip_headers(headers, &self.http_cfg.strip_headers);
        forward::forwarding_headers(headers, self.http_cfg.forwarded, meta.client_addr.ip());
        if let Some(peer) = &meta.peer_header {
            headers.insert(PEER_IDENTITY_HEADER, peer.clone());
        }
    }

    /// A WebSocket request, allowed by policy: asked of the app in the form it speaks (an
    /// HTTP/1.1 upgrade on a connection of its own, or an extended CONNECT to an h2c app). The
    /// tunnel is [`tunnel::Pending`] only when the app agreed (101, or 2xx over HTTP/2); any
    /// other answer goes back as an ordinary response and no tunnel opens.
    async fn websocket(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
        meta: &ConnMeta,
        form: tunnel::Form,
    ) -> Result<(Response<Body>, Option<tunnel::Pending>), ForwardError> {
        let refuse = |reason: &str| {
            Ok((
                forward::error_response_close(StatusCode::BAD_REQUEST, reason),
                None,
            ))
        };
        if forward::declares_body(&parts.headers, &body) {
            return refuse("a WebSocket upgrade request has no body");
        }
        let Some(client) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return refuse("this connection cannot be upgraded");
        };
        let to_http1 = wants_http1(&parts);
        forward::strip_hop_by_hop(&mut parts.headers);
        forward::strip_framing(&mut parts.headers);
        self.app_headers(&mut parts.headers, meta);
        let (app_form, sent) = if to_http1 {
            (
                tunnel::Form::Upgrade,
                self.upgrade_at_app(parts, meta).await,
            )
        } else {
            let sent = self.connect_at_app(parts, meta).await;
            (tunnel::Form::ExtendedConnect, sent)
        };
        let mut resp = sent?;
        if tunnel::agreed(app_form, resp.status()) {
            let server = hyper::upgrade::on(&mut resp);
            let (mut head, _) = resp.into_parts();
            forward::strip_hop_by_hop(&mut head.headers);
            let answer = tunnel::agreement(form, head.headers);
            return Ok((answer, Some(tunnel::Pending { client, server })));
        }
        tracing::info!(peer = meta.peer_label(), status = %resp.status(), "WebSocket refused by the app; no tunnel");
        Ok((forward::to_caller(resp), None))
    }

    /// A WebSocket asked of an HTTP/1.1 app: an upgrade request on a connection of its own.
    async fn upgrade_at_app(
        &self,
        mut parts: http::request::Parts,
        meta: &ConnMeta,
    ) -> Result<Response<Incoming>, ForwardError> {
        let (authority, pq) = target_of(&parts);
        tunnel::as_upgrade(&mut parts);
        parts.uri = pq
            .parse()
            .map_err(|e| ForwardError::Broken(format!("invalid request target: {e}")))?;
        let host = authority.unwrap_or_else(|| meta.app.to_string());
        if !parts.headers.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(&host)
        {
            parts.headers.insert(header::HOST, v);
        }
        let tcp = connect_app(meta.app, &self.timeouts).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| ForwardError::Broken(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "WebSocket connection to the app ended");
            }
        });
        let timeout = self.timeouts.request;
        let send = sender.send_request(Request::from_parts(parts, forward::empty()));
        match tokio::time::timeout(timeout, send).await {
            Err(_) => Err(ForwardError::Timeout(timeout)),
            Ok(r) => r.map_err(|e| ForwardError::Broken(e.to_string())),
        }
    }

    /// A WebSocket asked of an h2c app: an extended CONNECT stream on its shared connection.
    async fn connect_at_app(
        &self,
        mut parts: http::request::Parts,
        meta: &ConnMeta,
    ) -> Result<Response<Incoming>, ForwardError> {
        let (authority, pq) = target_of(&parts);
        tunnel::as_extended_connect(&mut parts);
        let target =
            |e: http::uri::InvalidUri| ForwardError::Broken(format!("invalid request target: {e}"));
        let host = authority.unwrap_or_else(|| meta.app.to_string());
        parts.uri = forward::absolute_uri(
            host.parse::<Authority>().map_err(target)?,
            pq.parse::<PathAndQuery>().map_err(target)?,
        )?;
        parts.headers.remove(header::HOST);
        let req = Request::from_parts(parts, forward::empty());
        meta.clients
            .h2
            .send_within(req, self.timeouts.request)
            .await
    }

    /// Sends a request to the application over the protocol it speaks; the response's
    /// hop-by-hop headers are removed.
    async fn send_to_app(
        &self,
        mut parts: http::request::Parts,
        body: Body,
        authority: Option<Authority>,
        pq: PathAndQuery,
        meta: &ConnMeta,
        to_http1: bool,
    ) -> Result<Response<Body>, ForwardError> {
        let app = meta.app;
        let clients = &meta.clients;
        let app_authority = || {
            clients
                .authority
                .clone()
                .ok_or_else(|| ForwardError::Broken(format!("{app} is not a request authority")))
        };
        let timeout = self.timeouts.request;
        if to_http1 {
            parts.version = Version::HTTP_11;
            if !parts.headers.contains_key(header::HOST) {
                let host = match authority {
                    Some(a) => a,
                    None => app_authority()?,
                };
                if let Ok(v) = HeaderValue::from_str(host.as_str()) {
                    parts.headers.insert(header::HOST, v);
                }
            }
            // Origin form: the pool knows where it connects.
            parts.uri = http::Uri::from(pq);
            let send = clients.http1.send(Request::from_parts(parts, body));
            let resp = tokio::time::timeout(timeout, send)
                .await
                .map_err(|_| ForwardError::Timeout(timeout))??;
            Ok(forward::to_caller(resp))
        } else {
            let authority = match authority {
                Some(a) => a,
                None => app_authority()?,
            };
            parts.uri = forward::absolute_uri(authority, pq)?;
            parts.headers.remove(header::HOST);
            let req = Request::from_parts(parts, body);
            let resp = clients.h2.send_within(req, timeout).await?;
            Ok(forward::to_caller(resp))
        }
    }

    async fn splice<I>(&self, mut io: I, meta: Arc<ConnMeta>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut flow = TcpFlow::new(Direction::Inbound, self.ends(&meta));
        let enforced = pipeline::enforce(&self.policy, &meta.policy_request(None));
        let allowed = enforced.allowed();
        flow.enforced = Some(enforced);
        // Decided: the open record goes to the detectors now, not when the connection ends.
        flow.open(&self.telemetry);
        if allowed {
            match connect_app(meta.app, &self.timeouts).await {
                Err(e) => {
                    tracing::info!(peer = meta.peer_label(), error = %e, "inbound TCP: application unreachable");
                }
                Ok(mut app) => {
                    if let Err(e) = flow.splice(&mut io, &mut app, &self.telemetry).await {
                        tracing::debug!(peer = meta.peer_label(), error = %e, "inbound TCP connection ended");
                    }
                }
            }
        }
        flow.finish(&self.metrics, &self.telemetry);
    }
}

/// Whether the app receives a request over HTTP/1.1: it came over HTTP/1, or over HTTP/2
/// from a sidecar whose caller spoke HTTP/1.1 (`x-picket-orig-proto`).
fn wants_http1(parts: &http::request::Parts) -> bool {
    parts.version != Version::HTTP_2
        || parts
            .headers
            .get(&ORIG_PROTO_HEADER)
            .is_some_and(|v| v.as_bytes() == ORIG_PROTO_HTTP1.as_bytes())
}

/// The authority a request names (`:authority`, or `Host`) and its path and query.
fn target_of(parts: &http::request::Parts) -> (Option<String>, String) {
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_owned();
    (authority, pq)
}

/// Whether a connection opens with a TLS handshake record (a ClientHello): its first byte is
/// 0x16, which no HTTP request or other plaintext greeting starts with. Silence until
/// `timeout` is not TLS (a TLS client always speaks first).
async fn starts_with_tls_record(tcp: &TcpStream, timeout: std::time::Duration) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(timeout, tcp.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD
    )
}

/// The TLS record type of handshake messages.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

#[cfg(test)]
mod tests;
