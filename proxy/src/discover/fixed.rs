//! The static source: destinations listed in the sidecar's config file
//! (`outbound.destinations`), for VMs and tests. Its answers never change: a listed address is
//! [`Resolution::Known`] with its endpoints, any other is [`Resolution::Unknown`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use super::{Destination, Discover, Resolution};

/// Destinations from the config file.
#[derive(Debug)]
pub struct Fixed {
    known: HashMap<SocketAddr, watch::Sender<Resolution>>,
    /// One channel for every address not listed: its answer is always `Unknown`.
    unknown: watch::Sender<Resolution>,
}

impl Fixed {
    /// A source that knows `destinations`, each by its address.
    pub fn new(destinations: impl IntoIterator<Item = (SocketAddr, Destination)>) -> Self {
        let known = destinations
            .into_iter()
            .map(|(addr, d)| (addr, watch::Sender::new(Resolution::Known(Arc::new(d)))))
            .collect();
        Self {
            known,
            unknown: watch::Sender::new(Resolution::Unknown),
        }
    }

    /// How many destinations it knows.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether it knows none.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

impl Discover for Fixed {
    fn subscribe(&self, destination: SocketAddr) -> watch::Receiver<Resolution> {
        self.known
            .get(&destination)
            .unwrap_or(&self.unknown)
            .subscribe()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::discover::Endpoint;

    #[test]
    fn listed_addresses_are_known_and_others_unknown() {
        let listed: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let dest = Destination {
            service: Some("shop/orders".into()),
            endpoints: vec![Endpoint {
                address: "10.0.0.2:8080".parse().unwrap(),
                identity: Some("spiffe://cluster.local/ns/shop/sa/orders".into()),
            }],
        };
        let source = Fixed::new([(listed, dest.clone())]);
        assert_eq!(source.len(), 1);
        match &*source.subscribe(listed).borrow() {
            Resolution::Known(d) => assert_eq!(**d, dest),
            other => panic!("expected Known, got {other:?}"),
        }
        // Another port of the same IP is another destination.
        let other: SocketAddr = "10.96.0.10:81".parse().unwrap();
        assert_eq!(*source.subscribe(other).borrow(), Resolution::Unknown);
    }
}
