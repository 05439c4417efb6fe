//! The `telemetry:` section of the sidecar YAML: parsed into [`RawTelemetry`] (unknown fields
//! rejected), validated into a [`TelemetryConfig`] by [`validate`]. Absent parts are off, except
//! the detectors, which are on with the defaults below.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::validate::{Validator, Zero};
use crate::yaml::{Spanned, YamlError};

/// The fraction of new traces sampled when `telemetry.otlp.sampling_ratio` is not set: 1 %,
/// what production meshes usually run (Istio's default); what each ratio costs per request is
/// in `bench/report.md` ("Telemetry cost per request"). A caller's sampled decision is still
/// kept, so a trace the application starts sampled is recorded whole.
pub const DEFAULT_SAMPLING_RATIO: f64 = 0.01;

/// Where the OTLP exporter sends spans and alert log records.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// gRPC endpoint, `http://host:port` (plaintext; run a node-local collector for TLS).
    pub endpoint: String,
    /// Extra gRPC metadata sent with every export (for example an API key).
    pub headers: Vec<(String, String)>,
    /// Fraction of new traces sampled, 0.0 to 1.0 ([`DEFAULT_SAMPLING_RATIO`] when not
    /// set). A sampled or unsampled parent decides for its children
    /// (`ParentBased(TraceIdRatioBased)`).
    pub sampling_ratio: f64,
    /// Extra resource attributes; `service.name` and `picket.identity` come from the identity.
    pub resource: Vec<(String, String)>,
    /// Deadline of one export call.
    pub timeout: Duration,
}

/// Where flow records (and alerts) are written as JSON lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowLogTarget {
    /// The process' standard output.
    Stdout,
    /// A file, rotated by size to `path.1` .. `path.N`.
    File(PathBuf),
}

/// The flow log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowLogConfig {
    /// Where lines go.
    pub target: FlowLogTarget,
    /// A file is rotated before it would grow past this many bytes.
    pub max_bytes: u64,
    /// How many rotated files are kept (`path.1` is the newest).
    pub max_files: u32,
}

/// How an alert sink writes alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlertFormat {
    /// Falco's JSON output fields (`output`, `priority`, `rule`, `time`, `output_fields`,
    /// `source`, `tags`, `hostname`).
    #[default]
    Falco,
    /// Picket's alert line, as at admin `/alerts`.
    Picket,
}

/// An HTTP webhook that receives each alert as one JSON POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// The URL as written.
    pub url: String,
    /// `host:port` to connect to.
    pub authority: String,
    /// Path and query to POST to.
    pub path: String,
    /// The format of the body.
    pub format: AlertFormat,
    /// Alerts waiting to be posted at most; past it they are dropped and counted.
    pub queue: usize,
    /// Further attempts after a failed one.
    pub retries: u32,
    /// Deadline of one attempt.
    pub timeout: Duration,
}

/// The alert sinks besides the flow log, OTLP and `/alerts`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AlertSinkConfig {
    /// A JSON-lines stream of alerts only: standard output or a rotated file.
    pub stream: Option<FlowLogConfig>,
    /// The stream's format.
    pub format: AlertFormat,
    /// An HTTP webhook.
    pub webhook: Option<WebhookConfig>,
}

/// What to do when an identity is presented from an address that is not its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForeignAddressAction {
    /// Raise a high-severity `foreign_address` alert; the connection goes on.
    #[default]
    Alert,
    /// Raise the alert and close the connection before any request is read.
    Deny,
}

/// Which addresses belong to which identities (a static map, for VMs), and what a
/// connection from another address gets: outside the map, or from a pod the controller
/// announces for another identity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AddressBinding {
    /// Each bound identity with the networks its workloads connect from.
    pub identities: Vec<(picket_ca::SpiffeId, Vec<picket_common::Cidr>)>,
    /// What a foreign address gets.
    pub action: ForeignAddressAction,
}

/// How a peer's address relates to its identity's binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The identity has no binding.
    Unknown,
    /// The address is one of the identity's.
    Own,
    /// The identity is bound and the address is not one of its own.
    Foreign,
}

impl AddressBinding {
    /// How `ip` relates to `identity`'s binding.
    pub fn check(&self, identity: &str, ip: std::net::IpAddr) -> Bound {
        match self
            .identities
            .iter()
            .find(|(id, _)| id.to_string() == identity)
        {
            None => Bound::Unknown,
            Some((_, nets)) if nets.iter().any(|n| n.contains(ip)) => Bound::Own,
            Some(_) => Bound::Foreign,
        }
    }
}

/// Lateral-movement detectors. Every threshold counts events from one source inside `window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectorConfig {
    /// Whether the detectors run at all.
    pub enabled: bool,
    /// Edges seen during this time after start are learned, not reported.
    pub learning_window: Duration,
    /// Edges known in advance: a flow JSONL or an edges file written by `picket analyze`.
    pub baseline_file: Option<PathBuf>,
    /// Where the learned state is kept across restarts (written atomically every
    /// `state_interval` and at shutdown, read at start).
    pub state_file: Option<PathBuf>,
    /// How often the state file is written.
    pub state_interval: Duration,
    /// The sliding window of the scan and burst detectors.
    pub window: Duration,
    /// Distinct ports, failing routes or destinations from one source that make a scan.
    pub fanout_threshold: usize,
    /// Denied requests or connections from one source that make a burst.
    pub deny_burst_threshold: usize,
    /// 404 answers to one source from one destination that make a burst.
    pub not_found_burst_threshold: usize,
    /// Authentication failures (401, and 403 sent by the application rather than by policy)
    /// of one source on one route that make a burst.
    pub auth_failure_burst_threshold: usize,
    /// Answers of a status class a route never answered (after it learned), within `window`,
    /// that raise `status_class_new`: a floor, so one odd answer does not alert.
    pub status_class_threshold: usize,
    /// A burst counter alerts at this many times the rate it learned for its key (per
    /// window), or at its threshold above, whichever is higher: the thresholds are floors.
    pub baseline_factor: u32,
    /// Path prefixes (matched at a segment boundary; a trailing `*` matches any continuation)
    /// whose requests are probes.
    pub sensitive_paths: Vec<String>,
    /// Cloud metadata hosts and addresses an outbound call must never reach.
    pub metadata_addresses: Vec<String>,
    /// One alert per kind, source and destination in this period; repeats are counted into
    /// the next one.
    pub rate_limit: Duration,
    /// Cap of every detector table. Tables of learned state (identities, edges, routes,
    /// addresses) refuse new keys when full and keep what they learned; the windows and
    /// counters evict their oldest entry (`docs/telemetry.md`, "Full tables").
    pub max_tracked: usize,
    /// The addresses each identity may connect from, when known.
    pub address_binding: AddressBinding,
}

/// Everything the `telemetry:` section configures.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// A TCP connection still open gets an interim flow record this often (IPFIX's active
    /// timeout), besides its open and final records.
    pub active_timeout: Duration,
    /// Trace and alert-log export; `None` turns both off.
    pub otlp: Option<OtlpConfig>,
    /// Flow records; `None` turns them off.
    pub flow_log: Option<FlowLogConfig>,
    /// Detectors.
    pub detectors: DetectorConfig,
    /// Alert sinks of their own.
    pub alerts: AlertSinkConfig,
}

/// Default active timeout of long-lived flows.
pub const DEFAULT_ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            active_timeout: DEFAULT_ACTIVE_TIMEOUT,
            otlp: None,
            flow_log: None,
            detectors: DetectorConfig::default(),
            alerts: AlertSinkConfig::default(),
        }
    }
}

#[cfg(test)]
impl TelemetryConfig {
    /// The defaults with a flow log written to `path` (1 MiB a file, two files).
    pub(crate) fn flow_log_file(path: &std::path::Path) -> Self {
        Self {
            flow_log: Some(FlowLogConfig {
                target: FlowLogTarget::File(path.to_path_buf()),
                max_bytes: 1 << 20,
                max_files: 2,
            }),
            ..Self::default()
        }
    }
}

/// Default sensitive path prefixes.
pub const DEFAULT_SENSITIVE_PATHS: &[&str] = &[
    "/admin",
    "/.env*",
    "/.git",
    "/.aws",
    "/.ssh",
    "/actuator",
    "/debug",
    "/server-status",
    "/wp-admin",
    "/wp-login.php",
    "/console",
    "/phpmyadmin",
    "/manager/html",
    "/jmx-console",
    "/config.json",
];

/// Default cloud metadata addresses (AWS, AWS IPv6, GCP, Azure share the first; ECS task
/// metadata; Alibaba Cloud).
pub const DEFAULT_METADATA_ADDRESSES: &[&str] = &[
    "169.254.169.254",
    "fd00:ec2::254",
    "metadata.google.internal",
    "169.254.170.2",
    "100.100.100.200",
];

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            learning_window: Duration::from_secs(600),
            baseline_file: None,
            state_file: None,
            state_interval: Duration::from_secs(30),
            window: Duration::from_secs(60),
            fanout_threshold: 10,
            deny_burst_threshold: 10,
            not_found_burst_threshold: 20,
            auth_failure_burst_threshold: 10,
            status_class_threshold: 3,
            baseline_factor: 3,
            sensitive_paths: DEFAULT_SENSITIVE_PATHS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            metadata_addresses: DEFAULT_METADATA_ADDRESSES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            rate_limit: Duration::from_secs(300),
            max_tracked: 10_000,
            address_binding: AddressBinding::default(),
        }
    }
}

/// The `telemetry:` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    #[serde(default)]
    active_timeout: Option<Spanned<String>>,
    #[serde(default)]
    otlp: Option<RawOtlp>,
    #[serde(default)]
    flow_log: Option<RawFlowLog>,
    #[serde(default)]
    detectors: Option<RawDetectors>,
    #[serde(default)]
    alerts: Option<RawAlerts>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    format: Option<Spanned<String>>,
    #[serde(default)]
    max_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    max_files: Option<Spanned<u32>>,
    #[serde(default)]
    webhook: Option<RawWebhook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: Spanned<String>,
    #[serde(default)]
    format: Option<Spanned<String>>,
    #[serde(default)]
    queue: Option<Spanned<usize>>,
    #[serde(default)]
    retries: Option<Spanned<u32>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOtlp {
    endpoint: Spanned<String>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    sampling_ratio: Option<Spanned<f64>>,
    #[serde(default)]
    resource: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlowLog {
    path: Spanned<String>,
    #[serde(default)]
    max_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    max_files: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDetectors {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    learning_window: Option<Spanned<String>>,
    #[serde(default)]
    baseline_file: Option<PathBuf>,
    #[serde(default)]
    state_file: Option<PathBuf>,
    #[serde(default)]
    state_interval: Option<Spanned<String>>,
    #[serde(default)]
    window: Option<Spanned<String>>,
    #[serde(default)]
    fanout_threshold: Option<Spanned<usize>>,
    #[serde(default)]
    deny_burst_threshold: Option<Spanned<usize>>,
    #[serde(default)]
    not_found_burst_threshold: Option<Spanned<usize>>,
    #[serde(default)]
    auth_failure_burst_threshold: Option<Spanned<usize>>,
    #[serde(default)]
    status_class_threshold: Option<Spanned<usize>>,
    #[serde(default)]
    baseline_factor: Option<Spanned<usize>>,
    #[serde(default)]
    sensitive_paths: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    metadata_addresses: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    rate_limit: Option<Spanned<String>>,
    #[serde(default)]
    max_tracked: Option<Spanned<usize>>,
    #[serde(default)]
    address_binding: Option<RawBinding>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBinding {
    // Optional: in cluster mode the controller knows the owners, and `action` alone applies.
    #[serde(default)]
    identities: BTreeMap<String, Vec<Spanned<String>>>,
    #[serde(default)]
    action: Option<Spanned<String>>,
}

/// Default flow log size before rotation: 100 MiB.
pub const DEFAULT_FLOW_LOG_MAX_BYTES: u64 = 100 * 1024 * 1024;
/// Default number of rotated flow log files kept.
pub const DEFAULT_FLOW_LOG_MAX_FILES: u32 = 5;
/// Default OTLP export deadline.
pub const DEFAULT_OTLP_TIMEOUT: Duration = Duration::from_secs(10);

/// Validates the `telemetry:` section; `source_name` (the file) prefixes error locations.
/// An absent section is `RawTelemetry::default()`.
pub fn validate(raw: RawTelemetry, source_name: &str) -> Result<TelemetryConfig, YamlError> {
    Validator { source_name }.telemetry(raw)
}

/// The `telemetry:` section's part of the one configuration validator.
impl Validator<'_> {
    /// The `telemetry:` section.
    pub(crate) fn telemetry(&self, raw: RawTelemetry) -> Result<TelemetryConfig, YamlError> {
        Ok(TelemetryConfig {
            active_timeout: self.duration(
                raw.active_timeout.as_ref(),
                DEFAULT_ACTIVE_TIMEOUT,
                "telemetry.active_timeout",
                Zero::Refused,
            )?,
            otlp: raw.otlp.map(|o| self.otlp(o)).transpose()?,
            flow_log: raw.flow_log.map(|f| self.flow_log(f)).transpose()?,
            detectors: match raw.detectors {
                Some(d) => self.detectors(d)?,
                None => DetectorConfig::default(),
            },
            alerts: raw
                .alerts
                .map(|a| self.alerts(a))
                .transpose()?
                .unwrap_or_default(),
        })
    }

    fn otlp(&self, raw: RawOtlp) -> Result<OtlpConfig, YamlError> {
        let endpoint = raw.endpoint.value.trim_end_matches('/').to_owned();
        let uri: http::Uri = endpoint.parse().map_err(|_| {
            self.err(
                &raw.endpoint,
                format!("telemetry.otlp.endpoint: {endpoint:?} is not a URL"),
            )
        })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(self.err(
                &raw.endpoint,
                "telemetry.otlp.endpoint: write http://HOST:PORT (OTLP gRPC in plaintext; \
                 for TLS, send to a node-local collector)",
            ));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(self.err(
                &raw.endpoint,
                "telemetry.otlp.endpoint: a gRPC endpoint has no path",
            ));
        }
        let mut headers = Vec::with_capacity(raw.headers.len());
        for (k, v) in raw.headers {
            let name = k.to_ascii_lowercase();
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.ends_with("-bin") {
                return Err(self.err(
                    &v,
                    format!("telemetry.otlp.headers: {k:?} is not a valid ASCII metadata name"),
                ));
            }
            if http::HeaderValue::from_str(&v.value).is_err() {
                return Err(self.err(
                    &v,
                    format!("telemetry.otlp.headers.{k}: the value must be visible ASCII"),
                ));
            }
            headers.push((name, v.value));
        }
        let sampling_ratio = match raw.sampling_ratio {
            Some(r) if !(0.0..=1.0).contains(&r.value) => {
                return Err(self.err(
                    &r,
                    "telemetry.otlp.sampling_ratio: must be between 0.0 and 1.0",
                ));
            }
            Some(r) => r.value,
            None => DEFAULT_SAMPLING_RATIO,
        };
        let mut resource = Vec::with_capacity(raw.resource.len());
        for (k, v) in raw.resource {
            if k.is_empty() || k == super::trace::IDENTITY_ATTRIBUTE {
                return Err(self.err(
                    &v,
                    format!("telemetry.otlp.resource: {k:?} cannot be set here"),
                ));
            }
            resource.push((k, v.value));
        }
        Ok(OtlpConfig {
            endpoint,
            headers,
            sampling_ratio,
            resource,
            timeout: self.duration(
                raw.timeout.as_ref(),
                DEFAULT_OTLP_TIMEOUT,
                "telemetry.otlp.timeout",
                Zero::Refused,
            )?,
        })
    }

    fn flow_log(&self, raw: RawFlowLog) -> Result<FlowLogConfig, YamlError> {
        let target = match raw.path.value.as_str() {
            "stdout" | "-" => FlowLogTarget::Stdout,
            "" => {
                return Err(self.err(
                    &raw.path,
                    "telemetry.flow_log.path: write stdout or a file path",
                ));
            }
            p => FlowLogTarget::File(PathBuf::from(p)),
        };
        let max_bytes = match raw.max_bytes {
            Some(b) if b.value < 4096 => {
                return Err(self.err(&b, "telemetry.flow_log.max_bytes: must be at least 4096"));
            }
            Some(b) => b.value,
            None => DEFAULT_FLOW_LOG_MAX_BYTES,
        };
        let max_files = match raw.max_files {
            Some(n) if n.value == 0 || n.value > 1000 => {
                return Err(self.err(
                    &n,
                    "telemetry.flow_log.max_files: must be between 1 and 1000",
                ));
            }
            Some(n) => n.value,
            None => DEFAULT_FLOW_LOG_MAX_FILES,
        };
        Ok(FlowLogConfig {
            target,
            max_bytes,
            max_files,
        })
    }

    fn strings(
        &self,
        list: Option<Vec<Spanned<String>>>,
        field: &str,
        check: impl Fn(&str) -> Result<(), &'static str>,
    ) -> Result<Option<Vec<String>>, YamlError> {
        let Some(list) = list else { return Ok(None) };
        let mut out = Vec::with_capacity(list.len());
        for item in list {
            check(&item.value).map_err(|why| self.err(&item, format!("{field}: {why}")))?;
            out.push(item.value);
        }
        Ok(Some(out))
    }

    /// `telemetry.detectors`, every setting checked with its place. Longer than 80 lines on
    /// purpose: it is one struct literal, one checked field after another, each a call to the
    /// shared checks; splitting it would only scatter the list of settings.
    fn detectors(&self, raw: RawDetectors) -> Result<DetectorConfig, YamlError> {
        let d = DetectorConfig::default();
        let learning_window_default = if raw.baseline_file.is_some() {
            Duration::ZERO
        } else {
            d.learning_window
        };
        Ok(DetectorConfig {
            enabled: raw.enabled.unwrap_or(d.enabled),
            learning_window: self.duration(
                raw.learning_window.as_ref(),
                learning_window_default,
                "telemetry.detectors.learning_window",
                Zero::Allowed,
            )?,
            baseline_file: raw.baseline_file,
            state_file: raw.state_file,
            state_interval: self.duration(
                raw.state_interval.as_ref(),
                d.state_interval,
                "telemetry.detectors.state_interval",
                Zero::Refused,
            )?,
            window: self.duration(
                raw.window.as_ref(),
                d.window,
                "telemetry.detectors.window",
                Zero::Refused,
            )?,
            fanout_threshold: self.positive(
                raw.fanout_threshold.as_ref(),
                d.fanout_threshold,
                "telemetry.detectors.fanout_threshold",
            )?,
            deny_burst_threshold: self.positive(
                raw.deny_burst_threshold.as_ref(),
                d.deny_burst_threshold,
                "telemetry.detectors.deny_burst_threshold",
            )?,
            not_found_burst_threshold: self.positive(
                raw.not_found_burst_threshold.as_ref(),
                d.not_found_burst_threshold,
                "telemetry.detectors.not_found_burst_threshold",
            )?,
            auth_failure_burst_threshold: self.positive(
                raw.auth_failure_burst_threshold.as_ref(),
                d.auth_failure_burst_threshold,
                "telemetry.detectors.auth_failure_burst_threshold",
            )?,
            status_class_threshold: self.positive(
                raw.status_class_threshold.as_ref(),
                d.status_class_threshold,
                "telemetry.detectors.status_class_threshold",
            )?,
            baseline_factor: self
                .baseline_factor(raw.baseline_factor.as_ref())?
                .unwrap_or(d.baseline_factor),
            sensitive_paths: self
                .sensitive_paths(raw.sensitive_paths)?
                .unwrap_or(d.sensitive_paths),
            metadata_addresses: self
                .metadata_addresses(raw.metadata_addresses)?
                .unwrap_or(d.metadata_addresses),
            rate_limit: self.duration(
                raw.rate_limit.as_ref(),
                d.rate_limit,
                "telemetry.detectors.rate_limit",
                Zero::Allowed,
            )?,
            max_tracked: self.positive(
                raw.max_tracked.as_ref(),
                d.max_tracked,
                "telemetry.detectors.max_tracked",
            )?,
            address_binding: raw
                .address_binding
                .map(|b| self.binding(b))
                .transpose()?
                .unwrap_or_default(),
        })
    }

    /// `baseline_factor`: how many times its learned rate a burst counter may reach, 1 to 1000.
    fn baseline_factor(&self, v: Option<&Spanned<usize>>) -> Result<Option<u32>, YamlError> {
        match v {
            Some(f) if f.value == 0 || f.value > 1000 => Err(self.err(
                f,
                "telemetry.detectors.baseline_factor: must be between 1 and 1000",
            )),
            Some(f) => Ok(u32::try_from(f.value).ok()),
            None => Ok(None),
        }
    }

    /// `sensitive_paths`: path prefixes, each starting with `/`.
    fn sensitive_paths(
        &self,
        list: Option<Vec<Spanned<String>>>,
    ) -> Result<Option<Vec<String>>, YamlError> {
        self.strings(list, "telemetry.detectors.sensitive_paths", |p| {
            if p.starts_with('/') && p.len() > 1 {
                Ok(())
            } else {
                Err("write a path prefix starting with '/'")
            }
        })
    }

    /// `metadata_addresses`: IP addresses or host names, host names compared in lower case.
    fn metadata_addresses(
        &self,
        list: Option<Vec<Spanned<String>>>,
    ) -> Result<Option<Vec<String>>, YamlError> {
        let list = self.strings(list, "telemetry.detectors.metadata_addresses", |a| {
            if a.is_empty() || a.contains(['/', ' ']) {
                Err("write an IP address or a host name")
            } else {
                Ok(())
            }
        })?;
        Ok(list.map(|v| v.into_iter().map(|a| a.to_ascii_lowercase()).collect()))
    }

    fn format(&self, v: Option<&Spanned<String>>, field: &str) -> Result<AlertFormat, YamlError> {
        match v {
            None => Ok(AlertFormat::Falco),
            Some(f) if f.value == "falco" => Ok(AlertFormat::Falco),
            Some(f) if f.value == "picket" => Ok(AlertFormat::Picket),
            Some(f) => Err(self.err(
                f,
                format!("{field}: write falco or picket, not {:?}", f.value),
            )),
        }
    }

    fn alerts(&self, raw: RawAlerts) -> Result<AlertSinkConfig, YamlError> {
        let stream = match raw.path {
            None => None,
            Some(path) => Some(self.flow_log(RawFlowLog {
                path,
                max_bytes: raw.max_bytes,
                max_files: raw.max_files,
            })?),
        };
        let webhook = match raw.webhook {
            None => None,
            Some(w) => {
                const FIELD: &str = "telemetry.alerts.webhook.url";
                let uri: http::Uri = w
                    .url
                    .value
                    .parse()
                    .map_err(|_| self.err(&w.url, format!("{FIELD}: not a URL")))?;
                if uri.scheme_str() != Some("http") {
                    return Err(self.err(
                        &w.url,
                        format!("{FIELD}: write http://HOST:PORT/PATH (plaintext; send to a node-local forwarder such as Falcosidekick for TLS)"),
                    ));
                }
                let Some(authority) = uri.authority() else {
                    return Err(self.err(&w.url, format!("{FIELD}: no host")));
                };
                let authority = if authority.port().is_some() {
                    authority.to_string()
                } else {
                    format!("{authority}:80")
                };
                let queue = match w.queue {
                    Some(q) if q.value == 0 || q.value > 1_000_000 => {
                        return Err(self.err(
                            &q,
                            "telemetry.alerts.webhook.queue: must be between 1 and 1000000",
                        ));
                    }
                    Some(q) => q.value,
                    None => 1024,
                };
                let retries = match w.retries {
                    Some(r) if r.value > 10 => {
                        return Err(self.err(&r, "telemetry.alerts.webhook.retries: at most 10"));
                    }
                    Some(r) => r.value,
                    None => 3,
                };
                Some(WebhookConfig {
                    path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
                    url: w.url.value.clone(),
                    authority,
                    format: self.format(w.format.as_ref(), "telemetry.alerts.webhook.format")?,
                    queue,
                    retries,
                    timeout: self.duration(
                        w.timeout.as_ref(),
                        Duration::from_secs(5),
                        "telemetry.alerts.webhook.timeout",
                        Zero::Refused,
                    )?,
                })
            }
        };
        Ok(AlertSinkConfig {
            stream,
            format: self.format(raw.format.as_ref(), "telemetry.alerts.format")?,
            webhook,
        })
    }

    fn binding(&self, raw: RawBinding) -> Result<AddressBinding, YamlError> {
        const FIELD: &str = "telemetry.detectors.address_binding";
        let action = match &raw.action {
            None => ForeignAddressAction::Alert,
            Some(a) if a.value == "alert" => ForeignAddressAction::Alert,
            Some(a) if a.value == "deny" => ForeignAddressAction::Deny,
            Some(a) => {
                return Err(self.err(
                    a,
                    format!("{FIELD}.action: write alert or deny, not {:?}", a.value),
                ));
            }
        };
        let mut identities = Vec::with_capacity(raw.identities.len());
        for (id, nets) in raw.identities {
            let Some(first) = nets.first() else {
                return Err(YamlError {
                    source_name: self.source_name.to_owned(),
                    line: None,
                    column: None,
                    message: format!("{FIELD}.identities.{id}: list at least one network"),
                });
            };
            let spiffe: picket_ca::SpiffeId = id
                .parse()
                .map_err(|e| self.err(first, format!("{FIELD}.identities: {id:?}: {e}")))?;
            let mut cidrs = Vec::with_capacity(nets.len());
            for n in &nets {
                cidrs.push(
                    picket_common::Cidr::parse(&n.value)
                        .map_err(|e| self.err(n, format!("{FIELD}.identities.{id}: {e}")))?,
                );
            }
            identities.push((spiffe, cidrs));
        }
        Ok(AddressBinding { identities, action })
    }
}

#[cfg(test)]
mod tests;
