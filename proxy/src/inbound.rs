//! Inbound: peers' mutual-TLS connections to this workload.
//!
//! ```text
//! accept -> limit -> TLS 1.3 (client SVID required) -> peer SpiffeId
//!   ALPN h2 / http/1.1 -> hyper server -> canonical request (400 if it cannot be made)
//!                      -> policy decision per request (403 / gRPC PERMISSION_DENIED)
//!                      -> strip hop-by-hop and identity headers, set x-picket-peer-identity
//!                      -> app (HTTP/1.1 pool or one h2c conn)
//!   no ALPN            -> policy decision for the connection (closed if denied)
//!                      -> opaque TCP splice to the app
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use picket_ca::SpiffeId;
use picket_policy::Verdict;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::authz::{self, PolicyStore};
use crate::canonical;
use crate::config::{Config, HttpConfig, Limits, Timeouts};
use crate::forward::{
    self, Body, Connect, ForwardError, H2Client, ORIG_PROTO_HEADER, ORIG_PROTO_HTTP1,
    PEER_IDENTITY_HEADER,
};
use crate::metrics::{Direction, Metrics};
use crate::net::{self, IdleTimeout};
use crate::telemetry::{self, FlowProtocol, FlowRecord, RequestSpan, SpanAttrs, Telemetry};
use crate::tls::{self, ALPN_H2, ALPN_HTTP1, Credentials, TlsError};

/// What every layer may know about an inbound connection; derived once at accept.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    /// The TCP peer.
    pub client_addr: SocketAddr,
    /// The verified identity from the peer's certificate.
    pub peer: SpiffeId,
    /// The identity as policy principals are written: `<trust-domain>/ns/<ns>/sa/<sa>`.
    pub principal: String,
    /// The application this connection is forwarded to.
    pub app: SocketAddr,
    /// The destination port as policy sees it.
    pub destination_port: u16,
    /// The server name the peer asked for, if any.
    pub sni: Option<String>,
    /// `x-picket-peer-identity` value, rendered once.
    peer_header: HeaderValue,
}

impl ConnMeta {
    /// The peer's SPIFFE ID as text.
    pub fn peer_header_str(&self) -> &str {
        self.peer_header.to_str().unwrap_or_default()
    }
}

/// Connects to the application over plaintext HTTP/2 (h2c).
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
    http1: Client<HttpConnector, Body>,
    /// One multiplexed h2c connection per application address.
    h2: std::sync::Mutex<std::collections::HashMap<SocketAddr, Arc<H2Client<AppConnector>>>>,
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
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeouts.connect));
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(timeouts.idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .set_host(false)
            .build(connector);
        let h2 = std::sync::Mutex::new(std::collections::HashMap::new());
        Ok(Self {
            acceptor: TlsAcceptor::from(creds.server_config()?),
            app,
            http1,
            h2,
            transparent: config.inbound.transparent,
            metrics,
            telemetry,
            own_identity: config.identity.to_string(),
            policy,
            http_cfg: config.http.clone(),
            deny_details: config.policy.deny_details,
            timeouts,
            limits,
        })
    }

    /// Accepts connections until `shutdown`; connection tasks run on `tracker`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        let limit = self.limits.max_connections;
        net::accept_loop(
            listener,
            limit,
            Direction::Inbound,
            &self.metrics,
            &shutdown,
            &tracker,
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
            return Some(SocketAddr::from(([127, 0, 0, 1], orig.port())));
        }
        self.app
    }

    fn h2_for(&self, app: SocketAddr) -> Arc<H2Client<AppConnector>> {
        let mut map = self
            .h2
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(map.entry(app).or_insert_with(|| {
            Arc::new(H2Client::new(
                AppConnector {
                    addr: app,
                    timeouts: self.timeouts.clone(),
                },
                self.limits.header_list_bytes(),
            ))
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
        let Ok(peer_header) = HeaderValue::from_str(&peer.to_string()) else {
            return;
        };
        self.metrics.connection(Direction::Inbound, "accepted");
        let principal = peer.to_string().trim_start_matches("spiffe://").to_owned();
        let meta = Arc::new(ConnMeta {
            client_addr,
            principal,
            app,
            destination_port: app.port(),
            sni,
            peer,
            peer_header,
        });
        tracing::debug!(%client_addr, peer = %meta.peer, "inbound connection");
        let io = IdleTimeout::new(tls, self.timeouts.idle);
        match alpn.as_deref() {
            Some(ALPN_H2) | Some(ALPN_HTTP1) => {
                self.http(io, alpn.as_deref() == Some(ALPN_H2), meta, shutdown)
                    .await
            }
            _ => self.splice(io, meta).await,
        }
    }

    fn refused(&self, client_addr: SocketAddr, e: &std::io::Error) {
        let reason = tls::failure_reason(e);
        self.telemetry.handshake_failed(client_addr, reason);
        self.metrics.handshake_failed(Direction::Inbound, reason);
        tracing::warn!(%client_addr, reason, error = %e, "inbound TLS handshake refused");
    }

    async fn http<I>(
        self: Arc<Self>,
        io: I,
        h2: bool,
        meta: Arc<ConnMeta>,
        shutdown: CancellationToken,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let this = Arc::clone(&self);
        let svc = hyper::service::service_fn(move |req| {
            let this = Arc::clone(&this);
            let meta = Arc::clone(&meta);
            net::small_future(async move { Ok::<_, Infallible>(this.request(req, &meta).await) })
        });
        let io = TokioIo::new(io);
        let result = if h2 {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_header_list_size(self.limits.header_list_bytes())
                .adaptive_window(true);
            let conn = builder.serve_connection(io, svc);
            net::drain_on(conn, &shutdown, |c| c.graceful_shutdown()).await
        } else {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(self.timeouts.request)
                .max_buf_size(self.limits.max_header_bytes.max(8192));
            let conn = builder.serve_connection(io, svc);
            net::drain_on(conn, &shutdown, |c| c.graceful_shutdown()).await
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "inbound HTTP connection ended with an error");
        }
    }

    /// One request: made canonical, decided, forwarded (or answered), counted and recorded.
    /// The request forwarded is exactly the one policy judged.
    async fn request(&self, req: Request<Incoming>, meta: &ConnMeta) -> Response<Body> {
        let start = Instant::now();
        let (mut parts, body) = req.into_parts();
        let protocol = telemetry::protocol_of(parts.version, &parts.headers);
        let method = parts.method.clone();
        let bytes_in = telemetry::content_length(&parts.headers);
        let mut span = RequestSpan::none();
        let mut decision = None;
        let mut request_id = None;
        let (resp, canonical) = match canonical::canonicalize(&mut parts, &self.http_cfg) {
            Err(e) => {
                tracing::info!(peer = %meta.peer, reason = %e, "inbound request refused as malformed");
                (forward::error_response_close(e.status, &e.reason), None)
            }
            Ok(canonical) => {
                span = self.telemetry.server_span(
                    &parts.headers,
                    &SpanAttrs {
                        method: method.as_str(),
                        path: &canonical.path,
                        server_address: Some(&canonical.host),
                        peer_address: Some(meta.client_addr),
                        source_identity: Some(meta.peer_header_str()),
                        destination_identity: Some(&self.own_identity),
                    },
                );
                let d = self.decide(&parts, &canonical, meta);
                let resp = if d.verdict == Verdict::Allow {
                    span.inject(&mut parts.headers);
                    self.proxy(parts, body, meta).await
                } else {
                    let id = authz::request_id();
                    let what = format!("{method} {}", canonical.path);
                    authz::log_decision(&d, &meta.principal, &what, Some(&id));
                    let grpc = protocol == FlowProtocol::Grpc;
                    let resp = authz::deny_response(&d, &id, grpc, self.deny_details);
                    request_id = Some(id);
                    resp
                };
                decision = Some(d);
                (resp, Some(canonical))
            }
        };
        self.metrics
            .request(Direction::Inbound, resp.status(), start.elapsed());
        if self.telemetry.is_enabled() {
            let mut record = FlowRecord::new(
                time::OffsetDateTime::now_utc(),
                Direction::Inbound,
                protocol,
            );
            record.source_identity = Some(meta.peer_header_str().into());
            record.source_address = Some(meta.client_addr);
            record.destination_identity = Some(self.own_identity.as_str().into());
            record.destination_address = Some(meta.app);
            record.destination_port = Some(meta.destination_port);
            record.method = Some(method.as_str().into());
            if let Some(c) = &canonical {
                record.path = Some(c.path.as_str().into());
                record.host = Some(c.host.as_str().into());
            }
            record.status = Some(resp.status().as_u16());
            record.grpc_status = telemetry::grpc_status(resp.headers());
            telemetry::fill_decision(&mut record, decision.as_ref());
            record.request_id = request_id.map(Into::into);
            record.bytes_in = bytes_in;
            record.bytes_out = telemetry::content_length(resp.headers());
            record.duration_ms = start.elapsed().as_secs_f64() * 1000.0;
            self.telemetry.record_request(span, record);
        }
        resp
    }

    /// The policy decision for a canonical request.
    fn decide(
        &self,
        parts: &http::request::Parts,
        canonical: &canonical::Canonical,
        meta: &ConnMeta,
    ) -> picket_policy::Decision {
        let headers: Vec<(&str, &str)> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap_or("\u{fffd}")))
            .collect();
        let decision = self.policy.decide(&picket_policy::Request {
            source_principal: Some(&meta.principal),
            source_ip: meta.client_addr.ip(),
            destination_port: meta.destination_port,
            sni: meta.sni.as_deref(),
            http: Some(picket_policy::HttpRequest {
                method: parts.method.as_str(),
                path: &canonical.path,
                host: &canonical.host,
                headers: &headers,
            }),
        });
        if decision.verdict == Verdict::Allow && !decision.shadows.is_empty() {
            let what = format!("{} {}", parts.method, canonical.path);
            authz::log_decision(&decision, &meta.principal, &what, None);
        }
        decision
    }

    async fn proxy(
        &self,
        parts: http::request::Parts,
        body: Incoming,
        meta: &ConnMeta,
    ) -> Response<Body> {
        match self.forward(parts, body, meta).await {
            Ok(resp) => resp,
            Err(ForwardError::RequestBody(reason)) => {
                tracing::info!(peer = %meta.peer, %reason, "inbound request refused: malformed body");
                forward::error_response_close(
                    StatusCode::BAD_REQUEST,
                    &format!("malformed request body: {reason}"),
                )
            }
            Err(e) => {
                tracing::info!(peer = %meta.peer, error = %e, "inbound request failed");
                let status = match e {
                    ForwardError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::BAD_GATEWAY,
                };
                forward::error_response(status, &e.to_string())
            }
        }
    }

    async fn forward(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
        meta: &ConnMeta,
    ) -> Result<Response<Body>, ForwardError> {
        let to_http1 = parts.version != Version::HTTP_2
            || parts
                .headers
                .get(&ORIG_PROTO_HEADER)
                .is_some_and(|v| v.as_bytes() == ORIG_PROTO_HTTP1.as_bytes());
        let had_body = forward::declares_body(&parts.headers, &body);
        let mut body = forward::body_for_forwarding(body).await?;
        forward::strip_hop_by_hop(&mut parts.headers);
        forward::frame_request(&mut parts.headers, &mut body, had_body, to_http1);
        let body_failed = body.failure_flag();
        let body = forward::boxed(body);
        parts.headers.remove(&ORIG_PROTO_HEADER);
        // Removes every copy a client may have sent of x-picket-peer-identity (always) and of
        // the other meshes' identity and routing headers (as configured).
        parts.headers.remove(&PEER_IDENTITY_HEADER);
        forward::strip_headers(&mut parts.headers, &self.http_cfg.strip_headers);
        forward::forwarding_headers(
            &mut parts.headers,
            self.http_cfg.forwarded,
            meta.client_addr.ip(),
        );
        parts
            .headers
            .insert(PEER_IDENTITY_HEADER, meta.peer_header.clone());
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
        let app = meta.app;
        let resp = self
            .send_to_app(parts, body, authority, &pq, app, to_http1)
            .await
            .map_err(|e| forward::blame(e, &body_failed))?;
        let (mut parts, body) = resp.into_parts();
        forward::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, forward::boxed(body)))
    }

    async fn send_to_app(
        &self,
        mut parts: http::request::Parts,
        body: Body,
        authority: Option<String>,
        pq: &str,
        app: SocketAddr,
        to_http1: bool,
    ) -> Result<Response<Incoming>, ForwardError> {
        let timeout = self.timeouts.request;
        let resp = if to_http1 {
            parts.uri = forward::absolute_uri(&app.to_string(), pq)?;
            parts.version = Version::HTTP_11;
            if !parts.headers.contains_key(header::HOST) {
                let host = authority.unwrap_or_else(|| app.to_string());
                if let Ok(v) = HeaderValue::from_str(&host) {
                    parts.headers.insert(header::HOST, v);
                }
            }
            let fut = self.http1.request(Request::from_parts(parts, body));
            match tokio::time::timeout(timeout, fut).await {
                Err(_) => return Err(ForwardError::Timeout(timeout)),
                Ok(Err(e)) if e.is_connect() => {
                    return Err(ForwardError::Unreachable {
                        target: format!("application at {app}"),
                        reason: std::error::Error::source(&e)
                            .map_or_else(|| e.to_string(), |s| s.to_string()),
                    });
                }
                Ok(Err(e)) => return Err(ForwardError::Broken(e.to_string())),
                Ok(Ok(resp)) => resp,
            }
        } else {
            let host = authority.unwrap_or_else(|| app.to_string());
            parts.uri = forward::absolute_uri(&host, pq)?;
            parts.headers.remove(header::HOST);
            match tokio::time::timeout(
                timeout,
                self.h2_for(app).send(Request::from_parts(parts, body)),
            )
            .await
            {
                Err(_) => return Err(ForwardError::Timeout(timeout)),
                Ok(r) => r?,
            }
        };
        Ok(resp)
    }

    async fn splice<I>(&self, mut io: I, meta: Arc<ConnMeta>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let start = Instant::now();
        let decision = self.policy.decide(&picket_policy::Request {
            source_principal: Some(&meta.principal),
            source_ip: meta.client_addr.ip(),
            destination_port: meta.destination_port,
            sni: meta.sni.as_deref(),
            http: None,
        });
        let mut bytes = (0, 0);
        let mut request_id = None;
        if decision.verdict != Verdict::Allow {
            let id = authz::request_id();
            authz::log_decision(&decision, &meta.principal, "tcp connection", Some(&id));
            request_id = Some(id);
        } else {
            if !decision.shadows.is_empty() {
                authz::log_decision(&decision, &meta.principal, "tcp connection", None);
            }
            match connect_app(meta.app, &self.timeouts).await {
                Err(e) => {
                    tracing::info!(peer = %meta.peer, error = %e, "inbound TCP: application unreachable");
                }
                Ok(mut app) => match tokio::io::copy_bidirectional(&mut io, &mut app).await {
                    Ok((from_peer, to_peer)) => {
                        self.metrics
                            .tcp_bytes(Direction::Inbound, from_peer + to_peer);
                        bytes = (from_peer, to_peer);
                    }
                    Err(e) => {
                        tracing::debug!(peer = %meta.peer, error = %e, "inbound TCP connection ended");
                    }
                },
            }
        }
        if self.telemetry.is_enabled() {
            let mut record = FlowRecord::new(
                time::OffsetDateTime::now_utc(),
                Direction::Inbound,
                FlowProtocol::Tcp,
            );
            record.source_identity = Some(meta.peer_header_str().into());
            record.source_address = Some(meta.client_addr);
            record.destination_identity = Some(self.own_identity.as_str().into());
            record.destination_address = Some(meta.app);
            record.destination_port = Some(meta.destination_port);
            telemetry::fill_decision(&mut record, Some(&decision));
            record.request_id = request_id.map(Into::into);
            (record.bytes_in, record.bytes_out) = bytes;
            record.duration_ms = start.elapsed().as_secs_f64() * 1000.0;
            self.telemetry.record_flow(&record);
        }
    }
}
