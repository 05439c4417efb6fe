//! picket-k8s: Picket's Kubernetes integration.
//!
//! Manifest injection ([`inject`], one function for `picket inject` and the webhook), the
//! admission webhook server ([`webhook`]: injection, and the validation of policy objects in
//! [`policy`], which also renders them for the controller) and the nat rules for transparent
//! interception ([`iptables`], applied by the `picket iptables` init step). It depends on the
//! CA crate for identity types and the CA client, and must not depend on the sidecar
//! (`picket-proxy`): the sidecar runs the same way inside and outside Kubernetes.

pub mod inject;
pub mod iptables;
pub mod policy;
pub mod webhook;
