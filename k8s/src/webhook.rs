//! The admission webhook (`picket injector serve`), mutating for pods and validating for policy
//! objects (`/validate`, [`crate::policy`]). The mutating part: the API server sends every new
//! pod in a selected namespace as an `AdmissionReview` (`admission.k8s.io/v1`), and the answer
//! is a JSON patch from the pod as sent to the pod as [`crate::inject::inject`] makes it. The
//! webhook and `picket inject` therefore produce the same pods.
//!
//! TLS: the API server verifies the webhook by its Service's DNS name against the
//! `caBundle` of the webhook configuration (Picket's trust bundle). The webhook makes a key in
//! memory, sends a CSR to the Picket CA's `/v1/server-certificates` with its projected
//! service-account token (or a join token), and gets a certificate for the DNS names the CA
//! allows its identity (`picket ca serve --server-name`). It renews at about two thirds of
//! the lifetime; the key is never written anywhere.
//!
//! | method | path       | answer                                            |
//! |--------|------------|---------------------------------------------------|
//! | POST   | `/inject`  | `AdmissionReview` with the response               |
//! | POST   | `/validate`| `AdmissionReview`: policy objects checked ([`crate::policy`]) |
//! | GET    | `/healthz` | `ok` (for the kubelet's probes)                   |
//!
//! A pod the injector cannot handle (say, an opt-out annotation that is not a port list) is
//! refused with the reason, rather than admitted without its sidecar.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use picket_ca::client::{CaClient, ClientError};
use picket_common::backoff::{Backoff, renewal_delay};
use picket_common::crypto::{PROTOCOL_VERSIONS, provider};
use picket_common::server::{self, BodyError, ListenerSettings, TlsServer};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::inject::{self, Settings};

/// The path the webhook configuration points at.
pub const INJECT_PATH: &str = "/inject";
/// The probe path.
pub const HEALTH_PATH: &str = "/healthz";

/// Largest review read (a pod is at most about 1.5 MB in etcd).
const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;
/// Longest a client may take to send a request body (the handshake and head have the listener's
/// header timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest open connections may take to finish after shutdown is asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry bounds while the CA cannot issue.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Why the webhook cannot run or cannot answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The request body is not an `AdmissionReview` of `admission.k8s.io/v1`.
    #[error("not an admission.k8s.io/v1 AdmissionReview: {0}")]
    BadReview(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The token file is empty.
    #[error("token file {0} is empty")]
    EmptyToken(PathBuf),
    /// Making the key pair or the CSR failed.
    #[error("cannot make key pair or CSR: {0}")]
    Csr(#[from] rcgen::Error),
    /// The CA could not be reached or refused the request.
    #[error("server certificate from the CA: {0}")]
    Ca(#[from] ClientError),
    /// The CA's answer is not a usable certificate and chain.
    #[error("unusable server certificate from the CA: {0}")]
    Certificate(String),
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The listening socket failed.
    #[error("listener: {0}")]
    Listener(#[source] std::io::Error),
    /// Shutdown was asked for before the first certificate arrived.
    #[error("shut down before a server certificate was issued")]
    Cancelled,
}

/// Answers one `AdmissionReview`: a pod being created gets the sidecar as a JSON patch;
/// anything else is allowed unchanged.
pub fn review(body: &[u8], settings: &Settings) -> Result<Value, WebhookError> {
    let review: Value =
        serde_json::from_slice(body).map_err(|e| WebhookError::BadReview(e.to_string()))?;
    if review["apiVersion"] != "admission.k8s.io/v1" || review["kind"] != "AdmissionReview" {
        return Err(WebhookError::BadReview(format!(
            "apiVersion {} kind {}",
            review["apiVersion"], review["kind"]
        )));
    }
    let request = &review["request"];
    let uid = request["uid"]
        .as_str()
        .ok_or_else(|| WebhookError::BadReview("request.uid is missing".into()))?;
    let mut answer = Map::new();
    answer.insert("uid".into(), json!(uid));
    answer.insert("allowed".into(), json!(true));

    let is_pod_create = request["kind"]["group"] == ""
        && request["kind"]["kind"] == "Pod"
        && request["operation"] == "CREATE"
        && request.get("subResource").is_none_or(Value::is_null);
    if is_pod_create {
        let original = &request["object"];
        if !original.is_object() {
            return Err(WebhookError::BadReview(
                "request.object is not a pod".into(),
            ));
        }
        let mut pod = original.clone();
        match inject::inject(&mut pod, settings) {
            Ok(reports) => {
                for report in reports {
                    tracing::info!(
                        namespace = request["namespace"].as_str().unwrap_or(""),
                        workload = %report.workload,
                        outcome = ?report.outcome,
                        "admission review"
                    );
                }
                let patch = json_patch(original, &pod);
                if !patch.is_empty() {
                    let encoded = serde_json::to_vec(&patch)
                        .map_err(|e| WebhookError::BadReview(e.to_string()))?;
                    answer.insert("patchType".into(), json!("JSONPatch"));
                    answer.insert("patch".into(), json!(STANDARD.encode(encoded)));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "refusing a pod the injector cannot handle");
                answer.insert("allowed".into(), json!(false));
                answer.insert(
                    "status".into(),
                    json!({"code": 400, "reason": "BadRequest", "message": e.to_string()}),
                );
            }
        }
    }
    Ok(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": answer,
    }))
}

/// A JSON patch (RFC 6902) that turns `from` into `to`. Objects are compared key by key;
/// a list keeps its common beginning and end, and the differing middle is removed and added,
/// so inserting containers or appending volumes is a few `add` operations.
pub fn json_patch(from: &Value, to: &Value) -> Vec<Value> {
    let mut operations = Vec::new();
    diff(String::new(), from, to, &mut operations);
    operations
}

fn diff(path: String, from: &Value, to: &Value, out: &mut Vec<Value>) {
    if from == to {
        return;
    }
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, old) in a {
                let at = format!("{path}/{}", escape(key));
                match b.get(key) {
                    Some(new) => diff(at, old, new, out),
                    None => out.push(json!({"op": "remove", "path": at})),
                }
            }
            for (key, new) in b {
                if !a.contains_key(key) {
                    let at = format!("{path}/{}", escape(key));
                    out.push(json!({"op": "add", "path": at, "value": new}));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
            let room = a.len().min(b.len()) - prefix;
            let suffix = a
                .iter()
                .rev()
                .zip(b.iter().rev())
                .take(room)
                .take_while(|(x, y)| x == y)
                .count();
            for index in (prefix..a.len() - suffix).rev() {
                out.push(json!({"op": "remove", "path": format!("{path}/{index}")}));
            }
            for (offset, item) in b[prefix..b.len() - suffix].iter().enumerate() {
                let index = prefix + offset;
                out.push(json!({"op": "add", "path": format!("{path}/{index}"), "value": item}));
            }
        }
        _ => out.push(json!({"op": "replace", "path": path, "value": to})),
    }
}

/// A JSON pointer reference token (RFC 6901): `~` as `~0`, `/` as `~1`.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Where the webhook gets its serving certificate.
#[derive(Debug, Clone)]
pub struct CertificateSource {
    /// A client of the Picket CA.
    pub ca: CaClient,
    /// The bearer credential: a projected service-account token (re-read at every request,
    /// since the kubelet rotates it) or a join token.
    pub token_file: PathBuf,
    /// The PEM roots the CA's certificate chains to, re-read before every request so a root
    /// rotation (a ConfigMap update) reaches the client without a restart.
    pub trust_file: PathBuf,
}

impl CertificateSource {
    /// Asks the CA for a server certificate for a new key; returns it and its end of validity
    /// (Unix seconds).
    async fn obtain(&self) -> Result<(Arc<CertifiedKey>, i64), WebhookError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key)?.pem()?;
        let token = read_token(&self.token_file)?;
        match std::fs::read(&self.trust_file) {
            Ok(pem) => {
                if let Err(e) = self.ca.set_trust(&pem) {
                    tracing::warn!(path = %self.trust_file.display(), error = %e, "the trust bundle file is unusable; keeping the current trust");
                }
            }
            Err(e) => {
                tracing::warn!(path = %self.trust_file.display(), error = %e, "cannot read the trust bundle file; keeping the current trust");
            }
        }
        let answer = self.ca.issue_server_certificate(&csr, &token).await?;
        let chain = CertificateDer::pem_slice_iter(answer.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| WebhookError::Certificate(e.to_string()))?;
        if chain.is_empty() {
            return Err(WebhookError::Certificate(
                "no certificate in the chain".into(),
            ));
        }
        let signer = provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                key.serialize_der(),
            )))?;
        let not_after = time::OffsetDateTime::parse(
            &answer.not_after,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| WebhookError::Certificate(format!("not_after: {e}")))?
        .unix_timestamp();
        tracing::info!(serial = %answer.serial, not_after = %answer.not_after, "webhook server certificate installed");
        Ok((Arc::new(CertifiedKey::new(chain, signer)), not_after))
    }
}

fn read_token(path: &Path) -> Result<String, WebhookError> {
    let raw = std::fs::read_to_string(path).map_err(|source| WebhookError::Read {
        path: path.to_owned(),
        source,
    })?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(WebhookError::EmptyToken(path.to_owned()));
    }
    Ok(token.to_owned())
}

/// The current serving certificate, swapped on renewal; handshakes read it each time.
#[derive(Debug)]
struct CurrentCertificate(ArcSwap<CertifiedKey>);

impl rustls::server::ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Keeps asking until the CA issues or `shutdown` is asked for; a refusal is retried too,
/// because the usual cause is a CA not yet configured for this identity.
async fn obtain_with_retry(
    source: &CertificateSource,
    shutdown: &CancellationToken,
) -> Result<(Arc<CertifiedKey>, i64), WebhookError> {
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    loop {
        match source.obtain().await {
            Ok(issued) => return Ok(issued),
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?wait, "cannot obtain the webhook's server certificate");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => return Err(WebhookError::Cancelled),
                }
            }
        }
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Renews the certificate at about two thirds of its remaining lifetime, until `shutdown`.
async fn renew(
    source: CertificateSource,
    current: Arc<CurrentCertificate>,
    mut not_after: i64,
    shutdown: CancellationToken,
) {
    loop {
        let now = unix_now();
        let delay = renewal_delay(now, not_after, now, 0.5);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
        match obtain_with_retry(&source, &shutdown).await {
            Ok((certified, expiry)) => {
                current.0.store(certified);
                not_after = expiry;
            }
            Err(_) => return,
        }
    }
}

/// Obtains a serving certificate, then answers admission reviews on `listener` until
/// `shutdown`, renewing the certificate as it goes. `on_listening` is called once the first
/// certificate is installed and connections are being accepted.
pub async fn serve(
    listener: TcpListener,
    settings: Arc<Settings>,
    source: CertificateSource,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(),
) -> Result<(), WebhookError> {
    let (first, not_after) = obtain_with_retry(&source, &shutdown).await?;
    let current = Arc::new(CurrentCertificate(ArcSwap::new(first)));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&current) as Arc<dyn rustls::server::ResolvesServerCert>);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    tokio::spawn(renew(
        source,
        Arc::clone(&current),
        not_after,
        shutdown.clone(),
    ));

    let local = listener.local_addr().map_err(WebhookError::Listener)?;
    tracing::info!(listen = %local, "admission webhook listening");
    on_listening();
    let server = TlsServer {
        settings: ListenerSettings::control(),
        side: "webhook",
        drain_timeout: DRAIN_TIMEOUT,
        max_connection_age: None,
    };
    server::serve_tls(listener, acceptor, &server, &shutdown, move |_tls| {
        let settings = Arc::clone(&settings);
        service_fn(move |request| {
            let settings = Arc::clone(&settings);
            async move { Ok::<_, Infallible>(route(&settings, request).await) }
        })
    })
    .await;
    Ok(())
}

async fn route(settings: &Settings, request: Request<Incoming>) -> Response<Full<Bytes>> {
    // The body is read (or discarded) before any answer, so the client reads the status
    // instead of a reset stream.
    let (request, body) = request.into_parts();
    let body = server::read_body(body, MAX_REVIEW_BYTES, REQUEST_TIMEOUT).await;
    match (&request.method, request.uri.path()) {
        (&Method::GET, HEALTH_PATH) => plain(StatusCode::OK, "ok"),
        (&Method::POST, INJECT_PATH) => {
            let body = match body {
                Ok(body) => body,
                Err(e) => return body_error(&e),
            };
            match review(&body, settings) {
                Ok(answer) => json_response(&answer),
                Err(e) => plain(StatusCode::BAD_REQUEST, &e.to_string()),
            }
        }
        (&Method::POST, crate::policy::VALIDATE_PATH) => {
            let body = match body {
                Ok(body) => body,
                Err(e) => return body_error(&e),
            };
            // The checks of `picket policy check` with its default settings: one object
            // alone, so the root namespace and duplicate names do not come into it.
            let options = picket_policy::LoadOptions::default();
            match crate::policy::review(&body, &options) {
                Ok(answer) => json_response(&answer),
                Err(e) => plain(StatusCode::BAD_REQUEST, &e),
            }
        }
        (_, HEALTH_PATH | INJECT_PATH | crate::policy::VALIDATE_PATH) => {
            plain(StatusCode::METHOD_NOT_ALLOWED, "wrong method")
        }
        _ => plain(StatusCode::NOT_FOUND, "not found"),
    }
}

/// The answer to a review whose body could not be read.
fn body_error(e: &BodyError) -> Response<Full<Bytes>> {
    let status = match e {
        BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        BodyError::Timeout => StatusCode::REQUEST_TIMEOUT,
        // Unreadable, and whatever the server skeleton adds later.
        _ => StatusCode::BAD_REQUEST,
    };
    plain(status, &e.to_string())
}

fn json_response(answer: &Value) -> Response<Full<Bytes>> {
    match serde_json::to_vec(answer) {
        Ok(json) => {
            let mut response = Response::new(Full::new(Bytes::from(json)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

#[cfg(test)]
mod tests;
