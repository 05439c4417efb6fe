//! A client of the CA's HTTPS API, for the sidecar and for tests.
//!
//! Each call opens one TLS 1.3 connection, verifies the CA's server certificate against the
//! given trust PEM and the URL's host name (or IP address), sends one HTTP/1.1 request and
//! closes. An attempt that takes longer than ten seconds fails with [`ClientError::Timeout`].
//!
//! A client may know several CA URLs (replicas, [`CaClient::with_urls`]). A call goes to the
//! URL that answered last; when that CA cannot be reached, times out, breaks the exchange or
//! answers 5xx (unavailable, or a replica that redeems no join tokens), the same call is sent
//! to the next URL in turn, once each. Only when every URL failed does the call fail, with the
//! last error, and the caller's backoff applies. A 4xx answer is final: another replica would
//! refuse the same credential the same way.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::api;
use picket_common::crypto::{self, KxGroup, PROTOCOL_VERSIONS, provider};

/// Longest one call may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer the client reads.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Why a call to the CA failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The CA URL is not `https://host[:port]`.
    #[error("invalid CA URL {0:?}: expected https://host[:port]")]
    InvalidUrl(String),
    /// The trust PEM holds no usable certificate.
    #[error("invalid CA trust bundle: {0}")]
    InvalidTrust(String),
    /// The request could not be encoded.
    #[error("cannot encode the request: {0}")]
    Encode(#[from] serde_json::Error),
    /// The join token cannot be sent in an HTTP header.
    #[error("the join token holds characters that cannot be sent in a header")]
    InvalidToken,
    /// The TLS client configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The CA could not be reached, or the TLS handshake with it failed.
    #[error("cannot reach the CA: {0}")]
    Connect(#[source] std::io::Error),
    /// The HTTP exchange failed part way.
    #[error("HTTP exchange with the CA failed: {0}")]
    Http(#[from] hyper::Error),
    /// No complete answer within the request timeout.
    #[error("the CA did not answer within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    /// The CA refused the request (4xx). Retrying with the same credential and CSR will not
    /// help.
    #[error("the CA refused the request ({status} {code}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The stable error code, or `unknown` if the answer was not a CA error.
        code: String,
        /// The CA's explanation.
        message: String,
    },
    /// The CA failed on its side (5xx); a later retry may succeed.
    #[error("the CA is unavailable ({status}): {message}")]
    Unavailable {
        /// HTTP status.
        status: u16,
        /// The CA's explanation.
        message: String,
    },
    /// The CA said yes but the answer does not parse.
    #[error("unexpected answer from the CA: {0}")]
    InvalidResponse(String),
}

/// Told the key-exchange group of every TLS handshake a [`CaClient`] completes.
pub type HandshakeObserver = Arc<dyn Fn(KxGroup) + Send + Sync>;

/// A client of one CA (reached at one or more URLs). Clones share the trust:
/// [`CaClient::set_trust`] on one reaches all.
#[derive(Clone)]
pub struct CaClient {
    /// Never empty.
    origins: Arc<[HttpsOrigin]>,
    /// The index of the origin that answered last: calls start there.
    preferred: Arc<AtomicUsize>,
    trust: Arc<ArcSwap<Trust>>,
    observer: Option<HandshakeObserver>,
}

/// The roots the CA's server certificate must chain to, and the configuration for calls
/// without a client certificate, replaced together.
struct Trust {
    roots: Arc<RootCertStore>,
    anonymous: Arc<ClientConfig>,
}

impl Trust {
    fn new(pem: &[u8]) -> Result<Self, ClientError> {
        let roots = Arc::new(root_store(pem).map_err(ClientError::InvalidTrust)?);
        Ok(Self {
            anonymous: Arc::new(client_config(Arc::clone(&roots), None)?),
            roots,
        })
    }
}

impl fmt::Debug for CaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<&str> = self.origins.iter().map(HttpsOrigin::url).collect();
        f.debug_struct("CaClient")
            .field("urls", &urls)
            .finish_non_exhaustive()
    }
}

impl CaClient {
    /// A client of the CA at `url` (`https://host[:port]`), whose server certificate must chain
    /// to a certificate in `ca_trust_pem`.
    pub fn new(url: &str, ca_trust_pem: &[u8]) -> Result<Self, ClientError> {
        Self::with_urls(&[url], ca_trust_pem)
    }

    /// A client of the CA replicas at `urls` (each `https://host[:port]`, at least one), tried
    /// in turn as the module documentation says; every replica's server certificate must chain
    /// to a certificate in `ca_trust_pem`.
    pub fn with_urls(urls: &[impl AsRef<str>], ca_trust_pem: &[u8]) -> Result<Self, ClientError> {
        let origins = urls
            .iter()
            .map(|url| {
                let url = url.as_ref();
                HttpsOrigin::parse(url).ok_or_else(|| ClientError::InvalidUrl(url.to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if origins.is_empty() {
            return Err(ClientError::InvalidUrl(String::new()));
        }
        Ok(Self {
            origins: origins.into(),
            preferred: Arc::new(AtomicUsize::new(0)),
            trust: Arc::new(ArcSwap::from_pointee(Trust::new(ca_trust_pem)?)),
            observer: None,
        })
    }

    /// Calls `observer` with the key-exchange group of each handshake with the CA (the
    /// sidecar counts them in its metrics).
    pub fn with_handshake_observer(mut self, observer: HandshakeObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Trusts the roots in `ca_trust_pem` from the next call on (a root rotation changes them
    /// while the workload runs). On error the current trust stays.
    pub fn set_trust(&self, ca_trust_pem: &[u8]) -> Result<(), ClientError> {
        self.trust.store(Arc::new(Trust::new(ca_trust_pem)?));
        Ok(())
    }

    /// How many roots the client trusts now.
    pub fn trusted_roots(&self) -> usize {
        self.trust.load().roots.len()
    }

    /// Asks for a certificate for the public key in `csr_pem`, proving identity with a join
    /// token.
    pub async fn issue_with_token(
        &self,
        csr_pem: &str,
        token: &str,
    ) -> Result<api::CertificateResponse, ClientError> {
        self.issue_at(api::CERTIFICATES_PATH, csr_pem, token).await
    }

    /// Asks for a TLS server certificate for the public key in `csr_pem`, carrying the DNS
    /// names the CA allows the token's identity (see the server's `/v1/server-certificates`).
    /// The token is a join token or a Kubernetes service-account token.
    pub async fn issue_server_certificate(
        &self,
        csr_pem: &str,
        token: &str,
    ) -> Result<api::CertificateResponse, ClientError> {
        self.issue_at(api::SERVER_CERTIFICATES_PATH, csr_pem, token)
            .await
    }

    /// A certificate request to `path` for the public key in `csr_pem`, authorised by the
    /// bearer `token`.
    async fn issue_at(
        &self,
        path: &'static str,
        csr_pem: &str,
        token: &str,
    ) -> Result<api::CertificateResponse, ClientError> {
        let mut request = certificate_request(path, csr_pem)?;
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, bearer(token)?);
        let (status, body) = self.exchange(request, None).await?;
        parse_certificate(status, &body)
    }

    /// Asks for a new certificate for the public key in `csr_pem`, proving identity with the
    /// current certificate, presented as the TLS client certificate.
    pub async fn renew(
        &self,
        csr_pem: &str,
        current: Arc<CertifiedKey>,
    ) -> Result<api::CertificateResponse, ClientError> {
        let (status, body) = self
            .exchange(
                certificate_request(api::CERTIFICATES_PATH, csr_pem)?,
                Some(current),
            )
            .await?;
        parse_certificate(status, &body)
    }

    /// The CA's trust bundle, PEM.
    pub async fn trust_bundle(&self) -> Result<String, ClientError> {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = Uri::from_static(api::TRUST_BUNDLE_PATH);
        let (status, body) = self.exchange(request, None).await?;
        check_status(status, &body)?;
        String::from_utf8(body.to_vec()).map_err(|e| ClientError::InvalidResponse(e.to_string()))
    }

    /// The URL calls go to first: the one that answered last.
    pub fn current_url(&self) -> &str {
        let index = self.preferred.load(Ordering::Relaxed) % self.origins.len();
        self.origins.get(index).map_or("", HttpsOrigin::url)
    }

    /// Sends `request` on a new connection, presenting `client_cert` if given, and returns the
    /// status and body of the answer: from the preferred URL, or the next that answers (see
    /// the module documentation).
    pub(crate) async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        client_cert: Option<Arc<CertifiedKey>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let trust = self.trust.load_full();
        let config = match client_cert {
            None => Arc::clone(&trust.anonymous),
            Some(cert) => Arc::new(client_config(Arc::clone(&trust.roots), Some(cert))?),
        };
        let count = self.origins.len();
        if count == 1 {
            return self.attempt(0, Arc::clone(&config), request).await;
        }
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_else(|never| match never {});
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = None;
        for step in 0..count {
            let index = (first + step) % count;
            let mut attempt = Request::new(Full::new(body.clone()));
            *attempt.method_mut() = parts.method.clone();
            *attempt.uri_mut() = parts.uri.clone();
            *attempt.headers_mut() = parts.headers.clone();
            let result = self.attempt(index, Arc::clone(&config), attempt).await;
            let failed_over = match &result {
                Ok((status, _)) if status.is_server_error() => {
                    Some(format!("the CA answered {status}"))
                }
                Ok(_) => None,
                Err(
                    e @ (ClientError::Connect(_) | ClientError::Timeout | ClientError::Http(_)),
                ) => Some(e.to_string()),
                Err(_) => None,
            };
            let Some(reason) = failed_over else {
                self.preferred.store(index, Ordering::Relaxed);
                return result;
            };
            if let Some(next) = self.origins.get((index + 1) % count)
                && step + 1 < count
            {
                tracing::warn!(
                    url = self.origins.get(index).map_or("", HttpsOrigin::url),
                    error = %reason,
                    next = next.url(),
                    "CA replica unavailable; trying the next CA URL"
                );
            }
            last = Some(result);
        }
        last.unwrap_or(Err(ClientError::InvalidUrl(String::new())))
    }

    /// One exchange with the origin at `index`, within [`REQUEST_TIMEOUT`].
    async fn attempt(
        &self,
        index: usize,
        config: Arc<ClientConfig>,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let Some(origin) = self.origins.get(index) else {
            return Err(ClientError::InvalidUrl(String::new()));
        };
        let exchange =
            origin.round_trip(config, request, MAX_RESPONSE_BYTES, self.observer.as_ref());
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(ExchangeError::Connect(e))) => Err(ClientError::Connect(e)),
            Ok(Err(ExchangeError::Http(e))) => Err(ClientError::Http(e)),
            Ok(Err(ExchangeError::Body(e))) => Err(ClientError::InvalidResponse(e)),
        }
    }
}

/// An `https://host[:port]` base URL, checked once and kept split for connecting.
#[derive(Debug, Clone)]
pub(crate) struct HttpsOrigin {
    url: String,
    host: String,
    port: u16,
    host_header: HeaderValue,
    server_name: ServerName<'static>,
}

/// Why one HTTPS exchange failed.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// No TCP connection, or the TLS handshake failed.
    Connect(std::io::Error),
    /// The HTTP exchange failed part way.
    Http(hyper::Error),
    /// The answer's body could not be read (or was too large).
    Body(String),
}

impl HttpsOrigin {
    /// Parses `https://host[:port]` (an optional trailing `/`); anything else is `None`.
    pub(crate) fn parse(url: &str) -> Option<Self> {
        let uri: Uri = url.parse().ok()?;
        let authority = uri.authority()?;
        if uri.scheme_str() != Some("https")
            || !matches!(uri.path(), "" | "/")
            || uri.query().is_some()
            || authority.as_str().contains('@')
        {
            return None;
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Some(Self {
            url: url.to_owned(),
            port: authority.port_u16().unwrap_or(443),
            server_name: ServerName::try_from(host.clone()).ok()?,
            host_header: HeaderValue::from_str(authority.as_str()).ok()?,
            host,
        })
    }

    /// The URL this origin was parsed from.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Sends `request` (its URI holds only the path) on a new TLS connection made with
    /// `config`, and reads at most `max_body` bytes of the answer; `observer` learns the
    /// connection's key-exchange group. The caller bounds the time.
    pub(crate) async fn round_trip(
        &self,
        config: Arc<ClientConfig>,
        mut request: Request<Full<Bytes>>,
        max_body: usize,
        observer: Option<&HandshakeObserver>,
    ) -> Result<(StatusCode, Bytes), ExchangeError> {
        request
            .headers_mut()
            .insert(header::HOST, self.host_header.clone());
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(ExchangeError::Connect)?;
        let tls = TlsConnector::from(config)
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(ExchangeError::Connect)?;
        if let (Some(observe), Some(group)) = (observer, KxGroup::of(tls.get_ref().1)) {
            observe(group);
        }
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(ExchangeError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTPS client connection ended with an error");
            }
        });
        let response = sender
            .send_request(request)
            .await
            .map_err(ExchangeError::Http)?;
        let status = response.status();
        let body = Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| ExchangeError::Body(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }
}

/// Every certificate in `pem` as a root store; an error names what is wrong.
pub(crate) fn root_store(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| e.to_string())?;
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no certificate in the PEM".into());
    }
    Ok(roots)
}

/// `Bearer <token>` as a sensitive header value.
fn bearer(token: &str) -> Result<HeaderValue, ClientError> {
    let mut value =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ClientError::InvalidToken)?;
    value.set_sensitive(true);
    Ok(value)
}

fn client_config(
    roots: Arc<RootCertStore>,
    client_cert: Option<Arc<CertifiedKey>>,
) -> Result<ClientConfig, ClientError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_root_certificates(roots);
    let mut config = match client_cert {
        Some(cert) => builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(cert))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    crypto::no_client_resumption(&mut config);
    Ok(config)
}

fn certificate_request(
    path: &'static str,
    csr_pem: &str,
) -> Result<Request<Full<Bytes>>, ClientError> {
    let body = serde_json::to_vec(&api::CertificateRequest {
        csr: csr_pem.to_owned(),
    })?;
    let mut request = Request::new(Full::new(Bytes::from(body)));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = Uri::from_static(path);
    request.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(request)
}

fn parse_certificate(
    status: StatusCode,
    body: &[u8],
) -> Result<api::CertificateResponse, ClientError> {
    check_status(status, body)?;
    serde_json::from_slice(body).map_err(|e| ClientError::InvalidResponse(e.to_string()))
}

/// Turns an error answer into [`ClientError::Rejected`] or [`ClientError::Unavailable`].
fn check_status(status: StatusCode, body: &[u8]) -> Result<(), ClientError> {
    if status.is_success() {
        return Ok(());
    }
    let (code, message) = match serde_json::from_slice::<api::ErrorResponse>(body) {
        Ok(e) => (e.error, e.message),
        Err(_) => (
            "unknown".to_owned(),
            String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        ),
    };
    if status.is_client_error() {
        Err(ClientError::Rejected {
            status: status.as_u16(),
            code,
            message,
        })
    } else {
        Err(ClientError::Unavailable {
            status: status.as_u16(),
            message,
        })
    }
}

#[cfg(test)]
mod tests;
