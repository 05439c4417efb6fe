//! The one request pipeline both directions run, as plain async functions.
//!
//! ```text
//! hyper service_fn (one per connection; inbound: ConnMeta, outbound: Route)
//!   -> RequestLimit::admit  per-direction concurrency limit; past it the request is shed: 503
//!   -> RequestCtx::new      the per-request context, made once: start, protocol, method,
//!                           bytes in, the two endpoints (identities, addresses, port)
//!   -> canonical            inbound: the one canonical request (400 if it cannot be made)
//!   -> span                 inbound: server span; outbound: client span; injected on forward
//!   -> RequestCtx::authenticate  inbound: the request's JWT, if any, validated against the
//!                           workload's RequestAuthentication rules (401 if invalid)
//!   -> RequestCtx::enforce  inbound: decide (counted), log once, build the deny once
//!   -> forward              hop-by-hop hygiene, identity headers, to the app / the peer
//!   -> error_response       the one map from a forwarding error to 502 / 503 / 504
//!   -> RequestCtx::finish   metrics, and the flow record built once from the context,
//!                           handed with the span to telemetry (detectors, flow log, span end)
//! ```
//!
//! Opaque TCP connections run the same [`enforce`] and build their record with the same
//! [`Endpoints::record`], through [`TcpFlow`].
//!
//! Why plain functions and not tower layers: every stage needs the same few values (the
//! connection's metadata, the canonical request, the decision) and the two directions run the
//! stages in a fixed order; as `Service`s each stage would re-derive or carry them through
//! request extensions and add a boxed future per stage per request, and nothing composes
//! stacks at run time. The concurrency limit and load shedding that a tower stack would provide
//! are [`RequestLimit`]: one semaphore permit per request, taken without waiting.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Response, StatusCode};
use picket_common::crypto::KxGroup;
use picket_policy::{Decision, Verdict};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::authz::{self, PolicyStore};
use crate::direction::Direction;
use crate::forward::{self, Body, ForwardError};
use crate::jwt::{Authenticated, Authenticator, TokenError};
use crate::metrics::Metrics;
use crate::net;
use crate::telemetry::{
    self, FlowEvent, FlowPhase, FlowProtocol, FlowRecord, RequestSpan, SpanOutcome, Telemetry,
    TunnelEnd,
};

/// The requests one direction serves at once. A request past the limit is answered 503 at
/// once (shed) rather than queued, so an overloaded sidecar answers fast and sheds load
/// instead of building a queue no caller will wait for.
#[derive(Debug, Clone)]
pub struct RequestLimit {
    permits: Arc<Semaphore>,
    direction: Direction,
}

impl RequestLimit {
    /// A limit of `max` requests in flight for `direction`.
    pub fn new(max: usize, direction: Direction) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            direction,
        }
    }

    /// A permit held while the request is served, or `None` (counted and logged) when the
    /// request is to be shed: answer it with [`shed_response`].
    pub fn admit(&self, metrics: &Metrics) -> Option<OwnedSemaphorePermit> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok();
        if permit.is_none() {
            metrics.request_shed(self.direction);
            tracing::debug!(
                direction = self.direction.as_str(),
                "request shed: too many requests in flight"
            );
        }
        permit
    }
}

/// The answer to a shed request: 503, at once.
pub fn shed_response() -> Response<Body> {
    forward::error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many requests in flight; try again",
    )
}

/// The two ends of a request or connection, as the flow record names them.
#[derive(Debug, Clone, Default)]
pub struct Endpoints<'a> {
    /// The caller's SPIFFE ID (on outbound flows, this workload's own).
    pub source_identity: Option<Cow<'a, str>>,
    /// The caller's address.
    pub source_address: Option<SocketAddr>,
    /// The called workload's SPIFFE ID (outbound: the one the peer presented).
    pub destination_identity: Option<Cow<'a, str>>,
    /// Outbound: the configured expectation, when it differs from what the peer presented.
    pub expected_identity: Option<Cow<'a, str>>,
    /// The called address (the peer sidecar outbound, the application inbound).
    pub destination_address: Option<SocketAddr>,
    /// The destination port the authorization policy saw (or the peer's port, outbound).
    pub destination_port: Option<u16>,
    /// The key-exchange group of the mTLS connection between the sidecars that carried the
    /// flow (inbound: the one it arrived on; outbound: the one that carried the answer).
    pub kx: Option<KxGroup>,
    /// Outbound to a destination the discovery source knows: the endpoint that served the
    /// flow (`destination_address` is then the address the app dialled).
    pub endpoint: Option<SocketAddr>,
}

impl<'a> Endpoints<'a> {
    /// The one place a flow record starts: the direction, protocol and these ends.
    pub fn record(&self, direction: Direction, protocol: FlowProtocol) -> FlowRecord<'a> {
        let mut record = FlowRecord::new(time::OffsetDateTime::now_utc(), direction, protocol);
        record.source_identity.clone_from(&self.source_identity);
        record.source_address = self.source_address;
        record
            .destination_identity
            .clone_from(&self.destination_identity);
        record.expected_identity.clone_from(&self.expected_identity);
        record.destination_address = self.destination_address;
        record.destination_port = self.destination_port;
        record.kx = self.kx.map(|k| k.as_str().into());
        record.endpoint = self.endpoint;
        record
    }
}

/// One authorization, enforced: the decision (counted by the policy store) and, for a denial,
/// the request id that ties the deny response to its log record.
#[derive(Debug)]
pub struct Enforced {
    /// The decision, with dry-run shadows.
    pub decision: Decision,
    /// Set when denied.
    pub request_id: Option<String>,
}

impl Enforced {
    /// Whether the request or connection may go on.
    pub fn allowed(&self) -> bool {
        self.decision.verdict == Verdict::Allow
    }

    /// Copies the decision into a flow record.
    fn fill(&self, record: &mut FlowRecord<'_>) {
        telemetry::fill_decision(record, Some(&self.decision));
        record.request_id = self.request_id.clone().map(Into::into);
    }
}

/// Decides `req` with the policy in force (which counts the decision), and logs the one
/// explained record: every denial with a fresh request id, and an allow only when a dry-run
/// policy would have decided otherwise.
pub fn enforce(policy: &PolicyStore, req: &picket_policy::Request<'_>) -> Enforced {
    let decision = policy.decide(req);
    let denied = decision.verdict != Verdict::Allow;
    let request_id = denied.then(authz::request_id);
    if denied || !decision.shadows.is_empty() {
        let what = match &req.http {
            Some(h) => format!("{} {}", h.method, h.path),
            None => "tcp connection".to_owned(),
        };
        // A plaintext caller (permissive inbound) has no principal; say so in the log.
        let peer = req.source_principal.unwrap_or("(plaintext, no identity)");
        authz::log_decision(&decision, peer, &what, request_id.as_deref());
    }
    Enforced {
        decision,
        request_id,
    }
}

/// The answer to a request whose token was refused: 401 with
/// `WWW-Authenticate: Bearer realm="picket", error="invalid_token", error_description="..."`
/// and a JSON body naming the reason, or for gRPC a trailers-only UNAUTHENTICATED (16). The
/// token itself is never echoed.
pub fn unauthenticated_response(e: TokenError, grpc: bool) -> Response<Body> {
    use bytes::Bytes;
    use http::header::{CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
    use http_body_util::{Empty, Full};

    let challenge = format!(
        "Bearer realm=\"picket\", error=\"invalid_token\", error_description=\"{}\"",
        e.description()
    );
    let mut resp = if grpc {
        let mut resp = Response::new(forward::boxed(Empty::<Bytes>::new()));
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from_static("16"));
        if let Ok(v) = HeaderValue::from_str(&format!("picket: {}", e.description())) {
            h.insert("grpc-message", v);
        }
        resp
    } else {
        let body = serde_json::json!({ "error": "unauthenticated", "reason": e.as_str() });
        let mut resp = Response::new(forward::boxed(Full::new(Bytes::from(format!("{body}\n")))));
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    resp.extensions_mut().insert(forward::SidecarAnswer::Own);
    resp
}

/// The status a forwarding failure answers with, in one place:
///
/// | failure | inbound (to the app) | outbound (to a peer sidecar) |
/// | --- | --- | --- |
/// | no response in time | 504 | 504 |
/// | cannot connect, handshake refused, peer draining | 502 | 503 |
/// | connection broke with the request in flight | 502 | 502 |
pub fn error_status(direction: Direction, e: &ForwardError) -> StatusCode {
    match (e, direction) {
        (ForwardError::Timeout(_), _) => StatusCode::GATEWAY_TIMEOUT,
        (
            ForwardError::Unreachable { .. }
            | ForwardError::Handshake { .. }
            | ForwardError::Draining,
            Direction::Outbound,
        ) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// The response for a forwarding failure, logged once with `target` naming what was called.
pub fn error_response(direction: Direction, target: &str, e: &ForwardError) -> Response<Body> {
    tracing::info!(
        direction = direction.as_str(),
        target,
        error = %e,
        "request could not be forwarded"
    );
    forward::error_response(error_status(direction, e), &e.to_string())
}

/// The per-request context: made once when the request arrives, filled as the stages run,
/// and turned into the metrics and the one flow record by [`RequestCtx::finish`].
#[derive(Debug)]
pub struct RequestCtx<'a> {
    start: Instant,
    direction: Direction,
    /// The application protocol (HTTP/1, HTTP/2, gRPC) as the caller spoke it.
    pub protocol: FlowProtocol,
    /// The request method.
    pub method: Method,
    bytes_in: u64,
    /// The two ends.
    pub ends: Endpoints<'a>,
    /// The path as policy and the receiver see it (canonical inbound), without the query.
    pub path: Option<String>,
    /// `Host` / `:authority`.
    pub host: Option<String>,
    /// The request's span (none when tracing and flow records are off).
    pub span: RequestSpan,
    /// The authorization, inbound.
    pub enforced: Option<Enforced>,
    /// The end user of a validated token (for the flow record, already cut to length).
    pub request_principal: Option<String>,
    /// Why the request's token was refused.
    pub token_error: Option<TokenError>,
}

impl<'a> RequestCtx<'a> {
    /// The context of a request whose head is `parts`, as the caller sent it.
    pub fn new(direction: Direction, parts: &http::request::Parts, ends: Endpoints<'a>) -> Self {
        Self {
            start: Instant::now(),
            direction,
            protocol: telemetry::protocol_of(parts.version, &parts.headers),
            method: parts.method.clone(),
            bytes_in: telemetry::content_length(&parts.headers),
            ends,
            path: None,
            host: None,
            span: RequestSpan::none(),
            enforced: None,
            request_principal: None,
            token_error: None,
        }
    }

    /// Validates the request's token with `authn` ([`crate::jwt::Authenticator`]): the
    /// validated end user (or `None` for a request without a token, which goes on
    /// unauthenticated), or why it was refused: answer with [`RequestCtx::unauthenticated`].
    /// Counted and, when refused, logged once, with the token named only as `jwt.log_token`
    /// allows.
    pub fn authenticate(
        &mut self,
        authn: &Authenticator,
        parts: &http::request::Parts,
        metrics: &Metrics,
        peer: &str,
    ) -> Result<Option<Authenticated>, TokenError> {
        match authn.authenticate(parts) {
            Ok(None) => Ok(None),
            Ok(Some(auth)) => {
                metrics.jwt_validation("ok");
                self.request_principal = authn.flow_principal(&auth);
                Ok(Some(auth))
            }
            Err(refused) => {
                metrics.jwt_validation(refused.error.as_str());
                tracing::info!(
                    peer,
                    reason = refused.error.as_str(),
                    token = refused.token.as_deref(),
                    "request token refused"
                );
                self.token_error = Some(refused.error);
                Err(refused.error)
            }
        }
    }

    /// The answer to a request whose token was refused ([`unauthenticated_response`]).
    pub fn unauthenticated(&self, e: TokenError) -> Response<Body> {
        unauthenticated_response(e, self.protocol == FlowProtocol::Grpc)
    }

    /// Enforces the policy for this request ([`enforce`]) and keeps the decision; for a
    /// denial, returns the response to send instead of forwarding: 403 with a JSON body, or
    /// for gRPC PERMISSION_DENIED. `details` adds policy, rule and reason to it.
    pub fn enforce(
        &mut self,
        policy: &PolicyStore,
        req: &picket_policy::Request<'_>,
        details: bool,
    ) -> Option<Response<Body>> {
        let enforced = enforce(policy, req);
        let deny = match &enforced.request_id {
            Some(id) if !enforced.allowed() => Some(authz::deny_response(
                &enforced.decision,
                id,
                self.protocol == FlowProtocol::Grpc,
                details,
            )),
            _ => None,
        };
        self.enforced = Some(enforced);
        deny
    }

    /// Counts a request the sidecar answered before it had a destination (no route, no host,
    /// a target it cannot forward) and returns `resp`; such a request is no flow, as it never
    /// left the sidecar.
    pub fn unrouted(self, resp: Response<Body>, metrics: &Metrics) -> Response<Body> {
        tracing::debug!(direction = self.direction.as_str(), method = %self.method, status = %resp.status(), "request answered without a destination");
        metrics.request(self.direction, resp.status(), self.start.elapsed());
        resp
    }

    /// Counts the request and, when something reads flows, hands telemetry the compact event
    /// (for the detectors) and the span's outcome made from this context and `resp`; the
    /// whole flow record is built only when a flow log will write it.
    pub fn finish(self, resp: &Response<Body>, metrics: &Metrics, telemetry: &Telemetry) {
        let elapsed = self.start.elapsed();
        metrics.request(self.direction, resp.status(), elapsed);
        if !telemetry.records_flows() {
            return;
        }
        let status = resp.status().as_u16();
        let grpc_status = telemetry::grpc_status(resp.headers());
        let bytes_out = telemetry::content_length(resp.headers());
        let decision = self.enforced.as_ref().map(|e| &e.decision);
        let answer = resp.extensions().get::<forward::SidecarAnswer>();
        let sidecar_answer = answer.is_some();
        let peer_sidecar_answer = answer == Some(&forward::SidecarAnswer::Peer);
        let event = FlowEvent {
            direction: self.direction,
            protocol: self.protocol,
            source_identity: self.ends.source_identity.as_deref(),
            source_address: self.ends.source_address,
            destination_identity: self.ends.destination_identity.as_deref(),
            destination_address: self.ends.destination_address,
            destination_port: self.ends.destination_port,
            method: Some(self.method.as_str()),
            path: self.path.as_deref(),
            host: self.host.as_deref(),
            status: Some(status),
            verdict: decision.map(|d| d.verdict),
            token_error: self.token_error.map(TokenError::as_str),
            sidecar_answer,
        };
        // Span attributes are strings of their own: made only for a span that is recorded.
        let policy = decision
            .and_then(|d| d.policy.as_ref())
            .filter(|_| self.span.is_recording())
            .map(ToString::to_string);
        let outcome = SpanOutcome {
            status: Some(status),
            grpc_status,
            verdict: event.verdict,
            policy: policy.as_deref(),
            bytes_in: self.bytes_in,
            bytes_out,
            error: None,
            // A client span names its peer once the peer answered.
            peer_identity: (self.direction == Direction::Outbound)
                .then_some(event.destination_identity)
                .flatten(),
            expected_identity: self.ends.expected_identity.as_deref(),
        };
        let Some(ended) = telemetry.request_ended(self.span, &event, &outcome) else {
            return;
        };
        let record = ended.wants_record().then(|| {
            let mut record = self.ends.record(self.direction, self.protocol);
            record.method = Some(self.method.as_str().into());
            record.path = self.path.map(Into::into);
            record.host = self.host.map(Into::into);
            record.status = Some(status);
            record.grpc_status = grpc_status;
            record.sidecar_answer = sidecar_answer;
            record.peer_sidecar_answer = peer_sidecar_answer;
            if let Some(e) = &self.enforced {
                e.fill(&mut record);
            }
            record.request_principal = self.request_principal.map(Into::into);
            record.token_error = self.token_error.map(|e| e.as_str().into());
            record.bytes_in = self.bytes_in;
            record.bytes_out = bytes_out;
            record.duration_ms = elapsed.as_secs_f64() * 1000.0;
            record
        });
        telemetry.request_record(ended, record);
    }
}

impl RequestCtx<'_> {
    /// The request opened a tunnel (a WebSocket): it is counted now, with the status that
    /// agreed to the tunnel, and its flow record waits for the tunnel's end
    /// ([`TunnelFlow::finish`]), so that it carries the tunnel's bytes and life.
    ///
    /// The request's span ends here, with the agreement; the tunnel gets a span of its own,
    /// a child of it, which ends with the tunnel ([`Telemetry::tunnel_span`]). The tunnel's
    /// flow records keep the request's trace and span IDs, so the two sidecars' records of one
    /// WebSocket still pair as a request's do.
    pub fn into_tunnel(
        self,
        status: StatusCode,
        metrics: &Metrics,
        telemetry: &Telemetry,
    ) -> TunnelFlow {
        metrics.request(self.direction, status, self.start.elapsed());
        let ids = self.span.ids_of_record();
        let span = if telemetry.records_flows() {
            let outbound = self.direction == Direction::Outbound;
            let tunnel = telemetry.tunnel_span(
                self.direction,
                &self.span,
                &telemetry::ConnectionAttrs {
                    egress: false,
                    peer_address: if outbound {
                        self.ends.endpoint.or(self.ends.destination_address)
                    } else {
                        self.ends.source_address
                    },
                    server_address: self.host.as_deref(),
                    server_port: self.ends.destination_port,
                    tls_server_name: None,
                    ech: false,
                    source_identity: self.ends.source_identity.as_deref(),
                    destination_identity: self.ends.destination_identity.as_deref(),
                },
                self.path.as_deref(),
            );
            let verdict = self.enforced.as_ref().map(|e| e.decision.verdict);
            let policy = self
                .enforced
                .as_ref()
                .and_then(|e| e.decision.policy.as_ref())
                .filter(|_| self.span.is_recording())
                .map(ToString::to_string);
            self.span.finish(&SpanOutcome {
                status: Some(status.as_u16()),
                verdict,
                policy: policy.as_deref(),
                peer_identity: outbound
                    .then_some(self.ends.destination_identity.as_deref())
                    .flatten(),
                expected_identity: self.ends.expected_identity.as_deref(),
                ..SpanOutcome::default()
            });
            tunnel
        } else {
            self.span
        };
        let owned = |c: Option<Cow<'_, str>>| c.map(|c| Cow::Owned(c.into_owned()));
        TunnelFlow {
            ctx: RequestCtx {
                start: self.start,
                direction: self.direction,
                protocol: FlowProtocol::WebSocket,
                method: self.method,
                bytes_in: 0,
                ends: Endpoints {
                    source_identity: owned(self.ends.source_identity),
                    source_address: self.ends.source_address,
                    destination_identity: owned(self.ends.destination_identity),
                    expected_identity: owned(self.ends.expected_identity),
                    destination_address: self.ends.destination_address,
                    destination_port: self.ends.destination_port,
                    kx: self.ends.kx,
                    endpoint: self.ends.endpoint,
                },
                path: self.path,
                host: self.host,
                span,
                enforced: self.enforced,
                request_principal: self.request_principal,
                token_error: self.token_error,
            },
            ids,
            status,
            opened: false,
        }
    }
}

/// A request that became a tunnel, until the tunnel ends. Recorded like an opaque TCP
/// connection: when it opens ([`TunnelFlow::open`], which the detectors act on), every active
/// timeout while it lasts ([`TunnelFlow::splice`]) and when it ends ([`TunnelFlow::finish`]).
#[derive(Debug)]
pub struct TunnelFlow {
    /// The request's context; its span is the tunnel's own.
    ctx: RequestCtx<'static>,
    /// The trace, span and parent span IDs of the request that opened the tunnel, which the
    /// tunnel's records carry.
    ids: telemetry::RecordIds,
    status: StatusCode,
    /// Whether the open record went out.
    opened: bool,
}

impl TunnelFlow {
    /// The tunnel's record: the request's (decision, path, the status that opened the
    /// tunnel) with protocol `websocket`, the bytes from and to the client, its life so far.
    fn record(
        &self,
        phase: Option<FlowPhase>,
        (bytes_in, bytes_out): (u64, u64),
    ) -> FlowRecord<'static> {
        let ctx = &self.ctx;
        let mut record = ctx.ends.record(ctx.direction, ctx.protocol);
        record.phase = phase;
        record.method = Some(ctx.method.as_str().to_owned().into());
        record.path = ctx.path.clone().map(Into::into);
        record.host = ctx.host.clone().map(Into::into);
        record.status = Some(self.status.as_u16());
        if let Some(e) = &ctx.enforced {
            e.fill(&mut record);
        }
        (record.bytes_in, record.bytes_out) = (bytes_in, bytes_out);
        record.duration_ms = ctx.start.elapsed().as_secs_f64() * 1000.0;
        let owned = |id: &str| Cow::Owned(id.to_owned());
        record.trace_id = self.ids.trace.as_ref().map(|t| owned(t.as_str()));
        record.span_id = self.ids.span.as_ref().map(|s| owned(s.as_str()));
        record.parent_span_id = self.ids.parent.as_ref().map(|p| owned(p.as_str()));
        record
    }

    /// Records the tunnel as open, once both of its ends were handed over: the detectors act
    /// on this record, so a tunnel that never closes is seen at once.
    pub fn open(&mut self, telemetry: &Telemetry) {
        if !telemetry.is_enabled() {
            return;
        }
        self.opened = true;
        let record = self.record(Some(FlowPhase::Open), (0, 0));
        telemetry.record_open(&mut self.ctx.span, record);
    }

    /// Splices the tunnel's `client` and `server` ends ([`net::splice`], as an opaque TCP
    /// connection is), writing an interim record every active timeout. Returns the bytes
    /// from and to the client, counted as they moved (a tunnel cut by its idle timeout still
    /// reports what it carried), and how it ended.
    pub async fn splice<A, B>(
        &self,
        client: &mut A,
        server: &mut B,
        telemetry: &Telemetry,
    ) -> ((u64, u64), TunnelEnd)
    where
        A: AsyncRead + AsyncWrite + Unpin + ?Sized,
        B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let every = telemetry.active_timeout().filter(|_| self.opened);
        let (r, bytes) = net::splice(client, server, TUNNEL_BUFFER, every, |so_far| {
            telemetry.record_flow_seen(&self.record(Some(FlowPhase::Interim), so_far));
        })
        .await;
        let end = TunnelEnd::of(&r);
        if let Err(e) = r {
            tracing::debug!(error = %e, "WebSocket tunnel ended with an error");
        }
        (bytes, end)
    }

    /// Records the tunnel's end with the bytes from and to the client (`None` when it never
    /// carried any) and its whole life, and ends its span with them and `end`; a tunnel never
    /// recorded open gets one whole record, which the detectors see.
    pub fn finish(mut self, bytes: Option<(u64, u64)>, end: TunnelEnd, telemetry: &Telemetry) {
        if !telemetry.is_enabled() {
            return;
        }
        let bytes = bytes.unwrap_or_default();
        self.ctx.span.set_tunnel_end(end);
        let record = self.record(self.opened.then_some(FlowPhase::End), bytes);
        if self.opened {
            telemetry.record_end(self.ctx.span, record);
        } else {
            telemetry.record_request(self.ctx.span, record);
        }
    }
}

/// The copy buffer of each direction of a WebSocket tunnel: tunnels carry bulk data between
/// an app and its peer sidecar's stream, and 64 KiB buffers keep the splice to a few large
/// writes.
const TUNNEL_BUFFER: usize = 64 * 1024;

/// The copy buffer of each direction of an opaque TCP connection (tokio's default size).
const TCP_BUFFER: usize = 8 * 1024;

/// One opaque TCP connection's flow: its ends, its authorization (inbound) and bytes. It is
/// recorded when it opens ([`TcpFlow::open`], which the detectors act on), every active
/// timeout while it lasts ([`TcpFlow::splice`]) and when it ends ([`TcpFlow::finish`]), and
/// traced as one span (server inbound, client outbound) from its open record to its end.
#[derive(Debug)]
pub struct TcpFlow<'a> {
    start: Instant,
    direction: Direction,
    /// The two ends.
    pub ends: Endpoints<'a>,
    /// The connection's authorization (inbound, or egress when egress policies decided it).
    pub enforced: Option<Enforced>,
    /// Bytes from the caller and to the caller, once the splice has ended (set by
    /// [`TcpFlow::splice`], however the splice ended).
    pub bytes: Option<(u64, u64)>,
    /// A connection to a destination outside the mesh (passthrough).
    pub egress: bool,
    /// Egress: the TLS server name the client asked for in its ClientHello.
    pub sni: Option<String>,
    /// Egress: that ClientHello offered Encrypted ClientHello (`sni` is its outer name).
    pub ech: bool,
    /// Egress: the `Host` of the client's plaintext HTTP/1 request.
    pub host: Option<String>,
    /// The connection's span, from its open record (or its one whole record) to its end.
    span: Option<RequestSpan>,
    /// Whether the open record went out: the detectors looked at the flow then, so the
    /// interim and final records only go to the flow log.
    opened: bool,
}

impl<'a> TcpFlow<'a> {
    /// A connection starting now.
    pub fn new(direction: Direction, ends: Endpoints<'a>) -> Self {
        Self {
            start: Instant::now(),
            direction,
            ends,
            enforced: None,
            bytes: None,
            egress: false,
            sni: None,
            ech: false,
            host: None,
            span: None,
            opened: false,
        }
    }

    fn record(
        &self,
        phase: Option<FlowPhase>,
        (bytes_in, bytes_out): (u64, u64),
    ) -> FlowRecord<'a> {
        let mut record = self.ends.record(self.direction, FlowProtocol::Tcp);
        record.phase = phase;
        record.sni = self.sni.clone().map(Into::into);
        record.ech = self.ech;
        record.host = self.host.clone().map(Into::into);
        if let Some(e) = &self.enforced {
            e.fill(&mut record);
        }
        (record.bytes_in, record.bytes_out) = (bytes_in, bytes_out);
        record.duration_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        if let Some(span) = &self.span {
            telemetry::fill_trace_ids(span, &mut record);
        }
        record
    }

    /// The connection's span, started now: what it names as its peer and server is what the
    /// flow record names.
    fn start_span(&self, telemetry: &Telemetry) -> RequestSpan {
        let outbound = self.direction == Direction::Outbound;
        let dialled = self.ends.destination_address.map(|a| a.ip().to_string());
        let name = self.sni.as_deref().or(self.host.as_deref());
        telemetry.connection_span(
            self.direction,
            &telemetry::ConnectionAttrs {
                egress: self.egress,
                peer_address: if outbound {
                    self.ends.endpoint.or(self.ends.destination_address)
                } else {
                    self.ends.source_address
                },
                server_address: name.or(dialled.as_deref().filter(|_| outbound)),
                server_port: self.ends.destination_port,
                tls_server_name: self.sni.as_deref(),
                ech: self.ech,
                source_identity: self.ends.source_identity.as_deref(),
                destination_identity: self.ends.destination_identity.as_deref(),
            },
        )
    }

    /// Records the connection as open (after its decision, inbound; once the peer is known,
    /// outbound) and starts its span: the detectors act on this record, so a connection that
    /// never closes is seen at once.
    pub fn open(&mut self, telemetry: &Telemetry) {
        if !telemetry.is_enabled() {
            return;
        }
        self.opened = true;
        let mut span = self.start_span(telemetry);
        telemetry.record_open(&mut span, self.record(Some(FlowPhase::Open), (0, 0)));
        self.span = Some(span);
    }

    /// Records an egress connection as open and starts its span. Its destination was already
    /// shown to the detectors (`Telemetry::outbound_destination`), so this record goes to the
    /// flow log only.
    pub fn open_egress(&mut self, telemetry: &Telemetry) {
        if !telemetry.is_enabled() {
            return;
        }
        self.opened = true;
        self.span = Some(self.start_span(telemetry));
        telemetry.record_flow_seen(&self.record(Some(FlowPhase::Open), (0, 0)));
    }

    /// Splices `client` (the side the flow's bytes in come from) and `server` until either
    /// closes or fails ([`net::splice`]), writing an interim record every active timeout, and
    /// keeps the bytes each way as they were counted in [`TcpFlow::bytes`]: a connection cut
    /// by an error, a reset or the idle timeout still reports (and counts in the metrics) what
    /// it carried. Returns how the copy ended.
    pub async fn splice<A, B>(
        &mut self,
        client: &mut A,
        server: &mut B,
        telemetry: &Telemetry,
    ) -> std::io::Result<()>
    where
        A: AsyncRead + AsyncWrite + Unpin + ?Sized,
        B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let every = telemetry.active_timeout().filter(|_| self.opened);
        let this = &*self;
        let (r, bytes) = net::splice(client, server, TCP_BUFFER, every, |so_far| {
            telemetry.record_flow_seen(&this.record(Some(FlowPhase::Interim), so_far));
        })
        .await;
        self.bytes = Some(bytes);
        r.map(drop)
    }

    /// Counts the bytes and, when telemetry is on, records the connection's final flow and
    /// ends its span (a connection never recorded open gets one whole record, which the
    /// detectors see, and a span of its own).
    pub fn finish(mut self, metrics: &Metrics, telemetry: &Telemetry) {
        let bytes = self.bytes.unwrap_or_default();
        if self.bytes.is_some() {
            metrics.tcp_bytes(self.direction, bytes.0 + bytes.1);
        }
        if !telemetry.is_enabled() {
            return;
        }
        let span = match self.span.take() {
            Some(span) => span,
            None => self.start_span(telemetry),
        };
        let record = self.record(self.opened.then_some(FlowPhase::End), bytes);
        if self.opened {
            telemetry.record_end(span, record);
        } else {
            telemetry.record_request(span, record);
        }
    }
}

#[cfg(test)]
mod tests;
