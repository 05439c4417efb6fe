//! Explanations: every policy that applies to the workload, every rule, and for each rule that
//! did not match, which field failed and why. Slow on purpose (it allocates freely); the
//! verdict it reports is the one [`WorkloadPolicies::evaluate`] gives.

use std::fmt;

use serde::Serialize;

use std::net::IpAddr;

use crate::compile::{Attrs, CompiledPolicy, CompiledRule, Field};
use crate::decision::{Decision, EgressRequest, PolicyRef, Request};
use crate::model::{Action, Mode};
use crate::options::DefaultAction;
use crate::set::WorkloadPolicies;

/// Why a request got its decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The decision, as [`WorkloadPolicies::evaluate`] gives it.
    pub decision: Decision,
    /// The mesh default, used when no enforced ALLOW policy applies (for an egress
    /// connection: `outbound.passthrough`).
    pub default_action: DefaultAction,
    /// Every policy that applies to the workload, in set order (for an egress connection:
    /// its egress policies).
    pub policies: Vec<PolicyTrace>,
    /// The egress connection explained, when it is one (decided by egress policies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressTarget>,
}

/// The egress connection an explanation is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressTarget {
    /// The address dialled.
    pub ip: IpAddr,
    /// The port dialled.
    pub port: u16,
    /// The name the client asked for (SNI or Host), when it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether the name is the SNI of a TLS ClientHello (else the Host of a plaintext
    /// HTTP/1 request).
    pub sni: bool,
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
        Explanation {
            decision: self.evaluate(req),
            default_action: self.default_action,
            policies: traces(&self.policies, &Attrs::new(req)),
            egress: None,
        }
    }

    /// Decides one egress connection as [`Self::evaluate_egress`] does (`default` being
    /// `outbound.passthrough`) and says why: every egress policy that selects the workload,
    /// every rule, which field failed.
    pub fn explain_egress(&self, req: &EgressRequest<'_>, default: DefaultAction) -> Explanation {
        let host = crate::evaluate::egress_host(req);
        let a = Attrs::egress(req, host.as_deref());
        let policies = self.egress.as_ref().map_or(&[][..], |e| &e.policies[..]);
        Explanation {
            decision: self.evaluate_egress(req, default),
            default_action: default,
            policies: traces(policies, &a),
            egress: Some(EgressTarget {
                ip: req.ip,
                port: req.port,
                name: req.name.map(str::to_owned),
                sni: req.sni.is_some(),
            }),
        }
    }
}

/// Every policy's part, every rule checked against `a`.
fn traces(policies: &[std::sync::Arc<CompiledPolicy>], a: &Attrs<'_>) -> Vec<PolicyTrace> {
    policies
        .iter()
        .map(|p| {
            let rules: Vec<RuleTrace> = p
                .rules
                .iter()
                .enumerate()
                .map(|(index, rule)| {
                    let misses = misses(rule, a, p.action);
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
        .collect()
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
                    // An egress connection's name, with the port dialled, as hosts match it.
                    Field::Hosts | Field::NotHosts if a.egress.is_some() => {
                        a.egress.and_then(|e| e.host).map(str::to_owned)
                    }
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

/// `ip:port`, IPv6 in brackets.
struct SocketAddrText(IpAddr, u16);

impl fmt::Display for SocketAddrText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        std::net::SocketAddr::new(self.0, self.1).fmt(f)
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = &self.egress {
            let to = SocketAddrText(e.ip, e.port);
            match &e.name {
                Some(n) if e.sni => writeln!(f, "egress connection to {to}, SNI {n}")?,
                Some(n) => writeln!(f, "egress connection to {to}, Host {n}")?,
                None => writeln!(f, "egress connection to {to}, no name seen")?,
            }
        }
        writeln!(f, "decision: {}", self.decision)?;
        match (&self.egress, self.policies.is_empty()) {
            (Some(_), true) => writeln!(
                f,
                "no egress policy applies to this workload; outbound.passthrough decides: {}",
                self.default_action
            )?,
            (None, true) => writeln!(
                f,
                "no policy applies to this workload; the mesh default is {}",
                self.default_action
            )?,
            (_, false) => {}
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
