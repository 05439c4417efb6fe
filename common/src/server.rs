//! The one listener skeleton every Picket server uses: the data path's listeners, the admin
//! listener, the CA API and the admission webhook.
//!
//! ```text
//! accept (a pause after a failed accept) -> connection limit (refused past it)
//!   -> handle(tcp): [TLS handshake within the header timeout] -> http_builder(settings):
//!      HTTP/1 head within the header timeout, bounded headers (HTTP/1 and HTTP/2)
//! shutdown -> stop accepting -> connections finish (the caller's tracker drains them)
//! ```
//!
//! A client that trickles a request head a byte at a time is closed when the header timeout
//! runs out, and no listener holds more than its connection limit, so a few thousand slow
//! clients cannot pin a listener's file descriptors or memory.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A response body a Picket server sends.
pub trait ResponseBody:
    hyper::body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + 'static
{
}

impl<B> ResponseBody for B
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
}

/// The service of one server connection: answers every request (its errors are responses),
/// with a response body `B`.
pub trait ConnService<B: ResponseBody>:
    hyper::service::Service<
        http::Request<hyper::body::Incoming>,
        Response = http::Response<B>,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Send
    + 'static
{
}

impl<S, B> ConnService<B> for S
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: ResponseBody,
{
}

/// The limits every listener applies, built once per listener from its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSettings {
    /// Open connections; more are refused (closed at once).
    pub max_connections: usize,
    /// Longest a TLS handshake, and an HTTP/1 request head, may take.
    pub header_timeout: Duration,
    /// Largest HTTP/1 request head or HTTP/2 header list, in bytes.
    pub max_header_bytes: usize,
}

impl ListenerSettings {
    /// Settings for a control-plane listener (admin, CA API, webhook): 1,024 connections,
    /// 10 s for the handshake and request head, 64 KiB of headers.
    pub fn control() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
        }
    }

    /// [`ListenerSettings::max_header_bytes`] as the HTTP/2 header list limit.
    pub fn header_list_bytes(&self) -> u32 {
        u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX)
    }

    /// The HTTP/1 read buffer: the header limit, and never below hyper's 8 KiB minimum.
    fn max_buf_size(&self) -> usize {
        self.max_header_bytes.max(8192)
    }
}

/// The HTTP server (HTTP/1.1 and HTTP/2, chosen by ALPN or the HTTP/2 preface) with the
/// listener's limits: the request head must arrive within the header timeout and headers are
/// bounded. [`http1_builder`] and [`http2_builder`] are the same settings for a listener that
/// knows the version from ALPN.
pub fn http_builder(
    settings: &ListenerSettings,
) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .max_buf_size(settings.max_buf_size());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(settings.header_list_bytes())
        .adaptive_window(true);
    builder
}

/// The HTTP/1.1 server with the listener's limits (as [`http_builder`]).
pub fn http1_builder(settings: &ListenerSettings) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .max_buf_size(settings.max_buf_size());
    builder
}

/// The HTTP/2 server with the listener's limits (as [`http_builder`]).
pub fn http2_builder(
    settings: &ListenerSettings,
) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(settings.header_list_bytes())
        .adaptive_window(true);
    builder
}

/// Caps the open connections of one listener.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
}

impl ConnectionLimit {
    /// At most `max` connections at once.
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// A permit held for the life of a connection, or `None` when the listener is full.
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }
}

/// The pause after a failed accept.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// The next connection on `listener`, or `None` once `shutdown` fires. A failed accept is
/// logged (naming `side`) and retried after a short pause: when the process is out of file
/// descriptors every accept fails at once, and retrying without a pause would spin a core.
pub async fn next_connection(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    side: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => return Some(c),
                Err(e) => tracing::warn!(error = %e, "{side} accept failed"),
            },
            () = shutdown.cancelled() => return None,
        }
        tokio::select! {
            () = tokio::time::sleep(ACCEPT_RETRY) => {}
            () = shutdown.cancelled() => return None,
        }
    }
}

/// Accepts on `listener` until `shutdown`: refuses connections past `settings`' limit
/// (calling `refused` for each, to count it), disables Nagle's algorithm, and runs `handle`
/// for each connection on `tracker` while holding its permit. `side` names the listener in
/// logs.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    settings: &ListenerSettings,
    side: &str,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
    refused: impl Fn(SocketAddr),
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = ConnectionLimit::new(settings.max_connections);
    while let Some((tcp, client_addr)) = next_connection(&listener, shutdown, side).await {
        let Some(permit) = limit.try_acquire() else {
            refused(client_addr);
            tracing::warn!(%client_addr, "{side} connection refused: connection limit reached");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let work = handle(tcp, client_addr);
        tracker.spawn(async move {
            work.await;
            drop(permit);
        });
    }
}

/// Runs a hyper connection; on shutdown asks it to finish in-flight requests and close.
pub async fn drain_on<C, T, E>(
    conn: C,
    shutdown: &CancellationToken,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
) -> Result<T, E>
where
    C: Future<Output = Result<T, E>>,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        () = shutdown.cancelled() => {
            graceful(conn.as_mut());
            conn.await
        }
    }
}

/// An HTTPS server: the CA API and the admission webhook.
#[derive(Debug, Clone)]
pub struct TlsServer {
    /// The listener's limits.
    pub settings: ListenerSettings,
    /// Names the server in logs (`CA server`, `webhook`).
    pub side: &'static str,
    /// How long open connections may take to finish after shutdown.
    pub drain_timeout: Duration,
    /// Connections older than this are closed (a client cannot hold one forever).
    pub max_connection_age: Option<Duration>,
}

/// Serves HTTPS on `listener` until `shutdown`, then lets open connections finish for
/// `server.drain_timeout`. Each connection: the connection limit, the TLS handshake within the
/// header timeout, then [`http_builder`] with the service `make_service` builds from the
/// established TLS stream (which carries the client certificate, if any).
pub async fn serve_tls<M, S, B>(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    server: &TlsServer,
    shutdown: &CancellationToken,
    make_service: M,
) where
    M: Fn(&tokio_rustls::server::TlsStream<TcpStream>) -> S + Send + Sync + 'static,
    S: ConnService<B>,
    B: ResponseBody,
{
    let http = Arc::new(http_builder(&server.settings));
    let make_service = Arc::new(make_service);
    let tracker = TaskTracker::new();
    let side = server.side;
    accept_loop(
        listener,
        &server.settings,
        side,
        shutdown,
        &tracker,
        |_| {},
        |tcp, peer| {
            let acceptor = acceptor.clone();
            let http = Arc::clone(&http);
            let make_service = Arc::clone(&make_service);
            let header_timeout = server.settings.header_timeout;
            let max_age = server.max_connection_age;
            let shutdown = shutdown.clone();
            async move {
                let tls = match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "{side} TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "{side} TLS handshake timed out");
                        return;
                    }
                };
                let service = make_service(&tls);
                let conn = http.serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                let serving = drain_on(conn, &shutdown, |c| c.graceful_shutdown());
                let result = match max_age {
                    Some(age) => match tokio::time::timeout(age, serving).await {
                        Ok(r) => r,
                        Err(_) => {
                            tracing::debug!(%peer, "{side} closed a connection open too long");
                            return;
                        }
                    },
                    None => serving.await,
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "{side} connection ended with an error");
                }
            }
        },
    )
    .await;
    tracker.close();
    tracing::info!(connections = tracker.len(), "{side} draining connections");
    if tokio::time::timeout(server.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("{side} connections still open after the drain timeout");
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The body is larger than the limit (it was read and discarded, up to a bound, so the
    /// client can read the answer).
    #[error("request bodies are limited to {0} bytes")]
    TooLarge(usize),
    /// The body did not arrive within the time allowed.
    #[error("the request body did not arrive in time")]
    Timeout,
    /// The connection failed while the body was read.
    #[error("the request body could not be read: {0}")]
    Unreadable(String),
}

/// Reads a request body of at most `max` bytes within `timeout`.
///
/// A body over the limit is still read to its end and thrown away, up to `4 × max` more bytes
/// and within the same `timeout`, before [`BodyError::TooLarge`] is returned: an answer sent
/// while the client is still sending makes HTTP/1.1 clients see a reset connection and
/// HTTP/2 clients a reset stream (their flow-control window fills and the server stops
/// reading), where they should read a 413. A declared `Content-Length` over the limit is not
/// waited for past the discard bound.
pub async fn read_body<B>(body: B, max: usize, timeout: Duration) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let discard_limit = max.saturating_mul(5);
    let mut body = std::pin::pin!(body);
    let mut kept = BytesMut::new();
    let mut seen = 0usize;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(if seen > max {
                    BodyError::TooLarge(max)
                } else {
                    BodyError::Timeout
                });
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Unreadable(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen > discard_limit {
            return Err(BodyError::TooLarge(max));
        }
        if seen <= max {
            kept.extend_from_slice(&data);
        }
    }
    if seen > max {
        return Err(BodyError::TooLarge(max));
    }
    Ok(kept.freeze())
}

#[cfg(test)]
mod tests;
