#![allow(clippy::unwrap_used)]
use super::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Connects to one address.
struct To(SocketAddr);

impl Connect for To {
    type Io = TokioIo<TcpStream>;

    async fn connect(&self) -> Result<Self::Io, ForwardError> {
        TcpStream::connect(self.0)
            .await
            .map(TokioIo::new)
            .map_err(|e| ForwardError::Unreachable {
                target: self.0.to_string(),
                reason: e.to_string(),
            })
    }
}

/// A local server: each accepted connection is served by `serve` on a task of its own; the
/// counter says how many it accepted.
async fn listen<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(tcp));
        }
    });
    (addr, accepted)
}

/// A keep-alive HTTP/1.1 server that answers each request with `body` (`None`: 204, no
/// body).
async fn server(body: Option<&'static [u8]>) -> (SocketAddr, Arc<AtomicUsize>) {
    listen(move |tcp| async move {
        let service = hyper::service::service_fn(move |_req| async move {
            let mut resp = Response::new(Full::new(Bytes::from_static(body.unwrap_or_default())));
            if body.is_none() {
                *resp.status_mut() = http::StatusCode::NO_CONTENT;
            }
            Ok::<_, std::convert::Infallible>(resp)
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), service)
            .await;
    })
    .await
}

/// A server that answers one request per connection, as keep-alive, and then closes it.
async fn closing_server() -> (SocketAddr, Arc<AtomicUsize>) {
    listen(|mut tcp| async move {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tcp
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
        let _ = tcp.shutdown().await;
    })
    .await
}

fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header(http::header::HOST, "app")
        .body(super::super::empty())
        .unwrap()
}

async fn read(resp: Response<Returning<To>>) -> Bytes {
    resp.into_body().collect().await.unwrap().to_bytes()
}

/// Polls `done` until it holds, for at most five seconds.
async fn eventually(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "not within five seconds");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_connection_carries_the_next_request_once_its_response_was_read() {
    let (addr, accepted) = server(Some(b"hello")).await;
    let pool = Arc::new(H1Pool::new(To(addr), Duration::from_secs(60)));
    for _ in 0..5 {
        let resp = pool.send(get("/")).await.unwrap();
        assert_eq!(read(resp).await, "hello");
        assert_eq!(pool.idle_count(), 1);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_response_without_a_body_gives_its_connection_back_at_once() {
    let (addr, accepted) = server(None).await;
    let pool = Arc::new(H1Pool::new(To(addr), Duration::from_secs(60)));
    for _ in 0..3 {
        let resp = pool.send(get("/")).await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::NO_CONTENT);
        assert_eq!(pool.idle_count(), 1);
        drop(resp);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_response_dropped_before_its_end_takes_its_connection_with_it() {
    static LARGE: [u8; 256 * 1024] = [b'x'; 256 * 1024];
    let (addr, accepted) = server(Some(&LARGE)).await;
    let pool = Arc::new(H1Pool::new(To(addr), Duration::from_secs(60)));
    let resp = pool.send(get("/")).await.unwrap();
    drop(resp);
    assert_eq!(pool.idle_count(), 0);
    let resp = pool.send(get("/")).await.unwrap();
    assert_eq!(read(resp).await.len(), LARGE.len());
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_the_server_closed_is_not_used_again() {
    let (addr, accepted) = closing_server().await;
    let pool = Arc::new(H1Pool::new(To(addr), Duration::from_secs(60)));
    for n in 1..=3 {
        let resp = pool.send(get("/")).await.unwrap();
        assert_eq!(read(resp).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), n);
    }
}

#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout() {
    let (addr, accepted) = server(Some(b"hello")).await;
    let pool = Arc::new(H1Pool::new(To(addr), Duration::from_millis(100)));
    let resp = pool.send(get("/")).await.unwrap();
    assert_eq!(read(resp).await, "hello");
    assert_eq!(pool.idle_count(), 1);
    eventually(|| pool.idle_count() == 0).await;
    let resp = pool.send(get("/")).await.unwrap();
    assert_eq!(read(resp).await, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn concurrent_requests_each_take_a_connection_and_all_come_back() {
    let (addr, accepted) = server(Some(b"hello")).await;
    let pool = Arc::new(H1Pool::new(To(addr), Duration::from_secs(60)));
    let responses: Vec<_> = futures_util::future::join_all((0..4).map(|_| pool.send(get("/"))))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(pool.idle_count(), 0);
    for resp in responses {
        assert_eq!(read(resp).await, "hello");
    }
    assert_eq!(pool.idle_count(), 4);
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn an_unreachable_destination_is_unreachable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let pool = Arc::new(H1Pool::new(To(addr), Duration::from_secs(60)));
    let err = pool.send(get("/")).await.unwrap_err();
    assert!(matches!(err, ForwardError::Unreachable { .. }), "{err:?}");
}
