#![allow(clippy::unwrap_used)]
use super::*;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, v.parse().unwrap());
    }
    h
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

#[test]
fn extracts_w3c_traceparent_and_tracestate() {
    let h = headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("tracestate", "vendor=x"),
    ]);
    let sc = extract(&h).unwrap();
    assert_eq!(sc.trace_id().to_string(), TRACE);
    assert_eq!(sc.span_id().to_string(), SPAN);
    assert!(sc.is_sampled() && sc.is_remote());
    assert_eq!(sc.trace_state().get("vendor"), Some("x"));
}

#[test]
fn w3c_wins_over_b3() {
    let h = headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-00")),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
    ]);
    let sc = extract(&h).unwrap();
    assert_eq!(sc.trace_id().to_string(), TRACE);
    assert!(!sc.is_sampled());
}

#[test]
fn extracts_b3_single_header() {
    let h = headers(&[(
        "b3",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
    )]);
    let sc = extract(&h).unwrap();
    assert_eq!(
        sc.trace_id().to_string(),
        "80f198ee56343ba864fe8b2a57d3eff7"
    );
    assert_eq!(sc.span_id().to_string(), "e457b5a2e4d86bd1");
    assert!(sc.is_sampled());
    // Debug implies sampled; a lone sampling state is no context.
    let sc = extract(&headers(&[(
        "b3",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d",
    )]))
    .unwrap();
    assert!(sc.is_sampled());
    assert!(extract(&headers(&[("b3", "1")])).is_none());
    let sc = extract(&headers(&[(
        "b3",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0",
    )]))
    .unwrap();
    assert!(!sc.is_sampled());
}

#[test]
fn extracts_b3_multi_headers_with_64_bit_trace_ids() {
    let h = headers(&[
        ("x-b3-traceid", "a3ce929d0e0e4736"),
        ("x-b3-spanid", "00F067AA0BA902B7"),
        ("x-b3-sampled", "1"),
    ]);
    let sc = extract(&h).unwrap();
    assert_eq!(
        sc.trace_id().to_string(),
        "0000000000000000a3ce929d0e0e4736"
    );
    assert_eq!(sc.span_id().to_string(), SPAN);
    assert!(sc.is_sampled());
    let h = headers(&[
        ("x-b3-traceid", "a3ce929d0e0e4736"),
        ("x-b3-spanid", SPAN),
        ("x-b3-flags", "1"),
    ]);
    assert!(extract(&h).unwrap().is_sampled());
}

#[test]
fn malformed_context_is_ignored() {
    for h in [
        headers(&[("traceparent", "00-zz-yy-01")]),
        headers(&[("b3", "nothex-e457b5a2e4d86bd1-1")]),
        headers(&[
            ("x-b3-traceid", "00000000000000000000000000000000"),
            ("x-b3-spanid", SPAN),
        ]),
        headers(&[("x-b3-traceid", TRACE)]),
    ] {
        assert!(extract(&h).is_none(), "{h:?}");
    }
}

#[test]
fn untraced_span_keeps_the_callers_trace_id_and_leaves_headers_alone() {
    let h = headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-01"))]);
    let span = RequestSpan::untraced(extract(&h), SpanKind::Server);
    assert_eq!(span.trace_id().as_deref(), Some(TRACE));
    assert_eq!(span.span_id(), None);
    let mut out = HeaderMap::new();
    span.inject(&mut out);
    assert!(out.is_empty());
}

#[test]
fn splits_host_and_port() {
    assert_eq!(split_host_port("orders:8080"), ("orders", Some(8080)));
    assert_eq!(split_host_port("orders"), ("orders", None));
    assert_eq!(split_host_port("[::1]:80"), ("::1", Some(80)));
    assert_eq!(split_host_port("::1"), ("::1", None));
}
