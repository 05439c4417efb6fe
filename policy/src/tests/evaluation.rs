//! The evaluation order, the mesh default, dry-run, AUDIT, scope and explanations.

use std::collections::BTreeMap;

use super::{
    ADMIN, FRONTEND, Req, doc, load_text, load_with, orders, orders_policies, orders_policies_with,
};
use crate::{
    DefaultAction, LoadOptions, PolicyRef, Reason, Shadow, Source, Verdict, Workload, load,
};

fn allow_frontend(name: &str) -> String {
    doc(
        name,
        &format!("  rules:\n  - from: [{{source: {{principals: [\"{FRONTEND}\"]}}}}]\n"),
    )
}

fn deny_admin_path(name: &str, mode: &str) -> String {
    doc(
        name,
        &format!(
            "  action: DENY\n  mode: {mode}\n  rules:\n  - to: [{{operation: {{paths: [\"/admin/*\"]}}}}]\n"
        ),
    )
}

fn join(docs: &[String]) -> String {
    docs.join("---\n")
}

fn pref(name: &str) -> PolicyRef {
    PolicyRef {
        namespace: "shop".into(),
        name: name.into(),
    }
}

#[test]
fn enforced_deny_beats_allow() {
    let policies = orders_policies(&join(&[
        allow_frontend("allow"),
        deny_admin_path("deny", "enforce"),
    ]));
    let d = Req::http(FRONTEND).path("/admin/users").evaluate(&policies);
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.reason, Reason::ExplicitDeny);
    assert_eq!(d.policy, Some(pref("deny")));
    assert_eq!(d.rule, Some(0));
    let ok = Req::http(FRONTEND).path("/public").evaluate(&policies);
    assert_eq!(
        (ok.verdict, ok.reason),
        (Verdict::Allow, Reason::AllowMatch)
    );
    assert_eq!(ok.policy, Some(pref("allow")));
}

#[test]
fn allow_policies_without_a_match_deny() {
    let policies = orders_policies(&allow_frontend("allow"));
    let d = Req::http(ADMIN).evaluate(&policies);
    assert_eq!((d.verdict, d.reason), (Verdict::Deny, Reason::NoAllowMatch));
    assert_eq!((d.policy, d.rule), (None, None));
}

#[test]
fn unauthenticated_requests_denied_for_want_of_a_principal_say_so() {
    let policies = orders_policies(&allow_frontend("allow"));
    let d = Req::http(FRONTEND).anonymous().evaluate(&policies);
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Deny, Reason::Unauthenticated)
    );
    // With an ALLOW rule that needs no principal, a miss is a plain no-allow-match.
    let policies = orders_policies(&join(&[
        allow_frontend("allow"),
        doc(
            "ip",
            "  rules: [{from: [{source: {ipBlocks: [192.168.0.0/16]}}]}]\n",
        ),
    ]));
    let d = Req::http(FRONTEND).anonymous().evaluate(&policies);
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Deny, Reason::Unauthenticated)
    );
    let policies = orders_policies(&doc(
        "ip",
        "  rules: [{from: [{source: {ipBlocks: [192.168.0.0/16]}}]}]\n",
    ));
    let d = Req::http(FRONTEND).anonymous().evaluate(&policies);
    assert_eq!((d.verdict, d.reason), (Verdict::Deny, Reason::NoAllowMatch));
}

#[test]
fn the_mesh_default_applies_when_no_enforced_allow_policy_selects_the_workload() {
    let text = deny_admin_path("deny", "enforce");
    for (default, verdict, would) in [
        (DefaultAction::Deny, Verdict::Deny, Verdict::Deny),
        (DefaultAction::Allow, Verdict::Allow, Verdict::Allow),
        (DefaultAction::AuditOnly, Verdict::Allow, Verdict::Deny),
    ] {
        let opts = LoadOptions {
            default_action: default,
            ..LoadOptions::default()
        };
        let policies = orders_policies_with(&text, &opts);
        let d = Req::http(FRONTEND).path("/public").evaluate(&policies);
        assert_eq!(
            (d.verdict, d.reason, d.would_verdict),
            (verdict, Reason::Default, would),
            "{default}"
        );
        // Denies still deny whatever the default.
        let d = Req::http(FRONTEND).path("/admin/x").evaluate(&policies);
        assert_eq!(d.reason, Reason::ExplicitDeny);
    }
}

#[test]
fn allow_nothing_selects_the_workload_and_denies_everything() {
    let opts = LoadOptions {
        default_action: DefaultAction::Allow,
        ..LoadOptions::default()
    };
    for spec in ["  {}\n", "  rules: []\n", "  action: ALLOW\n"] {
        let text = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-nothing, namespace: shop}}\nspec:\n{spec}"
        );
        let policies = orders_policies_with(&text, &opts);
        let d = Req::http(FRONTEND).evaluate(&policies);
        assert_eq!(
            (d.verdict, d.reason),
            (Verdict::Deny, Reason::NoAllowMatch),
            "{spec}"
        );
    }
}

#[test]
fn dry_run_deny_records_would_deny_and_changes_nothing() {
    let policies = orders_policies(&join(&[
        allow_frontend("allow"),
        deny_admin_path("new-deny", "dry-run"),
    ]));
    let d = Req::http(FRONTEND).path("/admin/x").evaluate(&policies);
    assert_eq!((d.verdict, d.reason), (Verdict::Allow, Reason::AllowMatch));
    assert_eq!(
        d.shadows,
        vec![Shadow {
            policy: pref("new-deny"),
            rule: Some(0),
            would: Verdict::Deny
        }]
    );
    assert_eq!(d.would_verdict, Verdict::Deny);
    assert_eq!(
        d.to_string(),
        "allow (allow-match) by shop/allow rule 0; would deny with dry-run policies enforced"
    );
    let d = Req::http(FRONTEND).path("/public").evaluate(&policies);
    assert!(d.shadows.is_empty());
    assert_eq!(d.would_verdict, Verdict::Allow);
}

#[test]
fn dry_run_allow_shows_what_enforcing_it_would_do() {
    let opts = LoadOptions {
        default_action: DefaultAction::Allow,
        ..LoadOptions::default()
    };
    let dry_allow = doc(
        "candidate",
        &format!(
            "  mode: dry-run\n  rules:\n  - from: [{{source: {{principals: [\"{FRONTEND}\"]}}}}]\n"
        ),
    );
    let policies = orders_policies_with(&dry_allow, &opts);
    // Today everything is allowed by the default.
    let matched = Req::http(FRONTEND).evaluate(&policies);
    assert_eq!(
        (matched.verdict, matched.reason),
        (Verdict::Allow, Reason::Default)
    );
    assert_eq!(matched.would_verdict, Verdict::Allow);
    assert_eq!(matched.shadows[0].would, Verdict::Allow);
    // Enforcing the candidate would start denying what it does not list.
    let other = Req::http(ADMIN).evaluate(&policies);
    assert_eq!(other.verdict, Verdict::Allow);
    assert!(other.shadows.is_empty());
    assert_eq!(other.would_verdict, Verdict::Deny);
}

#[test]
fn istio_dry_run_annotation_is_honoured() {
    let text = "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-all\n  namespace: shop\n  annotations:\n    \"istio.io/dry-run\": \"true\"\nspec:\n  action: DENY\n  rules: [{}]\n";
    let set = load_text(text).unwrap();
    assert_eq!(set.policies().next().unwrap().mode, crate::Mode::DryRun);
    let d = Req::http(FRONTEND).evaluate(&set.for_workload(&orders()));
    assert_eq!(d.reason, Reason::Default);
    assert_eq!(d.shadows.len(), 1);
}

#[test]
fn audit_policies_only_record() {
    let audit = doc(
        "audit-admin",
        "  action: AUDIT\n  rules:\n  - to: [{operation: {paths: [\"/admin/*\"]}}]\n",
    );
    let policies = orders_policies(&join(&[allow_frontend("allow"), audit]));
    let d = Req::http(FRONTEND).path("/admin/x").evaluate(&policies);
    assert_eq!((d.verdict, d.reason), (Verdict::Allow, Reason::AllowMatch));
    assert_eq!(d.audit, vec![pref("audit-admin")]);
    let d = Req::http(ADMIN).path("/admin/x").evaluate(&policies);
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.audit, vec![pref("audit-admin")]);
    let d = Req::http(FRONTEND).path("/x").evaluate(&policies);
    assert!(d.audit.is_empty());
}

#[test]
fn the_first_matching_policy_in_name_order_decides() {
    // Loaded in reverse order; the set is sorted by namespace and name.
    let policies = orders_policies(&join(&[allow_frontend("b"), allow_frontend("a")]));
    let d = Req::http(FRONTEND).evaluate(&policies);
    assert_eq!(d.policy, Some(pref("a")));
    // A rule filed under a principal and a catch-all rule: the lower index wins.
    let two_rules = doc(
        "r",
        &format!(
            "  rules:\n  - to: [{{operation: {{methods: [GET]}}}}]\n  - from: [{{source: {{principals: [\"{FRONTEND}\"]}}}}]\n"
        ),
    );
    let policies = orders_policies(&two_rules);
    assert_eq!(Req::http(FRONTEND).evaluate(&policies).rule, Some(0));
    assert_eq!(
        Req::http(FRONTEND).method("POST").evaluate(&policies).rule,
        Some(1)
    );
}

#[test]
fn scope_is_namespace_root_namespace_and_selector() {
    let in_other_ns = "apiVersion: picket.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: billing}\nspec: {action: DENY, rules: [{}]}\n";
    let mesh_wide = "apiVersion: picket.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: mesh, namespace: picket-system}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [/debug]}}]}]\n";
    let selected = doc(
        "sel",
        "  selector: {matchLabels: {app: orders}}\n  action: DENY\n  rules: [{to: [{operation: {paths: [/sel]}}]}]\n",
    );
    let not_selected = doc(
        "other",
        "  selector: {matchLabels: {app: orders, tier: gold}}\n  action: DENY\n  rules: [{}]\n",
    );
    let allow = doc("allow", "  rules: [{}]\n");
    let text = join(&[
        in_other_ns.to_owned(),
        mesh_wide.to_owned(),
        selected,
        not_selected,
        allow,
    ]);
    let set = load_text(&text).unwrap();
    let policies = set.for_workload(&orders());
    let names: Vec<String> = policies.policy_refs().map(ToString::to_string).collect();
    assert_eq!(names, ["picket-system/mesh", "shop/allow", "shop/sel"]);
    assert_eq!(
        Req::http(FRONTEND).evaluate(&policies).verdict,
        Verdict::Allow
    );
    assert_eq!(
        Req::http(FRONTEND)
            .path("/debug")
            .evaluate(&policies)
            .policy,
        Some(PolicyRef {
            namespace: "picket-system".into(),
            name: "mesh".into()
        })
    );
    assert_eq!(
        Req::http(FRONTEND).path("/sel").evaluate(&policies).verdict,
        Verdict::Deny
    );
    // Another root namespace makes `mesh` a plain policy of picket-system.
    let opts = LoadOptions {
        root_namespace: "mesh-root".into(),
        ..LoadOptions::default()
    };
    let set = load_with(&text, &opts).unwrap();
    assert_eq!(set.for_workload(&orders()).len(), 2);
    // A workload with more labels is still selected by a subset selector.
    let gold = Workload {
        namespace: "shop".into(),
        labels: BTreeMap::from([
            ("app".to_owned(), "orders".to_owned()),
            ("tier".to_owned(), "gold".to_owned()),
        ]),
    };
    let d = Req::http(FRONTEND).evaluate(&set.for_workload(&gold));
    assert_eq!(d.policy, Some(pref("other")));
}

#[test]
fn explanations_name_the_failing_field() {
    let text = join(&[
        doc(
            "orders-read",
            &format!(
                "  rules:\n  - from: [{{source: {{principals: [\"{FRONTEND}\"]}}}}]\n    to: [{{operation: {{methods: [GET], paths: [\"/api/*\"]}}}}]\n"
            ),
        ),
        deny_admin_path("new-deny", "dry-run"),
    ]);
    let policies = orders_policies(&text);
    let e = Req::http(ADMIN).path("/admin/x").explain(&policies);
    assert_eq!(e.decision.reason, Reason::NoAllowMatch);
    assert_eq!(e.policies.len(), 2);
    let rule = &e.policies[1].rules[0];
    assert!(!rule.matched);
    assert_eq!(
        rule.misses,
        vec![
            format!("from[0].source.principals: `{ADMIN}` matches none of [{FRONTEND}]"),
            "to[0].operation.paths: `/admin/x` matches none of [/api/*]".to_owned(),
        ]
    );
    assert_eq!(e.policies[0].matched_rule, Some(0));
    let shown = e.to_string();
    assert!(
        shown.starts_with("decision: deny (no-allow-match)\n"),
        "{shown}"
    );
    assert!(
        shown.contains("policy shop/new-deny (DENY dry-run, test.yaml:"),
        "{shown}"
    );
    assert!(
        shown.contains("dry-run: shop/new-deny would deny (rule 0)"),
        "{shown}"
    );
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["decision"]["reason"], "no-allow-match");
    assert_eq!(json["policies"][1]["policy"], "shop/orders-read");

    let anon = Req::http(FRONTEND).anonymous().explain(&policies);
    assert!(
        anon.policies[1].rules[0].misses[0]
            .contains("the request has no principal (unauthenticated)"),
        "{anon}"
    );
    let tcp = Req::tcp(FRONTEND).explain(&policies);
    assert!(
        tcp.policies[1].rules[0].misses[0].contains("never matches TCP"),
        "{tcp}"
    );
}

#[test]
fn explanations_of_conditions_show_the_request_values() {
    let text = doc(
        "t",
        "  rules:\n  - when: [{key: \"request.headers[x-tenant]\", notValues: [evil]}]\n",
    );
    let policies = orders_policies(&text);
    let e = Req::http(FRONTEND)
        .header("x-tenant", "good")
        .header("x-tenant", "evil")
        .explain(&policies);
    assert_eq!(
        e.policies[0].rules[0].misses,
        vec!["when[0] (request.headers[x-tenant]) notValues: `good`, `evil` matches one of [evil]"]
    );
}

#[test]
fn verdicts_and_reasons_print_lowercase() {
    assert_eq!(Verdict::Allow.to_string(), "allow");
    assert_eq!(Verdict::Deny.as_str(), "deny");
    let reasons = [
        (Reason::ExplicitDeny, "explicit-deny"),
        (Reason::NoAllowMatch, "no-allow-match"),
        (Reason::Unauthenticated, "unauthenticated"),
        (Reason::Default, "default"),
        (Reason::AllowMatch, "allow-match"),
    ];
    for (r, s) in reasons {
        assert_eq!(r.to_string(), s);
        assert_eq!(r.as_str(), s);
        assert_eq!(serde_json::to_value(r).unwrap(), s);
    }
    assert_eq!(pref("x").to_string(), "shop/x");
    assert_eq!(
        "audit-only".parse::<DefaultAction>(),
        Ok(DefaultAction::AuditOnly)
    );
}

#[test]
fn summaries_hash_and_empty_sets() {
    let text = join(&[allow_frontend("a"), deny_admin_path("b", "dry-run")]);
    let set = load(
        &[Source {
            name: "p.yaml",
            text: &text,
        }],
        &LoadOptions::default(),
    )
    .unwrap();
    let s: Vec<_> = set.policies().collect();
    assert_eq!(s.len(), 2);
    assert_eq!(
        (s[1].name.as_str(), s[1].action, s[1].mode),
        ("b", crate::Action::Deny, crate::Mode::DryRun)
    );
    assert_eq!(
        (s[1].source.as_str(), s[1].line, s[1].rules),
        ("p.yaml", 8, 1)
    );
    let hash = set.sources_hash();
    assert_eq!(hash.len(), 16);
    let again = load(
        &[Source {
            name: "p.yaml",
            text: &text,
        }],
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(again.sources_hash(), hash);
    let renamed = load(
        &[Source {
            name: "q.yaml",
            text: &text,
        }],
        &LoadOptions::default(),
    )
    .unwrap();
    assert_ne!(renamed.sources_hash(), hash);

    let empty = crate::PolicySet::empty(&LoadOptions::default());
    assert!(empty.is_empty());
    assert_eq!(empty.to_yaml(), "");
    let d = Req::http(FRONTEND).evaluate(&empty.for_workload(&orders()));
    assert_eq!((d.verdict, d.reason), (Verdict::Deny, Reason::Default));
    assert_eq!(load(&[], &LoadOptions::default()).unwrap(), empty);
}

#[test]
fn a_policy_reference_is_qualified_as_it_displays() {
    for (namespace, name) in [
        ("shop", "orders-read"),
        ("", ""),
        ("a/b", "c"),
        ("ns", "ünï"),
    ] {
        let r = PolicyRef {
            namespace: namespace.into(),
            name: name.into(),
        };
        assert_eq!(r.qualified(), r.to_string());
        assert_eq!(r.qualified(), format!("{namespace}/{name}"));
    }
}
