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
pub mod egress_name;
mod error;
mod evaluate;
mod explain;
mod load;
mod model;
pub mod normalize;
mod options;
mod pattern;
mod set;
mod workload;
mod yaml;

#[cfg(test)]
mod tests;

pub use authn::{ClaimToHeader, JwksSource, JwtRule, RequestAuthentication, TokenHeader};
pub use decision::{
    Decision, EgressRequest, HttpRequest, PolicyRef, Reason, Request, RequestAuth, Shadow, Verdict,
};
pub use error::{LoadError, LoadErrors};
pub use explain::{EgressTarget, Explanation, PolicyTrace, RuleTrace};
pub use load::load;
pub use model::{Action, Direction, Mode};
pub use normalize::{NormalizeError, PathOptions};
pub use options::{DefaultAction, LoadOptions, Source};
pub use set::{PolicySet, PolicySummary, WorkloadPolicies};
pub use workload::Workload;
