//! The admin server: `/live`, `/ready`, `/metrics`, `/identity`, `/policy`, `/alerts`,
//! `/detectors`. Bind it to loopback unless a
//! scraper elsewhere needs it: connections to a non-loopback address get only `/live`, `/ready`
//! and `/metrics`. It never shows key material.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use picket_common::server::{self, ListenerSettings};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::authz::PolicyStore;
use crate::forward::{self, Body};
use crate::metrics::Metrics;
use crate::tls::Credentials;

/// What the admin endpoints read.
#[derive(Debug)]
pub struct AdminState {
    /// Metrics to expose.
    pub metrics: Arc<Metrics>,
    /// The credentials, once the first certificate is installed.
    pub creds: ArcSwapOption<Credentials>,
    /// The policy store, once loaded.
    pub policy: ArcSwapOption<PolicyStore>,
    /// Set once every data-path listener is bound.
    pub listening: AtomicBool,
    /// Set when draining: readiness turns off so load balancers stop sending.
    pub draining: AtomicBool,
    /// Recent alerts are read from here.
    pub telemetry: crate::telemetry::Telemetry,
}

impl AdminState {
    /// Fresh state: not ready.
    pub fn new(metrics: Arc<Metrics>, telemetry: crate::telemetry::Telemetry) -> Self {
        Self {
            telemetry,
            metrics,
            creds: ArcSwapOption::empty(),
            policy: ArcSwapOption::empty(),
            listening: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    /// Ready: a certificate that has not expired, listeners up, not draining.
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Acquire) {
            return Err("draining");
        }
        let Some(creds) = self.creds.load_full() else {
            return Err("no certificate yet");
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        if creds.current().leaf.not_after < now {
            return Err("certificate expired");
        }
        if !self.listening.load(Ordering::Acquire) {
            return Err("listeners not bound yet");
        }
        Ok(())
    }
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(forward::boxed(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// The endpoints served on every address; the others (`/identity`, `/policy`, `/alerts`,
/// `/detectors`) only
/// to connections made to a loopback address.
pub const PUBLIC_PATHS: &[&str] = &["/live", "/ready", "/metrics"];

fn route(state: &AdminState, req: &Request<Incoming>, loopback: bool) -> Response<Body> {
    if req.method() != Method::GET {
        return forward::error_response(StatusCode::METHOD_NOT_ALLOWED, "admin endpoints take GET");
    }
    if !loopback && !PUBLIC_PATHS.contains(&req.uri().path()) {
        return forward::error_response(
            StatusCode::NOT_FOUND,
            "only /live, /ready and /metrics are served on a non-loopback address",
        );
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n".into(), "text/plain"),
        "/ready" => match state.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n".into(), "text/plain"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
                "text/plain",
            ),
        },
        "/metrics" => text(
            StatusCode::OK,
            state.metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/identity" => match state.creds.load_full() {
            None => forward::error_response(StatusCode::SERVICE_UNAVAILABLE, "no certificate yet"),
            Some(creds) => {
                let snap = creds.current();
                let body = serde_json::json!({
                    "spiffe_id": snap.leaf.id.to_string(),
                    "serial": snap.leaf.serial_hex,
                    "not_before": rfc3339(snap.leaf.not_before),
                    "not_after": rfc3339(snap.leaf.not_after),
                    "issuer": snap.leaf.issuer,
                    "trust_bundle_roots": snap.roots.len(),
                });
                text(StatusCode::OK, format!("{body}\n"), "application/json")
            }
        },
        "/alerts" => text(
            StatusCode::OK,
            state.telemetry.recent_alerts_json(),
            "application/json",
        ),
        "/detectors" => text(
            StatusCode::OK,
            state.telemetry.detector_state_json(),
            "application/json",
        ),
        "/policy" => match state.policy.load_full() {
            None => {
                forward::error_response(StatusCode::SERVICE_UNAVAILABLE, "no policy loaded yet")
            }
            Some(store) => {
                let active = store.current();
                let policies: Vec<serde_json::Value> = active
                    .set
                    .policies()
                    .map(|p| serde_json::to_value(p).unwrap_or(serde_json::Value::Null))
                    .collect();
                let body = serde_json::json!({
                    "sources_hash": active.set.sources_hash(),
                    "files": active.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
                    "cluster": active.cluster,
                    "policies": policies,
                });
                text(StatusCode::OK, format!("{body}\n"), "application/json")
            }
        },
        _ => forward::error_response(StatusCode::NOT_FOUND, "unknown admin path"),
    }
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Serves the admin endpoints until `shutdown`, with the same connection limit and header
/// timeout as every other listener (`settings`).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    settings: ListenerSettings,
    shutdown: CancellationToken,
) {
    let http = server::http_builder(&settings);
    let tracker = TaskTracker::new();
    server::accept_loop(
        listener,
        &settings,
        "admin",
        &shutdown,
        &tracker,
        |_| {},
        |tcp, _| {
            let state = Arc::clone(&state);
            let http = http.clone();
            // The address the client connected to: on a listener bound to 0.0.0.0, a
            // connection to 127.0.0.1 sees every endpoint and one to the pod's address only
            // the public ones.
            let loopback = tcp
                .local_addr()
                .is_ok_and(|a| a.ip().to_canonical().is_loopback());
            async move {
                let svc = hyper::service::service_fn(move |req| {
                    let resp = route(&state, &req, loopback);
                    async move { Ok::<_, Infallible>(resp) }
                });
                if let Err(e) = http.serve_connection(TokioIo::new(tcp), svc).await {
                    tracing::debug!(error = %e, "admin connection ended with an error");
                }
            }
        },
    )
    .await;
}
