//! Telemetry through the real sidecars: one request through the frontend and orders sidecars
//! is one trace (the caller's `traceparent` continued to the app), alerts arrive as OTel log
//! records and span events, rotel as a third-party collector in between, `/metrics` read by
//! the reference Prometheus parser, the detectors against scripted attacks, `picket analyze`
//! on flow logs the sidecars wrote (its policy enforced by fresh sidecars, its report rendered
//! by headless Chromium), and a collector that is down.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use picket_proxy::echo::Description;
use picket_proxy::telemetry::{AlertKind, LineType};
use picket_tests::analyze::{analyze, analyze_html, analyze_json};
use picket_tests::clients::{body_text, curl, empty, request, send};
use picket_tests::otlp::{OtlpReceiver, ReceivedSpan, Rotel, SPAN_KIND_CLIENT, SPAN_KIND_SERVER};
use picket_tests::process::{picket, run_ok};
use picket_tests::prom::{Exposition, scrape};
use picket_tests::telemetry::{TelemetryYaml, alerts, log_lines, wait_for_flows, write_baseline};
use picket_tests::{
    App, Mesh, MeshOptions, Sidecar, TestCa, TestProxy, Upstream, assert_eventually, browser,
    closed_port, eventually, spiffe_id,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// The frontend may read and create orders (and read `/status/*` answers of the echo app);
/// everything else is denied by the mesh default.
const ORDERS_POLICY: &str = r#"
apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: { name: orders-read, namespace: shop }
spec:
  action: ALLOW
  rules:
  - from: [{ source: { principals: ["cluster.local/ns/shop/sa/frontend"] } }]
    to: [{ operation: { methods: ["GET", "POST"], paths: ["/api/orders", "/api/orders/*", "/status/*"] } }]
"#;

/// `method path` from an application to the sidecar outbound listener at `outbound`, with
/// `Host: host` and `headers`, over HTTP/1.1: the status and the body.
async fn call(
    outbound: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, String)> {
    let method = Method::from_bytes(method.as_bytes())?;
    let mut req = request(method, Version::HTTP_11, host, path, empty())?;
    for (name, value) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_str(value)?,
        );
    }
    let resp = send(outbound, req).await?;
    let status = resp.status();
    Ok((status, body_text(resp).await?))
}

/// The value of header `name` as the echo app received it.
fn received_header<'d>(seen: &'d Description, name: &str) -> Option<&'d str> {
    seen.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Both sidecars export to `endpoint`; orders enforces [`ORDERS_POLICY`].
async fn traced_mesh(endpoint: &str) -> Result<Mesh> {
    Mesh::start_with(MeshOptions {
        extra_yaml: TelemetryYaml::new().otlp(endpoint).to_yaml(),
        orders_policy: Some(ORDERS_POLICY.to_owned()),
        ..MeshOptions::default()
    })
    .await
}

/// The client span and the server span of one request, checked to be linked: same trace,
/// the server span a child of the client span, each from its own sidecar.
fn client_and_server<'s>(
    spans: &'s [ReceivedSpan],
    frontend: &str,
    orders: &str,
) -> Result<(&'s ReceivedSpan, &'s ReceivedSpan)> {
    ensure!(spans.len() == 2, "expected two spans: {spans:#?}");
    let client = spans
        .iter()
        .find(|s| s.kind == SPAN_KIND_CLIENT)
        .context("no client span")?;
    let server = spans
        .iter()
        .find(|s| s.kind == SPAN_KIND_SERVER)
        .context("no server span")?;
    ensure!(
        server.is_child_of(client),
        "the orders server span is not a child of the frontend client span: {spans:#?}"
    );
    for (span, identity, service) in [
        (client, frontend, "frontend.shop"),
        (server, orders, "orders.shop"),
    ] {
        ensure!(
            span.resource.get("picket.identity").map(String::as_str) == Some(identity)
                && span.resource.get("service.name").map(String::as_str) == Some(service),
            "span from the wrong sidecar: {span:#?}"
        );
    }
    Ok((client, server))
}

/// Checks `attrs` on `span`.
fn expect_attrs(span: &ReceivedSpan, attrs: &[(&str, &str)]) -> Result<()> {
    for (key, want) in attrs {
        ensure!(
            span.attr(key) == Some(*want),
            "{key} is {:?}, expected {want:?}, on {span:#?}",
            span.attr(key)
        );
    }
    Ok(())
}

/// The `picket.alert` events of kind `kind` on `span`.
fn alert_events(span: &ReceivedSpan, kind: &str) -> usize {
    span.events
        .iter()
        .filter(|(name, a)| {
            name == "picket.alert" && a.get("picket.alert.kind").map(String::as_str) == Some(kind)
        })
        .count()
}

#[tokio::test]
async fn one_request_through_both_sidecars_is_one_trace_and_a_probe_is_an_alert_log_and_event()
-> Result<()> {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const APP_SPAN: &str = "00f067aa0ba902b7";
    let rx = OtlpReceiver::start().await?;
    let mesh = traced_mesh(&rx.endpoint()).await?;
    let (fe, or) = (spiffe_id("shop", "frontend"), spiffe_id("shop", "orders"));

    // The frontend's app is traced itself: its sidecar continues the app's trace.
    let traceparent = format!("00-{TRACE}-{APP_SPAN}-01");
    let (status, body) = call(
        mesh.outbound(),
        "GET",
        "orders",
        "/api/orders/42",
        &[("traceparent", &traceparent)],
    )
    .await?;
    ensure!(status == StatusCode::OK, "{status}: {body}");
    let seen: Description = serde_json::from_str(&body)?;

    let spans = rx.wait_for_spans(2, WAIT, |s| s.trace_id == TRACE).await?;
    let (client, server) = client_and_server(&spans, &fe, &or)?;
    ensure!(
        client.parent_span_id == APP_SPAN,
        "the frontend client span is not a child of the app's span: {client:#?}"
    );
    // The app behind orders continues the same trace under the orders server span.
    let want = format!("00-{TRACE}-{}-01", server.span_id);
    ensure!(
        received_header(&seen, "traceparent") == Some(want.as_str()),
        "the app got traceparent {:?}, expected {want}",
        received_header(&seen, "traceparent")
    );
    let inbound_port = mesh.orders.addrs().inbound.port().to_string();
    let common = [
        ("http.request.method", "GET"),
        ("url.path", "/api/orders/42"),
        ("http.response.status_code", "200"),
        ("server.address", "orders"),
        ("network.peer.address", "127.0.0.1"),
        ("picket.source.identity", fe.as_str()),
        ("picket.destination.identity", or.as_str()),
    ];
    expect_attrs(client, &common)?;
    expect_attrs(server, &common)?;
    expect_attrs(client, &[("network.peer.port", &inbound_port)])?;
    expect_attrs(
        server,
        &[
            ("picket.authz.verdict", "allow"),
            ("picket.authz.policy", "shop/orders-read"),
        ],
    )?;
    for span in [client, server] {
        ensure!(span.name == "GET /api/orders/{id}", "{span:#?}");
        ensure!(span.status_code != 2, "a 200 marked as an error: {span:#?}");
    }

    // A probe of /admin: denied by orders, and an alert in both sidecars, each a span event
    // on its own span and a log record correlated with it.
    let (status, body) = call(mesh.outbound(), "GET", "orders", "/admin", &[]).await?;
    ensure!(status == StatusCode::FORBIDDEN, "{status}: {body}");
    let probe = rx
        .wait_for_spans(2, WAIT, |s| s.attr("url.path") == Some("/admin"))
        .await?;
    let (client, server) = client_and_server(&probe, &fe, &or)?;
    expect_attrs(
        server,
        &[
            ("http.response.status_code", "403"),
            ("picket.authz.verdict", "deny"),
        ],
    )?;
    let logs = rx
        .wait_for_logs(2, WAIT, |l| {
            l.attr("picket.alert.kind") == Some("sensitive_path")
        })
        .await?;
    ensure!(logs.len() == 2, "one alert per sidecar: {logs:#?}");
    for span in [client, server] {
        ensure!(
            alert_events(span, "sensitive_path") == 1,
            "no alert event on {span:#?}"
        );
        let log = logs
            .iter()
            .find(|l| l.resource.get("picket.identity") == span.resource.get("picket.identity"))
            .with_context(|| format!("no alert log record from {:?}", span.resource))?;
        ensure!(
            log.trace_id == span.trace_id && log.span_id == span.span_id,
            "the log record is not correlated with its request: {log:#?} {span:#?}"
        );
        // OTLP severity 13 is WARN: a refused probe is a medium alert.
        ensure!(
            log.event_name == "picket.alert"
                && log.severity_number == 13
                && log.severity_text == "medium"
                && log.body.contains("/admin")
                && log.attr("picket.source.identity") == Some(fe.as_str()),
            "{log:#?}"
        );
    }
    let listed = alerts(&mesh.orders).await?;
    ensure!(
        listed.len() == 1 && listed[0].kind == AlertKind::SensitivePath,
        "orders /alerts: {listed:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn rotel_between_the_sidecars_and_the_receiver_carries_spans_and_alert_logs() -> Result<()> {
    const TRACE: &str = "80f198ee56343ba864fe8b2a57d3eff7";
    let rx = OtlpReceiver::start().await?;
    let rotel = Rotel::start(&rx.endpoint()).await?;
    let mesh = traced_mesh(&rotel.endpoint).await?;
    let (fe, or) = (spiffe_id("shop", "frontend"), spiffe_id("shop", "orders"));

    let traceparent = format!("00-{TRACE}-e457b5a2e4d86bd1-01");
    let (status, body) = call(
        mesh.outbound(),
        "POST",
        "orders",
        "/api/orders",
        &[("traceparent", &traceparent)],
    )
    .await?;
    ensure!(status == StatusCode::OK, "{status}: {body}");
    let (status, _) = call(mesh.outbound(), "GET", "orders", "/.env", &[]).await?;
    ensure!(status == StatusCode::FORBIDDEN);

    let spans = rx.wait_for_spans(2, WAIT, |s| s.trace_id == TRACE).await?;
    let (client, server) = client_and_server(&spans, &fe, &or)?;
    ensure!(client.parent_span_id == "e457b5a2e4d86bd1", "{client:#?}");
    expect_attrs(
        server,
        &[
            ("http.request.method", "POST"),
            ("url.path", "/api/orders"),
            ("picket.authz.policy", "shop/orders-read"),
        ],
    )?;
    let logs = rx
        .wait_for_logs(2, WAIT, |l| {
            l.attr("picket.alert.kind") == Some("sensitive_path") && l.body.contains("/.env")
        })
        .await?;
    let from: BTreeSet<&str> = logs
        .iter()
        .filter_map(|l| l.resource.get("service.name").map(String::as_str))
        .collect();
    ensure!(
        from == BTreeSet::from(["frontend.shop", "orders.shop"]),
        "{logs:#?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Metrics.

/// The samples called `name` as `(labels, value)`, labels rendered `k=v,k=v`, sorted.
fn series(exp: &Exposition, name: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = exp
        .samples(name)
        .into_iter()
        .map(|(labels, v)| {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            (l.join(","), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn owned(want: &[(&str, f64)]) -> Vec<(String, f64)> {
    want.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// Types and help of the families every sidecar with traffic exposes, and labels that never
/// carry paths or addresses.
fn check_families(exp: &Exposition, who: &str) -> Result<()> {
    for (name, kind) in [
        ("picket_requests", "counter"),
        ("picket_request_duration_seconds", "histogram"),
        ("picket_tcp_connections", "counter"),
        ("picket_cert_expiry_timestamp_seconds", "gauge"),
        ("picket_alerts", "counter"),
        ("picket_telemetry_dropped", "counter"),
    ] {
        let f = exp
            .family(name)
            .with_context(|| format!("{who}: no family {name}:\n{}", exp.text))?;
        ensure!(
            f.kind == kind && !f.help.is_empty(),
            "{who}: {name} is a {} with help {:?}, expected a {kind}",
            f.kind,
            f.help
        );
    }
    for f in &exp.families {
        for s in &f.samples {
            for v in s.labels.values() {
                ensure!(
                    !v.contains("/api") && !v.contains("/admin") && !v.contains("127.0.0.1"),
                    "{who}: unbounded label value in {s:?}"
                );
            }
        }
    }
    let expiry = exp
        .value("picket_cert_expiry_timestamp_seconds", &[])
        .context("no certificate expiry")?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    ensure!(expiry > now, "{who}: the certificate expired at {expiry}");
    Ok(())
}

/// The request duration histogram of `direction`: `n` observations, cumulative buckets.
fn check_histogram(exp: &Exposition, direction: &str, n: f64) -> Result<()> {
    let dir = [("direction", direction)];
    let count = exp.value("picket_request_duration_seconds_count", &dir);
    ensure!(count == Some(n), "{direction}: histogram count {count:?}");
    let mut buckets: Vec<(f64, f64)> = exp
        .samples("picket_request_duration_seconds_bucket")
        .into_iter()
        .filter(|(l, _)| l.get("direction").map(String::as_str) == Some(direction))
        .map(|(l, v)| {
            let le = l.get("le").map_or("", String::as_str);
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            (le, v)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    ensure!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{direction}: buckets not cumulative: {buckets:?}"
    );
    ensure!(
        buckets.first().is_some_and(|b| b.0 == 0.0001)
            && buckets.last() == Some(&(f64::INFINITY, n)),
        "{direction}: buckets {buckets:?}"
    );
    Ok(())
}

const NO_DROPS: [(&str, f64); 6] = [
    ("reason=queue_full,sink=flow_log", 0.0),
    ("reason=queue_full,sink=logs", 0.0),
    ("reason=queue_full,sink=traces", 0.0),
    ("reason=sink_failed,sink=flow_log", 0.0),
    ("reason=sink_failed,sink=logs", 0.0),
    ("reason=sink_failed,sink=traces", 0.0),
];

#[tokio::test]
async fn metrics_of_both_sidecars_parse_with_the_prometheus_parser_and_count_the_traffic_sent()
-> Result<()> {
    let rx = OtlpReceiver::start().await?;
    let dir = tempfile::tempdir()?;
    let telemetry = |name: &str| {
        TelemetryYaml::new()
            .otlp(&rx.endpoint())
            .flow_log(&dir.path().join(name))
            .to_yaml()
    };
    let mesh = Mesh::start_with(MeshOptions {
        orders_policy: Some(ORDERS_POLICY.to_owned()),
        orders_yaml: telemetry("orders.jsonl"),
        frontend_yaml: telemetry("frontend.jsonl"),
        ..MeshOptions::default()
    })
    .await?;
    let traffic: [(&str, &str, usize, u16); 5] = [
        ("GET", "/api/orders/7", 3, 200),
        ("GET", "/status/404", 1, 404),
        ("GET", "/status/503", 2, 503),
        ("DELETE", "/api/orders/7", 2, 403),
        ("GET", "/admin", 1, 403),
    ];
    for (method, path, times, want) in traffic {
        for _ in 0..times {
            let (status, body) = call(mesh.outbound(), method, "orders", path, &[]).await?;
            ensure!(status == want, "{method} {path}: {status} {body}");
        }
    }
    // A plaintext attempt on the meshed port.
    let url = format!("http://{}/", mesh.orders.addrs().inbound);
    let got = curl(&["-H", "Host: orders", &url]).await?;
    ensure!(got.status != 200, "plaintext got an answer: {got:?}");

    // The handshake failure is counted as the connection is refused, not before curl returns.
    let orders = eventually(WAIT, async || {
        let exp = scrape(mesh.orders.addrs().admin).await?;
        ensure!(
            exp.value(
                "picket_tls_handshake_failures_total",
                &[("direction", "inbound"), ("reason", "not_tls")]
            ) == Some(1.0),
            "no handshake failure counted yet"
        );
        Ok(exp)
    })
    .await?;
    ensure!(
        orders
            .content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        orders.content_type
    );
    check_families(&orders, "orders")?;
    for (name, kind) in [
        ("picket_authz_decisions", "counter"),
        ("picket_tls_handshake_failures", "counter"),
    ] {
        ensure!(
            orders.family(name).is_some_and(|f| f.kind == kind),
            "orders: {name}"
        );
    }
    let checks: [(&str, Vec<(&str, f64)>); 6] = [
        (
            "picket_requests_total",
            vec![
                ("direction=inbound,status_class=2xx", 3.0),
                ("direction=inbound,status_class=4xx", 4.0),
                ("direction=inbound,status_class=5xx", 2.0),
            ],
        ),
        (
            "picket_authz_decisions_total",
            vec![
                (
                    "mode=enforce,policy=none,reason=no-allow-match,verdict=deny",
                    3.0,
                ),
                (
                    "mode=enforce,policy=shop/orders-read,reason=allow-match,verdict=allow",
                    6.0,
                ),
            ],
        ),
        (
            "picket_tls_handshake_failures_total",
            vec![("direction=inbound,reason=not_tls", 1.0)],
        ),
        (
            "picket_tcp_connections_total",
            vec![
                ("direction=inbound,outcome=accepted", 1.0),
                ("direction=inbound,outcome=tls_failed", 1.0),
            ],
        ),
        (
            "picket_alerts_total",
            vec![
                ("kind=sensitive_path,severity=medium", 1.0),
                ("kind=unauthenticated,severity=medium", 1.0),
            ],
        ),
        ("picket_telemetry_dropped_total", NO_DROPS.to_vec()),
    ];
    for (name, want) in checks {
        ensure!(
            series(&orders, name) == owned(&want),
            "orders {name}: {:?}, expected {want:?}",
            series(&orders, name)
        );
    }
    check_histogram(&orders, "inbound", 9.0)?;

    let frontend = scrape(mesh.frontend.addrs().admin).await?;
    check_families(&frontend, "frontend")?;
    let checks: [(&str, Vec<(&str, f64)>); 5] = [
        (
            "picket_requests_total",
            vec![
                ("direction=outbound,status_class=2xx", 3.0),
                ("direction=outbound,status_class=4xx", 4.0),
                ("direction=outbound,status_class=5xx", 2.0),
            ],
        ),
        (
            "picket_tcp_connections_total",
            vec![("direction=outbound,outcome=accepted", 1.0)],
        ),
        ("picket_authz_decisions_total", vec![]),
        (
            "picket_alerts_total",
            vec![("kind=sensitive_path,severity=medium", 1.0)],
        ),
        ("picket_telemetry_dropped_total", NO_DROPS.to_vec()),
    ];
    for (name, want) in checks {
        ensure!(
            series(&frontend, name) == owned(&want),
            "frontend {name}: {:?}, expected {want:?}",
            series(&frontend, name)
        );
    }
    check_histogram(&frontend, "outbound", 9.0)?;

    // One flow record per request in each sidecar's log, with the alerts beside them.
    let (orders_log, frontend_log) = (
        dir.path().join("orders.jsonl"),
        dir.path().join("frontend.jsonl"),
    );
    let inbound = wait_for_flows(&orders_log, 9, WAIT).await?;
    let outbound = wait_for_flows(&frontend_log, 9, WAIT).await?;
    // Each inbound record names the caller sidecar's client span as its parent, which pairs
    // the two records of a request; `picket analyze` counts each pair once.
    let ids = |flows: &[Value], span: &str| -> BTreeSet<(String, String)> {
        flows
            .iter()
            .filter_map(|f| {
                Some((
                    f["trace_id"].as_str()?.to_owned(),
                    f[span].as_str()?.to_owned(),
                ))
            })
            .collect()
    };
    let client_spans = ids(&outbound, "span_id");
    ensure!(
        client_spans.len() == 9 && ids(&inbound, "parent_span_id") == client_spans,
        "inbound parents do not name the client spans: {inbound:#?} {outbound:#?}"
    );
    let report = analyze_json(&[&orders_log, &frontend_log], &[]).await?;
    ensure!(
        report["summary"]["paired"] == 9 && report["edges"][0]["requests"] == 9,
        "{report:#}"
    );
    assert_eventually!(
        WAIT,
        log_lines(&dir.path().join("orders.jsonl"), LineType::Alert)?.len() == 2,
        "orders' alert lines"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Detectors.

/// One thing the (compromised) frontend's app does.
#[derive(Debug, Clone)]
enum Step {
    /// `method path` to upstream `host` through the shared outbound listener, answered `status`.
    Http {
        host: String,
        method: &'static str,
        path: String,
        status: u16,
    },
    /// A plaintext connection to the orders sidecar's meshed port.
    Plaintext,
}

fn http(host: &str, method: &'static str, path: impl Into<String>, status: u16) -> Step {
    Step::Http {
        host: host.to_owned(),
        method,
        path: path.into(),
        status,
    }
}

/// A scripted run and the alert kinds each sidecar must list afterwards, no more, no fewer.
#[derive(Debug)]
struct Scenario {
    name: &'static str,
    steps: Vec<Step>,
    orders: &'static [AlertKind],
    frontend: &'static [AlertKind],
    payments: &'static [AlertKind],
}

/// Routes the frontend used before: its baseline. The DELETE was tried, and denied, before.
const KNOWN_ROUTES: [&str; 4] = [
    "GET /api/orders",
    "GET /api/orders/{id}",
    "POST /api/orders",
    "DELETE /api/orders/{id}",
];

/// The frontend's normal day: reading and creating orders, new order IDs every time.
fn benign(n: usize) -> Vec<Step> {
    (0..n)
        .map(|i| match i % 3 {
            0 => http("orders", "GET", format!("/api/orders/{}", 1000 + i), 200),
            1 => http("orders", "POST", "/api/orders", 200),
            _ => http("orders", "GET", "/api/orders", 200),
        })
        .collect()
}

/// Ports (upstreams `scan-N`) and identities (upstreams `svc-N`) the frontend can name.
const SCAN_WIDTH: usize = 20;

fn scenarios() -> Vec<Scenario> {
    use AlertKind::*;
    vec![
        Scenario {
            name: "benign replay",
            steps: benign(SCAN_WIDTH),
            orders: &[],
            frontend: &[],
            payments: &[],
        },
        Scenario {
            name: "scan of 20 paths",
            steps: (0..SCAN_WIDTH)
                .map(|i| http("orders", "GET", format!("/probe-{i}"), 403))
                .collect(),
            orders: &[NewEdge, PathScan, DenyBurst],
            frontend: &[NewEdge, PathScan],
            payments: &[],
        },
        Scenario {
            name: "scan of 20 ports",
            steps: (0..SCAN_WIDTH)
                .map(|i| http(&format!("scan-{i}"), "GET", "/api/orders/1", 503))
                .collect(),
            orders: &[],
            frontend: &[NewEdge, PortScan],
            payments: &[],
        },
        Scenario {
            name: "fan-out to 20 identities",
            steps: (0..SCAN_WIDTH)
                .map(|i| http(&format!("svc-{i}"), "GET", "/api/orders/1", 503))
                .collect(),
            orders: &[],
            frontend: &[NewEdge, FanOut],
            payments: &[],
        },
        Scenario {
            name: "a service never called before",
            steps: vec![http("payments", "POST", "/api/charge", 200)],
            orders: &[],
            frontend: &[NewEdge],
            payments: &[NewEdge],
        },
        Scenario {
            name: "probes of /admin and /.env",
            steps: vec![
                http("orders", "GET", "/admin", 403),
                http("orders", "GET", "/.env", 403),
            ],
            orders: &[NewEdge, SensitivePath],
            frontend: &[NewEdge, SensitivePath],
            payments: &[],
        },
        Scenario {
            name: "replay of a denied call",
            steps: (0..SCAN_WIDTH)
                .map(|_| http("orders", "DELETE", "/api/orders/1007", 403))
                .collect(),
            orders: &[DenyBurst],
            frontend: &[],
            payments: &[],
        },
        Scenario {
            name: "plaintext on the meshed port",
            steps: vec![Step::Plaintext],
            orders: &[Unauthenticated],
            frontend: &[],
            payments: &[],
        },
    ]
}

/// Detectors with a baseline and no learning, and the documented defaults written out.
fn detectors(baseline: &Path) -> String {
    TelemetryYaml::new()
        .baseline(baseline)
        .detector("window", "60s")
        .detector("fanout_threshold", "10")
        .detector("deny_burst_threshold", "10")
        .detector("not_found_burst_threshold", "20")
        .detector("rate_limit", "5m")
        .to_yaml()
}

/// What every scenario shares: the CA, the apps, payments (which only `orders` calls), the
/// orders baseline, and the loopback ports nothing listens on that the frontend may scan.
#[derive(Debug)]
struct Rig {
    ca: TestCa,
    dir: tempfile::TempDir,
    orders_app: App,
    _payments_app: App,
    payments: TestProxy,
    orders_baseline: PathBuf,
    scan_ports: Vec<SocketAddr>,
    fan_out_port: SocketAddr,
}

impl Rig {
    async fn start() -> Result<Self> {
        let ca = TestCa::start().await?;
        let dir = tempfile::tempdir()?;
        let orders_app = App::http("orders").await?;
        let payments_app = App::http("payments").await?;
        let (fe, or, pay) = (
            spiffe_id("shop", "frontend"),
            spiffe_id("shop", "orders"),
            spiffe_id("shop", "payments"),
        );
        let payments_baseline = dir.path().join("payments-baseline.jsonl");
        write_baseline(
            &payments_baseline,
            &[(&or, &pay, payments_app.addr().port(), "POST /api/charge")],
        )?;
        let payments = TestProxy::spawn(
            &ca,
            Sidecar::new("shop", "payments", payments_app.addr())
                .yaml(&detectors(&payments_baseline)),
        )
        .await?;
        // Inbound flow records carry the app's port, the port policy sees.
        let orders_baseline = dir.path().join("orders-baseline.jsonl");
        let edges: Vec<(&str, &str, u16, &str)> = KNOWN_ROUTES
            .iter()
            .map(|r| (fe.as_str(), or.as_str(), orders_app.addr().port(), *r))
            .collect();
        write_baseline(&orders_baseline, &edges)?;
        let mut scan_ports = Vec::new();
        for _ in 0..SCAN_WIDTH {
            scan_ports.push(closed_port()?);
        }
        Ok(Self {
            ca,
            orders_app,
            _payments_app: payments_app,
            payments,
            orders_baseline,
            scan_ports,
            fan_out_port: closed_port()?,
            dir,
        })
    }

    /// A fresh orders sidecar and a fresh frontend in front of it, both with detectors that
    /// know the frontend's usual routes.
    async fn pair(&self, n: usize) -> Result<(TestProxy, TestProxy)> {
        let or = spiffe_id("shop", "orders");
        let orders = TestProxy::spawn(
            &self.ca,
            Sidecar::new("shop", "orders", self.orders_app.addr())
                .policy(ORDERS_POLICY)
                .yaml(&detectors(&self.orders_baseline)),
        )
        .await?;
        let inbound = orders.addrs().inbound;
        // Outbound flow records carry the port dialled: the orders sidecar's.
        let baseline = self.dir.path().join(format!("frontend-baseline-{n}.jsonl"));
        let fe = spiffe_id("shop", "frontend");
        let edges: Vec<(&str, &str, u16, &str)> = KNOWN_ROUTES
            .iter()
            .map(|r| (fe.as_str(), or.as_str(), inbound.port(), *r))
            .collect();
        write_baseline(&baseline, &edges)?;
        let mut sidecar = Sidecar::new("shop", "frontend", closed_port()?)
            .upstream(Upstream::http("orders", inbound, &or))
            .upstream(Upstream::http(
                "payments",
                self.payments.addrs().inbound,
                self.payments.spiffe_id(),
            ))
            .yaml(&detectors(&baseline));
        for (i, port) in self.scan_ports.iter().enumerate() {
            sidecar = sidecar.upstream(Upstream::http(&format!("scan-{i}"), *port, &or));
        }
        for i in 0..SCAN_WIDTH {
            let id = spiffe_id("shop", &format!("svc-{i}"));
            sidecar = sidecar.upstream(Upstream::http(&format!("svc-{i}"), self.fan_out_port, &id));
        }
        let frontend = TestProxy::spawn(&self.ca, sidecar).await?;
        Ok((orders, frontend))
    }
}

fn kinds(list: &[picket_proxy::telemetry::Alert]) -> BTreeSet<AlertKind> {
    list.iter().map(|a| a.kind).collect()
}

/// Polls until `proxy` lists at least the kinds of `want` after its first `skip` alerts, then
/// requires exactly those kinds. Alerts raised inside a request are listed before its answer
/// leaves the sidecar; a refused handshake may be listed a moment after the client gave up.
async fn expect_kinds(
    proxy: &TestProxy,
    skip: usize,
    want: &[AlertKind],
    what: &str,
) -> Result<()> {
    let want: BTreeSet<AlertKind> = want.iter().copied().collect();
    let got = eventually(WAIT, async || {
        let listed = alerts(proxy).await?;
        let got = kinds(listed.get(skip..).unwrap_or_default());
        ensure!(got.is_superset(&want), "{what}: {got:?} so far");
        Ok(listed)
    })
    .await?;
    let got_kinds = kinds(got.get(skip..).unwrap_or_default());
    ensure!(
        got_kinds == want,
        "{what}: alert kinds {got_kinds:?}, expected {want:?}: {got:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn detectors_raise_exactly_the_expected_alerts_for_scripted_attacks_and_none_for_a_benign_replay()
-> Result<()> {
    let rig = Rig::start().await?;
    let mut payments_seen = 0;
    for (n, scenario) in scenarios().into_iter().enumerate() {
        let name = scenario.name;
        let (orders, frontend) = rig.pair(n).await?;
        for step in &scenario.steps {
            match step {
                Step::Http {
                    host,
                    method,
                    path,
                    status,
                } => {
                    let (got, body) =
                        call(frontend.addrs().outbound, method, host, path, &[]).await?;
                    ensure!(
                        got.as_u16() == *status,
                        "{name}: {method} {path} to {host}: {got} {body}"
                    );
                }
                Step::Plaintext => {
                    let url = format!("http://{}/", orders.addrs().inbound);
                    let got = curl(&["-H", "Host: orders", &url]).await?;
                    ensure!(got.status != 200, "{name}: plaintext answered: {got:?}");
                }
            }
        }
        expect_kinds(&orders, 0, scenario.orders, &format!("{name}, orders")).await?;
        expect_kinds(
            &frontend,
            0,
            scenario.frontend,
            &format!("{name}, frontend"),
        )
        .await?;
        expect_kinds(
            &rig.payments,
            payments_seen,
            scenario.payments,
            &format!("{name}, payments"),
        )
        .await?;
        payments_seen = alerts(&rig.payments).await?.len();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `picket analyze` on what the sidecars recorded.

/// One call: the workload whose app calls, the upstream it names, method and path.
type Call = (&'static str, &'static str, &'static str, &'static str);

/// Normal traffic: the frontend reads and creates orders; orders charges payments.
const NORMAL: [Call; 8] = [
    ("frontend", "orders", "GET", "/api/orders/1"),
    ("frontend", "orders", "GET", "/api/orders/2"),
    ("frontend", "orders", "GET", "/api/orders/3"),
    ("frontend", "orders", "GET", "/api/orders/4"),
    ("frontend", "orders", "GET", "/api/orders"),
    ("frontend", "orders", "POST", "/api/orders"),
    ("orders", "payments", "POST", "/api/charge"),
    ("orders", "payments", "POST", "/api/charge"),
];

/// The compromised frontend: charges payments itself, probes orders' /admin, deletes an order.
const ATTACK: [Call; 3] = [
    ("frontend", "payments", "POST", "/api/charge"),
    ("frontend", "orders", "GET", "/admin"),
    ("frontend", "orders", "DELETE", "/api/orders/3"),
];

/// Three workloads, each sidecar with the label `app` = its service account: payments,
/// orders (which calls payments) and frontend (which may call both).
#[derive(Debug)]
struct Shop {
    payments: TestProxy,
    orders: TestProxy,
    frontend: TestProxy,
}

impl Shop {
    /// Sidecars in front of `apps` (orders, payments) enforcing `policy` (`None`: any
    /// authenticated peer) with `yaml(service_account)` appended to each configuration.
    async fn start(
        ca: &TestCa,
        apps: (&App, &App),
        policy: Option<&str>,
        yaml: impl Fn(&str) -> String,
    ) -> Result<Self> {
        let sidecar = |sa: &str, app: SocketAddr| {
            let s = Sidecar::new("shop", sa, app)
                .label("app", sa)
                .yaml(&yaml(sa));
            match policy {
                Some(p) => s.policy(p),
                None => s,
            }
        };
        let payments = TestProxy::spawn(ca, sidecar("payments", apps.1.addr())).await?;
        let to_payments =
            Upstream::http("payments", payments.addrs().inbound, payments.spiffe_id());
        let orders = TestProxy::spawn(
            ca,
            sidecar("orders", apps.0.addr()).upstream(to_payments.clone()),
        )
        .await?;
        let to_orders = Upstream::http("orders", orders.addrs().inbound, orders.spiffe_id());
        let frontend = TestProxy::spawn(
            ca,
            sidecar("frontend", closed_port()?)
                .upstream(to_orders)
                .upstream(to_payments),
        )
        .await?;
        Ok(Self {
            payments,
            orders,
            frontend,
        })
    }

    /// Plays `calls`, each from its workload's app through its sidecar; each must be
    /// answered `status`.
    async fn play(&self, calls: &[Call], status: StatusCode) -> Result<()> {
        for (from, to, method, path) in calls {
            let sidecar = match *from {
                "frontend" => &self.frontend,
                "orders" => &self.orders,
                _ => &self.payments,
            };
            let (got, body) = call(sidecar.addrs().outbound, method, to, path, &[]).await?;
            ensure!(
                got == status,
                "{from} -> {to} {method} {path}: {got}, expected {status}: {body}"
            );
        }
        Ok(())
    }
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|a| a.iter().filter_map(|n| n["name"].as_str()).collect())
        .unwrap_or_default()
}

/// The report's edge `source -> destination`.
fn edge<'r>(report: &'r Value, source: &str, destination: &str) -> Result<&'r Value> {
    report["edges"]
        .as_array()
        .context("no edges")?
        .iter()
        .find(|e| e["source"] == source && e["destination"] == destination)
        .with_context(|| format!("no edge {source} -> {destination}: {report:#}"))
}

#[tokio::test]
async fn analyze_on_the_sidecars_flow_logs_suggests_a_policy_that_admits_normal_traffic_and_denies_the_attack()
-> Result<()> {
    let ca = TestCa::start().await?;
    let dir = tempfile::tempdir()?;
    let apps = (&App::http("orders").await?, &App::http("payments").await?);
    let log = |sa: &str| dir.path().join(format!("{sa}.jsonl"));
    let (fe, or, pay) = (
        spiffe_id("shop", "frontend"),
        spiffe_id("shop", "orders"),
        spiffe_id("shop", "payments"),
    );

    // Recording, under a policy that admits every authenticated peer: normal traffic, the
    // end of the baseline period, then the attack.
    let shop = Shop::start(&ca, apps, None, |sa| {
        TelemetryYaml::new().flow_log(&log(sa)).to_yaml()
    })
    .await?;
    shop.play(&NORMAL, StatusCode::OK).await?;
    let until = time::OffsetDateTime::now_utc();
    // Flow times are compared in milliseconds: start the attack in a later one.
    eventually(WAIT, async || {
        let now = time::OffsetDateTime::now_utc();
        ensure!(
            now - until > time::Duration::milliseconds(2),
            "same millisecond"
        );
        Ok(())
    })
    .await?;
    shop.play(&ATTACK, StatusCode::OK).await?;
    // frontend: 6 + 3 outbound; orders: 6 + 2 inbound, 2 outbound; payments: 2 + 1 inbound.
    for (sa, n) in [("frontend", 9), ("orders", 10), ("payments", 3)] {
        wait_for_flows(&log(sa), n, WAIT).await?;
    }
    drop(shop);
    let logs: Vec<PathBuf> = ["frontend", "orders", "payments"]
        .iter()
        .map(|sa| log(sa))
        .collect();
    let until = until.format(&time::format_description::well_known::Rfc3339)?;

    let suggested = dir.path().join("suggested.yaml");
    let report = analyze_json(
        &logs,
        &[
            "--baseline-until",
            &until,
            "--suggest-policy-file",
            &suggested.display().to_string(),
        ],
    )
    .await?;
    ensure!(
        names(&report["nodes"]) == ["shop/frontend", "shop/orders", "shop/payments"],
        "{report:#}"
    );
    // Requests both sidecars logged are counted once.
    for (source, destination, requests) in [(&fe, &or, 8), (&or, &pay, 2), (&fe, &pay, 1)] {
        let e = edge(&report, source, destination)?;
        ensure!(
            e["requests"] == requests && e["denied"] == 0,
            "{source} -> {destination}: {e:#}"
        );
    }
    let flags: BTreeSet<(String, String, String)> = report["flags"]
        .as_array()
        .context("no flags")?
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
            (
                s("kind"),
                s("source"),
                format!("{} {}", s("destination"), s("route")),
            )
        })
        .collect();
    let want: BTreeSet<(String, String, String)> = [
        ("new_edge", &fe, format!("{pay} ")),
        ("new_route", &fe, format!("{or} DELETE /api/orders/{{id}}")),
        ("new_route", &fe, format!("{or} GET /admin")),
    ]
    .into_iter()
    .map(|(k, s, d)| (k.to_owned(), s.clone(), d))
    .collect();
    ensure!(flags == want, "flags {flags:#?}, expected {want:#?}");
    let radius = report["blast_radius"]
        .as_array()
        .context("no blast radius")?
        .iter()
        .find(|b| b["identity"] == fe.as_str())
        .context("no blast radius of the frontend")?;
    ensure!(
        radius["reached_transitive"] == serde_json::json!([or, pay]),
        "{radius:#}"
    );

    // The suggestion passes the policy checker, and against it the attack is flagged.
    run_ok(picket()?.args(["policy", "check"]).arg(&suggested)).await?;
    let policy = std::fs::read_to_string(&suggested)?;
    let policy_dir = dir.path().join("policies");
    std::fs::create_dir(&policy_dir)?;
    std::fs::write(policy_dir.join("suggested.yaml"), &policy)?;
    let text = analyze(&logs, &["--policy", &policy_dir.display().to_string()]).await?;
    let refused: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("not allowed by policy"))
        .collect();
    for route in [
        "shop/frontend -> shop/payments  POST /api/charge",
        "shop/frontend -> shop/orders  GET /admin",
        "shop/frontend -> shop/orders  DELETE /api/orders/{id}",
    ] {
        ensure!(
            refused.iter().any(|l| l.contains(route)),
            "{route} is not flagged:\n{text}\n{policy}"
        );
    }
    ensure!(refused.len() == ATTACK.len(), "{text}\n{policy}");

    // Enforced by fresh sidecars, it admits the normal traffic (and new order IDs) and
    // refuses the attack.
    let enforced = Shop::start(&ca, apps, Some(&policy), |_| String::new()).await?;
    enforced.play(&NORMAL, StatusCode::OK).await?;
    enforced
        .play(
            &[("frontend", "orders", "GET", "/api/orders/977")],
            StatusCode::OK,
        )
        .await?;
    enforced.play(&ATTACK, StatusCode::FORBIDDEN).await?;

    // The HTML report, rendered by a real browser.
    let html = analyze_html(&logs, &["--baseline-until", &until], dir.path()).await?;
    let url = format!("file://{}", html.display());
    let png = dir.path().join("report.png");
    let (dom, size) = tokio::try_join!(browser::dump_dom(&url), browser::screenshot(&url, &png))?;
    for name in ["shop/frontend", "shop/orders", "shop/payments"] {
        ensure!(
            dom.contains(&format!(">{name}</text>")),
            "{name} is not drawn in the rendered page"
        );
    }
    // The frontend probed /admin: its node says so.
    ensure!(
        dom.contains(&format!("<title>{fe} · alerts: sensitive_path")),
        "the frontend's node does not show its alert"
    );
    ensure!(size == (1400, 1000), "screenshot of {size:?}");
    let detail = browser::png_detail(&png).await?;
    ensure!(
        detail > 64,
        "the screenshot looks blank ({detail} byte values)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A collector that is down.

#[tokio::test]
async fn a_collector_that_is_down_changes_no_answer_and_every_span_is_counted_as_dropped()
-> Result<()> {
    const REQUESTS: usize = 100;
    let down = closed_port()?;
    let off = Mesh::start().await?;
    let mut on = Mesh::start_with(MeshOptions {
        extra_yaml: TelemetryYaml::new()
            .otlp(&format!("http://{down}"))
            .otlp_timeout("1s")
            .to_yaml(),
        ..MeshOptions::default()
    })
    .await?;
    let fe = spiffe_id("shop", "frontend");
    for (mesh, traced) in [(&off, false), (&on, true)] {
        for i in 0..REQUESTS {
            let path = format!("/api/orders/{i}");
            let (status, body) = call(mesh.outbound(), "GET", "orders", &path, &[]).await?;
            ensure!(status == StatusCode::OK, "{path}: {status} {body}");
            let seen: Description = serde_json::from_str(&body)?;
            ensure!(
                seen.path == path && seen.peer_identity.as_deref() == Some(fe.as_str()),
                "{seen:?}"
            );
            ensure!(
                received_header(&seen, "traceparent").is_some() == traced,
                "tracing {traced}: {seen:?}"
            );
        }
        // An alert: a log record for the collector as well.
        let (status, _) = call(mesh.outbound(), "GET", "orders", "/admin", &[]).await?;
        ensure!(status == StatusCode::OK);
    }
    for proxy in [&off.frontend, &off.orders] {
        let exp = scrape(proxy.addrs().admin).await?;
        ensure!(
            exp.samples("picket_telemetry_dropped_total").is_empty(),
            "telemetry off, yet a sink: {}",
            exp.text
        );
    }
    for proxy in [&mut on.frontend, &mut on.orders] {
        let admin = proxy.addrs().admin;
        eventually(WAIT, async || {
            let exp = scrape(admin).await?;
            let dropped = |sink: &str| -> f64 {
                exp.samples("picket_telemetry_dropped_total")
                    .into_iter()
                    .filter(|(l, _)| l.get("sink").map(String::as_str) == Some(sink))
                    .map(|(_, v)| v)
                    .sum()
            };
            let (spans, logs) = (dropped("traces"), dropped("logs"));
            ensure!(
                spans == (REQUESTS + 1) as f64 && logs == 1.0,
                "{spans} spans and {logs} log records counted as dropped"
            );
            Ok(())
        })
        .await?;
        let said = proxy.daemon().log_text();
        let failures = said.matches("OTLP export failed").count();
        ensure!(
            failures == 2,
            "one failure line per signal, not {failures}:\n{said}"
        );
    }
    Ok(())
}
