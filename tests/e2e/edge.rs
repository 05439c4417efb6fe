//! The HTTP edge corpus: request framing, request-target and Host rules, header bytes, CONNECT
//! and header lists, each case sent as raw bytes on BOTH paths: through the caller's sidecar
//! (plaintext to the frontend's outbound listener, then mTLS between the sidecars) and
//! straight at the orders sidecar's inbound mTLS port. Behind orders runs the strict
//! recording app (`picket_tests::strict`): every case asserts the status the client got AND
//! the exact bytes the app received (request line, header lines, body), or that the app
//! received nothing, or that what it received was cut off before a complete body.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use picket_tests::clients::{parse_http1_responses, raw_tls_exchange, tls_client_config};
use picket_tests::mesh::frontend_to_orders;
use picket_tests::strict::{Event, StrictApp};
use picket_tests::{Sidecar, TestCa, TestProxy, spiffe_id};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The frontend may use GET, HEAD, POST and PUT on `/public/*`, and `OPTIONS *`; nobody may
/// claim `x-role: admin`.
pub(crate) const POLICY: &str = r#"
apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: { name: public, namespace: shop }
spec:
  rules:
  - from: [{ source: { principals: ["cluster.local/ns/shop/sa/frontend"] } }]
    to:
    - operation: { methods: ["GET", "HEAD", "POST", "PUT"], paths: ["/public/*"] }
    - operation: { methods: ["OPTIONS"], paths: ["*"] }
---
apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: { name: guard, namespace: shop }
spec:
  action: DENY
  rules:
  - when: [{ key: "request.headers[x-role]", values: ["admin"] }]
"#;

/// The two ways into the orders app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// Plaintext to the frontend sidecar's outbound listener (`Host: orders`).
    Caller,
    /// mTLS with the frontend's certificate straight to the orders sidecar's inbound port.
    Inbound,
}

/// The strict app behind an `orders` sidecar, and a `frontend` sidecar calling it.
pub(crate) struct Edge {
    _ca: TestCa,
    pub(crate) app: StrictApp,
    pub(crate) orders: TestProxy,
    pub(crate) frontend: TestProxy,
    pub(crate) h1: Arc<ClientConfig>,
    pub(crate) h2: Arc<ClientConfig>,
}

impl Edge {
    pub(crate) async fn start() -> Result<Self> {
        Self::start_with("").await
    }

    /// As [`Edge::start`], with extra YAML for the orders sidecar.
    pub(crate) async fn start_with(orders_yaml: &str) -> Result<Self> {
        Self::start_both(orders_yaml, "").await
    }

    /// As [`Edge::start`], with extra YAML for each sidecar.
    pub(crate) async fn start_both(orders_yaml: &str, frontend_yaml: &str) -> Result<Self> {
        let ca = TestCa::start().await?;
        let app = StrictApp::start().await?;
        let orders = TestProxy::spawn(
            &ca,
            Sidecar::new("shop", "orders", app.addr())
                .policy(POLICY)
                .yaml(orders_yaml),
        )
        .await?;
        let frontend = TestProxy::spawn(
            &ca,
            frontend_to_orders(orders.addrs().inbound)
                .await?
                .yaml(frontend_yaml),
        )
        .await?;
        let svid = ca.issue("ns/shop/sa/frontend").await?;
        let h1 = tls_client_config(Some((svid.chain()?, svid.private_key())), &[b"http/1.1"])?;
        let h2 = tls_client_config(Some((svid.chain()?, svid.private_key())), &[b"h2"])?;
        Ok(Self {
            _ca: ca,
            app,
            orders,
            frontend,
            h1,
            h2,
        })
    }

    /// Sends `bytes` on a new connection along `path` and reads until the sidecar closes.
    pub(crate) async fn exchange(&self, path: Path, bytes: &[u8]) -> Result<Vec<u8>> {
        match path {
            Path::Inbound => {
                raw_tls_exchange(self.orders.addrs().inbound, Arc::clone(&self.h1), bytes).await
            }
            Path::Caller => raw_tcp_exchange(self.frontend.addrs().outbound, bytes).await,
        }
    }
}

/// Writes `request` on a new plaintext connection and reads until the server closes.
pub(crate) async fn raw_tcp_exchange(addr: SocketAddr, request: &[u8]) -> Result<Vec<u8>> {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let _ = tcp.write_all(request).await;
    let mut received = Vec::new();
    let read = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    };
    tokio::time::timeout(picket_tests::wait::COMMAND_TIMEOUT, read)
        .await
        .context("the server neither answered nor closed the connection")??;
    Ok(received)
}

/// What the app must have received.
#[derive(Debug, Clone)]
struct Delivered {
    /// The request line, exactly.
    line: &'static str,
    /// The header lines the case adds to `host: orders` and the peer identity, exactly.
    headers: &'static [&'static str],
    /// The body, exactly.
    body: &'static [u8],
}

/// What a case must produce.
#[derive(Debug, Clone)]
enum Want {
    /// 200 from the app, which received exactly this.
    Delivered(Delivered),
    /// This status from a sidecar; the app received nothing.
    Refused(u16),
}

const fn delivered(
    line: &'static str,
    headers: &'static [&'static str],
    body: &'static [u8],
) -> Want {
    Want::Delivered(Delivered {
        line,
        headers,
        body,
    })
}

#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    want: Want,
}

/// `head` (request line and header lines, each ending in CRLF), `Connection: close`, the empty
/// line, then `body`.
fn case(name: &'static str, head: &str, body: &[u8], want: Want) -> Case {
    let mut bytes = format!("{head}Connection: close\r\n\r\n").into_bytes();
    bytes.extend_from_slice(body);
    Case { name, bytes, want }
}

/// A chunked POST of `/public/x` whose body is `body`.
fn chunked(name: &'static str, body: &[u8], want: Want) -> Case {
    case(
        name,
        "POST /public/x HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\n",
        body,
        want,
    )
}

const BAD: Want = Want::Refused(400);
const FORBIDDEN: Want = Want::Refused(403);

fn framing_cases() -> Vec<Case> {
    let mut cases = vec![
        case(
            "chunked GET keeps its body",
            "GET /public/x HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\n",
            b"3\r\nabc\r\n0\r\n\r\n",
            delivered("GET /public/x HTTP/1.1", &["content-length: 3"], b"abc"),
        ),
        case(
            "chunked HEAD keeps its body",
            "HEAD /public/x HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\n",
            b"3\r\nabc\r\n0\r\n\r\n",
            delivered("HEAD /public/x HTTP/1.1", &["content-length: 3"], b"abc"),
        ),
        chunked(
            "chunked POST is re-framed by length",
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            delivered("POST /public/x HTTP/1.1", &["content-length: 5"], b"abcde"),
        ),
        chunked(
            "chunk extensions are not forwarded",
            b"3;name=\"v\"\r\nabc\r\n0\r\n\r\n",
            delivered("POST /public/x HTTP/1.1", &["content-length: 3"], b"abc"),
        ),
        chunked(
            "upper-case hex size",
            b"A\r\n0123456789\r\n0\r\n\r\n",
            delivered(
                "POST /public/x HTTP/1.1",
                &["content-length: 10"],
                b"0123456789",
            ),
        ),
        case(
            "Content-Length with leading zeros is re-serialized",
            "POST /public/x HTTP/1.1\r\nHost: orders\r\nContent-Length: 003\r\n",
            b"abc",
            delivered("POST /public/x HTTP/1.1", &["content-length: 3"], b"abc"),
        ),
        case(
            "empty POST keeps its zero length",
            "POST /public/x HTTP/1.1\r\nHost: orders\r\nContent-Length: 0\r\n",
            b"",
            delivered("POST /public/x HTTP/1.1", &["content-length: 0"], b""),
        ),
        case(
            "request trailers are dropped and the body keeps its length",
            "POST /public/x HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\n\
             Trailer: x-role, x-forwarded-client-cert\r\n",
            b"3;e=1\r\nabc\r\n0\r\nx-role: admin\r\n\
              x-forwarded-client-cert: URI=spiffe://cluster.local/ns/ops/sa/admin\r\n\r\n",
            delivered("POST /public/x HTTP/1.1", &["content-length: 3"], b"abc"),
        ),
        case(
            "GET without a body gets no framing header",
            "GET /public/x HTTP/1.1\r\nHost: orders\r\n",
            b"",
            delivered("GET /public/x HTTP/1.1", &[], b""),
        ),
    ];
    // Malformed chunk-size lines: 400, and nothing of the request reaches the app.
    for (name, body) in [
        ("plus sign", &b"+3\r\nabc\r\n0\r\n\r\n"[..]),
        ("minus sign", b"-3\r\nabc\r\n0\r\n\r\n"),
        ("0x prefix", b"0x3\r\nabc\r\n0\r\n\r\n"),
        ("underscore", b"1_0\r\n0123456789abcdef\r\n0\r\n\r\n"),
        ("leading space", b" 3\r\nabc\r\n0\r\n\r\n"),
        ("leading tab", b"\t3\r\nabc\r\n0\r\n\r\n"),
        ("empty size", b"\r\nabc\r\n0\r\n\r\n"),
        ("bare CR", b"3\rabc\r\n0\r\n\r\n"),
        ("bare LF", b"3\nabc\r\n0\r\n\r\n"),
        ("junk after the size", b"3 junk\r\nabc\r\n0\r\n\r\n"),
        ("junk in the size", b"3g\r\nabc\r\n0\r\n\r\n"),
        ("LF inside an extension", b"3;a\nb\r\nabc\r\n0\r\n\r\n"),
        ("chunk longer than its size", b"3\r\nabcd\r\n0\r\n\r\n"),
        ("size overflow", b"10000000000000000\r\nabc\r\n0\r\n\r\n"),
    ] {
        cases.push(chunked(name, body, BAD));
    }
    cases
}

fn target_and_host_cases() -> Vec<Case> {
    vec![
        case(
            "origin form without a leading slash",
            "GET admin HTTP/1.1\r\nHost: orders\r\n",
            b"",
            BAD,
        ),
        case(
            "origin form without a slash, host-like",
            "GET orders:80 HTTP/1.1\r\nHost: orders\r\n",
            b"",
            BAD,
        ),
        case(
            "asterisk with GET",
            "GET * HTTP/1.1\r\nHost: orders\r\n",
            b"",
            BAD,
        ),
        case(
            "asterisk with POST",
            "POST * HTTP/1.1\r\nHost: orders\r\nContent-Length: 0\r\n",
            b"",
            BAD,
        ),
        case(
            "asterisk with OPTIONS reaches the app as asterisk",
            "OPTIONS * HTTP/1.1\r\nHost: orders\r\n",
            b"",
            delivered("OPTIONS * HTTP/1.1", &[], b""),
        ),
        case(
            "two Host headers",
            "GET /public/x HTTP/1.1\r\nHost: orders\r\nHost: evil\r\n",
            b"",
            BAD,
        ),
        case(
            "two equal Host headers",
            "GET /public/x HTTP/1.1\r\nHost: orders\r\nHost: orders\r\n",
            b"",
            BAD,
        ),
        case(
            "CONNECT",
            "CONNECT orders:443 HTTP/1.1\r\nHost: orders:443\r\n",
            b"",
            Want::Refused(405),
        ),
        case(
            "CONNECT with tunnel bytes behind it",
            "CONNECT orders:80 HTTP/1.1\r\nHost: orders:80\r\n",
            b"GET /public/x HTTP/1.1\r\nHost: orders\r\n\r\n",
            Want::Refused(405),
        ),
    ]
}

fn header_cases() -> Vec<Case> {
    let get = |name: &'static str, headers: &str, want: Want| {
        case(
            name,
            &format!("GET /public/x HTTP/1.1\r\nHost: orders\r\n{headers}"),
            b"",
            want,
        )
    };
    vec![
        case(
            "control: a plain GET",
            "GET /public/x HTTP/1.1\r\nHost: orders\r\nx-role: user\r\n",
            b"",
            delivered("GET /public/x HTTP/1.1", &["x-role: user"], b""),
        ),
        Case {
            name: "obs-text: non-breaking spaces around admin",
            bytes: b"GET /public/x HTTP/1.1\r\nHost: orders\r\nx-role: \xa0admin\xa0\r\nConnection: close\r\n\r\n".to_vec(),
            want: BAD,
        },
        Case {
            name: "obs-text: UTF-8 in a value",
            bytes: b"GET /public/x HTTP/1.1\r\nHost: orders\r\nx-note: caf\xc3\xa9\r\nConnection: close\r\n\r\n".to_vec(),
            want: BAD,
        },
        get("a list naming admin", "x-role: user, admin\r\n", FORBIDDEN),
        get("a list naming admin, no space", "x-role: user,admin\r\n", FORBIDDEN),
        get("admin on a second line", "x-role: user\r\nx-role: admin\r\n", FORBIDDEN),
        get(
            "foreign identity headers are removed",
            "x-forwarded-client-cert: By=spiffe://cluster.local/ns/shop/sa/orders;URI=spiffe://cluster.local/ns/ops/sa/admin\r\n\
             l5d-client-id: admin.ops.serviceaccount.identity.linkerd.cluster.local\r\n\
             x-envoy-original-path: /admin\r\nx-istio-attributes: Cg0KC3NvdXJjZS51aWQ=\r\n\
             x-picket-orig-proto: HTTP/2\r\nx-picket-anything: 1\r\n",
            delivered("GET /public/x HTTP/1.1", &[], b""),
        ),
        get(
            "forwarding headers are dropped by default",
            "Forwarded: for=10.1.2.3\r\nX-Forwarded-For: 10.1.2.3\r\nX-Real-IP: 10.1.2.3\r\n\
             X-Forwarded-Host: admin\r\nX-Forwarded-Proto: https\r\n",
            delivered("GET /public/x HTTP/1.1", &[], b""),
        ),
        get(
            "a forged peer identity is replaced",
            "x-picket-peer-identity: spiffe://cluster.local/ns/ops/sa/admin\r\n",
            delivered("GET /public/x HTTP/1.1", &[], b""),
        ),
        get(
            "a harmless list reaches the app as sent",
            "x-role: user, reader\r\n",
            delivered("GET /public/x HTTP/1.1", &["x-role: user, reader"], b""),
        ),
    ]
}

/// Checks one HTTP/1.1 case on one path; `events` is what the app logged meanwhile.
fn judge(case: &Case, path: Path, received: &[u8], events: &[Event]) -> Result<()> {
    let responses = parse_http1_responses(received)
        .with_context(|| format!("response {:?}", String::from_utf8_lossy(received)))?;
    let status = responses
        .first()
        .map(|r| r.status)
        .with_context(|| format!("no response: {:?}", String::from_utf8_lossy(received)))?;
    match &case.want {
        Want::Refused(want) => {
            ensure!(
                status == *want,
                "expected {want}, got {status}: {:?}",
                responses.first().map(|r| r.text())
            );
            ensure!(
                events.is_empty(),
                "refused, yet the app received: {events:#?}"
            );
        }
        Want::Delivered(d) => {
            ensure!(
                status == 200,
                "expected 200, got {status}: {:?}",
                responses.first().map(|r| r.text())
            );
            let [event] = events else {
                bail!("the app logged {} events: {events:#?}", events.len());
            };
            ensure!(
                event.event == "request" && event.flags.is_empty(),
                "the app's parser flagged it: {event:#?}"
            );
            let raw = event.raw_bytes()?;
            let head_end = raw
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .context("no head in the raw bytes")?;
            let head = std::str::from_utf8(&raw[..head_end])?;
            let mut lines = head.split("\r\n");
            let line = lines.next().unwrap_or_default();
            ensure!(
                line == d.line,
                "request line {line:?}, expected {:?}",
                d.line
            );
            let mut got: Vec<&str> = lines.collect();
            got.sort_unstable();
            let identity = format!("x-picket-peer-identity: {}", spiffe_id("shop", "frontend"));
            let mut want: Vec<&str> = vec!["host: orders", identity.as_str()];
            want.extend_from_slice(d.headers);
            want.sort_unstable();
            ensure!(got == want, "header lines {got:?}, expected {want:?}");
            let body = &raw[head_end + 4..];
            ensure!(
                body == d.body,
                "body {:?}, expected {:?}",
                String::from_utf8_lossy(body),
                String::from_utf8_lossy(d.body)
            );
        }
    }
    let _ = path;
    Ok(())
}

/// Runs `cases` on both paths; fails listing every case that did not behave.
async fn run(cases: &[Case]) -> Result<()> {
    let mut edge = Edge::start().await?;
    let mut failures = Vec::new();
    for path in [Path::Inbound, Path::Caller] {
        for case in cases {
            let outcome = async {
                let received = edge.exchange(path, &case.bytes).await?;
                let events = edge.app.since()?;
                judge(case, path, &received, &events)
            }
            .await;
            if let Err(e) = outcome {
                failures.push(format!(
                    "{path:?} {}: {:?}\n    {e:#}",
                    case.name,
                    String::from_utf8_lossy(&case.bytes)
                ));
            }
        }
    }
    // Events that arrive late (an app connection closed after the answer) still count.
    let late = edge.app.since()?;
    ensure!(late.is_empty(), "the app logged after the cases: {late:#?}");
    edge.app.assert_no_flags()?;
    ensure!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len() * 2,
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn body_framing_is_strict_and_re_serialized_on_both_paths() -> Result<()> {
    run(&framing_cases()).await
}

#[tokio::test]
async fn request_target_host_and_connect_rules_on_both_paths() -> Result<()> {
    run(&target_and_host_cases()).await
}

#[tokio::test]
async fn header_bytes_and_lists_on_both_paths() -> Result<()> {
    run(&header_cases()).await
}

/// With `http.forwarded: append`, the app gets the client's entries followed by the address
/// the sidecar saw (here the caller's sidecar or the test client, both on loopback).
#[tokio::test]
async fn forwarding_headers_are_appended_when_configured() -> Result<()> {
    let mut edge = Edge::start_with("http:\n  forwarded: append\n").await?;
    let request = b"GET /public/x HTTP/1.1\r\nHost: orders\r\nX-Forwarded-For: 10.1.2.3\r\n\
                    Forwarded: for=10.1.2.3\r\nX-Real-IP: 10.1.2.3\r\nConnection: close\r\n\r\n";
    for path in [Path::Inbound, Path::Caller] {
        let received = edge.exchange(path, request).await?;
        let status = parse_http1_responses(&received)?.first().map(|r| r.status);
        ensure!(status == Some(200), "{path:?}: {status:?}");
        let events = edge.app.since()?;
        let [event] = events.as_slice() else {
            bail!("{path:?}: the app logged {events:#?}");
        };
        ensure!(
            event.header("x-forwarded-for") == ["10.1.2.3, 127.0.0.1"]
                && event.header("forwarded") == ["for=10.1.2.3, for=127.0.0.1"]
                && event.header("x-real-ip") == ["127.0.0.1"],
            "{path:?}: {:?}",
            event.headers
        );
    }
    Ok(())
}

/// A chunked body whose first 100 KiB are valid and whose next chunk-size line is malformed,
/// sent only once the app has the request head: the sidecar must abort the app's request so
/// the app never sees a complete body, and answer 400 (or close).
#[tokio::test]
async fn a_body_malformed_after_the_head_was_forwarded_is_aborted() -> Result<()> {
    let mut edge = Edge::start().await?;
    let head = "POST /public/x HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let chunk = vec![b'a'; 100 * 1024];
    let mut first = head.as_bytes().to_vec();
    first.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
    first.extend_from_slice(&chunk);
    first.extend_from_slice(b"\r\n");
    let second = b"+5\r\nhello\r\n0\r\n\r\n";
    let mut failures = Vec::new();
    for path in [Path::Inbound, Path::Caller] {
        let outcome = async {
            edge.app.since()?;
            let received = send_in_two(&edge, path, &first, second).await?;
            let responses = parse_http1_responses(&received).unwrap_or_default();
            let status = responses.first().map(|r| r.status);
            ensure!(
                status.is_none() || status == Some(400),
                "expected 400 or a closed connection, got {status:?}"
            );
            let mut seen = Vec::new();
            picket_tests::eventually(std::time::Duration::from_secs(10), async || {
                seen.extend(edge.app.since()?);
                ensure!(
                    seen.iter().any(|e| e.event == "incomplete"),
                    "the app has not logged the cut-off request: {seen:?}"
                );
                Ok(())
            })
            .await?;
            ensure!(
                !seen.iter().any(|e| e.event == "request"),
                "the app received a complete request: {seen:#?}"
            );
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            failures.push(format!("{path:?}: {e:#}"));
        }
    }
    edge.app.assert_no_flags()?;
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// Writes `first`, waits until the app has been sent the request head, then writes `second`
/// and reads until the server closes.
async fn send_in_two(edge: &Edge, path: Path, first: &[u8], second: &[u8]) -> Result<Vec<u8>> {
    let before = edge.app.connections()?;
    let mut received = Vec::new();
    match path {
        Path::Inbound => {
            let mut tls = picket_tests::clients::tls_connect(
                edge.orders.addrs().inbound,
                Arc::clone(&edge.h1),
            )
            .await?;
            tls.write_all(first).await?;
            tls.flush().await?;
            wait_for_app_connection(edge, before).await?;
            let _ = tls.write_all(second).await;
            let _ = tls.flush().await;
            let _ = tokio::time::timeout(
                picket_tests::wait::COMMAND_TIMEOUT,
                tls.read_to_end(&mut received),
            )
            .await;
        }
        Path::Caller => {
            let mut tcp = tokio::net::TcpStream::connect(edge.frontend.addrs().outbound).await?;
            tcp.write_all(first).await?;
            wait_for_app_connection(edge, before).await?;
            let _ = tcp.write_all(second).await;
            let _ = tokio::time::timeout(
                picket_tests::wait::COMMAND_TIMEOUT,
                tcp.read_to_end(&mut received),
            )
            .await;
        }
    }
    Ok(received)
}

/// Waits until the app has received the first bytes of a new connection (the head was
/// forwarded).
async fn wait_for_app_connection(edge: &Edge, before: usize) -> Result<()> {
    picket_tests::eventually(std::time::Duration::from_secs(10), async || {
        ensure!(
            edge.app.connections()? > before,
            "the app has not been sent the request head yet"
        );
        Ok(())
    })
    .await
}

/// An HTTP/2 case: method, `:authority`, `:path`, extra header fields and body.
struct H2Case {
    name: &'static str,
    method: &'static str,
    authority: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static [u8])],
    body: &'static [u8],
    /// `Ok(fields)`: 200, and the app received exactly these regular fields (besides the peer
    /// identity) and `body`; `Err(status)`: that status and nothing reached the app.
    want: Result<&'static [&'static str], u16>,
}

fn h2_cases() -> Vec<H2Case> {
    let base = H2Case {
        name: "control",
        method: "GET",
        authority: "orders",
        path: "/public/x",
        headers: &[],
        body: b"",
        want: Ok(&[]),
    };
    vec![
        H2Case { ..base },
        H2Case {
            name: "host naming another host than :authority",
            headers: &[("host", b"evil")],
            want: Err(400),
            ..base
        },
        H2Case {
            name: "host naming :authority's host",
            headers: &[("host", b"Orders.")],
            want: Ok(&[]),
            ..base
        },
        H2Case {
            name: "obs-text in a value",
            headers: &[("x-role", b"\xa0admin\xa0")],
            want: Err(400),
            ..base
        },
        H2Case {
            name: "a list naming admin",
            headers: &[("x-role", b"user, admin")],
            want: Err(403),
            ..base
        },
        H2Case {
            name: "foreign identity headers are removed",
            headers: &[
                (
                    "x-forwarded-client-cert",
                    b"URI=spiffe://cluster.local/ns/ops/sa/admin",
                ),
                ("l5d-client-id", b"admin.ops"),
                ("x-envoy-original-path", b"/admin"),
                ("x-forwarded-for", b"10.1.2.3"),
                ("x-note", b"kept"),
            ],
            want: Ok(&["x-note: kept"]),
            ..base
        },
        H2Case {
            name: "asterisk with GET",
            path: "*",
            want: Err(400),
            ..base
        },
        H2Case {
            name: "GET with a body keeps it, framed by length",
            body: b"abc",
            want: Ok(&["content-length: 3"]),
            ..base
        },
        H2Case {
            name: "POST with a body",
            method: "POST",
            body: b"hello",
            want: Ok(&["content-length: 5"]),
            ..base
        },
    ]
}

/// Sends one HTTP/2 case along `path`: h2c prior knowledge to the caller's sidecar, or h2 over
/// mTLS to the inbound port. Returns the status.
async fn send_h2(edge: &Edge, path: Path, case: &H2Case) -> Result<u16> {
    use picket_tests::clients::{HttpClient, full};
    let mut req = http::Request::builder()
        .method(case.method)
        .version(http::Version::HTTP_2)
        .uri(
            http::Uri::builder()
                .scheme("http")
                .authority(case.authority)
                .path_and_query(case.path)
                .build()?,
        )
        .body(full(case.body.to_vec()))?;
    for (n, v) in case.headers {
        req.headers_mut().append(
            http::HeaderName::from_static(n),
            http::HeaderValue::from_bytes(v)?,
        );
    }
    let mut client = match path {
        Path::Caller => {
            HttpClient::connect(edge.frontend.addrs().outbound, http::Version::HTTP_2).await?
        }
        Path::Inbound => {
            let tls = picket_tests::clients::tls_connect(
                edge.orders.addrs().inbound,
                Arc::clone(&edge.h2),
            )
            .await?;
            HttpClient::handshake(tls, http::Version::HTTP_2).await?
        }
    };
    let resp = client.send(req).await?;
    let status = resp.status().as_u16();
    let _ = picket_tests::clients::body_text(resp).await;
    Ok(status)
}

#[tokio::test]
async fn http2_host_bytes_lists_and_bodies_on_both_paths() -> Result<()> {
    let mut edge = Edge::start().await?;
    let identity = format!("x-picket-peer-identity: {}", spiffe_id("shop", "frontend"));
    let mut failures = Vec::new();
    for path in [Path::Inbound, Path::Caller] {
        for case in h2_cases() {
            let outcome = async {
                let status = send_h2(&edge, path, &case).await?;
                let events = edge.app.since()?;
                match case.want {
                    Err(want) => {
                        ensure!(status == want, "expected {want}, got {status}");
                        ensure!(events.is_empty(), "the app received {events:#?}");
                    }
                    Ok(fields) => {
                        ensure!(status == 200, "expected 200, got {status}");
                        let [event] = events.as_slice() else {
                            bail!("the app logged {events:#?}");
                        };
                        ensure!(
                            event.proto == "HTTP/2" && event.flags.is_empty(),
                            "{event:#?}"
                        );
                        ensure!(
                            event.method == case.method
                                && event.target == case.path
                                && event.host == "orders",
                            "{event:#?}"
                        );
                        let mut got: Vec<String> = event
                            .headers
                            .iter()
                            .filter(|(n, _)| n != ":authority")
                            .map(|(n, v)| format!("{n}: {v}"))
                            .collect();
                        got.sort_unstable();
                        let mut want: Vec<String> =
                            fields.iter().map(|f| (*f).to_owned()).collect();
                        want.push(identity.clone());
                        want.sort_unstable();
                        ensure!(got == want, "fields {got:?}, expected {want:?}");
                        ensure!(event.body_bytes()? == case.body, "body {:?}", event.body);
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = outcome {
                failures.push(format!("{path:?} {}: {e:#}", case.name));
            }
        }
    }
    edge.app.assert_no_flags()?;
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// A reader that opens an HTTP/2 stream with a zero flow-control window and never reads is
/// closed after `timeouts.stall` (2 s here), long before the idle timeout (300 s): an app on
/// the caller's outbound side, and a peer straight at the inbound port.
#[tokio::test]
async fn a_reader_that_never_opens_its_window_is_closed_after_the_stall_timeout() -> Result<()> {
    use crate::garden::{frame, hpack_len};
    let stall = "timeouts:\n  stall: 2s\n";
    let mut edge = Edge::start_both(stall, stall).await?;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE = 0, then an early ACK of the server's settings.
    frame(&mut out, 0x4, 0, 0, &[0, 4, 0, 0, 0, 0]);
    frame(&mut out, 0x4, 0x1, 0, &[]);
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "orders"),
        (":path", "/public/x"),
    ] {
        block.push(0x10);
        hpack_len(&mut block, n.len());
        block.extend_from_slice(n.as_bytes());
        hpack_len(&mut block, v.len());
        block.extend_from_slice(v.as_bytes());
    }
    frame(&mut out, 0x1, 0x4 | 0x1, 1, &block);
    for path in [Path::Caller, Path::Inbound] {
        let sent = std::time::Instant::now();
        match path {
            Path::Caller => {
                let mut tcp =
                    tokio::net::TcpStream::connect(edge.frontend.addrs().outbound).await?;
                tcp.write_all(&out).await?;
                let mut sink = Vec::new();
                tokio::time::timeout(
                    std::time::Duration::from_secs(20),
                    tcp.read_to_end(&mut sink),
                )
                .await
                .context("the stalled connection was not closed within 20 s")?
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::ConnectionReset {
                        Ok(0)
                    } else {
                        Err(e)
                    }
                })?;
            }
            Path::Inbound => {
                // Reads until the sidecar closes (at most a minute).
                raw_tls_exchange(edge.orders.addrs().inbound, Arc::clone(&edge.h2), &out).await?;
            }
        }
        let after = sent.elapsed();
        ensure!(
            after >= std::time::Duration::from_millis(1500)
                && after < std::time::Duration::from_secs(20),
            "{path:?}: closed after {after:?}, not after the stall timeout"
        );
        let events = edge.app.since()?;
        ensure!(
            events.iter().filter(|e| e.event == "request").count() == 1,
            "{path:?}: the app should have answered the request once: {events:?}"
        );
    }
    Ok(())
}

/// Every case of the corpus, counted.
#[test]
fn corpus_covers_every_class() {
    let total = framing_cases().len()
        + target_and_host_cases().len()
        + header_cases().len()
        + h2_cases().len();
    assert!(total >= 35, "the edge corpus has {total} cases");
}
