//! A sidecar's `telemetry:` section written for a test, and readers of what telemetry leaves
//! outside OTLP: admin `/alerts`, the flow log, and detector baselines.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use http::StatusCode;
use picket_proxy::telemetry::detect::BaselineEdge;
use picket_proxy::telemetry::{Alert, LineType};
use serde_json::Value;

use crate::proxy::TestProxy;
use crate::wait::eventually;

/// The `telemetry:` section of one sidecar, for [`crate::Sidecar::yaml`]. Only what is set is
/// written, so an empty section keeps every default (OTLP and flow log off, detectors on).
#[derive(Debug, Default, Clone)]
pub struct TelemetryYaml {
    otlp_endpoint: Option<String>,
    otlp_timeout: Option<String>,
    flow_log: Option<PathBuf>,
    detectors: Vec<(String, String)>,
}

/// `value` as a YAML double-quoted scalar (a JSON string is one).
fn quoted(value: &str) -> String {
    serde_json::Value::String(value.to_owned()).to_string()
}

impl TelemetryYaml {
    /// An empty section.
    pub fn new() -> Self {
        Self::default()
    }

    /// Exports spans and alert log records over OTLP/gRPC to `endpoint` (`http://IP:PORT`).
    pub fn otlp(mut self, endpoint: &str) -> Self {
        self.otlp_endpoint = Some(endpoint.to_owned());
        self
    }

    /// The deadline of one export call, such as `1s`.
    pub fn otlp_timeout(mut self, timeout: &str) -> Self {
        self.otlp_timeout = Some(timeout.to_owned());
        self
    }

    /// Writes flow records and alert lines to the file `path`.
    pub fn flow_log(mut self, path: &Path) -> Self {
        self.flow_log = Some(path.to_owned());
        self
    }

    /// Sets `telemetry.detectors.<key>` to `value`, written as a YAML string (durations,
    /// paths) or, for numbers and booleans, as is.
    pub fn detector(mut self, key: &str, value: &str) -> Self {
        let plain = value.parse::<f64>().is_ok() || value == "true" || value == "false";
        let value = if plain {
            value.to_owned()
        } else {
            quoted(value)
        };
        self.detectors.push((key.to_owned(), value));
        self
    }

    /// Detectors that know `baseline` from the start and learn nothing more: every edge
    /// outside it is new at once.
    pub fn baseline(self, baseline: &Path) -> Self {
        self.detector("learning_window", "0s")
            .detector("baseline_file", &baseline.display().to_string())
    }

    /// The section as YAML.
    pub fn to_yaml(&self) -> String {
        let mut y = String::from("telemetry:\n");
        if let Some(endpoint) = &self.otlp_endpoint {
            // Every request traced: the tests follow each request's spans.
            let _ = writeln!(
                y,
                "  otlp:\n    endpoint: {}\n    sampling_ratio: 1.0",
                quoted(endpoint)
            );
            if let Some(t) = &self.otlp_timeout {
                let _ = writeln!(y, "    timeout: {}", quoted(t));
            }
        }
        if let Some(path) = &self.flow_log {
            let _ = writeln!(
                y,
                "  flow_log:\n    path: {}",
                quoted(&path.display().to_string())
            );
        }
        if !self.detectors.is_empty() {
            y.push_str("  detectors:\n");
            for (k, v) in &self.detectors {
                let _ = writeln!(y, "    {k}: {v}");
            }
        }
        if y == "telemetry:\n" {
            y.push_str("  {}\n");
        }
        y
    }
}

/// The alerts a sidecar lists at admin `/alerts`, oldest first.
pub async fn alerts(proxy: &TestProxy) -> Result<Vec<Alert>> {
    let (status, body) = proxy.admin_get("/alerts").await?;
    ensure!(
        status == StatusCode::OK,
        "/alerts answered {status}: {body}"
    );
    #[derive(serde::Deserialize)]
    struct Page {
        alerts: Vec<Alert>,
    }
    let page: Page =
        serde_json::from_str(&body).with_context(|| format!("/alerts is not a list: {body}"))?;
    Ok(page.alerts)
}

/// The lines of a flow log whose `"type"` is `line_type`, parsed. A missing file has none.
pub fn log_lines(path: &Path, line_type: LineType) -> Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let want = serde_json::to_value(line_type)?;
    let mut out = Vec::new();
    // The writer may be in the middle of a line: only complete lines count.
    let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
    for (i, line) in complete.lines().enumerate() {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON: {line}", path.display(), i + 1))?;
        if v["type"] == want {
            out.push(v);
        }
    }
    Ok(out)
}

/// Waits until the flow log at `path` holds exactly `n` flow records (the writer drains a
/// queue on its own thread) and returns them. More than `n` fails at once.
pub async fn wait_for_flows(path: &Path, n: usize, timeout: Duration) -> Result<Vec<Value>> {
    eventually(timeout, async || {
        let flows = log_lines(path, LineType::Flow)?;
        match flows.len() {
            k if k == n => Ok(Ok(flows)),
            k if k > n => Ok(Err(anyhow::anyhow!(
                "{} holds {k} flow records, expected {n}: {flows:#?}",
                path.display()
            ))),
            k => bail!("{} holds {k} of {n} flow records", path.display()),
        }
    })
    .await?
}

/// Writes a detector baseline (`"type":"edge"` lines, the format of `picket analyze
/// --baseline-file`): each edge is (source SPIFFE ID, destination SPIFFE ID, port, route).
pub fn write_baseline(path: &Path, edges: &[(&str, &str, u16, &str)]) -> Result<()> {
    let mut text = String::new();
    for (source, destination, port, route) in edges {
        let edge = BaselineEdge {
            line_type: LineType::Edge,
            source: (*source).to_owned(),
            destination: (*destination).to_owned(),
            port: Some(*port),
            route: (*route).to_owned(),
        };
        text.push_str(&serde_json::to_string(&edge)?);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_what_is_set_and_quotes_strings() {
        assert_eq!(TelemetryYaml::new().to_yaml(), "telemetry:\n  {}\n");
        let y = TelemetryYaml::new()
            .otlp("http://127.0.0.1:4317")
            .otlp_timeout("1s")
            .flow_log(Path::new("/tmp/f.jsonl"))
            .detector("fanout_threshold", "10")
            .detector("window", "60s")
            .to_yaml();
        assert_eq!(
            y,
            "telemetry:\n  otlp:\n    endpoint: \"http://127.0.0.1:4317\"\n    sampling_ratio: 1.0\n    \
             timeout: \"1s\"\n  \
             flow_log:\n    path: \"/tmp/f.jsonl\"\n  detectors:\n    fanout_threshold: 10\n    \
             window: \"60s\"\n"
        );
    }
}
