//! Workload attestation with Kubernetes service-account tokens: the real `picket ca serve
//! --kube-api` asks a stand-in for the API server's TokenReview endpoint (a test double,
//! answering as the API server does) and issues only what an authenticated review for the
//! right audience vouches for. Join tokens keep working beside it.

use anyhow::{Result, bail, ensure};
use picket_ca::client::ClientError;
use picket_ca::tokenreview::testing::{EXPIRED, Review, TokenReviewDouble};
use picket_tests::k8s::{KubeApi, KubeCa};
use picket_tests::{TRUST_DOMAIN, closed_port};
/// What it says about a token for another audience.
const WRONG_AUDIENCE: &str = "[invalid bearer token, token audiences [\"https://kubernetes.default.svc\"] is invalid for the target audiences [\"picket-ca\"], unknown]";
/// What it says about the token of a deleted pod.
const POD_DELETED: &str = "[invalid bearer token, pod \"orders-7d9f\" not found, unknown]";

/// How the CA reaches `double`.
pub(crate) fn kube_api(double: &TokenReviewDouble) -> KubeApi<'_> {
    KubeApi {
        url: &double.url,
        ca_pem: &double.ca_pem,
        own_token: &double.own_token,
    }
}

/// Starts the test double with `answers`.
pub(crate) async fn start_double(answers: &[(&str, Review)]) -> Result<TokenReviewDouble> {
    TokenReviewDouble::start(answers)
        .await
        .map_err(|e| anyhow::anyhow!("the TokenReview double did not start: {e}"))
}

fn csr(identity: &str) -> Result<String> {
    let key = rcgen::KeyPair::generate()?;
    picket_tests::ca::csr_pem(&key, &format!("spiffe://{TRUST_DOMAIN}/{identity}"))
}

/// Asks for a certificate for `identity` with `token`; the HTTP status and error code.
async fn refusal(ca: &KubeCa, identity: &str, token: &str) -> Result<(u16, String)> {
    let client = picket_ca::CaClient::new(&ca.url(), &std::fs::read(ca.bundle_path())?)?;
    match client.issue_with_token(&csr(identity)?, token).await {
        Err(ClientError::Rejected { status, code, .. }) => Ok((status, code)),
        Err(ClientError::Unavailable { status, .. }) => Ok((status, "unavailable".into())),
        Err(other) => bail!("unexpected failure {other}"),
        Ok(issued) => bail!("{token}: issued {}", issued.spiffe_id),
    }
}

#[tokio::test]
async fn a_reviewed_service_account_token_gets_its_identity() -> Result<()> {
    let api =
        start_double(&[("eyJh.orders.sig", Review::ServiceAccount("shop", "orders"))]).await?;
    let ca = KubeCa::start(Some(kube_api(&api))).await?;
    let client = picket_ca::CaClient::new(&ca.url(), &std::fs::read(ca.bundle_path())?)?;
    let issued = client
        .issue_with_token(&csr("ns/shop/sa/orders")?, "eyJh.orders.sig")
        .await?;
    ensure!(issued.spiffe_id == format!("spiffe://{TRUST_DOMAIN}/ns/shop/sa/orders"));

    let reviews = api.reviews();
    ensure!(reviews.len() == 1, "{reviews:?}");
    ensure!(reviews[0]["kind"] == "TokenReview");
    ensure!(reviews[0]["spec"]["token"] == "eyJh.orders.sig");
    ensure!(reviews[0]["spec"]["audiences"] == serde_json::json!(["picket-ca"]));

    // The review decides the identity: asking for another is refused.
    let (status, code) = refusal(&ca, "ns/shop/sa/admin", "eyJh.orders.sig").await?;
    ensure!((status, code.as_str()) == (403, "identity_mismatch"));

    // Join tokens keep working for workloads outside Kubernetes.
    let join = std::fs::read_to_string(ca.token_file("ns/vm/sa/billing", 1).await?)?;
    let issued = client
        .issue_with_token(&csr("ns/vm/sa/billing")?, &join)
        .await?;
    ensure!(issued.spiffe_id.ends_with("/ns/vm/sa/billing"));
    Ok(())
}

#[tokio::test]
async fn refused_reviews_issue_nothing() -> Result<()> {
    let api = start_double(&[
        ("eyJh.expired.sig", Review::Rejected(EXPIRED)),
        ("eyJh.audience.sig", Review::Rejected(WRONG_AUDIENCE)),
        (
            "eyJh.unaware.sig",
            Review::AuthenticatedFor("shop", "orders", vec!["https://kubernetes.default.svc"]),
        ),
        ("eyJh.deleted.sig", Review::Rejected(POD_DELETED)),
        ("eyJh.forbidden.sig", Review::Status(403)),
        ("eyJh.slow.sig", Review::Hang),
    ])
    .await?;
    let ca = KubeCa::start(Some(kube_api(&api))).await?;
    for (token, want) in [
        ("eyJh.expired.sig", (401, "service_account_token_rejected")),
        ("eyJh.audience.sig", (401, "service_account_token_rejected")),
        ("eyJh.unaware.sig", (401, "service_account_token_audience")),
        ("eyJh.deleted.sig", (401, "service_account_token_rejected")),
        ("eyJh.unknown.sig", (401, "service_account_token_rejected")),
        // The API server refused the CA's own request (say, its RBAC is missing).
        ("eyJh.forbidden.sig", (503, "unavailable")),
        // No answer within the CA's five seconds.
        ("eyJh.slow.sig", (503, "unavailable")),
    ] {
        let (status, code) = refusal(&ca, "ns/shop/sa/orders", token).await?;
        ensure!(
            (status, code.as_str()) == want,
            "{token}: got {status} {code}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_unreachable_api_server_is_503_and_issues_nothing() -> Result<()> {
    let api = start_double(&[]).await?;
    let url = format!("https://{}", closed_port()?);
    let ca = KubeCa::start(Some(KubeApi {
        url: &url,
        ca_pem: &api.ca_pem,
        own_token: &api.own_token,
    }))
    .await?;
    let (status, code) = refusal(&ca, "ns/shop/sa/orders", "eyJh.orders.sig").await?;
    ensure!((status, code.as_str()) == (503, "unavailable"));
    Ok(())
}

#[tokio::test]
async fn without_kube_api_service_account_tokens_are_refused() -> Result<()> {
    let ca = KubeCa::start(None).await?;
    let (status, code) = refusal(&ca, "ns/shop/sa/orders", "eyJh.orders.sig").await?;
    ensure!((status, code.as_str()) == (401, "service_account_tokens_disabled"));
    Ok(())
}

/// The double is behind picket-ca's `testing` feature, which only the end-to-end tests enable,
/// as a dev-dependency: the build of the binary these tests run (`cargo build --workspace
/// --bins`, no dev-dependencies) resolves picket-ca without it, while a build with
/// dev-dependencies has it.
#[tokio::test]
async fn the_binary_has_no_test_double() -> Result<()> {
    // The cargo that built this test (cargo tells the compiler where it is).
    let cargo = option_env!("CARGO").unwrap_or("cargo").to_owned();
    let features = |edges: &'static str| {
        let cargo = cargo.clone();
        async move {
            let out = tokio::process::Command::new(&cargo)
                .args(["tree", "--workspace", "--locked", "--offline", "-e", edges])
                .args(["-i", "picket-ca", "--prefix", "none", "--format", "{p} {f}"])
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
                .output()
                .await?;
            ensure!(
                out.status.success(),
                "cargo tree: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout)?;
            let ca = text
                .lines()
                .find(|l| l.starts_with("picket-ca "))
                .map(str::to_owned);
            ca.ok_or_else(|| anyhow::anyhow!("no picket-ca in cargo tree:\n{text}"))
        }
    };
    let production = features("normal,build").await?;
    ensure!(!production.contains("testing"), "{production}");
    let with_dev = features("normal,build,dev").await?;
    ensure!(with_dev.contains("testing"), "{with_dev}");
    Ok(())
}
