//! Evaluation: the hot path. The request and decision types are in [`crate::decision`].
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

use crate::compile::Attrs;
use crate::decision::{Decision, EgressRequest, PolicyRef, Reason, Request, Shadow, Verdict};
use crate::model::Action;
use crate::options::DefaultAction;
use crate::set::{Buckets, RuleId, WorkloadPolicies};

/// The name of an egress connection as `hosts` patterns match it: with its port, as they
/// match a `Host` header (`api.example.com:443`, `[::1]:80`).
pub(crate) fn egress_host(req: &EgressRequest<'_>) -> Option<String> {
    req.name.filter(|n| !n.is_empty()).map(|n| {
        if n.contains(':') {
            format!("[{n}]:{}", req.port)
        } else {
            format!("{n}:{}", req.port)
        }
    })
}

impl WorkloadPolicies {
    /// Decides one request. See the module documentation for the order.
    #[inline]
    pub fn evaluate(&self, req: &Request<'_>) -> Decision {
        self.decide(&Attrs::new(req), self.default_action)
    }

    /// Decides one connection of the workload to a destination outside the mesh with its
    /// egress policies (`spec.direction: egress`), in the same order as [`Self::evaluate`];
    /// `default` (the sidecar's `outbound.passthrough`) takes the mesh default's place when no
    /// enforced egress ALLOW policy selects the workload. The decision is the same record.
    pub fn evaluate_egress(&self, req: &EgressRequest<'_>, default: DefaultAction) -> Decision {
        let host = egress_host(req);
        let a = Attrs::egress(req, host.as_deref());
        match &self.egress {
            Some(egress) => egress.decide(&a, default),
            None => WorkloadPolicies::indexed(Vec::new(), default).decide(&a, default),
        }
    }

    /// Whether any egress policy selects the workload (enforced or dry-run).
    pub fn has_egress_policies(&self) -> bool {
        self.egress.as_ref().is_some_and(|e| !e.policies.is_empty())
    }

    /// The decision for `a`, `default_action` applying when no enforced ALLOW policy selects
    /// the workload.
    // Over 80 lines by choice: it is the decision order of the module documentation (deny,
    // allow, default; then dry-run shadows, audit, the would-be verdict) read top to bottom,
    // and it is the per-request hot path (policy/benches/evaluate.rs); a split would move
    // state between frames without making the order clearer.
    #[inline]
    fn decide(&self, a: &Attrs<'_>, default_action: DefaultAction) -> Decision {
        let a = *a;
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
            let verdict = match default_action {
                DefaultAction::Deny => Verdict::Deny,
                DefaultAction::Allow | DefaultAction::AuditOnly => Verdict::Allow,
            };
            (verdict, Reason::Default, None)
        } else if let Some(id) = allow {
            (Verdict::Allow, Reason::AllowMatch, Some(id))
        } else if (a.principal.is_none() && self.allow_requires_principal)
            || (a.auth.is_none() && self.allow_requires_request_auth)
        {
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
            match default_action {
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
