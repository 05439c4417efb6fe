#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;

#[test]
fn path_patterns_must_be_reachable_after_normalization() {
    for ok in [
        "/api/orders",
        "/api/*",
        "/",
        "/*",
        "/.well-known/*",
        "/a/.*",
        "/a/..*",
        "*.php",
        "*",
        "/caf%C3%A9",
        "/a%2Fb",
        "/a;v=1",
    ] {
        assert!(parse_path(ok).is_ok(), "{ok}: {:?}", parse_path(ok));
    }
    for bad in [
        "api/orders",
        "/api/../admin",
        "/api//orders",
        "/api/./x*",
        "/caf%c3%a9",
        "/%61dmin",
        "/a?b=1",
        "/a#x",
        "*//x",
        "*/../x",
        "/a/*/b",
        "/a b",
        "/api/%2e%2e/*",
    ] {
        assert!(parse_path(bad).is_err(), "{bad}");
    }
}

#[test]
fn condition_keys() {
    assert_eq!(
        parse_condition_key("request.headers[X-Tenant]"),
        Ok(CondKey::Header("x-tenant".into()))
    );
    assert!(parse_condition_key("request.headers[]").is_err());
    assert!(parse_condition_key("request.headers[a b]").is_err());
    assert!(
        parse_condition_key("request.auth.claims[iss]")
            .unwrap_err()
            .contains("not supported")
    );
    assert!(
        parse_condition_key("source.port")
            .unwrap_err()
            .contains("unknown key")
    );
}

#[test]
fn principals_drop_the_spiffe_scheme() {
    assert_eq!(
        parse_principal("spiffe://cluster.local/ns/a/sa/b"),
        Ok(StrMatch::Exact("cluster.local/ns/a/sa/b".into()))
    );
    assert_eq!(
        parse_principal("spiffe://cluster.local/ns/a/*"),
        Ok(StrMatch::Prefix("cluster.local/ns/a/".into()))
    );
    assert_eq!(parse_principal("spiffe://*"), Ok(StrMatch::Present));
    assert!(parse_principal("spiffe://").is_err());
    assert!(parse_principal("a b").is_err());
}
