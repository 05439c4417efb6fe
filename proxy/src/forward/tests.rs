#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;
use crate::canonical::canonicalize;
use crate::config::HttpConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the forwarding steps made of one request: the framing headers and the body as
/// the destination would receive them.
#[derive(Debug, Default, Clone)]
struct Framed {
    content_length: Option<String>,
    chunked: bool,
    trailer_header: bool,
    complete: bool,
    had_body: bool,
    body: Option<Vec<u8>>,
    trailers: bool,
}

/// Serves `raw` as one HTTP/1.1 connection and runs, for each request, the steps both
/// directions run before forwarding (canonical head, read-ahead, canonical framing), then
/// reads the body as the forwarding client would. The fuzz target `body_framing` runs the
/// same steps.
async fn frame_connection(raw: &[u8], to_http1: bool) -> Vec<Framed> {
    frame_connection_split(raw, raw.len(), to_http1).await
}

/// As [`frame_connection`], sending `raw[..split]` first and the rest only after reading
/// ahead has given up waiting, so the rest of the body arrives after the head went on.
async fn frame_connection_split(raw: &[u8], split: usize, to_http1: bool) -> Vec<Framed> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let record = Arc::clone(&record);
        async move {
            let (mut parts, body) = req.into_parts();
            if canonicalize(&mut parts, &HttpConfig::default()).is_ok() {
                let had_body = declares_body(&parts.headers, &body);
                if let Ok(mut ahead) = read_ahead(body).await {
                    let complete = ahead.is_complete();
                    frame_request(&mut parts.headers, &mut ahead, had_body, to_http1);
                    let collected = ahead.collect().await.ok();
                    let header = |h| {
                        parts
                            .headers
                            .get(h)
                            .and_then(|v: &HeaderValue| v.to_str().ok())
                    };
                    let framed = Framed {
                        content_length: header(header::CONTENT_LENGTH).map(str::to_owned),
                        chunked: parts.headers.contains_key(header::TRANSFER_ENCODING),
                        trailer_header: parts.headers.contains_key(header::TRAILER),
                        complete,
                        had_body,
                        trailers: collected.as_ref().is_some_and(|c| c.trailers().is_some()),
                        body: collected.map(|c| c.to_bytes().to_vec()),
                    };
                    record
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(framed);
                }
            }
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
        }
    });
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    // The client's end of input must not cancel a request still being read.
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(hyper_util::rt::TokioIo::new(server), svc);
    let task = tokio::spawn(conn);
    let (first, rest) = raw.split_at(split.min(raw.len()));
    let _ = client.write_all(first).await;
    if !rest.is_empty() {
        tokio::time::sleep(READ_AHEAD_TOTAL + READ_AHEAD_WAIT * 5).await;
        let _ = client.write_all(rest).await;
    }
    let _ = client.shutdown().await;
    let mut sink = Vec::new();
    let _ = client.read_to_end(&mut sink).await;
    let _ = task.await;
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// The properties the fuzz target checks, for one request.
fn check(f: &Framed) {
    assert!(!(f.content_length.is_some() && f.chunked), "{f:?}");
    assert!(
        !f.trailer_header && !f.trailers,
        "trailers forwarded: {f:?}"
    );
    if let Some(cl) = &f.content_length {
        assert!(cl == "0" || !cl.starts_with('0'), "{f:?}");
    }
    if !f.had_body {
        assert!(f.content_length.is_none() && !f.chunked, "{f:?}");
    }
    if f.complete && f.had_body {
        assert!(
            f.content_length.is_some(),
            "a complete body without a length: {f:?}"
        );
    }
    if let (Some(cl), Some(body)) = (&f.content_length, &f.body) {
        assert_eq!(cl.parse::<usize>().ok(), Some(body.len()), "{f:?}");
    }
    if f.complete {
        assert!(
            f.body.is_some(),
            "a body read completely failed later: {f:?}"
        );
    }
}

/// Every input the `body_framing` fuzz target ever failed on (`fuzz/crashes/body_framing`)
/// keeps its properties here, in the ordinary test run.
#[tokio::test]
async fn body_framing_fuzz_findings_keep_their_properties() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/crashes/body_framing");
    let mut requests = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.map(|e| e.path()).unwrap_or_default();
        let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for to_http1 in [true, false] {
            for framed in frame_connection(&raw, to_http1).await {
                check(&framed);
                requests += 1;
            }
        }
    }
    assert!(requests > 0, "no request read from {}", dir.display());
}

/// The first finding: a chunked body with a trailer section was read completely, yet
/// forwarded chunked (the trailer made its length "unknown"), with the trailer passed on to
/// an HTTP/2 destination. Trailers are dropped, so a complete body always has a length.
#[tokio::test]
async fn request_trailers_are_dropped_and_the_body_keeps_its_length() {
    let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
                Trailer: x-role\r\n\r\n3;e=1\r\nabc\r\n0\r\nx-role: admin\r\n\r\n";
    for to_http1 in [true, false] {
        let framed = frame_connection(raw, to_http1).await;
        let [f] = framed.as_slice() else {
            panic!("{framed:?}");
        };
        check(f);
        assert_eq!(f.content_length.as_deref(), Some("3"));
        assert_eq!(f.body.as_deref(), Some(&b"abc"[..]));
    }
}

/// Trailers that arrive after the head was forwarded (the body streamed) are dropped too.
#[tokio::test]
async fn late_request_trailers_are_dropped() {
    let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                3\r\nabc\r\n0\r\nx-role: admin\r\n\r\n";
    let split = raw.len() - 20;
    let framed = frame_connection_split(raw, split, true).await;
    let [f] = framed.as_slice() else {
        panic!("{framed:?}");
    };
    check(f);
    assert!(!f.complete && f.chunked, "{f:?}");
    assert_eq!(f.body.as_deref(), Some(&b"abc"[..]));
}

fn answer_with_header(value: Option<&'static str>) -> Response<Body> {
    let mut resp = Response::new(empty());
    if let Some(v) = value {
        resp.headers_mut()
            .insert(SIDECAR_ANSWER_HEADER, HeaderValue::from_static(v));
    }
    resp
}

#[test]
fn the_inbound_side_announces_its_own_answers_and_never_the_apps_copy() {
    // Its own answers, whatever they are, carry the header.
    for own in [
        error_response(StatusCode::BAD_GATEWAY, "application unreachable"),
        error_response_close(StatusCode::BAD_REQUEST, "bad head"),
    ] {
        let mut own = own;
        announce_sidecar_answer(&mut own);
        assert_eq!(own.headers().get(SIDECAR_ANSWER_HEADER).unwrap(), "1");
    }
    // The app's answer loses the copy it wrote, whatever its value.
    for forged in [Some("1"), Some("0"), Some("yes")] {
        let mut app = answer_with_header(forged);
        announce_sidecar_answer(&mut app);
        assert!(app.headers().get(SIDECAR_ANSWER_HEADER).is_none());
    }
    // A peer's answer passed on (never on this side, but the mark is not its own): no header.
    let mut peer = answer_with_header(Some("1"));
    peer.extensions_mut().insert(SidecarAnswer::Peer);
    announce_sidecar_answer(&mut peer);
    assert!(peer.headers().get(SIDECAR_ANSWER_HEADER).is_none());
}

#[test]
fn the_outbound_side_believes_the_header_only_from_a_verified_peer_and_always_removes_it() {
    let mark = |r: &Response<Body>| r.extensions().get::<SidecarAnswer>().copied();
    let mut said = answer_with_header(Some("1"));
    take_peer_answer(&mut said, true);
    assert_eq!(mark(&said), Some(SidecarAnswer::Peer));
    assert!(said.headers().get(SIDECAR_ANSWER_HEADER).is_none());

    // Not a verified peer: removed, not believed.
    let mut unverified = answer_with_header(Some("1"));
    take_peer_answer(&mut unverified, false);
    assert_eq!(mark(&unverified), None);
    assert!(unverified.headers().get(SIDECAR_ANSWER_HEADER).is_none());

    // Another value is not the peer's word: removed, not believed.
    let mut odd = answer_with_header(Some("true"));
    take_peer_answer(&mut odd, true);
    assert_eq!(mark(&odd), None);
    assert!(odd.headers().get(SIDECAR_ANSWER_HEADER).is_none());

    // No header: nothing marked.
    let mut plain = answer_with_header(None);
    take_peer_answer(&mut plain, true);
    assert_eq!(mark(&plain), None);

    // What leaves for the app never carries it, whoever wrote it (this sidecar's own answers
    // included).
    for mut resp in [
        answer_with_header(Some("1")),
        error_response(StatusCode::SERVICE_UNAVAILABLE, "peer unreachable"),
    ] {
        announce_sidecar_answer(&mut resp);
        withhold_sidecar_answer(&mut resp);
        assert!(resp.headers().get(SIDECAR_ANSWER_HEADER).is_none());
    }
}

/// The removal spelled out: every connection-specific name looked up, whatever the head holds,
/// after every header `Connection` names.
fn strip_hop_by_hop_by_lookup(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in hop_by_hop() {
        headers.remove(name);
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The one-pass check and the removal of only what it found change nothing: on heads with
/// none, one or several connection-specific headers, headers named by `Connection` (standard
/// and not, present and absent, repeated, in any case), and `TE` with and without `trailers`,
/// the result is exactly the lookups' result.
#[test]
fn hop_by_hop_headers_are_removed_exactly_as_by_looking_each_up() {
    let heads: &[&[(&str, &str)]] = &[
        &[],
        &[("host", "orders"), ("accept", "*/*"), ("x-request-id", "1")],
        &[
            ("content-length", "3"),
            ("date", "today"),
            ("server", "nginx"),
        ],
        &[("connection", "keep-alive"), ("content-type", "text/plain")],
        &[
            ("connection", "close, X-Secret, Accept"),
            ("x-secret", "1"),
            ("accept", "*/*"),
        ],
        &[
            ("Connection", "x-a"),
            ("connection", "X-B ,, "),
            ("x-a", "1"),
            ("x-b", "2"),
            ("x-c", "3"),
        ],
        &[
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("host", "h"),
        ],
        &[
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "trailers"),
        ],
        &[("te", "gzip"), ("x-other", "1")],
        &[("te", "TRAILERS"), ("te", "deflate")],
        &[
            ("proxy-authorization", "Basic x"),
            ("proxy-authenticate", "Basic"),
        ],
        &[("connection", "te"), ("te", "trailers")],
        &[("connection", "TE"), ("te", "trailers"), ("te", "gzip")],
        &[("connection", "te"), ("x-a", "1")],
        &[("connection", "Keep-Alive"), ("keep-alive", "timeout=5")],
        &[("connection", "keep-alive, Upgrade"), ("x-a", "1")],
        &[
            ("connection", "upgrade, proxy-authorization"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
        ],
        &[("connection", "close"), ("close", "1"), ("server", "s")],
        &[("connection", "transfer-encoding, x-a"), ("x-a", "1")],
        &[("connection", "bad name, x-b"), ("x-b", "1")],
    ];
    for head in heads {
        let mut ours = HeaderMap::new();
        for (n, v) in *head {
            ours.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut reference = ours.clone();
        strip_hop_by_hop(&mut ours);
        strip_hop_by_hop_by_lookup(&mut reference);
        assert_eq!(ours, reference, "{head:?}");
    }
}

/// `remove_each` leaves a head exactly as removing each listed name in turn does: every line
/// of each listed name the head carries goes, whatever the case it was written in, and
/// nothing else; on heads with none, one, some or all of the names, repeated lines, and more
/// headers than names, for every list the data path uses and lists as long as the presence mask and one name longer.
#[test]
fn remove_each_removes_what_a_removal_per_name_removes() {
    let many: Vec<HeaderName> = (0..MASK_BITS)
        .map(|i| HeaderName::from_bytes(format!("x-n{i}").as_bytes()).unwrap())
        .collect();
    let too_many: Vec<HeaderName> = (0..=MASK_BITS)
        .map(|i| HeaderName::from_bytes(format!("x-n{i}").as_bytes()).unwrap())
        .collect();
    let lists: Vec<Vec<HeaderName>> = vec![
        FRAMING_HEADERS.to_vec(),
        FORWARDING_HEADERS.to_vec(),
        vec![ORIG_PROTO_HEADER, PEER_IDENTITY_HEADER],
        vec![PEER_IDENTITY_HEADER, ORIG_PROTO_HEADER, header::HOST],
        vec![SIDECAR_ANSWER_HEADER],
        vec![header::HOST, header::HOST],
        many,
        too_many,
    ];
    let heads: &[&[(&str, &str)]] = &[
        &[],
        &[
            ("accept", "*/*"),
            ("user-agent", "curl"),
            ("traceparent", "00-1"),
        ],
        &[
            ("Host", "orders"),
            ("Content-Length", "3"),
            ("accept", "*/*"),
        ],
        &[
            ("x-forwarded-for", "10.0.0.1"),
            ("X-Forwarded-For", "10.0.0.2"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "a"),
            ("x-forwarded-port", "443"),
            ("x-keep", "1"),
        ],
        &[
            ("x-picket-peer-identity", "spiffe://td/ns/a/sa/b"),
            ("x-picket-orig-proto", "HTTP/1.1"),
            ("x-picket-sidecar-answer", "1"),
            ("x-picket-sidecar-answer", "2"),
            ("host", "h"),
        ],
        &[
            ("transfer-encoding", "chunked"),
            ("trailer", "x-checksum"),
            ("content-length", "1"),
            ("te", "trailers"),
        ],
        &[
            ("x-n0", "a"),
            ("x-n31", "b"),
            ("x-n7", "c"),
            ("x-n7", "d"),
            ("x-n32", "e"),
        ],
    ];
    let mut wide = Vec::new();
    for i in 0..40 {
        wide.push((format!("x-n{i}"), format!("{i}")));
    }
    let wide: Vec<(&str, &str)> = wide.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    for head in heads
        .iter()
        .copied()
        .chain(std::iter::once(wide.as_slice()))
    {
        for names in &lists {
            let mut ours = HeaderMap::new();
            for (n, v) in head {
                ours.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            let mut reference = ours.clone();
            remove_each(&mut ours, names);
            for name in names {
                reference.remove(name);
            }
            assert_eq!(ours, reference, "{head:?} without {names:?}");
        }
    }
}
