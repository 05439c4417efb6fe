#![allow(clippy::unwrap_used)]
use super::*;
use crate::telemetry::alert::AlertKind;
use crate::telemetry::flow::LineType;

#[test]
fn falco_fields_carry_the_alert() {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
    let alert = Alert {
        line_type: LineType::Alert,
        kind: AlertKind::FanOut,
        severity: Severity::High,
        source_identity: Some("spiffe://cluster.local/ns/a/sa/b".into()),
        source_address: Some("10.0.0.1".parse().unwrap()),
        destination: None,
        evidence: BTreeMap::from([("distinct_destinations".to_owned(), 10)]),
        window_secs: 60,
        first_seen: t,
        last_seen: t,
        summary: "b reached 10 distinct destinations".into(),
    };
    let f = FalcoAlert::of(&alert, "spiffe://cluster.local/ns/a/sa/b", "node-1");
    let v: serde_json::Value = serde_json::to_value(&f).unwrap();
    assert_eq!(v["rule"], "picket_fan_out");
    assert_eq!(v["priority"], "Error");
    assert_eq!(v["time"], "2023-11-14T22:13:20.123456789Z");
    assert_eq!(v["source"], "picket");
    assert_eq!(v["hostname"], "node-1");
    assert_eq!(
        v["output_fields"]["picket.evidence.distinct_destinations"],
        10
    );
    assert_eq!(v["output_fields"]["picket.source_address"], "10.0.0.1");
    assert!(
        time::OffsetDateTime::parse(
            v["time"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok()
    );
}
