//! The workload a policy set is asked about: a leaf that `set` (which policies apply) and
//! `authn` (which request authentications apply) both use.

use std::collections::BTreeMap;

/// A workload as policies see it: its namespace and labels (from the sidecar configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's labels.
    pub labels: BTreeMap<String, String>,
}
