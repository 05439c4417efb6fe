//! HTTP forwarding shared by both directions: the body type, hop-by-hop header hygiene,
//! error responses, and the multiplexed HTTP/2 client that keeps one connection per
//! destination.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Boxed error used in bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body type of every proxy service.
pub type Body = BoxBody<Bytes, BoxError>;

/// Header carrying the verified caller identity to the application. Any copy a client sends is
/// removed before the sidecar sets it.
pub const PEER_IDENTITY_HEADER: HeaderName = HeaderName::from_static("x-picket-peer-identity");
/// Between sidecars: the HTTP version the calling application used, so that the receiving
/// sidecar speaks the same version to its application. Removed before the application.
pub const ORIG_PROTO_HEADER: HeaderName = HeaderName::from_static("x-picket-orig-proto");
/// Value of [`ORIG_PROTO_HEADER`] for HTTP/1.x callers.
pub const ORIG_PROTO_HTTP1: &str = "HTTP/1.1";

/// Converts any body into the proxy body type.
pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    boxed(http_body_util::Empty::<Bytes>::new())
}

/// Marks a response a sidecar made itself (in its extensions, never sent as such): its flow
/// record says so, and the detectors do not take it for the route's own answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarAnswer {
    /// This sidecar made it: a forwarding error, a refused request head, a policy denial, a
    /// refused token, a shed request.
    Own,
    /// The peer sidecar made it (outbound): it said so in [`SIDECAR_ANSWER_HEADER`] on an
    /// answer that came over mutual TLS from its verified identity.
    Peer,
}

/// Response header by which the called workload's sidecar tells the caller's sidecar that it
/// made the answer itself (a denial, its app down or draining, a refused head), so that the
/// caller's flow record and detectors do not take it for the route's answer. The inbound side
/// sets it on its own answers and removes it from every answer its app sends (an app cannot
/// forge it); the outbound side believes it only on an answer of a peer sidecar whose
/// identity it verified, and removes it before the answer reaches the app, always.
pub const SIDECAR_ANSWER_HEADER: HeaderName = HeaderName::from_static("x-picket-sidecar-answer");
/// The one value of [`SIDECAR_ANSWER_HEADER`]; any other value is not believed.
const SIDECAR_ANSWER_VALUE: &str = "1";

/// Inbound, as an answer leaves for the caller: [`SIDECAR_ANSWER_HEADER`] set when this
/// sidecar made the answer ([`SidecarAnswer::Own`]) and removed otherwise, whatever the app
/// wrote. Every inbound answer passes here, so no path can carry the app's copy out.
pub fn announce_sidecar_answer<B>(resp: &mut Response<B>) {
    if resp.extensions().get::<SidecarAnswer>() == Some(&SidecarAnswer::Own) {
        resp.headers_mut().insert(
            SIDECAR_ANSWER_HEADER,
            HeaderValue::from_static(SIDECAR_ANSWER_VALUE),
        );
    } else {
        remove_each(resp.headers_mut(), &[SIDECAR_ANSWER_HEADER]);
    }
}

/// Outbound, as an answer leaves for the app: [`SIDECAR_ANSWER_HEADER`] removed, whoever
/// wrote it. Every outbound answer passes here.
pub fn withhold_sidecar_answer<B>(resp: &mut Response<B>) {
    remove_each(resp.headers_mut(), &[SIDECAR_ANSWER_HEADER]);
}

/// Outbound: the answer of a peer sidecar as the app receives it ([`to_caller`]), marked
/// [`SidecarAnswer::Peer`] when the peer said it made it and `verified_peer` (the answer came
/// over mutual TLS from a peer whose identity this sidecar verified). The header is removed
/// either way.
pub fn from_peer(resp: Response<Incoming>, verified_peer: bool) -> Response<Body> {
    let mut resp = to_caller(resp);
    take_peer_answer(&mut resp, verified_peer);
    resp
}

/// The reading of [`from_peer`]: removes [`SIDECAR_ANSWER_HEADER`] and marks the answer
/// [`SidecarAnswer::Peer`] when it said `1` and `verified_peer`.
fn take_peer_answer<B>(resp: &mut Response<B>, verified_peer: bool) {
    let said = resp
        .headers_mut()
        .remove(SIDECAR_ANSWER_HEADER)
        .is_some_and(|v| v.as_bytes() == SIDECAR_ANSWER_VALUE.as_bytes());
    if said && verified_peer {
        resp.extensions_mut().insert(SidecarAnswer::Peer);
    }
}

/// A short plain-text response produced by the sidecar itself.
pub fn error_response(status: StatusCode, reason: &str) -> Response<Body> {
    let mut resp = Response::new(boxed(Full::new(Bytes::from(format!("picket: {reason}\n")))));
    *resp.status_mut() = status;
    resp.extensions_mut().insert(SidecarAnswer::Own);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// As [`error_response`], and asks the server to close the connection after it: for requests
/// whose framing or head was refused, so nothing that follows on the connection is read.
pub fn error_response_close(status: StatusCode, reason: &str) -> Response<Body> {
    let mut resp = error_response(status, reason);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// How much of a request body is read before the request head is forwarded.
pub const READ_AHEAD_BYTES: usize = 64 * 1024;
/// How long reading ahead waits for the next part of a body before it forwards what it has.
/// Read-ahead exists to refuse malformed framing before anything reaches the app; it must not
/// hold up a body the client streams slowly (gRPC streams, uploads waiting for the response).
pub const READ_AHEAD_WAIT: Duration = Duration::from_millis(20);
/// The longest reading ahead may take in all, however the body trickles in.
pub const READ_AHEAD_TOTAL: Duration = Duration::from_millis(100);

/// A request body as forwarded: the data read ahead, then the rest of the received body.
/// An error in the rest is passed on as a body error, which makes the forwarding client abort
/// the request (HTTP/1: the connection is closed before the length or last chunk is complete;
/// HTTP/2: the stream is reset), so the app never sees a complete-looking body.
///
/// Request trailers (fields after a chunked body or a body's last HTTP/2 HEADERS) are dropped,
/// wherever they arrive: policy decided on the header section before any trailer existed, so a
/// trailer is a field no rule has seen, and an app that merges trailers into headers (or a
/// header-stripping rule that never looks at them) would read an `x-role: admin` or a foreign
/// identity header past the policy. RFC 9110 section 6.5.1 lets a recipient discard trailers;
/// no common request protocol needs them (gRPC sends trailers only in responses).
#[derive(Debug)]
pub struct ReadAhead {
    frames: VecDeque<Frame<Bytes>>,
    /// Data bytes in `frames` not yet passed on.
    buffered: u64,
    rest: Option<Incoming>,
    failed: Arc<std::sync::atomic::AtomicBool>,
    /// The received request declared a body (a length, chunked, or DATA frames). An empty body
    /// that was not declared announces no length, so hyper adds no `content-length: 0` on the
    /// way (it does for OPTIONS over HTTP/2) and the app sees the request without one.
    declared: bool,
}

impl ReadAhead {
    /// Set once the rest of the body failed after the head was forwarded, so the caller can
    /// tell a malformed request body from a failing destination.
    pub fn failure_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        Arc::clone(&self.failed)
    }

    /// The exact length of what is left of the body (before forwarding: the whole body) when
    /// it is known: read completely, or announced by the sender.
    pub fn exact_len(&self) -> Option<u64> {
        match &self.rest {
            None => Some(self.buffered),
            Some(rest) => rest
                .size_hint()
                .exact()
                .and_then(|n| n.checked_add(self.buffered)),
        }
    }

    /// Whether the whole body was read.
    pub fn is_complete(&self) -> bool {
        self.rest.is_none()
    }
}

impl http_body::Body for ReadAhead {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.frames.pop_front() {
            if let Some(data) = frame.data_ref() {
                self.buffered = self.buffered.saturating_sub(data.len() as u64);
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        let Some(rest) = self.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = loop {
            match Pin::new(&mut *rest).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                    tracing::debug!("request trailers dropped");
                }
                other => break other,
            }
        };
        match polled {
            Poll::Ready(None) => {
                self.rest = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::info!(error = %e, "request body failed after its head was forwarded; aborting the forwarded request");
                self.failed
                    .store(true, std::sync::atomic::Ordering::Release);
                self.rest = None;
                Poll::Ready(Some(Err(BoxError::from(e))))
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if !self.declared && self.frames.is_empty() && self.rest.is_none() {
            return SizeHint::new();
        }
        match self.exact_len() {
            Some(n) => SizeHint::with_exact(n),
            None => {
                let mut hint = SizeHint::new();
                hint.set_lower(self.buffered);
                hint
            }
        }
    }
}

/// Reads the start of a request body: until its end, [`READ_AHEAD_BYTES`],
/// [`READ_AHEAD_WAIT`] without a new frame, or [`READ_AHEAD_TOTAL`] in all. A framing error found meanwhile (a malformed chunk
/// line, a length the stream does not keep) is returned, and the caller answers 400 before
/// anything of the request reaches the app.
pub async fn read_ahead(mut body: Incoming) -> Result<ReadAhead, hyper::Error> {
    let mut frames = VecDeque::new();
    let mut buffered: u64 = 0;
    let mut done = body.is_end_stream();
    let deadline = tokio::time::Instant::now() + READ_AHEAD_TOTAL;
    while !done && usize::try_from(buffered).is_ok_and(|b| b < READ_AHEAD_BYTES) {
        let wait = (tokio::time::Instant::now() + READ_AHEAD_WAIT).min(deadline);
        match tokio::time::timeout_at(wait, body.frame()).await {
            Err(_) => break,
            Ok(None) => done = true,
            Ok(Some(Err(e))) => return Err(e),
            Ok(Some(Ok(frame))) => {
                // Only data is kept: trailers are dropped (see `ReadAhead`).
                if let Ok(data) = frame.into_data() {
                    buffered += data.len() as u64;
                    frames.push_back(Frame::data(data));
                } else {
                    tracing::debug!("request trailers dropped");
                }
                done = body.is_end_stream();
            }
        }
    }
    Ok(ReadAhead {
        frames,
        buffered,
        rest: (!done).then_some(body),
        failed: Arc::default(),
        declared: true,
    })
}

/// Sets the framing headers of a forwarded request from its body, so they are always written
/// one canonical way (`Content-Length: 3`, never `003` or a list), whatever the sender wrote:
/// a known length becomes `Content-Length`; an unknown one `Transfer-Encoding: chunked` for an
/// HTTP/1.1 receiver (for every method: GET and HEAD bodies are carried like any other) and
/// nothing for HTTP/2. `had_body` says whether the received request declared a body (a
/// length, chunked, or DATA frames); a request that declared none gets no framing header.
/// A body read completely always has a known length, trailers or not (they are dropped), so it
/// is always forwarded with `Content-Length`; `Trailer`, which announces trailers, goes too.
pub fn frame_request(
    headers: &mut HeaderMap,
    body: &mut ReadAhead,
    had_body: bool,
    to_http1: bool,
) {
    strip_framing(headers);
    body.declared = had_body;
    if !had_body {
        return;
    }
    match body.exact_len() {
        Some(n) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        None if to_http1 => {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        None => {}
    }
}

/// The error to report when forwarding failed: a body that failed after its head was
/// forwarded is the client's malformed request, not the destination's failure.
pub fn blame(e: ForwardError, body_failed: &std::sync::atomic::AtomicBool) -> ForwardError {
    if body_failed.load(std::sync::atomic::Ordering::Acquire) {
        ForwardError::RequestBody(
            "the body failed after the request head was forwarded; the forwarded request was aborted"
                .into(),
        )
    } else {
        e
    }
}

/// A request's framing headers.
const FRAMING_HEADERS: [HeaderName; 3] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TRAILER,
];

/// Removes a request's framing headers (`Content-Length`, `Transfer-Encoding`, `Trailer`).
pub fn strip_framing(headers: &mut HeaderMap) {
    remove_each(headers, &FRAMING_HEADERS);
}

/// Removes every header named in `names` that `headers` carries, every line of it. One pass
/// over the head's names finds them first ([`presence`]): a head usually carries none, and a
/// removal hashes its name and probes the map whether the name is there or not, which cost
/// more per request than comparing the few names a head has with the list. A list longer
/// than the presence mask is removed a lookup per name.
pub fn remove_each(headers: &mut HeaderMap, names: &[HeaderName]) {
    if names.len() > MASK_BITS {
        for name in names {
            headers.remove(name);
        }
        return;
    }
    let present = presence(headers, names);
    remove_marked(headers, names, present);
}

/// How many names a presence mask can mark.
const MASK_BITS: usize = u32::BITS as usize;

/// Which of `names` (at most [`MASK_BITS`]) `headers` carries: bit `i` for `names[i]`, from one
/// pass over the head's names.
fn presence(headers: &HeaderMap, names: &[HeaderName]) -> u32 {
    debug_assert!(names.len() <= MASK_BITS);
    let mut present = 0u32;
    for name in headers.keys() {
        if let Some(i) = names.iter().position(|n| n == name) {
            present |= 1 << i;
        }
    }
    present
}

/// Removes the names of `names` that `present` marks ([`presence`]).
fn remove_marked(headers: &mut HeaderMap, names: &[HeaderName], present: u32) {
    for (i, name) in names.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// A response from the next hop as the caller receives it: hop-by-hop headers removed.
pub fn to_caller<B>(resp: Response<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let (mut head, body) = resp.into_parts();
    strip_hop_by_hop(&mut head.headers);
    Response::from_parts(head, boxed(body))
}

/// Whether a received request declared a body.
pub fn declares_body(headers: &HeaderMap, body: &Incoming) -> bool {
    headers.contains_key(header::CONTENT_LENGTH)
        || headers.contains_key(header::TRANSFER_ENCODING)
        || !body.is_end_stream()
}

/// A header the sidecar removes from what the app receives: a name, or a prefix written with a
/// trailing `*` (`l5d-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderPattern {
    /// Exactly this name.
    Exact(HeaderName),
    /// Every name starting with this (lowercase) prefix.
    Prefix(String),
}

impl HeaderPattern {
    /// Parses `name` or `prefix*`; names are case-insensitive.
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.to_ascii_lowercase();
        if let Some(prefix) = lower.strip_suffix('*') {
            if prefix.is_empty() || HeaderName::from_bytes(prefix.as_bytes()).is_err() {
                return Err(format!(
                    "{text:?} is not a header name prefix followed by '*'"
                ));
            }
            return Ok(Self::Prefix(prefix.to_owned()));
        }
        HeaderName::from_bytes(lower.as_bytes())
            .map(Self::Exact)
            .map_err(|_| format!("{text:?} is not a header name"))
    }

    fn matches(&self, name: &HeaderName) -> bool {
        match self {
            Self::Exact(n) => n == name,
            Self::Prefix(p) => name.as_str().starts_with(p.as_str()),
        }
    }
}

/// The mesh-internal identity and routing headers of Picket, Istio/Envoy and Linkerd, removed
/// from every request the app receives unless `http.strip_headers` says otherwise: a client
/// must not be able to claim an identity or a route that an app trusting another mesh would
/// believe.
pub const DEFAULT_STRIP_HEADERS: &[&str] = &[
    "x-picket-*",
    "x-forwarded-client-cert",
    "x-envoy-*",
    "x-istio-*",
    "l5d-*",
];

/// Removes every header matching one of `patterns`.
pub fn strip_headers(headers: &mut HeaderMap, patterns: &[HeaderPattern]) {
    if patterns.is_empty() {
        return;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| patterns.iter().any(|p| p.matches(n)))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// What the app receives of `Forwarded`, `X-Forwarded-For` and `X-Real-IP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedMode {
    /// Remove them, and `X-Forwarded-Host`, `-Proto` and `-Port` (the default): nothing a
    /// client wrote about addresses reaches the app.
    #[default]
    Drop,
    /// Append the peer address the sidecar saw to `Forwarded` (`for=`) and `X-Forwarded-For`
    /// (creating them when absent) and set `X-Real-IP` to it; the app must read the last entry.
    Append,
    /// Pass them as the client sent them.
    Keep,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// What `drop` removes, named once: removing by `&str` parsed each name again per request.
const FORWARDING_HEADERS: [HeaderName; 6] = [
    header::FORWARDED,
    X_FORWARDED_FOR,
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-port"),
    X_REAL_IP,
];

/// Applies `mode` to the forwarding headers; `peer` is the address of the connection.
pub fn forwarding_headers(headers: &mut HeaderMap, mode: ForwardedMode, peer: std::net::IpAddr) {
    let peer = match peer {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    match mode {
        ForwardedMode::Keep => {}
        ForwardedMode::Drop => remove_each(headers, &FORWARDING_HEADERS),
        ForwardedMode::Append => {
            let node = match peer {
                std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
                v4 => format!("for={v4}"),
            };
            append_list(headers, header::FORWARDED, &node);
            append_list(headers, X_FORWARDED_FOR, &peer.to_string());
            if let Ok(v) = HeaderValue::from_str(&peer.to_string()) {
                headers.insert(X_REAL_IP, v);
            }
        }
    }
}

/// Joins every line of `name` into one and appends `element`.
fn append_list(headers: &mut HeaderMap, name: HeaderName, element: &str) {
    let mut joined: Vec<String> = headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    joined.push(element.to_owned());
    if let Ok(v) = HeaderValue::from_str(&joined.join(", ")) {
        headers.insert(name, v);
    }
}

/// The connection-specific headers (RFC 9110 section 7.6.1) every hop removes, in the order of
/// their presence bits; the last, `TE`, survives as `TE: trailers`.
static CONNECTION_SPECIFIC: [HeaderName; 8] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
];

/// Where `TE` is in [`CONNECTION_SPECIFIC`]: the names before it are removed outright.
const TE_INDEX: usize = 7;

/// The connection-specific headers removed outright (`TE` apart).
fn hop_by_hop() -> &'static [HeaderName] {
    &CONNECTION_SPECIFIC[..TE_INDEX]
}

/// Removes connection-specific headers (RFC 9110 section 7.6.1), including any header named by
/// `Connection`. `TE: trailers` survives, as gRPC needs it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names first: most heads carry none of these (and then no header
    // named by `Connection` either), and a lookup per name, four times per request, cost more
    // than the pass. The pass also notes which ones a head carries, so only those are removed:
    // an app's `Connection: keep-alive` then costs one removal, not one lookup per name.
    let present = presence(headers, &CONNECTION_SPECIFIC);
    if present != 0 {
        remove_present(headers, present);
    }
}

/// Removes the connection-specific headers `present` marks, and the headers `Connection`
/// names. A token naming a connection-specific header needs no lookup of its own: that header
/// is in `present` when the head carries it. `Connection: te` removes `TE` with `trailers`.
fn remove_present(headers: &mut HeaderMap, present: u32) {
    let mut te_named = false;
    if present & 1 != 0 {
        debug_assert_eq!(CONNECTION_SPECIFIC[0], header::CONNECTION);
        let mut named: Vec<HeaderName> = Vec::new();
        let tokens = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim);
        for token in tokens {
            if hop_by_hop()
                .iter()
                .any(|h| token.eq_ignore_ascii_case(h.as_str()))
            {
                continue;
            }
            if token.eq_ignore_ascii_case(header::TE.as_str()) {
                te_named = true;
            } else if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    remove_marked(headers, hop_by_hop(), present);
    if present & (1 << TE_INDEX) != 0 {
        let te_trailers = !te_named
            && headers
                .get_all(header::TE)
                .iter()
                .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        headers.remove(header::TE);
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
}

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// No connection could be made to the destination.
    #[error("{target} unreachable: {reason}")]
    Unreachable {
        /// What was being reached.
        target: String,
        /// Why.
        reason: String,
    },
    /// The TLS handshake with a peer sidecar failed (untrusted, wrong identity, ...).
    #[error("{target}: TLS handshake failed: {reason}")]
    Handshake {
        /// What was being reached.
        target: String,
        /// A bounded reason.
        reason: &'static str,
        /// Details for the log.
        detail: String,
    },
    /// The response head did not arrive in time.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The connection failed while the request was in flight.
    #[error("connection failed: {0}")]
    Broken(String),
    /// The destination is shutting down (HTTP/2 GOAWAY, or a refused stream) and did not
    /// process the request, so it is safe to send it elsewhere.
    #[error("the destination is shutting down and did not take the request")]
    Draining,
    /// The request body's framing is malformed (or the client stopped sending it); nothing of
    /// the request was forwarded.
    #[error("malformed request body: {0}")]
    RequestBody(String),
}

/// Reads ahead into a request body (see [`read_ahead`]); a framing error becomes
/// [`ForwardError::RequestBody`].
pub async fn body_for_forwarding(body: Incoming) -> Result<ReadAhead, ForwardError> {
    read_ahead(body).await.map_err(|e| {
        let detail = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
        ForwardError::RequestBody(detail)
    })
}

/// `http://<authority><path-and-query>`, built from parts so that the asterisk form (`*`)
/// survives.
pub fn absolute_uri(
    authority: http::uri::Authority,
    path_and_query: http::uri::PathAndQuery,
) -> Result<http::Uri, ForwardError> {
    http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| ForwardError::Broken(format!("invalid request target: {e}")))
}

/// The most unread data one HTTP/2 stream may hold on a sidecar's connections (its receive
/// window): a stream whose reader stalls stops at this, whatever it carries.
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// The most streams one connection between sidecars carries at once (the inbound server's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`).
pub const MAX_STREAMS: u32 = 256;
/// The connection's receive window: every stream's full window at once (64 MiB), so streams
/// stalled with unread data can never use up the window the other streams need. Adaptive
/// (BDP) windows are off: they grow each stream's window to the connection's, which lets one
/// stalled stream take the whole connection.
pub const CONNECTION_WINDOW: u32 = STREAM_WINDOW * MAX_STREAMS;

/// Opens new connections for an [`H2Client`].
pub trait Connect: Send + Sync + 'static {
    /// The connection type.
    type Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static;
    /// Opens one connection.
    fn connect(&self) -> impl Future<Output = Result<Self::Io, ForwardError>> + Send;
}

/// One shared, multiplexed HTTP/2 connection to a destination, opened on first use and
/// re-opened when it closes. Concurrent requests share it; a lock is taken only to connect.
pub struct H2Client<C> {
    connector: C,
    current: ArcSwapOption<SendRequest<Body>>,
    connecting: tokio::sync::Mutex<()>,
    max_header_list_size: u32,
}

impl<C> std::fmt::Debug for H2Client<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Client").finish_non_exhaustive()
    }
}

impl<C: Connect> H2Client<C> {
    /// A client that connects with `connector`.
    pub fn new(connector: C, max_header_list_size: u32) -> Self {
        Self {
            connector,
            current: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            max_header_list_size,
        }
    }

    /// Whether a connection is open (a request sent now would not wait for a handshake).
    pub fn connected(&self) -> bool {
        self.current
            .load()
            .as_deref()
            .is_some_and(|s| !s.is_closed())
    }

    /// The open connection, or a new one.
    async fn sender(&self) -> Result<Arc<SendRequest<Body>>, ForwardError> {
        if let Some(s) = self.open_sender() {
            return Ok(s);
        }
        // Opening a connection (TCP, TLS, the HTTP/2 handshake) is a future of several KB:
        // boxed, so that it does not size every request's future (which is copied whole
        // between its states) for a step that runs once per connection.
        Box::pin(self.reconnect()).await
    }

    /// The connection requests travel on, when it is open.
    fn open_sender(&self) -> Option<Arc<SendRequest<Body>>> {
        self.current.load_full().filter(|s| !s.is_closed())
    }

    /// Opens a new connection, unless another request opened one while this one waited.
    async fn reconnect(&self) -> Result<Arc<SendRequest<Body>>, ForwardError> {
        let _guard = self.connecting.lock().await;
        if let Some(s) = self.open_sender() {
            return Ok(s);
        }
        let io = self.connector.connect().await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(self.max_header_list_size)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(false)
            .handshake(io)
            .await
            .map_err(|e| ForwardError::Broken(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http/2 client connection ended");
            }
        });
        let sender = Arc::new(sender);
        self.current.store(Some(Arc::clone(&sender)));
        Ok(sender)
    }

    /// Stops using `stale` for new requests, unless another request already replaced it.
    fn forget(&self, stale: &Arc<SendRequest<Body>>) {
        self.current.rcu(|cur| match cur {
            Some(c) if Arc::ptr_eq(c, stale) => None,
            other => other.clone(),
        });
    }

    /// Sends `req` and waits for the response head. A request the connection did not take
    /// (closed, or going away because the destination is draining: HTTP/2 GOAWAY) was never
    /// sent, so it is sent once more on a fresh connection; when that one does not take it
    /// either the answer is [`ForwardError::Draining`], and when no connection can be made,
    /// [`ForwardError::Unreachable`].
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, ForwardError> {
        let mut req = req;
        for _ in 0..2 {
            let sender = self.sender().await?;
            let mut send = SendRequest::clone(&sender);
            if send.ready().await.is_err() {
                self.forget(&sender);
                continue;
            }
            match send.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => {
                        self.forget(&sender);
                        req = unsent;
                    }
                    None => return Err(sent_error(&e.into_error())),
                },
            }
        }
        Err(ForwardError::Draining)
    }

    /// [`H2Client::send`] within `timeout` (the time to the response head).
    pub async fn send_within(
        &self,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, ForwardError> {
        tokio::time::timeout(timeout, self.send(req))
            .await
            .unwrap_or(Err(ForwardError::Timeout(timeout)))
    }
}

/// Classifies a failure of a request that was handed to the connection: a stream the peer
/// refused (REFUSED_STREAM) or cut off by its GOAWAY was not processed (RFC 9113 section 8.7),
/// so it is [`ForwardError::Draining`]; anything else broke in flight.
fn sent_error(e: &hyper::Error) -> ForwardError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>()
            && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM))
        {
            return ForwardError::Draining;
        }
        source = s.source();
    }
    ForwardError::Broken(e.to_string())
}

mod http1;
pub use http1::{H1Pool, Returning};

#[cfg(test)]
mod tests;
