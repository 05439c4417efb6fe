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

/// The owners of source addresses as a discovery source announces them, for the detectors'
/// `new_source_address`: the controller resolves a pod's address to that pod alone, pinned
/// to the identity its sidecar must present. A one-off subscription per address asked about
/// (any port of a pod resolves to the pod; the connection's own is used), dropped once
/// answered.
#[derive(Debug, Clone)]
pub struct AnnouncedOwners(pub Arc<dyn Discover>);

impl crate::telemetry::AddressOwners for AnnouncedOwners {
    fn owner(
        &self,
        address: SocketAddr,
        wait: std::time::Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = crate::telemetry::Owner> + Send>> {
        use crate::telemetry::Owner;
        let mut rx = self.0.subscribe(address);
        Box::pin(async move {
            let answer =
                tokio::time::timeout(wait, rx.wait_for(|r| !matches!(r, Resolution::Pending)))
                    .await;
            let Ok(Ok(resolution)) = answer else {
                return Owner::NoAnswer;
            };
            match &*resolution {
                Resolution::Known(d) if d.service.is_none() => d
                    .endpoints
                    .iter()
                    .find(|e| e.address.ip().to_canonical() == address.ip().to_canonical())
                    .and_then(|e| e.identity.clone())
                    .map_or(Owner::NotAnnounced, Owner::Identity),
                // A Service's address, or one the source does not know.
                Resolution::Known(_) | Resolution::Unknown => Owner::NotAnnounced,
                Resolution::Pending => Owner::NoAnswer,
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::telemetry::{AddressOwners, Owner};

    /// A source that answers every address with `answer`.
    #[derive(Debug)]
    struct Always(watch::Sender<Resolution>);

    impl Discover for Always {
        fn subscribe(&self, _: SocketAddr) -> watch::Receiver<Resolution> {
            self.0.subscribe()
        }
    }

    fn owner(answer: Resolution) -> Owner {
        let source = Arc::new(Always(watch::Sender::new(answer)));
        let owners = AnnouncedOwners(source);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(owners.owner(
            "10.0.0.7:41000".parse().unwrap(),
            std::time::Duration::from_millis(50),
        ))
    }

    fn pod(ip: &str, identity: Option<&str>, service: Option<&str>) -> Resolution {
        Resolution::Known(Arc::new(Destination {
            service: service.map(Into::into),
            endpoints: vec![Endpoint {
                address: format!("{ip}:41000").parse().unwrap(),
                identity: identity.map(Into::into),
            }],
        }))
    }

    #[test]
    fn a_pod_address_is_owned_by_the_identity_it_is_pinned_to() {
        let id = "spiffe://cluster.local/ns/shop/sa/orders";
        assert_eq!(
            owner(pod("10.0.0.7", Some(id), None)),
            Owner::Identity(id.into())
        );
        assert_eq!(owner(pod("10.0.0.7", None, None)), Owner::NotAnnounced);
        // A Service's address, another pod's, or none known: not announced.
        assert_eq!(
            owner(pod("10.0.0.7", Some(id), Some("shop/orders"))),
            Owner::NotAnnounced
        );
        assert_eq!(owner(pod("10.0.0.8", Some(id), None)), Owner::NotAnnounced);
        assert_eq!(owner(Resolution::Unknown), Owner::NotAnnounced);
        // No answer in time.
        assert_eq!(owner(Resolution::Pending), Owner::NoAnswer);
    }
}
