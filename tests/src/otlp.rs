//! An in-process OTLP collector for the tests: an OTLP/gRPC trace and logs receiver on
//! `127.0.0.1:0` that keeps what it receives, and a helper that runs the third-party `rotel`
//! collector in front of it.
//!
//! The receiver serves the opentelemetry-proto tonic services with hyper's HTTP/2 server
//! directly (no tonic router). It can be told to answer `UNAVAILABLE` or to stop answering,
//! to show that a failing collector costs the data path nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::codec::CompressionEncoding;
use tonic::codegen::Service;

use crate::process::Daemon;
use crate::wait::{READY_TIMEOUT, eventually};

/// A span as received, with its resource flattened in.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, empty for a root span.
    pub parent_span_id: String,
    /// Span name.
    pub name: String,
    /// OTLP span kind: 2 server, 3 client.
    pub kind: i32,
    /// Attributes, values rendered as strings.
    pub attributes: BTreeMap<String, String>,
    /// Resource attributes.
    pub resource: BTreeMap<String, String>,
    /// Events: name and attributes.
    pub events: Vec<(String, BTreeMap<String, String>)>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
}

impl ReceivedSpan {
    /// An attribute's value.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// Whether this span is a direct child of `parent`.
    pub fn is_child_of(&self, parent: &ReceivedSpan) -> bool {
        self.trace_id == parent.trace_id && self.parent_span_id == parent.span_id
    }
}

impl ReceivedLog {
    /// An attribute's value.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// OTLP span kind of a server span.
pub const SPAN_KIND_SERVER: i32 = 2;
/// OTLP span kind of a client span.
pub const SPAN_KIND_CLIENT: i32 = 3;

/// A log record as received, with its resource flattened in.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedLog {
    /// Body, rendered as a string.
    pub body: String,
    /// OTLP severity number.
    pub severity_number: i32,
    /// Severity text.
    pub severity_text: String,
    /// Event name.
    pub event_name: String,
    /// Attributes, values rendered as strings.
    pub attributes: BTreeMap<String, String>,
    /// Resource attributes.
    pub resource: BTreeMap<String, String>,
    /// 32 hex digits, empty when not correlated.
    pub trace_id: String,
    /// 16 hex digits, empty when not correlated.
    pub span_id: String,
}

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Behaviour {
    /// Keep everything and answer OK.
    Accept = 0,
    /// Answer `UNAVAILABLE` and keep nothing.
    Unavailable = 1,
    /// Never answer.
    Stall = 2,
}

#[derive(Debug, Default)]
struct Store {
    spans: Mutex<Vec<ReceivedSpan>>,
    logs: Mutex<Vec<ReceivedLog>>,
    behaviour: AtomicU8,
    requests: std::sync::atomic::AtomicU64,
}

impl Store {
    async fn gate(&self) -> Result<(), tonic::Status> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match self.behaviour.load(Ordering::Relaxed) {
            1 => Err(tonic::Status::unavailable("test receiver is unavailable")),
            2 => std::future::pending().await,
            _ => Ok(()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn render(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(kv: &[KeyValue]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|kv| (kv.key.clone(), render(kv.value.as_ref())))
        .collect()
}

#[derive(Debug, Clone)]
struct Traces(Arc<Store>);

#[tonic::async_trait]
impl TraceService for Traces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.gate().await?;
        let mut out = Vec::new();
        for rs in request.into_inner().resource_spans {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| attrs(&r.attributes))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(ReceivedSpan {
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        name: s.name,
                        kind: s.kind,
                        attributes: attrs(&s.attributes),
                        resource: resource.clone(),
                        events: s
                            .events
                            .iter()
                            .map(|e| (e.name.clone(), attrs(&e.attributes)))
                            .collect(),
                        status_code: s.status.map_or(0, |st| st.code),
                    });
                }
            }
        }
        if let Ok(mut spans) = self.0.spans.lock() {
            spans.extend(out);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[derive(Debug, Clone)]
struct Logs(Arc<Store>);

#[tonic::async_trait]
impl LogsService for Logs {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0.gate().await?;
        let mut out = Vec::new();
        for rl in request.into_inner().resource_logs {
            let resource = rl
                .resource
                .as_ref()
                .map(|r| attrs(&r.attributes))
                .unwrap_or_default();
            for sl in rl.scope_logs {
                for l in sl.log_records {
                    out.push(ReceivedLog {
                        body: render(l.body.as_ref()),
                        severity_number: l.severity_number,
                        severity_text: l.severity_text,
                        event_name: l.event_name,
                        attributes: attrs(&l.attributes),
                        resource: resource.clone(),
                        trace_id: hex(&l.trace_id),
                        span_id: hex(&l.span_id),
                    });
                }
            }
        }
        if let Ok(mut logs) = self.0.logs.lock() {
            logs.extend(out);
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

/// An OTLP/gRPC receiver on loopback; stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    store: Arc<Store>,
    task: JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const TRACE_SERVICE: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/";

impl OtlpReceiver {
    /// Starts a receiver on `127.0.0.1:0`.
    pub async fn start() -> Result<Self> {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a receiver on `addr` (port 0: any free port), such as the bridge address that
    /// sidecars in network namespaces reach.
    pub async fn start_at(addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let store = Arc::new(Store::default());
        // Collectors forward gzip-compressed by default.
        let traces = TraceServiceServer::new(Traces(Arc::clone(&store)))
            .accept_compressed(CompressionEncoding::Gzip);
        let logs = LogsServiceServer::new(Logs(Arc::clone(&store)))
            .accept_compressed(CompressionEncoding::Gzip);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (traces, logs) = (traces.clone(), logs.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (mut traces, mut logs) = (traces.clone(), logs.clone());
                            async move {
                                if req.uri().path().starts_with(TRACE_SERVICE) {
                                    traces.call(req).await
                                } else {
                                    logs.call(req).await
                                }
                            }
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, store, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, for `telemetry.otlp.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes how export calls are answered from now on.
    pub fn set_behaviour(&self, b: Behaviour) {
        self.store.behaviour.store(b as u8, Ordering::Relaxed);
    }

    /// Export calls received (answered or not).
    pub fn requests(&self) -> u64 {
        self.store.requests.load(Ordering::Relaxed)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.store
            .spans
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Every log record received so far.
    pub fn logs(&self) -> Vec<ReceivedLog> {
        self.store
            .logs
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }

    /// Waits until at least `n` spans satisfy `pred`; returns them.
    pub async fn wait_for_spans(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&ReceivedSpan) -> bool,
    ) -> Result<Vec<ReceivedSpan>> {
        eventually(timeout, async || {
            let got: Vec<ReceivedSpan> = self.spans().into_iter().filter(|s| pred(s)).collect();
            if got.len() >= n {
                Ok(got)
            } else {
                bail!("{} of {n} spans received: {got:#?}", got.len())
            }
        })
        .await
    }

    /// Waits until at least `n` log records satisfy `pred`; returns them.
    pub async fn wait_for_logs(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&ReceivedLog) -> bool,
    ) -> Result<Vec<ReceivedLog>> {
        eventually(timeout, async || {
            let got: Vec<ReceivedLog> = self.logs().into_iter().filter(|l| pred(l)).collect();
            if got.len() >= n {
                Ok(got)
            } else {
                bail!("{} of {n} log records received: {got:#?}", got.len())
            }
        })
        .await
    }
}

/// The `rotel-agent` binary shipped inside the `rotel` PyPI package
/// (`scripts/install-telemetry-test-deps` installs it).
pub async fn rotel_agent() -> Result<PathBuf> {
    let out = tokio::process::Command::new("python3")
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .await
        .context("cannot run python3 to locate rotel-agent")?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.is_file() {
        bail!(
            "rotel is not installed (run scripts/install-telemetry-test-deps): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(path)
}

/// The `rotel` OpenTelemetry collector on loopback, forwarding traces and logs over OTLP/gRPC
/// to `forward_to`. Killed when dropped.
#[derive(Debug)]
pub struct Rotel {
    /// `http://127.0.0.1:PORT`: where to send OTLP/gRPC.
    pub endpoint: String,
    // Fields drop in order: the process goes before its log directory.
    _daemon: Daemon,
    _dir: tempfile::TempDir,
}

impl Rotel {
    /// Starts rotel forwarding to `forward_to` (`http://127.0.0.1:PORT`) and waits until its
    /// gRPC port accepts connections.
    pub async fn start(forward_to: &str) -> Result<Self> {
        let bin = rotel_agent().await?;
        let dir = tempfile::tempdir()?;
        let grpc = crate::ports::reserved_port()?;
        let http = crate::ports::reserved_port()?;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg("start")
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
            .args(["--otlp-receiver-metrics-disabled"])
            .args(["--exporter", "otlp"])
            .args(["--otlp-exporter-endpoint", forward_to])
            .args(["--otlp-exporter-protocol", "grpc"])
            .args(["--batch-timeout", "100ms"])
            .arg("--pid-file")
            .arg(dir.path().join("rotel.pid"))
            .arg("--log-file")
            .arg(dir.path().join("rotel.log"));
        let daemon = Daemon::spawn("rotel", cmd, dir.path())?;
        let addr: SocketAddr = format!("127.0.0.1:{grpc}").parse()?;
        eventually(READY_TIMEOUT, async || {
            tokio::net::TcpStream::connect(addr)
                .await
                .with_context(|| format!("rotel is not listening on {addr} yet"))
        })
        .await?;
        Ok(Self {
            endpoint: format!("http://{addr}"),
            _daemon: daemon,
            _dir: dir,
        })
    }
}
