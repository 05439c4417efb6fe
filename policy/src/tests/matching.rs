//! Every field and every match form, one row each: a single ALLOW rule, a request, and whether
//! the rule matches (the verdict is allow exactly when it does).

use super::{ADMIN, FRONTEND, Req, doc, orders_policies};
use crate::{Reason, Verdict};

fn check(rows: Vec<(&str, Req, bool)>) {
    for (rule, req, want) in rows {
        let flow = if rule.starts_with('{') {
            rule.to_owned()
        } else {
            format!("{{{rule}}}")
        };
        let text = doc("p", &format!("  rules:\n  - {flow}\n"));
        let policies = orders_policies(&text);
        let decision = req.evaluate(&policies);
        assert_eq!(
            decision.verdict == Verdict::Allow,
            want,
            "rule {rule}\nrequest {req:?}\ndecision {decision:?}\n{}",
            req.explain(&policies)
        );
        if want {
            assert_eq!(decision.reason, Reason::AllowMatch);
            assert_eq!(decision.rule, Some(0));
        }
        // The explanation agrees with the verdict.
        let explained = req.explain(&policies);
        assert_eq!(explained.policies[0].rules[0].matched, want, "{explained}");
    }
}

fn src(fields: &str) -> String {
    format!("from: [{{source: {{{fields}}}}}]")
}

fn op(fields: &str) -> String {
    format!("to: [{{operation: {{{fields}}}}}]")
}

fn when(key: &str, rest: &str) -> String {
    format!("when: [{{key: \"{key}\", {rest}}}]")
}

#[test]
fn principals() {
    let exact = src(&format!("principals: [\"{FRONTEND}\"]"));
    let spiffe = src(&format!("principals: [\"spiffe://{FRONTEND}\"]"));
    let prefix = src("principals: [\"cluster.local/ns/shop/*\"]");
    let suffix = src("principals: [\"*/sa/frontend\"]");
    let present = src("principals: [\"*\"]");
    let not = src(&format!("notPrincipals: [\"{ADMIN}\"]"));
    let not_any = src("notPrincipals: [\"*\"]");
    check(vec![
        (&exact, Req::http(FRONTEND), true),
        (&exact, Req::http(ADMIN), false),
        (&exact, Req::http(FRONTEND).anonymous(), false),
        (&exact, Req::http(&format!("spiffe://{FRONTEND}")), true),
        (
            &exact,
            Req::http("cluster.local/ns/shop/sa/frontendx"),
            false,
        ),
        (&spiffe, Req::http(FRONTEND), true),
        (&prefix, Req::http(FRONTEND), true),
        (&prefix, Req::http(ADMIN), false),
        (&suffix, Req::http(FRONTEND), true),
        (&suffix, Req::http("other.domain/ns/x/sa/frontend"), true),
        (&suffix, Req::http(ADMIN), false),
        (&present, Req::http(ADMIN), true),
        (&present, Req::http(ADMIN).anonymous(), false),
        (&not, Req::http(FRONTEND), true),
        (&not, Req::http(ADMIN), false),
        (&not, Req::http(ADMIN).anonymous(), true),
        (&not_any, Req::http(ADMIN), false),
        (&not_any, Req::http(ADMIN).anonymous(), true),
    ]);
}

#[test]
fn namespaces() {
    let exact = src("namespaces: [shop]");
    let prefix = src("namespaces: [\"sh*\"]");
    let suffix = src("namespaces: [\"*ps\"]");
    let not = src("notNamespaces: [ops]");
    check(vec![
        (&exact, Req::http(FRONTEND), true),
        (&exact, Req::http(ADMIN), false),
        (&exact, Req::http(FRONTEND).anonymous(), false),
        (&exact, Req::http("not-a-spiffe-path"), false),
        (&prefix, Req::http(FRONTEND), true),
        (&suffix, Req::http(ADMIN), true),
        (&suffix, Req::http(FRONTEND), false),
        (&not, Req::http(FRONTEND), true),
        (&not, Req::http(ADMIN), false),
        (&not, Req::http(ADMIN).anonymous(), true),
    ]);
}

#[test]
fn ip_blocks() {
    let v4 = src("ipBlocks: [10.0.0.0/8, 192.168.1.7]");
    let v6 = src("ipBlocks: [\"2001:db8::/32\"]");
    let not = src("notIpBlocks: [10.9.0.0/16]");
    check(vec![
        (&v4, Req::http(FRONTEND).ip("10.200.3.4"), true),
        (&v4, Req::http(FRONTEND).ip("192.168.1.7"), true),
        (&v4, Req::http(FRONTEND).ip("192.168.1.8"), false),
        (&v4, Req::http(FRONTEND).ip("::ffff:10.1.1.1"), true),
        (&v4, Req::http(FRONTEND).ip("2001:db8::1"), false),
        (&v6, Req::http(FRONTEND).ip("2001:db8:1::1"), true),
        (&v6, Req::http(FRONTEND).ip("2001:db9::1"), false),
        (&not, Req::http(FRONTEND).ip("10.9.1.1"), false),
        (&not, Req::http(FRONTEND).ip("10.8.1.1"), true),
    ]);
}

#[test]
fn hosts() {
    let name = op("hosts: [orders.shop]");
    let with_port = op("hosts: [\"orders.shop:8080\"]");
    let wildcard = op("hosts: [\"*.shop\"]");
    let prefix = op("hosts: [\"orders.*\"]");
    let upper = op("hosts: [ORDERS.SHOP]");
    let not = op("notHosts: [\"admin.*\"]");
    check(vec![
        (&name, Req::http(FRONTEND).host("orders.shop"), true),
        (&name, Req::http(FRONTEND).host("orders.shop:8080"), true),
        (&name, Req::http(FRONTEND).host("ORDERS.Shop"), true),
        (&name, Req::http(FRONTEND).host("orders.shop.evil"), false),
        (
            &with_port,
            Req::http(FRONTEND).host("orders.shop:8080"),
            true,
        ),
        (
            &with_port,
            Req::http(FRONTEND).host("orders.shop:9090"),
            false,
        ),
        (&with_port, Req::http(FRONTEND).host("orders.shop"), false),
        (&wildcard, Req::http(FRONTEND).host("orders.shop:1"), true),
        (&wildcard, Req::http(FRONTEND).host("shop"), false),
        (&prefix, Req::http(FRONTEND).host("orders.anything"), true),
        (&upper, Req::http(FRONTEND).host("orders.shop"), true),
        (&not, Req::http(FRONTEND).host("admin.shop"), false),
        (&not, Req::http(FRONTEND).host("orders.shop"), true),
    ]);
}

#[test]
fn ports() {
    let ports = op("ports: [8080, \"9090\"]");
    let not = op("notPorts: [\"9090\"]");
    check(vec![
        (&ports, Req::http(FRONTEND).port(8080), true),
        (&ports, Req::http(FRONTEND).port(9090), true),
        (&ports, Req::http(FRONTEND).port(80), false),
        (&ports, Req::tcp(FRONTEND).port(9090), true),
        (&not, Req::http(FRONTEND).port(9090), false),
        (&not, Req::http(FRONTEND).port(8080), true),
    ]);
}

#[test]
fn methods() {
    let get = op("methods: [GET, HEAD]");
    let prefix = op("methods: [\"P*\"]");
    let not = op("notMethods: [DELETE]");
    check(vec![
        (&get, Req::http(FRONTEND).method("GET"), true),
        (&get, Req::http(FRONTEND).method("HEAD"), true),
        (&get, Req::http(FRONTEND).method("POST"), false),
        (&prefix, Req::http(FRONTEND).method("PUT"), true),
        (&prefix, Req::http(FRONTEND).method("PATCH"), true),
        (&prefix, Req::http(FRONTEND).method("GET"), false),
        (&not, Req::http(FRONTEND).method("DELETE"), false),
        (&not, Req::http(FRONTEND).method("GET"), true),
    ]);
}

#[test]
fn paths() {
    let exact = op("paths: [/api/orders]");
    let prefix = op("paths: [\"/api/*\"]");
    let suffix = op("paths: [\"*.json\"]");
    let present = op("paths: [\"*\"]");
    let not = op("notPaths: [\"/admin/*\"]");
    check(vec![
        (&exact, Req::http(FRONTEND).path("/api/orders"), true),
        (&exact, Req::http(FRONTEND).path("/api/orders/"), false),
        (&exact, Req::http(FRONTEND).path("/API/orders"), false),
        (&prefix, Req::http(FRONTEND).path("/api/"), true),
        (&prefix, Req::http(FRONTEND).path("/api/x/y"), true),
        (&prefix, Req::http(FRONTEND).path("/apix"), false),
        (&suffix, Req::http(FRONTEND).path("/a/b.json"), true),
        (&suffix, Req::http(FRONTEND).path("/a/b.jsonx"), false),
        (&present, Req::http(FRONTEND).path("/"), true),
        (&not, Req::http(FRONTEND).path("/admin/users"), false),
        (&not, Req::http(FRONTEND).path("/public"), true),
    ]);
}

#[test]
fn header_conditions() {
    let values = when("request.headers[X-Tenant]", "values: [acme, \"beta-*\"]");
    let not_values = when("request.headers[x-tenant]", "notValues: [evil]");
    let present = when("request.headers[x-tenant]", "values: [\"*\"]");
    check(vec![
        (
            &values,
            Req::http(FRONTEND).header("x-tenant", "acme"),
            true,
        ),
        (
            &values,
            Req::http(FRONTEND).header("x-tenant", "beta-1"),
            true,
        ),
        (
            &values,
            Req::http(FRONTEND).header("x-tenant", "other"),
            false,
        ),
        (&values, Req::http(FRONTEND), false),
        // An ALLOW rule needs every occurrence to match (see `header_lists_fail_safe`).
        (
            &values,
            Req::http(FRONTEND)
                .header("x-tenant", "other")
                .header("x-tenant", "acme"),
            false,
        ),
        (
            &values,
            Req::http(FRONTEND)
                .header("x-tenant", "beta-1")
                .header("x-tenant", "acme"),
            true,
        ),
        (
            &values,
            Req::http(FRONTEND).header("x-tenant", "acme,other"),
            false,
        ),
        (
            &not_values,
            Req::http(FRONTEND).header("x-tenant", "acme"),
            true,
        ),
        (
            &not_values,
            Req::http(FRONTEND).header("x-tenant", "evil"),
            false,
        ),
        (
            &not_values,
            Req::http(FRONTEND)
                .header("x-tenant", "acme")
                .header("x-tenant", "evil"),
            false,
        ),
        (&not_values, Req::http(FRONTEND), true),
        (&present, Req::http(FRONTEND).header("x-tenant", ""), false),
        (&present, Req::http(FRONTEND).header("x-tenant", "x"), true),
        (&present, Req::http(FRONTEND).header("X-Tenant", "x"), true),
    ]);
}

/// The truth table of `policy/README.md` ("Header values that are lists"), both ways: each row
/// is the header lines sent, the condition, whether an ALLOW rule with it matches and whether
/// a DENY rule (and so an AUDIT rule) with it matches.
#[test]
fn header_lists_fail_safe() {
    let admin = "values: [admin]";
    let not_admin = "notValues: [admin]";
    let prefix = "values: [\"acme*\"]";
    let rows: &[(&[&str], &str, bool, bool)] = &[
        (&["admin"], admin, true, true),
        (&["user"], admin, false, false),
        (&["user, admin"], admin, false, true),
        (&["user,admin"], admin, false, true),
        (&["admin, admin"], admin, false, true),
        (&["admin,"], admin, false, true),
        (&["admin", "user"], admin, false, true),
        (&["user", "admin"], admin, false, true),
        (&["admin", "admin"], admin, true, true),
        (&[], admin, false, false),
        (&["admin"], not_admin, false, false),
        (&["user"], not_admin, true, true),
        (&["user, admin"], not_admin, false, true),
        (&["admin, user"], not_admin, false, true),
        (&["admin", "user"], not_admin, false, true),
        (&["admin", "admin"], not_admin, false, false),
        (&[], not_admin, true, true),
        (&["acme, acme-2"], prefix, true, true),
        (&["acme, beta"], prefix, false, true),
        (&["beta, acme"], prefix, false, true),
    ];
    for (lines, cond, allow_matches, deny_matches) in rows {
        let mut req = Req::http(FRONTEND);
        for line in *lines {
            req = req.header("x-role", line);
        }
        let rule = when("request.headers[x-role]", cond);
        let allow = orders_policies(&doc("p", &format!("  rules:\n  - {{{rule}}}\n")));
        let decision = req.evaluate(&allow);
        assert_eq!(
            decision.verdict == Verdict::Allow,
            *allow_matches,
            "ALLOW {cond} with x-role {lines:?}: {decision:?}"
        );
        let explained = req.explain(&allow);
        assert_eq!(explained.policies[0].rules[0].matched, *allow_matches);
        for action in ["DENY", "AUDIT"] {
            let text = format!(
                "{}---\n{}",
                doc(
                    "d",
                    &format!("  action: {action}\n  rules:\n  - {{{rule}}}\n")
                ),
                doc("z", "  rules: [{}]\n")
            );
            let decision = req.evaluate(&orders_policies(&text));
            let matched = if action == "DENY" {
                decision.verdict == Verdict::Deny
            } else {
                !decision.audit.is_empty()
            };
            assert_eq!(
                matched, *deny_matches,
                "{action} {cond} with x-role {lines:?}: {decision:?}"
            );
        }
    }
}

#[test]
fn connection_conditions() {
    let ip = when("source.ip", "values: [10.0.0.0/24]");
    let not_ip = when("source.ip", "notValues: [10.0.0.1]");
    let ns = when("source.namespace", "values: [shop]");
    let principal = when(
        "source.principal",
        &format!("values: [\"spiffe://{ADMIN}\"]"),
    );
    let not_principal = when("source.principal", &format!("notValues: [\"{ADMIN}\"]"));
    let port = when("destination.port", "values: [\"8080\", 9090]");
    let not_port = when("destination.port", "notValues: [\"8080\"]");
    let sni = when("connection.sni", "values: [\"*.shop.svc\"]");
    let not_sni = when("connection.sni", "notValues: [admin.shop.svc]");
    check(vec![
        (&ip, Req::http(FRONTEND).ip("10.0.0.9"), true),
        (&ip, Req::http(FRONTEND).ip("10.0.1.9"), false),
        (&not_ip, Req::http(FRONTEND).ip("10.0.0.1"), false),
        (&not_ip, Req::http(FRONTEND).ip("10.0.0.2"), true),
        (&ns, Req::http(FRONTEND), true),
        (&ns, Req::http(ADMIN), false),
        (&ns, Req::http(ADMIN).anonymous(), false),
        (&principal, Req::http(ADMIN), true),
        (&principal, Req::http(FRONTEND), false),
        (&not_principal, Req::http(ADMIN), false),
        (&not_principal, Req::http(ADMIN).anonymous(), true),
        (&port, Req::http(FRONTEND).port(9090), true),
        (&port, Req::http(FRONTEND).port(80), false),
        (&not_port, Req::http(FRONTEND).port(8080), false),
        (&sni, Req::http(FRONTEND).sni("orders.shop.svc"), true),
        (&sni, Req::http(FRONTEND).sni("ORDERS.SHOP.SVC"), true),
        (&sni, Req::http(FRONTEND), false),
        (&not_sni, Req::http(FRONTEND).sni("admin.shop.svc"), false),
        (&not_sni, Req::http(FRONTEND), true),
    ]);
}

#[test]
fn how_parts_combine() {
    // Fields of one source AND.
    let and_fields = src(&format!(
        "principals: [\"{FRONTEND}\"], ipBlocks: [10.0.0.0/8]"
    ));
    // `from` entries OR.
    let or_from = format!(
        "from: [{{source: {{principals: [\"{ADMIN}\"]}}}}, {{source: {{ipBlocks: [192.168.0.0/16]}}}}]"
    );
    // `to` entries OR.
    let or_to = "to: [{operation: {methods: [POST]}}, {operation: {paths: [/health]}}]";
    // from AND to AND when; `when` conditions AND.
    let all = "from: [{source: {namespaces: [shop]}}], to: [{operation: {methods: [GET]}}], \
               when: [{key: \"request.headers[x-a]\", values: [\"1\"]}, \
               {key: destination.port, values: [\"8080\"]}]";
    check(vec![
        (&and_fields, Req::http(FRONTEND), true),
        (&and_fields, Req::http(FRONTEND).ip("192.168.0.1"), false),
        (&and_fields, Req::http(ADMIN), false),
        (&or_from, Req::http(ADMIN), true),
        (&or_from, Req::http(FRONTEND).ip("192.168.3.3"), true),
        (&or_from, Req::http(FRONTEND), false),
        (or_to, Req::http(FRONTEND).method("POST"), true),
        (or_to, Req::http(FRONTEND).path("/health"), true),
        (or_to, Req::http(FRONTEND), false),
        (all, Req::http(FRONTEND).header("x-a", "1"), true),
        (all, Req::http(ADMIN).header("x-a", "1"), false),
        (
            all,
            Req::http(FRONTEND).header("x-a", "1").method("PUT"),
            false,
        ),
        (all, Req::http(FRONTEND), false),
        (
            all,
            Req::http(FRONTEND).header("x-a", "1").port(9090),
            false,
        ),
        // A rule `{}` matches everything, authenticated or not.
        ("{}", Req::http(FRONTEND), true),
        ("{}", Req::tcp(FRONTEND).anonymous(), true),
    ]);
}

#[test]
fn tcp_connections_and_http_only_fields() {
    // ALLOW: a rule with any HTTP-only field never matches a TCP connection.
    check(vec![
        (
            &op("ports: [8080], methods: [GET]"),
            Req::tcp(FRONTEND),
            false,
        ),
        (
            &format!(
                "{}, {}",
                src(&format!("principals: [\"{FRONTEND}\"]")),
                when("request.headers[x-a]", "notValues: [b]")
            ),
            Req::tcp(FRONTEND),
            false,
        ),
        (&op("ports: [8080]"), Req::tcp(FRONTEND), true),
    ]);
    // DENY: the HTTP-only fields are skipped and the others decide (the restrictive reading).
    let deny = doc(
        "d",
        "  action: DENY\n  rules:\n  - to: [{operation: {ports: [8080], paths: [/admin]}}]\n",
    );
    let allow_all = doc("a", "  rules: [{}]\n");
    let policies = orders_policies(&format!("{deny}---\n{allow_all}"));
    let tcp = Req::tcp(FRONTEND).evaluate(&policies);
    assert_eq!(
        (tcp.verdict, tcp.reason),
        (Verdict::Deny, Reason::ExplicitDeny)
    );
    let tcp_other_port = Req::tcp(FRONTEND).port(9090).evaluate(&policies);
    assert_eq!(tcp_other_port.verdict, Verdict::Allow);
    let http_public = Req::http(FRONTEND).path("/public").evaluate(&policies);
    assert_eq!(http_public.verdict, Verdict::Allow);
    let http_admin = Req::http(FRONTEND).path("/admin").evaluate(&policies);
    assert_eq!(http_admin.verdict, Verdict::Deny);
}
