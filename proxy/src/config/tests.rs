#![allow(clippy::unwrap_used)]
use super::*;

const GOOD: &str = "\
identity: { trust_domain: cluster.local, namespace: shop, service_account: frontend }
ca: { url: \"https://127.0.0.1:7443\", trust_bundle: /b.pem, join_token_file: /t }
inbound: { app: \"127.0.0.1:8080\" }
outbound:
  upstreams:
  - name: orders
    listen: \"127.0.0.1:7150\"
    address: \"10.0.0.2:7143\"
    identity: spiffe://cluster.local/ns/shop/sa/orders
";

#[test]
fn parses_with_defaults() {
    let c = Config::parse("s.yaml", GOOD).unwrap();
    assert_eq!(
        c.identity.to_string(),
        "spiffe://cluster.local/ns/shop/sa/frontend"
    );
    assert_eq!(c.inbound.listen.to_string(), DEFAULT_INBOUND);
    assert_eq!(c.outbound.listen.to_string(), DEFAULT_OUTBOUND);
    assert_eq!(c.admin.listen.to_string(), DEFAULT_ADMIN);
    assert_eq!(c.outbound.upstreams[0].protocol, Protocol::Http);
    assert_eq!(c.timeouts.handshake, Duration::from_secs(10));
    assert_eq!(c.limits.max_connections, 10_000);
}

fn error(text: &str) -> YamlError {
    Config::parse("s.yaml", text).unwrap_err()
}

#[test]
fn fallback_ca_urls_follow_the_first_and_are_checked() {
    let c = Config::parse("s.yaml", GOOD).unwrap();
    assert_eq!(c.ca.urls, ["https://127.0.0.1:7443"]);
    let more = GOOD.replace(
        "join_token_file: /t }",
        "join_token_file: /t,\n  fallback_urls: [\"https://10.0.0.9:7443\", \"https://ca-b:7443\"] }",
    );
    let c = Config::parse("s.yaml", &more).unwrap();
    assert_eq!(
        c.ca.urls,
        [
            "https://127.0.0.1:7443",
            "https://10.0.0.9:7443",
            "https://ca-b:7443"
        ]
    );
    let e = error(&more.replace("https://ca-b", "http://ca-b"));
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.message.contains("ca.fallback_urls[1]"), "{e}");
    let e = error(&more.replace("https://ca-b:7443", "https://127.0.0.1:7443"));
    assert!(e.message.contains("already listed"), "{e}");
}

#[test]
fn unknown_field_is_an_error_with_location() {
    let e = error(&GOOD.replace("inbound: {", "inbound: { color: red,"));
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.to_string().starts_with("s.yaml:3:"), "{e}");
    assert!(e.to_string().contains("color"), "{e}");
}

#[test]
fn bad_values_name_field_and_line() {
    for (from, to, line, needle) in [
        ("\"127.0.0.1:8080\"", "\"localhost\"", 3, "inbound.app"),
        (
            "https://127.0.0.1:7443",
            "http://127.0.0.1:7443",
            2,
            "ca.url",
        ),
        ("sa/orders", "sa/Orders", 9, "identity"),
        ("10.0.0.2:7143", "10.0.0.2", 8, "outbound.upstreams.address"),
    ] {
        let e = error(&GOOD.replace(from, to));
        assert_eq!(e.line, Some(line), "{from}: {e}");
        assert!(e.message.contains(needle), "{from}: {e}");
    }
}

#[test]
fn upstream_outside_trust_domain_is_refused() {
    let e = error(&GOOD.replace(
        "spiffe://cluster.local/ns/shop/sa/orders",
        "spiffe://other.example/ns/shop/sa/orders",
    ));
    assert!(
        e.message.contains("outside this workload's trust domain"),
        "{e}"
    );
}

#[test]
fn zero_and_malformed_durations_are_refused() {
    let e = error(&format!("{GOOD}timeouts: {{ idle: 0s }}\n"));
    assert!(e.message.contains("timeouts.idle"), "{e}");
    let e = error(&format!("{GOOD}timeouts: {{ idle: soon }}\n"));
    assert!(e.message.contains("timeouts.idle"), "{e}");
}

#[test]
fn duplicate_keys_are_refused() {
    let e = error(&format!(
        "{GOOD}admin: {{ listen: \"127.0.0.1:1\" }}\nadmin: {{ listen: \"127.0.0.1:2\" }}\n"
    ));
    assert!(e.line.is_some(), "{e}");
}

#[test]
fn tcp_upstream_needs_a_listener() {
    let e = error(
        &GOOD
            .replace("    listen: \"127.0.0.1:7150\"\n", "")
            .replacen("orders\n", "orders\n    protocol: tcp\n", 1),
    );
    assert!(e.message.contains("tcp upstream needs"), "{e}");
}

#[test]
fn inbound_mode_and_health_probes_are_validated() {
    let c = Config::parse("s.yaml", GOOD).unwrap();
    assert_eq!(c.inbound.mode, InboundMode::Strict);
    assert!(c.health.is_none());
    let with = |inbound_extra: &str| {
        GOOD.replacen("inbound: {", &format!("inbound: {{ {inbound_extra}"), 1)
    };
    let c = Config::parse("s.yaml", &with("mode: permissive,")).unwrap();
    assert!(c.inbound.mode.permits_plaintext(1));
    let c = Config::parse("s.yaml", &with("permissive_ports: [8080],")).unwrap();
    assert!(c.inbound.mode.permits_plaintext(8080) && !c.inbound.mode.permits_plaintext(8081));
    for (text, needle) in [
        (with("mode: open,"), "inbound.mode"),
        (
            with("mode: permissive, permissive_ports: [1],"),
            "permissive_ports",
        ),
        (
            format!("{GOOD}health: {{ probes: [{{ name: a/livez }}] }}\n"),
            "exactly one of",
        ),
        (
            format!("{GOOD}health: {{ probes: [{{ name: A, tcp: {{ port: 1 }} }}] }}\n"),
            "health.probes.name",
        ),
        (
            format!(
                "{GOOD}health: {{ probes: [{{ name: a, http: {{ port: 1, scheme: FTP }} }}] }}\n"
            ),
            "scheme",
        ),
        (
            format!(
                "{GOOD}health: {{ probes: [{{ name: a, tcp: {{ port: 1 }} }}, {{ name: a, tcp: {{ port: 2 }} }}] }}\n"
            ),
            "duplicate",
        ),
    ] {
        let e = error(&text);
        assert!(e.message.contains(needle), "{needle}: {e}");
    }
    let c = Config::parse(
            "s.yaml",
            &format!("{GOOD}health: {{ probes: [{{ name: app/readyz, grpc: {{ port: 9000 }}, timeout: 2s }}] }}\n"),
        )
        .unwrap();
    let health = c.health.unwrap();
    assert_eq!(health.listen.to_string(), DEFAULT_HEALTH);
    assert_eq!(health.probes["app/readyz"].timeout, Duration::from_secs(2));
}

/// Errors about a missing value point at the section it belongs in; none is without a place.
#[test]
fn every_error_has_a_line_and_column() {
    for (text, line, needle) in [
        (
            GOOD.replace(", service_account: frontend", ""),
            1,
            "identity.service_account is missing",
        ),
        (
            GOOD.replace("inbound: { app: \"127.0.0.1:8080\" }", "inbound: { }"),
            3,
            "inbound.app is missing",
        ),
        (
            GOOD.replace(
                "inbound: { app: \"127.0.0.1:8080\" }",
                "inbound: { app: \"127.0.0.1:8080\", permissive_ports: [8080, 0] }",
            ),
            3,
            "inbound.permissive_ports: 0 is not a port",
        ),
        (
            format!("{GOOD}policy: {{ root_namespace: Shop }}\n"),
            10,
            "policy.root_namespace",
        ),
        (format!("{GOOD}outbound_extra: 1\n"), 10, "outbound_extra"),
    ] {
        let e = Config::parse("s.yaml", &text).unwrap_err();
        assert_eq!(e.line, Some(line), "{needle}: {e}");
        assert!(e.column.is_some(), "{needle}: {e}");
        assert!(e.message.contains(needle), "{needle}: {e}");
        assert!(e.to_string().starts_with(&format!("s.yaml:{line}:")), "{e}");
    }
}

const DESTINATIONS: &str = "  unmeshed: plaintext
  balancer: { pending_wait: 50ms, failures: 3, backoff: 100ms, backoff_max: 2s, decay: 1s }
  destinations:
  - address: \"10.96.0.10:80\"
    service: shop/orders
    endpoints:
    - { address: \"10.0.0.2:8080\", identity: spiffe://cluster.local/ns/shop/sa/orders }
    - { address: \"10.0.0.3:8080\" }
  - address: \"10.96.0.11:5432\"
";

#[test]
fn listed_destinations_and_balancer_settings_parse() {
    let c = Config::parse("s.yaml", &format!("{GOOD}{DESTINATIONS}")).unwrap();
    let o = &c.outbound;
    assert_eq!(o.unmeshed, Unmeshed::Plaintext);
    assert_eq!(o.balancer.pending_wait, Duration::from_millis(50));
    assert_eq!(o.balancer.failures, 3);
    assert_eq!(o.balancer.backoff, Duration::from_millis(100));
    assert_eq!(o.balancer.backoff_max, Duration::from_secs(2));
    assert_eq!(o.balancer.decay, Duration::from_secs(1));
    assert_eq!(o.destinations.len(), 2);
    let (addr, orders) = &o.destinations[0];
    assert_eq!(addr.to_string(), "10.96.0.10:80");
    assert_eq!(orders.service.as_deref(), Some("shop/orders"));
    assert_eq!(
        orders.endpoints[0].identity.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/orders")
    );
    assert_eq!(orders.endpoints[1].identity, None);
    // Known with no endpoints is a valid answer (503 for its requests).
    assert!(o.destinations[1].1.endpoints.is_empty());
    // Defaults: deny, and the built-in balancer settings.
    let c = Config::parse("s.yaml", GOOD).unwrap();
    assert_eq!(c.outbound.unmeshed, Unmeshed::Deny);
    assert_eq!(c.outbound.balancer, BalancerSettings::default());
    assert!(c.outbound.destinations.is_empty());
}

#[test]
fn bad_destinations_name_field_line_and_column() {
    let full = format!("{GOOD}{DESTINATIONS}");
    for (from, to, line, needle) in [
        (
            "unmeshed: plaintext",
            "unmeshed: allow",
            10,
            "outbound.unmeshed",
        ),
        (
            "failures: 3",
            "failures: 0",
            11,
            "outbound.balancer.failures",
        ),
        (
            "backoff: 100ms",
            "backoff: 0s",
            11,
            "outbound.balancer.backoff",
        ),
        ("backoff_max: 2s", "backoff_max: 10ms", 11, "backoff_max"),
        (
            "pending_wait: 50ms",
            "pending_wait: soon",
            11,
            "pending_wait",
        ),
        ("decay: 1s", "decay: 0ms", 11, "outbound.balancer.decay"),
        (
            "\"10.96.0.10:80\"",
            "\"10.96.0.10\"",
            13,
            "outbound.destinations.address",
        ),
        (
            "shop/orders\n",
            "orders\n",
            14,
            "outbound.destinations.service",
        ),
        (
            "sa/orders }",
            "sa/Orders }",
            16,
            "outbound.destinations.endpoints.identity",
        ),
        (
            "spiffe://cluster.local/ns/shop/sa/orders }",
            "spiffe://other.example/ns/shop/sa/orders }",
            16,
            "outside this workload's trust domain",
        ),
        (
            "\"10.0.0.3:8080\"",
            "\"10.0.0.2:8080\"",
            17,
            "10.0.0.2:8080 is listed twice",
        ),
        (
            "\"10.96.0.11:5432\"",
            "\"10.96.0.10:80\"",
            18,
            "10.96.0.10:80 is listed twice",
        ),
        (
            "{ address: \"10.0.0.3:8080\" }",
            "{ address: \"10.0.0.3:8080\", weight: 2 }",
            17,
            "weight",
        ),
    ] {
        assert!(full.contains(from), "{from}");
        let e = error(&full.replacen(from, to, 1));
        assert_eq!(e.line, Some(line), "{from}: {e}");
        assert!(e.column.is_some(), "{from}: {e}");
        assert!(e.message.contains(needle), "{from}: {e}");
    }
}

#[test]
fn controller_section_is_validated_with_locations() {
    assert_eq!(Config::parse("s.yaml", GOOD).unwrap().controller, None);
    let with = format!(
        "{GOOD}controller:\n  address: picket-controller.picket.svc:7150\n  identity: spiffe://cluster.local/ns/picket/sa/picket-controller\n"
    );
    let c = Config::parse("s.yaml", &with).unwrap();
    let source = c.controller.unwrap();
    assert_eq!(source.address, "picket-controller.picket.svc:7150");
    assert_eq!(
        source.identity.to_string(),
        "spiffe://cluster.local/ns/picket/sa/picket-controller"
    );
    for (from, to, line, needle) in [
        ("svc:7150", "svc", 11, "controller.address"),
        ("svc:7150", "svc:0", 11, "controller.address"),
        (
            "cluster.local/ns/picket",
            "other.td/ns/picket",
            12,
            "outside this workload's trust domain",
        ),
        (
            "spiffe://cluster.local/ns/picket/sa/picket-controller",
            "picket",
            12,
            "controller.identity",
        ),
    ] {
        let e = error(&with.replacen(from, to, 1));
        assert_eq!(e.line, Some(line), "{from}: {e}");
        assert!(e.message.contains(needle), "{from}: {e}");
        assert!(e.column.is_some(), "{from}: {e}");
    }
}
