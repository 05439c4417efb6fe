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

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
pub(crate) mod tests;
