//! Workload attestation on Kubernetes: a projected service-account token, checked with the
//! API server's TokenReview API (`authentication.k8s.io/v1`).
//!
//! A pod presents the token the kubelet projected for the audience `picket-ca` as its bearer
//! credential. The CA cannot check the token itself (it does not hold the service-account
//! signing keys and cannot know whether the pod or account still exists), so it asks the API
//! server, authenticating with its own service-account token, and trusts the answer only if:
//!
//! - `status.authenticated` is true (an expired, revoked or forged token, or one whose pod or
//!   service account is gone, is answered `false` with an error);
//! - `status.audiences` holds the configured audience (the API server checks the audience
//!   when asked; an authenticator that ignores audiences answers without it, and is refused);
//! - `status.user.username` is `system:serviceaccount:<namespace>:<name>`, which becomes the
//!   identity `ns/<namespace>/sa/<name>`.
//!
//! A review that cannot be completed within [`REVIEW_TIMEOUT`] (API server unreachable, slow,
//! refusing the CA's own credential, or answering something unreadable) issues nothing: the
//! caller answers 503 and the workload retries. Tokens are never logged.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::Full;
use rustls::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::authority::CaError;
use crate::client::{ExchangeError, HttpsOrigin, root_store};
use crate::identity::WorkloadName;
use picket_common::crypto::provider;

/// The audience a workload's projected token must carry unless configured otherwise.
pub const DEFAULT_AUDIENCE: &str = "picket-ca";
/// Longest one review may take, connection included.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// The TokenReview collection on the API server.
pub const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// The prefix of a service account's user name in an authenticated review.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// Largest answer read from the API server.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Where and how to reach the API server's TokenReview API.
#[derive(Debug, Clone)]
pub struct TokenReviewConfig {
    /// The API server, `https://host[:port]` (in a pod: `https://kubernetes.default.svc`).
    pub api_url: String,
    /// PEM roots for the API server's certificate (in a pod: the mounted `ca.crt`).
    pub api_ca_file: PathBuf,
    /// The CA's own service-account token, re-read for every review because the kubelet
    /// rotates it.
    pub token_file: PathBuf,
    /// The audience workload tokens must carry.
    pub audience: String,
}

/// Why a service-account token did not prove an identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReviewError {
    /// The API server did not authenticate the token: expired, revoked, forged, issued for
    /// another audience, or its pod or service account no longer exists.
    #[error("the API server did not authenticate the service-account token: {0}")]
    NotAuthenticated(String),
    /// The token was authenticated but not for this CA's audience.
    #[error("the service-account token is not for the audience {expected:?} (it is for {found:?})")]
    WrongAudience {
        /// The audience the CA requires.
        expected: String,
        /// The audiences the review reported.
        found: Vec<String>,
    },
    /// The token belongs to a user that is not a service account.
    #[error("the token authenticates {0:?}, which is not a service account")]
    NotServiceAccount(String),
    /// The review could not be completed; a later retry may succeed.
    #[error("the token review could not be completed: {0}")]
    Unavailable(String),
    /// No answer from the API server within [`REVIEW_TIMEOUT`].
    #[error("the API server did not answer the token review within {0:?}")]
    Timeout(Duration),
}

/// Checks service-account tokens with the TokenReview API.
pub struct TokenReviewer {
    origin: HttpsOrigin,
    tls: Arc<ClientConfig>,
    token_file: PathBuf,
    audience: String,
    timeout: Duration,
}

impl fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("api_url", &self.origin.url())
            .field("token_file", &self.token_file)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// `spec` of a TokenReview request.
#[derive(Serialize)]
struct ReviewRequest<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    spec: RequestSpec<'a>,
}

#[derive(Serialize)]
struct RequestSpec<'a> {
    token: &'a str,
    audiences: [&'a str; 1],
}

/// The parts of a TokenReview answer the CA reads.
#[derive(Debug, Deserialize)]
struct ReviewAnswer {
    #[serde(default)]
    status: ReviewStatus,
}

#[derive(Debug, Default, Deserialize)]
struct ReviewStatus {
    #[serde(default)]
    authenticated: bool,
    #[serde(default)]
    user: ReviewUser,
    #[serde(default)]
    audiences: Option<Vec<String>>,
    #[serde(default)]
    error: String,
}

#[derive(Debug, Default, Deserialize)]
struct ReviewUser {
    #[serde(default)]
    username: String,
}

impl TokenReviewer {
    /// A reviewer for `config`. The API server's CA file is read now; the CA's own token
    /// file is read at every review.
    pub fn new(config: &TokenReviewConfig) -> Result<Self, CaError> {
        let origin = HttpsOrigin::parse(&config.api_url).ok_or_else(|| {
            CaError::KubernetesApi(format!(
                "invalid API server URL {:?}: expected https://host[:port]",
                config.api_url
            ))
        })?;
        if config.audience.trim().is_empty() {
            return Err(CaError::KubernetesApi("the token audience is empty".into()));
        }
        let pem = std::fs::read(&config.api_ca_file).map_err(|e| {
            CaError::KubernetesApi(format!("{}: {e}", config.api_ca_file.display()))
        })?;
        let roots = root_store(&pem).map_err(|e| {
            CaError::KubernetesApi(format!("{}: {e}", config.api_ca_file.display()))
        })?;
        // The API server is not Picket's: it may still speak only TLS 1.2, so the client
        // offers the provider's safe defaults rather than Picket's TLS 1.3-only set.
        let mut tls = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            origin,
            tls: Arc::new(tls),
            token_file: config.token_file.clone(),
            audience: config.audience.clone(),
            timeout: REVIEW_TIMEOUT,
        })
    }

    /// The same reviewer with another time limit (tests use a short one).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same reviewer asking the API server at `url` instead.
    #[cfg(test)]
    pub(crate) fn pointed_at(mut self, url: &str) -> Self {
        if let Some(origin) = HttpsOrigin::parse(url) {
            self.origin = origin;
        }
        self
    }

    /// The audience workload tokens must carry.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Asks the API server who `token` belongs to, and returns the service account.
    pub async fn review(&self, token: &str) -> Result<WorkloadName, ReviewError> {
        let request = self.request(token)?;
        let exchange =
            self.origin
                .round_trip(Arc::clone(&self.tls), request, MAX_ANSWER_BYTES, None);
        let (status, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => return Err(ReviewError::Timeout(self.timeout)),
            Ok(Err(ExchangeError::Connect(e))) => {
                return Err(ReviewError::Unavailable(format!(
                    "cannot reach the API server at {}: {e}",
                    self.origin.url()
                )));
            }
            Ok(Err(ExchangeError::Http(e))) => {
                return Err(ReviewError::Unavailable(format!(
                    "HTTP exchange with the API server failed: {e}"
                )));
            }
            Ok(Err(ExchangeError::Body(e))) => {
                return Err(ReviewError::Unavailable(format!(
                    "cannot read the API server's answer: {e}"
                )));
            }
            Ok(Ok(answer)) => answer,
        };
        judge(status, &body, &self.audience)
    }

    fn request(&self, token: &str) -> Result<Request<Full<Bytes>>, ReviewError> {
        let own_token = read_own_token(&self.token_file)?;
        let body = serde_json::to_vec(&ReviewRequest {
            api_version: "authentication.k8s.io/v1",
            kind: "TokenReview",
            spec: RequestSpec {
                token,
                audiences: [&self.audience],
            },
        })
        .map_err(|e| ReviewError::Unavailable(format!("cannot encode the review: {e}")))?;
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {own_token}")).map_err(|_| {
                ReviewError::Unavailable(format!(
                    "{} holds characters that cannot be sent in a header",
                    self.token_file.display()
                ))
            })?;
        authorization.set_sensitive(true);
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = Uri::from_static(TOKEN_REVIEW_PATH);
        let headers = request.headers_mut();
        headers.insert(header::AUTHORIZATION, authorization);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        Ok(request)
    }
}

/// Whether `token` has the shape of a JWT (three base64url segments joined by two dots), as
/// every Kubernetes service-account token does. Join tokens are one base64url string, so the
/// two kinds of bearer credential never look alike.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut segments = 0;
    for segment in token.split('.') {
        segments += 1;
        let base64url = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_');
        if segment.is_empty() || !segment.bytes().all(base64url) {
            return false;
        }
    }
    segments == 3
}

fn read_own_token(path: &Path) -> Result<String, ReviewError> {
    let raw = std::fs::read_to_string(path).map_err(|e| {
        ReviewError::Unavailable(format!(
            "cannot read the CA's own token {}: {e}",
            path.display()
        ))
    })?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(ReviewError::Unavailable(format!(
            "the CA's own token file {} is empty",
            path.display()
        )));
    }
    Ok(token.to_owned())
}

/// Turns the API server's answer into an identity or a refusal.
fn judge(status: StatusCode, body: &[u8], audience: &str) -> Result<WorkloadName, ReviewError> {
    if !status.is_success() {
        // 401/403 here mean the API server refused the CA itself (its token or its RBAC),
        // not the workload: nothing the workload can fix, so it is "unavailable".
        let snippet = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(ReviewError::Unavailable(format!(
            "the API server answered {status}: {snippet}"
        )));
    }
    let answer: ReviewAnswer = serde_json::from_slice(body).map_err(|e| {
        ReviewError::Unavailable(format!("the API server's answer is not a TokenReview: {e}"))
    })?;
    let review = answer.status;
    if !review.authenticated {
        let reason = if review.error.is_empty() {
            "not authenticated".to_owned()
        } else {
            review.error
        };
        return Err(ReviewError::NotAuthenticated(reason));
    }
    let audiences = review.audiences.unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(ReviewError::WrongAudience {
            expected: audience.to_owned(),
            found: audiences,
        });
    }
    let username = review.user.username;
    let name = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(namespace, account)| WorkloadName::new(namespace, account).ok());
    name.ok_or(ReviewError::NotServiceAccount(username))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod tests {
    //! [`TokenReviewDouble`], a stand-in for the API server's TokenReview endpoint, and the
    //! reviewer's behaviour against it.

    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::sync::Mutex;

    use http_body_util::BodyExt;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::ServerConfig;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use serde_json::{Value, json};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::*;

    /// The token the test double expects from the CA itself.
    pub(crate) const CA_OWN_TOKEN: &str = "ca-own.service-account.token";

    /// How the test double answers one workload token, as the API server would.
    #[derive(Debug, Clone)]
    pub(crate) enum Verdict {
        /// Authenticated as `system:serviceaccount:<ns>:<sa>` for the requested audiences.
        ServiceAccount(&'static str, &'static str),
        /// Authenticated, but reporting these audiences (an audience-unaware authenticator).
        AuthenticatedFor(&'static str, &'static str, Vec<&'static str>),
        /// Authenticated as a user that is not a service account.
        User(&'static str),
        /// Not authenticated, with this error (expired, wrong audience, deleted account).
        Rejected(&'static str),
        /// The API server refuses the CA's own request with this HTTP status.
        Status(u16),
        /// Never answers.
        Hang,
    }

    /// What the API server says about an expired token.
    pub(crate) const EXPIRED: &str =
        "[invalid bearer token, service account token has expired, unknown]";
    /// What the API server says about a token for another audience.
    pub(crate) const AUDIENCE_MISMATCH: &str = "[invalid bearer token, token audiences [\"other\"] is invalid for the target audiences [\"picket-ca\"], unknown]";

    /// A stand-in for the API server's TokenReview endpoint: HTTPS on a loopback port, with a
    /// certificate from its own throwaway CA, answering each workload token from a table.
    pub(crate) struct TokenReviewDouble {
        pub(crate) url: String,
        pub(crate) ca_pem: String,
        pub(crate) seen: Arc<Mutex<Vec<Value>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for TokenReviewDouble {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl TokenReviewDouble {
        pub(crate) async fn start(verdicts: HashMap<String, Verdict>) -> Self {
            let ca_key = KeyPair::generate().unwrap();
            let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca_cert = ca_params.self_signed(&ca_key).unwrap();
            let issuer = rcgen::Issuer::new(ca_params, ca_key);
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            let config = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![CertificateDer::from(cert.der().to_vec())],
                    PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                )
                .unwrap();
            let acceptor = TlsAcceptor::from(Arc::new(config));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("https://{}", listener.local_addr().unwrap());
            let seen = Arc::new(Mutex::new(Vec::new()));
            let verdicts = Arc::new(verdicts);
            let task = tokio::spawn({
                let seen = Arc::clone(&seen);
                async move {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            return;
                        };
                        let acceptor = acceptor.clone();
                        let seen = Arc::clone(&seen);
                        let verdicts = Arc::clone(&verdicts);
                        tokio::spawn(async move {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let service = service_fn(move |request| {
                                let seen = Arc::clone(&seen);
                                let verdicts = Arc::clone(&verdicts);
                                async move {
                                    Ok::<_, Infallible>(answer(request, &verdicts, &seen).await)
                                }
                            });
                            let _ = auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(tls), service)
                                .await;
                        });
                    }
                }
            });
            Self {
                url,
                ca_pem: ca_cert.pem(),
                seen,
                task,
            }
        }
    }

    async fn answer(
        request: Request<Incoming>,
        verdicts: &HashMap<String, Verdict>,
        seen: &Mutex<Vec<Value>>,
    ) -> http::Response<Full<Bytes>> {
        let respond = |status: u16, body: Value| {
            let mut response = http::Response::new(Full::new(Bytes::from(body.to_string())));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            response
        };
        let authorized = request
            .headers()
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == format!("Bearer {CA_OWN_TOKEN}").as_bytes());
        if request.method() != Method::POST || request.uri().path() != TOKEN_REVIEW_PATH {
            return respond(404, json!({"kind": "Status", "code": 404}));
        }
        if !authorized {
            return respond(401, json!({"kind": "Status", "code": 401}));
        }
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let review: Value = serde_json::from_slice(&body).unwrap();
        seen.lock().unwrap().push(review.clone());
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let audiences = review["spec"]["audiences"].clone();
        let status = match verdicts.get(token) {
            None => json!({"authenticated": false, "error": "[invalid bearer token, unknown]"}),
            Some(Verdict::ServiceAccount(ns, sa)) => json!({
                "authenticated": true,
                "user": {"username": format!("system:serviceaccount:{ns}:{sa}"),
                         "groups": ["system:serviceaccounts"]},
                "audiences": audiences,
            }),
            Some(Verdict::AuthenticatedFor(ns, sa, reported)) => json!({
                "authenticated": true,
                "user": {"username": format!("system:serviceaccount:{ns}:{sa}")},
                "audiences": reported,
            }),
            Some(Verdict::User(name)) => json!({
                "authenticated": true,
                "user": {"username": name},
                "audiences": audiences,
            }),
            Some(Verdict::Rejected(error)) => json!({"authenticated": false, "error": error}),
            Some(Verdict::Status(code)) => {
                return respond(*code, json!({"kind": "Status", "code": code}));
            }
            Some(Verdict::Hang) => std::future::pending().await,
        };
        respond(
            201,
            json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "metadata": {"creationTimestamp": null},
                "spec": review["spec"],
                "status": status,
            }),
        )
    }

    /// A reviewer of `double`, with the CA's own token in a file under `dir`.
    pub(crate) fn reviewer(double: &TokenReviewDouble, dir: &Path) -> TokenReviewer {
        let ca_file = dir.join("kube-ca.pem");
        std::fs::write(&ca_file, &double.ca_pem).unwrap();
        let token_file = dir.join("own-token");
        std::fs::write(&token_file, format!("{CA_OWN_TOKEN}\n")).unwrap();
        TokenReviewer::new(&TokenReviewConfig {
            api_url: double.url.clone(),
            api_ca_file: ca_file,
            token_file,
            audience: DEFAULT_AUDIENCE.to_owned(),
        })
        .unwrap()
    }

    pub(crate) fn verdicts(pairs: &[(&str, Verdict)]) -> HashMap<String, Verdict> {
        pairs
            .iter()
            .map(|(token, verdict)| ((*token).to_owned(), verdict.clone()))
            .collect()
    }

    #[tokio::test]
    async fn valid_token_names_the_service_account() {
        let double = TokenReviewDouble::start(verdicts(&[(
            "a.b.c",
            Verdict::ServiceAccount("shop", "orders"),
        )]))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let name = reviewer(&double, dir.path()).review("a.b.c").await.unwrap();
        assert_eq!(name, WorkloadName::new("shop", "orders").unwrap());
        let seen = double.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0]["kind"], "TokenReview");
        assert_eq!(seen[0]["apiVersion"], "authentication.k8s.io/v1");
        assert_eq!(seen[0]["spec"]["token"], "a.b.c");
        assert_eq!(seen[0]["spec"]["audiences"], json!(["picket-ca"]));
    }

    #[tokio::test]
    async fn refusals_are_told_apart() {
        let double = TokenReviewDouble::start(verdicts(&[
            ("expired.t.k", Verdict::Rejected(EXPIRED)),
            ("aud.t.k", Verdict::Rejected(AUDIENCE_MISMATCH)),
            (
                "other.aud.k",
                Verdict::AuthenticatedFor("shop", "orders", vec!["other"]),
            ),
            ("user.t.k", Verdict::User("jane@example.org")),
            ("forbidden.t.k", Verdict::Status(403)),
        ]))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let reviewer = reviewer(&double, dir.path());
        let expired = reviewer.review("expired.t.k").await.unwrap_err();
        assert!(
            matches!(&expired, ReviewError::NotAuthenticated(e) if e.contains("expired")),
            "{expired:?}"
        );
        assert!(matches!(
            reviewer.review("aud.t.k").await,
            Err(ReviewError::NotAuthenticated(_))
        ));
        assert!(matches!(
            reviewer.review("other.aud.k").await,
            Err(ReviewError::WrongAudience { found, .. }) if found == ["other"]
        ));
        assert!(matches!(
            reviewer.review("unknown.t.k").await,
            Err(ReviewError::NotAuthenticated(_))
        ));
        assert!(matches!(
            reviewer.review("user.t.k").await,
            Err(ReviewError::NotServiceAccount(u)) if u == "jane@example.org"
        ));
        assert!(matches!(
            reviewer.review("forbidden.t.k").await,
            Err(ReviewError::Unavailable(e)) if e.contains("403")
        ));
    }

    #[tokio::test]
    async fn slow_or_unreachable_api_issues_nothing() {
        let double = TokenReviewDouble::start(verdicts(&[("hang.t.k", Verdict::Hang)])).await;
        let dir = tempfile::tempdir().unwrap();
        let slow = reviewer(&double, dir.path()).with_timeout(Duration::from_millis(300));
        assert!(matches!(
            slow.review("hang.t.k").await,
            Err(ReviewError::Timeout(_))
        ));

        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", closed.local_addr().unwrap());
        drop(closed);
        let unreachable = reviewer(&double, dir.path()).pointed_at(&url);
        assert!(matches!(
            unreachable.review("a.b.c").await,
            Err(ReviewError::Unavailable(e)) if e.contains("cannot reach")
        ));
    }

    #[tokio::test]
    async fn own_token_is_reread_for_every_review() {
        let double = TokenReviewDouble::start(verdicts(&[(
            "a.b.c",
            Verdict::ServiceAccount("shop", "orders"),
        )]))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let reviewer = reviewer(&double, dir.path());
        std::fs::write(dir.path().join("own-token"), "rotated.by.kubelet").unwrap();
        assert!(matches!(
            reviewer.review("a.b.c").await,
            Err(ReviewError::Unavailable(e)) if e.contains("401")
        ));
        std::fs::write(dir.path().join("own-token"), CA_OWN_TOKEN).unwrap();
        reviewer.review("a.b.c").await.unwrap();
    }

    #[test]
    fn jwt_shape_is_three_base64url_segments() {
        assert!(looks_like_jwt("eyJhbGciOi.eyJpc3Mi.c2lnbmF0dXJl"));
        assert!(looks_like_jwt("a.b.c"));
        for not_jwt in [
            "Zm9vYmFyYmF6cXV4cXV1eGZvb2Jhcg",
            "a.b",
            "a..c",
            "a.b.c.d",
            "a.b.c ",
            "a.b=.c",
            "",
        ] {
            assert!(!looks_like_jwt(not_jwt), "{not_jwt:?}");
        }
    }

    #[test]
    fn bad_settings_are_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = |url: &str, ca: &str| TokenReviewConfig {
            api_url: url.to_owned(),
            api_ca_file: dir.path().join(ca),
            token_file: dir.path().join("token"),
            audience: DEFAULT_AUDIENCE.to_owned(),
        };
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        assert!(TokenReviewer::new(&config("http://127.0.0.1:1", "empty.pem")).is_err());
        assert!(TokenReviewer::new(&config("https://127.0.0.1:1", "missing.pem")).is_err());
        assert!(TokenReviewer::new(&config("https://127.0.0.1:1", "empty.pem")).is_err());
    }
}
