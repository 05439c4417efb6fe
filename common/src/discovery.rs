//! Destinations and their endpoints, as a discovery source announces them to sidecars: the
//! controller over its subscription stream (JSON of these types), or a static list in a
//! sidecar's config file for VMs.
//!
//! A destination is the address an app dials: a Service's cluster IP and port, or a pod's own
//! address and port. Its endpoints are where requests for it may go, each pinned to the identity
//! its sidecar must present (none when the pod runs no sidecar).

use std::collections::HashSet;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// One backend of a destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    /// Where the endpoint serves: the pod's address and the target port.
    pub address: SocketAddr,
    /// The SPIFFE ID the endpoint's sidecar must present (`spiffe://<td>/ns/<ns>/sa/<sa>`);
    /// absent when the pod has no sidecar (an unmeshed endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// Everything known about one destination address.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Destination {
    /// `namespace/name` of the Service behind the address; absent when the address is a pod's
    /// own (its one endpoint is then the pod itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The ready endpoints; empty when none is ready.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// One message of the controller's subscription stream (one JSON value per line): the first
/// is [`Update::Unknown`] or [`Update::Destination`], each later one a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum Update {
    /// The controller does not know the address (it is neither a Service's nor a pod's).
    Unknown,
    /// Everything about the address; replaces what the subscriber held.
    Destination(Destination),
    /// A change to the endpoints of the destination the subscriber holds (same Service).
    Delta(Delta),
}

/// Endpoints added to and removed from a destination.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Delta {
    /// New endpoints, and endpoints whose identity changed (the new pinning replaces the old).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<Endpoint>,
    /// Addresses that are no longer endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<SocketAddr>,
}

impl Delta {
    /// The change from `old` to `new` (same Service), endpoints compared as address and
    /// identity; an empty delta when nothing changed.
    pub fn between(old: &Destination, new: &Destination) -> Self {
        let new_addresses: HashSet<SocketAddr> = new.endpoints.iter().map(|e| e.address).collect();
        let old_endpoints: HashSet<&Endpoint> = old.endpoints.iter().collect();
        let removed = old
            .endpoints
            .iter()
            .filter(|o| !new_addresses.contains(&o.address))
            .map(|o| o.address)
            .collect();
        let added = new
            .endpoints
            .iter()
            .filter(|n| !old_endpoints.contains(n))
            .cloned()
            .collect();
        Self { added, removed }
    }

    /// True when the delta changes nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }

    /// Applies the delta to `destination`: removed addresses go, added endpoints replace any
    /// endpoint at the same address or join the list.
    pub fn apply(&self, destination: &mut Destination) {
        let replaced: HashSet<SocketAddr> = self
            .removed
            .iter()
            .copied()
            .chain(self.added.iter().map(|a| a.address))
            .collect();
        destination
            .endpoints
            .retain(|e| !replaced.contains(&e.address));
        destination.endpoints.extend(self.added.iter().cloned());
    }
}
