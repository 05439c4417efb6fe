//! Flow records: one JSON line per HTTP request or TCP connection, the sidecar's access log
//! and what `picket analyze` reads.
//!
//! A [`FlowRecord`] borrows its text where it can (`Cow`), so the data path can build one from
//! the request it already holds and `picket analyze` can parse a line without copying strings.
//! Lines start with `"type":"flow"`; alert lines written to the same log start with
//! `"type":"alert"`.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use time::OffsetDateTime;

use crate::direction::Direction;

/// The application protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowProtocol {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 (not gRPC).
    H2,
    /// gRPC (HTTP/2 with `content-type: application/grpc*`).
    Grpc,
    /// Opaque TCP: one record per connection.
    Tcp,
    /// A WebSocket: the upgrade request's record, written when the tunnel ends, with the
    /// tunnel's bytes.
    WebSocket,
}

impl FlowProtocol {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::H2 => "h2",
            Self::Grpc => "grpc",
            Self::Tcp => "tcp",
            Self::WebSocket => "websocket",
        }
    }
}

/// The authorization verdict a flow got: the policy engine's own type, serialized as
/// `allow` / `deny`.
pub use picket_policy::Verdict;

impl Serialize for Direction {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Direction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Direction;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"inbound\" or \"outbound\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Direction, E> {
                match v {
                    "inbound" => Ok(Direction::Inbound),
                    "outbound" => Ok(Direction::Outbound),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_str(V)
    }
}

/// Which record of a long-lived flow a line is: TCP connections get one when they are
/// accepted and decided (`open`), one every `telemetry.active_timeout` while open
/// (`interim`), and one when they close (`end`). A record without a phase is a whole flow: an
/// HTTP request, or a connection that ended before it could be recorded as open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowPhase {
    /// The connection was accepted (and decided, inbound); bytes are zero.
    Open,
    /// The connection is still open; bytes and duration so far.
    Interim,
    /// The connection closed; its bytes and duration. Its `open` record counted it.
    End,
}

impl FlowPhase {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Interim => "interim",
            Self::End => "end",
        }
    }
}

/// The `"type"` tag of a line in the flow log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LineType {
    /// A [`FlowRecord`].
    #[default]
    Flow,
    /// An [`Alert`](super::Alert).
    Alert,
    /// An edge of a baseline written by `picket analyze --baseline-file`.
    Edge,
    /// A burst counter's rate in a baseline written by `picket analyze --baseline-file`.
    Rate,
}

impl LineType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flow => "flow",
            Self::Alert => "alert",
            Self::Edge => "edge",
            Self::Rate => "rate",
        }
    }
}

/// One HTTP request or TCP connection as seen by one sidecar.
///
/// Build one with [`FlowRecord::new`] and struct update syntax. Absent fields are left out of
/// the JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord<'a> {
    /// Always [`LineType::Flow`]; written first so readers can tell lines apart cheaply.
    #[serde(rename = "type", default)]
    pub line_type: LineType,
    /// When the request or connection ended, RFC 3339.
    #[serde(with = "time::serde::rfc3339")]
    pub ts: OffsetDateTime,
    /// Which side of the sidecar saw it.
    pub direction: Direction,
    /// Application protocol.
    pub protocol: FlowProtocol,
    /// `open`, `interim` or `end` for a connection recorded while open; absent on a whole
    /// flow (see [`FlowPhase`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<FlowPhase>,
    /// The caller's SPIFFE ID (on outbound flows, this workload's own).
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub source_identity: Option<Cow<'a, str>>,
    /// The caller's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<SocketAddr>,
    /// The called workload's SPIFFE ID: inbound this workload's own, outbound the one the peer
    /// presented in its certificate (absent when no peer answered and none was pinned).
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub destination_identity: Option<Cow<'a, str>>,
    /// Outbound: the configured expectation of the peer, when it differs from what the peer
    /// presented (`spiffe://<trust domain>/*` for "any workload of the trust domain").
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub expected_identity: Option<Cow<'a, str>>,
    /// The called address (the peer sidecar outbound, the application inbound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_address: Option<SocketAddr>,
    /// The destination port the authorization policy saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u16>,
    /// Outbound to a destination the discovery source knows: the endpoint (`ip:port`) that
    /// served the flow, chosen by the balancer; `destination_address` is then the address the
    /// app dialled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<SocketAddr>,
    /// The key-exchange group of the mTLS connection between the sidecars that carried the
    /// flow (`x25519mlkem768` post-quantum hybrid; `x25519`, `secp256r1`, `secp384r1`
    /// classical); absent when no such connection carried it.
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub kx: Option<Cow<'a, str>>,
    /// HTTP method.
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub method: Option<Cow<'a, str>>,
    /// The normalized path, without the query (what the policy and the app saw).
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub path: Option<Cow<'a, str>>,
    /// `Host` / `:authority`.
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub host: Option<Cow<'a, str>>,
    /// Egress connections: the TLS server name (SNI) the client asked for in its ClientHello.
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub sni: Option<Cow<'a, str>>,
    /// Egress connections: the ClientHello offered Encrypted ClientHello, so `sni`, when
    /// present, is its outer (public) name (a hello may carry none); absent when it did not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ech: bool,
    /// HTTP status sent to the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `grpc-status`, for gRPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// The authorization verdict, when a policy was evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// The deciding policy, `namespace/name`.
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub policy: Option<Cow<'a, str>>,
    /// The deciding rule's index in that policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    /// Why: `explicit-deny`, `no-allow-match`, `unauthenticated`, `default`, ...
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub reason: Option<Cow<'a, str>>,
    /// Shadow verdicts of dry-run policies, e.g. `deny:shop/orders-strict`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dry_run: Vec<Cow<'a, str>>,
    /// The verdict with every dry-run policy enforced, when it differs from `verdict` (a
    /// dry-run ALLOW policy that does not match is no shadow, yet it would deny).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub would_verdict: Option<Verdict>,
    /// Bytes received from the caller (request body, or TCP bytes in).
    #[serde(default)]
    pub bytes_in: u64,
    /// Bytes sent to the caller.
    #[serde(default)]
    pub bytes_out: u64,
    /// Request head to end of response (HTTP), or connection lifetime (TCP), milliseconds.
    #[serde(default)]
    pub duration_ms: f64,
    /// W3C trace ID, 32 hex digits.
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub trace_id: Option<Cow<'a, str>>,
    /// This sidecar's span ID, 16 hex digits.
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub span_id: Option<Cow<'a, str>>,
    /// The caller's span ID from its trace context (`traceparent` or B3), 16 hex digits:
    /// inbound the calling sidecar's client span (or, when it does not trace, the calling
    /// app's span), which pairs this record with the caller's outbound record of the same
    /// request.
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub parent_span_id: Option<Cow<'a, str>>,
    /// `x-request-id`, when present.
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_id: Option<Cow<'a, str>>,
    /// The end user of a validated JWT, `iss/sub` (cut to `jwt.max_principal_bytes`).
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_principal: Option<Cow<'a, str>>,
    /// Why the request's token was refused (answered 401), e.g. `expired`.
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub token_error: Option<Cow<'a, str>>,
    /// A sidecar made the answer itself (a forwarding error such as 502, 503 or 504, a request
    /// head it refused, a policy denial, a refused token, a shed request), not the application:
    /// this sidecar, or on the outbound side the peer's (`peer_sidecar_answer`). The detectors read it, so
    /// that a status class new for a route means the route answered it; it is written to the
    /// log (`"sidecar_answer":true`, absent when false) and read back, so a baseline learned
    /// from a flow log (the detectors' `baseline_file`, `picket analyze`) judges answers as
    /// the live detectors do.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sidecar_answer: bool,
    /// Outbound: the sidecar that made the answer is the peer's, not this one (its app down
    /// or draining, its policy denied, it refused the request head), as the peer said in
    /// `x-picket-sidecar-answer` on an answer over mutual TLS from its verified identity.
    /// `sidecar_answer` is then true as well; the two tell "the peer could not be reached"
    /// from "the peer was reached and its app could not be". Written when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub peer_sidecar_answer: bool,
}

impl<'a> FlowRecord<'a> {
    /// A record with the three required fields and nothing else.
    pub fn new(ts: OffsetDateTime, direction: Direction, protocol: FlowProtocol) -> Self {
        Self {
            line_type: LineType::Flow,
            ts,
            direction,
            protocol,
            phase: None,
            source_identity: None,
            source_address: None,
            destination_identity: None,
            expected_identity: None,
            destination_address: None,
            destination_port: None,
            endpoint: None,
            kx: None,
            method: None,
            path: None,
            host: None,
            sni: None,
            ech: false,
            status: None,
            grpc_status: None,
            verdict: None,
            policy: None,
            rule: None,
            reason: None,
            dry_run: Vec::new(),
            would_verdict: None,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0.0,
            trace_id: None,
            span_id: None,
            parent_span_id: None,
            request_id: None,
            request_principal: None,
            token_error: None,
            sidecar_answer: false,
            peer_sidecar_answer: false,
        }
    }

    /// Whether the flow was denied.
    pub fn denied(&self) -> bool {
        self.verdict == Some(Verdict::Deny)
    }

    /// The route: method and path template (`GET /api/orders/{id}`), or `tcp` for a connection.
    pub fn route(&self) -> Cow<'_, str> {
        route_of(self.method.as_deref(), self.path.as_deref())
    }

    /// What the detectors read of this record.
    pub fn event(&self) -> FlowEvent<'_> {
        FlowEvent {
            direction: self.direction,
            protocol: self.protocol,
            source_identity: self.source_identity.as_deref(),
            source_address: self.source_address,
            destination_identity: self.destination_identity.as_deref(),
            destination_address: self.destination_address,
            destination_port: self.destination_port,
            method: self.method.as_deref(),
            path: self.path.as_deref(),
            host: self.host.as_deref(),
            status: self.status,
            verdict: self.verdict,
            token_error: self.token_error.as_deref(),
            sidecar_answer: self.sidecar_answer,
        }
    }
}

/// `METHOD /route/{template}`, the path's template alone, the method alone, or `tcp`.
fn route_of<'s>(method: Option<&'s str>, path: Option<&'s str>) -> Cow<'s, str> {
    match (method, path) {
        (Some(m), Some(p)) => {
            // Written piece by piece: this runs for every request the detectors see.
            let template = route_template(p);
            let mut route = String::with_capacity(m.len() + 1 + template.len());
            route.push_str(m);
            route.push(' ');
            route.push_str(&template);
            Cow::Owned(route)
        }
        (None, Some(p)) => route_template(p),
        (Some(m), None) => Cow::Borrowed(m),
        (None, None) => Cow::Borrowed("tcp"),
    }
}

/// A flow as the detectors read it: the fields of a [`FlowRecord`] they look at, borrowed.
///
/// The request path hands the detectors this compact event, built from the request's context
/// without allocating, and builds the whole record only when a flow log will write it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowEvent<'a> {
    /// Which side of the sidecar saw it.
    pub direction: Direction,
    /// Application protocol.
    pub protocol: FlowProtocol,
    /// The caller's SPIFFE ID.
    pub source_identity: Option<&'a str>,
    /// The caller's address.
    pub source_address: Option<SocketAddr>,
    /// The called workload's SPIFFE ID.
    pub destination_identity: Option<&'a str>,
    /// The called address.
    pub destination_address: Option<SocketAddr>,
    /// The destination port the authorization policy saw.
    pub destination_port: Option<u16>,
    /// HTTP method.
    pub method: Option<&'a str>,
    /// The normalized path, without the query.
    pub path: Option<&'a str>,
    /// `Host` / `:authority`.
    pub host: Option<&'a str>,
    /// HTTP status sent to the caller.
    pub status: Option<u16>,
    /// The authorization verdict, when a policy was evaluated.
    pub verdict: Option<Verdict>,
    /// Why the request's token was refused.
    pub token_error: Option<&'a str>,
    /// The sidecar made the answer itself, as [`FlowRecord::sidecar_answer`].
    pub sidecar_answer: bool,
}

impl FlowEvent<'_> {
    /// Whether the flow was denied.
    pub fn denied(&self) -> bool {
        self.verdict == Some(Verdict::Deny)
    }

    /// Whether the answer is the called application's own, not a sidecar's: inbound, policy
    /// let the request through and this sidecar did not answer; outbound, it came from a peer
    /// sidecar whose identity was verified (only a mesh peer says whose answers it made) and
    /// that peer did not mark it as its own (a denial, its app down). An outbound answer of a
    /// destination outside the mesh is never counted as an application's: nothing tells it
    /// from whatever answers in between.
    pub fn application_answer(&self) -> bool {
        if self.sidecar_answer {
            return false;
        }
        match self.direction {
            Direction::Inbound => self.verdict == Some(Verdict::Allow),
            Direction::Outbound => self.destination_identity.is_some(),
        }
    }

    /// The route, as [`FlowRecord::route`].
    pub fn route(&self) -> Cow<'_, str> {
        route_of(self.method, self.path)
    }
}

/// Deserializes an optional string, borrowing from the input when it has no escapes.
fn opt_cow<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or null")
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v)))
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }
    d.deserialize_option(V)
}

/// A low-cardinality template of a path: the query is dropped and segments that look like
/// identifiers (numbers, UUIDs, long hex or long mixed tokens) become `{id}`.
///
/// `/api/orders/1234/items?x=1` becomes `/api/orders/{id}/items`. Used for detector edges, span
/// names and the routes `picket analyze` reports.
pub fn route_template(path: &str) -> Cow<'_, str> {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    if !path.split('/').any(looks_like_id) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(if looks_like_id(seg) { "{id}" } else { seg });
    }
    Cow::Owned(out)
}

fn looks_like_id(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    if digits == b.len() {
        return true;
    }
    let hex_or_dash = b.iter().all(|c| c.is_ascii_hexdigit() || *c == b'-');
    // UUIDs and hashes.
    if hex_or_dash && b.len() >= 16 && digits > 0 {
        return true;
    }
    // Opaque tokens: long, with digits among letters.
    b.len() >= 20
        && digits >= 2
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'='))
}

/// The flow protocol of a request, from its version and content type.
pub fn protocol_of(version: http::Version, headers: &http::HeaderMap) -> FlowProtocol {
    let grpc = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    match version {
        _ if grpc => FlowProtocol::Grpc,
        http::Version::HTTP_2 => FlowProtocol::H2,
        _ => FlowProtocol::Http1,
    }
}

/// The declared body length, or 0 when the body is streamed without one.
pub fn content_length(headers: &http::HeaderMap) -> u64 {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `grpc-status` when it is in the response head (trailers-only responses).
pub fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    // Named once: a lookup by `&str` parses the name again for every response.
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    headers
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Copies an authorization decision into a flow record: verdict, deciding policy and rule,
/// reason, and the dry-run shadows as `would:ns/name`.
pub fn fill_decision(record: &mut FlowRecord<'_>, decision: Option<&picket_policy::Decision>) {
    let Some(d) = decision else { return };
    record.verdict = Some(d.verdict);
    record.policy = d.policy.as_ref().map(|p| p.qualified().into());
    record.rule = d.rule.and_then(|r| u32::try_from(r).ok());
    record.reason = Some(d.reason.as_str().into());
    record.dry_run = d
        .shadows
        .iter()
        .map(|s| format!("{}:{}", s.would, s.policy).into())
        .collect();
    record.would_verdict = (d.would_verdict != d.verdict).then_some(d.would_verdict);
}

mod json;
#[cfg(test)]
mod tests;
