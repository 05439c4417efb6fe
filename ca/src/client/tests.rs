#![allow(clippy::unwrap_used)]
use super::*;
use crate::test_support::new_ca;

#[test]
fn accepts_only_https_base_urls() {
    let (_dir, ca) = new_ca();
    let bundle = ca.trust_bundle_pem();
    let trust = bundle.as_bytes();
    for good in [
        "https://127.0.0.1:7443",
        "https://[::1]:7443",
        "https://ca.example.org",
        "https://ca.example.org/",
    ] {
        CaClient::new(good, trust).unwrap();
    }
    for bad in [
        "http://127.0.0.1:7443",
        "127.0.0.1:7443",
        "https://127.0.0.1:7443/v1",
        "https://127.0.0.1:7443/?x=1",
        "https://user@ca.example.org",
        "",
    ] {
        assert!(
            matches!(CaClient::new(bad, trust), Err(ClientError::InvalidUrl(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn needs_at_least_one_trusted_certificate() {
    assert!(matches!(
        CaClient::new("https://127.0.0.1:7443", b"no pem here"),
        Err(ClientError::InvalidTrust(_))
    ));
}

#[test]
fn error_answers_are_classified_by_status() {
    let body = br#"{"error":"token_used","message":"join token has already been used"}"#;
    assert!(matches!(
        check_status(StatusCode::UNAUTHORIZED, body),
        Err(ClientError::Rejected { status: 401, code, .. }) if code == "token_used"
    ));
    assert!(matches!(
        check_status(StatusCode::BAD_GATEWAY, b"<html>"),
        Err(ClientError::Unavailable { status: 502, .. })
    ));
    assert!(matches!(
        check_status(StatusCode::FORBIDDEN, b"<html>"),
        Err(ClientError::Rejected { code, .. }) if code == "unknown"
    ));
    check_status(StatusCode::OK, b"").unwrap();
}
