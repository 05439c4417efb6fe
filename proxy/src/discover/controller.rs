//! The controller as a discovery source (cluster mode): one multiplexed HTTP/2 mTLS
//! connection to `picket controller` ([`H2Client`]), verified against the controller's
//! configured SPIFFE ID, and one stream per subscribed destination address
//! (`GET /v1/destinations/<ip>/<port>`, JSON lines: a full answer, then deltas; the protocol is
//! in docs/kubernetes.md).
//!
//! When the stream or the connection fails the subscription keeps its last answer (the last
//! known endpoints; [`Resolution::Pending`] if none ever came, so the sidecar uses the
//! original destination) and subscribes again after a backoff ([`Backoff`], full jitter),
//! receiving a full answer first. A subscription ends when its last receiver is dropped.
//!
//! The same connection carries the sidecar's policy subscription ([`policies`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use picket_ca::SpiffeId;
use picket_common::backoff::Backoff;
use picket_common::discovery::{Destination, Update};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{Discover, Resolution};
use crate::forward::{Connect, ForwardError, H2Client, boxed};
use crate::peer::PeerIdentity;
use crate::tls::{ALPN_H2, Credentials, TlsError};

/// The path prefix of a subscription.
pub const DESTINATIONS_PATH: &str = "/v1/destinations/";
/// The longest line the controller may send (a destination with tens of thousands of
/// endpoints fits); a longer one is a protocol error.
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;
/// The first retry waits up to this long, doubling per failure up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(200);
/// The longest wait between attempts.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// How long connecting (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the controller is and who it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerSource {
    /// `host:port` (a DNS name is resolved at every connection).
    pub address: String,
    /// The SPIFFE ID the controller must present.
    pub identity: SpiffeId,
}

/// Opens mTLS connections to the controller.
struct ControllerConnector {
    address: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
}

impl Connect for ControllerConnector {
    type Io = TokioIo<TlsStream<TcpStream>>;

    async fn connect(&self) -> Result<Self::Io, ForwardError> {
        let open = async {
            let tcp = TcpStream::connect(self.address.as_str()).await?;
            let _ = tcp.set_nodelay(true);
            self.tls.connect(self.server_name.clone(), tcp).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
            Ok(Ok(tls)) => Ok(TokioIo::new(tls)),
            Ok(Err(e)) => Err(ForwardError::Unreachable {
                target: format!("controller {}", self.address),
                reason: e.to_string(),
            }),
            Err(_) => Err(ForwardError::Unreachable {
                target: format!("controller {}", self.address),
                reason: format!("no connection within {CONNECT_TIMEOUT:?}"),
            }),
        }
    }
}

/// The controller client: the [`Discover`] source of cluster mode.
pub struct ControllerDiscover {
    shared: Arc<Shared>,
}

struct Shared {
    address: String,
    client: H2Client<ControllerConnector>,
    subscriptions: Mutex<HashMap<SocketAddr, watch::Sender<Resolution>>>,
}

impl std::fmt::Debug for ControllerDiscover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerDiscover")
            .field("address", &self.shared.address)
            .finish_non_exhaustive()
    }
}

/// Why the client could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControllerClientError {
    /// The address is not `host:port`.
    #[error("controller address {0:?} is not host:port")]
    Address(String),
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Splits `host:port` (`[v6]:port` for IPv6) and checks the port.
pub fn server_name(address: &str) -> Option<ServerName<'static>> {
    let (host, port) = address.rsplit_once(':')?;
    port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).ok()
}

impl ControllerDiscover {
    /// A client of the controller at `source`, authenticating with `creds` (renewals are
    /// picked up at every connection). Must be called within a Tokio runtime.
    pub fn new(
        source: &ControllerSource,
        creds: &Arc<Credentials>,
    ) -> Result<Self, ControllerClientError> {
        let server_name = server_name(&source.address)
            .ok_or_else(|| ControllerClientError::Address(source.address.clone()))?;
        let tls = creds.client_config(PeerIdentity::Exact(source.identity.clone()), &[ALPN_H2])?;
        let connector = ControllerConnector {
            address: source.address.clone(),
            server_name,
            tls: TlsConnector::from(tls),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                address: source.address.clone(),
                client: H2Client::new(connector, 64 * 1024),
                subscriptions: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl Discover for ControllerDiscover {
    fn subscribe(&self, destination: SocketAddr) -> watch::Receiver<Resolution> {
        let destination = SocketAddr::new(destination.ip().to_canonical(), destination.port());
        let mut subscriptions = self
            .shared
            .subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        subscriptions.retain(|_, tx| !tx.is_closed());
        if let Some(tx) = subscriptions.get(&destination) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(Resolution::Pending);
        subscriptions.insert(destination, tx.clone());
        tokio::spawn(follow(Arc::clone(&self.shared), destination, tx));
        rx
    }
}

/// Why one subscription stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("{0}")]
    Connect(#[from] ForwardError),
    #[error("the controller answered {0}")]
    Status(StatusCode),
    #[error("the stream broke: {0}")]
    Broken(String),
    #[error("the controller closed the stream")]
    Closed,
    #[error("a message from the controller is unreadable: {0}")]
    Protocol(String),
}

/// One subscription stream from the controller: a GET whose answer is JSON lines, one
/// message a line, each at most [`MAX_LINE_BYTES`].
struct JsonLines {
    body: hyper::body::Incoming,
    buffer: BytesMut,
}

impl JsonLines {
    /// Sends `GET path` on the controller connection and checks the status.
    async fn open(shared: &Shared, path: &str) -> Result<Self, StreamError> {
        let request = Request::get(format!("https://controller{path}"))
            .body(boxed(Empty::<Bytes>::new()))
            .map_err(|e| StreamError::Protocol(e.to_string()))?;
        let response = shared.client.send(request).await?;
        if response.status() != StatusCode::OK {
            return Err(StreamError::Status(response.status()));
        }
        Ok(Self {
            body: response.into_body(),
            buffer: BytesMut::new(),
        })
    }

    /// The next message; the end of the stream is an error ([`StreamError::Closed`]): the
    /// controller keeps a subscription open.
    async fn next<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, StreamError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line = self.buffer.split_to(end + 1);
                return serde_json::from_slice(&line[..end])
                    .map_err(|e| StreamError::Protocol(e.to_string()));
            }
            if self.buffer.remaining() > MAX_LINE_BYTES {
                return Err(StreamError::Protocol(format!(
                    "a line longer than {MAX_LINE_BYTES} bytes"
                )));
            }
            let frame = match self.body.frame().await {
                None => return Err(StreamError::Closed),
                Some(Err(e)) => return Err(StreamError::Broken(e.to_string())),
                Some(Ok(frame)) => frame,
            };
            if let Ok(data) = frame.into_data() {
                self.buffer.extend_from_slice(&data);
            }
        }
    }
}

/// Keeps one subscription up to date until nobody holds a receiver.
async fn follow(shared: Arc<Shared>, destination: SocketAddr, tx: watch::Sender<Resolution>) {
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    loop {
        let result = tokio::select! {
            r = stream_once(&shared, destination, &tx, &mut backoff) => r,
            () = tx.closed() => return,
        };
        let wait = backoff.next_delay();
        match result {
            Err(e) => tracing::warn!(
                controller = %shared.address,
                %destination,
                error = %e,
                retry_in = ?wait,
                "discovery subscription interrupted; keeping the last answer"
            ),
            Ok(()) => return,
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = tx.closed() => return,
        }
    }
}

/// One subscription stream: sends the request and applies each line until the stream ends.
async fn stream_once(
    shared: &Shared,
    destination: SocketAddr,
    tx: &watch::Sender<Resolution>,
    backoff: &mut Backoff,
) -> Result<(), StreamError> {
    let path = format!(
        "{DESTINATIONS_PATH}{}/{}",
        destination.ip(),
        destination.port()
    );
    let mut lines = JsonLines::open(shared, &path).await?;
    let mut current: Option<Destination> = None;
    loop {
        let update: Update = lines.next().await?;
        apply(update, &mut current, tx)?;
        // A stream that delivered an answer is healthy: the next failure starts over.
        *backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    }
}

/// Applies one message to the subscription's state and publishes the result.
fn apply(
    update: Update,
    current: &mut Option<Destination>,
    tx: &watch::Sender<Resolution>,
) -> Result<(), StreamError> {
    match update {
        Update::Unknown => {
            *current = None;
            tx.send_replace(Resolution::Unknown);
        }
        Update::Destination(destination) => {
            tx.send_replace(Resolution::Known(Arc::new(destination.clone())));
            *current = Some(destination);
        }
        Update::Delta(delta) => {
            let Some(destination) = current.as_mut() else {
                return Err(StreamError::Protocol(
                    "a delta before any destination".to_owned(),
                ));
            };
            delta.apply(destination);
            tx.send_replace(Resolution::Known(Arc::new(destination.clone())));
        }
    }
    Ok(())
}

pub mod policies;

#[cfg(test)]
mod tests;
