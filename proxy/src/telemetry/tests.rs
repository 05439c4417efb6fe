#![allow(clippy::unwrap_used)]
use super::*;

fn identity() -> SpiffeId {
    "spiffe://cluster.local/ns/shop/sa/orders".parse().unwrap()
}

fn probe(path: &str) -> FlowRecord<'_> {
    FlowRecord {
        source_identity: Some("spiffe://cluster.local/ns/shop/sa/frontend".into()),
        source_address: Some("127.0.0.1:5000".parse().unwrap()),
        destination_identity: Some("spiffe://cluster.local/ns/shop/sa/orders".into()),
        method: Some("GET".into()),
        path: Some(path.into()),
        status: Some(404),
        ..FlowRecord::new(
            OffsetDateTime::now_utc(),
            Direction::Inbound,
            FlowProtocol::Http1,
        )
    }
}

#[tokio::test]
async fn flows_and_alerts_reach_the_flow_log_metrics_and_the_recent_ring() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.jsonl");
    let cfg = TelemetryConfig::flow_log_file(&path);
    let mut registry = Registry::default();
    let t = Telemetry::new(&cfg, &identity(), &mut registry).unwrap();
    assert!(!t.is_tracing());
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let span = t.server_span(&headers, &SpanAttrs::default());
    t.record_request(span, probe("/admin"));
    t.handshake_failed("10.1.2.3:999".parse().unwrap(), "not_tls");
    t.handshake_failed("10.1.2.3:999".parse().unwrap(), "closed");
    assert!(t.flush(Duration::from_secs(10)).await);

    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let flow: FlowRecord<'_> = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(flow.path.as_deref(), Some("/admin"));
    assert_eq!(
        flow.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        "the caller's trace ID is kept with tracing off"
    );
    assert!(lines[1].starts_with(r#"{"type":"alert","kind":"sensitive_path""#));
    assert!(lines[2].starts_with(r#"{"type":"alert","kind":"unauthenticated""#));

    let recent = t.recent_alerts();
    let kinds: Vec<AlertKind> = recent.iter().map(|a| a.kind).collect();
    assert_eq!(
        kinds,
        [AlertKind::SensitivePath, AlertKind::Unauthenticated]
    );
    let json: serde_json::Value = serde_json::from_str(&t.recent_alerts_json()).unwrap();
    assert_eq!(json["alerts"].as_array().unwrap().len(), 2);

    let mut scrape = String::new();
    prometheus_client::encoding::text::encode(&mut scrape, &registry).unwrap();
    assert!(
        scrape.contains("picket_alerts_total{kind=\"sensitive_path\",severity=\"medium\"} 1"),
        "{scrape}"
    );
    assert!(
        scrape.contains("# TYPE picket_telemetry_dropped counter"),
        "{scrape}"
    );
    assert!(t.shutdown(Duration::from_secs(10)).await);
}

#[tokio::test]
async fn disabled_telemetry_does_nothing() {
    let t = Telemetry::disabled();
    let span = t.server_span(&HeaderMap::new(), &SpanAttrs::default());
    assert_eq!(span.trace_id(), None);
    t.record_request(span, probe("/admin"));
    t.handshake_failed("127.0.0.1:1".parse().unwrap(), "not_tls");
    assert_eq!(t.recent_alerts_json(), "{\"alerts\":[]}");
    assert!(t.flush(Duration::from_millis(1)).await);
}

#[test]
fn otlp_without_a_runtime_is_an_error_not_a_panic() {
    let cfg = TelemetryConfig {
        otlp: Some(OtlpConfig {
            endpoint: "http://127.0.0.1:4317".into(),
            headers: Vec::new(),
            sampling_ratio: 1.0,
            resource: Vec::new(),
            timeout: Duration::from_secs(1),
        }),
        ..TelemetryConfig::default()
    };
    let e = Telemetry::new(&cfg, &identity(), &mut Registry::default()).unwrap_err();
    assert!(matches!(e, TelemetryError::NoRuntime), "{e}");
}
