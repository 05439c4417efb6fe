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

/// The SDK's propagator, which `extract_w3c` and `inject` replace on the request path.
mod sdk {
    use super::*;
    use opentelemetry::Context;
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    struct Get<'a>(&'a HeaderMap);
    impl Extractor for Get<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(HeaderName::as_str).collect()
        }
    }

    struct Set<'a>(&'a mut HeaderMap);
    impl Injector for Set<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(key.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                self.0.insert(name, value);
            }
        }
    }

    pub(super) fn extract(h: &HeaderMap) -> Option<SpanContext> {
        let cx = TraceContextPropagator::new().extract(&Get(h));
        let sc = cx.span().span_context().clone();
        sc.is_valid().then_some(sc)
    }

    pub(super) fn inject(sc: &SpanContext, h: &mut HeaderMap) {
        let cx = Context::new().with_remote_span_context(sc.clone());
        TraceContextPropagator::new().inject_context(&cx, &mut Set(h));
    }
}

#[test]
fn w3c_context_is_read_exactly_as_the_sdk_reads_it() {
    let trace = TRACE;
    let corpus = [
        format!("00-{trace}-{SPAN}-01"),
        format!("00-{trace}-{SPAN}-00"),
        format!("00-{trace}-{SPAN}-03"),
        format!("00-{trace}-{SPAN}-ff"),
        format!("  00-{trace}-{SPAN}-01  "),
        format!("00-{trace}-{SPAN}-01-"),
        format!("00-{trace}-{SPAN}-01-extra"),
        format!("01-{trace}-{SPAN}-01-extra"),
        format!("fe-{trace}-{SPAN}-01"),
        format!("ff-{trace}-{SPAN}-01"),
        format!("+0-{trace}-{SPAN}-01"),
        format!("0-{trace}-{SPAN}-01"),
        format!("00-{}-{SPAN}-01", trace.to_uppercase()),
        format!("00-{trace}-{}-01", SPAN.to_uppercase()),
        format!("00-{trace}-{SPAN}-0A"),
        format!("00-42-{SPAN}-01"),
        format!("00-+42-{SPAN}-01"),
        format!("00-{trace}-7-01"),
        format!("00-00000000000000000000000000000000-{SPAN}-01"),
        format!("00-{trace}-0000000000000000-01"),
        format!("00-{trace}0-{SPAN}-01"),
        format!("00-{trace}-{SPAN}"),
        format!("00-{trace}-{SPAN}-1ff"),
        format!("00--{trace}-{SPAN}-01"),
        format!("00-{trace}--{SPAN}-01"),
        "garbage".to_owned(),
        String::new(),
    ];
    let states = [
        None,
        Some("vendor=x"),
        Some("a=1,b=2"),
        Some("not a state"),
        Some(""),
    ];
    for tp in &corpus {
        for ts in states {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(tp) {
                h.insert("traceparent", v);
            }
            if let Some(ts) = ts {
                h.insert("tracestate", HeaderValue::from_str(ts).unwrap());
            }
            let ours = extract_w3c(&h);
            let theirs = sdk::extract(&h);
            assert_eq!(ours, theirs, "traceparent {tp:?}, tracestate {ts:?}");
        }
    }
}

/// Values near the fixed layout the fast reader takes (a valid one with a few bytes changed,
/// cut or lengthened, over hex digits of both cases, dashes, signs and blanks) are read by
/// `extract_w3c` exactly as the SDK reads them, and the fast reader takes only values the
/// general rules read alike.
mod near_layout {
    use super::*;
    use proptest::prelude::*;

    const ALPHABET: &[u8] = b"0123456789abcdefABCDEF-+ gx\t";

    fn value() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<u128>(),
            any::<u64>(),
            any::<u8>(),
            proptest::collection::vec((0usize..58, 0..ALPHABET.len()), 0..4),
            prop_oneof![Just(0i8), -2i8..=2],
        )
            .prop_map(|(trace, span, flags, edits, resize)| {
                let mut v = format!("00-{trace:032x}-{span:016x}-{flags:02x}").into_bytes();
                for (at, c) in edits {
                    if at < v.len() {
                        v[at] = ALPHABET[c];
                    }
                }
                match resize {
                    r if r < 0 => v.truncate(v.len() - r.unsigned_abs() as usize),
                    r => v.extend(std::iter::repeat_n(b'0', r as usize)),
                }
                v
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4_000))]

        #[test]
        fn read_as_the_sdk_reads_them(v in value()) {
            let Ok(value) = HeaderValue::from_bytes(&v) else {
                return Ok(());
            };
            let mut h = HeaderMap::new();
            h.insert("traceparent", value.clone());
            prop_assert_eq!(extract_w3c(&h), sdk::extract(&h), "{:?}", value);
            if let Some(fast) = version_00(value.as_bytes()) {
                let general = value.to_str().ok().and_then(|s| traceparent_fields(s.trim()));
                prop_assert_eq!(Some(fast), general, "{:?}", value);
            }
        }
    }
}

#[test]
fn trace_context_is_written_exactly_as_the_sdk_writes_it() {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    // Ratio 1 samples every new trace, ratio 0 none: the SDK's AlwaysOn and AlwaysOff.
    for ratio in [1.0, 0.0] {
        let provider = SdkTracerProvider::builder()
            .with_sampler(Tracer::sdk_sampler())
            .build();
        let tracer = Tracer::new(provider.tracer("test"), ratio);
        for ts in ["", "vendor=x", "a=1,b=2"] {
            for flags in [TraceFlags::default(), TraceFlags::SAMPLED] {
                let parent = SpanContext::new(
                    TraceId::from_hex(TRACE).unwrap(),
                    SpanId::from_hex(SPAN).unwrap(),
                    flags,
                    true,
                    ts.parse().unwrap(),
                );
                for parent in [Some(parent), None] {
                    let span = RequestSpan::start(
                        &tracer,
                        SpanKind::Client,
                        parent.clone(),
                        &SpanAttrs::default(),
                    );
                    let mut ours = HeaderMap::new();
                    ours.insert("tracestate", HeaderValue::from_static("caller=1"));
                    let mut theirs = ours.clone();
                    span.inject(&mut ours);
                    sdk::inject(span.context(), &mut theirs);
                    // Where the SDK sends an empty trace state, none is sent, and the
                    // caller's is not left beside the new `traceparent`.
                    if theirs.get("tracestate").is_some_and(HeaderValue::is_empty) {
                        theirs.remove("tracestate");
                    }
                    assert_eq!(ours, theirs, "{flags:?} {ts:?} {parent:?}");
                    let sent = span.context().trace_state().header();
                    assert_eq!(
                        ours.get("tracestate").map(HeaderValue::as_bytes),
                        (!sent.is_empty()).then_some(sent.as_bytes()),
                    );
                    // Never indexed by HPACK: a new value on every request.
                    assert!(ours["traceparent"].is_sensitive());
                    let ids = span.ids_of_record();
                    let text = |id: Option<&str>| id.map(str::to_owned);
                    assert_eq!(
                        text(ids.trace.as_ref().map(HexId::as_str)),
                        Some(span.context().trace_id().to_string())
                    );
                    assert_eq!(
                        text(ids.span.as_ref().map(HexId::as_str)),
                        Some(span.context().span_id().to_string())
                    );
                    assert_eq!(
                        text(ids.parent.as_ref().map(HexId::as_str)),
                        parent.map(|p| p.span_id().to_string())
                    );
                }
            }
        }
    }
}

/// Random 128-bit trace IDs from the SDK's generator, with the edges of the ratio rule.
fn trace_ids() -> Vec<TraceId> {
    use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
    let ids = RandomIdGenerator::default();
    let mut out: Vec<TraceId> = (0..20_000).map(|_| ids.new_trace_id()).collect();
    for low in [0u64, 1, 2, u64::MAX, u64::MAX - 1, 1 << 63, (1 << 63) - 1] {
        let mut bytes = [0xab; 16];
        bytes[8..].copy_from_slice(&low.to_be_bytes());
        out.push(TraceId::from_bytes(bytes));
    }
    out
}

const RATIOS: [f64; 9] = [-1.0, 0.0, 1e-9, 0.01, 0.25, 0.5, 0.999, 1.0, 2.0];

#[test]
fn a_new_trace_is_sampled_exactly_when_the_sdks_ratio_sampler_samples_it() {
    use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample as _};
    for ratio in RATIOS {
        let sdk = Sampler::TraceIdRatioBased(ratio);
        let ids = trace_ids();
        let mut sampled = 0usize;
        for id in &ids {
            let theirs = sdk.should_sample(None, *id, "request", &SpanKind::Server, &[], &[]);
            let ours = samples_new_trace(ratio, *id);
            assert_eq!(
                ours,
                theirs.decision == SamplingDecision::RecordAndSample,
                "ratio {ratio}, trace {id}"
            );
            sampled += usize::from(ours);
        }
        // The rule samples about `ratio` of random traces (a check on the test's own IDs).
        #[allow(clippy::cast_precision_loss)]
        let share = sampled as f64 / ids.len() as f64;
        assert!(
            (share - ratio.clamp(0.0, 1.0)).abs() < 0.02,
            "ratio {ratio}: {share}"
        );
    }
}

#[test]
fn spans_are_sampled_as_the_sdks_parent_based_ratio_sampler_samples_them() {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
    for ratio in RATIOS {
        // How Picket's tracer was built before it made the decision itself.
        let sdk_provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                ratio,
            ))))
            .build();
        let sdk = sdk_provider.tracer("before");
        let provider = SdkTracerProvider::builder()
            .with_sampler(Tracer::sdk_sampler())
            .build();
        let tracer = Tracer::new(provider.tracer("test"), ratio);
        for ts in ["", "vendor=x"] {
            for flags in [TraceFlags::default(), TraceFlags::SAMPLED] {
                for id in trace_ids().into_iter().rev().take(200) {
                    let parent = SpanContext::new(
                        id,
                        SpanId::from_hex(SPAN).unwrap(),
                        flags,
                        true,
                        ts.parse().unwrap(),
                    );
                    let cx = Context::new().with_remote_span_context(parent.clone());
                    let theirs = sdk.span_builder("request").start_with_context(&sdk, &cx);
                    let ours = RequestSpan::start(
                        &tracer,
                        SpanKind::Server,
                        Some(parent.clone()),
                        &SpanAttrs::default(),
                    );
                    let (a, b) = (ours.context(), theirs.span_context());
                    assert_eq!(
                        ours.is_recording(),
                        theirs.is_recording(),
                        "{ratio} {parent:?}"
                    );
                    assert_eq!(a.trace_id(), b.trace_id());
                    assert_eq!(a.trace_flags(), b.trace_flags());
                    assert_eq!(a.trace_state(), b.trace_state());
                    assert!(a.is_valid() && !a.is_remote());
                    assert_ne!(a.span_id(), parent.span_id(), "a span ID of its own");
                    let mut h = HeaderMap::new();
                    ours.inject(&mut h);
                    assert!(h.contains_key("traceparent"), "sent on, sampled or not");
                    assert_eq!(
                        ours.ids_of_record().span.map(|s| s.as_str().to_owned()),
                        Some(a.span_id().to_string())
                    );
                }
            }
        }
        // A new trace: sampled by the ratio rule on its own trace ID.
        for _ in 0..500 {
            let ours = RequestSpan::start(&tracer, SpanKind::Client, None, &SpanAttrs::default());
            let c = ours.context();
            assert!(c.is_valid() && !c.is_remote());
            assert_eq!(ours.is_recording(), c.is_sampled());
            if ratio >= 1.0 {
                assert!(ours.is_recording());
            }
            if ratio <= 0.0 {
                assert!(!ours.is_recording());
            }
            if !ours.is_recording() {
                assert!(!samples_new_trace(ratio, c.trace_id()));
            }
            assert!(ours.ids_of_record().span.is_some());
        }
    }
}

#[test]
fn ids_are_the_sdks_hex() {
    for s in ["00f067aa0ba902b7", "0000000000000001", "ffffffffffffffff"] {
        let id = SpanId::from_hex(s).unwrap();
        assert_eq!(HexId::span(id).as_str(), id.to_string());
    }
    for t in [TRACE, "0000000000000000a3ce929d0e0e4736"] {
        let id = TraceId::from_hex(t).unwrap();
        assert_eq!(HexId::trace(id).as_str(), id.to_string());
    }
}

#[test]
fn a_tunnel_end_names_how_the_splice_ended() {
    use std::io::{Error, ErrorKind};
    let of = |r: std::io::Result<()>| TunnelEnd::of(&r).as_str();
    assert_eq!(of(Ok(())), "closed");
    assert_eq!(
        of(Err(Error::new(ErrorKind::TimedOut, "idle timeout"))),
        "idle_timeout"
    );
    assert_eq!(of(Err(ErrorKind::ConnectionReset.into())), "error");
    assert_eq!(TunnelEnd::EarlyData.as_str(), "early_data");
    assert_eq!(TunnelEnd::NotHandedOver.as_str(), "not_handed_over");
}
