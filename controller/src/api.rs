//! The connection to the Kubernetes API server: HTTPS with rustls on the one crypto provider
//! (aws-lc-rs), the API server's roots from a file, and the controller's service-account
//! token as bearer credential, re-read for every request because the kubelet rotates it.
//!
//! kube-rs's own TLS stacks are left out (its rustls feature brings hyper-rustls and, by
//! default, ring); kube's [`kube::Client`] runs on this small service instead: one HTTP/1.1
//! connection per request. The controller makes few requests (one list and one long watch
//! per resource, renewed every few minutes, and a bundle write now and then), so a pool
//! would buy nothing.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, Uri, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// Where the API server is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `https://host[:port]` (in a pod: `https://kubernetes.default.svc`).
    pub url: String,
    /// PEM roots for the API server's certificate.
    pub ca_file: PathBuf,
    /// The controller's service-account token.
    pub token_file: PathBuf,
}

/// Why the API client could not be set up or a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The URL is not `https://host[:port]`.
    #[error("the API server URL {0:?} must be https://host[:port] with no path")]
    Url(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("{0} holds no usable PEM certificate")]
    Roots(PathBuf),
    /// TLS could not be configured.
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    /// The token file is empty.
    #[error("the token file {0} is empty")]
    EmptyToken(PathBuf),
    /// Connecting, the TLS handshake or the HTTP exchange failed.
    #[error("API server {url}: {message}")]
    Exchange {
        /// The API server.
        url: String,
        /// What failed.
        message: String,
    },
}

/// The HTTPS transport kube's client runs on.
#[derive(Debug, Clone)]
pub struct ApiService {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    authority: http::uri::Authority,
    host: ServerName<'static>,
    port: u16,
    tls: tokio_rustls::TlsConnector,
    token_file: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>, ApiError> {
    std::fs::read(path).map_err(|source| ApiError::Read {
        path: path.to_owned(),
        source,
    })
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("url", &self.url)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

impl ApiService {
    /// Checks the settings and reads the roots; the token is read per request.
    pub fn new(config: &ApiConfig) -> Result<Self, ApiError> {
        let bad = || ApiError::Url(config.url.clone());
        let uri: Uri = config.url.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("https")
            || uri.path_and_query().is_some_and(|p| p.as_str() != "/")
        {
            return Err(bad());
        }
        let authority = uri.authority().cloned().ok_or_else(bad)?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let host = ServerName::try_from(host).map_err(|_| bad())?;
        let port = authority.port_u16().unwrap_or(443);
        let pem = read(&config.ca_file)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
            roots.add(cert)?;
        }
        if roots.is_empty() {
            return Err(ApiError::Roots(config.ca_file.clone()));
        }
        let tls = ClientConfig::builder_with_provider(picket_common::crypto::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            inner: Arc::new(Inner {
                url: config.url.trim_end_matches('/').to_owned(),
                authority,
                host,
                port,
                tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
                token_file: config.token_file.clone(),
            }),
        })
    }

    /// A kube client on this transport (default namespace `default`).
    pub fn client(self) -> kube::Client {
        kube::Client::new(self, "default")
    }
}

impl Inner {
    fn error(&self, message: impl std::fmt::Display) -> ApiError {
        ApiError::Exchange {
            url: self.url.clone(),
            message: message.to_string(),
        }
    }

    async fn send(
        &self,
        mut request: Request<kube::client::Body>,
    ) -> Result<Response<Incoming>, ApiError> {
        let token = String::from_utf8_lossy(&read(&self.token_file)?)
            .trim()
            .to_owned();
        if token.is_empty() {
            return Err(ApiError::EmptyToken(self.token_file.clone()));
        }
        let bearer = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| self.error("the token is not a valid header value"))?;
        let headers = request.headers_mut();
        headers.insert(header::AUTHORIZATION, bearer);
        let host =
            HeaderValue::try_from(self.authority.as_str()).map_err(|_| self.error("bad host"))?;
        headers.insert(header::HOST, host);
        let host_str = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let tcp = TcpStream::connect((host_str, self.port))
            .await
            .map_err(|e| self.error(format!("connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.host.clone(), tcp)
            .await
            .map_err(|e| self.error(format!("TLS: {e}")))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| self.error(e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "API server connection ended");
            }
        });
        sender
            .send_request(request)
            .await
            .map_err(|e| self.error(e))
    }
}

impl tower_service::Service<Request<kube::client::Body>> for ApiService {
    type Response = Response<Incoming>;
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ApiError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ApiError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<kube::client::Body>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { inner.send(request).await })
    }
}
