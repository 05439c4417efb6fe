//! The request, the decision, and evaluation: the hot path.
//!
//! Order (the reference in `README.md` states it with examples):
//! 1. any matching enforced DENY rule denies (`explicit-deny`);
//! 2. else, when no enforced ALLOW policy selects the workload, the mesh default applies
//!    (`default`);
//! 3. else any matching enforced ALLOW rule allows (`allow-match`);
//! 4. else deny (`no-allow-match`, or `unauthenticated` when the request has no principal and
//!    some ALLOW rule needed one).
//!
//! AUDIT policies only add to [`Decision::audit`]. Dry-run policies only add to
//! [`Decision::shadows`] and [`Decision::would_verdict`]. Neither ever changes the verdict.
//!
//! Evaluation allocates nothing when the verdict is allow and no dry-run or AUDIT policy
//! matched: the decision's lists stay empty and policy names are shared `Arc<str>`s.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::DefaultAction;
use crate::compile::Attrs;
use crate::model::Action;
use crate::set::{Buckets, RuleId, WorkloadPolicies};

/// One request or connection to authorize.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The peer's identity as `trust-domain/ns/<namespace>/sa/<account>` (a `spiffe://` prefix
    /// is tolerated); `None` when the peer is unauthenticated.
    pub source_principal: Option<&'a str>,
    /// The peer's address (IPv4-mapped IPv6 addresses are read as IPv4).
    pub source_ip: IpAddr,
    /// The port the connection arrived on.
    pub destination_port: u16,
    /// The TLS server name the peer asked for.
    pub sni: Option<&'a str>,
    /// The HTTP request; `None` for an opaque TCP connection or the connection-level check.
    pub http: Option<HttpRequest<'a>>,
}

/// The HTTP part of a request, already normalized by the proxy ([`crate::normalize`]).
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    /// Uppercase method token.
    pub method: &'a str,
    /// Normalized path, without the query.
    pub path: &'a str,
    /// Normalized host, lowercase, with its port when the request gave one.
    pub host: &'a str,
    /// Header names lowercase, duplicates kept in order.
    pub headers: &'a [(&'a str, &'a str)],
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The request may proceed.
    Allow,
    /// The request is refused.
    Deny,
}

impl Verdict {
    /// `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the verdict is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// An enforced DENY rule matched.
    ExplicitDeny,
    /// The workload has enforced ALLOW policies and none of their rules matched.
    NoAllowMatch,
    /// As `NoAllowMatch`, for a request without a principal when some ALLOW rule needed one.
    Unauthenticated,
    /// No enforced ALLOW policy selects the workload: the mesh default applied.
    Default,
    /// An enforced ALLOW rule matched.
    AllowMatch,
}

impl Reason {
    /// `explicit-deny`, `no-allow-match`, `unauthenticated`, `default` or `allow-match`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ExplicitDeny => "explicit-deny",
            Reason::NoAllowMatch => "no-allow-match",
            Reason::Unauthenticated => "unauthenticated",
            Reason::Default => "default",
            Reason::AllowMatch => "allow-match",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy's namespace and name; `Display` is `namespace/name`. Cloning is two reference
/// count increments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyRef {
    /// `metadata.namespace`.
    pub namespace: Arc<str>,
    /// `metadata.name`.
    pub name: Arc<str>,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Serialize for PolicyRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A dry-run policy that matched, and what it would have decided if enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shadow {
    /// The dry-run policy.
    pub policy: PolicyRef,
    /// Its first matching rule.
    pub rule: Option<usize>,
    /// `deny` for a DENY policy, `allow` for an ALLOW policy.
    pub would: Verdict,
}

/// The outcome of one evaluation: one record for the 403 body, the log, metrics and spans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Allow or deny.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The deciding policy: the matching DENY or ALLOW policy; `None` for the default and for
    /// no-allow-match.
    pub policy: Option<PolicyRef>,
    /// The deciding rule's index in `spec.rules`.
    pub rule: Option<usize>,
    /// Matching dry-run policies, in policy order (one entry per policy, its first matching
    /// rule). A dry-run policy not listed did not match.
    pub shadows: Vec<Shadow>,
    /// Matching AUDIT policies, in policy order.
    pub audit: Vec<PolicyRef>,
    /// The verdict if every dry-run policy were enforced and an `audit-only` mesh default
    /// were `deny`. Equal to `verdict` when nothing is being tried out.
    pub would_verdict: Verdict,
}

impl Decision {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.verdict, self.reason)?;
        if let Some(policy) = &self.policy {
            write!(f, " by {policy}")?;
            if let Some(rule) = self.rule {
                write!(f, " rule {rule}")?;
            }
        }
        if self.would_verdict != self.verdict {
            write!(
                f,
                "; would {} with dry-run policies enforced",
                self.would_verdict
            )?;
        }
        Ok(())
    }
}

impl WorkloadPolicies {
    /// Decides one request. See the module documentation for the order.
    pub fn evaluate(&self, req: &Request<'_>) -> Decision {
        let a = Attrs::new(req);
        let buckets = self.index.lookup(&a);

        let deny = self.first_match(&buckets, |b| &b.deny, &a);
        let allow = if deny.is_none() && self.has_enforced_allow {
            self.first_match(&buckets, |b| &b.allow, &a)
        } else {
            None
        };
        let (verdict, reason, decided_by) = if let Some(id) = deny {
            (Verdict::Deny, Reason::ExplicitDeny, Some(id))
        } else if !self.has_enforced_allow {
            let verdict = match self.default_action {
                DefaultAction::Deny => Verdict::Deny,
                DefaultAction::Allow | DefaultAction::AuditOnly => Verdict::Allow,
            };
            (verdict, Reason::Default, None)
        } else if let Some(id) = allow {
            (Verdict::Allow, Reason::AllowMatch, Some(id))
        } else if a.principal.is_none() && self.allow_requires_principal {
            (Verdict::Deny, Reason::Unauthenticated, None)
        } else {
            (Verdict::Deny, Reason::NoAllowMatch, None)
        };

        let mut shadows: Vec<Shadow> = Vec::new();
        let (mut dry_deny, mut dry_allow) = (false, false);
        if self.has_dry_run {
            self.each_match(
                &buckets,
                |b| &b.dry_run,
                &a,
                |id| {
                    let policy = &self.policies[id.policy as usize];
                    let would = if policy.action == Action::Deny {
                        dry_deny = true;
                        Verdict::Deny
                    } else {
                        dry_allow = true;
                        Verdict::Allow
                    };
                    shadows.push(Shadow {
                        policy: policy.reference.clone(),
                        rule: Some(id.rule as usize),
                        would,
                    });
                },
            );
            // Policy order is reference order; keep each policy's first matching rule.
            if shadows.len() > 1 {
                shadows.sort_unstable_by(|x, y| (&x.policy, x.rule).cmp(&(&y.policy, y.rule)));
                shadows.dedup_by(|later, first| later.policy == first.policy);
            }
        }
        let mut audit: Vec<PolicyRef> = Vec::new();
        if self.has_audit {
            self.each_match(
                &buckets,
                |b| &b.audit,
                &a,
                |id| {
                    audit.push(self.policies[id.policy as usize].reference.clone());
                },
            );
            if audit.len() > 1 {
                audit.sort_unstable();
                audit.dedup();
            }
        }

        let would_verdict = if deny.is_some() || dry_deny {
            Verdict::Deny
        } else if !self.has_enforced_allow && !self.has_dry_run_allow {
            match self.default_action {
                DefaultAction::Allow => Verdict::Allow,
                DefaultAction::Deny | DefaultAction::AuditOnly => Verdict::Deny,
            }
        } else if allow.is_some() || dry_allow {
            Verdict::Allow
        } else {
            Verdict::Deny
        };

        Decision {
            verdict,
            reason,
            policy: decided_by.map(|id| self.policies[id.policy as usize].reference.clone()),
            rule: decided_by.map(|id| id.rule as usize),
            shadows,
            audit,
            would_verdict,
        }
    }

    /// The lowest-numbered matching rule among the candidate lists (each sorted).
    #[inline]
    fn first_match(
        &self,
        buckets: &[Option<&Buckets>; 4],
        pick: impl Fn(&Buckets) -> &[RuleId],
        a: &Attrs<'_>,
    ) -> Option<RuleId> {
        let mut best: Option<RuleId> = None;
        for bucket in buckets.iter().flatten() {
            for &id in pick(bucket) {
                if best.is_some_and(|b| id >= b) {
                    break;
                }
                if self.rule_matches(id, a) {
                    best = Some(id);
                    break;
                }
            }
        }
        best
    }

    /// Calls `found` for every matching rule among the candidate lists. Allocates nothing.
    fn each_match(
        &self,
        buckets: &[Option<&Buckets>; 4],
        pick: impl Fn(&Buckets) -> &[RuleId],
        a: &Attrs<'_>,
        mut found: impl FnMut(RuleId),
    ) {
        for bucket in buckets.iter().flatten() {
            for &id in pick(bucket) {
                if self.rule_matches(id, a) {
                    found(id);
                }
            }
        }
    }

    #[inline]
    fn rule_matches(&self, id: RuleId, a: &Attrs<'_>) -> bool {
        let policy = &self.policies[id.policy as usize];
        policy.rules[id.rule as usize].matches(a, policy.action)
    }
}
