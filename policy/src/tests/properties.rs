//! Invariants over generated policy sets and requests:
//! - an enforced DENY that matches always denies, whatever ALLOW policies say;
//! - adding an ALLOW policy never turns an allow into a deny (under the shipped deny default);
//! - dry-run policies never change a verdict, and `would_verdict` is the verdict with them
//!   enforced;
//! - explanations agree with evaluation;
//! - parse, print, parse gives an equal set.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::sample::subsequence;

use super::{Http, Req, load_with, orders};
use crate::model::{
    Action, ApiVersion, ConditionSpec, Mode, OperationSpec, PeerSpec, Policy, Rule,
};
use crate::{Decision, DefaultAction, LoadOptions, PolicySet, Reason, Verdict};

const PRINCIPALS: &[&str] = &[
    "cluster.local/ns/shop/sa/frontend",
    "cluster.local/ns/ops/sa/admin",
    "spiffe://cluster.local/ns/shop/sa/worker",
    "cluster.local/ns/shop/*",
    "*/sa/admin",
    "*",
];
const NAMESPACES: &[&str] = &["shop", "ops", "sh*"];
const REQUEST_PRINCIPALS: &[&str] = &["https://idp/alice", "https://idp/*", "*/bob", "*"];
const BLOCKS: &[&str] = &["10.0.0.0/8", "10.1.2.3", "192.168.0.0/16", "2001:db8::/32"];
const HOSTS: &[&str] = &["orders", "orders:8080", "*.shop", "admin.*"];
const PORTS: &[u16] = &[8080, 9090, 5432];
const METHODS: &[&str] = &["GET", "POST", "P*"];
const PATHS: &[&str] = &["/api/*", "/admin", "*.php", "/"];
/// Label and annotation values YAML could misread if printed carelessly.
const LABEL_VALUES: &[&str] = &[
    "shop-team",
    "yes",
    "8080",
    "1e3",
    "null",
    "a: b",
    "#not-a-comment",
    "*star",
    " padded ",
    "caf\u{e9}",
    "line\nbreak",
    "sep\u{2028}arator",
    "",
];

/// A positive list and a disjoint negative list drawn from `pool` (either may be empty).
fn pair<T: Clone + std::fmt::Debug + 'static>(
    pool: &'static [T],
) -> impl Strategy<Value = (Vec<T>, Vec<T>)> {
    (0u32..(1 << pool.len()), 0u32..(1 << pool.len())).prop_map(move |(a, b)| {
        let pick = |mask: u32| -> Vec<T> {
            pool.iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, v)| v.clone())
                .collect()
        };
        // Sparse: keep about a third of the bits, and the negative disjoint from the positive.
        let a = a & (a >> 1 | 0x5);
        (pick(a), pick(b & !a & (b >> 2)))
    })
}

fn strings(v: Vec<&str>) -> Vec<String> {
    v.into_iter().map(str::to_owned).collect()
}

fn peer() -> impl Strategy<Value = PeerSpec> {
    (
        pair(PRINCIPALS),
        pair(NAMESPACES),
        pair(BLOCKS),
        pair(REQUEST_PRINCIPALS),
    )
        .prop_map(|(p, n, b, r)| {
            let mut peer = PeerSpec {
                principals: strings(p.0),
                not_principals: strings(p.1),
                namespaces: strings(n.0),
                not_namespaces: strings(n.1),
                ip_blocks: strings(b.0),
                not_ip_blocks: strings(b.1),
                request_principals: strings(r.0),
                not_request_principals: strings(r.1),
            };
            if peer == PeerSpec::default() {
                peer.principals = vec![PRINCIPALS[0].to_owned()];
            }
            peer
        })
}

fn operation() -> impl Strategy<Value = OperationSpec> {
    (pair(HOSTS), pair(PORTS), pair(METHODS), pair(PATHS)).prop_map(|(h, p, m, x)| {
        let mut op = OperationSpec {
            hosts: strings(h.0),
            not_hosts: strings(h.1),
            ports: p.0,
            not_ports: p.1,
            methods: strings(m.0),
            not_methods: strings(m.1),
            paths: strings(x.0),
            not_paths: strings(x.1),
        };
        if op == OperationSpec::default() {
            op.ports = vec![8080];
        }
        op
    })
}

fn condition() -> impl Strategy<Value = ConditionSpec> {
    let cases: Vec<(&str, &[&str])> = vec![
        ("request.headers[x-tenant]", &["acme", "a*", "*"]),
        ("source.ip", &["10.0.0.0/8", "192.168.1.1"]),
        ("source.namespace", &["shop", "ops"]),
        ("source.principal", &["cluster.local/ns/ops/sa/admin", "*"]),
        ("destination.port", &["8080", "9090"]),
        ("connection.sni", &["orders.shop", "*.shop"]),
        ("request.auth.principal", &["https://idp/alice", "*"]),
        ("request.auth.audiences", &["orders", "b*"]),
        ("request.auth.presenter", &["web"]),
        ("request.auth.claims[groups]", &["buyers", "st*"]),
        ("request.auth.claims[realm][role]", &["admin", "true"]),
    ];
    (0..cases.len(), any::<u8>(), any::<bool>()).prop_map(move |(i, bits, negative)| {
        let (key, pool) = cases[i];
        let mut chosen: Vec<String> = pool
            .iter()
            .enumerate()
            .filter(|(j, _)| bits & (1 << j) != 0)
            .map(|(_, v)| (*v).to_owned())
            .collect();
        if chosen.is_empty() {
            chosen.push(pool[0].to_owned());
        }
        let (values, not_values) = if negative {
            (Vec::new(), chosen)
        } else {
            (chosen, Vec::new())
        };
        ConditionSpec {
            key: key.to_owned(),
            values,
            not_values,
        }
    })
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        proptest::collection::vec(peer(), 0..3),
        proptest::collection::vec(operation(), 0..3),
        proptest::collection::vec(condition(), 0..3),
    )
        .prop_map(|(from, to, when)| Rule { from, to, when })
}

fn policy_with(action: Action, mode: Option<Mode>) -> impl Strategy<Value = Policy> {
    (
        proptest::collection::vec(rule(), 1..4),
        0..3usize,
        0..3usize,
        any::<bool>(),
    )
        .prop_map(move |(rules, api, sel, root)| Policy {
            api_version: ApiVersion::ALL[api],
            name: String::new(),
            namespace: if root { "picket-system" } else { "shop" }.to_owned(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            selector: match sel {
                0 => BTreeMap::new(),
                1 => BTreeMap::from([("app".to_owned(), "orders".to_owned())]),
                _ => BTreeMap::from([("app".to_owned(), "billing".to_owned())]),
            },
            action,
            spec_mode: mode,
            direction: crate::model::Direction::Inbound,
            rules,
        })
}

/// Any valid policy: any action and mode (AUDIT is never dry-run), sometimes with the Istio
/// annotation, labels, or no rules (ALLOW only).
fn any_policy() -> impl Strategy<Value = Policy> {
    let action = prop_oneof![Just(Action::Allow), Just(Action::Deny), Just(Action::Audit)];
    let mode = prop_oneof![
        Just(None),
        Just(Some(Mode::Enforce)),
        Just(Some(Mode::DryRun))
    ];
    (action, mode, any::<u8>()).prop_flat_map(|(action, mode, extra)| {
        let mode = if action == Action::Audit { None } else { mode };
        policy_with(action, mode).prop_map(move |mut p| {
            if extra & 1 != 0 {
                let value = LABEL_VALUES[usize::from(extra >> 4) % LABEL_VALUES.len()];
                p.labels.insert("team".into(), value.into());
                p.annotations
                    .insert("example.com/note".into(), value.into());
            }
            if extra & 2 != 0 && p.spec_mode.is_none() && p.action != Action::Audit {
                p.annotations
                    .insert("istio.io/dry-run".into(), "true".into());
            }
            if extra & 4 != 0 && p.action == Action::Allow {
                p.rules.clear();
            }
            p
        })
    })
}

fn enforced(action: Action) -> impl Strategy<Value = Policy> {
    policy_with(action, None)
}

fn named(mut policies: Vec<Policy>, prefix: &str) -> Vec<Policy> {
    for (i, p) in policies.iter_mut().enumerate() {
        p.name = format!("{prefix}{i}");
    }
    policies
}

fn text(policies: &[Policy]) -> String {
    let docs: Vec<String> = policies.iter().map(Policy::to_yaml).collect();
    docs.join("---\n")
}

fn load_policies(policies: &[Policy], default: DefaultAction) -> PolicySet {
    let opts = LoadOptions {
        default_action: default,
        ..LoadOptions::default()
    };
    let text = text(policies);
    match load_with(&text, &opts) {
        Ok(set) => set,
        Err(e) => panic!("generated policies did not load:\n{e}\n{text}"),
    }
}

fn decide(policies: &[Policy], default: DefaultAction, req: &Req) -> Decision {
    req.evaluate(&load_policies(policies, default).for_workload(&orders()))
}

fn request() -> impl Strategy<Value = Req> {
    let principal = prop_oneof![
        Just(None),
        Just(Some("cluster.local/ns/shop/sa/frontend")),
        Just(Some("cluster.local/ns/ops/sa/admin")),
        Just(Some("cluster.local/ns/shop/sa/worker")),
        Just(Some("other.domain/ns/x/sa/y")),
    ];
    let ip = prop_oneof![
        Just("10.1.2.3"),
        Just("10.9.9.9"),
        Just("192.168.1.1"),
        Just("2001:db8::7"),
        Just("172.16.0.1"),
    ];
    let http = prop_oneof![
        Just(None),
        (
            prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("DELETE")],
            prop_oneof![Just("/"), Just("/api/x"), Just("/admin"), Just("/a.php")],
            prop_oneof![
                Just("orders"),
                Just("orders:8080"),
                Just("a.shop"),
                Just("admin.x")
            ],
            subsequence(
                vec![("x-tenant", "acme"), ("x-tenant", "evil"), ("x-other", "1")],
                0..3
            ),
        )
            .prop_map(|(m, p, h, hs)| Some(Http {
                method: m.to_owned(),
                path: p.to_owned(),
                host: h.to_owned(),
                headers: hs
                    .into_iter()
                    .map(|(n, v)| (n.to_owned(), v.to_owned()))
                    .collect(),
            })),
    ];
    let sni = prop_oneof![Just(None), Just(Some("orders.shop")), Just(Some("x.other"))];
    let auth = prop_oneof![
        Just(None),
        Just(Some(
            serde_json::json!({"iss": "https://idp", "sub": "alice", "aud": "orders",
                                     "groups": ["staff", "buyers"], "realm": {"role": "admin"}})
        )),
        Just(Some(
            serde_json::json!({"iss": "https://other", "sub": "bob", "aud": ["x", "billing"],
                                     "azp": "web", "groups": "staff", "realm": {"role": true}})
        )),
        Just(Some(serde_json::json!({"iss": "https://idp"}))),
    ];
    (principal, ip, prop::sample::select(PORTS), sni, http, auth).prop_map(
        |(principal, ip, port, sni, http, auth)| {
            let req = Req {
                principal: principal.map(str::to_owned),
                ip: ip.to_owned(),
                port,
                sni: sni.map(str::to_owned),
                auth: None,
                http,
            };
            match auth {
                // Tokens travel in HTTP requests only.
                Some(claims) if req.http.is_some() => req.jwt(claims),
                _ => req,
            }
        },
    )
}

fn defaults() -> impl Strategy<Value = DefaultAction> {
    prop_oneof![
        Just(DefaultAction::Deny),
        Just(DefaultAction::Allow),
        Just(DefaultAction::AuditOnly)
    ]
}

/// The verdict-bearing part of a decision.
fn core(d: &Decision) -> (Verdict, Reason, Option<String>, Option<usize>) {
    (
        d.verdict,
        d.reason,
        d.policy.as_ref().map(ToString::to_string),
        d.rule,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn parse_print_parse_is_stable(policies in proptest::collection::vec(any_policy(), 0..6)) {
        let policies = named(policies, "p");
        let first = load_policies(&policies, DefaultAction::Deny);
        // The loaded models are the generated ones.
        let mut sorted = policies.clone();
        sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let loaded: Vec<&Policy> = first.policies.iter().map(|p| &p.model).collect();
        prop_assert_eq!(loaded, sorted.iter().collect::<Vec<_>>());
        // Printing and loading again gives an equal set, and the same text.
        let printed = first.to_yaml();
        let second = load_with(&printed, &LoadOptions::default());
        prop_assert!(second.is_ok(), "{}\n{}", second.err().map(|e| e.to_string()).unwrap_or_default(), printed);
        if let Ok(second) = second {
            prop_assert_eq!(second.to_yaml(), printed);
            prop_assert!(second == first);
        }
    }

    #[test]
    fn an_enforced_deny_that_matches_always_denies(
        allows in proptest::collection::vec(enforced(Action::Allow), 0..4),
        deny in enforced(Action::Deny),
        default in defaults(),
        req in request(),
    ) {
        let mut policies = named(allows, "allow");
        policies.extend(named(vec![deny], "deny"));
        let set = load_policies(&policies, default);
        let workload = set.for_workload(&orders());
        let explained = req.explain(&workload);
        let deny_matched = explained.policies.iter().any(|p| {
            p.action == Action::Deny && p.mode == Mode::Enforce && p.matched_rule.is_some()
        });
        if deny_matched {
            prop_assert_eq!(explained.decision.verdict, Verdict::Deny);
            prop_assert_eq!(explained.decision.reason, Reason::ExplicitDeny);
        }
        // A DENY rule `{}` denies everything.
        let mut deny_all = policies.clone();
        deny_all[policies.len() - 1].rules = vec![Rule::default()];
        if deny_all[policies.len() - 1].selector.get("app").is_none_or(|a| a == "orders") {
            let d = decide(&deny_all, default, &req);
            prop_assert_eq!((d.verdict, d.reason), (Verdict::Deny, Reason::ExplicitDeny));
        }
    }

    #[test]
    fn adding_an_allow_never_turns_an_allow_into_a_deny(
        base in proptest::collection::vec(any_policy(), 0..5),
        extra in enforced(Action::Allow),
        req in request(),
    ) {
        let base = named(base, "base");
        let mut more = base.clone();
        more.extend(named(vec![extra], "extra"));
        let before = decide(&base, DefaultAction::Deny, &req);
        let after = decide(&more, DefaultAction::Deny, &req);
        if before.verdict == Verdict::Allow {
            prop_assert_eq!(after.verdict, Verdict::Allow);
        }
        // Under an allow default, an allow that came from an ALLOW rule is kept too.
        let before = decide(&base, DefaultAction::Allow, &req);
        let after = decide(&more, DefaultAction::Allow, &req);
        if before.reason == Reason::AllowMatch {
            prop_assert_eq!(after.verdict, Verdict::Allow);
        }
    }

    #[test]
    fn dry_run_never_changes_a_verdict(
        base in proptest::collection::vec(any_policy(), 0..5),
        trial in proptest::collection::vec(
            prop_oneof![enforced(Action::Allow), enforced(Action::Deny)], 1..4),
        default in defaults(),
        req in request(),
    ) {
        let base = named(base, "base");
        let trial = named(trial, "trial");
        let mut dry = base.clone();
        dry.extend(trial.iter().cloned().map(|mut p| { p.spec_mode = Some(Mode::DryRun); p }));
        let before = decide(&base, default, &req);
        let with_dry = decide(&dry, default, &req);
        prop_assert_eq!(core(&before), core(&with_dry));
        prop_assert_eq!(&before.audit, &with_dry.audit);
        // `would_verdict` is the verdict with the trial policies enforced.
        let mut real = base.clone();
        real.extend(trial);
        let enforced_default = if default == DefaultAction::AuditOnly {
            DefaultAction::Deny
        } else {
            default
        };
        let base_has_dry_run = base.iter().any(|p| p.mode() == Mode::DryRun && p.action != Action::Audit);
        if !base_has_dry_run {
            let enforced = decide(&real, enforced_default, &req);
            prop_assert_eq!(with_dry.would_verdict, enforced.verdict);
        }
    }

    #[test]
    fn explanations_agree_with_evaluation(
        policies in proptest::collection::vec(any_policy(), 0..6),
        default in defaults(),
        req in request(),
    ) {
        let policies = named(policies, "p");
        let set = load_policies(&policies, default);
        let workload = set.for_workload(&orders());
        let e = req.explain(&workload);
        prop_assert_eq!(&e.decision, &req.evaluate(&workload));
        // Recompute the decision from the per-rule traces, without the index.
        let first = |action: Action, mode: Mode| {
            e.policies.iter().find_map(|p| {
                (p.action == action && p.mode == mode)
                    .then_some(p.matched_rule.map(|r| (p.policy.to_string(), r)))
                    .flatten()
            })
        };
        let has_allow = e.policies.iter().any(|p| p.action == Action::Allow && p.mode == Mode::Enforce);
        let d = &e.decision;
        if let Some((policy, rule)) = first(Action::Deny, Mode::Enforce) {
            prop_assert_eq!(core(d), (Verdict::Deny, Reason::ExplicitDeny, Some(policy), Some(rule)));
        } else if !has_allow {
            prop_assert_eq!(d.reason, Reason::Default);
        } else if let Some((policy, rule)) = first(Action::Allow, Mode::Enforce) {
            prop_assert_eq!(core(d), (Verdict::Allow, Reason::AllowMatch, Some(policy), Some(rule)));
        } else {
            prop_assert_eq!(d.verdict, Verdict::Deny);
        }
        let shadows: Vec<(String, usize)> = e.policies.iter()
            .filter(|p| p.mode == Mode::DryRun)
            .filter_map(|p| p.matched_rule.map(|r| (p.policy.to_string(), r)))
            .collect();
        let recorded: Vec<(String, usize)> = d.shadows.iter()
            .map(|s| (s.policy.to_string(), s.rule.unwrap_or(usize::MAX)))
            .collect();
        prop_assert_eq!(shadows, recorded);
        let audits: Vec<String> = e.policies.iter()
            .filter(|p| p.action == Action::Audit && p.matched_rule.is_some())
            .map(|p| p.policy.to_string())
            .collect();
        let recorded: Vec<String> = d.audit.iter().map(ToString::to_string).collect();
        prop_assert_eq!(audits, recorded);
    }
}
