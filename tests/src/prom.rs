//! Prometheus expositions read by the reference parsers of the Python `prometheus_client`
//! (`scripts/install-telemetry-test-deps` installs it), as a scraper reads them: by the
//! `Content-Type` of the answer, the OpenMetrics parser for `application/openmetrics-text`
//! and the classic text-format parser for `text/plain`. Both check the syntax; the OpenMetrics
//! one also checks names against types, histogram buckets and the closing `# EOF`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use http::{StatusCode, Version, header};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::clients::{body_text, get};
use crate::wait::COMMAND_TIMEOUT;

/// Which parser reads an exposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `prometheus_client.openmetrics.parser`.
    OpenMetrics,
    /// `prometheus_client.parser`, the Prometheus text format 0.0.4.
    Text,
}

impl Format {
    /// The parser a scraper picks for a `Content-Type`.
    pub fn of_content_type(content_type: &str) -> Result<Self> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/openmetrics-text" => Ok(Self::OpenMetrics),
            "text/plain" => Ok(Self::Text),
            _ => bail!("{content_type:?} is not a Prometheus exposition format"),
        }
    }

    fn module(self) -> &'static str {
        match self {
            Self::OpenMetrics => "prometheus_client.openmetrics.parser",
            Self::Text => "prometheus_client.parser",
        }
    }
}

/// One sample as the parser read it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Sample {
    /// The sample's name (`picket_requests_total`, `..._bucket`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// One metric family as the parser read it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Family {
    /// The family name (for a counter, without `_total`).
    pub name: String,
    /// `counter`, `gauge`, `histogram`, ... (`unknown`/`untyped` when the type was not
    /// understood).
    #[serde(rename = "type")]
    pub kind: String,
    /// The `# HELP` text.
    pub help: String,
    /// Every sample of the family.
    pub samples: Vec<Sample>,
}

/// A parsed exposition.
#[derive(Debug, Clone)]
pub struct Exposition {
    /// The `Content-Type` it was served with.
    pub content_type: String,
    /// The raw text.
    pub text: String,
    /// The families, in exposition order.
    pub families: Vec<Family>,
}

impl Exposition {
    /// The family called `name`.
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// `(labels, value)` of every sample called `sample`, in exposition order.
    pub fn samples(&self, sample: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == sample)
            .map(|s| (s.labels.clone(), s.value))
            .collect()
    }

    /// The value of the sample called `sample` whose labels are exactly `labels`.
    pub fn value(&self, sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples(sample)
            .into_iter()
            .find(|(l, _)| *l == want)
            .map(|(_, v)| v)
    }
}

const PARSE: &str = r#"
import importlib, json, sys
parser = importlib.import_module(sys.argv[1])
out = []
for f in parser.text_string_to_metric_families(sys.stdin.read()):
    out.append({
        "name": f.name,
        "type": f.type,
        "help": f.documentation,
        "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples],
    })
print(json.dumps(out, allow_nan=False))
"#;

/// Parses `text` with the parser for `format`; a syntax error fails.
pub async fn parse(text: &str, format: Format) -> Result<Vec<Family>> {
    let mut child = Command::new("python3")
        .args(["-c", PARSE, format.module()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run python3 (scripts/install-telemetry-test-deps installs it)")?;
    let mut stdin = child.stdin.take().context("python3 has no stdin")?;
    stdin.write_all(text.as_bytes()).await?;
    drop(stdin);
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .context("the Prometheus parser did not finish")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'prometheus_client") {
        bail!("prometheus_client is not installed (run scripts/install-telemetry-test-deps)");
    }
    if !out.status.success() {
        bail!(
            "{} refused the exposition: {stderr}\n{text}",
            format.module()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "unexpected parser output: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `GET /metrics` on the admin listener at `admin`, parsed with the parser its `Content-Type`
/// calls for.
pub async fn scrape(admin: SocketAddr) -> Result<Exposition> {
    let resp = get(admin, Version::HTTP_11, "localhost", "/metrics").await?;
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = body_text(resp).await?;
    if status != StatusCode::OK {
        bail!("/metrics answered {status}: {text}");
    }
    let families = parse(&text, Format::of_content_type(&content_type)?).await?;
    Ok(Exposition {
        content_type,
        text,
        families,
    })
}
