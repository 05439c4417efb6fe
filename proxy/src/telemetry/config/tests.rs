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
    sensitive_paths: [/secret]
    metadata_addresses: [Metadata.Example]
    rate_limit: 1m
    max_tracked: 100
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
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.message.contains(needle), "{text}: {e}");
        assert_eq!(e.line, Some(line), "{text}: {e}");
    }
}

#[test]
fn unknown_fields_are_refused() {
    let e = parse("telemetry: { flow_log: { path: stdout, colour: red } }").unwrap_err();
    assert!(e.to_string().contains("colour"), "{e}");
}
