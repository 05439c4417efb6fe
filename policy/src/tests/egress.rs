//! Egress policies (`spec.direction: egress`): what loads, how they decide, and that they and
//! inbound policies never decide each other's traffic.

use super::*;
use crate::{DefaultAction, EgressRequest, Reason, Verdict};

fn egress(ip: &str, port: u16, name: Option<&'static str>, sni: bool) -> EgressRequest<'static> {
    EgressRequest {
        ip: ip.parse().unwrap(),
        port,
        name,
        sni: if sni { name } else { None },
    }
}

const ALLOW_STRIPE: &str = "  selector: { matchLabels: { app: orders } }
  direction: egress
  rules:
  - to: [{ operation: { hosts: [\"api.stripe.com\", \"*.amazonaws.com\"], ports: [\"443\"] } }]
  - when: [{ key: destination.ip, values: [\"10.20.0.0/16\"] }]
";

#[test]
fn an_egress_allow_list_allows_what_it_names_and_denies_the_rest() {
    let p = orders_policies(&doc("egress", ALLOW_STRIPE));
    assert!(p.has_egress_policies());
    assert!(p.is_empty(), "egress policies are not inbound policies");
    let allow = |r: &EgressRequest<'_>| p.evaluate_egress(r, DefaultAction::Allow);
    let d = allow(&egress("203.0.113.9", 443, Some("api.stripe.com"), true));
    assert_eq!(
        (d.verdict, d.reason, d.policy.map(|p| p.to_string()), d.rule),
        (
            Verdict::Allow,
            Reason::AllowMatch,
            Some("shop/egress".into()),
            Some(0)
        )
    );
    assert!(allow(&egress("203.0.113.9", 443, Some("s3.amazonaws.com"), false)).is_allowed());
    // Another name, another port, no name at all: denied once an ALLOW egress policy exists.
    for r in [
        egress("203.0.113.9", 443, Some("evil.example"), true),
        egress("203.0.113.9", 80, Some("api.stripe.com"), false),
        egress("203.0.113.9", 443, None, false),
    ] {
        let d = allow(&r);
        assert_eq!(
            (d.verdict, d.reason),
            (Verdict::Deny, Reason::NoAllowMatch),
            "{r:?}"
        );
    }
    // By destination address.
    let d = allow(&egress("10.20.3.4", 5432, None, false));
    assert_eq!((d.verdict, d.rule), (Verdict::Allow, Some(1)));
}

#[test]
fn without_an_egress_allow_policy_the_passthrough_default_decides() {
    let p = orders_policies(&doc(
        "deny-evil",
        "  direction: egress
  action: DENY
  rules:
  - to: [{ operation: { hosts: [\"*.evil.example\"] } }]
",
    ));
    let r = egress("203.0.113.9", 443, Some("api.example.com"), true);
    let d = p.evaluate_egress(&r, DefaultAction::Allow);
    assert_eq!((d.verdict, d.reason), (Verdict::Allow, Reason::Default));
    let d = p.evaluate_egress(&r, DefaultAction::Deny);
    assert_eq!((d.verdict, d.reason), (Verdict::Deny, Reason::Default));
    let d = p.evaluate_egress(
        &egress("203.0.113.9", 443, Some("x.evil.example"), true),
        DefaultAction::Allow,
    );
    assert_eq!((d.verdict, d.reason), (Verdict::Deny, Reason::ExplicitDeny));
    // No egress policy at all: the default, for every destination.
    let none = orders_policies(&doc("empty", "  rules: [{}]\n"));
    assert!(!none.has_egress_policies());
    let d = none.evaluate_egress(&r, DefaultAction::Allow);
    assert_eq!((d.verdict, d.reason), (Verdict::Allow, Reason::Default));
}

#[test]
fn a_dry_run_egress_policy_allows_and_records_the_would_be_denial() {
    let text = doc(
        "egress",
        &ALLOW_STRIPE.replace("direction: egress", "direction: egress\n  mode: dry-run"),
    );
    let p = orders_policies(&text);
    let d = p.evaluate_egress(
        &egress("203.0.113.9", 443, Some("evil.example"), true),
        DefaultAction::Allow,
    );
    assert_eq!(
        (d.verdict, d.reason, d.would_verdict),
        (Verdict::Allow, Reason::Default, Verdict::Deny)
    );
    let d = p.evaluate_egress(
        &egress("203.0.113.9", 443, Some("api.stripe.com"), true),
        DefaultAction::Allow,
    );
    assert_eq!(
        (d.verdict, d.would_verdict),
        (Verdict::Allow, Verdict::Allow)
    );
    assert_eq!(d.shadows.len(), 1);
}

#[test]
fn egress_and_inbound_policies_never_decide_each_other() {
    // An inbound allow-everything policy and an egress allow-list for the same workload.
    let text = format!(
        "{}\n---\n{}",
        doc("in", "  rules: [{}]\n"),
        doc("egress", ALLOW_STRIPE)
    );
    let p = orders_policies(&text);
    let req = Request {
        source_principal: Some(FRONTEND),
        source_ip: "10.0.0.7".parse().unwrap(),
        destination_port: 443,
        sni: None,
        http: None,
        auth: None,
    };
    assert_eq!(
        p.evaluate(&req).policy.map(|p| p.to_string()),
        Some("shop/in".into())
    );
    let d = p.evaluate_egress(
        &egress("203.0.113.9", 443, Some("evil.example"), true),
        DefaultAction::Allow,
    );
    assert_eq!(d.verdict, Verdict::Deny);
    // Printing keeps the direction; loading the print gives the same set.
    let set = load_text(&text).unwrap();
    let printed = set.to_yaml();
    assert!(printed.contains("  direction: egress\n"), "{printed}");
    assert!(load_text(&printed).unwrap() == set);
}

#[test]
fn egress_rules_refuse_what_an_egress_connection_does_not_have() {
    for (spec, needle) in [
        (
            "  direction: egress\n  rules:\n  - from: [{ source: { principals: [\"cluster.local/ns/a/sa/b\"] } }]\n",
            "has no sources",
        ),
        (
            "  direction: egress\n  rules:\n  - to: [{ operation: { paths: [\"/x\"] } }]\n",
            "decided before any request is read",
        ),
        (
            "  direction: egress\n  rules:\n  - when: [{ key: \"request.headers[x]\", values: [a] }]\n",
            "has no value on an egress connection",
        ),
        (
            "  direction: egress\n  rules:\n  - when: [{ key: destination.ip, values: [\"10.0.0.1/8\"] }]\n",
            "10.0.0.1/8",
        ),
        (
            "  direction: outbound\n  rules: [{}]\n",
            "unknown direction `outbound`",
        ),
        (
            "  rules:\n  - when: [{ key: destination.ip, values: [\"10.0.0.0/8\"] }]\n",
            "spec.direction: egress",
        ),
    ] {
        let text = doc("bad", spec);
        match load_text(&text) {
            Ok(_) => panic!("loaded:\n{text}"),
            Err(e) => assert!(e.to_string().contains(needle), "{needle}: {e}"),
        }
    }
}

#[test]
fn an_egress_connection_is_explained_against_the_egress_policies_only() {
    let docs = format!(
        "{}---\n{}",
        doc("egress", ALLOW_STRIPE),
        doc("inbound", "  rules: [{}]\n")
    );
    let p = orders_policies(&docs);
    let r = egress("203.0.113.9", 443, Some("evil.example"), true);
    let e = p.explain_egress(&r, DefaultAction::Allow);
    assert_eq!(e.decision, p.evaluate_egress(&r, DefaultAction::Allow));
    assert_eq!(e.decision.verdict, Verdict::Deny);
    let names: Vec<String> = e.policies.iter().map(|t| t.policy.to_string()).collect();
    assert_eq!(names, ["shop/egress"], "inbound policies are not shown");
    let rule0 = &e.policies[0].rules[0];
    assert!(!rule0.matched);
    assert_eq!(
        rule0.misses,
        [
            "to[0].operation.hosts: `evil.example:443` matches none of [api.stripe.com, *.amazonaws.com]"
        ],
        "{rule0:?}"
    );
    let text = e.to_string();
    assert!(
        text.starts_with("egress connection to 203.0.113.9:443, SNI evil.example\ndecision: deny"),
        "{text}"
    );
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["egress"]["name"], "evil.example");
    assert_eq!(json["egress"]["sni"], true);
    // A match, by address, names its rule.
    let by_ip = p.explain_egress(&egress("10.20.3.4", 5432, None, false), DefaultAction::Deny);
    assert_eq!(by_ip.policies[0].matched_rule, Some(1));
    assert!(by_ip.to_string().contains("10.20.3.4:5432, no name seen"));
    // No egress policy: passthrough decides, and the text says so.
    let none = orders_policies(&doc("inbound", "  rules: [{}]\n"));
    let e = none.explain_egress(&r, DefaultAction::Deny);
    assert_eq!(
        (e.decision.verdict, e.decision.reason),
        (Verdict::Deny, Reason::Default)
    );
    assert!(
        e.to_string().contains(
            "no egress policy applies to this workload; outbound.passthrough decides: deny"
        ),
        "{e}"
    );
}
