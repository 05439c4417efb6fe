#![allow(clippy::unwrap_used)]
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::*;
use crate::telemetry::TelemetryConfig;

/// A server end that takes what it is sent and fails its read once `fail_after` bytes came:
/// a peer that resets the connection after the client's first bytes.
#[derive(Debug)]
struct ResetAfter {
    fail_after: usize,
    got: usize,
    reader: Option<Waker>,
}

impl AsyncRead for ResetAfter {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        _buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.got >= self.fail_after {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        self.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for ResetAfter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.got += buf.len();
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A TCP flow whose splice ends in an error (the peer reset it) keeps the bytes it carried:
/// in its end record and in `picket_tcp_bytes_total`, as a splice that ended cleanly does.
#[tokio::test]
async fn a_splice_cut_by_an_error_keeps_its_bytes_in_the_record_and_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.jsonl");
    let cfg = TelemetryConfig::flow_log_file(&path);
    let identity = "spiffe://cluster.local/ns/shop/sa/orders".parse().unwrap();
    let telemetry = Telemetry::new(&cfg, &identity, &mut Registry::default()).unwrap();
    let metrics = Metrics::new();

    let (mut caller, mut client) = tokio::io::duplex(1024);
    caller.write_all(b"hello").await.unwrap();
    let mut server = ResetAfter {
        fail_after: 5,
        got: 0,
        reader: None,
    };
    let mut flow = TcpFlow::new(
        Direction::Inbound,
        Endpoints {
            source_identity: Some("spiffe://cluster.local/ns/shop/sa/frontend".into()),
            destination_port: Some(5432),
            ..Endpoints::default()
        },
    );
    flow.open(&telemetry);
    let ended = flow.splice(&mut client, &mut server, &telemetry).await;
    assert_eq!(
        ended.unwrap_err().kind(),
        io::ErrorKind::ConnectionReset,
        "the splice ends with the peer's reset"
    );
    assert_eq!(flow.bytes, Some((5, 0)));
    flow.finish(&metrics, &telemetry);
    assert!(telemetry.flush(Duration::from_secs(10)).await);

    let text = std::fs::read_to_string(&path).unwrap();
    let end = text
        .lines()
        .map(|l| serde_json::from_str::<FlowRecord<'_>>(l).unwrap())
        .find(|r| r.phase == Some(FlowPhase::End))
        .unwrap();
    assert_eq!((end.bytes_in, end.bytes_out), (5, 0), "{text}");
    let scrape = metrics.encode();
    assert!(
        scrape.contains("picket_tcp_bytes_total{direction=\"inbound\"} 5"),
        "{scrape}"
    );
}

/// Every answer the sidecar makes itself is marked, including a policy denial and a refused
/// token (the inbound side sends the mark on as `x-picket-sidecar-answer`).
#[test]
fn denials_and_refused_tokens_are_the_sidecars_own_answers() {
    let decision = picket_policy::Decision {
        verdict: Verdict::Deny,
        reason: picket_policy::Reason::NoAllowMatch,
        policy: None,
        rule: None,
        shadows: Vec::new(),
        audit: Vec::new(),
        would_verdict: Verdict::Deny,
    };
    for grpc in [false, true] {
        let deny = authz::deny_response(&decision, "req-1", grpc, false);
        let refused = unauthenticated_response(TokenError::Expired, grpc);
        for resp in [deny, refused, shed_response()] {
            assert_eq!(
                resp.extensions().get::<forward::SidecarAnswer>(),
                Some(&forward::SidecarAnswer::Own),
                "{resp:?}"
            );
        }
    }
}

/// The outbound record says who made the answer: the app (nothing marked), this sidecar
/// (`sidecar_answer`), or the peer's sidecar (`sidecar_answer` and `peer_sidecar_answer`);
/// the detectors see the first as the route's answer and neither of the others.
#[tokio::test]
async fn an_outbound_record_tells_the_apps_answer_from_this_and_the_peers_sidecars() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.jsonl");
    let cfg = TelemetryConfig::flow_log_file(&path);
    let identity = "spiffe://cluster.local/ns/shop/sa/frontend"
        .parse()
        .unwrap();
    let telemetry = Telemetry::new(&cfg, &identity, &mut Registry::default()).unwrap();
    let metrics = Metrics::new();
    let (parts, ()) = http::Request::get("http://orders/api/orders")
        .body(())
        .unwrap()
        .into_parts();
    let marks = [
        None,
        Some(forward::SidecarAnswer::Own),
        Some(forward::SidecarAnswer::Peer),
    ];
    for mark in marks {
        let mut resp = Response::new(forward::empty());
        *resp.status_mut() = StatusCode::BAD_GATEWAY;
        if let Some(m) = mark {
            resp.extensions_mut().insert(m);
        }
        let mut ctx = RequestCtx::new(
            Direction::Outbound,
            &parts,
            Endpoints {
                source_identity: Some("spiffe://cluster.local/ns/shop/sa/frontend".into()),
                destination_identity: Some("spiffe://cluster.local/ns/shop/sa/orders".into()),
                ..Endpoints::default()
            },
        );
        ctx.path = Some("/api/orders".to_owned());
        ctx.finish(&resp, &metrics, &telemetry);
    }
    assert!(telemetry.flush(Duration::from_secs(10)).await);
    let text = std::fs::read_to_string(&path).unwrap();
    let records: Vec<FlowRecord<'_>> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<(bool, bool)> = records
        .iter()
        .map(|r| (r.sidecar_answer, r.peer_sidecar_answer))
        .collect();
    assert_eq!(
        seen,
        [(false, false), (true, false), (true, true)],
        "{text}"
    );
    assert!(!text.lines().next().unwrap().contains("sidecar_answer"));
    assert!(
        text.lines()
            .nth(2)
            .unwrap()
            .contains("\"peer_sidecar_answer\":true")
    );
    let classes: Vec<Option<u8>> = records
        .iter()
        .map(|r| crate::telemetry::detect::route_answer_class(&r.event()))
        .collect();
    assert_eq!(classes, [Some(5), None, None]);
}
