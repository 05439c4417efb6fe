//! Destinations and their endpoints, as a discovery source announces them to sidecars: the
//! controller over its subscription stream (JSON of these types), or a static list in a
//! sidecar's config file for VMs.
//!
//! A destination is the address an app dials: a Service's cluster IP and port, or a pod's own
//! address and port. Its endpoints are where requests for it may go, each pinned to the identity
//! its sidecar must present (none when the pod runs no sidecar).

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
