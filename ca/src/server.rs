//! The CA's HTTPS API.
//!
//! | method | path                       | answer                                   |
//! |--------|----------------------------|------------------------------------------|
//! | POST   | `/v1/certificates`         | JSON [`api::CertificateResponse`]        |
//! | POST   | `/v1/server-certificates`  | JSON [`api::CertificateResponse`]        |
//! | GET    | `/v1/trust-bundle`         | the trust bundle, PEM                    |
//! | GET    | `/healthz`                 | `ok`                                     |
//!
//! TLS 1.3 only, with a server certificate made from the issuer at start. Client certificates
//! are optional: a connection that presents one (webpki has chained it to the trust bundle) asks
//! for a renewal of the identity in it; any other request must carry
//! `Authorization: Bearer <token>`, where the token is either a join token or, when token
//! review is configured ([`ServeOptions::token_review`]), a Kubernetes service-account token
//! (told apart by shape: a JWT has two dots, a join token none). `/v1/server-certificates`
//! issues TLS server certificates with the DNS names [`ServeOptions::server_names`] allows
//! the caller's identity (the admission webhook's). Every error is a JSON
//! [`api::ErrorResponse`] whose `error` code is stable:
//!
//! | status | codes                                                                          |
//! |--------|--------------------------------------------------------------------------------|
//! | 400    | `invalid_json`, `body_unreadable`, `csr_malformed`, `csr_key_unsupported`      |
//! | 401    | `token_missing`, `token_unknown`, `token_expired`, `token_used`, `service_account_token_rejected`, `service_account_token_audience`, `service_account_tokens_disabled` |
//! | 403    | `identity_mismatch`, `csr_requests_ca`, `foreign_trust_domain`, `client_certificate_rejected`, `not_a_service_account`, `server_names_not_allowed`, `server_name_mismatch` |
//! | 404    | `not_found`                                                                    |
//! | 405    | `method_not_allowed`                                                           |
//! | 408    | `body_timeout`                                                                 |
//! | 413    | `body_too_large`                                                               |
//! | 500    | `internal`                                                                     |
//! | 503    | `token_review_unavailable` (the API server could not be asked, refused the CA's own credential, or did not answer within 5 s; nothing was issued and a retry may succeed), `join_tokens_not_served` (a replica signing with shared material: the enrollment CA redeems join tokens; a client with several CA URLs tries the next) |
//!
//! Tokens and keys are never logged.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use picket_common::server::{self, BodyError, ListenerSettings, TlsServer};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api;
use crate::authority::{Authority, CaError, Credential, IssueError, Reloaded, ServerNames};
use crate::svid;
use crate::token::TokenError;
use crate::tokenreview::{self, ReviewError, TokenReviewer};
use picket_common::crypto::{self, KxGroup, PROTOCOL_VERSIONS, provider};

/// Path of the liveness endpoint.
pub const HEALTH_PATH: &str = "/healthz";

/// Longest a client may take to send a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection may stay open. Every API call is one short request, so an older
/// connection is idle or hostile.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Longest open connections may take to finish after shutdown is asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the CA API on `listener` until `shutdown` completes, then lets open connections
/// finish. The server certificate names `localhost`, `127.0.0.1`, `::1` and the listener's
/// address unless it is unspecified.
pub async fn serve(
    authority: Arc<Authority>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CaError> {
    serve_with_names(authority, listener, Vec::new(), shutdown).await
}

/// [`serve`], with `extra_names` (DNS names or IP addresses) added to the server certificate.
pub async fn serve_with_names(
    authority: Arc<Authority>,
    listener: TcpListener,
    extra_names: Vec<String>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CaError> {
    let options = ServeOptions {
        extra_names,
        ..ServeOptions::default()
    };
    serve_with(authority, listener, options, shutdown).await
}

/// How often a running CA looks for signing material a rotation command changed.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// What the CA server does beyond join tokens and renewals.
#[derive(Debug)]
pub struct ServeOptions {
    /// DNS names or IP addresses added to the CA's own server certificate.
    pub extra_names: Vec<String>,
    /// Accept Kubernetes service-account tokens, checked with this reviewer.
    pub token_review: Option<TokenReviewer>,
    /// The DNS names identities may obtain TLS server certificates for.
    pub server_names: ServerNames,
    /// How often the state directory is read for a rotated intermediate or trust bundle
    /// ([`Authority::reload`]).
    pub reload_interval: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            extra_names: Vec::new(),
            token_review: None,
            server_names: ServerNames::default(),
            reload_interval: DEFAULT_RELOAD_INTERVAL,
        }
    }
}

/// What one request's handler needs, shared by every connection.
#[derive(Debug)]
struct Shared {
    authority: Arc<Authority>,
    token_review: Option<TokenReviewer>,
    server_names: ServerNames,
}

/// [`serve`], with [`ServeOptions`].
pub async fn serve_with(
    authority: Arc<Authority>,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CaError> {
    let local = listener.local_addr().map_err(CaError::Listener)?;
    let names = server_names(local, options.extra_names);
    let tls = Arc::new(ServerTls::new(&authority, names.clone())?);
    let acceptor = TlsAcceptor::from(Arc::new(tls.config()?));
    tracing::info!(
        listen = %local,
        ?names,
        token_review = ?options.token_review,
        server_names = ?options.server_names,
        "CA server listening"
    );
    let stop = CancellationToken::new();
    let reloads = tokio::spawn(reload_loop(
        Arc::clone(&authority),
        Arc::clone(&tls),
        options.reload_interval,
        stop.clone(),
    ));
    let shared = Arc::new(Shared {
        authority,
        token_review: options.token_review,
        server_names: options.server_names,
    });
    let server = TlsServer {
        settings: ListenerSettings::control(),
        side: "CA server",
        drain_timeout: DRAIN_TIMEOUT,
        max_connection_age: Some(CONNECTION_LIFETIME),
    };
    let serving = server::serve_tls(listener, acceptor, &server, &stop, move |tls| {
        let client_cert: Option<Arc<CertificateDer<'static>>> = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| Arc::new(leaf.clone()));
        let shared = Arc::clone(&shared);
        // Every log line of a request (issuance included) names the connection's client
        // and key-exchange group, so an operator can see which clients are post-quantum.
        let kx = KxGroup::of(tls.get_ref().1).unwrap_or(KxGroup::Other);
        let peer = tls
            .get_ref()
            .0
            .peer_addr()
            .map_or_else(|_| "unknown".to_owned(), |a| a.to_string());
        let span = tracing::info_span!("ca_connection", %peer, %kx);
        service_fn(move |request| {
            let shared = Arc::clone(&shared);
            let client_cert = client_cert.clone();
            async move { Ok::<_, Infallible>(route(&shared, client_cert.as_deref(), request).await) }
                .instrument(span.clone())
        })
    });
    let cancel = async {
        shutdown.await;
        stop.cancel();
    };
    tokio::join!(cancel, serving);
    stop.cancel();
    if let Err(e) = reloads.await {
        tracing::warn!(error = %e, "the CA's reload task ended abnormally");
    }
    Ok(())
}

/// Reads the state directory every `interval` until `stop`; when a rotation command changed
/// the signing material, puts it in force for issuance and for the CA's own TLS: a new server
/// certificate from the new intermediate, client certificates checked against the new
/// bundle. Connections and requests in flight keep what they started with.
async fn reload_loop(
    authority: Arc<Authority>,
    tls: Arc<ServerTls>,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.cancelled() => return,
        }
        // The directory lock may be held by a rotation command for a moment: wait for it off
        // the async workers.
        let reading = Arc::clone(&authority);
        let reloaded = match tokio::task::spawn_blocking(move || reading.reload()).await {
            Ok(result) => result,
            Err(e) => {
                tracing::warn!(error = %e, "reading the CA state failed; keeping the signing material in force");
                continue;
            }
        };
        match reloaded {
            Ok(Reloaded::Unchanged) => {}
            Ok(Reloaded::Changed {
                issuer,
                root,
                bundle_roots,
            }) => match tls.refresh(&authority) {
                Ok(()) => tracing::info!(
                    %issuer,
                    %root,
                    bundle_roots,
                    "signing material changed on disk: issuing with it and serving TLS with it"
                ),
                Err(e) => tracing::error!(
                    %issuer,
                    error = %e,
                    "issuing with the new signing material, but the CA's TLS keeps the previous \
                     certificate and trust"
                ),
            },
            Err(e) => tracing::warn!(
                error = %e,
                "the CA state cannot be read; keeping the signing material in force"
            ),
        }
    }
}

/// The CA's own TLS: its server certificate and the verifier of client certificates, each
/// replaced when the signing material changes ([`ServerTls::refresh`]).
#[derive(Debug)]
struct ServerTls {
    names: Vec<String>,
    certificate: Arc<CurrentCertificate>,
    verifier: Arc<CurrentClientVerifier>,
}

impl ServerTls {
    fn new(authority: &Authority, names: Vec<String>) -> Result<Self, CaError> {
        let certificate = Arc::new(CurrentCertificate(ArcSwap::from_pointee(
            server_certified_key(authority, &names)?,
        )));
        let verifier = Arc::new(CurrentClientVerifier(ArcSwap::from_pointee(
            client_verifier(authority)?,
        )));
        Ok(Self {
            names,
            certificate,
            verifier,
        })
    }

    fn refresh(&self, authority: &Authority) -> Result<(), CaError> {
        let certified = server_certified_key(authority, &self.names)?;
        let verifier = client_verifier(authority)?;
        self.certificate.0.store(Arc::new(certified));
        self.verifier.0.store(Arc::new(verifier));
        Ok(())
    }

    fn config(&self) -> Result<ServerConfig, CaError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)?
            .with_client_cert_verifier(Arc::clone(&self.verifier) as Arc<dyn ClientCertVerifier>)
            .with_cert_resolver(Arc::clone(&self.certificate) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // A renewal is authorised by the client certificate: a resumed session would let a
        // certificate renew itself after it expired.
        crypto::no_server_resumption(&mut config);
        Ok(config)
    }
}

/// The CA's server certificate in force.
#[derive(Debug)]
struct CurrentCertificate(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The client-certificate verifier in force: webpki against the current trust bundle,
/// client certificates optional.
#[derive(Debug)]
struct CurrentClientVerifier(ArcSwap<Arc<dyn ClientCertVerifier>>);

impl ClientCertVerifier for CurrentClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No hints: they would have to outlive a swap of the bundle. Clients present the one
    /// certificate they have either way.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .load()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.load().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.load().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.load().supported_verify_schemes()
    }
}

fn server_names(local: SocketAddr, extra: Vec<String>) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let listen_ip = (!local.ip().is_unspecified()).then(|| local.ip().to_string());
    for name in listen_ip.into_iter().chain(extra) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// A server certificate for `names` from the issuer in force.
fn server_certified_key(authority: &Authority, names: &[String]) -> Result<CertifiedKey, CaError> {
    let (chain, key) = authority.server_certificate(names)?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(CaError::Tls)?;
    Ok(CertifiedKey::new(chain, signing_key))
}

/// webpki against the trust bundle in force; a client certificate is optional (join tokens
/// and service-account tokens come without one).
fn client_verifier(authority: &Authority) -> Result<Arc<dyn ClientCertVerifier>, CaError> {
    let mut roots = RootCertStore::empty();
    for anchor in authority.trust_anchors() {
        roots.add(anchor)?;
    }
    Ok(
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()?,
    )
}

enum Endpoint {
    Certificates,
    ServerCertificates,
    TrustBundle,
    Health,
    WrongMethod(&'static str),
    Unknown,
}

async fn route(
    shared: &Arc<Shared>,
    client_cert: Option<&CertificateDer<'static>>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let authority = &shared.authority;
    // The body is read (or, past the limit, read and discarded) before any answer: an answer
    // sent while the client is still sending reaches an HTTP/2 client as a reset stream and an
    // HTTP/1.1 client as a reset connection, instead of the status.
    let (request, body) = request.into_parts();
    let body = server::read_body(body, api::MAX_BODY_BYTES, BODY_TIMEOUT).await;
    let endpoint = match (&request.method, request.uri.path()) {
        (&Method::POST, api::CERTIFICATES_PATH) => Endpoint::Certificates,
        (&Method::POST, api::SERVER_CERTIFICATES_PATH) => Endpoint::ServerCertificates,
        (&Method::GET, api::TRUST_BUNDLE_PATH) => Endpoint::TrustBundle,
        (&Method::GET, HEALTH_PATH) => Endpoint::Health,
        (_, api::CERTIFICATES_PATH | api::SERVER_CERTIFICATES_PATH) => {
            Endpoint::WrongMethod("POST")
        }
        (_, api::TRUST_BUNDLE_PATH | HEALTH_PATH) => Endpoint::WrongMethod("GET"),
        _ => Endpoint::Unknown,
    };
    let result = match endpoint {
        Endpoint::Certificates => {
            certificates(shared, client_cert, &request.headers, body, Kind::Svid).await
        }
        Endpoint::ServerCertificates => {
            certificates(shared, client_cert, &request.headers, body, Kind::Server).await
        }
        Endpoint::TrustBundle => Ok(response(
            StatusCode::OK,
            "application/x-pem-file",
            Bytes::from(authority.trust_bundle_pem()),
        )),
        Endpoint::Health => Ok(response(
            StatusCode::OK,
            "text/plain",
            Bytes::from_static(b"ok"),
        )),
        Endpoint::WrongMethod(allow) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("use {allow}"),
        )
        .with_header(header::ALLOW, HeaderValue::from_static(allow))),
        Endpoint::Unknown => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint",
        )),
    };
    result.unwrap_or_else(ApiError::into_response)
}

/// Which certificate a request asks for.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Svid,
    Server,
}

/// The credential as presented, before a bearer token has been told apart and checked.
enum Presented {
    Certificate(crate::SpiffeId),
    Bearer(String),
}

async fn certificates(
    shared: &Arc<Shared>,
    client_cert: Option<&CertificateDer<'static>>,
    headers: &HeaderMap,
    body: Result<Bytes, BodyError>,
    kind: Kind,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let authority = &shared.authority;
    let body = body.map_err(|e| match e {
        BodyError::TooLarge(_) => ApiError::too_large(),
        BodyError::Timeout => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the request body did not arrive in time",
        ),
        other => ApiError::new(
            StatusCode::BAD_REQUEST,
            "body_unreadable",
            other.to_string(),
        ),
    })?;
    let credential = match client_cert {
        Some(der) => {
            let now = OffsetDateTime::now_utc().unix_timestamp();
            let info = svid::verify_leaf(der, authority.trust_domain(), now).map_err(|e| {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "client_certificate_rejected",
                    e.to_string(),
                )
            })?;
            Presented::Certificate(info.id)
        }
        None => Presented::Bearer(bearer_token(headers)?),
    };
    let body: api::CertificateRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))?;

    // Checked after the body so that a malformed request never costs a token review.
    let credential = match credential {
        Presented::Certificate(id) => Credential::Renewal(id),
        Presented::Bearer(token) if tokenreview::looks_like_jwt(&token) => {
            let reviewer = shared.token_review.as_ref().ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "service_account_tokens_disabled",
                    "this CA does not accept Kubernetes service-account tokens",
                )
            })?;
            Credential::ServiceAccount(reviewer.review(&token).await?)
        }
        Presented::Bearer(token) => Credential::JoinToken(token),
    };

    // Issuance signs and fsyncs: keep it off the async worker threads.
    let shared = Arc::clone(shared);
    let span = tracing::Span::current();
    let issued = tokio::task::spawn_blocking(move || {
        let _in_request = span.enter();
        match kind {
            Kind::Svid => shared.authority.issue(&body.csr, credential),
            Kind::Server => shared.authority.issue_server_certificate(
                &body.csr,
                credential,
                &shared.server_names,
            ),
        }
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    let not_after = issued
        .not_after
        .format(&Rfc3339)
        .map_err(|e| ApiError::internal(&e))?;
    Ok(json_response(
        StatusCode::OK,
        &api::CertificateResponse {
            chain_pem: issued.chain_pem,
            trust_bundle_pem: issued.trust_bundle_pem,
            spiffe_id: issued.spiffe_id.to_string(),
            serial: issued.serial,
            not_after,
        },
    ))
}

/// The token of `Authorization: Bearer <token>`.
fn bearer_token(headers: &HeaderMap) -> Result<String, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty());
    match token {
        Some(token) => Ok(token.to_owned()),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "token_missing",
            "send a join token as `Authorization: Bearer <token>`, or a client certificate to renew",
        )),
    }
}

/// An error answer: status, stable code, a sentence, and any extra headers.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    header: Option<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let header = (status == StatusCode::UNAUTHORIZED)
            .then(|| (header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        Self {
            status,
            code,
            message: message.into(),
            header,
        }
    }

    fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.header = Some((name, value));
        self
    }

    fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "request bodies are limited to {} bytes",
                api::MAX_BODY_BYTES
            ),
        )
    }

    /// A failure on the CA's side: logged in full, answered without detail.
    fn internal(error: &dyn std::error::Error) -> Self {
        tracing::error!(error = %error, "CA request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the CA failed to handle the request",
        )
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        tracing::debug!(status = %self.status, code = self.code, "CA request refused");
        let mut response = json_response(
            self.status,
            &api::ErrorResponse {
                error: self.code.to_owned(),
                message: self.message,
            },
        );
        if let Some((name, value)) = self.header {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

impl From<IssueError> for ApiError {
    fn from(error: IssueError) -> Self {
        let (status, code) = match &error {
            IssueError::MalformedCsr(_) => (StatusCode::BAD_REQUEST, "csr_malformed"),
            IssueError::UnsupportedKey => (StatusCode::BAD_REQUEST, "csr_key_unsupported"),
            IssueError::CaRequested => (StatusCode::FORBIDDEN, "csr_requests_ca"),
            IssueError::IdentityMismatch { .. } => (StatusCode::FORBIDDEN, "identity_mismatch"),
            IssueError::ForeignTrustDomain(_) => (StatusCode::FORBIDDEN, "foreign_trust_domain"),
            IssueError::ServerNamesNotAllowed(_) => {
                (StatusCode::FORBIDDEN, "server_names_not_allowed")
            }
            IssueError::ServerNameMismatch { .. } => {
                (StatusCode::FORBIDDEN, "server_name_mismatch")
            }
            IssueError::Token(TokenError::Unknown) => (StatusCode::UNAUTHORIZED, "token_unknown"),
            IssueError::Token(TokenError::Expired) => (StatusCode::UNAUTHORIZED, "token_expired"),
            IssueError::Token(TokenError::Used) => (StatusCode::UNAUTHORIZED, "token_used"),
            // 503: another CA URL (the enrollment CA) can redeem it, so clients try the next.
            IssueError::JoinTokensNotServed => {
                (StatusCode::SERVICE_UNAVAILABLE, "join_tokens_not_served")
            }
            IssueError::IssuerExpired(_)
            | IssueError::State(_)
            | IssueError::Random(_)
            | IssueError::Certificate(_) => {
                return Self::internal(&error);
            }
        };
        Self::new(status, code, error.to_string())
    }
}

impl From<ReviewError> for ApiError {
    fn from(error: ReviewError) -> Self {
        let (status, code) = match &error {
            ReviewError::NotAuthenticated(_) => {
                (StatusCode::UNAUTHORIZED, "service_account_token_rejected")
            }
            ReviewError::WrongAudience { .. } => {
                (StatusCode::UNAUTHORIZED, "service_account_token_audience")
            }
            ReviewError::NotServiceAccount(_) => (StatusCode::FORBIDDEN, "not_a_service_account"),
            ReviewError::Unavailable(_) | ReviewError::Timeout(_) => {
                // The workload did nothing wrong; the operator needs to know.
                tracing::error!(error = %error, "Kubernetes token review failed");
                (StatusCode::SERVICE_UNAVAILABLE, "token_review_unavailable")
            }
        };
        Self::new(status, code, error.to_string())
    }
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => response(status, "application/json", body.into()),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a CA answer");
            response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                Bytes::from_static(b"internal error"),
            )
        }
    }
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, IsCa};
    use rustls::sign::CertifiedKey;
    use rustls_pki_types::PrivateKeyDer;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::*;
    use crate::client::{CaClient, ClientError};
    use crate::test_support::{certs, csr, new_ca, p256, verify_chain, workload};
    use crate::tokenreview::tests::{
        AUDIENCE_MISMATCH, EXPIRED, TokenReviewDouble, Verdict, reviewer, verdicts,
    };

    /// A CA served on a loopback port for the length of a test.
    struct Running {
        authority: Arc<Authority>,
        client: CaClient,
        url: String,
        stop: oneshot::Sender<()>,
        task: JoinHandle<Result<(), CaError>>,
        _dir: tempfile::TempDir,
    }

    impl Running {
        async fn start() -> Self {
            Self::start_with(ServeOptions::default()).await
        }

        async fn start_with(options: ServeOptions) -> Self {
            let (dir, authority) = new_ca();
            Self::serve(Arc::new(authority), dir, options).await
        }

        async fn serve(
            authority: Arc<Authority>,
            dir: tempfile::TempDir,
            options: ServeOptions,
        ) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("https://{}", listener.local_addr().unwrap());
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve_with(
                Arc::clone(&authority),
                listener,
                options,
                async move {
                    let _ = stopped.await;
                },
            ));
            let client = CaClient::new(&url, authority.trust_bundle_pem().as_bytes()).unwrap();
            Self {
                authority,
                client,
                url,
                stop,
                task,
                _dir: dir,
            }
        }

        fn token(&self) -> String {
            self.authority
                .create_token(&workload("shop", "orders"), Duration::from_secs(3600), 1)
                .unwrap()
        }

        /// Sends a raw request and returns the status and decoded error body.
        async fn raw(
            &self,
            method: Method,
            path: &'static str,
            headers: &[(header::HeaderName, &str)],
            body: Vec<u8>,
        ) -> (StatusCode, Bytes) {
            let mut request = Request::new(Full::new(Bytes::from(body)));
            *request.method_mut() = method;
            *request.uri_mut() = http::Uri::from_static(path);
            for (name, value) in headers {
                request
                    .headers_mut()
                    .insert(name.clone(), HeaderValue::from_str(value).unwrap());
            }
            self.client.exchange(request, None).await.unwrap()
        }

        async fn stop(self) {
            self.stop.send(()).unwrap();
            self.task.await.unwrap().unwrap();
        }
    }

    fn error_code(body: &[u8]) -> String {
        serde_json::from_slice::<api::ErrorResponse>(body)
            .unwrap()
            .error
    }

    fn rejected_code(result: Result<api::CertificateResponse, ClientError>) -> (u16, String) {
        match result {
            Err(ClientError::Rejected { status, code, .. }) => (status, code),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn certified_key(
        response: &api::CertificateResponse,
        key: &rcgen::KeyPair,
    ) -> Arc<CertifiedKey> {
        let signer = provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(key.serialize_der().into()))
            .unwrap();
        Arc::new(CertifiedKey::new(certs(&response.chain_pem), signer))
    }

    /// A CA whose token review asks `double`, and allows `ns/picket/sa/injector` a server
    /// certificate for `injector.picket.svc`.
    async fn kubernetes_ca(double: &TokenReviewDouble, dir: &std::path::Path) -> Running {
        let mut server_names = ServerNames::default();
        server_names
            .allow(
                workload("picket", "injector"),
                &["injector.picket.svc".to_owned()],
            )
            .unwrap();
        Running::start_with(ServeOptions {
            token_review: Some(reviewer(double, dir)),
            server_names,
            ..ServeOptions::default()
        })
        .await
    }

    #[tokio::test]
    async fn service_account_token_gets_the_reviewed_identity() {
        let double = TokenReviewDouble::start(verdicts(&[(
            "valid.sa.token",
            Verdict::ServiceAccount("shop", "orders"),
        )]))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let ca = kubernetes_ca(&double, dir.path()).await;
        let issued = ca
            .client
            .issue_with_token(
                &csr(&p256(), &["spiffe://example.org/ns/shop/sa/orders"]),
                "valid.sa.token",
            )
            .await
            .unwrap();
        assert_eq!(issued.spiffe_id, "spiffe://example.org/ns/shop/sa/orders");
        verify_chain(&issued.trust_bundle_pem, &issued.chain_pem).unwrap();

        // The review decides the identity; a CSR asking for another is refused.
        let other = csr(&p256(), &["spiffe://example.org/ns/shop/sa/admin"]);
        let refused = ca.client.issue_with_token(&other, "valid.sa.token").await;
        assert_eq!(rejected_code(refused), (403, "identity_mismatch".into()));

        // Join tokens keep working beside service-account tokens.
        ca.client
            .issue_with_token(&csr(&p256(), &[]), &ca.token())
            .await
            .unwrap();
        ca.stop().await;
    }

    #[tokio::test]
    async fn refused_or_failed_token_reviews_issue_nothing() {
        let double = TokenReviewDouble::start(verdicts(&[
            ("expired.sa.token", Verdict::Rejected(EXPIRED)),
            ("audience.sa.token", Verdict::Rejected(AUDIENCE_MISMATCH)),
            (
                "unaware.sa.token",
                Verdict::AuthenticatedFor("shop", "orders", vec!["api"]),
            ),
            ("user.sa.token", Verdict::User("kubernetes-admin")),
            (
                "deleted.sa.token",
                Verdict::Rejected(
                    "[invalid bearer token, service account shop/orders has been deleted]",
                ),
            ),
            ("denied.sa.token", Verdict::Status(403)),
        ]))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let ca = kubernetes_ca(&double, dir.path()).await;
        for (token, status, code) in [
            ("expired.sa.token", 401, "service_account_token_rejected"),
            ("audience.sa.token", 401, "service_account_token_rejected"),
            ("unaware.sa.token", 401, "service_account_token_audience"),
            ("user.sa.token", 403, "not_a_service_account"),
            ("deleted.sa.token", 401, "service_account_token_rejected"),
            ("denied.sa.token", 503, "token_review_unavailable"),
        ] {
            let result = ca.client.issue_with_token(&csr(&p256(), &[]), token).await;
            let (got_status, got_code) = match result {
                Err(ClientError::Rejected { status, code, .. }) => (status, code),
                Err(ClientError::Unavailable { status, .. }) => {
                    (status, "token_review_unavailable".to_owned())
                }
                other => panic!("{token}: expected a refusal, got {other:?}"),
            };
            assert_eq!((got_status, got_code.as_str()), (status, code), "{token}");
        }
        assert!(ca.authority.issued_serials().is_empty());
        ca.stop().await;
    }

    #[tokio::test]
    async fn unreachable_api_server_is_503_and_disabled_review_is_401() {
        let double = TokenReviewDouble::start(verdicts(&[])).await;
        let dir = tempfile::tempdir().unwrap();
        let mut reviewer = reviewer(&double, dir.path());
        drop(double);
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", closed.local_addr().unwrap());
        drop(closed);
        reviewer = reviewer.pointed_at(&url);
        let ca = Running::start_with(ServeOptions {
            token_review: Some(reviewer),
            ..ServeOptions::default()
        })
        .await;
        let refused = ca
            .client
            .issue_with_token(&csr(&p256(), &[]), "a.b.c")
            .await;
        assert!(
            matches!(refused, Err(ClientError::Unavailable { status: 503, .. })),
            "{refused:?}"
        );
        ca.stop().await;

        let plain = Running::start().await;
        let refused = plain
            .client
            .issue_with_token(&csr(&p256(), &[]), "a.b.c")
            .await;
        assert_eq!(
            rejected_code(refused),
            (401, "service_account_tokens_disabled".into())
        );
        plain.stop().await;
    }

    #[tokio::test]
    async fn server_certificate_carries_only_the_allowed_dns_names() {
        let double = TokenReviewDouble::start(verdicts(&[
            (
                "injector.sa.token",
                Verdict::ServiceAccount("picket", "injector"),
            ),
            ("orders.sa.token", Verdict::ServiceAccount("shop", "orders")),
        ]))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let ca = kubernetes_ca(&double, dir.path()).await;
        let key = p256();
        let issued = ca
            .client
            .issue_server_certificate(&csr(&p256(), &[]), "injector.sa.token")
            .await
            .unwrap();
        assert_eq!(
            issued.spiffe_id,
            "spiffe://example.org/ns/picket/sa/injector"
        );
        let chain = certs(&issued.chain_pem);
        let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
        let sans: Vec<String> = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect();
        assert_eq!(sans, ["DNSName(\"injector.picket.svc\")"]);
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        drop(key);

        let refused = ca
            .client
            .issue_server_certificate(&csr(&p256(), &[]), "orders.sa.token")
            .await;
        assert_eq!(
            rejected_code(refused),
            (403, "server_names_not_allowed".into())
        );
        let mut params = CertificateParams::new(vec!["kubernetes.default.svc".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let wrong_name = params.serialize_request(&p256()).unwrap().pem().unwrap();
        let refused = ca
            .client
            .issue_server_certificate(&wrong_name, "injector.sa.token")
            .await;
        assert_eq!(rejected_code(refused), (403, "server_name_mismatch".into()));
        ca.stop().await;
    }

    /// Polls `check` every 20 ms until it holds, for at most 10 s.
    async fn within_10s<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check().await {
            assert!(tokio::time::Instant::now() < deadline, "not within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The subject of the intermediate in a chain (leaf first).
    fn chain_issuer(chain_pem: &str) -> String {
        let chain = certs(chain_pem);
        let (_, intermediate) = X509Certificate::from_der(&chain[1]).unwrap();
        intermediate.subject().to_string()
    }

    #[tokio::test]
    async fn a_running_ca_takes_up_every_rotation_step_without_a_restart() {
        use crate::rotation::{GivenRoot, RootStage, rotate_intermediate, rotate_root};
        let ca = Running::start_with(ServeOptions {
            reload_interval: Duration::from_millis(20),
            ..ServeOptions::default()
        })
        .await;
        let state = ca._dir.path().join("state");
        let key = p256();
        let first = ca
            .client
            .issue_with_token(&csr(&key, &[]), &ca.token())
            .await
            .unwrap();
        let first_issuer = chain_issuer(&first.chain_pem);

        // A new intermediate: the next issuance uses it, with no restart.
        rotate_intermediate(&state, &GivenRoot::default()).unwrap();
        within_10s(|| async { ca.authority.issuer_subject() != first_issuer }).await;
        let second_issuer = ca.authority.issuer_subject();
        let renewed = ca
            .client
            .renew(&csr(&p256(), &[]), certified_key(&first, &key))
            .await
            .unwrap();
        assert_eq!(chain_issuer(&renewed.chain_pem), second_issuer);

        // add, switch: the bundle grows to two roots, then issuance moves to the new root.
        let added = rotate_root(&state, RootStage::Add, &GivenRoot::default(), false).unwrap();
        within_10s(|| async { certs(&ca.client.trust_bundle().await.unwrap()).len() == 2 }).await;
        // Clients take the two-root bundle before the switch, as sidecars do.
        ca.client.set_trust(added.bundle_pem.as_bytes()).unwrap();
        let switched =
            rotate_root(&state, RootStage::Switch, &GivenRoot::default(), false).unwrap();
        within_10s(|| async { ca.authority.issuer_subject() != second_issuer }).await;
        let new_key = p256();
        let under_new_root = ca
            .client
            .issue_with_token(&csr(&new_key, &[]), &ca.token())
            .await
            .unwrap();
        assert_ne!(chain_issuer(&under_new_root.chain_pem), second_issuer);
        verify_chain(&switched.bundle_pem, &under_new_root.chain_pem).unwrap();

        // remove (forced: the first certificates are still valid): a client that trusts only
        // the new root reaches the CA, whose own certificate moved to the new intermediate,
        // and the CA stops accepting certificates of the old root for renewal.
        let removed = rotate_root(&state, RootStage::Remove, &GivenRoot::default(), true).unwrap();
        assert_eq!(certs(&removed.bundle_pem).len(), 1);
        let new_only = CaClient::new(&ca.url, removed.bundle_pem.as_bytes()).unwrap();
        within_10s(|| async {
            new_only
                .trust_bundle()
                .await
                .is_ok_and(|bundle| bundle == removed.bundle_pem)
        })
        .await;
        let old_root_renewal = new_only
            .renew(&csr(&p256(), &[]), certified_key(&renewed, &key))
            .await;
        assert!(old_root_renewal.is_err(), "{old_root_renewal:?}");
        new_only
            .renew(&csr(&p256(), &[]), certified_key(&under_new_root, &new_key))
            .await
            .unwrap();
        ca.stop().await;
    }

    #[tokio::test]
    async fn a_client_of_several_urls_moves_past_a_stopped_ca_and_a_replica_without_tokens() {
        let enrollment = Running::start().await;
        let replica_dir = tempfile::tempdir().unwrap();
        let mut options = crate::test_support::options(replica_dir.path());
        options.signer_dir = Some(enrollment._dir.path().join("state"));
        let replica_authority = Arc::new(Authority::init(options).unwrap());
        let replica = Running::serve(replica_authority, replica_dir, ServeOptions::default()).await;
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_url = format!("https://{}", closed.local_addr().unwrap());
        drop(closed);

        // A replica redeems no join token: 503, so a client goes on to its next URL.
        let refused = replica
            .client
            .issue_with_token(&csr(&p256(), &[]), &enrollment.token())
            .await;
        assert!(
            matches!(refused, Err(ClientError::Unavailable { status: 503, ref message }) if message.contains("redeems no join tokens")),
            "{refused:?}"
        );
        let bundle = enrollment.authority.trust_bundle_pem();
        let client = CaClient::with_urls(
            &[
                closed_url.clone(),
                replica.url.clone(),
                enrollment.url.clone(),
            ],
            bundle.as_bytes(),
        )
        .unwrap();
        let key = p256();
        let first = client
            .issue_with_token(&csr(&key, &[]), &enrollment.token())
            .await
            .unwrap();
        assert_eq!(client.current_url(), enrollment.url);

        // The enrollment CA goes away: a renewal moves on (past the closed port) to the
        // replica, which signs with the same intermediate.
        enrollment.stop().await;
        let renewed = client
            .renew(&csr(&p256(), &[]), certified_key(&first, &key))
            .await
            .unwrap();
        assert_eq!(client.current_url(), replica.url);
        assert_eq!(
            chain_issuer(&renewed.chain_pem),
            chain_issuer(&first.chain_pem)
        );

        // A refusal (4xx) is final: it is not sent on to another URL.
        let other = csr(&p256(), &["spiffe://example.org/ns/kube-system/sa/admin"]);
        let refused = client.renew(&other, certified_key(&first, &key)).await;
        assert_eq!(rejected_code(refused), (403, "identity_mismatch".into()));
        assert_eq!(client.current_url(), replica.url);

        // Every URL down: the last error, for the caller's backoff.
        replica.stop().await;
        let down = client.trust_bundle().await;
        assert!(matches!(down, Err(ClientError::Connect(_))), "{down:?}");
    }

    #[tokio::test]
    async fn a_reload_that_finds_nothing_new_changes_nothing() {
        let (_dir, authority) = new_ca();
        let before = authority.issuer_subject();
        assert_eq!(authority.reload().unwrap(), Reloaded::Unchanged);
        assert_eq!(authority.issuer_subject(), before);
    }

    #[tokio::test]
    async fn issues_a_certificate_for_a_join_token_over_tls() {
        let ca = Running::start().await;
        let response = ca
            .client
            .issue_with_token(&csr(&p256(), &[]), &ca.token())
            .await
            .unwrap();
        assert_eq!(response.spiffe_id, "spiffe://example.org/ns/shop/sa/orders");
        assert_eq!(response.trust_bundle_pem, ca.authority.trust_bundle_pem());
        verify_chain(&response.trust_bundle_pem, &response.chain_pem).unwrap();
        let not_after = OffsetDateTime::parse(&response.not_after, &Rfc3339).unwrap();
        let info = svid::inspect_leaf(&certs(&response.chain_pem)[0]).unwrap();
        assert_eq!(not_after.unix_timestamp(), info.not_after);
        assert_eq!(info.serial_hex, response.serial);
        ca.stop().await;
    }

    #[tokio::test]
    async fn the_ca_and_its_client_agree_on_the_hybrid_group_for_issuance_and_renewal() {
        let ca = Running::start().await;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let client = ca.client.clone().with_handshake_observer(Arc::new(
            move |kx: picket_common::crypto::KxGroup| record.lock().unwrap().push(kx),
        ));
        let key = p256();
        let first = client
            .issue_with_token(&csr(&key, &[]), &ca.token())
            .await
            .unwrap();
        client
            .renew(&csr(&p256(), &[]), certified_key(&first, &key))
            .await
            .unwrap();
        client.trust_bundle().await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            [picket_common::crypto::KxGroup::X25519Mlkem768; 3]
        );
        ca.stop().await;
    }

    #[tokio::test]
    async fn renews_with_the_issued_certificate_as_client_certificate() {
        let ca = Running::start().await;
        let key = p256();
        let first = ca
            .client
            .issue_with_token(&csr(&key, &[]), &ca.token())
            .await
            .unwrap();
        let renewed = ca
            .client
            .renew(&csr(&p256(), &[]), certified_key(&first, &key))
            .await
            .unwrap();
        assert_eq!(renewed.spiffe_id, first.spiffe_id);
        assert_ne!(renewed.serial, first.serial);

        let other = csr(&p256(), &["spiffe://example.org/ns/kube-system/sa/admin"]);
        let refused = ca.client.renew(&other, certified_key(&first, &key)).await;
        assert_eq!(rejected_code(refused), (403, "identity_mismatch".into()));
        ca.stop().await;
    }

    #[tokio::test]
    async fn token_problems_are_401_with_distinct_codes() {
        let ca = Running::start().await;
        let token = ca.token();
        let unknown = ca
            .client
            .issue_with_token(&csr(&p256(), &[]), "not-a-token")
            .await;
        assert_eq!(rejected_code(unknown), (401, "token_unknown".into()));
        ca.client
            .issue_with_token(&csr(&p256(), &[]), &token)
            .await
            .unwrap();
        let used = ca.client.issue_with_token(&csr(&p256(), &[]), &token).await;
        assert_eq!(rejected_code(used), (401, "token_used".into()));

        let body = serde_json::to_vec(&api::CertificateRequest {
            csr: csr(&p256(), &[]),
        })
        .unwrap();
        let (status, body) = ca
            .raw(Method::POST, api::CERTIFICATES_PATH, &[], body)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(&body), "token_missing");
        ca.stop().await;
    }

    #[tokio::test]
    async fn csr_for_another_identity_or_a_ca_is_403() {
        let ca = Running::start().await;
        let other = csr(&p256(), &["spiffe://example.org/ns/kube-system/sa/admin"]);
        let refused = ca.client.issue_with_token(&other, &ca.token()).await;
        assert_eq!(rejected_code(refused), (403, "identity_mismatch".into()));

        let key = p256();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let refused = ca.client.issue_with_token(&ca_csr, &ca.token()).await;
        assert_eq!(rejected_code(refused), (403, "csr_requests_ca".into()));
        ca.stop().await;
    }

    #[tokio::test]
    async fn malformed_csr_or_json_is_400() {
        let ca = Running::start().await;
        let refused = ca.client.issue_with_token("garbage", &ca.token()).await;
        assert_eq!(rejected_code(refused), (400, "csr_malformed".into()));

        let bearer = format!("Bearer {}", ca.token());
        let (status, body) = ca
            .raw(
                Method::POST,
                api::CERTIFICATES_PATH,
                &[(header::AUTHORIZATION, &bearer)],
                b"{\"csr\": 42}".to_vec(),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(error_code(&body), "invalid_json");
        ca.stop().await;
    }

    #[tokio::test]
    async fn body_over_64_kib_is_413() {
        let ca = Running::start().await;
        let bearer = format!("Bearer {}", ca.token());
        let body = vec![b' '; api::MAX_BODY_BYTES + 1];
        let (status, body) = ca
            .raw(
                Method::POST,
                api::CERTIFICATES_PATH,
                &[(header::AUTHORIZATION, &bearer)],
                body,
            )
            .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(error_code(&body), "body_too_large");
        ca.stop().await;
    }

    #[tokio::test]
    async fn wrong_method_is_405_and_unknown_path_is_404() {
        let ca = Running::start().await;
        let (status, body) = ca
            .raw(Method::GET, api::CERTIFICATES_PATH, &[], Vec::new())
            .await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(error_code(&body), "method_not_allowed");
        let (status, body) = ca.raw(Method::GET, "/v1/nothing", &[], Vec::new()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(error_code(&body), "not_found");
        ca.stop().await;
    }

    #[tokio::test]
    async fn serves_trust_bundle_and_health() {
        let ca = Running::start().await;
        assert_eq!(
            ca.client.trust_bundle().await.unwrap(),
            ca.authority.trust_bundle_pem()
        );
        let (status, body) = ca.raw(Method::GET, HEALTH_PATH, &[], Vec::new()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"ok");
        ca.stop().await;
    }

    #[tokio::test]
    async fn server_certificate_is_valid_for_localhost() {
        let ca = Running::start().await;
        let port = ca.url.rsplit(':').next().unwrap();
        let by_name = CaClient::new(
            &format!("https://localhost:{port}"),
            ca.authority.trust_bundle_pem().as_bytes(),
        )
        .unwrap();
        by_name.trust_bundle().await.unwrap();
        ca.stop().await;
    }

    #[tokio::test]
    async fn client_refuses_a_ca_it_does_not_trust() {
        let ca = Running::start().await;
        let (_dir, stranger) = new_ca();
        let client = CaClient::new(&ca.url, stranger.trust_bundle_pem().as_bytes()).unwrap();
        assert!(matches!(
            client.trust_bundle().await,
            Err(ClientError::Connect(_))
        ));
        ca.stop().await;
    }

    #[tokio::test]
    async fn renewal_with_a_certificate_from_another_ca_is_refused() {
        let ca = Running::start().await;
        let (_dir, stranger) = new_ca();
        let key = p256();
        let token = stranger
            .create_token(&workload("shop", "orders"), Duration::from_secs(60), 1)
            .unwrap();
        let issued = stranger
            .issue(&csr(&key, &[]), Credential::JoinToken(token))
            .unwrap();
        let response = api::CertificateResponse {
            chain_pem: issued.chain_pem,
            trust_bundle_pem: issued.trust_bundle_pem,
            spiffe_id: issued.spiffe_id.to_string(),
            serial: issued.serial,
            not_after: String::new(),
        };
        // In TLS 1.3 the server judges the client certificate after the client has finished
        // its side of the handshake, so the refusal shows up on the HTTP exchange.
        let result = ca
            .client
            .renew(&csr(&p256(), &[]), certified_key(&response, &key))
            .await;
        assert!(
            matches!(result, Err(ClientError::Http(_) | ClientError::Connect(_))),
            "{result:?}"
        );
        ca.stop().await;
    }
}
