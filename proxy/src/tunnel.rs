//! WebSocket through the mesh: the two ways a request asks for one, and the tunnel that carries
//! it once the app has agreed.
//!
//! ```text
//! app --HTTP/1.1 GET + Upgrade: websocket (RFC 6455)--> outbound   | or h2c extended CONNECT
//!   -> policy-free syntax checks, then one extended CONNECT stream (RFC 8441, :protocol
//!      websocket) on the upstream's shared HTTP/2 mTLS connection
//! inbound <-- that stream (or an HTTP/1.1 upgrade straight at the inbound port)
//!   -> canonical request (method GET for policy) -> policy decides -> the app:
//!      HTTP/1.1 app: GET + Upgrade on a connection of its own; h2c app: extended CONNECT
//!   app answers 101 (h2c: 200) -> only then: 2xx back over the stream, 101 to the caller,
//!   and bytes are spliced both ways with one idle timeout; flow records as for an opaque
//!   TCP connection: open (the detectors act on it), interim every active timeout, and the
//!   end with the bytes. Any other answer is an ordinary response and no tunnel opens.
//! ```
//!
//! A client must wait for the 101 before it sends (RFC 6455 section 4.1). Bytes it sent
//! earlier would otherwise reach the app as tunnel data, so a tunnel whose client had sent
//! bytes the sidecar already holds when the 101 goes out is closed at once and nothing of it
//! reaches the app ([`client_end`]). That check is made on an HTTP/1.1 client end only, where
//! the bytes the server read before it wrote the 101 are known exactly. Over HTTP/2 the 2xx
//! is queued on a connection that another task writes, and nothing tells when it left: data
//! found on the stream when the tunnel starts may well have been sent after it (a busy
//! sidecar starts the tunnel late, and the peer's first frames are already there), so
//! refusing it closed sound tunnels. Stream data is only ever tunnel data: a stream whose
//! server did not agree ends with whatever it carried, never parsed as a request; and the
//! caller's own sidecar has made the HTTP/1.1 check on its caller's connection.
//!
//! A tunnel has one idle timeout (`timeouts.idle`), on its client end, which every byte of the
//! tunnel passes in one direction or the other: the tunnel closes once no byte has moved either
//! way for that long. Over an HTTP/1.1 upgrade the client end is the caller's connection, whose
//! idle timer goes on from its last byte (the 101 or an earlier one) and is not doubled by a
//! second one. Over HTTP/2 the client end is one stream of a connection shared with other
//! streams, whose traffic says nothing of this one: the stream gets its own timer when the
//! tunnel opens.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Version};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::net::park::ParkIo;
use crate::net::{IdleTimeout, ServeIo};
use crate::telemetry::TunnelEnd;

/// The upgrade token and `:protocol` of WebSocket.
pub const WEBSOCKET: &str = "websocket";

/// How a request asks for a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// HTTP/1.1 `GET` with `Connection: upgrade` and `Upgrade: websocket` (RFC 6455); the
    /// server agrees with 101.
    Upgrade,
    /// HTTP/2 extended CONNECT with `:protocol websocket` (RFC 8441); the server agrees with 2xx.
    ExtendedConnect,
}

/// Whether `parts` asks for a WebSocket, and how. An HTTP/1.1 upgrade to anything else (such
/// as `h2c`) is no WebSocket: its `Upgrade` and `Connection` headers are removed as hop-by-hop
/// and it is forwarded as an ordinary request.
pub fn form(parts: &Parts) -> Option<Form> {
    if parts.version == Version::HTTP_2 {
        let protocol = parts.extensions.get::<hyper::ext::Protocol>()?;
        return (parts.method == Method::CONNECT
            && protocol.as_str().eq_ignore_ascii_case(WEBSOCKET))
        .then_some(Form::ExtendedConnect);
    }
    let upgrade = parts.version == Version::HTTP_11
        && parts.method == Method::GET
        && has_token(&parts.headers, header::CONNECTION, "upgrade")
        && has_token(&parts.headers, header::UPGRADE, WEBSOCKET);
    upgrade.then_some(Form::Upgrade)
}

/// Whether an HTTP/2 request is an extended CONNECT (carries `:protocol`).
pub fn is_extended_connect(parts: &Parts) -> bool {
    parts.method == Method::CONNECT && parts.extensions.get::<hyper::ext::Protocol>().is_some()
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Marks `parts` as the extended CONNECT of a WebSocket (over HTTP/2).
pub fn as_extended_connect(parts: &mut Parts) {
    parts.method = Method::CONNECT;
    parts.version = Version::HTTP_2;
    parts
        .extensions
        .insert(hyper::ext::Protocol::from_static(WEBSOCKET));
    parts.headers.remove(header::CONNECTION);
    parts.headers.remove(header::UPGRADE);
}

/// Marks `parts` as the HTTP/1.1 upgrade request of a WebSocket.
pub fn as_upgrade(parts: &mut Parts) {
    parts.method = Method::GET;
    parts.version = Version::HTTP_11;
    parts.extensions.remove::<hyper::ext::Protocol>();
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static(WEBSOCKET));
}

/// The answer that opens the tunnel towards a client that asked in `form`, from the headers of
/// the app's (or peer sidecar's) agreement: 101 with `Upgrade: websocket` for an HTTP/1.1
/// upgrade, 200 for an extended CONNECT. `headers` have had their hop-by-hop fields removed.
pub fn agreement(form: Form, headers: HeaderMap) -> http::Response<crate::forward::Body> {
    let mut resp = http::Response::new(crate::forward::boxed(http_body_util::Empty::new()));
    *resp.headers_mut() = headers;
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    match form {
        Form::Upgrade => {
            *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            resp.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static(WEBSOCKET));
        }
        Form::ExtendedConnect => *resp.status_mut() = http::StatusCode::OK,
    }
    resp
}

/// Whether a response agrees to open the tunnel: 101 to an HTTP/1.1 upgrade, 2xx to an
/// extended CONNECT.
pub fn agreed(form: Form, status: http::StatusCode) -> bool {
    match form {
        Form::Upgrade => status == http::StatusCode::SWITCHING_PROTOCOLS,
        Form::ExtendedConnect => status.is_success(),
    }
}

/// One end of a tunnel as a tokio stream.
pub trait TunnelIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> TunnelIo for T {}

/// Turns the client's side of an upgraded connection into a tunnel end under the tunnel's one
/// idle timeout (see the module documentation), or refuses it with the number of bytes the
/// client sent before the agreement went out.
///
/// `I` is the stream the HTTP/1 server was given (wrapped in `TokioIo`), the connection under
/// its idle timeout: from it the bytes the server had read beyond the request head are known
/// exactly, and any is a client that did not wait; its idle timer becomes the tunnel's. Over
/// HTTP/2 (the request was a stream) nothing is refused (the module documentation says why)
/// and the stream gets a timer of `idle`.
pub fn client_end<I: ServeIo>(
    upgraded: Upgraded,
    idle: Duration,
) -> Result<IdleTimeout<Box<dyn TunnelIo>>, usize> {
    let upgraded = match upgraded.downcast::<TokioIo<I>>() {
        Ok(parts) if parts.read_buf.is_empty() => return Ok(parts.io.into_inner().into_tunnel()),
        Ok(parts) => return Err(parts.read_buf.len()),
        Err(upgraded) => upgraded,
    };
    // A plain TCP connection's HTTP/1 server reads through the stream that parks it.
    match upgraded.downcast::<TokioIo<ParkIo>>() {
        Ok(parts) => {
            let (io, unread) = parts.io.into_inner().into_tunnel_end();
            match parts.read_buf.len() + unread.len() {
                0 => Ok(io.boxed()),
                early => Err(early),
            }
        }
        Err(upgraded) => Ok(IdleTimeout::new(Box::new(TokioIo::new(upgraded)), idle)),
    }
}

/// [`client_end`] for the stream type of one server connection.
pub type ClientEnd = fn(Upgraded, Duration) -> Result<IdleTimeout<Box<dyn TunnelIo>>, usize>;

/// A tunnel agreed to and answered, waiting for both connections to be handed over.
#[derive(Debug)]
pub struct Pending {
    /// The caller's connection (or stream), once the agreement has been written to it.
    pub client: hyper::upgrade::OnUpgrade,
    /// The app's connection (inbound) or the stream to the peer sidecar (outbound).
    pub server: hyper::upgrade::OnUpgrade,
}

/// Runs a tunnel once its agreement has been sent: both ends handed over, the client end
/// checked ([`client_end`]), the flow recorded open, bytes spliced until both sides finish or
/// the tunnel idles for `idle` (its one idle timeout, on the client end; an interim record
/// every active timeout meanwhile, as for an opaque TCP connection), then the end recorded with
/// the bytes that moved.
pub fn spawn(
    pending: Pending,
    client_end: ClientEnd,
    idle: Duration,
    mut flow: crate::pipeline::TunnelFlow,
    telemetry: crate::telemetry::Telemetry,
) {
    tokio::spawn(async move {
        let (bytes, end) = match (pending.client.await, pending.server.await) {
            (Ok(client), Ok(server)) => match client_end(client, idle) {
                Ok(mut client) => {
                    flow.open(&telemetry);
                    let mut server = server_end(server);
                    let (bytes, end) = flow.splice(&mut client, &mut server, &telemetry).await;
                    (Some(bytes), end)
                }
                Err(early) => {
                    tracing::info!(
                        bytes = early,
                        "WebSocket closed: the client sent data before the server agreed; none of it reached the server"
                    );
                    (None, TunnelEnd::EarlyData)
                }
            },
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "WebSocket tunnel not opened: a connection was not handed over");
                (None, TunnelEnd::NotHandedOver)
            }
        };
        flow.finish(bytes, end, &telemetry);
    });
}

/// The app's (or the peer sidecar's) side of an upgraded connection as a tunnel end.
pub fn server_end(upgraded: Upgraded) -> Box<dyn TunnelIo> {
    Box::new(TokioIo::new(upgraded))
}

#[cfg(test)]
mod tests;
