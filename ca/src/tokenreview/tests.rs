//! [`TokenReviewDouble`], a stand-in for the API server's TokenReview endpoint, and the
//! reviewer's behaviour against it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
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
                            async move { Ok::<_, Infallible>(answer(request, &verdicts, &seen).await) }
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
