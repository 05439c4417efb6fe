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

/// A short plain-text response produced by the sidecar itself.
pub fn error_response(status: StatusCode, reason: &str) -> Response<Body> {
    let mut resp = Response::new(boxed(Full::new(Bytes::from(format!("picket: {reason}\n")))));
    *resp.status_mut() = status;
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
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::TRAILER);
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
        ForwardedMode::Drop => {
            for name in [
                header::FORWARDED.as_str(),
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto",
                "x-forwarded-port",
                "x-real-ip",
            ] {
                headers.remove(name);
            }
        }
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

/// Removes connection-specific headers (RFC 9110 section 7.6.1), including any header named by
/// `Connection`. `TE: trailers` survives, as gRPC needs it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
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

    async fn sender(&self) -> Result<Arc<SendRequest<Body>>, ForwardError> {
        if let Some(s) = self.current.load_full()
            && !s.is_closed()
        {
            return Ok(s);
        }
        let _guard = self.connecting.lock().await;
        // Another request may have connected while this one waited.
        if let Some(s) = self.current.load_full()
            && !s.is_closed()
        {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::canonical::canonicalize;
    use crate::config::HttpConfig;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What the forwarding steps made of one request: the framing headers and the body as
    /// the destination would receive them.
    #[derive(Debug, Default, Clone)]
    struct Framed {
        content_length: Option<String>,
        chunked: bool,
        trailer_header: bool,
        complete: bool,
        had_body: bool,
        body: Option<Vec<u8>>,
        trailers: bool,
    }

    /// Serves `raw` as one HTTP/1.1 connection and runs, for each request, the steps both
    /// directions run before forwarding (canonical head, read-ahead, canonical framing), then
    /// reads the body as the forwarding client would. The fuzz target `body_framing` runs the
    /// same steps.
    async fn frame_connection(raw: &[u8], to_http1: bool) -> Vec<Framed> {
        frame_connection_split(raw, raw.len(), to_http1).await
    }

    /// As [`frame_connection`], sending `raw[..split]` first and the rest only after reading
    /// ahead has given up waiting, so the rest of the body arrives after the head went on.
    async fn frame_connection_split(raw: &[u8], split: usize, to_http1: bool) -> Vec<Framed> {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let record = Arc::clone(&record);
            async move {
                let (mut parts, body) = req.into_parts();
                if canonicalize(&mut parts, &HttpConfig::default()).is_ok() {
                    let had_body = declares_body(&parts.headers, &body);
                    if let Ok(mut ahead) = read_ahead(body).await {
                        let complete = ahead.is_complete();
                        frame_request(&mut parts.headers, &mut ahead, had_body, to_http1);
                        let collected = ahead.collect().await.ok();
                        let header = |h| {
                            parts
                                .headers
                                .get(h)
                                .and_then(|v: &HeaderValue| v.to_str().ok())
                        };
                        let framed = Framed {
                            content_length: header(header::CONTENT_LENGTH).map(str::to_owned),
                            chunked: parts.headers.contains_key(header::TRANSFER_ENCODING),
                            trailer_header: parts.headers.contains_key(header::TRAILER),
                            complete,
                            had_body,
                            trailers: collected.as_ref().is_some_and(|c| c.trailers().is_some()),
                            body: collected.map(|c| c.to_bytes().to_vec()),
                        };
                        record
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(framed);
                    }
                }
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
            }
        });
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        // The client's end of input must not cancel a request still being read.
        let conn = hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .serve_connection(hyper_util::rt::TokioIo::new(server), svc);
        let task = tokio::spawn(conn);
        let (first, rest) = raw.split_at(split.min(raw.len()));
        let _ = client.write_all(first).await;
        if !rest.is_empty() {
            tokio::time::sleep(READ_AHEAD_TOTAL + READ_AHEAD_WAIT * 5).await;
            let _ = client.write_all(rest).await;
        }
        let _ = client.shutdown().await;
        let mut sink = Vec::new();
        let _ = client.read_to_end(&mut sink).await;
        let _ = task.await;
        seen.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The properties the fuzz target checks, for one request.
    fn check(f: &Framed) {
        assert!(!(f.content_length.is_some() && f.chunked), "{f:?}");
        assert!(
            !f.trailer_header && !f.trailers,
            "trailers forwarded: {f:?}"
        );
        if let Some(cl) = &f.content_length {
            assert!(cl == "0" || !cl.starts_with('0'), "{f:?}");
        }
        if !f.had_body {
            assert!(f.content_length.is_none() && !f.chunked, "{f:?}");
        }
        if f.complete && f.had_body {
            assert!(
                f.content_length.is_some(),
                "a complete body without a length: {f:?}"
            );
        }
        if let (Some(cl), Some(body)) = (&f.content_length, &f.body) {
            assert_eq!(cl.parse::<usize>().ok(), Some(body.len()), "{f:?}");
        }
        if f.complete {
            assert!(
                f.body.is_some(),
                "a body read completely failed later: {f:?}"
            );
        }
    }

    /// Every input the `body_framing` fuzz target ever failed on (`fuzz/crashes/body_framing`)
    /// keeps its properties here, in the ordinary test run.
    #[tokio::test]
    async fn body_framing_fuzz_findings_keep_their_properties() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/crashes/body_framing");
        let mut requests = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.map(|e| e.path()).unwrap_or_default();
            let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for to_http1 in [true, false] {
                for framed in frame_connection(&raw, to_http1).await {
                    check(&framed);
                    requests += 1;
                }
            }
        }
        assert!(requests > 0, "no request read from {}", dir.display());
    }

    /// The first finding: a chunked body with a trailer section was read completely, yet
    /// forwarded chunked (the trailer made its length "unknown"), with the trailer passed on to
    /// an HTTP/2 destination. Trailers are dropped, so a complete body always has a length.
    #[tokio::test]
    async fn request_trailers_are_dropped_and_the_body_keeps_its_length() {
        let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
                    Trailer: x-role\r\n\r\n3;e=1\r\nabc\r\n0\r\nx-role: admin\r\n\r\n";
        for to_http1 in [true, false] {
            let framed = frame_connection(raw, to_http1).await;
            let [f] = framed.as_slice() else {
                panic!("{framed:?}");
            };
            check(f);
            assert_eq!(f.content_length.as_deref(), Some("3"));
            assert_eq!(f.body.as_deref(), Some(&b"abc"[..]));
        }
    }

    /// Trailers that arrive after the head was forwarded (the body streamed) are dropped too.
    #[tokio::test]
    async fn late_request_trailers_are_dropped() {
        let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                    3\r\nabc\r\n0\r\nx-role: admin\r\n\r\n";
        let split = raw.len() - 20;
        let framed = frame_connection_split(raw, split, true).await;
        let [f] = framed.as_slice() else {
            panic!("{framed:?}");
        };
        check(f);
        assert!(!f.complete && f.chunked, "{f:?}");
        assert_eq!(f.body.as_deref(), Some(&b"abc"[..]));
    }
}
