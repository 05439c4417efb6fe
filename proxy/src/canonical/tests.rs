#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;

fn parts(version: Version, method: &str, uri: &str, headers: &[(&str, &[u8])]) -> Parts {
    let mut req = http::Request::builder()
        .version(version)
        .method(method)
        .uri(uri);
    for (n, v) in headers {
        req = req.header(*n, HeaderValue::from_bytes(v).unwrap());
    }
    req.body(()).unwrap().into_parts().0
}

fn h1(method: &str, uri: &str, headers: &[(&str, &[u8])]) -> Result<Canonical, Rejection> {
    let mut with_host = vec![("host", b"orders".as_slice())];
    with_host.extend_from_slice(headers);
    let mut p = parts(Version::HTTP_11, method, uri, &with_host);
    canonicalize(&mut p, &cfg())
}

fn cfg() -> HttpConfig {
    HttpConfig::default()
}

#[test]
fn request_target_forms() {
    assert_eq!(h1("GET", "/a", &[]).unwrap().path, "/a");
    // `GET admin HTTP/1.1` parses as authority form: never a host.
    let e = h1("GET", "admin", &[]).unwrap_err();
    assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e}");
    assert!(h1("GET", "*", &[]).is_err());
    assert!(h1("POST", "*", &[]).is_err());
    let options = h1("OPTIONS", "*", &[]).unwrap();
    assert_eq!(options.path, "*");
    let connect = h1("CONNECT", "orders:443", &[]).unwrap_err();
    assert_eq!(connect.status, StatusCode::METHOD_NOT_ALLOWED);
    let mut plain = parts(Version::HTTP_2, "CONNECT", "http://orders/ws", &[]);
    assert_eq!(
        canonicalize(&mut plain, &cfg()).unwrap_err().status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let mut udp = parts(Version::HTTP_2, "CONNECT", "http://orders/ws", &[]);
    udp.extensions
        .insert(hyper::ext::Protocol::from_static("connect-udp"));
    assert_eq!(
        canonicalize(&mut udp, &cfg()).unwrap_err().status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let mut ws = parts(Version::HTTP_2, "CONNECT", "http://orders/ws", &[]);
    ws.extensions
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let c = canonicalize(&mut ws, &cfg()).unwrap();
    assert_eq!((c.method, c.path.as_str()), (Method::GET, "/ws"));
    assert_eq!(h1("POST", "/a", &[]).unwrap().method, Method::POST);
    assert_eq!(h1("GET", "http://orders/a", &[]).unwrap().host, "orders");
}

#[test]
fn header_values_are_ascii_without_edge_whitespace() {
    let e = h1("GET", "/a", &[("x-role", b"\xa0admin\xa0")]).unwrap_err();
    assert!(e.reason.contains("0x7F"), "{e}");
    assert!(h1("GET", "/a", &[("x-role", b"adm\xc3\xa9")]).is_err());
    assert!(h1("GET", "/a", &[("x-role", b" admin")]).is_err());
    assert!(h1("GET", "/a", &[("x-role", b"a b\tc")]).is_ok());
    // A long value: the byte past the first words is found, and its offset named.
    let mut long = vec![b'a'; 40];
    assert!(h1("GET", "/a", &[("x-role", &long)]).is_ok());
    long.push(0xff);
    let e = h1("GET", "/a", &[("x-role", &long)]).unwrap_err();
    assert!(e.reason.contains("at offset 40"), "{e}");
}

#[test]
fn http2_host_must_agree_with_authority() {
    let check = |host: &[u8]| {
        let mut p = parts(
            Version::HTTP_2,
            "GET",
            "http://orders:8080/a",
            &[("host", host)],
        );
        canonicalize(&mut p, &cfg())
    };
    assert!(check(b"orders:8080").is_ok());
    assert!(check(b"ORDERS.:8080").is_ok());
    assert!(check(b"evil").is_err());
    assert!(check(b"orders").is_err());
    let mut two = parts(
        Version::HTTP_2,
        "GET",
        "http://orders/a",
        &[("host", b"orders"), ("host", b"orders")],
    );
    assert!(canonicalize(&mut two, &cfg()).is_err());
}

#[test]
fn a_canonical_request_keeps_its_target_and_a_rewritten_one_is_canonical() {
    let canon = |version, uri: &str, host: &[u8]| {
        let mut p = parts(version, "GET", uri, &[("host", host)]);
        let c = canonicalize(&mut p, &cfg()).unwrap();
        let host = p.headers.get_all(header::HOST).iter().count();
        let value = p
            .headers
            .get(header::HOST)
            .map(|h| h.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (c, p.uri.to_string(), value, host)
    };
    // Already canonical: the same target and the one Host header.
    let (c, uri, host, n) = canon(Version::HTTP_11, "/a/b?x=1&y", b"orders:8080");
    assert_eq!((c.path.as_str(), c.host.as_str()), ("/a/b", "orders:8080"));
    assert_eq!(
        (uri.as_str(), host.as_str(), n),
        ("/a/b?x=1&y", "orders:8080", 1)
    );
    // A path that normalizes, a host that lowercases, an absolute target: rewritten.
    let (_, uri, host, n) = canon(Version::HTTP_11, "/a/./c/../b//d?q", b"Orders.");
    assert_eq!((uri.as_str(), host.as_str(), n), ("/a/b/d?q", "orders", 1));
    let (_, uri, host, _) = canon(Version::HTTP_11, "http://Other/x", b"orders");
    assert_eq!((uri.as_str(), host.as_str()), ("/x", "other"));
    // HTTP/2: scheme http and the canonical host as the authority, no Host header.
    let mut p = parts(Version::HTTP_2, "GET", "http://orders/a?q", &[]);
    canonicalize(&mut p, &cfg()).unwrap();
    assert_eq!(p.uri.to_string(), "http://orders/a?q");
    let mut p = parts(
        Version::HTTP_2,
        "GET",
        "https://ORDERS/a/../b",
        &[("host", b"orders")],
    );
    let c = canonicalize(&mut p, &cfg()).unwrap();
    assert_eq!(
        (p.uri.to_string().as_str(), c.path.as_str()),
        ("http://orders/b", "/b")
    );
    assert!(p.headers.get(header::HOST).is_none());
}
