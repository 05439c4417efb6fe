#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::values::*;
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
    assert_eq!(
        parse_condition_key("request.auth.claims[iss]"),
        Ok(CondKey::RequestClaim(vec!["iss".into()].into_boxed_slice()))
    );
    assert_eq!(
        parse_condition_key("request.auth.claims[realm][roles]"),
        Ok(CondKey::RequestClaim(
            vec!["realm".into(), "roles".into()].into_boxed_slice()
        ))
    );
    for bad in [
        "request.auth.claims",
        "request.auth.claims[]",
        "request.auth.claims[a",
        "request.auth.claims.a",
        "request.auth.claims[a]x",
        "request.auth.subject",
    ] {
        assert!(parse_condition_key(bad).is_err(), "{bad}");
    }
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

#[test]
fn principals_must_have_an_identity_shape() {
    for ok in [
        "cluster.local/ns/shop/sa/frontend",
        "spiffe://cluster.local/ns/shop/sa/frontend",
        "cluster.local/ns/shop/sa/*",
        "cluster.local/ns/shop/*",
        "cluster.local/ns/sh*",
        "cluster.local/*",
        "cluster.*",
        "*/sa/frontend",
        "*/ns/shop/sa/frontend",
        "*end",
        "*",
        "spiffe://*",
    ] {
        assert!(
            parse_principal(ok).is_ok(),
            "{ok}: {:?}",
            parse_principal(ok)
        );
    }
    for (bad, why) in [
        ("cluster.local/ns//sa/frontend", "the namespace is empty"),
        ("cluster.local/ns/shop/sa/", "the service account is empty"),
        ("cluster.local/ns/shop", "3 `/`-separated parts"),
        (
            "cluster.local/ns/shop/sa/frontend/x",
            "6 `/`-separated parts",
        ),
        ("cluster.local/ns/a/sa/b/*", "more than five"),
        ("*/x/ns/a/sa/b", "more than five"),
        (".local/ns/shop/sa/frontend", "is not a trust domain"),
        ("cluster.local/nz/shop/*", "`nz` stands where `ns` belongs"),
        ("cluster.local/ns/-shop*", "`-shop` is not a namespace"),
        ("cluster.local/ns/a..b/*", "`a..b` is not a namespace"),
        ("*/sa/front-", "`front-` is not a service account"),
        ("*_end", "`_end` is not a service account"),
        ("*/ns/shop/x/frontend", "`x` stands where `sa` belongs"),
    ] {
        let e = parse_principal(bad).unwrap_err();
        assert!(
            e.contains(why) && e.contains("is not a principal"),
            "{bad}: {e}"
        );
    }
}
