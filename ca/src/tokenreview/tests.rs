#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The reviewer's behaviour against the TokenReview test double ([`super::testing`]).

use serde_json::json;
use tokio::net::TcpListener;

use super::testing::{CA_OWN_TOKEN, EXPIRED, Review, TokenReviewDouble};
use super::*;

/// What the API server says about a token for another audience.
pub(crate) const AUDIENCE_MISMATCH: &str = "[invalid bearer token, token audiences [\"other\"] is invalid for the target audiences [\"picket-ca\"], unknown]";

/// The double, answering `answers`.
pub(crate) async fn start_double(answers: &[(&str, Review)]) -> TokenReviewDouble {
    TokenReviewDouble::start(answers).await.unwrap()
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

#[tokio::test]
async fn valid_token_names_the_service_account() {
    let double = start_double(&[("a.b.c", Review::ServiceAccount("shop", "orders"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let name = reviewer(&double, dir.path()).review("a.b.c").await.unwrap();
    assert_eq!(name, WorkloadName::new("shop", "orders").unwrap());
    let seen = double.reviews();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["kind"], "TokenReview");
    assert_eq!(seen[0]["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(seen[0]["spec"]["token"], "a.b.c");
    assert_eq!(seen[0]["spec"]["audiences"], json!(["picket-ca"]));
}

#[tokio::test]
async fn refusals_are_told_apart() {
    let double = start_double(&[
        ("expired.t.k", Review::Rejected(EXPIRED)),
        ("aud.t.k", Review::Rejected(AUDIENCE_MISMATCH)),
        (
            "other.aud.k",
            Review::AuthenticatedFor("shop", "orders", vec!["other"]),
        ),
        ("user.t.k", Review::User("jane@example.org")),
        ("forbidden.t.k", Review::Status(403)),
    ])
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
    let double = start_double(&[("hang.t.k", Review::Hang)]).await;
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
    let double = start_double(&[("a.b.c", Review::ServiceAccount("shop", "orders"))]).await;
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
