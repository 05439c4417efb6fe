//! The health listener: the app's kubelet probes, rewritten by the injector to
//! `GET /app-health/<container>/<kind>` on this listener (never intercepted), are carried to
//! the app from inside the pod, where no mTLS is needed.
//!
//! | probe | what the listener does | answer |
//! |---|---|---|
//! | `httpGet` | the same GET (path, query, headers, HTTP or HTTPS) to the app on loopback, on a fresh connection | the app's status, no body |
//! | `tcpSocket` | a TCP connect to the app's port | 200 if the app accepted, 503 otherwise |
//! | `grpc` | `grpc.health.v1.Health/Check` with the probe's service name, over h2c | 200 if the app answers SERVING, 503 otherwise |
//!
//! Every check runs within the probe's own timeout; an app that does not answer in time
//! fails the probe (503). The listener never answers a probe from its own state: if the app
//! is down, the probe fails however healthy the sidecar is.
//!
//! The gRPC health request and response are two one-field protobuf messages, encoded and
//! decoded here by hand rather than pulling in a protobuf code generator for them.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use picket_common::server::{self, ListenerSettings};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AppProbe, ProbeCheck};
use crate::forward::{self, Body};

/// The path prefix of rewritten probes.
pub const PATH_PREFIX: &str = "/app-health/";

/// Why a probe failed (logged at debug level; the kubelet sees only the status).
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("the app did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect to the app on port {port}: {source}")]
    Connect { port: u16, source: std::io::Error },
    #[error("{0}")]
    Protocol(String),
}

fn protocol(e: impl std::fmt::Display) -> ProbeError {
    ProbeError::Protocol(e.to_string())
}

/// Serves `probes` on `listener` until `shutdown`, with the connection limit and header
/// timeout of every listener (`settings`).
pub async fn serve(
    listener: TcpListener,
    probes: Arc<BTreeMap<String, AppProbe>>,
    tls: Arc<rustls::ClientConfig>,
    settings: ListenerSettings,
    shutdown: CancellationToken,
) {
    let http = server::http1_builder(&settings);
    let tracker = TaskTracker::new();
    server::accept_loop(
        listener,
        &settings,
        "health",
        &shutdown,
        &tracker,
        |_| {},
        |tcp, _| {
            let probes = Arc::clone(&probes);
            let tls = Arc::clone(&tls);
            let http = http.clone();
            async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let probes = Arc::clone(&probes);
                    let tls = Arc::clone(&tls);
                    let method = req.method().clone();
                    let path = req.uri().path().to_owned();
                    let user_agent = req.headers().get(header::USER_AGENT).cloned();
                    async move {
                        Ok::<_, Infallible>(answer(&probes, &tls, &method, &path, user_agent).await)
                    }
                });
                if let Err(e) = http.serve_connection(TokioIo::new(tcp), svc).await {
                    tracing::debug!(error = %e, "health connection ended with an error");
                }
            }
        },
    )
    .await;
}

fn status_only(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(forward::boxed(Full::new(Bytes::new())));
    *resp.status_mut() = status;
    resp
}

async fn answer(
    probes: &BTreeMap<String, AppProbe>,
    tls: &Arc<rustls::ClientConfig>,
    method: &Method,
    path: &str,
    user_agent: Option<HeaderValue>,
) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return forward::error_response(StatusCode::METHOD_NOT_ALLOWED, "probes take GET");
    }
    let Some(probe) = path
        .strip_prefix(PATH_PREFIX)
        .and_then(|name| probes.get(name))
    else {
        return forward::error_response(StatusCode::NOT_FOUND, "no such probe");
    };
    let result = tokio::time::timeout(probe.timeout, check(probe, tls, user_agent)).await;
    let outcome = result.unwrap_or(Err(ProbeError::Timeout(probe.timeout)));
    match outcome {
        Ok(status) => status_only(status),
        Err(e) => {
            tracing::debug!(path, error = %e, "app probe failed");
            status_only(StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}

/// Connects to the app's `port` on IPv4 loopback, or IPv6 loopback if nothing listens on
/// IPv4 (an app bound to `::` only).
async fn connect_app(port: u16) -> Result<TcpStream, ProbeError> {
    match TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await {
        Ok(s) => Ok(s),
        Err(first) => TcpStream::connect(SocketAddr::from((Ipv6Addr::LOCALHOST, port)))
            .await
            .map_err(|_| ProbeError::Connect {
                port,
                source: first,
            }),
    }
}

async fn check(
    probe: &AppProbe,
    tls: &Arc<rustls::ClientConfig>,
    user_agent: Option<HeaderValue>,
) -> Result<StatusCode, ProbeError> {
    match &probe.check {
        ProbeCheck::Tcp { port } => {
            drop(connect_app(*port).await?);
            Ok(StatusCode::OK)
        }
        ProbeCheck::Http {
            port,
            path,
            https,
            headers,
        } => {
            let tcp = connect_app(*port).await?;
            let mut req = Request::builder()
                .method(Method::GET)
                .uri(path.as_str())
                .header(header::HOST, format!("127.0.0.1:{port}"))
                .header(header::CONNECTION, "close");
            if let Some(ua) = user_agent {
                req = req.header(header::USER_AGENT, ua);
            }
            let mut req = req.body(Empty::<Bytes>::new()).map_err(protocol)?;
            // The probe's own headers win, as the kubelet's do (a probe may set Host).
            for (name, value) in headers {
                let name = HeaderName::from_bytes(name.as_bytes()).map_err(protocol)?;
                let value = HeaderValue::from_str(value).map_err(protocol)?;
                req.headers_mut().insert(name, value);
            }
            if *https {
                let server_name = rustls::pki_types::ServerName::IpAddress(
                    std::net::IpAddr::from(Ipv4Addr::LOCALHOST).into(),
                );
                let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
                    .connect(server_name, tcp)
                    .await
                    .map_err(protocol)?;
                http1_status(stream, req).await
            } else {
                http1_status(tcp, req).await
            }
        }
        ProbeCheck::Grpc { port, service } => {
            let tcp = connect_app(*port).await?;
            grpc_health(tcp, service).await
        }
    }
}

async fn http1_status<I>(io: I, req: Request<Empty<Bytes>>) -> Result<StatusCode, ProbeError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(protocol)?;
    let conn = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(protocol);
    conn.abort();
    Ok(resp?.status())
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

async fn grpc_health(tcp: TcpStream, service: &str) -> Result<StatusCode, ProbeError> {
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(protocol)?;
    let conn = tokio::spawn(conn);
    let result = async {
        let req = Request::builder()
            .method(Method::POST)
            .uri("http://127.0.0.1/grpc.health.v1.Health/Check")
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .body(Full::new(grpc_health_request(service)))
            .map_err(protocol)?;
        let resp = sender.send_request(req).await.map_err(protocol)?;
        let (parts, body) = resp.into_parts();
        if parts.status != StatusCode::OK {
            return Err(protocol(format!("gRPC answered HTTP {}", parts.status)));
        }
        let collected = body.collect().await.map_err(protocol)?;
        let grpc_status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| parts.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if grpc_status.as_deref() != Some("0") {
            return Err(protocol(format!("grpc-status {grpc_status:?}")));
        }
        match serving_status(&collected.to_bytes()) {
            Some(SERVING) => Ok(StatusCode::OK),
            other => Err(protocol(format!("serving status {other:?}"))),
        }
    }
    .await;
    conn.abort();
    result
}

/// One length-prefixed gRPC message holding `HealthCheckRequest { service = 1 }`.
fn grpc_health_request(service: &str) -> Bytes {
    let mut message = Vec::with_capacity(service.len() + 3);
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0); // not compressed
    framed.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    framed.extend_from_slice(&message);
    Bytes::from(framed)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.first()?;
        buf.advance(1);
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The `status` (field 1) of the `HealthCheckResponse` in one length-prefixed gRPC message;
/// absent means 0 (UNKNOWN), as protobuf defaults say. `None` if the message is malformed or
/// compressed.
fn serving_status(framed: &[u8]) -> Option<u64> {
    let (&flag, rest) = framed.split_first()?;
    if flag != 0 || rest.len() < 4 {
        return None;
    }
    let (len, mut message) = rest.split_at(4);
    let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
    if message.len() != len {
        return None;
    }
    let mut status = 0;
    while !message.is_empty() {
        let key = get_varint(&mut message)?;
        match key & 7 {
            0 => {
                let v = get_varint(&mut message)?;
                if key >> 3 == 1 {
                    status = v;
                }
            }
            2 => {
                let n = usize::try_from(get_varint(&mut message)?).ok()?;
                message = message.get(n..)?;
            }
            1 => message = message.get(8..)?,
            5 => message = message.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

/// TLS for HTTPS probes: like the kubelet, the app's certificate is not verified (the
/// connection never leaves the pod); handshake signatures are still checked with the one
/// provider.
pub fn probe_tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = picket_common::crypto::provider();
    let verifier = Arc::new(AnyServerCert {
        algorithms: provider.signature_verification_algorithms,
    });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

#[derive(Debug)]
struct AnyServerCert {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
