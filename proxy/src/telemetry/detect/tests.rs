#![allow(clippy::unwrap_used)]
use std::collections::BTreeSet;
use std::time::Duration;

use super::*;
use crate::telemetry::flow::Verdict;

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const CATALOG: &str = "spiffe://cluster.local/ns/shop/sa/catalog";
const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";

fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_700_000_000 + secs).unwrap()
}

fn cfg() -> DetectorConfig {
    DetectorConfig {
        learning_window: Duration::from_secs(60),
        ..DetectorConfig::default()
    }
}

struct F {
    dst: &'static str,
    port: u16,
    method: Option<&'static str>,
    path: String,
    status: Option<u16>,
    verdict: Verdict,
    from: &'static str,
}

fn http(dst: &'static str, method: &'static str, path: impl Into<String>, status: u16) -> F {
    F {
        dst,
        port: 8080,
        method: Some(method),
        path: path.into(),
        status: Some(status),
        verdict: Verdict::Allow,
        from: "10.0.0.1:40000",
    }
}

fn record(f: &F, ts: OffsetDateTime) -> FlowRecord<'_> {
    FlowRecord {
        source_identity: Some(FRONTEND.into()),
        source_address: Some(f.from.parse().unwrap()),
        destination_identity: Some(f.dst.into()),
        destination_port: Some(f.port),
        method: f.method.map(Into::into),
        path: (!f.path.is_empty()).then(|| f.path.as_str().into()),
        status: f.status,
        verdict: Some(f.verdict),
        ..FlowRecord::new(
            ts,
            Direction::Inbound,
            if f.method.is_some() {
                FlowProtocol::Http1
            } else {
                FlowProtocol::Tcp
            },
        )
    }
}

/// The normal life of the frontend: orders and catalog reads, order creation.
fn benign(n: usize) -> Vec<F> {
    (0..n)
        .map(|i| match i % 4 {
            0 => http(ORDERS, "GET", format!("/api/orders/{}", 1000 + i), 200),
            1 => http(ORDERS, "POST", "/api/orders", 201),
            2 => http(CATALOG, "GET", format!("/api/items/{}", i % 7 + 1), 200),
            _ => http(CATALOG, "GET", "/api/items", 200),
        })
        .collect()
}

/// Detectors that learned the benign traffic during the first minute.
fn trained() -> Detectors {
    let mut d = Detectors::new(&cfg());
    for (i, f) in benign(120).iter().enumerate() {
        let alerts = d.observe_flow(&record(f, at(0)), at(i as i64 / 4));
        assert!(alerts.is_empty(), "alert while learning: {alerts:?}");
    }
    d
}

/// Replays `flows` one every 100 ms after learning; returns the alert kinds raised.
fn replay(d: &mut Detectors, flows: &[F]) -> BTreeSet<AlertKind> {
    let mut kinds = BTreeSet::new();
    for (i, f) in flows.iter().enumerate() {
        let now = at(120) + time::Duration::milliseconds(100 * i as i64);
        for a in d.observe_flow(&record(f, now), now) {
            kinds.insert(a.kind);
        }
    }
    kinds
}

fn kinds(list: &[AlertKind]) -> BTreeSet<AlertKind> {
    list.iter().copied().collect()
}

#[test]
fn benign_replay_raises_nothing() {
    let mut d = trained();
    assert_eq!(replay(&mut d, &benign(20)), kinds(&[]));
    // Same length as the longest attack below, with new IDs in the paths.
    let longer: Vec<F> = benign(200).into_iter().skip(100).collect();
    assert_eq!(replay(&mut d, &longer), kinds(&[]));
}

#[test]
fn scan_of_twenty_ports_is_a_port_scan_and_a_new_edge() {
    let flows: Vec<F> = (0..20)
        .map(|p| F {
            port: 8000 + p,
            method: None,
            path: String::new(),
            status: None,
            ..http(ORDERS, "GET", "", 0)
        })
        .collect();
    let mut d = trained();
    assert_eq!(
        replay(&mut d, &flows),
        kinds(&[AlertKind::PortScan, AlertKind::NewEdge])
    );
}

#[test]
fn scan_of_twenty_paths_is_a_path_scan_with_404_burst() {
    let flows: Vec<F> = (0..20)
        .map(|i| http(ORDERS, "GET", format!("/probe{i}/x"), 404))
        .collect();
    let mut d = trained();
    assert_eq!(
        replay(&mut d, &flows),
        kinds(&[
            AlertKind::PathScan,
            AlertKind::NotFoundBurst,
            AlertKind::NewEdge
        ])
    );
}

#[test]
fn calling_a_service_never_called_is_a_new_edge() {
    let mut d = trained();
    let alerts = d.observe_flow(
        &record(&http(PAYMENTS, "POST", "/api/charge", 200), at(200)),
        at(200),
    );
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a.kind, AlertKind::NewEdge);
    assert_eq!(a.source_identity.as_deref(), Some(FRONTEND));
    assert_eq!(a.source_address, Some("10.0.0.1".parse().unwrap()));
    assert_eq!(a.destination.as_deref(), Some(PAYMENTS));
    assert!(a.summary.contains("POST /api/charge"), "{}", a.summary);
    assert_eq!(a.last_seen, at(200));
}

#[test]
fn new_edges_are_learned_not_reported_during_the_learning_window() {
    let mut d = Detectors::new(&cfg());
    let f = http(PAYMENTS, "POST", "/api/charge", 200);
    assert!(d.observe_flow(&record(&f, at(0)), at(0)).is_empty());
    assert!(d.observe_flow(&record(&f, at(59)), at(59)).is_empty());
    assert!(d.observe_flow(&record(&f, at(61)), at(61)).is_empty());
    let g = http(PAYMENTS, "GET", "/api/refunds", 200);
    let alerts = d.observe_flow(&record(&g, at(61)), at(61));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, AlertKind::NewEdge);
}

#[test]
fn admin_probe_is_a_sensitive_path() {
    let mut d = trained();
    assert_eq!(
        replay(&mut d, &[http(ORDERS, "GET", "/admin", 404)]),
        kinds(&[AlertKind::SensitivePath, AlertKind::NewEdge])
    );
    let mut d = trained();
    let alerts = d.observe_flow(
        &record(&http(ORDERS, "GET", "/.env.local", 200), at(300)),
        at(300),
    );
    let probe = alerts
        .iter()
        .find(|a| a.kind == AlertKind::SensitivePath)
        .unwrap();
    assert_eq!(probe.severity, Severity::High, "a probe that succeeded");
    // Segment boundary: /administrator is not /admin.
    assert!(!d.is_sensitive_path("/administrator"));
    assert!(d.is_sensitive_path("/Admin/users"));
    assert!(d.is_sensitive_path("/.git/config"));
}

#[test]
fn replayed_denied_calls_are_a_deny_burst() {
    let flows: Vec<F> = (0..20)
        .map(|_| F {
            verdict: Verdict::Deny,
            ..http(ORDERS, "GET", "/api/orders/1007", 403)
        })
        .collect();
    let mut d = trained();
    assert_eq!(replay(&mut d, &flows), kinds(&[AlertKind::DenyBurst]));
}

#[test]
fn refused_tokens_from_one_source_are_an_invalid_token_burst() {
    let mut d = trained();
    let f = http(ORDERS, "GET", "/api/orders/1007", 401);
    let mut raised = BTreeSet::new();
    for i in 0..20 {
        let now = at(120) + time::Duration::milliseconds(100 * i);
        let mut r = record(&f, now);
        r.verdict = None;
        r.token_error = Some("bad_signature".into());
        for a in d.observe_flow(&r, now) {
            raised.insert(a.kind);
        }
    }
    assert!(raised.contains(&AlertKind::InvalidTokenBurst), "{raised:?}");
    // The same 401s without a refused token (the app's own) are no such burst.
    let mut d = trained();
    let flows: Vec<F> = (0..20)
        .map(|_| http(ORDERS, "GET", "/api/orders/1007", 401))
        .collect();
    assert!(!replay(&mut d, &flows).contains(&AlertKind::InvalidTokenBurst));
}

#[test]
fn bursts_are_counted_inside_the_window_only() {
    let mut d = trained();
    let denied = F {
        verdict: Verdict::Deny,
        ..http(ORDERS, "GET", "/api/orders/1007", 403)
    };
    // Nine denials a minute apart never make ten inside one minute.
    for i in 0..30 {
        let now = at(120 + 61 * i);
        let alerts = d.observe_flow(&record(&denied, now), now);
        assert!(alerts.is_empty(), "{alerts:?}");
    }
}

/// Every spelling of a metadata address or name in a Host value is one (the check decides
/// without formatting the host, so it must agree with `host_only`), and the alert names the
/// host as `host_only` writes it; other hosts are not.
#[test]
fn metadata_hosts_match_in_every_spelling_and_nothing_else_does() {
    let cases = [
        ("169.254.169.254", Some("169.254.169.254")),
        ("169.254.169.254:80", Some("169.254.169.254")),
        ("169.254.169.254.", Some("169.254.169.254")),
        ("[fd00:ec2::254]", Some("fd00:ec2::254")),
        ("[FD00:EC2:0::254]:8080", Some("fd00:ec2::254")),
        ("fd00:ec2:0:0::254", Some("fd00:ec2::254")),
        ("METADATA.Google.Internal", Some("metadata.google.internal")),
        (
            "metadata.google.internal.:80",
            Some("metadata.google.internal"),
        ),
        (
            "[metadata.google.internal]",
            Some("metadata.google.internal"),
        ),
        ("metadata.google.internal.evil", None),
        ("xmetadata.google.internal", None),
        ("metadata.google.interna", None),
        ("169.254.169.25", None),
        ("169.254.169.254.1", None),
        ("10.0.0.2:80", None),
        ("", None),
    ];
    let mut d = trained();
    for (i, (host, named)) in cases.into_iter().enumerate() {
        let now = at(200 + 3_600 * i64::try_from(i).unwrap());
        let alerts = d.observe_outbound_destination(FRONTEND, host, now);
        let got: Vec<_> = alerts.iter().map(|a| a.destination.as_deref()).collect();
        match named {
            Some(n) => assert_eq!(got, [Some(n)], "{host:?}"),
            None => assert!(got.is_empty(), "{host:?}: {alerts:?}"),
        }
    }
}

#[test]
fn metadata_address_calls_are_critical() {
    let mut d = trained();
    let probe = http(ORDERS, "GET", "/latest/meta-data/", 200);
    let mut f = record(&probe, at(130));
    f.direction = Direction::Outbound;
    f.destination_identity = None;
    f.destination_address = Some("169.254.169.254:80".parse().unwrap());
    let got: BTreeSet<_> = d
        .observe_flow(&f, at(130))
        .into_iter()
        .map(|a| (a.kind, a.severity))
        .collect();
    assert!(
        got.contains(&(AlertKind::MetadataAccess, Severity::Critical)),
        "{got:?}"
    );
    let alerts = d.observe_outbound_destination(FRONTEND, "metadata.google.internal:80", at(131));
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        alerts[0].destination.as_deref(),
        Some("metadata.google.internal")
    );
    assert!(
        d.observe_outbound_destination(FRONTEND, "[fd00:ec2::254]:80", at(131))
            .len()
            == 1
    );
    assert!(
        d.observe_outbound_destination(FRONTEND, "10.0.0.2:80", at(131))
            .is_empty()
    );
}

#[test]
fn unauthenticated_attempts_are_reported_once_per_rate_limit_period() {
    let mut d = Detectors::new(&cfg());
    let src: SocketAddr = "10.9.9.9:5555".parse().unwrap();
    assert!(d.observe_handshake_failure(src, "closed", at(0)).is_empty());
    let first = d.observe_handshake_failure(src, "not_tls", at(0));
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].kind, AlertKind::Unauthenticated);
    assert_eq!(first[0].severity, Severity::Medium);
    assert_eq!(first[0].evidence.get("not_tls"), Some(&1));
    for i in 1..5 {
        assert!(
            d.observe_handshake_failure(src, "not_tls", at(i))
                .is_empty()
        );
    }
    // After the rate limit, the next one reports the suppressed repeats; a foreign
    // certificate raises the severity.
    let later = d.observe_handshake_failure(src, "foreign_trust_domain", at(400));
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].severity, Severity::High);
    assert_eq!(later[0].evidence.get("suppressed"), Some(&4));
}

#[test]
fn a_known_identity_from_a_new_address_is_reported_unless_announced_for_it() {
    let mut d = trained();
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let addr = |s: &str| -> SocketAddr { s.parse().unwrap() };
    // While the identity learns (its first minute), its addresses are remembered quietly.
    for (a, t) in [("10.0.0.1", 10), ("10.0.0.2", 20)] {
        assert_eq!(
            d.observe_peer_address(FRONTEND, ip(a), at(t)),
            PeerAddress::Quiet
        );
    }
    assert_eq!(
        d.observe_peer_address(FRONTEND, ip("10.0.0.1"), at(130)),
        PeerAddress::Quiet
    );
    // A replica: a new address the cluster announces for the identity. Quiet, remembered.
    let replica = addr("10.0.0.3:40000");
    assert_eq!(
        d.observe_peer_address(FRONTEND, replica.ip(), at(130)),
        PeerAddress::New
    );
    assert!(
        d.settle_source_address(FRONTEND, replica, Announced::Replica, at(130))
            .is_empty()
    );
    assert_eq!(
        d.observe_peer_address(FRONTEND, replica.ip(), at(131)),
        PeerAddress::Quiet
    );
    // An address the cluster announces for someone else: alerted, low, once.
    let foreign = addr("10.0.0.99:40000");
    assert_eq!(
        d.observe_peer_address(FRONTEND, foreign.ip(), at(132)),
        PeerAddress::New
    );
    let alerts = d.settle_source_address(FRONTEND, foreign, Announced::Elsewhere, at(132));
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(
        (a.kind, a.severity),
        (AlertKind::NewSourceAddress, Severity::Low)
    );
    assert_eq!(a.source_address, Some(foreign.ip()));
    assert_eq!(a.evidence.get("announced_elsewhere"), Some(&1));
    assert_eq!(a.evidence.get("known_addresses"), Some(&3));
    assert!(
        d.settle_source_address(FRONTEND, foreign, Announced::Elsewhere, at(133))
            .is_empty()
    );
    // Nothing announced (file mode, or no answer): today's low-severity signal.
    let other = addr("10.0.0.98:40000");
    assert_eq!(
        d.observe_peer_address(FRONTEND, other.ip(), at(600)),
        PeerAddress::New
    );
    let alerts = d.settle_source_address(FRONTEND, other, Announced::Unknown, at(600));
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].evidence.get("announced_elsewhere"), Some(&0));
    // A new identity's first address is its own, quietly.
    assert_eq!(
        d.observe_peer_address(PAYMENTS, ip("10.0.0.50"), at(600)),
        PeerAddress::Quiet
    );
}

#[test]
fn duplicates_are_rate_limited_per_kind_source_and_destination() {
    let mut d = trained();
    let mut raised = 0;
    for i in 0..50 {
        let f = http(PAYMENTS, "GET", format!("/p{i}"), 200);
        raised += d.observe_flow(&record(&f, at(200 + i)), at(200 + i)).len();
    }
    assert_eq!(raised, 1, "one new_edge alert per source and destination");
    let f = http(PAYMENTS, "GET", "/p-late", 200);
    let later = d.observe_flow(&record(&f, at(600)), at(600));
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].evidence.get("suppressed"), Some(&49));
}

#[test]
fn baseline_edges_are_known_from_the_start() {
    let c = DetectorConfig {
        learning_window: Duration::ZERO,
        ..DetectorConfig::default()
    };
    let mut d = Detectors::new(&c);
    let known = http(ORDERS, "GET", "/api/orders/5", 200);
    let flow_line = serde_json::to_string(&record(&known, at(0))).unwrap();
    let edge_line = serde_json::to_string(&BaselineEdge {
        line_type: LineType::Edge,
        source: FRONTEND.into(),
        destination: CATALOG.into(),
        port: Some(8080),
        route: "GET /api/items".into(),
        status_classes: Vec::new(),
    })
    .unwrap();
    let text = format!("{flow_line}\n{edge_line}\nnot json\n");
    assert_eq!(d.load_baseline(text.as_bytes()).unwrap(), 2);
    assert!(d.observe_flow(&record(&known, at(1)), at(1)).is_empty());
    let items = http(CATALOG, "GET", "/api/items", 200);
    assert!(d.observe_flow(&record(&items, at(1)), at(1)).is_empty());
    let other = http(ORDERS, "DELETE", "/api/orders/5", 200);
    let alerts = d.observe_flow(&record(&other, at(2)), at(2));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, AlertKind::NewEdge);
}

#[test]
fn credential_stuffing_is_an_auth_failure_burst_per_route() {
    let mut d = trained();
    let mut raised = Vec::new();
    for i in 0..50 {
        let now = at(200) + time::Duration::milliseconds(200 * i);
        raised.extend(d.observe_flow(&record(&http(ORDERS, "POST", "/login", 401), now), now));
    }
    let got: BTreeSet<AlertKind> = raised.iter().map(|a| a.kind).collect();
    assert_eq!(
        got,
        kinds(&[AlertKind::AuthFailureBurst, AlertKind::NewEdge])
    );
    let burst = raised
        .iter()
        .find(|a| a.kind == AlertKind::AuthFailureBurst)
        .unwrap();
    assert_eq!(burst.severity, Severity::High);
    assert_eq!(burst.evidence.get("auth_failures"), Some(&10));
    assert_eq!(burst.evidence.get("threshold"), Some(&10));
    assert_eq!(
        burst.destination.as_deref(),
        Some(&*format!("{ORDERS} POST /login"))
    );
    // A policy denial is a denial, not an authentication failure.
    let mut d = trained();
    let denied: Vec<F> = (0..20)
        .map(|_| F {
            verdict: Verdict::Deny,
            ..http(ORDERS, "POST", "/login", 403)
        })
        .collect();
    assert_eq!(
        replay(&mut d, &denied),
        kinds(&[AlertKind::DenyBurst, AlertKind::NewEdge])
    );
}

/// On the caller's side a 403 is an authentication failure when the peer's application sent
/// it: the answer came from a verified peer sidecar, unmarked. The peer sidecar's own 403 (a
/// policy denial, marked) is not, nor is a 403 from outside the mesh (no verified identity).
#[test]
fn the_callers_side_counts_the_peer_applications_403s_and_not_the_peer_sidecars() {
    let burst = |mark: fn(&mut FlowRecord<'_>)| {
        let mut d = trained();
        let f = http(ORDERS, "POST", "/login", 403);
        let mut raised = BTreeSet::new();
        for i in 0..20 {
            let now = at(200) + time::Duration::milliseconds(200 * i);
            let mut r = record(&f, now);
            r.direction = Direction::Outbound;
            r.verdict = None;
            mark(&mut r);
            raised.extend(d.observe_flow(&r, now).into_iter().map(|a| a.kind));
        }
        raised.contains(&AlertKind::AuthFailureBurst)
    };
    assert!(burst(|_| {}), "the peer application's 403s");
    assert!(
        !burst(|r| {
            r.sidecar_answer = true;
            r.peer_sidecar_answer = true;
        }),
        "the peer sidecar's denials"
    );
    assert!(
        !burst(|r| r.destination_identity = None),
        "a destination outside the mesh"
    );
}

/// Two missing static assets asked for at 0.75 a second, on both sides, for ten minutes of
/// learning and then an hour: quiet. A scan from the same source afterwards is not.
#[test]
fn a_steady_benign_404_rate_stays_quiet_for_an_hour() {
    let c = DetectorConfig {
        learning_window: Duration::from_secs(600),
        ..DetectorConfig::default()
    };
    for direction in [Direction::Inbound, Direction::Outbound] {
        let mut d = Detectors::new(&c);
        let mut alerts = Vec::new();
        // One request every 1333 ms for 70 minutes.
        for i in 0..(70 * 45) {
            let now = at(0) + time::Duration::milliseconds(i * 1333);
            let asset = if i % 2 == 0 {
                "/static/logo.png"
            } else {
                "/favicon.ico"
            };
            let miss = http(ORDERS, "GET", asset, 404);
            let mut f = record(&miss, now);
            f.direction = direction;
            alerts.extend(d.observe_flow(&f, now));
            let read = http(ORDERS, "GET", format!("/api/orders/{i}"), 200);
            let ok = record(&read, now);
            alerts.extend(d.observe_flow(&ok, now));
        }
        assert!(alerts.is_empty(), "{direction:?}: {alerts:#?}");
        let state = d.state(at(70 * 60));
        let nf = state
            .burst_counters
            .iter()
            .find(|c| c.counter == "not_found")
            .unwrap();
        assert!((40.0..50.0).contains(&nf.learned_per_window), "{nf:?}");
        assert!(nf.threshold >= 120, "{nf:?}");
        // Ten times the learned rate is a burst.
        let start = at(71 * 60);
        let mut raised = BTreeSet::new();
        for i in 0..600 {
            let now = start + time::Duration::milliseconds(i * 100);
            let miss = http(ORDERS, "GET", "/favicon.ico", 404);
            let mut f = record(&miss, now);
            f.direction = direction;
            raised.extend(d.observe_flow(&f, now).into_iter().map(|a| a.kind));
        }
        assert_eq!(raised, kinds(&[AlertKind::NotFoundBurst]), "{direction:?}");
    }
}

#[test]
fn a_new_identity_learns_visibly_and_a_known_one_does_not() {
    let c = DetectorConfig {
        learning_window: Duration::from_secs(60),
        ..DetectorConfig::default()
    };
    let mut d = Detectors::new(&c);
    let edge = serde_json::to_string(&BaselineEdge {
        line_type: LineType::Edge,
        source: FRONTEND.into(),
        destination: ORDERS.into(),
        port: Some(8080),
        route: "GET /api/orders".into(),
        status_classes: Vec::new(),
    })
    .unwrap();
    d.load_baseline(edge.as_bytes()).unwrap();
    // The known identity reaches a new route: reported at once.
    let alerts = d.observe_flow(
        &record(&http(ORDERS, "DELETE", "/api/orders/1", 200), at(0)),
        at(0),
    );
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(d.take_learning_started().is_empty());
    // A new identity learns for a minute, and says so once.
    let read = http(ORDERS, "GET", "/api/orders", 200);
    let mut f = record(&read, at(1));
    let newcomer = "spiffe://cluster.local/ns/shop/sa/reports";
    f.source_identity = Some(newcomer.into());
    assert!(d.observe_flow(&f, at(1)).is_empty());
    assert!(d.observe_flow(&f, at(2)).is_empty());
    let started = d.take_learning_started();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].identity, newcomer);
    assert_eq!(started[0].until, at(61));
    let state = d.state(at(30));
    assert_eq!(state.learning.len(), 1);
    assert_eq!(state.learning[0].identity, newcomer);
    assert!(d.state(at(62)).learning.is_empty());
    f.method = Some("PUT".into());
    assert_eq!(d.observe_flow(&f, at(62)).len(), 1, "learned by then");
}

#[test]
fn learned_state_survives_a_restart_without_a_new_learning_window() {
    let c = DetectorConfig {
        learning_window: Duration::from_secs(120),
        ..DetectorConfig::default()
    };
    let mut d = Detectors::new(&c);
    for i in 0..240 {
        let f = http(ORDERS, "GET", "/static/missing.png", 404);
        d.observe_flow(&record(&f, at(i)), at(i));
        let f = http(ORDERS, "GET", format!("/api/orders/{i}"), 200);
        d.observe_flow(&record(&f, at(i)), at(i));
    }
    // A new edge after learning: reported, and rate-limited.
    let probe = http(PAYMENTS, "POST", "/api/charge", 200);
    assert_eq!(d.observe_flow(&record(&probe, at(300)), at(300)).len(), 1);
    let saved = d.save_state(at(301)).unwrap();

    // A fresh process: everything learned is back, nothing learns again.
    let mut e = Detectors::new(&c);
    let r = e.restore_state(&saved).unwrap();
    assert_eq!(r.identities, 1);
    assert_eq!(r.edges, d.tracked()[0]);
    assert_eq!(r.burst_counters, 1);
    assert!(
        e.observe_flow(
            &record(&http(ORDERS, "GET", "/api/orders/9", 200), at(302)),
            at(302)
        )
        .is_empty()
    );
    let alerts = e.observe_flow(
        &record(&http(PAYMENTS, "GET", "/api/refunds", 200), at(303)),
        at(303),
    );
    assert_eq!(
        alerts.len(),
        0,
        "the rate limit of the first new edge came back too"
    );
    let alerts = e.observe_flow(
        &record(&http(CATALOG, "DELETE", "/api/items/1", 200), at(303)),
        at(303),
    );
    assert_eq!(
        alerts.len(),
        1,
        "a new edge at once after the restart: {alerts:?}"
    );
    assert!(e.take_learning_started().is_empty());
    let nf = e
        .state(at(303))
        .burst_counters
        .into_iter()
        .find(|c| c.counter == "not_found")
        .unwrap();
    assert!(nf.learned_per_window > 50.0, "{nf:?}");

    // What is not a state file is refused with a reason, and changes nothing.
    let edges_now = e.tracked()[0];
    for (bad, why) in [(&b"{}"[..], "missing field"), (b"not json", "expected")] {
        let err = e.restore_state(bad).unwrap_err();
        assert!(err.contains(why), "{err}");
    }
    let v2 =
        String::from_utf8(saved.clone())
            .unwrap()
            .replacen("\"version\":2", "\"version\":3", 1);
    assert!(
        e.restore_state(v2.as_bytes())
            .unwrap_err()
            .contains("version 3")
    );
    assert_eq!(e.tracked()[0], edges_now);
}

#[test]
fn tables_stay_within_max_tracked() {
    let c = DetectorConfig {
        max_tracked: 100,
        learning_window: Duration::ZERO,
        rate_limit: Duration::ZERO,
        ..DetectorConfig::default()
    };
    let mut d = Detectors::new(&c);
    for i in 0..5000 {
        let f = F {
            from: "10.0.0.1:1",
            ..http(ORDERS, "GET", format!("/r{i}"), 200)
        };
        let mut r = record(&f, at(i));
        let id = format!("spiffe://cluster.local/ns/n{i}/sa/s");
        r.source_identity = Some(id.as_str().into());
        d.observe_flow(&r, at(i));
        d.observe_handshake_failure(
            SocketAddr::from(([10, 1, (i / 256) as u8, (i % 256) as u8], 1)),
            "not_tls",
            at(i),
        );
    }
    for n in d.tracked() {
        assert!(n <= 100, "{:?}", d.tracked());
    }
}

fn vm_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The figures reported in docs/telemetry.md: run with
/// `cargo test -p picket-proxy detector_memory -- --ignored --nocapture --test-threads=1`
/// (add `--release` for an optimised build; the table sizes do not depend on it). Each load
/// runs twice: flows without a status (edges only) and with one (edges and the routes of
/// `status_class_new`), so the difference is what the routes cost.
#[test]
#[ignore = "a measurement, not a check"]
#[allow(clippy::print_stdout)]
fn detector_memory_per_10k_edges() {
    for sources in [100usize, 1000] {
        let mut heaps = Vec::new();
        for with_status in [false, true] {
            let c = DetectorConfig {
                learning_window: Duration::from_secs(3600),
                max_tracked: 1_000_000,
                ..DetectorConfig::default()
            };
            let mut d = Detectors::new(&c);
            // `sources` x 100 routes distinct edges, all learned (no alerts).
            let ids: Vec<String> = (0..sources)
                .map(|i| format!("spiffe://cluster.local/ns/team{i}/sa/client{i}"))
                .collect();
            let paths: Vec<String> = (0..100).map(|i| format!("/api/v1/resource{i}")).collect();
            let before_rss = vm_rss_kib().unwrap_or(0);
            for (s, src) in ids.iter().enumerate() {
                let ip =
                    SocketAddr::from(([10, (s / 65536) as u8, (s / 256) as u8, s as u8], 40000));
                d.observe_peer_address(src, ip.ip(), at(0));
                for (p, path) in paths.iter().enumerate() {
                    let f = FlowRecord {
                        source_identity: Some(src.as_str().into()),
                        source_address: Some(ip),
                        destination_identity: Some(ORDERS.into()),
                        destination_port: Some(8080),
                        method: Some("GET".into()),
                        path: Some(path.as_str().into()),
                        status: with_status.then_some(200),
                        ..FlowRecord::new(at(0), Direction::Inbound, FlowProtocol::Http1)
                    };
                    d.observe_flow(&f, at((s * 100 + p) as i64 / 1000));
                }
            }
            let after_rss = vm_rss_kib().unwrap_or(0);
            let edges = d.tracked()[0];
            let routes = d.tracked()[7];
            let heap = d.heap_bytes();
            println!(
                "detectors, {edges} distinct edges and {routes} routes from {sources} sources: \
                 tables {:?}; heap by capacity {} KiB = {} KiB per 10,000 edges ({} bytes/edge); \
                 VmRSS delta {} KiB = {} KiB per 10,000 edges",
                d.tracked(),
                heap / 1024,
                heap * 10_000 / edges / 1024,
                heap / edges,
                after_rss.saturating_sub(before_rss),
                after_rss.saturating_sub(before_rss) * 10_000 / edges as u64,
            );
            assert_eq!(edges, sources * 100);
            assert_eq!(routes, if with_status { edges } else { 0 });
            heaps.push((heap, after_rss.saturating_sub(before_rss)));
        }
        let routes = sources * 100;
        // The second run reuses memory the first freed, so only the heap figures compare.
        let heap = heaps[1].0.saturating_sub(heaps[0].0);
        println!(
            "routes of status_class_new, {routes} from {sources} sources: heap by capacity {} KiB \
             = {} bytes/route, {} KiB per 10,000 routes",
            heap / 1024,
            heap / routes,
            heap * 10_000 / routes / 1024,
        );
    }
}

#[test]
fn the_digest_memo_never_changes_a_digest() {
    let d = Detectors::new(&cfg());
    let long = "x".repeat(MEMO_MAX_INPUT + 1);
    // Many more distinct inputs than slots, each asked twice, interleaved: every answer is
    // the SipHash digest of exactly that input, hit or miss, kept or evicted.
    let inputs: Vec<(Vec<String>, u64)> = (0..(MEMO_SLOTS * 4))
        .map(|i| {
            let parts = match i % 4 {
                0 => vec![
                    "edge".into(),
                    format!("src{i}"),
                    "dst".into(),
                    "GET /a".into(),
                ],
                1 => vec!["identity".into(), format!("{FRONTEND}{i}")],
                // Parts that concatenate alike must still differ.
                2 => vec!["ab".into(), format!("c{i}")],
                _ => vec!["a".into(), format!("bc{i}")],
            };
            (parts, (i % 3) as u64)
        })
        .chain([(vec!["long".into(), long.clone()], 0)])
        .collect();
    for round in 0..2 {
        for (parts, n) in &inputs {
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            assert_eq!(
                d.digest(&parts, *n),
                d.sip_digest(&parts, *n),
                "round {round}: {parts:?} {n}"
            );
        }
    }
    assert_ne!(d.digest(&["ab", "c1"], 0), d.digest(&["a", "bc1"], 0));
    assert_ne!(d.digest(&["ab", "c1"], 0), d.digest(&["ab", "c1"], 1));
    // A new key (a restored state) is never answered from digests of the old one.
    let mut d = d;
    let before = d.digest(&["identity", FRONTEND], 0);
    d.key = [d.key[0] ^ 1, d.key[1]];
    let after = d.digest(&["identity", FRONTEND], 0);
    assert_ne!(before, after);
    assert_eq!(after, d.sip_digest(&["identity", FRONTEND], 0));
}

/// The `status_class_new` alerts of `flows`, each observed at its time (seconds).
fn status_alerts(d: &mut Detectors, flows: &[(F, i64)]) -> Vec<Alert> {
    flows
        .iter()
        .flat_map(|(f, t)| d.observe_flow(&record(f, at(*t)), at(*t)))
        .filter(|a| a.kind == AlertKind::StatusClassNew)
        .collect()
}

#[test]
fn a_route_that_learned_2xx_alerts_once_when_it_answers_5xx_past_the_floor() {
    let mut d = trained();
    // One odd answer, and a steady route beside it: quiet.
    let quiet: Vec<_> = (0..20)
        .map(|i| (http(CATALOG, "GET", "/api/items/3", 200), 120 + i))
        .chain([(http(CATALOG, "GET", "/api/items", 503), 121)])
        .collect();
    assert!(status_alerts(&mut d, &quiet).is_empty());
    // The floor (3 in the window): one alert, with the evidence.
    let alerts = status_alerts(
        &mut d,
        &[
            (http(CATALOG, "GET", "/api/items", 503), 125),
            (http(CATALOG, "GET", "/api/items", 503), 126),
        ],
    );
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a.severity, Severity::Medium);
    assert_eq!(
        a.destination.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/catalog GET /api/items")
    );
    assert_eq!(a.evidence.get("status_class"), Some(&5));
    assert_eq!(a.evidence.get("answers"), Some(&3));
    assert_eq!(a.evidence.get("threshold"), Some(&3));
    assert!(a.summary.contains("known: 2xx"), "{}", a.summary);
    // Reported once: 5xx is now an answer the route gives (and past the rate limit too).
    let later: Vec<_> = (0..5)
        .map(|i| (http(CATALOG, "GET", "/api/items", 503), 1000 + i))
        .collect();
    assert!(status_alerts(&mut d, &later).is_empty());
    let state = d.state(at(1010));
    let route = state
        .routes
        .iter()
        .find(|r| r.destination == CATALOG && r.route == "GET /api/items")
        .unwrap();
    assert_eq!(route.status_classes, ["2xx", "5xx"]);
    assert!(route.learning_until.is_none());
    assert_eq!(state.parameters.status_class_threshold, 3);
    assert_eq!(state.tables.routes, state.routes.len());
}

#[test]
fn odd_answers_in_different_windows_do_not_add_up() {
    let mut d = trained();
    let flows: Vec<_> = [130, 131, 200, 201, 300, 301]
        .into_iter()
        .map(|t| (http(CATALOG, "GET", "/api/items", 500), t))
        .collect();
    assert!(status_alerts(&mut d, &flows).is_empty());
}

#[test]
fn success_on_a_route_that_only_refused_is_high() {
    let mut d = Detectors::new(&cfg());
    let flows: Vec<_> = (0..10)
        .map(|i| (http(ORDERS, "POST", "/api/admin/export", 403), i))
        .collect();
    assert!(status_alerts(&mut d, &flows).is_empty());
    let flows: Vec<_> = (0..3)
        .map(|i| (http(ORDERS, "POST", "/api/admin/export", 200), 100 + i))
        .collect();
    let alerts = status_alerts(&mut d, &flows);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].severity, Severity::High);
}

#[test]
fn denials_refused_tokens_and_the_sidecars_own_errors_are_not_route_answers() {
    let mut d = trained();
    let route = |status| http(CATALOG, "GET", "/api/items", status);
    for i in 0..5 {
        let t = at(130 + i);
        let denied = route(403);
        let mut denied = record(&denied, t);
        denied.verdict = Some(Verdict::Deny);
        let token = route(401);
        let mut token = record(&token, t);
        token.token_error = Some("expired".into());
        let unreachable = route(503);
        let mut unreachable = record(&unreachable, t);
        unreachable.sidecar_answer = true;
        for f in [denied, token, unreachable] {
            let alerts = d.observe_flow(&f, t);
            assert!(
                alerts.iter().all(|a| a.kind != AlertKind::StatusClassNew),
                "{alerts:?}"
            );
        }
    }
}

#[test]
fn a_route_first_seen_after_learning_learns_its_classes_for_the_learning_window() {
    let mut d = trained();
    // A new route: a new edge, and its classes are learned for `learning_window` (60 s).
    let route = |status| http(CATALOG, "GET", "/api/reports", status);
    let first: Vec<_> = [(200, 130), (500, 131), (500, 132), (500, 133)]
        .into_iter()
        .map(|(s, t)| (route(s), t))
        .collect();
    assert!(status_alerts(&mut d, &first).is_empty());
    // After it: a class it never answered alerts.
    let later: Vec<_> = (0..3).map(|i| (route(404), 200 + i)).collect();
    let alerts = status_alerts(&mut d, &later);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(
        alerts[0].summary.contains("known: 2xx, 5xx"),
        "{}",
        alerts[0].summary
    );
}

#[test]
fn learned_status_classes_survive_a_restart_and_come_from_a_baseline() {
    let d = trained();
    let saved = d.save_state(at(130)).unwrap();
    let mut e = Detectors::new(&cfg());
    let r = e.restore_state(&saved).unwrap();
    assert_eq!(r.routes, d.tracked()[7]);
    assert!(r.routes > 0);
    let flows: Vec<_> = (0..3)
        .map(|i| (http(CATALOG, "GET", "/api/items", 502), 140 + i))
        .collect();
    assert_eq!(status_alerts(&mut e, &flows).len(), 1);
    // A state file of version 1 (no routes) still loads.
    let v1 = String::from_utf8(saved)
        .unwrap()
        .replacen("\"version\":2", "\"version\":1", 1);
    let v1 = v1.split(",\"routes\":").next().unwrap().to_owned() + "}";
    assert_eq!(
        Detectors::new(&cfg())
            .restore_state(v1.as_bytes())
            .unwrap()
            .routes,
        0
    );
    // A bad class name in a state file is refused with its place.
    let bad = String::from_utf8(e.save_state(at(150)).unwrap())
        .unwrap()
        .replacen("\"2xx\"", "\"9xx\"", 1);
    let err = Detectors::new(&cfg())
        .restore_state(bad.as_bytes())
        .unwrap_err();
    assert!(
        err.contains("status_classes") && err.contains("9xx"),
        "{err}"
    );

    // A baseline edge line with the classes the route answered: known at once, from the
    // first answer (no learning window, no first class taken as learned).
    let c = DetectorConfig {
        learning_window: Duration::from_secs(600),
        ..DetectorConfig::default()
    };
    let mut b = Detectors::new(&c);
    let line = serde_json::to_string(&BaselineEdge {
        line_type: LineType::Edge,
        source: FRONTEND.into(),
        destination: ORDERS.into(),
        port: Some(8080),
        route: "GET /api/orders".into(),
        status_classes: vec!["2xx".into(), "4xx".into()],
    })
    .unwrap();
    b.load_baseline(line.as_bytes()).unwrap();
    let route = |status| http(ORDERS, "GET", "/api/orders", status);
    let flows: Vec<_> = [200, 404, 500, 500, 500]
        .into_iter()
        .enumerate()
        .map(|(i, s)| (route(s), i as i64))
        .collect();
    let alerts = status_alerts(&mut b, &flows);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].evidence.get("status_class"), Some(&5));
}

#[test]
fn each_new_class_of_a_route_is_reported_inside_the_rate_limit() {
    let mut d = Detectors::new(&cfg());
    let route = |status| http(ORDERS, "POST", "/api/admin/export", status);
    let learned: Vec<_> = (0..10).map(|i| (route(403), i)).collect();
    assert!(status_alerts(&mut d, &learned).is_empty());
    // New failures, then success a minute later: two alerts, the second high.
    let probes: Vec<_> = (0..3)
        .map(|i| (route(500), 100 + i))
        .chain((0..3).map(|i| (route(200), 160 + i)))
        .collect();
    let alerts = status_alerts(&mut d, &probes);
    let got: Vec<(u64, Severity)> = alerts
        .iter()
        .map(|a| (a.evidence["status_class"], a.severity))
        .collect();
    assert_eq!(got, [(5, Severity::Medium), (2, Severity::High)]);
}

#[test]
fn a_flow_log_read_as_a_baseline_does_not_learn_the_sidecars_own_answers() {
    // A flow log of the live detectors: the route answered 200, and the sidecar answered 503
    // for it while the app was down. Written as the flow log writes it, read back as a
    // baseline.
    let ok = http(CATALOG, "GET", "/api/items", 200);
    let down = http(CATALOG, "GET", "/api/items", 503);
    let mut unreachable = record(&down, at(0));
    unreachable.sidecar_answer = true;
    let log: Vec<String> = [record(&ok, at(0)), unreachable]
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    assert!(log[1].contains("\"sidecar_answer\":true"), "{}", log[1]);
    assert!(!log[0].contains("sidecar_answer"), "{}", log[0]);
    let mut d = Detectors::new(&cfg());
    d.load_baseline(log.join("\n").as_bytes()).unwrap();
    // The app itself now answers 5xx: a class the route never answered, as the live
    // detectors would have judged it.
    let flows: Vec<_> = (0..3)
        .map(|i| (http(CATALOG, "GET", "/api/items", 500), 10 + i))
        .collect();
    let alerts = status_alerts(&mut d, &flows);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].evidence.get("status_class"), Some(&5));
}

#[test]
fn learns_and_learning_give_one_answer_for_every_identity_and_window() {
    for window in [0, 60] {
        let c = DetectorConfig {
            learning_window: Duration::from_secs(window),
            ..DetectorConfig::default()
        };
        let mut d = Detectors::new(&c);
        // Milliseconds: an identity unseen, seen inside its window, at its end, and another.
        for (id, t) in [
            (FRONTEND, 0),
            (FRONTEND, 30_000),
            (ORDERS, 59_000),
            (FRONTEND, 60_000),
            (ORDERS, 118_999),
            (CATALOG, 120_000),
        ] {
            let asked = d.learns(id, t);
            assert_eq!(
                d.learning(Some((id, d.identity_key(id))), t),
                asked,
                "{id} at {t} ms, learning window {window} s"
            );
        }
    }
}

/// Detectors with room for `cap` keys per table that learned, for a minute, a route that only
/// refused (403) and nothing else.
fn small_and_trained(cap: usize) -> Detectors {
    let c = DetectorConfig {
        max_tracked: cap,
        ..cfg()
    };
    let mut d = Detectors::new(&c);
    for i in 0..10 {
        let f = http(ORDERS, "POST", "/api/admin/export", 403);
        assert!(d.observe_flow(&record(&f, at(i)), at(i)).is_empty());
    }
    d
}

#[test]
fn a_flood_of_new_routes_cannot_flush_a_learned_route() {
    let mut d = small_and_trained(8);
    // After learning: 50 distinct routes (each a new edge and a new route) fill the tables.
    for i in 0..50 {
        let f = http(CATALOG, "GET", format!("/flood/x{i}"), 404);
        d.observe_flow(&record(&f, at(100)), at(100));
    }
    let refused = d.take_refused();
    let routes = refused
        .iter()
        .find(|r| r.table == LearnedTable::Routes)
        .unwrap();
    assert!(routes.first && routes.count > 0, "{refused:?}");
    assert!(d.take_refused().is_empty(), "taken once");
    let tables = d.state(at(100)).tables;
    assert_eq!(tables.routes, 8);
    assert_eq!(tables.refused.routes, routes.count);
    // The route that only refused still knows it: success on it is new, and high.
    let flows: Vec<_> = (0..3)
        .map(|i| (http(ORDERS, "POST", "/api/admin/export", 200), 200 + i))
        .collect();
    let alerts = status_alerts(&mut d, &flows);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].severity, Severity::High);
}

#[test]
fn a_flood_of_new_identities_cannot_reopen_a_known_identitys_learning_window() {
    let mut d = small_and_trained(8);
    // 20 new identities: the table of known identities fills; FRONTEND stays known.
    for i in 0..20 {
        let f = http(ORDERS, "POST", "/api/admin/export", 403);
        let mut r = record(&f, at(100));
        let id = format!("spiffe://cluster.local/ns/flood/sa/s{i}");
        r.source_identity = Some(id.as_str().into());
        d.observe_flow(&r, at(100));
    }
    let refused = d.take_refused();
    assert!(
        refused
            .iter()
            .any(|r| r.table == LearnedTable::Identities && r.count > 0),
        "{refused:?}"
    );
    // FRONTEND's new edge is reported, not learned in a new window.
    let f = http(PAYMENTS, "POST", "/api/refunds", 200);
    let alerts = d.observe_flow(&record(&f, at(101)), at(101));
    assert!(
        alerts.iter().any(|a| a.kind == AlertKind::NewEdge),
        "{alerts:?}"
    );
    // An identity the full table refused does not learn either: its new edge is reported.
    let mut r = record(&f, at(102));
    r.source_identity = Some("spiffe://cluster.local/ns/flood/sa/late".into());
    let alerts = d.observe_flow(&r, at(102));
    assert!(
        alerts.iter().any(|a| a.kind == AlertKind::NewEdge),
        "{alerts:?}"
    );
}

#[test]
fn a_flows_keys_are_its_tables_own_digests_from_the_memo_or_not() {
    let d = Detectors::new(&cfg());
    let ids = [None, Some(""), Some("spiffe://td/ns/a/sa/x"), Some("i")];
    let names = [
        "",
        "i",
        "n",
        "spiffe://td/ns/a/sa/x",
        "10.0.0.7",
        "orders:8080",
    ];
    let ports = [None, Some(0), Some(8080), Some(u16::MAX)];
    let routes = ["", "GET /", "GET /orders/{id}"];
    let direct =
        |id: Option<&str>, src: &str, dst: &str, port: Option<u16>, route: &str| FlowKeys {
            identity: id.map(|i| d.sip_digest(&["identity", i], 0)),
            edge: d.sip_digest(&["edge", src, dst, route], port.map_or(u64::MAX, u64::from)),
            source: d.sip_digest(&["source", src], 0),
            destination: d.sip_digest(&["dest", dst], 0),
            route: d.sip_digest(&["route", route], 0),
            status: d.sip_digest(&["status", src, dst, route], 0),
            rates: Counter::ALL.map(|c| {
                let (dst, route) = rate_scope(c, dst, route);
                d.sip_digest(&["rate", c.as_str(), src, dst, route], 0)
            }),
        };
    // Each flow twice in a row (the second from the memo), and flows that differ in one part
    // only (the identity innermost: none and the empty name) one after the other.
    for src in names {
        for dst in names {
            for port in ports {
                for route in routes {
                    for id in ids {
                        let want = format!("{:?}", direct(id, src, dst, port, route));
                        for _ in 0..2 {
                            let got = d.flow_keys(id, src, dst, port, route);
                            assert_eq!(
                                format!("{got:?}"),
                                want,
                                "{id:?} {src:?} {dst:?} {port:?} {route:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn the_last_host_judged_is_remembered_and_answers_the_same() {
    let d = Detectors::new(&cfg());
    let hosts = [
        "169.254.169.254",
        "169.254.169.254",
        "10.0.0.2:80",
        "169.254.169.254:80",
        "10.0.0.2:80",
        "10.0.0.2:80",
        "METADATA.Google.Internal",
        "metadata.google.internal.evil",
        "metadata.google.internal.evil",
        "METADATA.Google.Internal",
        "",
        "",
    ];
    for host in hosts {
        assert_eq!(d.names_metadata(host), d.judge_metadata(host), "{host:?}");
        assert_eq!(
            d.metadata_last.borrow().as_ref().map(|(h, _)| &**h),
            Some(host)
        );
    }
}

/// A flow without identities is named by its source address and its host, in the alert as in
/// the tables' keys (the names the detectors borrow when there are identities, and build when
/// there are none).
#[test]
fn a_flow_without_identities_is_named_by_its_address_and_host() {
    let mut d = trained();
    let flow = http(ORDERS, "GET", "/x", 200);
    let mut f = record(&flow, at(130));
    f.source_identity = None;
    f.source_address = Some("10.9.0.7:1234".parse().unwrap());
    f.destination_identity = None;
    f.host = Some("shop.example:8080".into());
    let alerts = d.observe_flow(&f, at(130));
    let edge = alerts
        .iter()
        .find(|a| a.kind == AlertKind::NewEdge)
        .unwrap();
    assert!(
        edge.summary
            .starts_with("10.9.0.7 reached shop.example:8080 "),
        "{}",
        edge.summary
    );
    assert_eq!(edge.destination.as_deref(), Some("shop.example"));
}
