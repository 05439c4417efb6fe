#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;

use std::convert::Infallible;

use http_body_util::Empty;
use picket_common::server::ListenerSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::net::HttpServers;

/// A connected pair of TCP sockets on loopback: (client, server).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

/// Polls `cond` every few milliseconds until it holds, failing after 10 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: still not true after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Serves `server` on a task, as a listener's connection is served, with a park delay of
/// `park`; returns the task and what it counts in.
fn served(
    server: TcpStream,
    park: Duration,
    shutdown: &CancellationToken,
) -> (tokio::task::JoinHandle<()>, Parking) {
    let parking = Parking {
        delay: park,
        parked: Gauge::default(),
        parks: Counter::default(),
    };
    let servers = HttpServers::new(&ListenerSettings::control(), parking.clone(), |_| {});
    let svc = hyper::service::service_fn(|_req| async {
        Ok::<_, Infallible>(http::Response::new(Empty::<Bytes>::new()))
    });
    let shutdown = shutdown.clone();
    let task = tokio::spawn(async move {
        let io = IdleTimeout::new(server, Duration::from_secs(60));
        let _ = crate::net::serve_http(io, false, svc, &servers, &shutdown).await;
    });
    (task, parking)
}

#[tokio::test]
async fn the_parked_gauge_comes_down_however_a_park_ends() {
    let shutdown = CancellationToken::new();

    // Dropped mid-park, before any byte (a connection starts parked): the task is aborted.
    let (_client, server) = pair().await;
    let (task, parking) = served(server, Duration::from_millis(20), &shutdown);
    eventually("parked before the first byte", || parking.parked.get() == 1).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(parking.parked.get(), 0, "an aborted park stayed counted");

    // Dropped mid-park after a served request was parked.
    let (mut client, server) = pair().await;
    let (task, parking) = served(server, Duration::from_millis(20), &shutdown);
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    client.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    eventually("parked after a request", || parking.parks.get() == 1).await;
    assert_eq!(parking.parked.get(), 1);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(parking.parked.get(), 0, "an aborted park stayed counted");

    // Closed at shutdown, and by the peer.
    let (_client, server) = pair().await;
    let (task, parking) = served(server, Duration::from_millis(20), &shutdown);
    let (client, server) = pair().await;
    let (closed, closed_parking) = served(server, Duration::from_millis(20), &shutdown);
    eventually("parked", || {
        parking.parked.get() == 1 && closed_parking.parked.get() == 1
    })
    .await;
    drop(client);
    closed.await.unwrap();
    assert_eq!(closed_parking.parked.get(), 0);
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(parking.parked.get(), 0);
}
