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
    ] {
        assert_eq!(route_template(path), template, "{path}");
    }
    let r = sample();
    assert_eq!(r.route(), "GET /api/orders/{id}");
}
