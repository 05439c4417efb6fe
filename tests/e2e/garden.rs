//! A differential check in the style of the HTTP Garden: generated and mutated raw HTTP/1.1 and
//! HTTP/2 requests go through real sidecars (through the caller's sidecar and straight at the
//! inbound port), and every message the app receives is re-parsed by an independent strict
//! parser (Python's h11 and h2, in `tests/fixtures/strict_app.py`). The check fails when that
//! parser or its RFC checks flag a message, when its reading of method, target or Host differs
//! from the canonical request the policy decided on (the orders sidecar's flow records), or when
//! the app received a header the client never sent (other than the sidecar's own).
//!
//! It runs for `PICKET_GARDEN_SECONDS` seconds (default 20) from seed `PICKET_GARDEN_SEED`
//! (default fixed, so a CI failure can be replayed); longer runs are for by hand, with the test
//! binary itself (nextest ends a test after three minutes):
//! `PICKET_GARDEN_SECONDS=600 PICKET_GARDEN_SEED=7 target/debug/deps/e2e-<hash> garden:: --nocapture`
//! run from `tests/`. The figures are printed at the end.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use picket_tests::strict::Event;
use picket_tests::telemetry::{TelemetryYaml, log_lines};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::edge::{Edge, Path};

/// xorshift64*: small, seedable, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const METHODS: &[&str] = &[
    "GET", "GET", "GET", "HEAD", "POST", "POST", "POST", "PUT", "PUT", "DELETE", "OPTIONS",
    "PATCH", "CONNECT", "get", "TRACE",
];

const TARGETS: &[&str] = &[
    "/public/x",
    "/public/x",
    "/public/y?z=1",
    "/public/a/./b",
    "/public/a/../b",
    "/public/%2e%2e/admin",
    "/public//x?q=1&r=/../",
    "/public/x%2Fy",
    "/public/x;p=1",
    "/public/caf%c3%a9",
    "/public/x#frag",
    "*",
    "admin",
    "public/x",
    "http://orders/public/y",
    "http://evil/public/y",
    "//public/x",
    "/public/\\x",
    "/PUBLIC/x",
];

const HEADERS: &[&str] = &[
    "x-role: user",
    "x-role: user, admin",
    "x-role: admin",
    "x-note: hello world",
    "x-note: a,b,,c",
    "Accept: */*",
    "User-Agent: garden/1",
    "x-forwarded-for: 10.9.9.9",
    "Connection: x-note",
    "Keep-Alive: 5",
    "TE: trailers",
    "Expect: 100-continue",
    "Upgrade: websocket",
    "Cookie: a=b; c=d",
    "x_note: underscore",
    "X-Picket-Peer-Identity: spiffe://cluster.local/ns/x/sa/y",
    "Host: evil",
];

/// A request generated from parts and then mutated byte-wise.
fn generate(rng: &mut Rng) -> Vec<u8> {
    let method = *rng.pick(METHODS);
    let target = *rng.pick(TARGETS);
    let version = if rng.chance(8) {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let mut lines = vec![format!("{method} {target} {version}")];
    if !rng.chance(5) {
        lines.push(
            rng.pick(&[
                "Host: orders",
                "Host: ORDERS.",
                "Host: orders:80",
                "host:orders",
            ])
            .to_string(),
        );
    }
    for _ in 0..rng.below(4) {
        lines.push((*rng.pick(HEADERS)).to_owned());
    }
    let bodies: [&[u8]; 4] = [b"", b"abc", b"hello world", b"0123456789abcdef0123"];
    let body: &[u8] = bodies[rng.below(bodies.len())];
    let mut framed = Vec::new();
    match rng.below(4) {
        0 => {}
        1 => {
            lines.push(format!("Content-Length: {}", body.len()));
            framed.extend_from_slice(body);
        }
        2 => {
            lines.push("Transfer-Encoding: chunked".to_owned());
            if !body.is_empty() {
                framed.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                framed.extend_from_slice(body);
                framed.extend_from_slice(b"\r\n");
            }
            framed.extend_from_slice(b"0\r\n\r\n");
        }
        _ => {
            lines.push(format!("Content-Length: 00{}", body.len()));
            framed.extend_from_slice(body);
        }
    }
    lines.push("Connection: close".to_owned());
    let mut bytes = lines.join("\r\n").into_bytes();
    bytes.extend_from_slice(b"\r\n\r\n");
    bytes.extend_from_slice(&framed);
    // Half the requests stay as generated, so that many reach the app.
    if rng.chance(50) {
        for _ in 0..=rng.below(2) {
            mutate(rng, &mut bytes);
        }
    }
    bytes
}

/// One byte-level mutation of the kind past smuggling bugs were made of.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    const INSERTS: &[&[u8]] = &[
        b" ",
        b"\t",
        b"\r",
        b"\n",
        b"\r\n",
        b"\x00",
        b"\xa0",
        b"\xc3\xa9",
        b"\x0b",
        b",",
        b";",
        b"+",
        b"-",
        b"0x",
        b"_",
        b":",
        b"\r\n ",
        b"chunked",
        b"Transfer-Encoding: chunked\r\n",
        b"Content-Length: 5\r\n",
        b"Host: evil\r\n",
        b"\r\n\r\n",
        b"GET /admin HTTP/1.1\r\nHost: orders\r\n\r\n",
    ];
    if bytes.is_empty() {
        return;
    }
    let at = rng.below(bytes.len() + 1);
    match rng.below(5) {
        0 | 1 => {
            let insert = *rng.pick(INSERTS);
            bytes.splice(at..at, insert.iter().copied());
        }
        2 => {
            if at < bytes.len() {
                bytes.remove(at);
            }
        }
        3 => {
            if at < bytes.len() {
                bytes[at] = bytes[at].to_ascii_uppercase();
                if rng.chance(30) {
                    bytes[at] ^= 0x80;
                }
            }
        }
        _ => {
            // Repeat one header line.
            let text = bytes.clone();
            let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
            if lines.len() > 2 {
                let line = lines[1 + rng.below(lines.len() - 2)];
                let mut copy = line.to_vec();
                copy.push(b'\n');
                if let Some(pos) = bytes.windows(2).position(|w| w == b"\r\n") {
                    bytes.splice(pos + 2..pos + 2, copy);
                }
            }
        }
    }
}

/// A raw HTTP/2 request (prior knowledge over TLS ALPN h2): preface, SETTINGS, one HEADERS
/// frame of HPACK literals (never indexed, no Huffman, so any byte can be sent) and, maybe, a
/// DATA frame.
/// HTTP/2 header fields, name and value bytes.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn generate_h2(rng: &mut Rng) -> (Vec<u8>, Fields) {
    let mut fields: Fields = vec![
        (
            b":method".to_vec(),
            (*rng.pick(&["GET", "POST", "HEAD", "OPTIONS", "CONNECT", "get"])).into(),
        ),
        (b":scheme".to_vec(), b"https".to_vec()),
        (
            b":authority".to_vec(),
            (*rng.pick(&["orders", "ORDERS", "orders:8443", "evil", "u@orders"])).into(),
        ),
        (b":path".to_vec(), (*rng.pick(TARGETS)).into()),
    ];
    for _ in 0..rng.below(4) {
        let (n, v) = rng
            .pick(&[
                ("x-role", "user"),
                ("x-role", "user, admin"),
                ("host", "orders"),
                ("host", "evil"),
                ("x-note", " padded "),
                ("x-note", "caf\u{e9}"),
                ("connection", "close"),
                ("te", "trailers"),
                ("te", "gzip"),
                ("transfer-encoding", "chunked"),
                ("content-length", "3"),
                ("content-length", "003"),
                ("X-Upper", "1"),
                ("x-picket-peer-identity", "spiffe://cluster.local/ns/x/sa/y"),
                (":path", "/public/dup"),
            ])
            .to_owned();
        fields.push((n.as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
    if rng.chance(20) && fields.len() > 1 {
        let i = rng.below(fields.len());
        fields[i].1.push(*rng.pick(&[b'\r', b'\n', 0, 0xa0, b' ']));
    }
    let bodies: [&[u8]; 3] = [b"", b"abc", b"hello"];
    let body: &[u8] = bodies[rng.below(bodies.len())];
    let mut block = Vec::new();
    for (n, v) in &fields {
        block.push(0x10);
        hpack_len(&mut block, n.len());
        block.extend_from_slice(n);
        hpack_len(&mut block, v.len());
        block.extend_from_slice(v);
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 0x4, 0, 0, &[]);
    let end_headers = 0x4;
    let end_stream = if body.is_empty() { 0x1 } else { 0 };
    frame(&mut out, 0x1, end_headers | end_stream, 1, &block);
    if !body.is_empty() {
        frame(&mut out, 0x0, 0x1, 1, body);
    }
    (out, fields)
}

pub(crate) fn hpack_len(out: &mut Vec<u8>, n: usize) {
    // 7-bit prefix integer, Huffman bit clear.
    if n < 127 {
        out.push(u8::try_from(n).unwrap_or(0));
    } else {
        out.push(127);
        let mut rest = n - 127;
        while rest >= 128 {
            out.push(u8::try_from(rest % 128).unwrap_or(0) | 0x80);
            rest /= 128;
        }
        out.push(u8::try_from(rest).unwrap_or(0));
    }
}

pub(crate) fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(0);
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Sends a raw HTTP/2 exchange along `path` (h2c prior knowledge to the caller's sidecar, or
/// h2 over mTLS to the inbound port) and reads until stream 1 is answered or reset, the
/// connection closes, or two seconds pass (the status itself is not judged here: what the app
/// received is).
async fn h2_exchange(edge: &Edge, path: Path, bytes: &[u8]) -> Result<()> {
    match path {
        Path::Caller => {
            let tcp = tokio::net::TcpStream::connect(edge.frontend.addrs().outbound).await?;
            h2_frames(tcp, bytes).await
        }
        Path::Inbound => {
            let tls = picket_tests::clients::tls_connect(
                edge.orders.addrs().inbound,
                Arc::clone(&edge.h2),
            )
            .await?;
            h2_frames(tls, bytes).await
        }
    }
}

async fn h2_frames<S>(mut tls: S, bytes: &[u8]) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = tls.write_all(bytes).await;
    let _ = tls.flush().await;
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, tls.read(&mut chunk)).await {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        let mut at = 0;
        while buf.len() >= at + 9 {
            let len = (usize::from(buf[at]) << 16)
                | (usize::from(buf[at + 1]) << 8)
                | usize::from(buf[at + 2]);
            let (kind, flags) = (buf[at + 3], buf[at + 4]);
            if buf.len() < at + 9 + len {
                break;
            }
            // The app logs a request before it answers, so the first response HEADERS is
            // enough; END_STREAM, RST_STREAM and GOAWAY end it too.
            if matches!(kind, 0x1 | 0x3 | 0x7) || (kind == 0x0 && flags & 0x1 != 0) {
                return Ok(());
            }
            at += 9 + len;
        }
    }
}

/// Writes `bytes` and reads until the server closes, or 300 ms pass without a byte once an
/// answer started, or 3 s in all: a mutation may have removed `Connection: close`, and what is
/// judged is what the app received, not the answer.
async fn brief_exchange<S>(mut io: S, bytes: &[u8]) -> Result<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = io.write_all(bytes).await;
    let _ = io.flush().await;
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let wait = if received.is_empty() {
            deadline
        } else {
            (tokio::time::Instant::now() + Duration::from_millis(300)).min(deadline)
        };
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(wait, io.read(&mut chunk)).await {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => return Ok(received),
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Every line of the bytes sent that could be a header line, as a lenient reader would see it
/// (lowercased name, trimmed value): a mutation may have put a whole second request, with its
/// own head, anywhere in the bytes.
fn sent_headers(bytes: &[u8]) -> BTreeSet<(String, String)> {
    let text = String::from_utf8_lossy(bytes);
    text.split('\n')
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| {
            (
                n.trim().to_ascii_lowercase(),
                v.trim_matches([' ', '\t', '\r']).to_owned(),
            )
        })
        .collect()
}

/// Headers the sidecars themselves set or re-serialize.
const OWN: &[&str] = &[
    "host",
    ":authority",
    "x-picket-peer-identity",
    "content-length",
    "transfer-encoding",
    "traceparent",
    "tracestate",
    "te",
];

/// What the app received must have been sent, apart from the sidecars' own headers.
fn check_event(event: &Event, sent: &BTreeSet<(String, String)>) -> Result<()> {
    ensure!(event.flags.is_empty(), "flagged: {:?}", event.flags);
    for (n, v) in &event.headers {
        if OWN.contains(&n.as_str()) {
            continue;
        }
        ensure!(
            sent.contains(&(n.clone(), v.clone())),
            "the app received {n}: {v:?}, which the client never sent"
        );
    }
    Ok(())
}

/// A test knob from the environment: the run's length and seed are what one changes by hand.
#[allow(clippy::disallowed_methods)]
fn knob(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

#[tokio::test]
async fn garden_differential_check_against_an_independent_strict_parser() -> Result<()> {
    let seconds: u64 = knob("PICKET_GARDEN_SECONDS").unwrap_or(20);
    let seed: u64 = knob("PICKET_GARDEN_SEED").unwrap_or(0x9e37_79b9_7f4a_7c15);
    let dir = tempfile::tempdir()?;
    let flows = dir.path().join("orders-flows.jsonl");
    let mut edge = Edge::start_with(&TelemetryYaml::new().flow_log(&flows).to_yaml()).await?;
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let (mut sent, mut reached, mut h2_sent) = (0u64, 0u64, 0u64);
    let mut failures = Vec::new();
    let mut delivered: Vec<Event> = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) && failures.len() < 10 {
        let outcome: Result<Vec<Event>> = async {
            if rng.chance(25) {
                let (bytes, fields) = generate_h2(&mut rng);
                h2_sent += 1;
                let path = if rng.chance(50) {
                    Path::Inbound
                } else {
                    Path::Caller
                };
                h2_exchange(&edge, path, &bytes).await?;
                let events = edge.app.since()?;
                let sent: BTreeSet<(String, String)> = fields
                    .iter()
                    .map(|(n, v)| {
                        (
                            String::from_utf8_lossy(n).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        )
                    })
                    .collect();
                for e in &events {
                    check_event(e, &sent)
                        .with_context(|| format!("{path:?} HTTP/2 fields {fields:?}"))?;
                }
                Ok(events)
            } else {
                let bytes = generate(&mut rng);
                let path = if rng.chance(50) {
                    Path::Inbound
                } else {
                    Path::Caller
                };
                let _ = match path {
                    Path::Caller => {
                        let tcp =
                            tokio::net::TcpStream::connect(edge.frontend.addrs().outbound).await?;
                        brief_exchange(tcp, &bytes).await
                    }
                    Path::Inbound => {
                        let tls = picket_tests::clients::tls_connect(
                            edge.orders.addrs().inbound,
                            Arc::clone(&edge.h1),
                        )
                        .await?;
                        brief_exchange(tls, &bytes).await
                    }
                };
                let events = edge.app.since()?;
                let headers = sent_headers(&bytes);
                for e in &events {
                    check_event(e, &headers).with_context(|| {
                        format!("{path:?} {:?}", String::from_utf8_lossy(&bytes))
                    })?;
                }
                Ok(events)
            }
        }
        .await;
        sent += 1;
        match outcome {
            Ok(events) => {
                reached += events.iter().filter(|e| e.event == "request").count() as u64;
                delivered.extend(events.into_iter().filter(|e| e.event == "request"));
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    edge.app.assert_no_flags()?;
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    // Every delivered request against the canonical request policy decided on: the orders
    // sidecar's flow records of requests the app answered (200), in order.
    let records = picket_tests::eventually(Duration::from_secs(10), async || {
        let records: Vec<serde_json::Value> =
            log_lines(&flows, picket_proxy::telemetry::LineType::Flow)?
                .into_iter()
                .filter(|r| r["status"] == 200)
                .collect();
        ensure!(
            records.len() >= delivered.len(),
            "{} flow records of {} delivered requests",
            records.len(),
            delivered.len()
        );
        Ok(records)
    })
    .await?;
    ensure!(
        records.len() == delivered.len(),
        "{} records, {} delivered",
        records.len(),
        delivered.len()
    );
    for (event, record) in delivered.iter().zip(&records) {
        let path = event.target.split('?').next().unwrap_or_default();
        let want = (
            record["method"].as_str().unwrap_or_default(),
            record["path"].as_str().unwrap_or_default(),
            record["host"].as_str().unwrap_or_default(),
        );
        if (event.method.as_str(), path, event.host.as_str()) != want {
            bail!(
                "the app read {} {} (host {}), policy decided on {want:?}",
                event.method,
                event.target,
                event.host
            );
        }
    }
    eprintln!(
        "garden: seed {seed:#x}, {seconds}s: {sent} requests ({h2_sent} HTTP/2), {reached} reached the app, 0 disagreements"
    );
    Ok(())
}
