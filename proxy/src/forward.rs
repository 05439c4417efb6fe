//! HTTP forwarding shared by both directions: the body type, hop-by-hop header hygiene,
//! error responses, and the multiplexed HTTP/2 client that keeps one connection per
//! destination.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
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
}

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
    current: ArcSwapOption<SendRequest<Incoming>>,
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

    async fn sender(&self) -> Result<Arc<SendRequest<Incoming>>, ForwardError> {
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
            .adaptive_window(true)
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
    fn forget(&self, stale: &Arc<SendRequest<Incoming>>) {
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
    pub async fn send(&self, req: Request<Incoming>) -> Result<Response<Incoming>, ForwardError> {
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
