//! Policies as cluster resources, as the controller sends them to a sidecar: the whole set
//! that applies to the sidecar's namespace (its own namespace's objects and the policy root
//! namespace's), one message per change, one JSON value per line (`GET /v1/policies`).
//!
//! Each policy is one document of text the sidecar loads with the same loader as its policy
//! files, so a policy object is checked and compiled exactly as a file would be.

use serde::{Deserialize, Serialize};

/// One policy object, rendered as a policy document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterPolicy {
    /// What errors name as the document's source, e.g.
    /// `picket.dev/v1 AuthorizationPolicy shop/orders-read`.
    pub source: String,
    /// The document (JSON, which the YAML loader reads as it reads any policy file).
    pub text: String,
}

/// One message of the policy stream: the complete set for the subscriber, replacing the one
/// before it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterPolicies {
    /// The policies, ordered by namespace, name and kind.
    pub policies: Vec<ClusterPolicy>,
}
