#![allow(clippy::unwrap_used)]
use super::*;

fn sample() -> FlowRecord<'static> {
    FlowRecord {
        source_identity: Some("spiffe://cluster.local/ns/shop/sa/frontend".into()),
        source_address: Some("127.0.0.1:5000".parse().unwrap()),
        destination_identity: Some("spiffe://cluster.local/ns/shop/sa/orders".into()),
        destination_port: Some(8080),
        kx: Some("x25519mlkem768".into()),
        method: Some("GET".into()),
        path: Some("/api/orders/42".into()),
        status: Some(200),
        verdict: Some(Verdict::Allow),
        policy: Some("shop/orders-read".into()),
        rule: Some(0),
        dry_run: vec!["deny:shop/strict".into()],
        bytes_out: 12,
        duration_ms: 1.5,
        ..FlowRecord::new(
            OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            Direction::Inbound,
            FlowProtocol::Http1,
        )
    }
}

#[test]
fn serializes_type_first_and_skips_absent_fields() {
    let line = serde_json::to_string(&sample()).unwrap();
    assert!(
        line.starts_with(
            r#"{"type":"flow","ts":"2023-11-14T22:13:20Z","direction":"inbound","protocol":"http1""#
        ),
        "{line}"
    );
    assert!(!line.contains("grpc_status"), "{line}");
    assert!(!line.contains("null"), "{line}");
}

#[test]
fn round_trips_and_borrows_plain_strings() {
    let line = serde_json::to_string(&sample()).unwrap();
    let back: FlowRecord<'_> = serde_json::from_str(&line).unwrap();
    assert_eq!(back, sample());
    assert!(matches!(back.path, Some(Cow::Borrowed(_))));
    assert!(matches!(back.source_identity, Some(Cow::Borrowed(_))));
    // Escaped text cannot be borrowed and is copied.
    let escaped = line.replace("/api/orders/42", "/api/\\\"q\\\"");
    let back: FlowRecord<'_> = serde_json::from_str(&escaped).unwrap();
    assert_eq!(back.path.as_deref(), Some("/api/\"q\""));
    assert!(matches!(back.path, Some(Cow::Owned(_))));
}

#[test]
fn route_templates_hide_identifiers() {
    for (path, template) in [
        ("/", "/"),
        ("/api/orders", "/api/orders"),
        ("/api/orders/1234/items?x=1", "/api/orders/{id}/items"),
        ("/u/123e4567-e89b-12d3-a456-426614174000", "/u/{id}"),
        ("/blob/9f86d081884c7d659a2feaa0c55ad015", "/blob/{id}"),
        ("/static/app.js", "/static/app.js"),
        ("/v2/catalog", "/v2/catalog"),
        ("/p#frag?x", "/p"),
        ("/p?x#frag", "/p"),
        ("/caf\u{e9}/\u{1f600}?q=\u{e9}", "/caf\u{e9}/\u{1f600}"),
        ("?only", ""),
    ] {
        assert_eq!(route_template(path), template, "{path}");
    }
    let r = sample();
    assert_eq!(r.route(), "GET /api/orders/{id}");
}

#[test]
fn the_written_line_is_serde_jsons() {
    let mut line = Vec::new();
    sample().write_json(&mut line).unwrap();
    assert_eq!(line, serde_json::to_vec(&sample()).unwrap());
    let back: FlowRecord<'_> = serde_json::from_slice(&line).unwrap();
    assert_eq!(back, sample());
}

#[test]
fn a_timestamp_without_an_rfc3339_form_is_refused_as_serde_refuses_it() {
    let mut r = sample();
    r.ts = OffsetDateTime::from_unix_timestamp(1_700_000_000)
        .unwrap()
        .to_offset(time::UtcOffset::from_hms(1, 0, 30).unwrap());
    assert!(serde_json::to_vec(&r).is_err());
    let mut line = b"kept".to_vec();
    let err = r.write_json(&mut line).unwrap_err();
    assert!(err.to_string().contains("RFC 3339"), "{err}");
    assert_eq!(
        line, b"kept",
        "nothing of a refused record is left in the buffer"
    );
}

mod written_as_serde {
    use proptest::prelude::*;
    use time::UtcOffset;

    use super::*;

    /// Text with what JSON escapes (quotes, backslashes, every kind of control byte) and what
    /// it does not (DEL, non-ASCII, U+2028 and U+2029, a BOM, astral characters), mixed with
    /// plain letters so that the 16-byte blocks of the clean-string check see both.
    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                4 => prop::char::range('a', 'z'),
                2 => any::<char>(),
                3 => prop::sample::select(vec![
                    '"', '\\', '\0', '\u{1}', '\u{8}', '\t', '\n', '\u{b}', '\u{c}', '\r',
                    '\u{1f}', ' ', '\u{7f}', '/', 'é', '\u{2028}', '\u{2029}', '\u{feff}',
                    '\u{1f600}',
                ]),
            ],
            0..48,
        )
        .prop_map(|c| c.into_iter().collect())
    }

    fn cow(s: Option<String>) -> Option<Cow<'static, str>> {
        s.map(Cow::Owned)
    }

    fn timestamp() -> impl Strategy<Value = OffsetDateTime> {
        // From a few days before year 0 (no RFC 3339 form) to the end of year 9999.
        let secs = -62_167_219_200i64 - 5 * 86_400..=253_402_300_799i64;
        let nanos = prop_oneof![
            Just(0u32),
            0..1_000_000_000u32,
            (0..1_000u32).prop_map(|n| n * 1_000_000),
            (0..10u32).prop_map(|n| n * 100_000_000),
        ];
        let offset = prop_oneof![
            3 => Just((0i8, 0i8, 0i8)),
            2 => (-25i8..=25, -59i8..=59).prop_map(|(h, m)| (h, m, 0)),
            1 => (-25i8..=25, -59i8..=59, -59i8..=59),
        ];
        (secs, nanos, offset).prop_filter_map("representable", |(s, n, (h, m, sec))| {
            OffsetDateTime::from_unix_timestamp(s)
                .ok()?
                .replace_nanosecond(n)
                .ok()?
                .checked_to_offset(UtcOffset::from_hms(h, m, sec).ok()?)
        })
    }

    fn duration() -> impl Strategy<Value = f64> {
        prop_oneof![
            4 => (0u64..100_000_000).prop_map(|n| n as f64 / 1000.0),
            2 => any::<f64>(),
            1 => prop::sample::select(vec![
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                -0.0,
                5e-324,
                f64::MAX,
                1e21,
                1e-7,
            ]),
        ]
    }

    fn verdict() -> impl Strategy<Value = Option<Verdict>> {
        prop::option::of(prop::sample::select(vec![Verdict::Allow, Verdict::Deny]))
    }

    fn record() -> impl Strategy<Value = FlowRecord<'static>> {
        let texts = prop::collection::vec(prop::option::of(text()), 15);
        let addrs = prop::collection::vec(prop::option::of(any::<SocketAddr>()), 3);
        let numbers = (
            any::<Option<u16>>(),
            any::<Option<u16>>(),
            any::<Option<u32>>(),
            any::<Option<u32>>(),
            any::<u64>(),
            any::<u64>(),
            duration(),
        );
        let kinds = (
            prop::sample::select(vec![
                LineType::Flow,
                LineType::Alert,
                LineType::Edge,
                LineType::Rate,
            ]),
            any::<bool>(),
            prop::sample::select(vec![
                FlowProtocol::Http1,
                FlowProtocol::H2,
                FlowProtocol::Grpc,
                FlowProtocol::Tcp,
                FlowProtocol::WebSocket,
            ]),
            prop::option::of(prop::sample::select(vec![
                FlowPhase::Open,
                FlowPhase::Interim,
                FlowPhase::End,
            ])),
            (any::<bool>(), any::<bool>(), any::<bool>()),
            (verdict(), verdict()),
        );
        let dry_run = prop::collection::vec(text(), 0..3);
        (timestamp(), texts, addrs, numbers, kinds, dry_run).prop_map(
            |(ts, t, a, n, k, dry_run)| {
                let mut t = t.into_iter();
                let mut next = || cow(t.next().flatten());
                let (
                    line_type,
                    inbound,
                    protocol,
                    phase,
                    (ech, sidecar_answer, peer_sidecar_answer),
                    (v, wv),
                ) = k;
                let direction = if inbound {
                    Direction::Inbound
                } else {
                    Direction::Outbound
                };
                // Every field by name, without `..`: a field added to the record does not
                // compile until it is generated here (and written by `write_json`) too.
                FlowRecord {
                    line_type,
                    ts,
                    direction,
                    protocol,
                    phase,
                    source_identity: next(),
                    source_address: a[0],
                    destination_identity: next(),
                    expected_identity: next(),
                    destination_address: a[1],
                    destination_port: n.0,
                    endpoint: a[2],
                    kx: next(),
                    method: next(),
                    path: next(),
                    host: next(),
                    sni: next(),
                    ech,
                    status: n.1,
                    grpc_status: n.2,
                    verdict: v,
                    policy: next(),
                    rule: n.3,
                    reason: next(),
                    dry_run: dry_run.into_iter().map(Cow::Owned).collect(),
                    would_verdict: wv,
                    bytes_in: n.4,
                    bytes_out: n.5,
                    duration_ms: n.6,
                    trace_id: next(),
                    span_id: next(),
                    parent_span_id: next(),
                    request_id: next(),
                    request_principal: next(),
                    token_error: next(),
                    sidecar_answer,
                    peer_sidecar_answer,
                }
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// The hand-written line is serde_json's, byte for byte, and refused where serde
        /// refuses; so it parses back as serde's line does.
        #[test]
        fn every_record(record in record()) {
            let serde = serde_json::to_vec(&record);
            let mut mine = b"before".to_vec();
            let written = record.write_json(&mut mine);
            match serde {
                Ok(serde) => {
                    prop_assert!(written.is_ok(), "{written:?}");
                    prop_assert_eq!(&mine[..6], b"before");
                    prop_assert_eq!(
                        String::from_utf8_lossy(&mine[6..]),
                        String::from_utf8_lossy(&serde)
                    );
                    if record.duration_ms.is_finite() {
                        let back: FlowRecord<'_> = serde_json::from_slice(&mine[6..]).unwrap();
                        let again: FlowRecord<'_> = serde_json::from_slice(&serde).unwrap();
                        prop_assert_eq!(back, again);
                    }
                }
                Err(_) => {
                    prop_assert!(written.is_err());
                    prop_assert_eq!(&mine[..], b"before");
                }
            }
        }
    }
}
