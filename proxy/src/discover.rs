//! Discovery on the sidecar side: which endpoints a transparent destination has, and which
//! identity each must present.
//!
//! A source ([`Discover`]) answers per destination address with a watch channel, so a change
//! (an endpoint added, removed or re-pinned) reaches the connections that use the address
//! without a lookup per request. Sources: the controller client (cluster mode) and a static
//! list from the config file (VMs). The types sent over the wire live in
//! [`picket_common::discovery`].

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

pub use picket_common::discovery::{Destination, Endpoint};

pub mod controller;
pub mod fixed;

/// A source's answer for one destination address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// No answer yet (a subscription just opened).
    Pending,
    /// The source does not know this address: the sidecar treats it as before discovery
    /// (the original destination, with the `meshed:` expectation or passthrough).
    Unknown,
    /// The address is known; these are its endpoints.
    Known(Arc<Destination>),
}

/// A source of destinations.
pub trait Discover: Send + Sync + std::fmt::Debug + 'static {
    /// Subscribes to `destination`. The receiver sees every later answer. A source that loses
    /// contact with its origin keeps its last answer, so the sidecar goes on with the last
    /// known endpoints while the controller is unreachable.
    fn subscribe(&self, destination: SocketAddr) -> watch::Receiver<Resolution>;
}
