//! A small built-in application: the app behind the sidecars in `picket demo` and in the
//! end-to-end tests. It describes every request it receives, so a caller can see what crossed
//! the mesh (method, raw path, headers in order, the peer identity header, a body digest).
//!
//! HTTP routes (HTTP/1.1 and h2c on one listener):
//!
//! | request | answer |
//! |---|---|
//! | any | `200` JSON description of the request (see [`Description`]) |
//! | `GET /stream?bytes=N` | `N` bytes of [`fill_pattern`] in 64 KiB chunks, never held whole |
//! | `GET /status/CODE` | status `CODE` with the description as body |
//! | `GET /slow?ms=N` | the description, after `N` milliseconds |
//! | `GET /stats` | `{"app", "requests", "in_flight"}` of this app, `/stats` requests not counted |
//! | `content-type: application/grpc*` | a gRPC unary answer echoing the request message, with trailers |
//!
//! Request bodies are read as a stream: counted and hashed, never buffered (gRPC messages, which
//! are echoed, are the exception and are capped at [`MAX_GRPC_MESSAGE_BYTES`]).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The header the inbound sidecar sets to the authenticated peer's SPIFFE ID.
pub const PEER_IDENTITY_HEADER: &str = "x-picket-peer-identity";

/// Size of each chunk of `/stream` answers.
pub const STREAM_CHUNK_BYTES: usize = 64 * 1024;

/// Largest gRPC request the echo reads before answering `RESOURCE_EXHAUSTED`.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Response body of the echo app.
pub type EchoBody = BoxBody<Bytes, Infallible>;

/// What the echo app answers for a request: what it received.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Description {
    /// The app's name, given to [`serve_http`].
    pub app: String,
    /// Request method.
    pub method: String,
    /// Path and query exactly as received.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Header name and value pairs, grouped by name in the order names first appeared.
    pub headers: Vec<(String, String)>,
    /// The value of [`PEER_IDENTITY_HEADER`], if present.
    pub peer_identity: Option<String>,
    /// Length of the request body.
    pub body_bytes: u64,
    /// SHA-256 of the request body, lowercase hex.
    pub body_sha256: String,
}

/// Counters of one running echo app, served at `/stats`.
#[derive(Debug, Default, Serialize)]
struct Stats {
    app: String,
    requests: AtomicU64,
    in_flight: AtomicU64,
}

/// Serves the echo app over HTTP/1.1 and h2c on `listener` until `shutdown` completes, then
/// stops accepting and waits for open connections to finish their requests.
pub async fn serve_http(
    listener: TcpListener,
    name: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let stats = Arc::new(Stats {
        app: name,
        ..Stats::default()
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e),
            },
            () = &mut shutdown => break,
        };
        let stats = stats.clone();
        let service = hyper::service::service_fn(move |req| handle(stats.clone(), req));
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A peer that goes away mid-request is not the app's problem.
            let _ = conn.await;
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// Serves a TCP echo on `listener` until `shutdown` completes: every byte received is sent
/// back, and the write side is closed when the peer closes its own. Open connections are
/// dropped at shutdown.
pub async fn serve_tcp_echo(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((mut stream, _)) => {
                    connections.spawn(async move {
                        let (mut rd, mut wr) = stream.split();
                        if tokio::io::copy(&mut rd, &mut wr).await.is_ok() {
                            let _ = wr.shutdown().await;
                        }
                    });
                }
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e),
            },
            // Reap finished connections so the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => return Ok(()),
        }
    }
}

/// Fills `buf` with the deterministic byte pattern that starts at stream offset `offset`.
/// `/stream` answers with it, and a test can send it and compute its digest the same way.
pub fn fill_pattern(offset: u64, buf: &mut [u8]) {
    // Period 251 across chunk boundaries, mixed with the 64 KiB block number so a reordered
    // or repeated block changes the digest.
    let mut cycle = (offset % 251) as u8;
    for (i, b) in (offset..).zip(buf.iter_mut()) {
        *b = cycle ^ ((i >> 16) as u8);
        cycle = if cycle == 250 { 0 } else { cycle + 1 };
    }
}

/// A body of `len` bytes of [`fill_pattern`], produced lazily in [`STREAM_CHUNK_BYTES`] chunks.
pub fn pattern_body(len: u64) -> EchoBody {
    let chunks = (0..len).step_by(STREAM_CHUNK_BYTES).map(move |offset| {
        let size = usize::try_from(len - offset)
            .map_or(STREAM_CHUNK_BYTES, |left| left.min(STREAM_CHUNK_BYTES));
        let mut buf = BytesMut::zeroed(size);
        fill_pattern(offset, &mut buf);
        Ok(Frame::data(buf.freeze()))
    });
    StreamBody::new(futures_util::stream::iter(chunks)).boxed()
}

/// Counts and hashes a byte stream as it passes, without keeping it.
pub struct BodyDigest {
    bytes: u64,
    sha256: aws_lc_rs::digest::Context,
}

impl std::fmt::Debug for BodyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyDigest")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl Default for BodyDigest {
    fn default() -> Self {
        Self {
            bytes: 0,
            sha256: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
        }
    }
}

impl BodyDigest {
    /// Adds the next piece of the stream.
    pub fn update(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        self.sha256.update(data);
    }

    /// Byte count and lowercase hex SHA-256 of everything added.
    pub fn finish(self) -> (u64, String) {
        let digest = self.sha256.finish();
        (self.bytes, picket_ca::svid::hex_lower(digest.as_ref()))
    }

    /// Byte count and digest of `len` bytes of [`fill_pattern`], computed chunk by chunk.
    pub fn of_pattern(len: u64) -> (u64, String) {
        let mut digest = Self::default();
        let mut buf = vec![0u8; STREAM_CHUNK_BYTES];
        let mut offset = 0;
        while offset < len {
            let n = usize::try_from(len - offset).map_or(buf.len(), |left| left.min(buf.len()));
            fill_pattern(offset, &mut buf[..n]);
            digest.update(&buf[..n]);
            offset += n as u64;
        }
        digest.finish()
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

async fn handle(
    stats: Arc<Stats>,
    req: Request<Incoming>,
) -> Result<Response<EchoBody>, Infallible> {
    // A `/stats` request is not counted, so that its answer describes the other requests.
    if req.method() == Method::GET && req.uri().path() == "/stats" {
        return Ok(route(&stats, req).await);
    }
    stats.requests.fetch_add(1, Ordering::Relaxed);
    stats.in_flight.fetch_add(1, Ordering::Relaxed);
    let response = route(&stats, req).await;
    stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    Ok(response)
}

async fn route(stats: &Stats, req: Request<Incoming>) -> Response<EchoBody> {
    if is_grpc(req.headers()) {
        return grpc_unary_echo(req).await;
    }
    let path = req.uri().path().to_owned();
    let get = req.method() == Method::GET;
    match path.as_str() {
        "/stream" if get => match query_u64(&req, "bytes") {
            Some(n) => response(StatusCode::OK, "application/octet-stream", pattern_body(n)),
            None => text(StatusCode::BAD_REQUEST, "/stream needs ?bytes=N"),
        },
        "/slow" if get => match query_u64(&req, "ms") {
            Some(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                describe(&stats.app, StatusCode::OK, req).await
            }
            None => text(StatusCode::BAD_REQUEST, "/slow needs ?ms=N"),
        },
        "/stats" if get => json(StatusCode::OK, stats),
        _ => match path.strip_prefix("/status/").filter(|_| get) {
            Some(code) => match code.parse().ok().and_then(|c| StatusCode::from_u16(c).ok()) {
                Some(status) => describe(&stats.app, status, req).await,
                None => text(StatusCode::BAD_REQUEST, "/status/CODE needs a status code"),
            },
            None => describe(&stats.app, StatusCode::OK, req).await,
        },
    }
}

/// Reads the whole request body (streaming) and answers with its [`Description`].
async fn describe(app: &str, status: StatusCode, req: Request<Incoming>) -> Response<EchoBody> {
    let (parts, mut body) = req.into_parts();
    let mut digest = BodyDigest::default();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    digest.update(data);
                }
            }
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("reading the body failed: {e}"),
                );
            }
        }
    }
    let (body_bytes, body_sha256) = digest.finish();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), lossy(v)))
        .collect();
    let description = Description {
        app: app.to_owned(),
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
        version: format!("{:?}", parts.version),
        headers,
        peer_identity: parts.headers.get(PEER_IDENTITY_HEADER).map(lossy),
        body_bytes,
        body_sha256,
    };
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return response(status, "application/json", Full::default().boxed());
    }
    json(status, &description)
}

/// Answers a gRPC unary call with the request's first message echoed back, then trailers.
async fn grpc_unary_echo(req: Request<Incoming>) -> Response<EchoBody> {
    let mut body = req.into_body();
    let mut message = BytesMut::new();
    let mut status = ("0", "ok");
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    if message.len() + data.len() > MAX_GRPC_MESSAGE_BYTES {
                        status = ("8", "request message too large");
                        break;
                    }
                    message.extend_from_slice(data);
                }
            }
            Err(_) => {
                status = ("13", "reading the request failed");
                break;
            }
        }
    }
    // One length-prefixed message: 1 flag byte, 4 length bytes (big endian), the message.
    let framed_len = message
        .get(1..5)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(|b| u32::from_be_bytes(b) as usize + 5);
    if status.0 == "0" && framed_len != Some(message.len()) {
        status = ("3", "expected exactly one length-prefixed message");
    }
    let reply = if status.0 == "0" {
        message.freeze()
    } else {
        Bytes::new()
    };

    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status.0));
    trailers.insert("grpc-message", HeaderValue::from_static(status.1));
    trailers.insert("x-echo-trailer", HeaderValue::from_static("yes"));
    let frames = [Ok(Frame::data(reply)), Ok(Frame::trailers(trailers))];
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
    response(StatusCode::OK, "application/grpc", body)
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn query_u64<B>(req: &Request<B>, key: &str) -> Option<u64> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

fn lossy(v: &HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<EchoBody> {
    match serde_json::to_vec(value) {
        Ok(body) => response(status, "application/json", Full::from(body).boxed()),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn text(status: StatusCode, message: &str) -> Response<EchoBody> {
    let body = Full::from(format!("{message}\n")).boxed();
    response(status, "text/plain; charset=utf-8", body)
}

fn response(status: StatusCode, content_type: &'static str, body: EchoBody) -> Response<EchoBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests;
