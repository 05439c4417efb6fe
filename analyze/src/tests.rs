#![allow(clippy::unwrap_used, clippy::panic)]
use std::io::Write;

use super::*;
use picket_proxy::direction::Direction;
use picket_proxy::telemetry::flow::{FlowProtocol, FlowRecord, Verdict};

pub(crate) const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
pub(crate) const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
pub(crate) const CATALOG: &str = "spiffe://cluster.local/ns/shop/sa/catalog";
pub(crate) const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";
pub(crate) const DB: &str = "spiffe://cluster.local/ns/data/sa/db";

fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_700_000_000 + secs).unwrap()
}

#[allow(clippy::too_many_arguments)]
fn flow(
    ts: i64,
    direction: Direction,
    src: &'static str,
    dst: &'static str,
    method: Option<&'static str>,
    path: Option<String>,
    status: Option<u16>,
    verdict: Verdict,
) -> FlowRecord<'static> {
    FlowRecord {
        source_identity: Some(src.into()),
        source_address: Some("10.0.0.1:40000".parse().unwrap()),
        destination_identity: Some(dst.into()),
        destination_port: Some(if method.is_some() { 8080 } else { 5432 }),
        method: method.map(Into::into),
        path: path.map(Into::into),
        status,
        verdict: Some(verdict),
        bytes_out: 100,
        ..FlowRecord::new(
            at(ts),
            direction,
            if method.is_some() {
                FlowProtocol::Http1
            } else {
                FlowProtocol::Tcp
            },
        )
    }
}

/// The recorded scenario: a day of normal traffic (both sidecars' views of frontend ->
/// orders), then an attack from the frontend after t = 1000 s.
pub(crate) fn recorded() -> Vec<FlowRecord<'static>> {
    use Direction::{Inbound, Outbound};
    let mut v = Vec::new();
    for i in 0..300i64 {
        let t = i * 3;
        let id = 100 + i % 40;
        for dir in [Outbound, Inbound] {
            v.push(flow(
                t,
                dir,
                FRONTEND,
                ORDERS,
                Some("GET"),
                Some(format!("/api/orders/{id}")),
                Some(200),
                Verdict::Allow,
            ));
        }
        if i % 5 == 0 {
            v.push(flow(
                t,
                Inbound,
                FRONTEND,
                ORDERS,
                Some("POST"),
                Some("/api/orders".into()),
                Some(201),
                Verdict::Allow,
            ));
        }
        if i % 3 == 0 {
            v.push(flow(
                t,
                Inbound,
                FRONTEND,
                CATALOG,
                Some("GET"),
                Some(format!("/api/items/{}", i % 7)),
                Some(200),
                Verdict::Allow,
            ));
        }
        if i % 4 == 0 {
            v.push(flow(
                t,
                Inbound,
                ORDERS,
                PAYMENTS,
                Some("POST"),
                Some("/api/charge".into()),
                Some(200),
                Verdict::Allow,
            ));
            v.push(flow(
                t,
                Inbound,
                ORDERS,
                DB,
                None,
                None,
                None,
                Verdict::Allow,
            ));
        }
        // A probe that does not exist must not be suggested.
        if i == 7 {
            v.push(flow(
                t,
                Inbound,
                FRONTEND,
                ORDERS,
                Some("GET"),
                Some("/favicon.ico".into()),
                Some(404),
                Verdict::Allow,
            ));
        }
    }
    // The attack: new edge to payments, /admin probe, denied replays to db.
    for i in 0..5 {
        v.push(flow(
            1000 + i,
            Inbound,
            FRONTEND,
            PAYMENTS,
            Some("POST"),
            Some("/api/charge".into()),
            Some(200),
            Verdict::Allow,
        ));
    }
    v.push(flow(
        1010,
        Inbound,
        FRONTEND,
        ORDERS,
        Some("GET"),
        Some("/admin".into()),
        Some(404),
        Verdict::Allow,
    ));
    for i in 0..12 {
        v.push(flow(
            1020 + i,
            Inbound,
            FRONTEND,
            DB,
            None,
            None,
            None,
            Verdict::Deny,
        ));
    }
    v
}

pub(crate) fn write_flows(flows: &[FlowRecord<'_>], extra: &[String]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for r in flows {
        serde_json::to_writer(&mut f, r).unwrap();
        f.write_all(b"\n").unwrap();
    }
    for line in extra {
        writeln!(f, "{line}").unwrap();
    }
    f.flush().unwrap();
    f
}

fn alert_line() -> String {
    let a = picket_proxy::telemetry::Alert {
        line_type: picket_proxy::telemetry::LineType::Alert,
        kind: AlertKind::SensitivePath,
        severity: Severity::Medium,
        source_identity: Some(FRONTEND.into()),
        source_address: None,
        destination: Some(format!("{ORDERS} /admin")),
        evidence: BTreeMap::from([("requests".to_owned(), 1)]),
        window_secs: 0,
        first_seen: at(1010),
        last_seen: at(1010),
        summary: "probe".into(),
    };
    serde_json::to_string(&a).unwrap()
}

fn load(text: &str) -> picket_policy::PolicySet {
    picket_policy::load(
        &[picket_policy::Source {
            name: "p.yaml",
            text,
        }],
        &picket_policy::LoadOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
}

fn allowed(
    set: &picket_policy::PolicySet,
    src: &str,
    dst: &str,
    method: Option<&str>,
    path: &str,
    port: u16,
) -> bool {
    let w = policy::workload(dst, "app").unwrap();
    let req = picket_policy::Request {
        source_principal: policy::principal(src),
        source_ip: "10.0.0.1".parse().unwrap(),
        destination_port: port,
        sni: None,
        http: method.map(|m| picket_policy::HttpRequest {
            method: m,
            path,
            host: "x",
            headers: &[],
        }),
        auth: None,
    };
    set.for_workload(&w).evaluate(&req).is_allowed()
}

fn run(policy: Option<picket_policy::PolicySet>) -> Analysis {
    let file = write_flows(&recorded(), &[alert_line(), "garbage".into()]);
    analyze(AnalyzeOptions {
        files: vec![file.path().to_owned()],
        policy,
        baseline_until: Some(at(950)),
        ..AnalyzeOptions::default()
    })
    .unwrap()
}

#[test]
fn builds_the_graph_with_deduplicated_counts() {
    let a = run(None);
    let r = &a.report;
    assert_eq!(r.summary.alerts, 1);
    assert_eq!(r.summary.bad_lines, 1);
    let names: Vec<&str> = r.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "data/db",
            "shop/catalog",
            "shop/frontend",
            "shop/orders",
            "shop/payments"
        ]
    );
    let fo = r
        .edges
        .iter()
        .find(|e| e.source == FRONTEND && e.destination == ORDERS)
        .unwrap();
    // 300 GETs seen by both sidecars count once; 60 POSTs, 1 favicon, 1 admin (inbound).
    assert_eq!(fo.requests, 362);
    assert_eq!(fo.ports, [8080]);
    assert_eq!(fo.routes[0].route, "GET /api/orders/{id}");
    let frontend = r.nodes.iter().find(|n| n.id == FRONTEND).unwrap();
    assert_eq!(frontend.max_severity, Some(Severity::Medium));
    let db = r
        .edges
        .iter()
        .find(|e| e.source == FRONTEND && e.destination == DB)
        .unwrap();
    assert_eq!((db.denied, db.allowed), (12, 0));
}

#[test]
fn flags_edges_first_seen_after_the_baseline() {
    let a = run(None);
    let flags: Vec<(FlagKind, &str, Option<&str>)> = a
        .report
        .flags
        .iter()
        .map(|f| (f.kind, f.destination.as_str(), f.route.as_deref()))
        .collect();
    assert_eq!(
        flags,
        [
            (FlagKind::NewEdge, DB, None),
            (FlagKind::NewEdge, PAYMENTS, None),
            (FlagKind::NewRoute, ORDERS, Some("GET /admin")),
        ]
    );
}

#[test]
fn blast_radius_follows_admitted_calls_transitively() {
    let a = run(None);
    let fr = a
        .report
        .blast_radius
        .iter()
        .find(|b| b.identity == FRONTEND)
        .unwrap();
    assert_eq!(
        fr.reached,
        [ORDERS, CATALOG, PAYMENTS]
            .map(String::from)
            .iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    // Through orders, the frontend reaches the database although its own calls were denied.
    assert!(fr.reached_transitive.contains(&DB.to_owned()), "{fr:?}");
    assert!(fr.reachable.is_none());
}

#[test]
fn suggested_policy_loads_allows_the_baseline_and_denies_the_attack() {
    let a = run(None);
    let yaml = a.suggest_policy(&SuggestOptions::default());
    let set = load(&yaml);
    assert_eq!(set.len(), 4, "{yaml}");
    assert!(yaml.contains("\"/api/orders/*\""), "{yaml}");
    assert!(!yaml.contains("favicon"), "404s are not routes:\n{yaml}");
    // Everything of the baseline is allowed...
    for r in recorded()
        .iter()
        .filter(|r| r.ts <= at(950) && r.status != Some(404))
    {
        assert!(
            allowed(
                &set,
                r.source_identity.as_deref().unwrap(),
                r.destination_identity.as_deref().unwrap(),
                r.method.as_deref(),
                r.path.as_deref().unwrap_or("/"),
                r.destination_port.unwrap()
            ),
            "baseline request denied: {r:?}\n{yaml}"
        );
    }
    // ...and the attack is not.
    assert!(!allowed(
        &set,
        FRONTEND,
        PAYMENTS,
        Some("POST"),
        "/api/charge",
        8080
    ));
    assert!(!allowed(
        &set,
        FRONTEND,
        ORDERS,
        Some("GET"),
        "/admin",
        8080
    ));
    assert!(!allowed(&set, FRONTEND, DB, None, "/", 5432));
    assert!(!allowed(
        &set,
        FRONTEND,
        ORDERS,
        Some("DELETE"),
        "/api/orders/1",
        8080
    ));
    assert!(!allowed(
        &set,
        FRONTEND,
        ORDERS,
        Some("GET"),
        "/api/orders/1",
        9090
    ));
}

#[test]
fn policy_check_flags_traffic_the_policy_denies_and_bounds_the_blast_radius() {
    let suggested = run(None).suggest_policy(&SuggestOptions::default());
    let a = run(Some(load(&suggested)));
    let not_allowed: Vec<(&str, &str)> = a
        .report
        .flags
        .iter()
        .filter(|f| f.kind == FlagKind::NotAllowedByPolicy)
        .map(|f| (f.destination.as_str(), f.route.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        not_allowed,
        [
            (DB, "tcp"),
            (ORDERS, "GET /admin"),
            (ORDERS, "GET /favicon.ico"),
            (PAYMENTS, "POST /api/charge")
        ]
    );
    let fr = a
        .report
        .blast_radius
        .iter()
        .find(|b| b.identity == FRONTEND)
        .unwrap();
    assert_eq!(
        fr.reachable.as_deref().unwrap(),
        [CATALOG.to_owned(), ORDERS.to_owned()]
    );
    assert_eq!(
        fr.reachable_transitive.as_deref().unwrap(),
        [
            DB.to_owned(),
            PAYMENTS.to_owned(),
            CATALOG.to_owned(),
            ORDERS.to_owned()
        ]
        .iter()
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
}

#[test]
fn renders_text_json_and_self_contained_html() {
    let a = run(None);
    let text = render_text(&a.report);
    assert!(text.contains("shop/frontend -> shop/orders"), "{text}");
    let json = serde_json::to_value(&a.report).unwrap();
    assert_eq!(json["nodes"].as_array().unwrap().len(), 5);
    let html = render_html(&a.report);
    for name in ["shop/frontend", "shop/orders", "shop/payments", "data/db"] {
        assert!(html.contains(&format!(">{name}</text>")), "{name}");
    }
    // Self-contained: nothing to fetch, and a content security policy that fetches nothing.
    assert!(
        !html.contains(" src=") && !html.contains(" href="),
        "no external resources"
    );
    assert!(html.contains(
        "content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'\""
    ));
    assert_eq!(html.matches("<script>").count(), 1, "one inline script");
    // The graph shrinks to the page's width.
    assert!(html.contains("width:100%;height:auto"));
    assert!(html.contains("edge-deny") && html.contains("stroke-dasharray"));
}

#[test]
fn baseline_edges_feed_the_detectors() {
    let a = run(None);
    let edges = a.baseline_edges();
    let mut d = picket_proxy::telemetry::Detectors::new(&picket_proxy::telemetry::DetectorConfig {
        learning_window: std::time::Duration::ZERO,
        ..Default::default()
    });
    let n = d.load_baseline(edges.as_bytes()).unwrap();
    assert!(n >= 6, "{edges}");
    let known = &recorded()[0];
    assert!(d.observe_flow(known, at(2000)).is_empty());
    let attack = recorded()
        .into_iter()
        .find(|r| {
            r.destination_identity.as_deref() == Some(PAYMENTS)
                && r.source_identity.as_deref() == Some(FRONTEND)
        })
        .unwrap();
    let alerts = d.observe_flow(&attack, at(2000));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, AlertKind::NewEdge);
    // Edge lines carry the status classes each route answered, so a known route that starts
    // failing is a new status class from its first answers, without a learning window.
    assert!(edges.contains("\"status_classes\":[\"2xx\"]"), "{edges}");
    let mut failing = known.clone();
    failing.status = Some(503);
    let raised: Vec<AlertKind> = (1..=3)
        .flat_map(|i| d.observe_flow(&failing, at(2000 + i)))
        .map(|a| a.kind)
        .collect();
    assert_eq!(raised, [AlertKind::StatusClassNew]);
}

/// A steady benign 404 rate in the reviewed logs becomes a learned rate in the baseline:
/// detectors seeded with it stay quiet at that rate from the first request, without a
/// learning window, and still alert at the floor on a key the baseline does not know.
#[test]
fn baseline_rates_seed_the_burst_detectors() {
    let mut flows = Vec::new();
    // Ten minutes, 45 missing-asset requests a minute, as both sidecars record them.
    for i in 0..450 {
        let ts = i * 4 / 3;
        for direction in [Direction::Outbound, Direction::Inbound] {
            flows.push(flow(
                ts,
                direction,
                FRONTEND,
                ORDERS,
                Some("GET"),
                Some("/favicon.ico".into()),
                Some(404),
                Verdict::Allow,
            ));
        }
    }
    let baseline = analyze_flows(&flows, None, None).baseline_edges();
    let rate: picket_proxy::telemetry::detect::BaselineRate = serde_json::from_str(
        baseline
            .lines()
            .find(|l| l.starts_with(r#"{"type":"rate""#))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(rate.counter, "not_found");
    assert_eq!(
        (rate.source.as_str(), rate.destination.as_str()),
        (FRONTEND, ORDERS)
    );
    assert!((0.7..0.8).contains(&rate.per_second), "{rate:?}");

    let mut d = picket_proxy::telemetry::Detectors::new(&picket_proxy::telemetry::DetectorConfig {
        learning_window: std::time::Duration::from_secs(600),
        ..Default::default()
    });
    d.load_baseline(baseline.as_bytes()).unwrap();
    let mut alerts = Vec::new();
    for i in 0..(60 * 45) {
        let now = at(5000) + time::Duration::milliseconds(i * 1333);
        let f = flow(
            0,
            Direction::Inbound,
            FRONTEND,
            ORDERS,
            Some("GET"),
            Some("/favicon.ico".into()),
            Some(404),
            Verdict::Allow,
        );
        alerts.extend(d.observe_flow(&f, now));
    }
    assert!(alerts.is_empty(), "{alerts:#?}");
    assert!(d.take_learning_started().is_empty(), "the source is known");
    // Another destination has nothing learned: 20 404s a minute are a burst there.
    let mut raised = Vec::new();
    for i in 0..20 {
        let now = at(9000) + time::Duration::seconds(i);
        let f = flow(
            0,
            Direction::Inbound,
            FRONTEND,
            PAYMENTS,
            Some("GET"),
            Some("/favicon.ico".into()),
            Some(404),
            Verdict::Allow,
        );
        raised.extend(d.observe_flow(&f, now));
    }
    assert!(
        raised.iter().any(|a| a.kind == AlertKind::NotFoundBurst),
        "{raised:#?}"
    );
}

/// The application's port, which inbound records carry and policy evaluates.
const APP_PORT: u16 = 8080;
/// The peer sidecar's mTLS port, which outbound records carry.
const MESH_PORT: u16 = 7143;

/// One request as both sidecars record it: outbound by the caller's (the port dialled,
/// no verdict) and inbound by the callee's (the application's port, the verdict).
fn both_sides(ts: i64, path: &str, verdict: Verdict) -> [FlowRecord<'static>; 2] {
    let status = if verdict == Verdict::Deny { 403 } else { 200 };
    let inbound = FlowRecord {
        destination_port: Some(APP_PORT),
        ..flow(
            ts,
            Direction::Inbound,
            FRONTEND,
            ORDERS,
            Some("GET"),
            Some(path.to_owned()),
            Some(status),
            verdict,
        )
    };
    let outbound = FlowRecord {
        direction: Direction::Outbound,
        destination_port: Some(MESH_PORT),
        verdict: None,
        ..inbound.clone()
    };
    [outbound, inbound]
}

fn analyze_flows(
    flows: &[FlowRecord<'_>],
    policy: Option<&str>,
    baseline_until: Option<OffsetDateTime>,
) -> Analysis {
    let file = write_flows(flows, &[]);
    analyze(AnalyzeOptions {
        files: vec![file.path().to_owned()],
        policy: policy.map(load),
        baseline_until,
        ..AnalyzeOptions::default()
    })
    .unwrap()
}

fn orders_edge(a: &Analysis) -> &EdgeReport {
    a.report
        .edges
        .iter()
        .find(|e| e.source == FRONTEND && e.destination == ORDERS)
        .unwrap()
}

const ALLOW_GET_ORDERS_ON_APP_PORT: &str = r#"
apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata:
  name: orders
  namespace: shop
spec:
  selector:
    matchLabels:
      app: orders
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/frontend"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/api/orders/*"]
        ports: ["8080"]
"#;

#[test]
fn a_request_logged_by_both_sidecars_counts_once_for_its_route() {
    let flows = both_sides(0, "/api/orders/1", Verdict::Allow);
    let a = analyze_flows(&flows, None, None);
    let e = orders_edge(&a);
    assert_eq!(e.requests, 1);
    assert_eq!(e.routes.len(), 1, "{:?}", e.routes);
    assert_eq!(
        (e.routes[0].route.as_str(), e.routes[0].requests),
        ("GET /api/orders/{id}", 1)
    );
    // The edge reports the port policy sees.
    assert_eq!(e.ports, [APP_PORT]);
}

#[test]
fn flags_count_a_request_logged_by_both_sidecars_once() {
    // A known route in the baseline, then a new route the policy denies, both logged twice.
    let mut flows = Vec::new();
    flows.extend(both_sides(0, "/api/orders/1", Verdict::Allow));
    flows.extend(both_sides(100, "/admin", Verdict::Deny));
    let a = analyze_flows(&flows, Some(ALLOW_GET_ORDERS_ON_APP_PORT), Some(at(50)));
    let e = orders_edge(&a);
    assert_eq!((e.requests, e.denied), (2, 1));
    let admin = e.routes.iter().find(|r| r.route == "GET /admin").unwrap();
    assert_eq!((admin.requests, admin.denied), (1, 1));
    let flags: Vec<(FlagKind, Option<&str>, u64)> = a
        .report
        .flags
        .iter()
        .map(|f| (f.kind, f.route.as_deref(), f.requests))
        .collect();
    assert_eq!(
        flags,
        [
            (FlagKind::NotAllowedByPolicy, Some("GET /admin"), 1),
            (FlagKind::NewRoute, Some("GET /admin"), 1),
        ]
    );
}

#[test]
fn route_counts_take_the_side_that_saw_more() {
    // Only part of the caller's log was read: the inbound side saw more.
    let mut flows = Vec::new();
    for i in 0..3 {
        flows.extend(both_sides(i, "/api/orders/1", Verdict::Allow));
    }
    flows.retain(|r| r.direction == Direction::Inbound || r.ts == at(0));
    let a = analyze_flows(&flows, None, None);
    assert_eq!(orders_edge(&a).routes[0].requests, 3);
    // Only the caller's log: its records count.
    let outbound: Vec<_> = both_sides(0, "/api/orders/1", Verdict::Allow)
        .into_iter()
        .filter(|r| r.direction == Direction::Outbound)
        .collect();
    let a = analyze_flows(&outbound, None, None);
    assert_eq!(orders_edge(&a).routes[0].requests, 1);
}

#[test]
fn suggested_policy_allows_the_application_port_not_the_sidecars() {
    let flows = both_sides(0, "/api/orders/1", Verdict::Allow);
    let yaml = analyze_flows(&flows, None, None).suggest_policy(&SuggestOptions::default());
    assert!(yaml.contains(r#"ports: ["8080"]"#), "{yaml}");
    assert!(!yaml.contains("7143"), "{yaml}");
    let set = load(&yaml);
    assert!(allowed(
        &set,
        FRONTEND,
        ORDERS,
        Some("GET"),
        "/api/orders/1",
        APP_PORT
    ));
    assert!(!allowed(
        &set,
        FRONTEND,
        ORDERS,
        Some("GET"),
        "/api/orders/1",
        MESH_PORT
    ));
}

#[test]
fn without_inbound_records_the_dialled_port_is_all_there_is() {
    let outbound: Vec<_> = both_sides(0, "/api/orders/1", Verdict::Allow)
        .into_iter()
        .filter(|r| r.direction == Direction::Outbound)
        .collect();
    let a = analyze_flows(&outbound, None, None);
    assert_eq!(orders_edge(&a).ports, [MESH_PORT]);
    let yaml = a.suggest_policy(&SuggestOptions::default());
    assert!(yaml.contains(r#"ports: ["7143"]"#), "{yaml}");
}

#[test]
fn policy_check_of_traffic_logged_by_both_sidecars_uses_the_application_port() {
    let flows = both_sides(0, "/api/orders/1", Verdict::Allow);
    let a = analyze_flows(&flows, Some(ALLOW_GET_ORDERS_ON_APP_PORT), None);
    let e = orders_edge(&a);
    assert_eq!(e.policy, Some(PolicyAnswer::Allow), "{e:?}");
    assert_eq!(e.routes[0].policy, Some(PolicyAnswer::Allow), "{e:?}");
    assert!(
        !a.report
            .flags
            .iter()
            .any(|f| f.kind == FlagKind::NotAllowedByPolicy),
        "{:?}",
        a.report.flags
    );
    let fr = a
        .report
        .blast_radius
        .iter()
        .find(|b| b.identity == FRONTEND)
        .unwrap();
    assert_eq!(fr.reachable.as_deref().unwrap(), [ORDERS.to_owned()]);
}

#[test]
fn baseline_keeps_both_sides_ports_for_both_sidecars_detectors() {
    let flows = both_sides(0, "/api/orders/1", Verdict::Allow);
    let edges = analyze_flows(&flows, None, None).baseline_edges();
    let mut d = picket_proxy::telemetry::Detectors::new(&picket_proxy::telemetry::DetectorConfig {
        learning_window: std::time::Duration::ZERO,
        ..Default::default()
    });
    assert_eq!(d.load_baseline(edges.as_bytes()).unwrap(), 2, "{edges}");
    // The caller's sidecar sees the outbound record, the callee's the inbound one.
    for r in both_sides(10, "/api/orders/2", Verdict::Allow) {
        assert!(d.observe_flow(&r, at(2000)).is_empty(), "{r:?}\n{edges}");
    }
}

/// Writes `n` synthetic flow records: 50 identities, 400 edges, a few thousand routes.
pub(crate) fn synthetic(n: usize, out: &mut impl Write) {
    let ids: Vec<String> = (0..50)
        .map(|i| format!("spiffe://cluster.local/ns/team{}/sa/svc{i}", i % 5))
        .collect();
    let methods = ["GET", "GET", "GET", "POST", "PUT", "DELETE"];
    let base = at(0);
    for i in 0..n {
        let s = (i * 7) % 50;
        let d = (s + 1 + (i / 50) % 8) % 50;
        let r = FlowRecord {
            source_identity: Some(ids[s].as_str().into()),
            source_address: Some(std::net::SocketAddr::from((
                [10, 0, (s / 256) as u8, s as u8],
                40000 + (i % 1000) as u16,
            ))),
            destination_identity: Some(ids[d].as_str().into()),
            destination_port: Some(8080),
            method: Some(methods[i % methods.len()].into()),
            path: Some(format!("/api/v1/res{}/{}", i % 13, i % 997).into()),
            host: Some(format!("svc{d}").into()),
            status: Some(if i % 50 == 0 { 404 } else { 200 }),
            verdict: Some(if i % 100 == 0 {
                Verdict::Deny
            } else {
                Verdict::Allow
            }),
            policy: Some("team0/allow-all".into()),
            bytes_in: 120,
            bytes_out: 2048,
            duration_ms: 1.25,
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            span_id: Some("00f067aa0ba902b7".into()),
            ..FlowRecord::new(
                base + time::Duration::milliseconds(i as i64),
                if i % 2 == 0 {
                    Direction::Inbound
                } else {
                    Direction::Outbound
                },
                FlowProtocol::Http1,
            )
        };
        serde_json::to_writer(&mut *out, &r).unwrap();
        out.write_all(b"\n").unwrap();
    }
}

/// The figure reported in docs/telemetry.md: run with
/// `cargo test -p picket-proxy --release analyze_one_million -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
#[allow(clippy::print_stdout)]
fn analyze_one_million_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    synthetic(1_000_000, &mut f);
    f.flush().unwrap();
    drop(f);
    let size = std::fs::metadata(&path).unwrap().len();
    let start = std::time::Instant::now();
    let a = analyze(AnalyzeOptions {
        files: vec![path.clone()],
        baseline_until: Some(at(500)),
        ..AnalyzeOptions::default()
    })
    .unwrap();
    let read = start.elapsed();
    let yaml = a.suggest_policy(&SuggestOptions::default());
    let html = render_html(&a.report);
    let total = start.elapsed();
    println!(
        "analyze: 1,000,000 records ({} MiB) read and aggregated in {:.2} s; with suggestion and HTML {:.2} s; {} nodes, {} edges, {} flags, policy {} bytes, html {} bytes",
        size / 1_048_576,
        read.as_secs_f64(),
        total.as_secs_f64(),
        a.report.nodes.len(),
        a.report.edges.len(),
        a.report.flags.len(),
        yaml.len(),
        html.len()
    );
    assert_eq!(a.report.summary.records, 1_000_000);
}

#[test]
fn user_edges_list_the_busiest_principals_per_service_and_sum_the_rest() {
    let mut flows = Vec::new();
    // User i makes i + 1 requests to orders; both sidecars log each, only the inbound side
    // validated the token.
    for i in 0..12u64 {
        for n in 0..=i {
            let [mut outbound, mut inbound] = both_sides(n as i64, "/api/orders/1", Verdict::Allow);
            let p = format!("https://idp.example/user-{i:02}");
            inbound.request_principal = Some(p.clone().into());
            outbound.request_principal = Some(p.into());
            flows.push(outbound);
            flows.push(inbound);
        }
    }
    let [_, mut denied] = both_sides(100, "/api/orders/1", Verdict::Deny);
    denied.request_principal = Some("https://idp.example/user-11".into());
    flows.push(denied);
    let file = write_flows(&flows, &[]);
    let a = analyze(AnalyzeOptions {
        files: vec![file.path().to_owned()],
        top_users: 3,
        ..AnalyzeOptions::default()
    })
    .unwrap();
    let users = &a.report.user_edges;
    assert_eq!(users.len(), 1, "{users:?}");
    let u = &users[0];
    assert_eq!(u.destination, ORDERS);
    assert_eq!((u.principals, u.requests), (12, 78 + 1));
    let top: Vec<(&str, u64, u64)> = u
        .top
        .iter()
        .map(|e| (e.principal.as_str(), e.requests, e.denied))
        .collect();
    assert_eq!(
        top,
        [
            ("https://idp.example/user-11", 13, 1),
            ("https://idp.example/user-10", 11, 0),
            ("https://idp.example/user-09", 10, 0),
        ]
    );
    assert_eq!((u.others.principals, u.others.requests), (9, 45));
    assert!(!u.principals_capped);
    let text = render_text(&a.report);
    assert!(
        text.contains("-> shop/orders  79 requests from 12 principals")
            && text.contains("13  https://idp.example/user-11  denied 1")
            && text.contains("45  (9 other principals)"),
        "{text}"
    );
    let html = render_html(&a.report);
    assert!(html.contains("<td>https://idp.example/user-10</td><td>shop/orders</td>"));
    let json = serde_json::to_value(&a.report).unwrap();
    assert_eq!(json["user_edges"][0]["others"]["requests"], 45);
}

/// A passthrough connection from `src` to an address outside the mesh, as the caller's sidecar
/// records it: open, then end with the bytes.
fn egress(ts: i64, src: &'static str, to: &str) -> [FlowRecord<'static>; 2] {
    use picket_proxy::telemetry::flow::FlowPhase;
    let addr: std::net::SocketAddr = to.parse().unwrap();
    let open = FlowRecord {
        source_identity: Some(src.into()),
        source_address: Some("10.0.0.1:40000".parse().unwrap()),
        destination_address: Some(addr),
        destination_port: Some(addr.port()),
        phase: Some(FlowPhase::Open),
        ..FlowRecord::new(at(ts), Direction::Outbound, FlowProtocol::Tcp)
    };
    let end = FlowRecord {
        phase: Some(FlowPhase::End),
        bytes_in: 300,
        bytes_out: 5000,
        ..open.clone()
    };
    [open, end]
}

#[test]
fn egress_destinations_are_nodes_of_their_own_in_every_view() {
    let mut flows = Vec::new();
    flows.extend(both_sides(0, "/api/orders/1", Verdict::Allow));
    for i in 0..3 {
        flows.extend(egress(10 + i, ORDERS, "203.0.113.9:443"));
    }
    // A meshed destination that did not answer keeps its expectation: not egress.
    flows.push(FlowRecord {
        source_identity: Some(ORDERS.into()),
        destination_address: Some("10.0.0.9:7143".parse().unwrap()),
        expected_identity: Some("spiffe://cluster.local/*".into()),
        ..FlowRecord::new(at(20), Direction::Outbound, FlowProtocol::Tcp)
    });
    let a = analyze_flows(&flows, None, None);
    let r = &a.report;
    let kinds: Vec<(&str, NodeKind)> = r.nodes.iter().map(|n| (n.id.as_str(), n.kind)).collect();
    assert_eq!(
        kinds,
        [
            ("10.0.0.9", NodeKind::Address),
            ("203.0.113.9", NodeKind::Egress),
            (FRONTEND, NodeKind::Workload),
            (ORDERS, NodeKind::Workload),
        ]
    );
    let e = r
        .edges
        .iter()
        .find(|e| e.destination == "203.0.113.9")
        .unwrap();
    assert!(e.egress);
    assert_eq!((e.requests, e.ports.as_slice()), (3, &[443u16][..]));
    assert_eq!((e.bytes_in, e.bytes_out), (900, 15_000));
    assert!(!orders_edge(&a).egress);
    // The frontend reaches the outside through orders.
    let fr = r
        .blast_radius
        .iter()
        .find(|b| b.identity == FRONTEND)
        .unwrap();
    assert_eq!(fr.egress, ["203.0.113.9"]);
    assert!(fr.reached_transitive.contains(&"203.0.113.9".to_owned()));
    let text = render_text(r);
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("203.0.113.9") && l.ends_with("in        3  [egress]"))
            && text.contains("Egress, outside the mesh (1)")
            && text.contains(
                "shop/orders -> 203.0.113.9  connections 3  ports 443  bytes sent 900 received 15000"
            )
            && text.contains("egress:        203.0.113.9"),
        "{text}"
    );
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json["nodes"][1]["kind"], "egress");
    let html = render_html(r);
    assert!(html.contains(r#"<g class="node node-egress" data-id="203.0.113.9">"#));
    assert!(html.contains("<tr class=\"egress\"><td>shop/orders</td><td>203.0.113.9</td>"));
    // No policy of the mesh decides egress: the suggestion has nothing for it.
    let yaml = a.suggest_policy(&SuggestOptions::default());
    assert!(!yaml.contains("203.0.113.9"), "{yaml}");
}

#[test]
fn egress_nodes_are_named_by_the_sni_or_host_their_clients_asked_for() {
    let mut flows = Vec::new();
    for (i, to) in ["203.0.113.9:443", "203.0.113.10:443"]
        .into_iter()
        .enumerate()
    {
        for mut r in egress(10 + i as i64, ORDERS, to) {
            r.sni = Some("api.example.com".into());
            flows.push(r);
        }
    }
    for mut r in egress(20, ORDERS, "198.51.100.7:80") {
        r.host = Some("plain.example.org".into());
        flows.push(r);
    }
    flows.extend(egress(30, ORDERS, "192.0.2.1:25"));
    let a = analyze_flows(&flows, None, None);
    let egress: Vec<(&str, u64)> = a
        .report
        .edges
        .iter()
        .filter(|e| e.egress)
        .map(|e| (e.destination.as_str(), e.requests))
        .collect();
    // Two addresses of one name are one node; a connection without a name keeps its address.
    assert_eq!(
        egress,
        [
            ("192.0.2.1", 1),
            ("api.example.com", 2),
            ("plain.example.org", 1)
        ]
    );
    assert!(
        a.report
            .nodes
            .iter()
            .filter(|n| n.id != ORDERS)
            .all(|n| n.kind == NodeKind::Egress)
    );
}

/// `r` with trace context: its trace, its own span (a sidecar that traces) and its parent.
fn traced(
    r: FlowRecord<'static>,
    trace: u128,
    span: Option<u64>,
    parent: Option<u64>,
) -> FlowRecord<'static> {
    FlowRecord {
        trace_id: Some(format!("{trace:032x}").into()),
        span_id: span.map(|s| format!("{s:016x}").into()),
        parent_span_id: parent.map(|p| format!("{p:016x}").into()),
        ..r
    }
}

/// The caller's sidecar names the callee by its configured expectation (as it did for
/// `identity: any`); the callee's sidecar names itself.
fn mismatched_pair(i: u64) -> [FlowRecord<'static>; 2] {
    let [outbound, inbound] = both_sides(i as i64, "/api/orders/1", Verdict::Allow);
    let outbound = FlowRecord {
        destination_identity: Some("spiffe://cluster.local/*".into()),
        ..outbound
    };
    let trace = 0xabc0_0000 + u128::from(i);
    let client_span = 0x5000 + i;
    [
        traced(outbound, trace, Some(client_span), Some(0x7000 + i)),
        traced(inbound, trace, Some(0x9000 + i), Some(client_span)),
    ]
}

#[test]
fn both_sides_of_a_request_pair_by_trace_context_not_by_names() {
    let flows: Vec<FlowRecord<'static>> = (1..=10).flat_map(mismatched_pair).collect();
    let a = analyze_flows(&flows, None, None);
    let r = &a.report;
    let ids: Vec<&str> = r.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, [FRONTEND, ORDERS], "no pseudo-node");
    assert_eq!(r.edges.len(), 1, "{:?}", r.edges);
    let e = orders_edge(&a);
    assert_eq!((e.requests, e.allowed), (10, 10));
    assert_eq!(e.routes[0].requests, 10);
    assert_eq!(r.summary.paired, 10);
    // Whatever order the logs come in.
    let mut reversed = flows.clone();
    reversed.reverse();
    let b = analyze_flows(&reversed, None, None);
    assert_eq!(b.report.nodes.len(), 2);
    assert_eq!(orders_edge(&b).requests, 10);

    // Without trace context the names are all there is: the mismatch makes a second node.
    let untraced: Vec<FlowRecord<'static>> = flows
        .into_iter()
        .map(|f| FlowRecord {
            trace_id: None,
            span_id: None,
            parent_span_id: None,
            ..f
        })
        .collect();
    let c = analyze_flows(&untraced, None, None);
    assert_eq!(c.report.nodes.len(), 3);
    assert_eq!(c.report.summary.paired, 0);
}

#[test]
fn unpaired_records_count_by_the_larger_side() {
    let mut flows: Vec<FlowRecord<'static>> = (1..=4).flat_map(mismatched_pair).collect();
    // Three requests only the callee logged (the caller's log was not given), two only the
    // caller logged.
    for i in 20..23 {
        let [_, inbound] = mismatched_pair(i);
        flows.push(inbound);
    }
    for i in 30..32 {
        let [outbound, _] = both_sides(i as i64, "/api/orders/1", Verdict::Allow);
        flows.push(traced(outbound, 0xdead, Some(0x100 + i), None));
    }
    let a = analyze_flows(&flows, None, None);
    assert_eq!(a.report.summary.paired, 4);
    assert_eq!(orders_edge(&a).requests, 4 + 3);
    // The expectation node only ever had paired records: gone.
    assert!(a.report.nodes.iter().all(|n| !n.id.ends_with("/*")));
}

#[test]
fn a_caller_sidecar_that_does_not_trace_pairs_by_the_apps_span() {
    // The app sends both calls under its own span 0x77; the caller's sidecar passes it on,
    // so both callees got it as their parent.
    let mut flows = Vec::new();
    for (dst, path) in [(ORDERS, "/api/orders/1"), (CATALOG, "/api/items/1")] {
        let inbound = flow(
            0,
            Direction::Inbound,
            FRONTEND,
            dst,
            Some("GET"),
            Some(path.into()),
            Some(200),
            Verdict::Allow,
        );
        let outbound = FlowRecord {
            direction: Direction::Outbound,
            verdict: None,
            ..inbound.clone()
        };
        flows.push(traced(outbound, 0xfeed, None, Some(0x77)));
        flows.push(traced(inbound, 0xfeed, Some(0x99), Some(0x77)));
    }
    let a = analyze_flows(&flows, None, None);
    assert_eq!(a.report.summary.paired, 2);
    let counts: Vec<(&str, u64)> = a
        .report
        .edges
        .iter()
        .map(|e| (e.destination.as_str(), e.requests))
        .collect();
    assert_eq!(counts, [(CATALOG, 1), (ORDERS, 1)]);
}
