//! The loaded policy set, and the per-workload view the sidecar evaluates against.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::authn::RequestAuthentication;
use crate::compile::{Attrs, CompiledPolicy, IndexKey};
use crate::decision::PolicyRef;
use crate::model::{Action, Direction, Mode};
use crate::options::{DefaultAction, LoadOptions, Source};
use crate::workload::Workload;

/// What `picket policy check` and the admin page list about one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicySummary {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.action`.
    pub action: Action,
    /// `spec.mode` (or the `istio.io/dry-run` annotation).
    pub mode: Mode,
    /// `spec.direction`: `inbound`, or `egress` for a policy of non-mesh destinations.
    pub direction: Direction,
    /// How many rules `spec.rules` has.
    pub rules: usize,
    /// The source name the document came from.
    pub source: String,
    /// The line the document starts on.
    pub line: u64,
}

/// Every loaded policy, sorted by namespace then name. Immutable; share it behind an `Arc`.
pub struct PolicySet {
    pub(crate) policies: Vec<Arc<CompiledPolicy>>,
    pub(crate) summaries: Vec<PolicySummary>,
    pub(crate) root_namespace: String,
    pub(crate) default_action: DefaultAction,
    pub(crate) hash: String,
    pub(crate) authentications: Vec<Arc<RequestAuthentication>>,
}

impl fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySet")
            .field("policies", &self.policies.len())
            .field("authentications", &self.authentications.len())
            .field("root_namespace", &self.root_namespace)
            .field("default_action", &self.default_action)
            .field("sources_hash", &self.hash)
            .finish()
    }
}

/// Two sets are equal when their policies are, whatever files they came from.
impl PartialEq for PolicySet {
    fn eq(&self, other: &Self) -> bool {
        self.policies.len() == other.policies.len()
            && self
                .policies
                .iter()
                .zip(&other.policies)
                .all(|(a, b)| a.model == b.model)
            && self.authentications == other.authentications
    }
}

impl PolicySet {
    /// A set with no policies: every workload gets the mesh default.
    pub fn empty(opts: &LoadOptions) -> PolicySet {
        PolicySet {
            policies: Vec::new(),
            summaries: Vec::new(),
            root_namespace: opts.root_namespace.clone(),
            default_action: opts.default_action,
            hash: sources_hash(&[]),
            authentications: Vec::new(),
        }
    }

    /// The policies that apply to `w`, indexed for evaluation. Call once per reload.
    ///
    /// A policy applies when its namespace is the workload's or the root namespace, and every
    /// `selector.matchLabels` entry is among the workload's labels (no selector: all workloads).
    pub fn for_workload(&self, w: &Workload) -> WorkloadPolicies {
        let selected: Vec<Arc<CompiledPolicy>> = self
            .policies
            .iter()
            .filter(|p| {
                let ns = &*p.reference.namespace;
                (ns == w.namespace || ns == self.root_namespace)
                    && p.selector().iter().all(|(k, v)| w.labels.get(k) == Some(v))
            })
            .cloned()
            .collect();
        let mut policies = WorkloadPolicies::new(selected, self.default_action);
        policies.authentications = self
            .authentications
            .iter()
            .filter(|a| a.applies_to(w, &self.root_namespace))
            .cloned()
            .collect();
        policies
    }

    /// A summary of every policy, in set order.
    pub fn policies(&self) -> impl Iterator<Item = &PolicySummary> {
        self.summaries.iter()
    }

    /// Every `RequestAuthentication` document, sorted by namespace then name.
    pub fn authentications(&self) -> &[Arc<RequestAuthentication>] {
        &self.authentications
    }

    /// How many policies the set holds.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether the set holds no policy.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The mesh default this set was loaded with.
    pub fn default_action(&self) -> DefaultAction {
        self.default_action
    }

    /// A fingerprint of the sources the set was loaded from: 64-bit FNV-1a over each source's
    /// name and text in the order given, as 16 lowercase hex digits. It tells which sources are
    /// in force; it is not a cryptographic digest.
    pub fn sources_hash(&self) -> String {
        self.hash.clone()
    }

    /// Every policy as canonical YAML, one document each, separated by `---`, in set order.
    /// Loading the output gives an equal set.
    pub fn to_yaml(&self) -> String {
        let docs: Vec<String> = self
            .policies
            .iter()
            .map(|p| p.model.to_yaml())
            .chain(self.authentications.iter().map(|a| a.to_yaml()))
            .collect();
        docs.join("---\n")
    }

    /// The canonical YAML of the policies that came from source `name`, in set order.
    pub fn to_yaml_for_source(&self, name: &str) -> String {
        let docs: Vec<String> = self
            .policies
            .iter()
            .filter(|p| &*p.source == name)
            .map(|p| p.model.to_yaml())
            .chain(
                self.authentications
                    .iter()
                    .filter(|a| a.source == name)
                    .map(|a| a.to_yaml()),
            )
            .collect();
        docs.join("---\n")
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// See [`PolicySet::sources_hash`]. Lengths are hashed before contents so moving bytes from
/// one source to the next changes the hash.
pub(crate) fn sources_hash(sources: &[Source<'_>]) -> String {
    let mut h = FNV_OFFSET;
    for s in sources {
        h = fnv(h, &(s.name.len() as u64).to_le_bytes());
        h = fnv(h, s.name.as_bytes());
        h = fnv(h, &(s.text.len() as u64).to_le_bytes());
        h = fnv(h, s.text.as_bytes());
    }
    format!("{h:016x}")
}

/// A rule's place: policy index in the workload's list, rule index in the policy. Ordered, so
/// "the first match" is well defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RuleId {
    pub(crate) policy: u32,
    pub(crate) rule: u32,
}

/// Candidate rules by role, each list sorted.
#[derive(Debug, Default)]
pub(crate) struct Buckets {
    pub(crate) deny: Vec<RuleId>,
    pub(crate) allow: Vec<RuleId>,
    pub(crate) dry_run: Vec<RuleId>,
    pub(crate) audit: Vec<RuleId>,
}

/// Rules filed by the one attribute value a request must have for them to match (exact
/// principal, else exact namespace, else port), plus the rules that need none of these. A
/// request looks at three buckets and the catch-all list instead of every rule.
#[derive(Debug, Default)]
pub(crate) struct Index {
    by_principal: HashMap<Box<str>, Buckets>,
    by_namespace: HashMap<Box<str>, Buckets>,
    by_port: HashMap<u16, Buckets>,
    any: Buckets,
}

impl Index {
    #[inline]
    pub(crate) fn lookup(&self, a: &Attrs<'_>) -> [Option<&Buckets>; 4] {
        [
            a.principal.and_then(|p| self.by_principal.get(p)),
            a.namespace.and_then(|n| self.by_namespace.get(n)),
            self.by_port.get(&a.port),
            Some(&self.any),
        ]
    }
}

/// The list a rule of a policy with this action and enforcement goes to.
fn role_list(b: &mut Buckets, (action, enforced): (Action, bool)) -> &mut Vec<RuleId> {
    match (action, enforced) {
        (Action::Audit, _) => &mut b.audit,
        (_, false) => &mut b.dry_run,
        (Action::Deny, true) => &mut b.deny,
        (Action::Allow, true) => &mut b.allow,
    }
}

/// The policies that apply to one workload, indexed. Evaluate with
/// [`WorkloadPolicies::evaluate`]; explain with [`WorkloadPolicies::explain`].
pub struct WorkloadPolicies {
    pub(crate) policies: Vec<Arc<CompiledPolicy>>,
    pub(crate) default_action: DefaultAction,
    pub(crate) index: Index,
    pub(crate) has_enforced_allow: bool,
    pub(crate) has_dry_run_allow: bool,
    pub(crate) has_dry_run: bool,
    pub(crate) has_audit: bool,
    pub(crate) allow_requires_principal: bool,
    pub(crate) allow_requires_request_auth: bool,
    pub(crate) authentications: Vec<Arc<RequestAuthentication>>,
    /// The egress policies (`spec.direction: egress`) that select the workload, indexed the
    /// same way; their default is given per evaluation ([`Self::evaluate_egress`]).
    /// `None` only on the egress side itself.
    pub(crate) egress: Option<Box<WorkloadPolicies>>,
}

impl fmt::Debug for WorkloadPolicies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .policies
            .iter()
            .map(|p| p.reference.to_string())
            .collect();
        f.debug_struct("WorkloadPolicies")
            .field("policies", &names)
            .field("default_action", &self.default_action)
            .finish()
    }
}

impl WorkloadPolicies {
    fn new(policies: Vec<Arc<CompiledPolicy>>, default_action: DefaultAction) -> Self {
        let (egress, inbound): (Vec<_>, Vec<_>) = policies
            .into_iter()
            .partition(|p| p.model.direction == Direction::Egress);
        let mut w = Self::indexed(inbound, default_action);
        w.egress = Some(Box::new(Self::indexed(egress, default_action)));
        w
    }

    /// `policies` (all of one direction) indexed; no egress policies.
    pub(crate) fn indexed(
        policies: Vec<Arc<CompiledPolicy>>,
        default_action: DefaultAction,
    ) -> Self {
        let mut index = Index::default();
        let mut w = WorkloadPolicies {
            policies: Vec::new(),
            default_action,
            index: Index::default(),
            has_enforced_allow: false,
            has_dry_run_allow: false,
            has_dry_run: false,
            has_audit: false,
            allow_requires_principal: false,
            allow_requires_request_auth: false,
            authentications: Vec::new(),
            egress: None,
        };
        for (pi, policy) in policies.iter().enumerate() {
            let enforced = policy.mode == Mode::Enforce;
            match (policy.action, enforced) {
                (Action::Allow, true) => w.has_enforced_allow = true,
                (Action::Allow, false) => w.has_dry_run_allow = true,
                (Action::Audit, _) => w.has_audit = true,
                (Action::Deny, _) => {}
            }
            if !enforced && policy.action != Action::Audit {
                w.has_dry_run = true;
            }
            for (ri, rule) in policy.rules.iter().enumerate() {
                let id = RuleId {
                    policy: u32::try_from(pi).unwrap_or(u32::MAX),
                    rule: u32::try_from(ri).unwrap_or(u32::MAX),
                };
                if policy.action == Action::Allow && enforced && rule.requires_principal() {
                    w.allow_requires_principal = true;
                }
                if policy.action == Action::Allow && enforced && rule.requires_request_auth() {
                    w.allow_requires_request_auth = true;
                }
                let role = (policy.action, enforced);
                match rule.index_key() {
                    IndexKey::Principals(keys) => {
                        for k in keys {
                            role_list(index.by_principal.entry(k).or_default(), role).push(id);
                        }
                    }
                    IndexKey::Namespaces(keys) => {
                        for k in keys {
                            role_list(index.by_namespace.entry(k).or_default(), role).push(id);
                        }
                    }
                    IndexKey::Ports(ports) => {
                        for p in ports {
                            role_list(index.by_port.entry(p).or_default(), role).push(id);
                        }
                    }
                    IndexKey::Any => role_list(&mut index.any, role).push(id),
                }
            }
        }
        w.policies = policies;
        w.index = index;
        w
    }

    /// How many policies apply to the workload (inbound; see
    /// [`Self::has_egress_policies`] for egress).
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether no policy applies to the workload.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policies that apply, in set order.
    pub fn policy_refs(&self) -> impl Iterator<Item = &PolicyRef> {
        self.policies.iter().map(|p| &p.reference)
    }

    /// The `RequestAuthentication` documents that apply to the workload, in set order
    /// (namespace, then name).
    pub fn authentications(&self) -> &[Arc<RequestAuthentication>] {
        &self.authentications
    }
}
