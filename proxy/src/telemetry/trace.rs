//! Request spans: W3C trace context in and out (B3 accepted on input), one server span per
//! inbound request and one client span per outbound request, with OpenTelemetry HTTP semantic
//! convention attributes plus Picket's identity and authorization attributes.

use std::borrow::Cow;
use std::net::SocketAddr;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator, SdkTracer, Span};

use super::alert::Alert;
use super::flow::{FlowRecord, Verdict, route_template};

/// Resource attribute carrying the workload's SPIFFE ID.
pub const IDENTITY_ATTRIBUTE: &str = "picket.identity";
/// Span attribute: the caller's SPIFFE ID.
pub const SOURCE_IDENTITY: &str = "picket.source.identity";
/// Span attribute: the called workload's SPIFFE ID.
pub const DESTINATION_IDENTITY: &str = "picket.destination.identity";
/// Span attribute: the configured expectation of the peer, when it differs from the identity
/// the peer presented (client spans).
pub const EXPECTED_IDENTITY: &str = "picket.destination.expected_identity";
/// Span attribute: `allow` or `deny`.
pub const AUTHZ_VERDICT: &str = "picket.authz.verdict";
/// Span attribute: the deciding policy.
pub const AUTHZ_POLICY: &str = "picket.authz.policy";
/// Span attribute of a TCP connection's span: bytes this sidecar sent to the span's peer
/// (client span: to the destination; server span: to the caller).
pub const BYTES_SENT: &str = "picket.network.bytes_sent";
/// Span attribute of a TCP connection's span: bytes this sidecar received from the span's
/// peer (client span: from the destination; server span: from the caller).
pub const BYTES_RECEIVED: &str = "picket.network.bytes_received";
/// Span attribute: the egress connection's ClientHello offered Encrypted ClientHello (its
/// `tls.server.name`, when the hello carries one, is the outer, public name).
pub const TLS_ECH: &str = "picket.tls.ech";
/// Span attribute of a WebSocket tunnel's span: how the tunnel ended, one of
/// [`TunnelEnd::as_str`].
pub const TUNNEL_END_CAUSE: &str = "picket.tunnel.end_cause";
/// Name of the span event (and OTel log event) carrying an alert.
pub const ALERT_EVENT: &str = "picket.alert";

/// What is known about a request when its span starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanAttrs<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Normalized path (no query).
    pub path: &'a str,
    /// `Host` / `:authority`.
    pub server_address: Option<&'a str>,
    /// The TCP peer of this hop.
    pub peer_address: Option<SocketAddr>,
    /// The caller's SPIFFE ID.
    pub source_identity: Option<&'a str>,
    /// The called workload's SPIFFE ID.
    pub destination_identity: Option<&'a str>,
}

/// What is known about an opaque TCP connection (meshed or egress) when its span starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionAttrs<'a> {
    /// A connection to a destination outside the mesh (passthrough).
    pub egress: bool,
    /// The TCP peer of this hop: the caller (server span) or the address dialled (client
    /// span).
    pub peer_address: Option<SocketAddr>,
    /// The name the client asked for (SNI or `Host`), else the address dialled.
    pub server_address: Option<&'a str>,
    /// The port dialled (outbound) or the port the policy saw (inbound).
    pub server_port: Option<u16>,
    /// The TLS server name of the client's ClientHello (egress).
    pub tls_server_name: Option<&'a str>,
    /// That ClientHello offered Encrypted ClientHello.
    pub ech: bool,
    /// The caller's SPIFFE ID.
    pub source_identity: Option<&'a str>,
    /// The called workload's SPIFFE ID.
    pub destination_identity: Option<&'a str>,
}

/// How a WebSocket tunnel ended (its span's [`TUNNEL_END_CAUSE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Both sides finished (each closed its direction).
    Closed,
    /// No byte moved either way for `timeouts.idle`.
    IdleTimeout,
    /// A side failed (reset, broken stream).
    Error,
    /// The client sent data before the agreement went out; the tunnel was closed at once.
    EarlyData,
    /// A connection was not handed over after the agreement (the client or the server went
    /// away first).
    NotHandedOver,
}

impl TunnelEnd {
    /// The attribute value: `closed`, `idle_timeout`, `error`, `early_data`,
    /// `not_handed_over`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::IdleTimeout => "idle_timeout",
            Self::Error => "error",
            Self::EarlyData => "early_data",
            Self::NotHandedOver => "not_handed_over",
        }
    }

    /// How a splice that returned `result` ended.
    pub fn of<T>(result: &std::io::Result<T>) -> Self {
        match result {
            Ok(_) => Self::Closed,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Self::IdleTimeout,
            Err(_) => Self::Error,
        }
    }
}

/// The attributes a connection span starts with.
fn connection_attributes(attrs: &ConnectionAttrs<'_>) -> Vec<KeyValue> {
    let mut kv = Vec::with_capacity(10);
    kv.push(KeyValue::new("network.transport", "tcp"));
    if let Some(peer) = attrs.peer_address {
        kv.push(KeyValue::new("network.peer.address", peer.ip().to_string()));
        kv.push(KeyValue::new("network.peer.port", i64::from(peer.port())));
    }
    if let Some(server) = attrs.server_address {
        kv.push(KeyValue::new("server.address", server.to_owned()));
    }
    if let Some(port) = attrs.server_port {
        kv.push(KeyValue::new("server.port", i64::from(port)));
    }
    if let Some(name) = attrs.tls_server_name {
        kv.push(KeyValue::new("tls.server.name", name.to_owned()));
    }
    if attrs.ech {
        kv.push(KeyValue::new(TLS_ECH, true));
    }
    if let Some(id) = attrs.source_identity {
        kv.push(KeyValue::new(SOURCE_IDENTITY, id.to_owned()));
    }
    if let Some(id) = attrs.destination_identity {
        kv.push(KeyValue::new(DESTINATION_IDENTITY, id.to_owned()));
    }
    kv
}

/// What is known about a request when its span ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanOutcome<'a> {
    /// HTTP status sent back.
    pub status: Option<u16>,
    /// `grpc-status`.
    pub grpc_status: Option<u32>,
    /// Authorization verdict.
    pub verdict: Option<Verdict>,
    /// The deciding policy.
    pub policy: Option<&'a str>,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// Why the proxy failed the request itself (timeout, unreachable), if it did.
    pub error: Option<&'a str>,
    /// Client spans: the identity the peer presented (known only once it answered), set
    /// here rather than when the span starts.
    pub peer_identity: Option<&'a str>,
    /// Client spans: the configured expectation, when it differs from the presented identity.
    pub expected_identity: Option<&'a str>,
}

/// Where a client span's parent comes from.
#[derive(Debug, Clone, Copy)]
pub enum Parent<'a> {
    /// The trace context in the application's request headers.
    Headers(&'a HeaderMap),
    /// A span of this sidecar.
    Span(&'a RequestSpan),
    /// Start a new trace.
    Root,
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The remote parent in `headers`: W3C `traceparent`/`tracestate` first, then B3 single
/// (`b3`), then B3 multi (`x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags`).
pub fn extract(headers: &HeaderMap) -> Option<SpanContext> {
    if let Some(sc) = extract_w3c(headers) {
        return Some(sc);
    }
    extract_b3(headers)
}

/// The W3C trace context in `headers`, read by exactly the rules of the OpenTelemetry SDK's
/// `TraceContextPropagator` (the unit tests compare the two on a corpus), without its
/// `Context`, its split into a vector and its boxed extractor: this runs on every request.
fn extract_w3c(headers: &HeaderMap) -> Option<SpanContext> {
    let value = headers.get(TRACEPARENT)?;
    let (trace, span, flags) = match version_00(value.as_bytes()) {
        Some(ids) => ids,
        None => traceparent_fields(value.to_str().ok()?.trim())?,
    };
    let state = match headers.get(TRACESTATE).and_then(|v| v.to_str().ok()) {
        Some(s) => s.parse::<TraceState>().unwrap_or_default(),
        None => TraceState::default(),
    };
    let sc = SpanContext::new(trace, span, flags, true, state);
    sc.is_valid().then_some(sc)
}

/// The fields of `traceparent` as every sidecar and SDK writes it: version `00`, exactly 55
/// bytes, lowercase hex between dashes at 2, 35 and 52. Each such value is one the general
/// rules ([`traceparent_fields`]) read alike, at a tenth of their cost; any other value
/// (whitespace, another version, a longer value, uppercase) gets `None` and goes to them.
fn version_00(v: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    let v: &[u8; 55] = v.try_into().ok()?;
    if v[..3] != *b"00-" || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace = u128::from_be_bytes(hex_bytes(&v[3..35])?);
    let span = u64::from_be_bytes(hex_bytes(&v[36..52])?);
    let [flags] = hex_bytes::<1>(&v[53..55])?;
    Some((
        TraceId::from(trace),
        SpanId::from(span),
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
    ))
}

/// `N` bytes from `2N` lowercase hex digits; `None` on any other byte.
fn hex_bytes<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    let nibble = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    if digits.len() != 2 * N {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// The fields of any `traceparent` value, by exactly the SDK propagator's rules.
fn traceparent_fields(value: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let mut parts = value.split_terminator('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let more = parts.next().is_some();
    let version = u8::from_str_radix(version, 16).ok()?;
    // Version 255 is invalid; version 0 has exactly four parts.
    if version == u8::MAX || (version == 0 && more) {
        return None;
    }
    let lower = |s: &str| !s.bytes().any(|b| b.is_ascii_uppercase());
    if !lower(trace) || !lower(span) || !lower(flags) {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?) & TraceFlags::SAMPLED;
    Some((trace, span, flags))
}

/// An ID as lowercase hex digits (what `TraceId` and `SpanId` print), kept on the stack: a
/// request's flow record borrows its IDs from these rather than from three `String`s (about
/// 730 instructions per record with them), and nothing goes through the formatting machinery.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexId<const N: usize>([u8; N]);

impl<const N: usize> HexId<N> {
    /// `bytes`, two digits each; `N` is twice their length (the constructors below).
    fn of(bytes: &[u8]) -> Self {
        let mut out = [b'0'; N];
        hex_into(&mut out, bytes);
        Self(out)
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        // Hex digits only, so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl HexId<32> {
    /// A trace ID's 32 digits.
    pub fn trace(id: TraceId) -> Self {
        Self::of(&id.to_bytes())
    }
}

impl HexId<16> {
    /// A span ID's 16 digits.
    pub fn span(id: SpanId) -> Self {
        Self::of(&id.to_bytes())
    }
}

impl<const N: usize> std::fmt::Debug for HexId<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Writes `bytes` into `out` as lowercase hex digits, two per byte.
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

/// `00-{trace}-{span}-{flags}`, as the SDK's propagator writes it (only the sampled flag).
fn traceparent(sc: &SpanContext) -> [u8; 55] {
    let mut out = [b'-'; 55];
    out[..2].copy_from_slice(b"00");
    hex_into(&mut out[3..35], &sc.trace_id().to_bytes());
    hex_into(&mut out[36..52], &sc.span_id().to_bytes());
    hex_into(
        &mut out[53..55],
        &[(sc.trace_flags() & TraceFlags::SAMPLED).to_u8()],
    );
    out
}

/// The IDs a flow record takes from its request's span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordIds {
    /// The trace ID, when there is a trace.
    pub trace: Option<HexId<32>>,
    /// This sidecar's span ID, when tracing is on.
    pub span: Option<HexId<16>>,
    /// The remote parent's span ID.
    pub parent: Option<HexId<16>>,
}

impl RecordIds {
    /// Fills `record`'s trace, span and parent span IDs, borrowed from these.
    pub fn fill<'r>(&'r self, record: &mut FlowRecord<'r>) {
        record.trace_id = self.trace.as_ref().map(|t| t.as_str().into());
        record.span_id = self.span.as_ref().map(|s| s.as_str().into());
        record.parent_span_id = self.parent.as_ref().map(|p| p.as_str().into());
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// A B3 trace ID: 16 or 32 hex digits (a 64-bit ID is left-padded to 128 bits).
fn b3_trace_id(s: &str) -> Option<TraceId> {
    let s = s.to_ascii_lowercase();
    let id = match s.len() {
        32 => TraceId::from_hex(&s).ok()?,
        16 => TraceId::from_hex(&format!("{:0>32}", s)).ok()?,
        _ => return None,
    };
    (id != TraceId::INVALID).then_some(id)
}

fn b3_span_id(s: &str) -> Option<SpanId> {
    if s.len() != 16 {
        return None;
    }
    let id = SpanId::from_hex(&s.to_ascii_lowercase()).ok()?;
    (id != SpanId::INVALID).then_some(id)
}

fn b3_flags(sampled: Option<&str>, debug: bool) -> TraceFlags {
    match (debug, sampled) {
        (true, _) | (false, Some("1" | "true" | "d")) => TraceFlags::SAMPLED,
        _ => TraceFlags::default(),
    }
}

/// The B3 headers, named once: a lookup by `&str` parses the name again on every request.
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");

fn extract_b3(headers: &HeaderMap) -> Option<SpanContext> {
    if let Some(single) = header(headers, &B3) {
        // {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]; a lone sampling state
        // carries no context.
        let mut parts = single.split('-');
        let trace = b3_trace_id(parts.next()?)?;
        let span = b3_span_id(parts.next()?)?;
        let state = parts.next();
        let flags = b3_flags(state, state == Some("d"));
        return Some(SpanContext::new(
            trace,
            span,
            flags,
            true,
            TraceState::default(),
        ));
    }
    let trace = b3_trace_id(header(headers, &B3_TRACE_ID)?)?;
    let span = b3_span_id(header(headers, &B3_SPAN_ID)?)?;
    let debug = header(headers, &B3_FLAGS) == Some("1");
    let flags = b3_flags(header(headers, &B3_SAMPLED), debug);
    Some(SpanContext::new(
        trace,
        span,
        flags,
        true,
        TraceState::default(),
    ))
}

/// The attributes a request span starts with.
fn span_attributes(attrs: &SpanAttrs<'_>) -> Vec<KeyValue> {
    let mut kv = Vec::with_capacity(10);
    if !attrs.method.is_empty() {
        kv.push(KeyValue::new(
            "http.request.method",
            attrs.method.to_owned(),
        ));
    }
    if !attrs.path.is_empty() {
        kv.push(KeyValue::new("url.path", attrs.path.to_owned()));
    }
    if let Some(host) = attrs.server_address {
        let (h, port) = split_host_port(host);
        kv.push(KeyValue::new("server.address", h.to_owned()));
        if let Some(p) = port {
            kv.push(KeyValue::new("server.port", i64::from(p)));
        }
    }
    if let Some(peer) = attrs.peer_address {
        kv.push(KeyValue::new("network.peer.address", peer.ip().to_string()));
        kv.push(KeyValue::new("network.peer.port", i64::from(peer.port())));
    }
    if let Some(id) = attrs.source_identity {
        kv.push(KeyValue::new(SOURCE_IDENTITY, id.to_owned()));
    }
    if let Some(id) = attrs.destination_identity {
        kv.push(KeyValue::new(DESTINATION_IDENTITY, id.to_owned()));
    }
    kv
}

/// `METHOD /route/{template}`, or the method alone without a path.
fn span_name(attrs: &SpanAttrs<'_>) -> Cow<'static, str> {
    if attrs.path.is_empty() {
        Cow::Owned(attrs.method.to_owned())
    } else {
        Cow::Owned(format!("{} {}", attrs.method, route_template(attrs.path)))
    }
}

/// The tracer spans start from, and the fraction of new traces it samples.
///
/// The sampling decision is made here, before the SDK is asked, because most spans are not
/// sampled and an unsampled span from the SDK costs a context, a span object and its
/// bookkeeping (about 800 instructions per span) for what is only a trace ID and a new span
/// ID. The decisions are the SDK's `ParentBased(TraceIdRatioBased(ratio))`, which Picket used
/// before: a span with a valid parent is sampled exactly when the parent is; a new trace is
/// sampled when the low 63 bits of its trace ID fall below `ratio`'s share.
/// Unsampled spans get their IDs from the SDK's own generator and are never handed to it; the
/// SDK's sampler is then `ParentBased(AlwaysOn)`, so a span this decided to sample is.
#[derive(Debug, Clone)]
pub(crate) struct Tracer {
    sdk: SdkTracer,
    ratio: f64,
}

/// How a span starts: the SDK's (sampled) or a context alone (not sampled). Moved once, into
/// the [`RequestSpan`] that holds the SDK's span unboxed either way.
#[allow(clippy::large_enum_variant)]
enum Started {
    Sampled(Span),
    Unsampled(SpanContext),
}

impl Tracer {
    /// `sdk` must come from a provider whose sampler is `ParentBased(AlwaysOn)`
    /// ([`Self::sdk_sampler`]); `ratio` is the fraction of new traces sampled.
    pub(crate) fn new(sdk: SdkTracer, ratio: f64) -> Self {
        Self { sdk, ratio }
    }

    /// The sampler of the SDK provider behind a [`Tracer`].
    pub(crate) fn sdk_sampler() -> opentelemetry_sdk::trace::Sampler {
        use opentelemetry_sdk::trace::Sampler;
        Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
    }

    /// Starts a span named `name` under `parent` (a new trace without a valid one).
    fn begin(&self, name: &'static str, kind: &SpanKind, parent: Option<&SpanContext>) -> Started {
        let ids = RandomIdGenerator::default();
        match parent.filter(|p| p.is_valid()) {
            Some(p) if !p.is_sampled() => Started::Unsampled(SpanContext::new(
                p.trace_id(),
                ids.new_span_id(),
                TraceFlags::default(),
                false,
                p.trace_state().clone(),
            )),
            Some(p) => {
                let cx = Context::new().with_remote_span_context(p.clone());
                Started::Sampled(self.sdk_span(name, kind, &cx))
            }
            None => {
                let trace_id = ids.new_trace_id();
                if samples_new_trace(self.ratio, trace_id) {
                    Started::Sampled(self.sdk_span(name, kind, &Context::new()))
                } else {
                    Started::Unsampled(SpanContext::new(
                        trace_id,
                        ids.new_span_id(),
                        TraceFlags::default(),
                        false,
                        TraceState::default(),
                    ))
                }
            }
        }
    }

    fn sdk_span(&self, name: &'static str, kind: &SpanKind, cx: &Context) -> Span {
        self.sdk
            .span_builder(Cow::Borrowed(name))
            .with_kind(kind.clone())
            .start_with_context(&self.sdk, cx)
    }
}

/// Whether a new trace whose ID is `trace_id` is sampled at `ratio`: the rule of the SDK's
/// `TraceIdRatioBased` (its low 64 bits, shifted right by one, below `ratio` × 2^63), so the
/// same trace ID gets the same decision from Picket and from an SDK configured alike.
pub(crate) fn samples_new_trace(ratio: f64, trace_id: TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let bytes = trace_id.to_bytes();
    let low = u64::from_be_bytes([
        bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15],
    ]);
    (low >> 1) < bound
}

/// The span of one request through this sidecar. With tracing off it still carries the
/// caller's trace ID (for flow records) and never touches headers.
#[derive(Debug)]
pub struct RequestSpan {
    /// The SDK's span, when this one is sampled.
    span: Option<Span>,
    /// Whether tracing is on: the span then has an ID of its own, sampled or not, and its
    /// context goes on in `traceparent`.
    traced: bool,
    context: SpanContext,
    kind: SpanKind,
    /// The remote parent's span, when the request carried one.
    parent: Option<SpanId>,
    /// The span of an opaque TCP connection rather than of an HTTP request: it ends with
    /// byte counts instead of HTTP body sizes.
    connection: bool,
}

impl RequestSpan {
    /// A span that records nothing, for requests without telemetry.
    pub fn none() -> Self {
        Self {
            span: None,
            traced: false,
            context: SpanContext::empty_context(),
            kind: SpanKind::Internal,
            parent: None,
            connection: false,
        }
    }

    /// Carries only the remote parent's context (tracing off).
    pub(crate) fn untraced(parent: Option<SpanContext>, kind: SpanKind) -> Self {
        Self {
            span: None,
            traced: false,
            parent: parent.as_ref().map(SpanContext::span_id),
            context: parent.unwrap_or_else(SpanContext::empty_context),
            kind,
            connection: false,
        }
    }

    /// Starts a span with `tracer` under `parent`.
    pub(crate) fn start(
        tracer: &Tracer,
        kind: SpanKind,
        parent: Option<SpanContext>,
        attrs: &SpanAttrs<'_>,
    ) -> Self {
        let parent_span = parent.as_ref().map(SpanContext::span_id);
        // The sampler decides before anything is recorded: an unsampled span (most of them
        // at a low sampling ratio) costs no attribute strings and no name.
        let started = tracer.begin("request", &kind, parent.as_ref());
        Self::started(started, kind, parent_span, false, |span| {
            span.update_name(span_name(attrs));
            span.set_attributes(span_attributes(attrs));
        })
    }

    /// A span from `started`; `record` sets the name and attributes of a sampled one.
    fn started(
        started: Started,
        kind: SpanKind,
        parent: Option<SpanId>,
        connection: bool,
        record: impl FnOnce(&mut Span),
    ) -> Self {
        let (span, context) = match started {
            Started::Sampled(mut span) => {
                if span.is_recording() {
                    record(&mut span);
                }
                let context = span.span_context().clone();
                (Some(span), context)
            }
            Started::Unsampled(context) => (None, context),
        };
        Self {
            span,
            traced: true,
            context,
            kind,
            parent,
            connection,
        }
    }

    /// Starts the span of an opaque TCP connection with `tracer`, a new trace (a connection
    /// carries no trace context), sampled as any new trace is. Named `tcp`, or `tcp egress`
    /// for a destination outside the mesh: span names stay low-cardinality, the destination
    /// is in the attributes.
    pub(crate) fn start_connection(
        tracer: &Tracer,
        kind: SpanKind,
        attrs: &ConnectionAttrs<'_>,
    ) -> Self {
        let name = if attrs.egress { "tcp egress" } else { "tcp" };
        let started = tracer.begin(name, &kind, None);
        Self::started(started, kind, None, true, |span| {
            span.set_attributes(connection_attributes(attrs));
        })
    }

    /// Starts the span of a WebSocket tunnel with `tracer`: from the agreement (101 or 2xx) to
    /// the tunnel's end, a child of its upgrade request's span (`parent`, this sidecar's own),
    /// so sampled when that request was. Named `websocket`; it ends with the bytes each way
    /// and [`TUNNEL_END_CAUSE`], as a connection's span ends with its bytes.
    pub(crate) fn start_tunnel(
        tracer: &Tracer,
        kind: SpanKind,
        parent: &SpanContext,
        attrs: &ConnectionAttrs<'_>,
        path: Option<&str>,
    ) -> Self {
        let started = tracer.begin("websocket", &kind, Some(parent));
        Self::started(started, kind, Some(parent.span_id()), true, |span| {
            let mut kv = connection_attributes(attrs);
            kv.push(KeyValue::new("network.protocol.name", "websocket"));
            if let Some(path) = path {
                kv.push(KeyValue::new("url.path", path.to_owned()));
            }
            span.set_attributes(kv);
        })
    }

    /// Records how a tunnel ended, on a span that is recorded.
    pub fn set_tunnel_end(&mut self, end: TunnelEnd) {
        if let Some(span) = self.span.as_mut().filter(|s| s.is_recording()) {
            span.set_attribute(KeyValue::new(TUNNEL_END_CAUSE, end.as_str()));
        }
    }

    /// Writes this span's context into `headers` as W3C `traceparent` and `tracestate`
    /// (empty when the context has none), replacing what was there, as the SDK's
    /// `TraceContextPropagator` does. Does nothing when tracing is off.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if !self.traced || !self.context.is_valid() {
            return;
        }
        if let Ok(mut v) = HeaderValue::from_bytes(&traceparent(&self.context)) {
            // Each request's value is new, so HPACK gains nothing by adding it to the
            // connection's dynamic table, and pays for it on both sides: each insertion cost
            // about 4,500 instructions to encode and evicted entries that do repeat. A
            // sensitive value is sent as a literal that is never indexed (RFC 7541, 6.2.3).
            v.set_sensitive(true);
            headers.insert(TRACEPARENT, v);
        }
        // An empty trace state is not sent (the header would carry nothing, and costs its
        // encoding and parsing on every hop), and one the request came with does not go on
        // beside a `traceparent` it does not belong to.
        let state = self.context.trace_state().header();
        match HeaderValue::from_str(&state) {
            Ok(v) if !state.is_empty() => {
                headers.insert(TRACESTATE, v);
            }
            _ => {
                headers.remove(TRACESTATE);
            }
        }
    }

    /// The trace ID, when there is a trace.
    fn trace_hex(&self) -> Option<HexId<32>> {
        self.context
            .is_valid()
            .then(|| HexId::trace(self.context.trace_id()))
    }

    /// This sidecar's span ID, when tracing is on.
    fn span_hex(&self) -> Option<HexId<16>> {
        (self.traced && self.context.is_valid()).then(|| HexId::span(self.context.span_id()))
    }

    /// The remote parent's span ID, when the request carried a valid one.
    fn parent_hex(&self) -> Option<HexId<16>> {
        self.parent
            .filter(|p| *p != SpanId::INVALID)
            .map(HexId::span)
    }

    /// The trace ID, 32 hex digits, when there is a trace.
    pub fn trace_id(&self) -> Option<String> {
        self.trace_hex().map(|h| h.as_str().to_owned())
    }

    /// This sidecar's span ID, 16 hex digits, when tracing is on.
    pub fn span_id(&self) -> Option<String> {
        self.span_hex().map(|h| h.as_str().to_owned())
    }

    /// The remote parent's span ID, 16 hex digits, when the request carried a valid one.
    pub fn parent_span_id(&self) -> Option<String> {
        self.parent_hex().map(|h| h.as_str().to_owned())
    }

    /// The trace, span and parent span IDs a flow record takes from this span.
    pub fn ids_of_record(&self) -> RecordIds {
        RecordIds {
            trace: self.trace_hex(),
            span: self.span_hex(),
            parent: self.parent_hex(),
        }
    }

    /// Both IDs, when tracing is on.
    pub fn ids(&self) -> Option<(String, String)> {
        self.trace_id().zip(self.span_id())
    }

    /// The span context (invalid when there is no trace).
    pub fn context(&self) -> &SpanContext {
        &self.context
    }

    /// Whether the span is sampled and will be exported.
    pub fn is_recording(&self) -> bool {
        self.span.as_ref().is_some_and(|s| s.is_recording())
    }

    /// Records `alert` as a span event.
    pub fn add_alert(&mut self, alert: &Alert) {
        if let Some(span) = self.span.as_mut().filter(|s| s.is_recording()) {
            let mut attrs = vec![
                KeyValue::new("picket.alert.kind", alert.kind.as_str()),
                KeyValue::new("picket.alert.severity", alert.severity.as_str()),
                KeyValue::new("picket.alert.summary", alert.summary.clone()),
            ];
            for (k, v) in &alert.evidence {
                attrs.push(KeyValue::new(
                    format!("picket.alert.evidence.{k}"),
                    i64::try_from(*v).unwrap_or(i64::MAX),
                ));
            }
            span.add_event(ALERT_EVENT, attrs);
        }
    }

    /// Ends the span with the request's outcome.
    pub fn finish(mut self, outcome: &SpanOutcome<'_>) {
        let Some(span) = self.span.as_mut() else {
            return;
        };
        if span.is_recording() {
            if let Some(s) = outcome.status {
                span.set_attribute(KeyValue::new("http.response.status_code", i64::from(s)));
            }
            if let Some(g) = outcome.grpc_status {
                span.set_attribute(KeyValue::new("rpc.grpc.status_code", i64::from(g)));
            }
            if let Some(v) = outcome.verdict {
                span.set_attribute(KeyValue::new(AUTHZ_VERDICT, v.as_str()));
            }
            if let Some(p) = outcome.policy {
                span.set_attribute(KeyValue::new(AUTHZ_POLICY, p.to_owned()));
            }
            if let Some(id) = outcome.peer_identity {
                span.set_attribute(KeyValue::new(DESTINATION_IDENTITY, id.to_owned()));
            }
            if let Some(id) = outcome.expected_identity {
                span.set_attribute(KeyValue::new(EXPECTED_IDENTITY, id.to_owned()));
            }
            let size = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            if self.connection {
                // Bytes in come from the caller: sent to the peer of a client span, received
                // from the peer of a server span.
                let (sent, received) = if self.kind == SpanKind::Client {
                    (outcome.bytes_in, outcome.bytes_out)
                } else {
                    (outcome.bytes_out, outcome.bytes_in)
                };
                span.set_attribute(KeyValue::new(BYTES_SENT, size(sent)));
                span.set_attribute(KeyValue::new(BYTES_RECEIVED, size(received)));
            } else {
                span.set_attribute(KeyValue::new(
                    "http.request.body.size",
                    size(outcome.bytes_in),
                ));
                span.set_attribute(KeyValue::new(
                    "http.response.body.size",
                    size(outcome.bytes_out),
                ));
            }
            // Semantic conventions: a server span is an error on 5xx, a client span on 4xx too.
            let error_from = if self.kind == SpanKind::Client {
                400
            } else {
                500
            };
            if let Some(e) = outcome.error {
                span.set_attribute(KeyValue::new("error.type", "picket_proxy_error"));
                span.set_status(Status::error(e.to_owned()));
            } else if let Some(s) = outcome.status.filter(|s| *s >= error_from) {
                span.set_attribute(KeyValue::new("error.type", s.to_string()));
                span.set_status(Status::error(format!("HTTP {s}")));
            }
        }
        span.end();
    }
}

fn split_host_port(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (host, None),
        },
        _ => (host, None),
    }
}

#[cfg(test)]
mod tests;
