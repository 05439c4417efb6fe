//! OTLP export that never slows a request: spans and alert log records go into bounded
//! queues ([`SPAN_QUEUE`], [`LOG_QUEUE`]) with `try_send`; one task per signal drains its queue
//! in batches and calls the OTLP gRPC exporter with a deadline. A full queue or a failed export
//! drops the items and counts them in `picket_telemetry_dropped_total`; a collector that is
//! down costs the data path nothing but those counts.
//!
//! The SDK's own batch processors are not used because they do not report what they drop.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{
    LogBatch, LogExporter, LogProcessor, SdkLogRecord, SdkLogger, SdkLoggerProvider,
};
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor};
use picket_ca::SpiffeId;
use tokio::sync::{mpsc, oneshot};

use super::TelemetryError;
use super::config::OtlpConfig;
use super::metrics::{DropReason, Sink, TelemetryMetrics};
use super::trace::IDENTITY_ATTRIBUTE;

/// Finished spans waiting for export before new ones are dropped.
pub const SPAN_QUEUE: usize = 4096;
/// Alert log records waiting for export before new ones are dropped.
pub const LOG_QUEUE: usize = 1024;
/// Items per export call.
pub const MAX_BATCH: usize = 512;
/// A partial batch is sent after this long.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);

/// Sends one batch somewhere.
pub(crate) trait Export: Send + Sync + 'static {
    type Item: Send + 'static;
    fn export(&self, batch: Vec<Self::Item>) -> impl Future<Output = OTelSdkResult> + Send;
}

/// Spans to a [`SpanExporter`].
pub(crate) struct Spans<E>(pub E);

impl<E: SpanExporter + 'static> Export for Spans<E> {
    type Item = SpanData;
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        self.0.export(batch)
    }
}

/// Log records to a [`LogExporter`].
pub(crate) struct Logs<E>(pub E);

impl<E: LogExporter + 'static> Export for Logs<E> {
    type Item = Box<(SdkLogRecord, InstrumentationScope)>;
    async fn export(&self, batch: Vec<Self::Item>) -> OTelSdkResult {
        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
            batch.iter().map(|b| (&b.0, &b.1)).collect();
        self.0.export(LogBatch::new(&refs)).await
    }
}

/// The producer side of one queue: what the SDK processors hold.
struct Queue<T> {
    tx: mpsc::Sender<T>,
    sink: Sink,
    metrics: TelemetryMetrics,
    closed: AtomicBool,
}

impl<T> Queue<T> {
    fn push(&self, item: T) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        if self.tx.try_send(item).is_err() {
            self.metrics.dropped(self.sink, DropReason::QueueFull, 1);
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("sink", &self.sink)
            .finish_non_exhaustive()
    }
}

/// A [`SpanProcessor`] that queues ended spans.
#[derive(Debug, Clone)]
pub(crate) struct SpanQueue(Arc<Queue<SpanData>>);

impl SpanProcessor for SpanQueue {
    fn on_start(&self, _span: &mut Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.0.push(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Flushing is asynchronous: see `Pipeline::flush`.
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.0.closed.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// A [`LogProcessor`] that queues emitted log records.
#[derive(Debug, Clone)]
pub(crate) struct LogQueue(Arc<Queue<Box<(SdkLogRecord, InstrumentationScope)>>>);

impl LogProcessor for LogQueue {
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        self.0.push(Box::new((record.clone(), scope.clone())));
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.0.closed.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// The consumer side of one queue: a task exporting batches.
#[derive(Debug)]
pub(crate) struct Pipeline {
    flush_tx: mpsc::Sender<oneshot::Sender<()>>,
}

impl Pipeline {
    /// Starts the export task for `exporter` and returns it with the queue's producer.
    fn start<E: Export>(
        exporter: E,
        sink: Sink,
        capacity: usize,
        deadline: Duration,
        metrics: TelemetryMetrics,
    ) -> (Self, Arc<Queue<E::Item>>) {
        let (tx, rx) = mpsc::channel(capacity);
        let (flush_tx, flush_rx) = mpsc::channel(4);
        let queue = Arc::new(Queue {
            tx,
            sink,
            metrics: metrics.clone(),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(export_loop(exporter, rx, flush_rx, sink, deadline, metrics));
        (Self { flush_tx }, queue)
    }

    /// Exports everything queued so far; returns false if `deadline` passed first.
    pub(crate) async fn flush(&self, deadline: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        tokio::time::timeout(deadline, async {
            self.flush_tx.send(tx).await.is_ok() && rx.await.is_ok()
        })
        .await
        .unwrap_or(false)
    }
}

async fn export_loop<E: Export>(
    exporter: E,
    mut rx: mpsc::Receiver<E::Item>,
    mut flush_rx: mpsc::Receiver<oneshot::Sender<()>>,
    sink: Sink,
    deadline: Duration,
    metrics: TelemetryMetrics,
) {
    let mut batch: Vec<E::Item> = Vec::with_capacity(MAX_BATCH);
    let mut ticker = tokio::time::interval(BATCH_DELAY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut send = async |batch: Vec<E::Item>| {
        let n = batch.len() as u64;
        let result = tokio::time::timeout(deadline, exporter.export(batch)).await;
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {deadline:?}")),
        };
        match error {
            None if failing => {
                tracing::info!(sink = sink.as_str(), "OTLP export recovered");
                failing = false;
            }
            None => {}
            Some(e) => {
                metrics.dropped(sink, DropReason::SinkFailed, n);
                if !failing {
                    tracing::warn!(sink = sink.as_str(), error = %e, "OTLP export failed; items are dropped and counted until it recovers");
                }
                failing = true;
            }
        }
    };
    loop {
        let room = MAX_BATCH - batch.len();
        tokio::select! {
            biased;
            flush = flush_rx.recv() => {
                let Some(done) = flush else { break };
                while let Ok(item) = rx.try_recv() {
                    batch.push(item);
                    if batch.len() >= MAX_BATCH {
                        send(std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH))).await;
                    }
                }
                if !batch.is_empty() {
                    send(std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH))).await;
                }
                let _ = done.send(());
            }
            // Everything queued by now in one poll, not a poll per item.
            n = rx.recv_many(&mut batch, room) => {
                if n == 0 {
                    break;
                }
                if batch.len() >= MAX_BATCH {
                    send(std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH))).await;
                }
            }
            _ = ticker.tick() => {
                if !batch.is_empty() {
                    send(std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH))).await;
                }
            }
        }
    }
    if !batch.is_empty() {
        send(batch).await;
    }
}

/// Trace and log export to one OTLP endpoint.
pub(crate) struct Otlp {
    pub(crate) tracer: super::trace::Tracer,
    pub(crate) logger: SdkLogger,
    tracer_provider: SdkTracerProvider,
    logger_provider: SdkLoggerProvider,
    traces: Pipeline,
    logs: Pipeline,
}

impl fmt::Debug for Otlp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Otlp").finish_non_exhaustive()
    }
}

/// The resource of every span and log record: `service.name` = `<sa>.<ns>`,
/// `picket.identity` = the SPIFFE ID, plus configured attributes.
pub fn resource(cfg: &OtlpConfig, identity: &SpiffeId) -> Resource {
    let mut attrs: Vec<KeyValue> = cfg
        .resource
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    if !cfg.resource.iter().any(|(k, _)| k == "service.name") {
        attrs.push(KeyValue::new(
            "service.name",
            format!("{}.{}", identity.service_account(), identity.namespace()),
        ));
    }
    attrs.extend([
        KeyValue::new("service.namespace", identity.namespace().to_owned()),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new(IDENTITY_ATTRIBUTE, identity.to_string()),
        KeyValue::new("telemetry.sdk.name", "opentelemetry"),
        KeyValue::new("telemetry.sdk.language", "rust"),
    ]);
    Resource::builder_empty().with_attributes(attrs).build()
}

/// An exporter builder aimed at the collector: its endpoint, timeout and headers (as gRPC
/// metadata; a header that is not a valid HTTP header is left out).
fn to_collector<B: WithExportConfig + WithTonicConfig>(builder: B, cfg: &OtlpConfig) -> B {
    let mut map = http::HeaderMap::new();
    for (k, v) in &cfg.headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            map.append(k, v);
        }
    }
    builder
        .with_endpoint(cfg.endpoint.clone())
        .with_timeout(cfg.timeout)
        .with_metadata(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(map))
}

/// The scope of Picket's spans and log records.
fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("picket")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// The tracer (and its provider) that hands spans to the export queue; a span is sampled by
/// its parent's decision, else at the configured ratio (decided by [`super::trace::Tracer`]
/// before the SDK sees the span).
fn tracer(
    cfg: &OtlpConfig,
    resource: Resource,
    queue: SpanQueue,
) -> (SdkTracerProvider, super::trace::Tracer) {
    let provider = SdkTracerProvider::builder()
        .with_span_processor(queue)
        .with_sampler(super::trace::Tracer::sdk_sampler())
        .with_resource(resource)
        .build();
    let tracer = super::trace::Tracer::new(provider.tracer_with_scope(scope()), cfg.sampling_ratio);
    (provider, tracer)
}

/// The logger (and its provider) that hands log records to the export queue.
fn logger(resource: Resource, queue: LogQueue) -> (SdkLoggerProvider, SdkLogger) {
    let provider = SdkLoggerProvider::builder()
        .with_log_processor(queue)
        .with_resource(resource)
        .build();
    let logger = opentelemetry::logs::LoggerProvider::logger_with_scope(&provider, scope());
    (provider, logger)
}

impl Otlp {
    /// Builds the exporters and starts the export tasks. Must run inside a tokio runtime.
    pub(crate) fn start(
        cfg: &OtlpConfig,
        identity: &SpiffeId,
        metrics: &TelemetryMetrics,
    ) -> Result<Self, TelemetryError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TelemetryError::NoRuntime);
        }
        let exporter_error =
            |e: opentelemetry_otlp::ExporterBuildError| TelemetryError::Exporter(e.to_string());
        let mut span_exporter = to_collector(
            opentelemetry_otlp::SpanExporter::builder().with_tonic(),
            cfg,
        )
        .build()
        .map_err(exporter_error)?;
        let mut log_exporter =
            to_collector(opentelemetry_otlp::LogExporter::builder().with_tonic(), cfg)
                .build()
                .map_err(exporter_error)?;
        let resource = resource(cfg, identity);
        span_exporter.set_resource(&resource);
        log_exporter.set_resource(&resource);
        // The exporter retries inside its own timeout; give it a little more before giving up.
        let deadline = cfg.timeout + Duration::from_secs(1);
        let (traces, span_queue) = Pipeline::start(
            Spans(span_exporter),
            Sink::Traces,
            SPAN_QUEUE,
            deadline,
            metrics.clone(),
        );
        let (logs, log_queue) = Pipeline::start(
            Logs(log_exporter),
            Sink::Logs,
            LOG_QUEUE,
            deadline,
            metrics.clone(),
        );
        let (tracer_provider, tracer) = tracer(cfg, resource.clone(), SpanQueue(span_queue));
        let (logger_provider, logger) = logger(resource, LogQueue(log_queue));
        Ok(Self {
            tracer,
            logger,
            tracer_provider,
            logger_provider,
            traces,
            logs,
        })
    }

    /// Exports what is queued, within `deadline` for each signal, then stops queueing.
    pub(crate) async fn shutdown(&self, deadline: Duration) -> bool {
        let (a, b) = tokio::join!(self.traces.flush(deadline), self.logs.flush(deadline));
        let _ = self.tracer_provider.shutdown();
        let _ = self.logger_provider.shutdown();
        a && b
    }

    /// Exports what is queued so far, within `deadline`.
    pub(crate) async fn flush(&self, deadline: Duration) -> bool {
        let (a, b) = tokio::join!(self.traces.flush(deadline), self.logs.flush(deadline));
        a && b
    }
}
