//! Alert sinks of their own: a JSON-lines alert stream (a file or standard output) and an
//! HTTP webhook, each in Picket's alert format or in Falco's JSON output format, so that
//! Falcosidekick and SIEM pipelines that read Falco take Picket alerts unchanged.
//!
//! Nothing here waits on the request path: the stream has the flow log's bounded queue and
//! writer thread, the webhook a bounded queue drained by one task that posts each alert with
//! a few retries. What does not fit, and what a sink refuses after its retries, is dropped
//! and counted in `picket_telemetry_dropped_total{sink="alert_log"|"alert_webhook"}`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::mpsc;

use super::alert::{Alert, Severity};
use super::config::{AlertFormat, AlertSinkConfig, WebhookConfig};
use super::flow_log::FlowLog;
use super::metrics::{DropReason, Sink, TelemetryMetrics};

/// One alert in Falco's JSON output format (`json_output: true`): the rule is
/// `picket_<kind>`, the output the alert's summary, the priority Falco's name for the
/// severity, and every other field of the alert under `output_fields` by a dotted
/// `picket.*` name.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct FalcoAlert {
    /// One sentence.
    pub output: String,
    /// `Notice`, `Warning`, `Error` or `Critical`.
    pub priority: String,
    /// `picket_<kind>`.
    pub rule: String,
    /// When the alert was raised, RFC 3339 with nanoseconds.
    pub time: String,
    /// The alert's fields.
    pub output_fields: BTreeMap<String, serde_json::Value>,
    /// Always `picket`.
    pub source: String,
    /// `picket`, `lateral_movement`, the kind and the severity.
    pub tags: Vec<String>,
    /// The host the sidecar runs on.
    pub hostname: String,
}

/// Falco's priority for a severity.
pub fn falco_priority(severity: Severity) -> &'static str {
    match severity {
        Severity::Low => "Notice",
        Severity::Medium => "Warning",
        Severity::High => "Error",
        Severity::Critical => "Critical",
    }
}

impl FalcoAlert {
    /// `alert` raised by the sidecar of `identity` on `hostname`.
    pub fn of(alert: &Alert, identity: &str, hostname: &str) -> Self {
        let mut f: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        f.insert("picket.kind".into(), alert.kind.as_str().into());
        f.insert("picket.severity".into(), alert.severity.as_str().into());
        f.insert("picket.identity".into(), identity.into());
        if let Some(s) = &alert.source_identity {
            f.insert("picket.source_identity".into(), s.as_str().into());
        }
        if let Some(a) = alert.source_address {
            f.insert("picket.source_address".into(), a.to_string().into());
        }
        if let Some(d) = &alert.destination {
            f.insert("picket.destination".into(), d.as_str().into());
        }
        for (k, v) in &alert.evidence {
            f.insert(format!("picket.evidence.{k}"), (*v).into());
        }
        f.insert("picket.window_secs".into(), alert.window_secs.into());
        f.insert(
            "picket.first_seen".into(),
            rfc3339_nanos(alert.first_seen).into(),
        );
        Self {
            output: alert.summary.clone(),
            priority: falco_priority(alert.severity).to_owned(),
            rule: format!("picket_{}", alert.kind.as_str()),
            time: rfc3339_nanos(alert.last_seen),
            output_fields: f,
            source: "picket".to_owned(),
            tags: vec![
                "picket".to_owned(),
                "lateral_movement".to_owned(),
                alert.kind.as_str().to_owned(),
                alert.severity.as_str().to_owned(),
            ],
            hostname: hostname.to_owned(),
        }
    }
}

fn rfc3339_nanos(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

/// The host name, as the kernel has it (`/proc/sys/kernel/hostname`), or `unknown`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The running alert sinks.
pub struct AlertSinks {
    identity: String,
    hostname: String,
    stream: Option<(FlowLog, AlertFormat)>,
    webhook: Option<(mpsc::Sender<Bytes>, AlertFormat)>,
    metrics: TelemetryMetrics,
}

impl std::fmt::Debug for AlertSinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertSinks")
            .field("stream", &self.stream.is_some())
            .field("webhook", &self.webhook.is_some())
            .finish_non_exhaustive()
    }
}

/// Why the alert sinks could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The alert file could not be opened.
    #[error("cannot open the alert stream: {0}")]
    Stream(std::io::Error),
    /// The webhook needs a tokio runtime and none is running.
    #[error("the alert webhook must be started inside a tokio runtime")]
    NoRuntime,
}

impl AlertSinks {
    /// Starts what `cfg` configures for the workload `identity`.
    pub fn start(
        cfg: &AlertSinkConfig,
        identity: &str,
        metrics: &TelemetryMetrics,
    ) -> Result<Self, SinkError> {
        let stream = cfg
            .stream
            .as_ref()
            .map(|s| {
                FlowLog::start_for(s, metrics.clone(), Sink::AlertLog).map(|l| (l, cfg.format))
            })
            .transpose()
            .map_err(SinkError::Stream)?;
        if stream.is_some() {
            metrics.declare_sink(Sink::AlertLog);
        }
        let webhook = match &cfg.webhook {
            None => None,
            Some(w) => {
                let handle =
                    tokio::runtime::Handle::try_current().map_err(|_| SinkError::NoRuntime)?;
                let (tx, rx) = mpsc::channel(w.queue);
                handle.spawn(post_loop(rx, w.clone(), metrics.clone()));
                metrics.declare_sink(Sink::AlertWebhook);
                Some((tx, w.format))
            }
        };
        Ok(Self {
            identity: identity.to_owned(),
            hostname: hostname(),
            stream,
            webhook,
            metrics: metrics.clone(),
        })
    }

    fn encode(&self, alert: &Alert, format: AlertFormat) -> Option<Vec<u8>> {
        match format {
            AlertFormat::Picket => serde_json::to_vec(alert).ok(),
            AlertFormat::Falco => {
                serde_json::to_vec(&FalcoAlert::of(alert, &self.identity, &self.hostname)).ok()
            }
        }
    }

    /// Hands `alert` to every sink; never waits.
    pub fn send(&self, alert: &Alert) {
        if let Some((stream, format)) = &self.stream {
            match format {
                AlertFormat::Picket => {
                    stream.write(alert);
                }
                AlertFormat::Falco => {
                    stream.write(&FalcoAlert::of(alert, &self.identity, &self.hostname));
                }
            }
        }
        if let Some((tx, format)) = &self.webhook
            && let Some(body) = self.encode(alert, *format)
            && tx.try_send(Bytes::from(body)).is_err()
        {
            self.metrics
                .dropped(Sink::AlertWebhook, DropReason::QueueFull, 1);
        }
    }

    /// Waits until the stream's queued lines are written, at most `deadline`.
    pub async fn flush(&self, deadline: Duration) -> bool {
        match &self.stream {
            Some((s, _)) => s.flush(deadline).await,
            None => true,
        }
    }
}

/// Posts each queued alert to the webhook: up to `retries` more attempts with exponential
/// backoff after a failure (no answer within `timeout`, or a status other than 2xx), then
/// the alert is dropped and counted.
async fn post_loop(mut rx: mpsc::Receiver<Bytes>, cfg: WebhookConfig, metrics: TelemetryMetrics) {
    let mut failing = false;
    while let Some(body) = rx.recv().await {
        let mut backoff = picket_common::backoff::Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(5),
        );
        let mut last_error = String::new();
        let mut delivered = false;
        for attempt in 0..=cfg.retries {
            if attempt > 0 {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            match tokio::time::timeout(cfg.timeout, post(&cfg, body.clone())).await {
                Ok(Ok(())) => {
                    delivered = true;
                    break;
                }
                Ok(Err(e)) => last_error = e,
                Err(_) => last_error = format!("no answer within {:?}", cfg.timeout),
            }
        }
        if delivered {
            if failing {
                tracing::info!(url = %cfg.url, "alert webhook delivers again");
            }
            failing = false;
        } else {
            metrics.dropped(Sink::AlertWebhook, DropReason::SinkFailed, 1);
            if !failing {
                tracing::warn!(url = %cfg.url, error = %last_error, retries = cfg.retries, "alert webhook failed; alerts are dropped until it recovers");
            }
            failing = true;
        }
    }
}

async fn post(cfg: &WebhookConfig, body: Bytes) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(&cfg.authority)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::post(&cfg.path)
        .header(http::header::HOST, &cfg.authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    // Read the answer to its end so the connection closes cleanly.
    let _ = resp.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

#[cfg(test)]
mod tests;
