//! Arbitrary bytes as an HTTP/1.1 connection to a hyper server whose service does what the
//! sidecar does before forwarding: canonical head, read-ahead of the body, canonical framing
//! headers. Nothing may panic; a body read completely is forwarded with a `Content-Length`
//! (trailers or not: request trailers are dropped, never forwarded), and carries exactly that
//! many bytes; a framing error is reported as an error, never as a short body. Every input this
//! target ever failed on is kept in `crashes/body_framing/` and replayed by the proxy crate's
//! unit test `body_framing_fuzz_findings_keep_their_properties`.

#![no_main]

use std::convert::Infallible;
use std::sync::OnceLock;

use bytes::Bytes;
use http::{Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use picket_proxy::canonical::canonicalize;
use picket_proxy::config::HttpConfig;
use picket_proxy::forward;
use tokio::io::AsyncWriteExt;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

async fn service(req: http::Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let cfg = HttpConfig::default();
    if canonicalize(&mut parts, &cfg).is_err() {
        return Ok(Response::new(Full::new(Bytes::new())));
    }
    let had_body = forward::declares_body(&parts.headers, &body);
    let Ok(mut ahead) = forward::read_ahead(body).await else {
        return Ok(Response::new(Full::new(Bytes::new())));
    };
    let complete = ahead.is_complete();
    forward::frame_request(&mut parts.headers, &mut ahead, had_body, true);
    let declared: Option<u64> = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().expect("ascii").parse().expect("canonical decimal"));
    if let Some(v) = parts.headers.get(header::CONTENT_LENGTH) {
        let s = v.to_str().expect("ascii");
        assert!(s == "0" || !s.starts_with('0'), "{s}");
    }
    assert!(
        !(parts.headers.contains_key(header::CONTENT_LENGTH)
            && parts.headers.contains_key(header::TRANSFER_ENCODING))
    );
    assert!(!parts.headers.contains_key(header::TRAILER));
    if !had_body {
        assert!(declared.is_none() && !parts.headers.contains_key(header::TRANSFER_ENCODING));
    }
    if complete {
        assert!(declared.is_some() || !had_body);
    }
    match ahead.collect().await {
        Ok(collected) => {
            assert!(collected.trailers().is_none(), "request trailers forwarded");
            let n = collected.to_bytes().len() as u64;
            if let Some(d) = declared {
                assert_eq!(d, n, "declared {d}, carried {n}");
            }
        }
        Err(_) => assert!(!complete, "a body read completely cannot fail later"),
    }
    Ok(Response::new(Full::new(Bytes::new())))
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        // The end of input must not cancel a request still being read (hyper closes on EOF
        // otherwise, and the properties would be checked only when the race goes one way).
        let conn = hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .serve_connection(TokioIo::new(server), hyper::service::service_fn(service));
        let task = tokio::spawn(conn);
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
        let _ = task.await;
    });
});
