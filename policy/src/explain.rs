//! Explanations: every policy that applies to the workload, every rule, and for each rule that
//! did not match, which field failed and why. Slow on purpose (it allocates freely); the
//! verdict it reports is the one [`WorkloadPolicies::evaluate`] gives.

use std::fmt;

use serde::Serialize;

use crate::compile::{Attrs, CompiledRule, Field};
use crate::decision::{Decision, PolicyRef, Request};
use crate::model::{Action, Mode};
use crate::options::DefaultAction;
use crate::set::WorkloadPolicies;

/// Why a request got its decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The decision, as [`WorkloadPolicies::evaluate`] gives it.
    pub decision: Decision,
    /// The mesh default, used when no enforced ALLOW policy applies.
    pub default_action: DefaultAction,
    /// Every policy that applies to the workload, in set order.
    pub policies: Vec<PolicyTrace>,
}

/// One policy's part in an explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyTrace {
    /// The policy.
    pub policy: PolicyRef,
    /// Its action.
    pub action: Action,
    /// Its mode.
    pub mode: Mode,
    /// Where it was loaded from.
    pub source: String,
    /// The line its document starts on.
    pub line: u64,
    /// The first rule that matched, if any.
    pub matched_rule: Option<usize>,
    /// Every rule.
    pub rules: Vec<RuleTrace>,
}

/// One rule's part in an explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleTrace {
    /// The rule's index in `spec.rules`.
    pub index: usize,
    /// Whether it matched.
    pub matched: bool,
    /// For a rule that did not match: each failing part, as `path: why`.
    pub misses: Vec<String>,
}

impl WorkloadPolicies {
    /// Evaluates `req` and says why: every policy considered, every rule, which field failed.
    pub fn explain(&self, req: &Request<'_>) -> Explanation {
        let decision = self.evaluate(req);
        let a = Attrs::new(req);
        let policies = self
            .policies
            .iter()
            .map(|p| {
                let rules: Vec<RuleTrace> = p
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(index, rule)| {
                        let misses = misses(rule, &a, p.action);
                        RuleTrace {
                            index,
                            matched: misses.is_empty(),
                            misses,
                        }
                    })
                    .collect();
                PolicyTrace {
                    policy: p.reference.clone(),
                    action: p.action,
                    mode: p.mode,
                    source: p.source.to_string(),
                    line: p.line,
                    matched_rule: rules.iter().find(|r| r.matched).map(|r| r.index),
                    rules,
                }
            })
            .collect();
        Explanation {
            decision,
            default_action: self.default_action,
            policies,
        }
    }
}

fn list(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

fn describe(field: Field, value: Option<String>, patterns: &[String], attr: &str) -> String {
    match (value, field.is_negative()) {
        (None, _) => format!("{}: the request has no {attr}", field.name()),
        (Some(v), false) => format!("{}: `{v}` matches none of {}", field.name(), list(patterns)),
        (Some(v), true) => format!("{}: `{v}` matches one of {}", field.name(), list(patterns)),
    }
}

/// Every failing part of a rule; empty when the rule matches. Uses the same checks as
/// evaluation, so the two cannot disagree.
fn misses(rule: &CompiledRule, a: &Attrs<'_>, action: Action) -> Vec<String> {
    if a.http.is_none() && rule.http_only && action == Action::Allow {
        return vec![
            "the rule has HTTP-only fields (hosts, methods, paths or request headers) and this \
             is a TCP connection: such an ALLOW rule never matches TCP"
                .to_owned(),
        ];
    }
    let mut out = Vec::new();
    let from: Vec<_> = rule.from.iter().map(|p| p.check(a)).collect();
    if !from.is_empty() && from.iter().all(Result::is_err) {
        for (i, (peer, result)) in rule.from.iter().zip(&from).enumerate() {
            if let Err(field) = result {
                let (value, attr) = match field {
                    Field::Principals | Field::NotPrincipals => (
                        a.principal.map(str::to_owned),
                        "principal (unauthenticated)",
                    ),
                    Field::Namespaces | Field::NotNamespaces => (
                        a.namespace.map(str::to_owned),
                        "namespace (unauthenticated)",
                    ),
                    Field::RequestPrincipals | Field::NotRequestPrincipals => (
                        a.request_principal.map(str::to_owned),
                        "request principal (no validated JWT with iss and sub)",
                    ),
                    _ => (Some(a.ip.to_string()), "address"),
                };
                out.push(format!(
                    "from[{i}].source.{}",
                    describe(*field, value, &peer.patterns(*field), attr)
                ));
            }
        }
    }
    let to: Vec<_> = rule.to.iter().map(|o| o.check(a)).collect();
    if !to.is_empty() && to.iter().all(Result::is_err) {
        for (i, (op, result)) in rule.to.iter().zip(&to).enumerate() {
            if let Err(field) = result {
                let http = a.http;
                let value = match field {
                    Field::Ports | Field::NotPorts => Some(a.port.to_string()),
                    Field::Hosts | Field::NotHosts => http.map(|h| h.host.to_owned()),
                    Field::Methods | Field::NotMethods => http.map(|h| h.method.to_owned()),
                    _ => http.map(|h| h.path.to_owned()),
                };
                out.push(format!(
                    "to[{i}].operation.{}",
                    describe(*field, value, &op.patterns(*field), "value")
                ));
            }
        }
    }
    for (i, cond) in rule.when.iter().enumerate() {
        if let Err(field) = cond.check(a, action) {
            let got = cond.request_values(a);
            let set = if field == Field::Values {
                &cond.values
            } else {
                &cond.not_values
            };
            let value = (!got.is_empty()).then(|| got.join("`, `"));
            out.push(format!(
                "when[{i}] ({}) {}",
                cond.key,
                describe(field, value, &set.show(), "such value")
            ));
        }
    }
    debug_assert_eq!(out.is_empty(), rule.matches(a, action));
    out
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "decision: {}", self.decision)?;
        if self.policies.is_empty() {
            writeln!(
                f,
                "no policy applies to this workload; the mesh default is {}",
                self.default_action
            )?;
        }
        for p in &self.policies {
            writeln!(
                f,
                "policy {} ({} {}, {}:{})",
                p.policy, p.action, p.mode, p.source, p.line
            )?;
            if p.rules.is_empty() {
                writeln!(f, "  no rules: selects the workload and matches nothing")?;
            }
            for r in &p.rules {
                if r.matched {
                    writeln!(f, "  rule {}: matched", r.index)?;
                } else {
                    writeln!(f, "  rule {}: no match", r.index)?;
                    for m in &r.misses {
                        writeln!(f, "    {m}")?;
                    }
                }
            }
        }
        for s in &self.decision.shadows {
            match s.rule {
                Some(rule) => writeln!(f, "dry-run: {} would {} (rule {rule})", s.policy, s.would)?,
                None => writeln!(f, "dry-run: {} would {}", s.policy, s.would)?,
            }
        }
        if self.decision.would_verdict != self.decision.verdict {
            writeln!(
                f,
                "with dry-run policies enforced the verdict would be {}",
                self.decision.would_verdict
            )?;
        }
        for p in &self.decision.audit {
            writeln!(f, "audit: {p} matched")?;
        }
        Ok(())
    }
}
