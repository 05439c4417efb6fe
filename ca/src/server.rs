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
use crate::authority::{Authority, CaError, Credential, IssueError, Issued, Reloaded, ServerNames};
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
    let body = request_body(body)?;
    let presented = presented_credential(&shared.authority, client_cert, headers)?;
    let body: api::CertificateRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))?;
    // Checked after the body so that a malformed request never costs a token review.
    let credential = checked_credential(shared, presented).await?;
    let issued = issue_off_the_runtime(shared, body.csr, credential, kind).await?;
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

/// The request body, or the API error a body that did not arrive whole maps to.
fn request_body(body: Result<Bytes, BodyError>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e {
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
    })
}

/// The credential the client presents: its certificate (verified as an SVID of this trust
/// domain) or, without one, its bearer token.
fn presented_credential(
    authority: &Authority,
    client_cert: Option<&CertificateDer<'static>>,
    headers: &HeaderMap,
) -> Result<Presented, ApiError> {
    Ok(match client_cert {
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
    })
}

/// The credential told apart: a service-account token (a JWT) is reviewed by the API server
/// here; a join token is checked by the issuance itself.
async fn checked_credential(shared: &Shared, presented: Presented) -> Result<Credential, ApiError> {
    Ok(match presented {
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
    })
}

/// Issues on a blocking thread: issuance signs and fsyncs, which must not hold up the async
/// workers.
async fn issue_off_the_runtime(
    shared: &Arc<Shared>,
    csr: String,
    credential: Credential,
    kind: Kind,
) -> Result<Issued, ApiError> {
    let shared = Arc::clone(shared);
    let span = tracing::Span::current();
    let issued = tokio::task::spawn_blocking(move || {
        let _in_request = span.enter();
        match kind {
            Kind::Svid => shared.authority.issue(&csr, credential),
            Kind::Server => {
                shared
                    .authority
                    .issue_server_certificate(&csr, credential, &shared.server_names)
            }
        }
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    Ok(issued)
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
mod tests;
