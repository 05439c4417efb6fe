#![allow(clippy::unwrap_used)]
use super::*;
use crate::yaml;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    telemetry: RawTelemetry,
}

fn parse(text: &str) -> Result<TelemetryConfig, YamlError> {
    let doc: Doc = yaml::parse("s.yaml", text)?;
    validate(doc.telemetry, "s.yaml")
}

#[test]
fn absent_section_means_exports_off_and_detectors_on() {
    let c = parse("{}").unwrap();
    assert_eq!(c, TelemetryConfig::default());
    assert!(c.otlp.is_none() && c.flow_log.is_none());
    assert!(c.detectors.enabled);
    assert_eq!(c.detectors.window, Duration::from_secs(60));
}

#[test]
fn otlp_without_a_ratio_samples_one_percent_of_new_traces() {
    let c = parse("telemetry:\n  otlp: { endpoint: http://c:4317 }").unwrap();
    assert_eq!(c.otlp.unwrap().sampling_ratio, 0.01);
    assert_eq!(DEFAULT_SAMPLING_RATIO, 0.01);
}

#[test]
fn full_section_parses() {
    let c = parse(
        "telemetry:
  otlp:
    endpoint: http://127.0.0.1:4317/
    headers: { X-Api-Key: secret }
    sampling_ratio: 0.25
    resource: { deployment.environment: prod }
    timeout: 3s
  flow_log: { path: /var/log/flows.jsonl, max_bytes: 1048576, max_files: 3 }
  detectors:
    learning_window: 0s
    window: 30s
    fanout_threshold: 5
    auth_failure_burst_threshold: 7
    baseline_factor: 4
    sensitive_paths: [/secret]
    metadata_addresses: [Metadata.Example]
    rate_limit: 1m
    max_tracked: 100
  active_timeout: 10s
",
    )
    .unwrap();
    let o = c.otlp.unwrap();
    assert_eq!(o.endpoint, "http://127.0.0.1:4317");
    assert_eq!(o.headers, vec![("x-api-key".into(), "secret".into())]);
    assert_eq!(o.sampling_ratio, 0.25);
    assert_eq!(o.timeout, Duration::from_secs(3));
    let f = c.flow_log.unwrap();
    assert_eq!(f.target, FlowLogTarget::File("/var/log/flows.jsonl".into()));
    assert_eq!((f.max_bytes, f.max_files), (1_048_576, 3));
    assert_eq!(c.detectors.learning_window, Duration::ZERO);
    assert_eq!(c.detectors.sensitive_paths, vec!["/secret".to_owned()]);
    assert_eq!(
        c.detectors.metadata_addresses,
        vec!["metadata.example".to_owned()]
    );
    assert_eq!(c.detectors.max_tracked, 100);
    assert_eq!(c.active_timeout, Duration::from_secs(10));
    assert_eq!(c.detectors.auth_failure_burst_threshold, 7);
    assert_eq!(c.detectors.baseline_factor, 4);
}

#[test]
fn baseline_file_turns_learning_off_by_default() {
    let c = parse("telemetry: { detectors: { baseline_file: /b.jsonl } }").unwrap();
    assert_eq!(c.detectors.learning_window, Duration::ZERO);
    assert_eq!(c.detectors.baseline_file, Some(PathBuf::from("/b.jsonl")));
}

#[test]
fn invalid_values_name_the_field_and_line() {
    for (text, needle, line) in [
        (
            "telemetry:\n  otlp: { endpoint: https://c:4317 }",
            "otlp.endpoint",
            2,
        ),
        (
            "telemetry:\n  otlp:\n    endpoint: http://c:4317\n    sampling_ratio: 1.5",
            "sampling_ratio",
            4,
        ),
        (
            "telemetry:\n  flow_log: { path: stdout, max_files: 0 }",
            "max_files",
            2,
        ),
        (
            "telemetry:\n  detectors: { window: 0s }",
            "detectors.window",
            2,
        ),
        (
            "telemetry:\n  detectors:\n    sensitive_paths: [admin]",
            "sensitive_paths",
            3,
        ),
        (
            "telemetry:\n  detectors:\n    baseline_factor: 0",
            "baseline_factor",
            3,
        ),
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.message.contains(needle), "{text}: {e}");
        assert_eq!(e.line, Some(line), "{text}: {e}");
    }
}

#[test]
fn address_bindings_parse_and_check() {
    let c = parse(
        "telemetry:
  detectors:
    address_binding:
      action: deny
      identities:
        \"spiffe://cluster.local/ns/vm/sa/billing\": [10.1.0.0/16, \"fd00::/8\"]
",
    )
    .unwrap();
    let b = &c.detectors.address_binding;
    assert_eq!(b.action, ForeignAddressAction::Deny);
    let id = "spiffe://cluster.local/ns/vm/sa/billing";
    assert_eq!(b.check(id, "10.1.2.3".parse().unwrap()), Bound::Own);
    assert_eq!(b.check(id, "10.2.0.1".parse().unwrap()), Bound::Foreign);
    assert_eq!(
        b.check(
            "spiffe://cluster.local/ns/vm/sa/x",
            "10.2.0.1".parse().unwrap()
        ),
        Bound::Unknown
    );
    for (text, needle) in [
        ("action: block\n      identities: {}", "write alert or deny"),
        (
            "identities: { \"spiffe://cluster.local/ns/a/sa/b\": [10.0.0.1/8] }",
            "identities.spiffe",
        ),
        ("identities: { \"not-an-id\": [10.0.0.0/8] }", "not-an-id"),
        (
            "identities: { \"spiffe://cluster.local/ns/a/sa/b\": [] }",
            "at least one network",
        ),
    ] {
        let e = parse(&format!(
            "telemetry:\n  detectors:\n    address_binding:\n      {text}\n"
        ))
        .unwrap_err();
        assert!(e.message.contains(needle), "{text}: {e}");
    }
}

#[test]
fn alert_sinks_parse() {
    let c = parse(
        "telemetry:
  alerts:
    path: stdout
    webhook: { url: \"http://127.0.0.1:2801/\", retries: 2, queue: 10, format: picket }
",
    )
    .unwrap();
    assert_eq!(c.alerts.stream.unwrap().target, FlowLogTarget::Stdout);
    assert_eq!(c.alerts.format, AlertFormat::Falco);
    let w = c.alerts.webhook.unwrap();
    assert_eq!(
        (w.authority.as_str(), w.path.as_str()),
        ("127.0.0.1:2801", "/")
    );
    assert_eq!((w.retries, w.queue, w.format), (2, 10, AlertFormat::Picket));
    let e = parse("telemetry:\n  alerts:\n    webhook: { url: \"https://x/\" }").unwrap_err();
    assert!(e.message.contains("plaintext"), "{e}");
    let e = parse("telemetry:\n  alerts: { path: stdout, format: cef }").unwrap_err();
    assert!(e.message.contains("falco or picket"), "{e}");
}

#[test]
fn unknown_fields_are_refused() {
    let e = parse("telemetry: { flow_log: { path: stdout, colour: red } }").unwrap_err();
    assert!(e.to_string().contains("colour"), "{e}");
}
