//! picket-policy: the authorization policy engine. It reads AuthorizationPolicy documents
//! (Picket's own `picket.dev/v1` and Istio's `security.istio.io/v1` and `v1beta1`), checks them
//! strictly, compiles them, and evaluates and explains requests against them. It also holds the
//! request normalization the proxy applies before both policy and forwarding ([`normalize`]).
//!
//! The crate is pure: functions take text and return values. It must not depend on tokio, TLS,
//! the file system or the network (the proxy reads files and passes their text), nor on
//! picket-ca: identities arrive as validated strings. That keeps it fuzzable, benchable and
//! testable alone.
//!
//! `README.md` beside this crate is the policy reference: every field, every match form, the
//! evaluation order, with examples.
//!
//! ```
//! use picket_policy::{load, LoadOptions, Request, HttpRequest, Source, Verdict, Workload};
//!
//! let text = r#"
//! apiVersion: picket.dev/v1
//! kind: AuthorizationPolicy
//! metadata: { name: orders-read, namespace: shop }
//! spec:
//!   selector: { matchLabels: { app: orders } }
//!   rules:
//!   - from: [{ source: { principals: ["cluster.local/ns/shop/sa/frontend"] } }]
//!     to: [{ operation: { methods: ["GET"], paths: ["/api/orders/*"] } }]
//! "#;
//! let opts = LoadOptions::default();
//! let set = load(&[Source { name: "orders.yaml", text }], &opts).unwrap();
//! let workload = Workload {
//!     namespace: "shop".into(),
//!     labels: [("app".to_owned(), "orders".to_owned())].into(),
//! };
//! let policies = set.for_workload(&workload);
//! let req = Request {
//!     source_principal: Some("cluster.local/ns/shop/sa/frontend"),
//!     source_ip: "10.0.0.7".parse().unwrap(),
//!     destination_port: 8080,
//!     sni: None,
//!     http: Some(HttpRequest { method: "GET", path: "/api/orders/7", host: "orders", headers: &[] }),
//!     auth: None,
//! };
//! assert_eq!(policies.evaluate(&req).verdict, Verdict::Allow);
//! ```

pub mod authn;
mod compile;
mod decision;
mod decode;
mod error;
mod evaluate;
mod explain;
mod model;
pub mod normalize;
mod pattern;
mod set;
mod yaml;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use authn::{ClaimToHeader, JwksSource, JwtRule, RequestAuthentication, TokenHeader};
pub use decision::{
    Decision, HttpRequest, PolicyRef, Reason, Request, RequestAuth, Shadow, Verdict,
};
pub use error::{LoadError, LoadErrors};
pub use explain::{Explanation, PolicyTrace, RuleTrace};
pub use model::{Action, Mode};
pub use normalize::{NormalizeError, PathOptions};
pub use set::{PolicySet, PolicySummary, Workload, WorkloadPolicies};

/// What happens to a workload that no enforced ALLOW policy selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultAction {
    /// Deny (the shipped default): a workload without ALLOW policies takes no traffic.
    #[default]
    Deny,
    /// Allow, as Istio does.
    Allow,
    /// Allow, but the decision's `would_verdict` is deny, so the traffic a deny default would
    /// refuse can be seen before switching.
    AuditOnly,
}

impl DefaultAction {
    /// `deny`, `allow` or `audit-only`.
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultAction::Deny => "deny",
            DefaultAction::Allow => "allow",
            DefaultAction::AuditOnly => "audit-only",
        }
    }
}

impl fmt::Display for DefaultAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DefaultAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "deny" => Ok(DefaultAction::Deny),
            "allow" => Ok(DefaultAction::Allow),
            "audit-only" => Ok(DefaultAction::AuditOnly),
            other => Err(format!(
                "unknown default action `{other}`; expected deny, allow or audit-only"
            )),
        }
    }
}

/// How policies are loaded and applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Policies in this namespace apply to workloads of every namespace. Default
    /// `picket-system`.
    pub root_namespace: String,
    /// The mesh default. Default [`DefaultAction::Deny`].
    pub default_action: DefaultAction,
    /// Ports that carry opaque TCP only: HTTP-only fields in a rule that can only apply to
    /// these ports are a load error.
    pub opaque_tcp_ports: Vec<u16>,
    /// The largest source accepted, in bytes. Default 1 MiB.
    pub max_file_bytes: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            root_namespace: "picket-system".to_owned(),
            default_action: DefaultAction::Deny,
            opaque_tcp_ports: Vec::new(),
            max_file_bytes: 1 << 20,
        }
    }
}

/// One policy source: a name for error messages (usually the file path) and its text.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Shown in errors as `name:line:column`.
    pub name: &'a str,
    /// The YAML text; several documents separated by `---` are allowed.
    pub text: &'a str,
}

/// Parses, checks and compiles every document of every source.
///
/// All errors are collected, in source order; any error fails the whole load, so a bad file
/// never half-applies. Policies are identified by namespace and name, which must be unique
/// across all sources.
pub fn load(sources: &[Source<'_>], opts: &LoadOptions) -> Result<PolicySet, LoadErrors> {
    let mut errors: Vec<LoadError> = Vec::new();
    let mut decoded: Vec<(usize, decode::Decoded)> = Vec::new();
    let mut authentications: Vec<(usize, RequestAuthentication, yaml::Pos)> = Vec::new();
    for (si, source) in sources.iter().enumerate() {
        match yaml::parse_documents(source.name, source.text, opts.max_file_bytes) {
            Err(e) => errors.push(e),
            Ok(docs) => {
                let mut decoder =
                    decode::Decoder::new(source.name, source.text, &opts.opaque_tcp_ports);
                for doc in &docs {
                    if let Some(d) = decoder.document(doc) {
                        decoded.push((si, d));
                    }
                }
                authentications.extend(
                    decoder
                        .authentications
                        .drain(..)
                        .map(|(a, pos)| (si, a, pos)),
                );
                let mut file_errors = decoder.errors;
                file_errors.sort_by_key(|e| (e.line, e.column));
                errors.extend(file_errors);
            }
        }
    }

    // Namespace and name identify a policy: a second definition is an error, not an override.
    let mut seen: HashMap<(&str, String, String), (usize, u64, u64)> = HashMap::new();
    let mut duplicates = Vec::new();
    let named = decoded
        .iter()
        .map(|(si, d)| {
            (
                "policy",
                *si,
                &d.policy.namespace,
                &d.policy.name,
                d.name_pos,
            )
        })
        .chain(
            authentications
                .iter()
                .map(|(si, a, pos)| ("RequestAuthentication", *si, &a.namespace, &a.name, *pos)),
        );
    for (kind, si, namespace, name, pos) in named {
        let key = (kind, namespace.clone(), name.clone());
        let here = (si, pos.line, pos.column);
        if let Some((first_si, line, column)) = seen.get(&key) {
            let first = sources.get(*first_si).map(|s| s.name).unwrap_or("");
            let source = sources
                .get(si)
                .copied()
                .unwrap_or(Source { name: "", text: "" });
            duplicates.push(LoadError::at(
                source.name,
                source.text,
                here.1,
                here.2,
                format!(
                    "{} `{}/{}` is already defined at {first}:{line}:{column}",
                    key.0, key.1, key.2
                ),
            ));
        } else {
            seen.insert(key, here);
        }
    }
    errors.extend(duplicates);
    if !errors.is_empty() {
        return Err(LoadErrors::new(errors));
    }

    let mut policies: Vec<compile::CompiledPolicy> = decoded
        .into_iter()
        .map(|(si, d)| {
            let source = sources.get(si).map(|s| s.name).unwrap_or("");
            let mode = d.policy.mode();
            compile::CompiledPolicy {
                reference: PolicyRef {
                    namespace: Arc::from(d.policy.namespace.as_str()),
                    name: Arc::from(d.policy.name.as_str()),
                },
                action: d.policy.action,
                mode,
                rules: d.rules,
                source: Arc::from(source),
                line: d.pos.line,
                model: d.policy,
            }
        })
        .collect();
    policies.sort_by(|a, b| a.reference.cmp(&b.reference));
    let summaries = policies
        .iter()
        .map(|p| PolicySummary {
            namespace: p.reference.namespace.to_string(),
            name: p.reference.name.to_string(),
            action: p.action,
            mode: p.mode,
            rules: p.rules.len(),
            source: p.source.to_string(),
            line: p.line,
        })
        .collect();
    let mut authentications: Vec<Arc<RequestAuthentication>> = authentications
        .into_iter()
        .map(|(_, a, _)| Arc::new(a))
        .collect();
    authentications.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(PolicySet {
        authentications,
        policies: policies.into_iter().map(Arc::new).collect(),
        summaries,
        root_namespace: opts.root_namespace.clone(),
        default_action: opts.default_action,
        hash: set::sources_hash(sources),
    })
}
