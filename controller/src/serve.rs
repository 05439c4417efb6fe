//! The discovery service sidecars subscribe to, over mTLS with the mesh's own identities: the
//! controller presents its certificate from the Picket CA, and a sidecar must present an SVID
//! of the same trust domain that chains to the mesh trust bundle (the sidecar's inbound
//! verifier, `Credentials::server_config`).
//!
//! ```text
//! GET /v1/destinations/<ip>/<port>       (HTTP/2; one stream per subscribed address)
//! 200 application/x-ndjson, one JSON value per line, for as long as the stream stays open:
//!   first   "unknown" | {"destination": {"service": "ns/name", "endpoints": [...]}}
//!   then    {"delta": {"added": [...], "removed": ["ip:port", ...]}}   same Service
//!           "unknown" | {"destination": {...}}                          anything else
//! 400 a bad address, 404 another path, 405 another method (JSON {"error": "..."})
//!
//! GET /v1/policies                        the caller's policy set (crate::policy)
//! 200 application/x-ndjson: {"policies": [{"source": "...", "text": "..."}]}, the whole set of
//!     the namespace of the caller's certificate and the root namespace, again at every change
//! ```

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use picket_common::server::{ListenerSettings, TlsServer, serve_tls};
use picket_proxy::tls::Credentials;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::hub::{Hub, update};
use crate::index::Answer;
use crate::policy::{PolicyIndex, set_for};

/// The path prefix of a subscription.
pub const DESTINATIONS_PATH: &str = "/v1/destinations/";
/// The path of the policy subscription.
pub const POLICIES_PATH: &str = "/v1/policies";

/// The policy index and the namespace whose policies apply everywhere.
#[derive(Debug, Clone)]
pub struct PolicyFeed {
    /// The current index of policy objects.
    pub index: watch::Receiver<Arc<PolicyIndex>>,
    /// The policy root namespace (the sidecars' `policy.root_namespace`).
    pub root_namespace: String,
}

/// The streaming answer body.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// How many sidecars may be connected at once.
pub const MAX_CONNECTIONS: usize = 65_536;

/// Serves subscriptions on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    credentials: &Arc<Credentials>,
    hub: Arc<Hub>,
    policies: PolicyFeed,
    shutdown: &CancellationToken,
) -> Result<(), picket_proxy::tls::TlsError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(credentials.server_config()?);
    let server = TlsServer {
        settings: ListenerSettings {
            max_connections: MAX_CONNECTIONS,
            ..ListenerSettings::control()
        },
        side: "discovery",
        drain_timeout: Duration::from_secs(5),
        max_connection_age: None,
    };
    serve_tls(listener, acceptor, &server, shutdown, move |tls| {
        let hub = Arc::clone(&hub);
        let policies = policies.clone();
        // The verifier admitted only SVIDs of the trust domain; the namespace in the
        // certificate decides which policies the caller may read.
        let namespace = picket_proxy::tls::peer_identity(tls.get_ref().1.peer_certificates())
            .map(|id| id.namespace().to_owned());
        hyper::service::service_fn(move |request| {
            let hub = Arc::clone(&hub);
            let policies = policies.clone();
            let namespace = namespace.clone();
            async move {
                let response = if request.uri().path() == POLICIES_PATH {
                    policy_answer(&request, &policies, namespace)
                } else {
                    answer(&request, &hub)
                };
                Ok::<_, Infallible>(response)
            }
        })
    })
    .await;
    Ok(())
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Parses `<ip>/<port>` after the prefix.
pub fn parse_destination(rest: &str) -> Option<SocketAddr> {
    let (ip, port) = rest.rsplit_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    Some(SocketAddr::new(ip, port))
}

fn answer(request: &Request<Incoming>, hub: &Hub) -> Response<Body> {
    let Some(rest) = request.uri().path().strip_prefix(DESTINATIONS_PATH) else {
        return error(
            StatusCode::NOT_FOUND,
            "no such path; subscribe with GET /v1/destinations/<ip>/<port>",
        );
    };
    if request.method() != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "subscriptions are GET requests",
        );
    }
    let Some(addr) = parse_destination(rest) else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("{rest:?} is not <ip>/<port> (a port from 1 to 65535)"),
        );
    };
    let rx = hub.subscribe(addr);
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(updates(rx))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// The lines of one subscription: the current answer, then every change, each as the
/// smallest message that brings the subscriber up to date.
fn updates(
    rx: watch::Receiver<Answer>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    futures_util::stream::unfold((rx, None::<Answer>), |(mut rx, last)| async move {
        loop {
            if last.is_some() && rx.changed().await.is_err() {
                return None;
            }
            let current = rx.borrow_and_update().clone();
            if let Some(message) = update(last.as_ref(), &current) {
                let mut line = serde_json::to_vec(&message).unwrap_or_default();
                line.push(b'\n');
                return Some((Ok(Frame::data(Bytes::from(line))), (rx, Some(current))));
            }
        }
    })
}

/// `GET /v1/policies`: the stream of the caller's policy sets.
fn policy_answer(
    request: &Request<Incoming>,
    policies: &PolicyFeed,
    namespace: Option<String>,
) -> Response<Body> {
    if request.method() != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "subscriptions are GET requests",
        );
    }
    let Some(namespace) = namespace else {
        return error(
            StatusCode::FORBIDDEN,
            "the client certificate names no workload namespace",
        );
    };
    let stream = policy_sets(
        policies.index.clone(),
        namespace,
        policies.root_namespace.clone(),
    );
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// The lines of one policy subscription: the current set, then each set that differs from
/// the last one sent.
fn policy_sets(
    rx: watch::Receiver<Arc<PolicyIndex>>,
    namespace: String,
    root: String,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    let state = (rx, None::<picket_common::policies::ClusterPolicies>);
    futures_util::stream::unfold(state, move |(mut rx, last)| {
        let (namespace, root) = (namespace.clone(), root.clone());
        async move {
            loop {
                if last.is_some() && rx.changed().await.is_err() {
                    return None;
                }
                let index = Arc::clone(&rx.borrow_and_update());
                let set = set_for(&index, &namespace, &root);
                if last.as_ref() != Some(&set) {
                    let mut line = serde_json::to_vec(&set).unwrap_or_default();
                    line.push(b'\n');
                    return Some((Ok(Frame::data(Bytes::from(line))), (rx, Some(set))));
                }
            }
        }
    })
}
