//! Telemetry and lateral-movement detection: request spans exported over OTLP, flow records
//! (JSON lines), in-sidecar detectors and their alerts.
//!
//! [`Telemetry`] is the one handle the data path holds. It is cheap to clone and, when built
//! with [`Telemetry::disabled`], every call returns at once. Nothing here blocks a request:
//! flow lines, spans and log records go into bounded queues drained by their own
//! thread or tasks, and whatever does not fit is dropped and counted.
//!
//! ```text
//! request --> server_span / client_span --> (forward) --> record_request(span, FlowRecord)
//!                                                            |-> detectors -> alerts
//!                                                            |     |-> span events, OTel logs,
//!                                                            |     |   flow log, tracing, metric,
//!                                                            |     |   recent ring (/alerts)
//!                                                            |-> span attributes, span end
//!                                                            |-> flow log line
//! ```
//!
//! This module must not depend on the proxy's listeners: the data path calls it, never the
//! other way round.

pub mod alert;
pub mod baseline;
pub mod config;
pub mod detect;
pub mod export;
pub mod flow;
pub mod flow_log;
pub mod metrics;
pub mod owners;
pub mod sink;
pub mod trace;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _};
use opentelemetry::trace::SpanKind;
use picket_ca::SpiffeId;
use prometheus_client::registry::Registry;
use time::OffsetDateTime;

pub use alert::{Alert, AlertKind, RecentAlerts, Severity};
pub use config::{
    DetectorConfig, FlowLogConfig, FlowLogTarget, OtlpConfig, RawTelemetry, TelemetryConfig,
    validate,
};
pub use detect::Detectors;
pub use flow::{
    FlowEvent, FlowPhase, FlowProtocol, FlowRecord, LineType, Verdict, content_length,
    fill_decision, grpc_status, protocol_of, route_template,
};
pub use flow_log::FlowLog;
pub use metrics::TelemetryMetrics;
pub use owners::{AddressOwners, Owner};
pub use trace::{
    ConnectionAttrs, Parent, RecordIds, RequestSpan, SpanAttrs, SpanOutcome, TunnelEnd,
};

use crate::direction::Direction;
use export::Otlp;

/// A request whose span has ended and whose detectors have run, with what is left to do:
/// its flow line and its alerts ([`Telemetry::request_record`]).
#[derive(Debug)]
pub struct Ended {
    ids: trace::RecordIds,
    alerts: Vec<Alert>,
    wants_record: bool,
}

impl Ended {
    /// Whether a flow log will write the request's record.
    pub fn wants_record(&self) -> bool {
        self.wants_record
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The flow log file could not be opened, or its writer thread not started.
    #[error("cannot open the flow log: {0}")]
    FlowLog(std::io::Error),
    /// The detector baseline file could not be read.
    #[error("cannot read the detector baseline: {0}")]
    Baseline(std::io::Error),
    /// The detector state file could not be read or is not a state file.
    #[error("cannot load the detector state {}: {reason} (remove the file to start learning afresh)", path.display())]
    State {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The OTLP exporter could not be built from the configuration.
    #[error("cannot set up the OTLP exporter: {0}")]
    Exporter(String),
    /// An alert sink could not start.
    #[error(transparent)]
    AlertSink(#[from] sink::SinkError),
    /// OTLP export needs a tokio runtime and none is running.
    #[error("OTLP export must be started inside a tokio runtime")]
    NoRuntime,
}

struct Inner {
    identity: String,
    metrics: TelemetryMetrics,
    otlp: Option<Otlp>,
    flow_log: Option<FlowLog>,
    detectors: Option<Mutex<Detectors>>,
    /// Where the detectors' learned state is kept, and how often.
    state_file: Option<std::path::PathBuf>,
    state_interval: Duration,
    active_timeout: Duration,
    /// Which addresses belong to which identities.
    binding: config::AddressBinding,
    /// The alert stream and webhook.
    sinks: Option<sink::AlertSinks>,
    recent: RecentAlerts,
    /// Who the cluster says source addresses belong to (cluster mode).
    owners: owners::Owners,
}

/// The telemetry of one sidecar. Clones share everything.
#[derive(Clone)]
pub struct Telemetry {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            None => f.write_str("Telemetry(disabled)"),
            Some(i) => f
                .debug_struct("Telemetry")
                .field("identity", &i.identity)
                .field("otlp", &i.otlp.is_some())
                .field("flow_log", &i.flow_log.is_some())
                .field("detectors", &i.detectors.is_some())
                .finish(),
        }
    }
}

impl Telemetry {
    /// Starts what `cfg` turns on for the workload `identity` and registers the telemetry
    /// metric families in `registry`. With OTLP configured it must be called inside a tokio
    /// runtime (the export tasks are spawned on it).
    pub fn new(
        cfg: &TelemetryConfig,
        identity: &SpiffeId,
        registry: &mut Registry,
    ) -> Result<Self, TelemetryError> {
        let metrics = TelemetryMetrics::register(registry);
        Self::with_metrics(cfg, identity, metrics)
    }

    /// [`Telemetry::new`] with metric handles registered elsewhere.
    pub fn with_metrics(
        cfg: &TelemetryConfig,
        identity: &SpiffeId,
        metrics: TelemetryMetrics,
    ) -> Result<Self, TelemetryError> {
        let flow_log = cfg
            .flow_log
            .as_ref()
            .map(|f| FlowLog::start(f, metrics.clone()))
            .transpose()
            .map_err(TelemetryError::FlowLog)?;
        let detectors = if cfg.detectors.enabled {
            Some(Mutex::new(start_detectors(&cfg.detectors)?))
        } else {
            None
        };
        let otlp = cfg
            .otlp
            .as_ref()
            .map(|o| Otlp::start(o, identity, &metrics))
            .transpose()?;
        if flow_log.is_some() {
            metrics.declare_sink(metrics::Sink::FlowLog);
        }
        let sinks = if cfg.alerts.stream.is_some() || cfg.alerts.webhook.is_some() {
            Some(sink::AlertSinks::start(
                &cfg.alerts,
                &identity.to_string(),
                &metrics,
            )?)
        } else {
            None
        };
        if otlp.is_some() {
            metrics.declare_sink(metrics::Sink::Traces);
            metrics.declare_sink(metrics::Sink::Logs);
        }
        Ok(Self {
            inner: Some(Arc::new(Inner {
                identity: identity.to_string(),
                metrics,
                otlp,
                flow_log,
                detectors,
                state_file: cfg
                    .detectors
                    .state_file
                    .clone()
                    .filter(|_| cfg.detectors.enabled),
                state_interval: cfg.detectors.state_interval,
                active_timeout: cfg.active_timeout,
                binding: cfg.detectors.address_binding.clone(),
                sinks,
                recent: RecentAlerts::default(),
                owners: owners::Owners::default(),
            })),
        })
    }

    /// Telemetry that does nothing.
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// Whether anything is on.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Whether anything reads a request's flow: the detectors, the flow log or traces. When
    /// nothing does, the request path builds no record, event or span.
    pub fn records_flows(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.records_flows())
    }

    /// Whether spans are exported.
    pub fn is_tracing(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.otlp.is_some())
    }

    /// The metric handles (`None` when disabled).
    pub fn metrics(&self) -> Option<&TelemetryMetrics> {
        self.inner.as_ref().map(|i| &i.metrics)
    }

    /// Starts the server span of an inbound request whose headers are `headers` (W3C or B3
    /// parent context).
    pub fn server_span(&self, headers: &HeaderMap, attrs: &SpanAttrs<'_>) -> RequestSpan {
        let Some(inner) = self.inner.as_ref().filter(|i| i.records_flows()) else {
            return RequestSpan::none();
        };
        let parent = inner
            .reads_trace_context()
            .then(|| trace::extract(headers))
            .flatten();
        match &inner.otlp {
            Some(o) => RequestSpan::start(&o.tracer, SpanKind::Server, parent, attrs),
            None => RequestSpan::untraced(parent, SpanKind::Server),
        }
    }

    /// Starts the client span of an outbound request.
    pub fn client_span(&self, parent: Parent<'_>, attrs: &SpanAttrs<'_>) -> RequestSpan {
        let Some(inner) = self.inner.as_ref().filter(|i| i.records_flows()) else {
            return RequestSpan::none();
        };
        let parent = match parent {
            Parent::Headers(h) if inner.reads_trace_context() => trace::extract(h),
            Parent::Headers(_) => None,
            Parent::Span(s) => s.context().is_valid().then(|| s.context().clone()),
            Parent::Root => None,
        };
        match &inner.otlp {
            Some(o) => RequestSpan::start(&o.tracer, SpanKind::Client, parent, attrs),
            None => RequestSpan::untraced(parent, SpanKind::Client),
        }
    }

    /// Starts the span of an opaque TCP connection (meshed or egress): a server span inbound,
    /// a client span outbound, as the root of a new trace sampled like any new trace.
    pub fn connection_span(
        &self,
        direction: Direction,
        attrs: &ConnectionAttrs<'_>,
    ) -> RequestSpan {
        let Some(inner) = self.inner.as_ref().filter(|i| i.records_flows()) else {
            return RequestSpan::none();
        };
        let kind = span_kind(direction);
        match &inner.otlp {
            Some(o) => RequestSpan::start_connection(&o.tracer, kind, attrs),
            None => RequestSpan::untraced(None, kind),
        }
    }

    /// Starts the span of a WebSocket tunnel opened by the request whose span is `request`: a
    /// child of it (sampled when it is), a server span inbound and a client span outbound, as
    /// a connection's span. None is recorded when nothing reads flows or the request has no
    /// trace context.
    pub fn tunnel_span(
        &self,
        direction: Direction,
        request: &RequestSpan,
        attrs: &ConnectionAttrs<'_>,
        path: Option<&str>,
    ) -> RequestSpan {
        let Some(inner) = self.inner.as_ref().filter(|i| i.records_flows()) else {
            return RequestSpan::none();
        };
        let kind = span_kind(direction);
        match &inner.otlp {
            Some(o) if request.context().is_valid() => {
                RequestSpan::start_tunnel(&o.tracer, kind, request.context(), attrs, path)
            }
            _ => RequestSpan::untraced(None, kind),
        }
    }

    /// Finishes a whole flow (an HTTP request, or a connection or tunnel that ended before it
    /// was recorded open): fills the record's trace and span IDs from `span`, runs the
    /// detectors (alerts also become span events), ends the span with the record's outcome
    /// and writes the flow line.
    pub fn record_request(&self, mut span: RequestSpan, mut record: FlowRecord<'_>) {
        let Some(inner) = &self.inner else {
            return;
        };
        fill_trace_ids(&span, &mut record);
        let alerts = inner.detect(&record.event());
        for a in &alerts {
            span.add_alert(a);
        }
        end_span(span, &record);
        inner.write_and_raise(&record, &alerts);
    }

    /// Finishes an HTTP request from what the request path hands over: the compact `event`
    /// goes to the detectors (alerts also become span events) and the span ends with
    /// `outcome`. What is left to do needs the whole record only when a flow log will write
    /// it ([`Ended::wants_record`]): hand it to [`Telemetry::request_record`]. Together the
    /// same outputs as [`Telemetry::record_request`], without a record nobody writes.
    #[must_use = "alerts are raised by `request_record`"]
    pub fn request_ended(
        &self,
        mut span: RequestSpan,
        event: &FlowEvent<'_>,
        outcome: &SpanOutcome<'_>,
    ) -> Option<Ended> {
        let inner = self.inner.as_ref()?;
        let alerts = inner.detect(event);
        for a in &alerts {
            span.add_alert(a);
        }
        let wants_record = inner.flow_log.is_some();
        let ended = (wants_record || !alerts.is_empty()).then(|| Ended {
            ids: span.ids_of_record(),
            alerts,
            wants_record,
        });
        span.finish(outcome);
        ended
    }

    /// Writes the flow line of a request [`Telemetry::request_ended`] left (`record`, given
    /// the span's IDs here, when [`Ended::wants_record`]) and raises its alerts. The record
    /// goes to the flow log's writer thread as it is, and is serialized there.
    pub fn request_record(&self, ended: Ended, record: Option<FlowRecord<'_>>) {
        let Some(inner) = &self.inner else {
            return;
        };
        let Ended { ids, alerts, .. } = ended;
        if let (Some(f), Some(record)) = (&inner.flow_log, record) {
            let mut record: FlowRecord<'_> = record;
            ids.fill(&mut record);
            f.write_record(&record);
        }
        if !alerts.is_empty() {
            let trace = ids.trace.zip(ids.span);
            inner.raise(
                &alerts,
                trace.as_ref().map(|(t, s)| (t.as_str(), s.as_str())),
            );
        }
    }

    /// Records a connection or tunnel as open (`"phase":"open"`), while it goes on: fills the
    /// record's trace and span IDs from `span`, runs the detectors (alerts also become events
    /// of the still open span) and writes the flow line. Its interim records go to
    /// [`Telemetry::record_flow_seen`], its end to [`Telemetry::record_end`].
    pub fn record_open(&self, span: &mut RequestSpan, mut record: FlowRecord<'_>) {
        let Some(inner) = &self.inner else {
            return;
        };
        fill_trace_ids(span, &mut record);
        let alerts = inner.detect(&record.event());
        for a in &alerts {
            span.add_alert(a);
        }
        inner.write_and_raise(&record, &alerts);
    }

    /// Records the end of a connection or tunnel whose open record the detectors already
    /// looked at: ends `span` with the record's outcome and writes the flow line.
    pub fn record_end(&self, span: RequestSpan, mut record: FlowRecord<'_>) {
        let Some(inner) = &self.inner else {
            return;
        };
        fill_trace_ids(&span, &mut record);
        end_span(span, &record);
        if let Some(f) = &inner.flow_log {
            f.write_record(&record);
        }
    }

    /// Writes the flow line of a record the detectors already looked at (the interim and
    /// final records of a connection whose open record went to them).
    pub fn record_flow_seen(&self, record: &FlowRecord<'_>) {
        if let Some(f) = self.inner.as_ref().and_then(|i| i.flow_log.as_ref()) {
            f.write_record(record);
        }
    }

    /// How often a connection still open gets an interim record; `None` when telemetry is off.
    pub fn active_timeout(&self) -> Option<Duration> {
        self.inner.as_ref().map(|i| i.active_timeout)
    }

    /// A failed inbound TLS handshake from `source`; `reason` as in `tls::failure_reason`.
    pub fn handshake_failed(&self, source: SocketAddr, reason: &str) {
        let Some(inner) = &self.inner else {
            return;
        };
        let Some(d) = &inner.detectors else {
            return;
        };
        let alerts = match d.lock() {
            Ok(mut d) => d.observe_handshake_failure(source, reason, OffsetDateTime::now_utc()),
            Err(_) => return,
        };
        inner.raise(&alerts, None);
    }

    /// Where the announced address sets come from: the discovery source of cluster mode. A
    /// new source address of a known identity that it announces for that identity is a
    /// replica and raises no `new_source_address`; one it announces for another identity is a
    /// foreign address (as outside an `address_binding`). Set once; without it (file mode)
    /// every new address of a known identity is alerted.
    pub fn set_address_owners(&self, owners: Arc<dyn AddressOwners>) {
        if let Some(inner) = &self.inner
            && !inner.owners.set(owners)
        {
            tracing::warn!("the source of announced addresses was already set; kept the first");
        }
    }

    /// Whether announced address sets are known (a source was set).
    pub fn knows_address_owners(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.owners.is_set())
    }

    /// A peer connected (inbound, after its handshake) with `identity` from `source`. Returns
    /// whether the connection may go on: not when the address belongs to another identity
    /// (outside the identity's `telemetry.detectors.address_binding`, or a pod the controller
    /// announces for another identity) and `address_binding.action` is `deny`. A foreign
    /// address raises a `foreign_address` alert either way; any other new address of a known
    /// identity goes to `new_source_address`. See [`owners`].
    pub async fn peer_connected(&self, identity: &str, source: SocketAddr) -> bool {
        match &self.inner {
            Some(inner) => owners::admit(inner, identity, source).await,
            None => true,
        }
    }

    /// An outbound call or connection attempt to `host` (`ip[:port]` or a host name), before
    /// or without a flow record (for example one that failed to connect).
    pub fn outbound_destination(&self, host: &str) {
        let Some(inner) = &self.inner else {
            return;
        };
        let Some(d) = &inner.detectors else {
            return;
        };
        let alerts = match d.lock() {
            Ok(mut d) => {
                d.observe_outbound_destination(&inner.identity, host, OffsetDateTime::now_utc())
            }
            Err(_) => return,
        };
        inner.raise(&alerts, None);
    }

    /// The detectors' parameters and learned state as JSON: the body of admin `/detectors`
    /// (`{"enabled":false}` when they are off).
    pub fn detector_state_json(&self) -> String {
        let state = self
            .inner
            .as_ref()
            .and_then(|i| i.detectors.as_ref())
            .and_then(|d| d.lock().ok().map(|d| d.state(OffsetDateTime::now_utc())));
        match state {
            Some(s) => serde_json::to_string(&s)
                .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string())),
            None => "{\"enabled\":false}".to_owned(),
        }
    }

    /// The recent alerts as JSON, `{"alerts":[...]}` oldest first: the body of admin `/alerts`.
    pub fn recent_alerts_json(&self) -> String {
        match &self.inner {
            Some(i) => i.recent.to_json(),
            None => "{\"alerts\":[]}".to_owned(),
        }
    }

    /// The recent alerts, oldest first.
    pub fn recent_alerts(&self) -> Vec<Alert> {
        self.inner
            .as_ref()
            .map(|i| i.recent.snapshot())
            .unwrap_or_default()
    }

    /// Pushes out everything queued so far (flow lines, spans, log records), waiting at most
    /// `deadline`. Returns whether everything was pushed out in time.
    pub async fn flush(&self, deadline: Duration) -> bool {
        self.drain(deadline, false).await
    }

    /// Flushes like [`Telemetry::flush`] and stops exporting. Call once, when the sidecar
    /// has drained.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.drain(deadline, true).await
    }

    /// Writes the detectors' learned state to the state file (atomically, mode 0600) now.
    /// Returns whether it was written; without a state file there is nothing to write.
    pub fn save_detector_state(&self) -> bool {
        let Some(inner) = &self.inner else {
            return false;
        };
        let (Some(path), Some(d)) = (&inner.state_file, &inner.detectors) else {
            return false;
        };
        let bytes = match d.lock() {
            Ok(d) => d.save_state(OffsetDateTime::now_utc()),
            Err(_) => return false,
        };
        let written = bytes.map_err(|e| e.to_string()).and_then(|b| {
            picket_ca::state::write_file_atomic(path, &b, 0o600).map_err(|e| e.to_string())
        });
        match written {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the detector state");
                false
            }
        }
    }

    /// Writes the detector state every `state_interval` until `stop` is cancelled (then the
    /// caller saves once more, see [`Telemetry::shutdown`]). `None` without a state file.
    pub fn spawn_state_saver(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let inner = self.inner.as_ref()?;
        inner.state_file.as_ref()?;
        let interval = inner.state_interval;
        let this = self.clone();
        Some(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(interval) => {}
                }
                let t = this.clone();
                let _ = tokio::task::spawn_blocking(move || t.save_detector_state()).await;
            }
        }))
    }

    async fn drain(&self, deadline: Duration, stop_export: bool) -> bool {
        let Some(inner) = &self.inner else {
            return true;
        };
        if stop_export && inner.state_file.is_some() {
            let t = self.clone();
            let _ = tokio::task::spawn_blocking(move || t.save_detector_state()).await;
        }
        let flows = async {
            match &inner.flow_log {
                Some(f) => f.flush(deadline).await,
                None => true,
            }
        };
        let otlp = async {
            match &inner.otlp {
                Some(o) if stop_export => o.shutdown(deadline).await,
                Some(o) => o.flush(deadline).await,
                None => true,
            }
        };
        let alerts = async {
            match &inner.sinks {
                Some(s) => s.flush(deadline).await,
                None => true,
            }
        };
        let (a, b, c) = tokio::join!(flows, otlp, alerts);
        a && b && c
    }
}

/// Detectors as `cfg` says: the learned state of the state file (when there is one), then the
/// baseline's edges and identities.
fn start_detectors(cfg: &DetectorConfig) -> Result<Detectors, TelemetryError> {
    let mut d = Detectors::new(cfg);
    if let Some(path) = &cfg.state_file {
        let state_err = |reason: String| TelemetryError::State {
            path: path.clone(),
            reason,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let r = d.restore_state(&bytes).map_err(state_err)?;
                tracing::info!(
                    path = %path.display(),
                    identities = r.identities,
                    edges = r.edges,
                    burst_counters = r.burst_counters,
                    routes = r.routes,
                    "detector state loaded: known identities do not learn again"
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(path = %path.display(), "no detector state yet: every identity learns");
            }
            Err(e) => return Err(state_err(e.to_string())),
        }
    }
    if let Some(path) = &cfg.baseline_file {
        let file = std::fs::File::open(path).map_err(TelemetryError::Baseline)?;
        let n = d
            .load_baseline(std::io::BufReader::new(file))
            .map_err(TelemetryError::Baseline)?;
        tracing::info!(path = %path.display(), edges = n, "detector baseline loaded");
    }
    Ok(d)
}

/// Sets the record's trace, span and parent span IDs from `span` where it has none.
pub fn fill_trace_ids(span: &RequestSpan, record: &mut FlowRecord<'_>) {
    if record.trace_id.is_none() {
        record.trace_id = span.trace_id().map(Into::into);
    }
    if record.span_id.is_none() {
        record.span_id = span.span_id().map(Into::into);
    }
    if record.parent_span_id.is_none() {
        record.parent_span_id = span.parent_span_id().map(Into::into);
    }
}

/// Ends `span` with the outcome `record` holds.
fn end_span(span: RequestSpan, record: &FlowRecord<'_>) {
    span.finish(&SpanOutcome {
        status: record.status,
        grpc_status: record.grpc_status,
        verdict: record.verdict,
        policy: record.policy.as_deref(),
        bytes_in: record.bytes_in,
        bytes_out: record.bytes_out,
        error: None,
        // A client span names its peer once the peer answered (see `client_span`).
        peer_identity: (record.direction == Direction::Outbound)
            .then_some(record.destination_identity.as_deref())
            .flatten(),
        expected_identity: record.expected_identity.as_deref(),
    });
}

/// The trace context of a record, for log records correlated with a request.
fn trace_ids<'r>(record: &'r FlowRecord<'_>) -> Option<(&'r str, &'r str)> {
    record.trace_id.as_deref().zip(record.span_id.as_deref())
}

impl Inner {
    fn records_flows(&self) -> bool {
        self.detectors.is_some() || self.flow_log.is_some() || self.otlp.is_some()
    }

    /// Whether anything reads a request's trace context: the flow log's records and OTLP.
    /// The detectors alone do not, so with them only no header is parsed for it.
    fn reads_trace_context(&self) -> bool {
        self.flow_log.is_some() || self.otlp.is_some()
    }

    fn detect(&self, event: &FlowEvent<'_>) -> Vec<Alert> {
        let Some(d) = &self.detectors else {
            return Vec::new();
        };
        let (alerts, learning, refused) = match d.lock() {
            Ok(mut d) => (
                d.observe_event(event, OffsetDateTime::now_utc()),
                d.take_learning_started(),
                d.take_refused(),
            ),
            Err(_) => return Vec::new(),
        };
        self.note_refused(&refused);
        for l in learning {
            self.metrics.learning_started();
            tracing::info!(
                identity = %l.identity,
                until = %l.until,
                "detectors: a new source identity is learning; its edges and rates are learned, not reported, until then"
            );
        }
        alerts
    }

    /// Counts what full tables of learned state refused, and logs each table's first
    /// refusal: the detectors keep what they learned, and say that new state is not kept.
    fn note_refused(&self, refused: &[detect::Refused]) {
        for r in refused {
            self.metrics.refused(r.table, r.count);
            if r.first {
                tracing::warn!(
                    table = r.table.as_str(),
                    "detectors: a table of learned state is full; what it learned is kept and new keys are refused (judged unknown, counted in picket_detector_refused_total): raise telemetry.detectors.max_tracked"
                );
            }
        }
    }

    /// Writes `record`'s flow line and raises `alerts` with the record's trace context.
    fn write_and_raise(&self, record: &FlowRecord<'_>, alerts: &[Alert]) {
        let trace = trace_ids(record)
            .filter(|_| !alerts.is_empty())
            .map(|(t, s)| (t.to_owned(), s.to_owned()));
        if let Some(f) = &self.flow_log {
            f.write_record(record);
        }
        self.raise(
            alerts,
            trace.as_ref().map(|(t, s)| (t.as_str(), s.as_str())),
        );
    }

    /// Sends `alerts` to every sink but span events.
    fn raise(&self, alerts: &[Alert], trace: Option<(&str, &str)>) {
        for alert in alerts {
            self.metrics.alert(alert.kind, alert.severity);
            self.recent.push(alert);
            tracing::warn!(
                kind = alert.kind.as_str(),
                severity = alert.severity.as_str(),
                source = alert.source_identity.as_deref().unwrap_or_default(),
                source_address = ?alert.source_address,
                destination = alert.destination.as_deref().unwrap_or_default(),
                evidence = ?alert.evidence,
                "alert: {}",
                alert.summary
            );
            if let Some(f) = &self.flow_log {
                f.write(alert);
            }
            if let Some(s) = &self.sinks {
                s.send(alert);
            }
            if let Some(o) = &self.otlp {
                emit_log(&o.logger, alert, trace);
            }
        }
    }
}

/// Emits `alert` as an OTel log record (event name `picket.alert`), correlated with the
/// request's trace when there is one.
fn emit_log(
    logger: &opentelemetry_sdk::logs::SdkLogger,
    alert: &Alert,
    trace: Option<(&str, &str)>,
) {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId};
    let mut record = logger.create_log_record();
    let now = std::time::SystemTime::now();
    record.set_event_name(trace::ALERT_EVENT);
    record.set_timestamp(now);
    record.set_observed_timestamp(now);
    record.set_severity_number(alert.severity.otel());
    record.set_severity_text(alert.severity.as_str());
    record.set_body(AnyValue::from(alert.summary.clone()));
    record.add_attribute("picket.alert.kind", alert.kind.as_str());
    record.add_attribute("picket.alert.severity", alert.severity.as_str());
    if let Some(s) = &alert.source_identity {
        record.add_attribute(trace::SOURCE_IDENTITY, s.clone());
    }
    if let Some(a) = alert.source_address {
        record.add_attribute("source.address", a.to_string());
    }
    if let Some(d) = &alert.destination {
        record.add_attribute("picket.alert.destination", d.clone());
    }
    record.add_attribute(
        "picket.alert.window_secs",
        i64::try_from(alert.window_secs).unwrap_or(i64::MAX),
    );
    for (k, v) in &alert.evidence {
        record.add_attribute(
            format!("picket.alert.evidence.{k}"),
            i64::try_from(*v).unwrap_or(i64::MAX),
        );
    }
    if let Some((t, s)) = trace
        && let (Ok(t), Ok(s)) = (TraceId::from_hex(t), SpanId::from_hex(s))
    {
        record.set_trace_context(t, s, Some(TraceFlags::SAMPLED));
    }
    logger.emit(record);
}

/// The kind of a connection's or a tunnel's span: the server end inbound, the client end
/// outbound.
fn span_kind(direction: Direction) -> SpanKind {
    match direction {
        Direction::Inbound => SpanKind::Server,
        Direction::Outbound => SpanKind::Client,
    }
}

#[cfg(test)]
mod tests;
