#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;

#[test]
fn string_forms() {
    let cases: &[(&str, &str, bool)] = &[
        ("abc", "abc", true),
        ("abc", "abcd", false),
        ("abc", "ABC", false),
        ("ab*", "abc", true),
        ("ab*", "ab", true),
        ("ab*", "a", false),
        ("*bc", "abc", true),
        ("*bc", "bc", true),
        ("*bc", "abd", false),
        ("*", "x", true),
        ("*", "", false),
    ];
    for (pattern, value, want) in cases {
        let m = StrMatch::parse(pattern).unwrap();
        assert_eq!(m.matches(value), *want, "{pattern} vs {value}");
    }
}

#[test]
fn stars_in_the_middle_are_rejected() {
    for bad in ["a*b", "**", "*a*", "a**", ""] {
        assert!(StrMatch::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn hosts() {
    let cases: &[(&str, &str, bool)] = &[
        ("orders", "orders", true),
        ("orders", "orders:8080", true),
        ("ORDERS", "orders", true),
        ("orders", "ORDERS:80", true),
        ("orders:8080", "orders:8080", true),
        ("orders:8080", "orders:9090", false),
        ("orders:8080", "orders", false),
        ("*.example.com", "api.example.com", true),
        ("*.example.com", "example.com", false),
        ("api.*", "api.shop", true),
        ("*", "x", true),
        ("[::1]:8443", "[::1]:8443", true),
        ("[::1]", "[::1]:1", true),
    ];
    for (pattern, host, want) in cases {
        let m = HostMatch::parse(pattern).unwrap();
        assert_eq!(m.matches(host), *want, "{pattern} vs {host}");
    }
    for bad in ["a b", "x:0", "x:99999", "::1", "x:*", "a/b", "*a*"] {
        assert!(HostMatch::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn ports() {
    assert_eq!(parse_port_text("8080"), Ok(8080));
    assert_eq!(parse_port_text("65535"), Ok(65535));
    for bad in ["0", "65536", "080", "", "+80", "8o", "123456"] {
        assert!(parse_port_text(bad).is_err(), "{bad}");
    }
}

#[test]
fn principals() {
    assert_eq!(
        strip_spiffe("spiffe://cluster.local/ns/a/sa/b"),
        "cluster.local/ns/a/sa/b"
    );
    assert_eq!(namespace_of("cluster.local/ns/shop/sa/x"), Some("shop"));
    assert_eq!(namespace_of("cluster.local/ns/shop/x/y"), None);
    assert_eq!(namespace_of("cluster.local/ns/shop/sa/x/y"), None);
    assert_eq!(namespace_of("nope"), None);
    assert_eq!(namespace_of("cluster.local/ns//sa/x"), None);
    assert_eq!(namespace_of("/ns/shop/sa/"), Some("shop"));
    assert_eq!(namespace_of("cluster.local/ns/shop/sa"), None);
    assert_eq!(namespace_of("ns/shop/sa/x"), None);
    assert_eq!(namespace_of("cluster.local/sa/shop/ns/x"), None);
}

/// `namespace_of` by splitting, as it was written before it scanned the bytes once.
fn namespace_by_split(principal: &str) -> Option<&str> {
    let mut parts = principal.split('/');
    let _trust_domain = parts.next()?;
    if parts.next()? != "ns" {
        return None;
    }
    let ns = parts.next()?;
    if parts.next()? != "sa" {
        return None;
    }
    let _account = parts.next()?;
    if parts.next().is_some() || ns.is_empty() {
        return None;
    }
    Some(ns)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5_000))]

    /// Principals built from parts that are often `ns`, `sa`, empty or contain slashes, and
    /// arbitrary text: the one-pass reading agrees with splitting.
    #[test]
    fn namespace_of_reads_as_splitting_does(
        parts in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::prelude::Just(String::new()),
                proptest::prelude::Just("ns".to_owned()),
                proptest::prelude::Just("sa".to_owned()),
                proptest::prelude::Just("/".to_owned()),
                "[a-z./é]{0,6}",
            ],
            3..7,
        ),
        sep in proptest::prop_oneof![proptest::prelude::Just("/".to_owned()), "[/a]{1,2}"],
    ) {
        let principal = parts.join(&sep);
        proptest::prop_assert_eq!(namespace_of(&principal), namespace_by_split(&principal));
    }
}
