#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;

fn parts(version: Version, method: Method, headers: &[(&str, &str)]) -> Parts {
    let mut req = http::Request::builder()
        .version(version)
        .method(method)
        .uri("/ws");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    req.body(())
        .map(|r| r.into_parts().0)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn websocket_requests_are_recognized_in_both_forms_only() {
    let h1 = |method, headers: &[(&str, &str)]| form(&parts(Version::HTTP_11, method, headers));
    let ws = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
    ];
    assert_eq!(h1(Method::GET, &ws), Some(Form::Upgrade));
    assert_eq!(h1(Method::POST, &ws), None);
    assert_eq!(h1(Method::GET, &[("upgrade", "websocket")]), None);
    assert_eq!(
        h1(
            Method::GET,
            &[("connection", "upgrade"), ("upgrade", "h2c")]
        ),
        None
    );
    assert_eq!(form(&parts(Version::HTTP_10, Method::GET, &ws)), None);
    let mut connect = parts(Version::HTTP_2, Method::CONNECT, &[]);
    assert_eq!(form(&connect), None);
    assert!(!is_extended_connect(&connect));
    connect
        .extensions
        .insert(hyper::ext::Protocol::from_static("websocket"));
    assert_eq!(form(&connect), Some(Form::ExtendedConnect));
    connect
        .extensions
        .insert(hyper::ext::Protocol::from_static("connect-udp"));
    assert_eq!(form(&connect), None);
    assert!(is_extended_connect(&connect));
}

#[test]
fn agreement_matches_the_form() {
    assert!(agreed(Form::Upgrade, http::StatusCode::SWITCHING_PROTOCOLS));
    assert!(!agreed(Form::Upgrade, http::StatusCode::OK));
    assert!(agreed(Form::ExtendedConnect, http::StatusCode::OK));
    assert!(!agreed(
        Form::ExtendedConnect,
        http::StatusCode::UPGRADE_REQUIRED
    ));
    let resp = agreement(Form::Upgrade, HeaderMap::new());
    assert_eq!(resp.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        resp.headers().get(header::UPGRADE).map(|v| v.as_bytes()),
        Some(&b"websocket"[..])
    );
}
