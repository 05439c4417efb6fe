#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use rcgen::{BasicConstraints, CertificateParams, IsCa};
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;
use crate::client::{CaClient, ClientError};
use crate::test_support::{certs, csr, new_ca, p256, verify_chain, workload};
use crate::tokenreview::testing::{EXPIRED, Review, TokenReviewDouble};
use crate::tokenreview::tests::{AUDIENCE_MISMATCH, reviewer, start_double};

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

fn certified_key(response: &api::CertificateResponse, key: &rcgen::KeyPair) -> Arc<CertifiedKey> {
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
    let double =
        start_double(&[("valid.sa.token", Review::ServiceAccount("shop", "orders"))]).await;
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
    let double = start_double(&[
        ("expired.sa.token", Review::Rejected(EXPIRED)),
        ("audience.sa.token", Review::Rejected(AUDIENCE_MISMATCH)),
        (
            "unaware.sa.token",
            Review::AuthenticatedFor("shop", "orders", vec!["api"]),
        ),
        ("user.sa.token", Review::User("kubernetes-admin")),
        (
            "deleted.sa.token",
            Review::Rejected(
                "[invalid bearer token, service account shop/orders has been deleted]",
            ),
        ),
        ("denied.sa.token", Review::Status(403)),
    ])
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
    let double = start_double(&[]).await;
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
    let double = start_double(&[
        (
            "injector.sa.token",
            Review::ServiceAccount("picket", "injector"),
        ),
        ("orders.sa.token", Review::ServiceAccount("shop", "orders")),
    ])
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
    let switched = rotate_root(&state, RootStage::Switch, &GivenRoot::default(), false).unwrap();
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
