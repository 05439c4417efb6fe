#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use proptest::prelude::*;

fn strict(p: &str) -> Result<String, NormalizeError> {
    normalize_path(p, &PathOptions::default())
}

fn with(p: &str, opts: PathOptions) -> Result<String, NormalizeError> {
    normalize_path(p, &opts)
}

const DECODE: PathOptions = PathOptions {
    encoded_slashes: EncodedSlashes::Decode,
    backslash: Backslash::Reject,
    path_params: PathParams::Keep,
};
const KEEP: PathOptions = PathOptions {
    encoded_slashes: EncodedSlashes::Keep,
    backslash: Backslash::Reject,
    path_params: PathParams::Keep,
};

/// The bypass corpus: each raw path, the options, and the expected canonical path or error.
#[test]
fn bypass_shapes_normalize_to_one_canonical_path() {
    use NormalizeError as E;
    let d = PathOptions::default();
    let slash = PathOptions {
        backslash: Backslash::Slash,
        ..d
    };
    let strip = PathOptions {
        path_params: PathParams::Strip,
        ..d
    };
    let no_params = PathOptions {
        path_params: PathParams::Reject,
        ..d
    };
    let cases: &[(&str, PathOptions, Result<&str, E>)] = &[
        // Plain paths.
        ("/", d, Ok("/")),
        ("", d, Ok("/")),
        ("/api/orders", d, Ok("/api/orders")),
        ("/api/orders/", d, Ok("/api/orders/")),
        ("api/orders", d, Ok("/api/orders")),
        // Dot segments.
        ("/api/../admin", d, Ok("/admin")),
        ("/api/./orders", d, Ok("/api/orders")),
        ("/../../etc/passwd", d, Ok("/etc/passwd")),
        ("/api/orders/..", d, Ok("/api/")),
        ("/api/orders/.", d, Ok("/api/orders/")),
        ("/a/b/../../..", d, Ok("/")),
        ("/a/.../b", d, Ok("/a/.../b")),
        ("/a/..b/c", d, Ok("/a/..b/c")),
        // Encoded dots, any case, decoded once then removed.
        ("/api/%2e%2e/admin", d, Ok("/admin")),
        ("/api/%2E%2E/admin", d, Ok("/admin")),
        ("/api/.%2e/admin", d, Ok("/admin")),
        ("/api/%2e./admin", d, Ok("/admin")),
        ("/api/%2e/orders", d, Ok("/api/orders")),
        // Double encoding stays encoded: decoded once only.
        ("/api/%252e%252e/admin", d, Ok("/api/%252e%252e/admin")),
        ("/api/%25252e/admin", d, Ok("/api/%25252e/admin")),
        ("/api/%252f/admin", d, Ok("/api/%252f/admin")),
        // Unreserved escapes decoded; others upper-cased.
        ("/%61dmin", d, Ok("/admin")),
        ("/%41DMIN", d, Ok("/ADMIN")),
        ("/a%7eb", d, Ok("/a~b")),
        ("/a%2db%5fc", d, Ok("/a-b_c")),
        ("/caf%c3%a9", d, Ok("/caf%C3%A9")),
        ("/a%20b", d, Ok("/a%20b")),
        ("/a%3fb", d, Ok("/a%3Fb")),
        ("/a%23b", d, Ok("/a%23b")),
        ("/a%3Bb", d, Ok("/a%3Bb")),
        // Encoded slashes and backslashes.
        ("/api%2fadmin", d, Err(E::EncodedSlash)),
        ("/api%2Fadmin", d, Err(E::EncodedSlash)),
        ("/api%5cadmin", d, Err(E::EncodedSlash)),
        ("/api%2f..%2fadmin", DECODE, Ok("/admin")),
        ("/api%5C..%5Cadmin", DECODE, Ok("/admin")),
        ("/api%2fadmin", KEEP, Ok("/api%2Fadmin")),
        ("/api%2f..%2fadmin", KEEP, Ok("/api%2F..%2Fadmin")),
        // Raw backslashes.
        ("/api\\admin", d, Err(E::Backslash)),
        ("/api\\..\\admin", slash, Ok("/admin")),
        // Merged slashes.
        ("//admin", d, Ok("/admin")),
        ("/api//orders///1", d, Ok("/api/orders/1")),
        ("/api/orders//", d, Ok("/api/orders/")),
        ("///", d, Ok("/")),
        // Fragments are cut.
        ("/public#/../admin", d, Ok("/public")),
        ("/admin#", d, Ok("/admin")),
        ("#x", d, Ok("/")),
        // NUL and control characters.
        ("/admin%00.html", d, Err(E::Nul)),
        ("/admin\0", d, Err(E::Nul)),
        ("/a b", d, Err(E::InvalidCharacter)),
        ("/a\tb", d, Err(E::InvalidCharacter)),
        ("/a\r\nb", d, Err(E::InvalidCharacter)),
        ("/a\x7fb", d, Err(E::InvalidCharacter)),
        ("/caf\u{e9}", d, Err(E::InvalidCharacter)),
        ("/a?b", d, Err(E::InvalidCharacter)),
        // Malformed escapes.
        ("/a%", d, Err(E::InvalidEscape)),
        ("/a%4", d, Err(E::InvalidEscape)),
        ("/a%zz", d, Err(E::InvalidEscape)),
        ("/a%%30", d, Err(E::InvalidEscape)),
        // Path parameters (Tomcat-style).
        ("/api/..;/admin", d, Err(E::DotSegmentParams)),
        ("/api/.;x/admin", d, Err(E::DotSegmentParams)),
        ("/api/%2e%2e;/admin", d, Err(E::DotSegmentParams)),
        ("/admin;jsessionid=1/x", d, Ok("/admin;jsessionid=1/x")),
        ("/api/..;/admin", strip, Ok("/admin")),
        ("/admin;x/secret", strip, Ok("/admin/secret")),
        ("/admin;x/secret", no_params, Err(E::PathParams)),
    ];
    for (raw, opts, want) in cases {
        let got = with(raw, *opts);
        assert_eq!(got.as_deref(), want.as_ref().map(|s| *s), "path {raw:?}");
    }
    assert!(cases.len() >= 40);
}

#[test]
fn methods_must_be_uppercase_tokens() {
    assert_eq!(normalize_method("GET"), Ok("GET"));
    assert_eq!(normalize_method("M-SEARCH"), Ok("M-SEARCH"));
    for bad in ["get", "Get", "", "GE T", "GET\r", "G(T"] {
        assert_eq!(
            normalize_method(bad),
            Err(NormalizeError::InvalidMethod),
            "{bad:?}"
        );
    }
}

#[test]
fn hosts_are_lowercased_and_checked() {
    let cases: &[(&str, Result<&str, NormalizeError>)] = &[
        ("Orders.Shop", Ok("orders.shop")),
        ("orders.shop.", Ok("orders.shop")),
        ("orders:8080", Ok("orders:8080")),
        ("orders:", Ok("orders")),
        ("ORDERS.:08080", Ok("orders:8080")),
        ("orders:080", Ok("orders:80")),
        ("[::1]:8443", Ok("[::1]:8443")),
        ("[0:0::1]", Ok("[::1]")),
        ("::1", Err(NormalizeError::InvalidHost)),
        ("orders:0", Err(NormalizeError::InvalidPort)),
        ("orders:65536", Err(NormalizeError::InvalidPort)),
        ("orders:http", Err(NormalizeError::InvalidPort)),
        ("user@orders", Err(NormalizeError::InvalidHost)),
        ("", Err(NormalizeError::InvalidHost)),
        ("or ders", Err(NormalizeError::InvalidHost)),
        ("orders..", Err(NormalizeError::InvalidHost)),
        ("[zz]", Err(NormalizeError::InvalidHost)),
    ];
    for (raw, want) in cases {
        assert_eq!(
            normalize_host(raw).as_deref(),
            want.as_ref().map(|s| *s),
            "host {raw:?}"
        );
    }
}

fn any_options() -> impl Strategy<Value = PathOptions> {
    (0..3u8, 0..2u8, 0..3u8).prop_map(|(s, b, p)| PathOptions {
        encoded_slashes: [
            EncodedSlashes::Reject,
            EncodedSlashes::Decode,
            EncodedSlashes::Keep,
        ][usize::from(s)],
        backslash: [Backslash::Reject, Backslash::Slash][usize::from(b)],
        path_params: [PathParams::Keep, PathParams::Strip, PathParams::Reject][usize::from(p)],
    })
}

/// Paths built from the pieces bypasses are made of.
fn tricky_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e".to_owned()),
        Just("%2E".to_owned()),
        Just("%2f".to_owned()),
        Just("%5c".to_owned()),
        Just("%25".to_owned()),
        Just("%41".to_owned()),
        Just("%c3".to_owned()),
        Just(";".to_owned()),
        Just("\\".to_owned()),
        Just("#".to_owned()),
        Just("%".to_owned()),
        Just("a".to_owned()),
        Just("admin".to_owned()),
        "[ -~]{0,3}",
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn normalize_is_idempotent(path in tricky_path(), opts in any_options()) {
        if let Ok(once) = normalize_path(&path, &opts) {
            prop_assert!(once.starts_with('/'));
            prop_assert!(!once.contains("//"));
            let twice = normalize_path(&once, &opts);
            prop_assert_eq!(twice.as_deref(), Ok(once.as_str()));
        }
    }

    #[test]
    fn normalize_never_panics(path in "\\PC{0,40}", opts in any_options()) {
        let _ = normalize_path(&path, &opts);
        let _ = normalize_host(&path);
        let _ = normalize_method(&path);
    }

    #[test]
    fn normalized_paths_have_no_dot_segments(path in tricky_path()) {
        if let Ok(p) = strict(&path) {
            for segment in p.split('/') {
                prop_assert!(segment != "." && segment != "..", "{}", p);
            }
        }
    }
}

/// Hosts near the fast path's edge: case, dots, ports with zeros, brackets, stray bytes.
fn near_normal_host() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[a-z0-9]{1,6}",
        1 => Just(".".to_owned()),
        1 => Just("-".to_owned()),
        1 => Just("_".to_owned()),
        1 => Just("A".to_owned()),
        1 => Just(":".to_owned()),
        1 => prop_oneof![Just("0"), Just("65535"), Just("65536"), Just("080"), Just("99999")]
            .prop_map(str::to_owned),
        1 => Just("[::1]".to_owned()),
        1 => "[ -~]",
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|v| v.concat())
}

/// Paths near the fast path's edge: dot segments, doubled and trailing slashes, escapes.
fn near_normal_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[a-zA-Z0-9_~-]{1,5}",
        3 => Just("/".to_owned()),
        2 => Just(".".to_owned()),
        1 => Just("..".to_owned()),
        1 => Just("%41".to_owned()),
        1 => Just(";".to_owned()),
        1 => Just("\\".to_owned()),
        1 => "[ -~]",
    ];
    proptest::collection::vec(piece, 0..10).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4_000))]

    /// A path the fast check passes is what the full steps make of it, under every option.
    #[test]
    fn a_path_already_normal_is_what_the_steps_give(path in near_normal_path(), opts in any_options()) {
        if is_normal_path(&path) {
            prop_assert_eq!(normalize_path_steps(&path, &opts), Ok(path.clone()));
        }
        prop_assert_eq!(normalize_path(&path, &opts), normalize_path_steps(&path, &opts));
    }

    /// A host the fast check passes is what the full steps make of it.
    #[test]
    fn a_host_already_normal_is_what_the_steps_give(host in near_normal_host()) {
        if is_normal_host(&host) {
            prop_assert_eq!(normalize_host_steps(&host), Ok(host.clone()));
        }
        prop_assert_eq!(normalize_host(&host), normalize_host_steps(&host));
    }
}

#[test]
fn usual_paths_and_hosts_take_the_fast_path() {
    for p in [
        "/",
        "/1k",
        "/api/orders/42",
        "/a/",
        "/.well-known/x",
        "/a.b/c~d_e-f",
        "/...",
    ] {
        assert!(is_normal_path(p), "{p}");
    }
    for p in [
        "", "a", "//", "/a//b", "/./a", "/a/..", "/a/.", "/%41", "/a;b", "/a\\b", "/a#b", "/a?b",
        "/é",
    ] {
        assert!(!is_normal_path(p), "{p}");
    }
    for h in [
        "orders",
        "orders:8080",
        "orders.shop.svc.cluster.local",
        "10.0.0.1:443",
        "a_b-c:1",
        "x:65535",
    ] {
        assert!(is_normal_host(h), "{h}");
    }
    for h in [
        "",
        "Orders",
        "orders.",
        ".orders",
        "a..b",
        "orders:",
        "orders:0",
        "orders:080",
        "orders:65536",
        "[::1]",
        "[::1]:80",
        "a:b:c",
        "user@orders",
        "orders:123456",
    ] {
        assert!(!is_normal_host(h), "{h}");
    }
}
