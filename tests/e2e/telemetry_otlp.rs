//! Telemetry export, in process: two sidecars' spans in one trace with the right links and
//! attributes, alerts as OTel log records and span events, B3 context accepted, and a collector
//! that stalls or fails without slowing requests. The OTLP receiver is in-process; rotel in
//! front of it shows a real third-party collector takes Picket's OTLP.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use http::HeaderMap;
use picket_ca::SpiffeId;
use picket_proxy::direction::Direction;
use picket_proxy::telemetry::metrics::{DropReason, Sink};
use picket_proxy::telemetry::{
    AlertKind, DetectorConfig, FlowProtocol, FlowRecord, OtlpConfig, Parent, SpanAttrs, Telemetry,
    TelemetryConfig, Verdict,
};
use picket_tests::otlp::{Behaviour, OtlpReceiver, Rotel, SPAN_KIND_CLIENT, SPAN_KIND_SERVER};
use picket_tests::spiffe_id;
use prometheus_client::registry::Registry;

const WAIT: Duration = Duration::from_secs(20);

fn identity(sa: &str) -> Result<SpiffeId> {
    Ok(spiffe_id("shop", sa).parse()?)
}

fn config(endpoint: &str, timeout: Duration, detectors: bool) -> TelemetryConfig {
    TelemetryConfig {
        otlp: Some(OtlpConfig {
            endpoint: endpoint.to_owned(),
            headers: vec![("x-test-tenant".into(), "picket".into())],
            sampling_ratio: 1.0,
            resource: vec![("deployment.environment".into(), "e2e".into())],
            timeout,
        }),
        flow_log: None,
        detectors: DetectorConfig {
            enabled: detectors,
            learning_window: Duration::ZERO,
            ..DetectorConfig::default()
        },
        ..TelemetryConfig::default()
    }
}

fn start(endpoint: &str, sa: &str) -> Result<Telemetry> {
    let cfg = config(endpoint, Duration::from_secs(5), true);
    Ok(Telemetry::new(
        &cfg,
        &identity(sa)?,
        &mut Registry::default(),
    )?)
}

fn record<'a>(
    direction: Direction,
    method: &'a str,
    path: &'a str,
    status: u16,
    source: &'a str,
    destination: &'a str,
) -> FlowRecord<'a> {
    FlowRecord {
        source_identity: Some(source.into()),
        source_address: "127.0.0.1:45000".parse().ok(),
        destination_identity: Some(destination.into()),
        destination_port: Some(8080),
        method: Some(method.into()),
        path: Some(path.into()),
        status: Some(status),
        verdict: Some(Verdict::Allow),
        policy: Some("shop/orders-read".into()),
        bytes_out: 42,
        ..FlowRecord::new(
            time::OffsetDateTime::now_utc(),
            direction,
            FlowProtocol::Http1,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_of_a_request_share_one_trace_and_alerts_arrive_as_log_records() -> Result<()> {
    let rx = OtlpReceiver::start().await?;
    let frontend = start(&rx.endpoint(), "frontend")?;
    let orders = start(&rx.endpoint(), "orders")?;
    let (fe, or) = (spiffe_id("shop", "frontend"), spiffe_id("shop", "orders"));

    // The frontend's app sends a request without trace context; its sidecar starts the trace.
    let attrs = SpanAttrs {
        method: "GET",
        path: "/api/orders/7",
        server_address: Some("orders:8080"),
        peer_address: Some("127.0.0.1:7143".parse()?),
        source_identity: Some(&fe),
        destination_identity: Some(&or),
    };
    let client = frontend.client_span(Parent::Headers(&HeaderMap::new()), &attrs);
    let mut wire = HeaderMap::new();
    client.inject(&mut wire);
    ensure!(wire.contains_key("traceparent"), "no traceparent: {wire:?}");
    let server = orders.server_span(
        &wire,
        &SpanAttrs {
            peer_address: Some("127.0.0.1:45000".parse()?),
            ..attrs
        },
    );
    let (trace, client_id) = client.ids().context("client span has no ids")?;
    let (server_trace, server_id) = server.ids().context("server span has no ids")?;
    ensure!(trace == server_trace, "{trace} != {server_trace}");
    orders.record_request(
        server,
        record(Direction::Inbound, "GET", "/api/orders/7", 200, &fe, &or),
    );
    frontend.record_request(
        client,
        record(Direction::Outbound, "GET", "/api/orders/7", 200, &fe, &or),
    );

    // A probe of /admin inside a request: a span event and a correlated log record.
    let probe = orders.server_span(
        &HeaderMap::new(),
        &SpanAttrs {
            path: "/admin",
            ..attrs
        },
    );
    let (probe_trace, probe_span) = probe.ids().context("probe span has no ids")?;
    orders.record_request(
        probe,
        record(Direction::Inbound, "GET", "/admin", 404, &fe, &or),
    );

    ensure!(frontend.flush(WAIT).await, "frontend flush timed out");
    ensure!(orders.flush(WAIT).await, "orders flush timed out");

    let spans = rx.wait_for_spans(2, WAIT, |s| s.trace_id == trace).await?;
    let c = spans
        .iter()
        .find(|s| s.span_id == client_id)
        .context("client span missing")?;
    let s = spans
        .iter()
        .find(|s| s.span_id == server_id)
        .context("server span missing")?;
    ensure!(
        c.kind == SPAN_KIND_CLIENT && s.kind == SPAN_KIND_SERVER,
        "{spans:#?}"
    );
    ensure!(
        c.parent_span_id.is_empty(),
        "client span is the root: {c:#?}"
    );
    ensure!(
        s.parent_span_id == client_id,
        "server span is the client's child: {s:#?}"
    );
    ensure!(c.name == "GET /api/orders/{id}", "{}", c.name);
    for (k, v) in [
        ("http.request.method", "GET"),
        ("url.path", "/api/orders/7"),
        ("http.response.status_code", "200"),
        ("server.address", "orders"),
        ("network.peer.address", "127.0.0.1"),
        ("picket.source.identity", fe.as_str()),
        ("picket.destination.identity", or.as_str()),
        ("picket.authz.verdict", "allow"),
        ("picket.authz.policy", "shop/orders-read"),
    ] {
        ensure!(
            s.attributes.get(k).map(String::as_str) == Some(v),
            "{k} on {s:#?}"
        );
    }
    ensure!(
        s.resource.get("service.name").map(String::as_str) == Some("orders.shop"),
        "{:?}",
        s.resource
    );
    ensure!(
        c.resource.get("picket.identity") == Some(&fe),
        "{:?}",
        c.resource
    );
    ensure!(s.resource.get("deployment.environment").map(String::as_str) == Some("e2e"));

    let probe_spans = rx
        .wait_for_spans(1, WAIT, |s| s.span_id == probe_span)
        .await?;
    let event = probe_spans[0].events.iter().find(|(name, a)| {
        name == "picket.alert"
            && a.get("picket.alert.kind").map(String::as_str) == Some("sensitive_path")
    });
    ensure!(event.is_some(), "no alert event on {:#?}", probe_spans[0]);

    let logs = rx
        .wait_for_logs(1, WAIT, |l| {
            l.attributes.get("picket.alert.kind").map(String::as_str) == Some("sensitive_path")
        })
        .await?;
    let log = &logs[0];
    ensure!(
        log.trace_id == probe_trace && log.span_id == probe_span,
        "not correlated: {log:#?}"
    );
    ensure!(
        log.event_name == "picket.alert" && log.body.contains("/admin"),
        "{log:#?}"
    );
    ensure!(log.resource.get("service.name").map(String::as_str) == Some("orders.shop"));
    ensure!(
        orders
            .recent_alerts()
            .iter()
            .any(|a| a.kind == AlertKind::SensitivePath)
    );
    ensure!(orders.shutdown(WAIT).await && frontend.shutdown(WAIT).await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_context_is_continued_and_sent_on_as_w3c() -> Result<()> {
    let rx = OtlpReceiver::start().await?;
    let orders = start(&rx.endpoint(), "orders")?;
    let mut h = HeaderMap::new();
    h.insert("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7".parse()?);
    h.insert("x-b3-spanid", "e457b5a2e4d86bd1".parse()?);
    h.insert("x-b3-sampled", "1".parse()?);
    let span = orders.server_span(
        &h,
        &SpanAttrs {
            method: "GET",
            path: "/",
            ..SpanAttrs::default()
        },
    );
    let mut out = HeaderMap::new();
    span.inject(&mut out);
    let tp = out
        .get("traceparent")
        .context("no traceparent")?
        .to_str()?
        .to_owned();
    ensure!(
        tp.starts_with("00-80f198ee56343ba864fe8b2a57d3eff7-"),
        "{tp}"
    );
    ensure!(tp.ends_with("-01"), "sampled flag kept: {tp}");
    let (_, id) = span.ids().context("no ids")?;
    span.finish(&Default::default());
    ensure!(orders.flush(WAIT).await);
    let got = rx.wait_for_spans(1, WAIT, |s| s.span_id == id).await?;
    ensure!(got[0].parent_span_id == "e457b5a2e4d86bd1", "{:#?}", got[0]);
    Ok(())
}

/// An opaque TCP connection is one span from its open record to its end: inbound a server
/// span named `tcp`, the root of a new trace, with the caller, the port, the decision and the
/// bytes each way (received from the caller, sent to it); the open record's alert is an
/// event of that span and every record carries its IDs. At sampling ratio 0 such new traces
/// are not exported, as new HTTP traces are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opaque_tcp_connection_is_one_span_sampled_as_new_traces_are() -> Result<()> {
    use picket_proxy::telemetry::{ConnectionAttrs, FlowPhase};
    let rx = OtlpReceiver::start().await?;
    let orders = start(&rx.endpoint(), "orders")?;
    let fe = spiffe_id("shop", "frontend");
    let caller: std::net::SocketAddr = "127.0.0.1:45123".parse()?;
    let attrs = ConnectionAttrs {
        peer_address: Some(caller),
        server_port: Some(5432),
        source_identity: Some(&fe),
        ..ConnectionAttrs::default()
    };
    let tcp = |phase: FlowPhase, bytes: (u64, u64)| FlowRecord {
        phase: Some(phase),
        source_identity: Some(fe.as_str().into()),
        source_address: Some(caller),
        destination_port: Some(5432),
        verdict: Some(Verdict::Allow),
        policy: Some("shop/db".into()),
        bytes_in: bytes.0,
        bytes_out: bytes.1,
        ..FlowRecord::new(
            time::OffsetDateTime::now_utc(),
            Direction::Inbound,
            FlowProtocol::Tcp,
        )
    };
    let mut span = orders.connection_span(Direction::Inbound, &attrs);
    let (trace, id) = span.ids().context("a connection span has ids")?;
    orders.record_open(&mut span, tcp(FlowPhase::Open, (0, 0)));
    orders.record_end(span, tcp(FlowPhase::End, (300, 7000)));
    ensure!(orders.flush(WAIT).await);
    let got = rx.wait_for_spans(1, WAIT, |s| s.span_id == id).await?;
    let s = &got[0];
    ensure!(
        s.kind == SPAN_KIND_SERVER
            && s.name == "tcp"
            && s.trace_id == trace
            && s.parent_span_id.is_empty(),
        "{s:#?}"
    );
    for (k, v) in [
        ("network.transport", "tcp"),
        ("network.peer.address", "127.0.0.1"),
        ("network.peer.port", "45123"),
        ("server.port", "5432"),
        ("picket.source.identity", fe.as_str()),
        ("picket.authz.verdict", "allow"),
        ("picket.authz.policy", "shop/db"),
        ("picket.network.bytes_received", "300"),
        ("picket.network.bytes_sent", "7000"),
    ] {
        ensure!(s.attr(k) == Some(v), "{k} on {s:#?}");
    }
    ensure!(
        s.attributes.keys().all(|k| !k.starts_with("http.")),
        "HTTP attributes on a TCP span: {s:#?}"
    );
    // The detectors saw the open record (a new edge at once): an event of the span.
    ensure!(
        s.events.iter().any(|(name, _)| name == "picket.alert"),
        "{s:#?}"
    );

    // Sampling ratio 0: the span is not exported; the records still carry the trace.
    let cfg = TelemetryConfig {
        otlp: config(&rx.endpoint(), Duration::from_secs(5), false)
            .otlp
            .map(|o| OtlpConfig {
                sampling_ratio: 0.0,
                ..o
            }),
        ..config(&rx.endpoint(), Duration::from_secs(5), false)
    };
    let unsampled = Telemetry::new(&cfg, &identity("reports")?, &mut Registry::default())?;
    let mut span = unsampled.connection_span(Direction::Outbound, &attrs);
    ensure!(!span.is_recording(), "sampled at ratio 0");
    let trace = span
        .trace_id()
        .context("an unsampled span still has a trace")?;
    unsampled.record_open(&mut span, tcp(FlowPhase::Open, (0, 0)));
    unsampled.record_end(span, tcp(FlowPhase::End, (1, 1)));
    ensure!(unsampled.flush(WAIT).await);
    ensure!(orders.flush(WAIT).await);
    ensure!(
        rx.trace(&trace).is_empty(),
        "an unsampled connection was exported"
    );
    Ok(())
}

/// A WebSocket tunnel's span follows its upgrade request's sampling: at sampling ratio 0, a
/// request whose caller sampled its trace gets a recorded tunnel span, a child of the
/// request's span, ended with the end cause and the bytes; a request that starts a new,
/// unsampled trace gets a tunnel span that records nothing and is never exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_span_is_sampled_exactly_when_its_upgrade_request_is() -> Result<()> {
    use picket_proxy::telemetry::{ConnectionAttrs, FlowPhase, SpanOutcome, TunnelEnd};
    let rx = OtlpReceiver::start().await?;
    let base = config(&rx.endpoint(), Duration::from_secs(5), false);
    let cfg = TelemetryConfig {
        otlp: base.otlp.clone().map(|o| OtlpConfig {
            sampling_ratio: 0.0,
            ..o
        }),
        ..base
    };
    let orders = Telemetry::new(&cfg, &identity("orders")?, &mut Registry::default())?;
    let fe = spiffe_id("shop", "frontend");
    let attrs = SpanAttrs {
        method: "GET",
        path: "/ws",
        source_identity: Some(&fe),
        ..SpanAttrs::default()
    };
    let tunnel_attrs = ConnectionAttrs {
        source_identity: Some(&fe),
        ..ConnectionAttrs::default()
    };
    let end = || FlowRecord {
        phase: Some(FlowPhase::End),
        status: Some(101),
        bytes_in: 10,
        bytes_out: 20,
        ..FlowRecord::new(
            time::OffsetDateTime::now_utc(),
            Direction::Inbound,
            FlowProtocol::WebSocket,
        )
    };
    let mut sampled_caller = HeaderMap::new();
    sampled_caller.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?,
    );
    let mut ids = Vec::new();
    for headers in [sampled_caller, HeaderMap::new()] {
        let request = orders.server_span(&headers, &attrs);
        let mut tunnel =
            orders.tunnel_span(Direction::Inbound, &request, &tunnel_attrs, Some("/ws"));
        ensure!(
            tunnel.is_recording() == request.is_recording(),
            "request recording {}, tunnel {}",
            request.is_recording(),
            tunnel.is_recording()
        );
        ensure!(
            tunnel.trace_id() == request.trace_id(),
            "the tunnel is not in the request's trace"
        );
        ids.push((request.ids(), tunnel.ids(), request.is_recording()));
        request.finish(&SpanOutcome {
            status: Some(101),
            ..SpanOutcome::default()
        });
        tunnel.set_tunnel_end(TunnelEnd::IdleTimeout);
        orders.record_end(tunnel, end());
    }
    ensure!(orders.flush(WAIT).await);
    let [(Some(request), Some(tunnel), true), (_, unsampled, false)] = ids.as_slice() else {
        bail!("the caller's sampled trace was not sampled, or a new one was: {ids:?}");
    };
    let got = rx
        .wait_for_spans(1, WAIT, |s| s.span_id == tunnel.1)
        .await?;
    let s = &got[0];
    ensure!(
        s.name == "websocket"
            && s.kind == SPAN_KIND_SERVER
            && s.trace_id == request.0
            && s.parent_span_id == request.1,
        "not a child of the request's span {request:?}: {s:#?}"
    );
    for (k, v) in [
        ("picket.tunnel.end_cause", "idle_timeout"),
        ("picket.network.bytes_received", "10"),
        ("picket.network.bytes_sent", "20"),
        ("network.protocol.name", "websocket"),
        ("url.path", "/ws"),
        ("picket.source.identity", fe.as_str()),
    ] {
        ensure!(s.attr(k) == Some(v), "{k} on {s:#?}");
    }
    if let Some((trace, _)) = unsampled {
        ensure!(
            rx.trace(trace).is_empty(),
            "an unsampled request's tunnel was exported"
        );
    }
    Ok(())
}

/// Requests recorded while the collector stalls or fails: the loop time is what the data path
/// pays; the queue overflows and exports fail, and both are counted, not waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_stalls_or_fails_costs_requests_nothing() -> Result<()> {
    for behaviour in [Behaviour::Stall, Behaviour::Unavailable] {
        let rx = OtlpReceiver::start().await?;
        rx.set_behaviour(behaviour);
        let mut registry = Registry::default();
        let t = Telemetry::new(
            &config(&rx.endpoint(), Duration::from_millis(500), false),
            &identity("orders")?,
            &mut registry,
        )?;
        let fe = spiffe_id("shop", "frontend");
        let attrs = SpanAttrs {
            method: "GET",
            path: "/api/orders/1",
            source_identity: Some(&fe),
            ..SpanAttrs::default()
        };
        let start = Instant::now();
        for _ in 0..20_000 {
            let span = t.server_span(&HeaderMap::new(), &attrs);
            t.record_request(
                span,
                record(Direction::Inbound, "GET", "/api/orders/1", 200, &fe, &fe),
            );
        }
        let elapsed = start.elapsed();
        // Generous for an unoptimized build on a shared machine; a blocking exporter would
        // take 500 ms per batch of 512, over ten seconds.
        ensure!(
            elapsed < Duration::from_secs(8),
            "{behaviour:?}: 20,000 requests took {elapsed:?}"
        );
        let metrics = t.metrics().context("metrics")?.clone();
        picket_tests::assert_eventually!(
            WAIT,
            metrics.dropped_count(Sink::Traces, DropReason::QueueFull)
                + metrics.dropped_count(Sink::Traces, DropReason::SinkFailed)
                > 0,
            "{behaviour:?}: nothing counted as dropped"
        );
        if behaviour == Behaviour::Stall {
            ensure!(
                metrics.dropped_count(Sink::Traces, DropReason::QueueFull) > 0,
                "queue never overflowed"
            );
        }
        // A flush with a deadline gives up in time instead of hanging.
        let flush_started = Instant::now();
        let _ = t.flush(Duration::from_secs(1)).await;
        ensure!(
            flush_started.elapsed() < Duration::from_secs(3),
            "flush overran its deadline"
        );
        ensure!(rx.requests() > 0, "{behaviour:?}: no export was even tried");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        ensure!(
            text.contains("picket_telemetry_dropped_total{sink=\"traces\""),
            "{text}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotel_collector_accepts_spans_and_alert_logs() -> Result<()> {
    let rx = OtlpReceiver::start().await?;
    let rotel = Rotel::start(&rx.endpoint()).await?;
    let orders = start(&rotel.endpoint, "orders")?;
    let fe = spiffe_id("shop", "frontend");
    let or = spiffe_id("shop", "orders");
    let span = orders.server_span(
        &HeaderMap::new(),
        &SpanAttrs {
            method: "GET",
            path: "/.env",
            source_identity: Some(&fe),
            destination_identity: Some(&or),
            ..SpanAttrs::default()
        },
    );
    let (trace, _) = span.ids().context("no ids")?;
    orders.record_request(
        span,
        record(Direction::Inbound, "GET", "/.env", 404, &fe, &or),
    );
    ensure!(orders.flush(WAIT).await);
    let spans = rx.wait_for_spans(1, WAIT, |s| s.trace_id == trace).await?;
    ensure!(
        spans[0].resource.get("picket.identity") == Some(&or),
        "{:#?}",
        spans[0]
    );
    rx.wait_for_logs(1, WAIT, |l| {
        l.attributes.get("picket.alert.kind").map(String::as_str) == Some("sensitive_path")
    })
    .await?;
    Ok(())
}
