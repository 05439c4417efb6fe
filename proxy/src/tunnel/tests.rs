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

/// An HTTP/1.1 upgrade's client end keeps the connection's idle timer: the tunnel has that
/// one timer, counted from the connection's last byte, and not a second one started when the
/// tunnel opens (its deadline would then follow `idle` from the opening).
#[tokio::test]
async fn an_upgraded_connection_keeps_its_one_idle_timer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let connection_idle = std::time::Duration::from_secs(60);
    let io = IdleTimeout::new(server, connection_idle);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        if let Some(tx) = tx.lock().unwrap().take() {
            let _ = tx.send(hyper::upgrade::on(req));
        }
        async { Ok::<_, std::convert::Infallible>(agreement(Form::Upgrade, HeaderMap::new())) }
    });
    tokio::spawn(
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades(),
    );
    client
        .write_all(
            b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    let upgraded = rx.await.unwrap().await.unwrap();
    let opened = tokio::time::Instant::now();
    let tunnel_idle = std::time::Duration::from_secs(3600);
    let Ok(end) = client_end::<IdleTimeout<tokio::net::TcpStream>>(upgraded, tunnel_idle) else {
        panic!("the client end was refused");
    };
    let deadline = end.idle_deadline();
    assert!(
        deadline <= opened + connection_idle,
        "the tunnel's idle deadline is {:?} after its opening, past the connection's timer",
        deadline.saturating_duration_since(opened)
    );
}
