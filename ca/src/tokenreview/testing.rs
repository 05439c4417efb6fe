//! The one TokenReview test double: a stand-in for the Kubernetes API server's TokenReview
//! endpoint, used by this crate's unit tests and by the end-to-end tests. It is compiled only
//! for this crate's tests and with the `testing` feature, which the end-to-end test crate
//! enables as a dev-dependency, so it never reaches the `picket` binary.
//!
//! HTTPS on a loopback port with a certificate from its own throwaway CA; it answers each
//! workload token from a table, as the API server would, checks the CA's own bearer token,
//! and records every review it receives.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::ServerConfig;
use rustls_pki_types::PrivateKeyDer;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::TOKEN_REVIEW_PATH;
use picket_common::crypto::provider;

/// Why the double could not start.
pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// The token the double expects from the CA itself (`Authorization: Bearer ...`).
pub const CA_OWN_TOKEN: &str = "ca-own.service-account.token";

/// What the API server says about an expired token.
pub const EXPIRED: &str = "[invalid bearer token, service account token has expired, unknown]";

/// How the double answers one workload token, as the API server would.
#[derive(Debug, Clone)]
pub enum Review {
    /// `authenticated: true` as `system:serviceaccount:<ns>:<sa>` for the requested audiences.
    ServiceAccount(&'static str, &'static str),
    /// `authenticated: true` as that service account, but reporting these audiences (an
    /// audience-unaware authenticator).
    AuthenticatedFor(&'static str, &'static str, Vec<&'static str>),
    /// `authenticated: true` as a user that is not a service account.
    User(&'static str),
    /// `authenticated: false` with this error (expired, wrong audience, deleted pod).
    Rejected(&'static str),
    /// The API server refuses the CA's own request with this HTTP status.
    Status(u16),
    /// Never answers.
    Hang,
}

/// The running double; dropping it stops it.
#[derive(Debug)]
pub struct TokenReviewDouble {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The certificate to trust for it, PEM.
    pub ca_pem: String,
    /// The token the CA must present.
    pub own_token: String,
    reviews: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenReviewDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The double's state shared by its connections.
struct Table {
    answers: HashMap<String, Review>,
    reviews: Arc<Mutex<Vec<Value>>>,
    own_token: String,
}

impl TokenReviewDouble {
    /// Starts the double with its answers (token, review); other tokens are unknown to it.
    pub async fn start(answers: &[(&str, Review)]) -> Result<Self, StartError> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let cert =
            CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&key, &issuer)?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://{}", listener.local_addr()?);
        let reviews = Arc::new(Mutex::new(Vec::new()));
        let table = Arc::new(Table {
            answers: answers
                .iter()
                .map(|(token, review)| ((*token).to_owned(), review.clone()))
                .collect(),
            reviews: Arc::clone(&reviews),
            own_token: CA_OWN_TOKEN.to_owned(),
        });
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let table = Arc::clone(&table);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |request| {
                        let table = Arc::clone(&table);
                        async move { Ok::<_, Infallible>(answer(request, &table).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(Self {
            url,
            ca_pem: ca_cert.pem(),
            own_token: CA_OWN_TOKEN.to_owned(),
            reviews,
            task,
        })
    }

    /// The reviews received so far (the JSON bodies), oldest first.
    pub fn reviews(&self) -> Vec<Value> {
        self.reviews.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

fn respond(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
}

fn status_body(code: u16) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "code": code})
}

async fn answer(request: Request<Incoming>, table: &Table) -> Response<Full<Bytes>> {
    if request.method() != Method::POST || request.uri().path() != TOKEN_REVIEW_PATH {
        return respond(StatusCode::NOT_FOUND, &status_body(404));
    }
    let bearer = format!("Bearer {}", table.own_token);
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == bearer.as_bytes());
    if !authorized {
        return respond(StatusCode::UNAUTHORIZED, &status_body(401));
    }
    let Ok(body) = request.into_body().collect().await else {
        return respond(StatusCode::BAD_REQUEST, &status_body(400));
    };
    let Ok(review) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        return respond(StatusCode::BAD_REQUEST, &status_body(400));
    };
    if let Ok(mut seen) = table.reviews.lock() {
        seen.push(review.clone());
    }
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let audiences = review["spec"]["audiences"].clone();
    let status = match table.answers.get(token) {
        None => json!({"authenticated": false, "error": "[invalid bearer token, unknown]"}),
        Some(Review::ServiceAccount(ns, sa)) => json!({
            "authenticated": true,
            "user": {
                "username": format!("system:serviceaccount:{ns}:{sa}"),
                "uid": "7d5c4a0e-1111-4c1e-9f00-000000000001",
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
            },
            "audiences": audiences,
        }),
        Some(Review::AuthenticatedFor(ns, sa, reported)) => json!({
            "authenticated": true,
            "user": {"username": format!("system:serviceaccount:{ns}:{sa}")},
            "audiences": reported,
        }),
        Some(Review::User(name)) => json!({
            "authenticated": true,
            "user": {"username": name},
            "audiences": audiences,
        }),
        Some(Review::Rejected(error)) => json!({"authenticated": false, "error": error}),
        Some(Review::Status(code)) => {
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return respond(status, &status_body(*code));
        }
        Some(Review::Hang) => std::future::pending().await,
    };
    respond(
        StatusCode::CREATED,
        &json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {"creationTimestamp": null},
            "spec": review["spec"],
            "status": status,
        }),
    )
}
