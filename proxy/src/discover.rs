//! Discovery on the sidecar side: which endpoints a transparent destination has, and which
//! identity each must present.
//!
//! A source ([`Discover`]) answers per destination address with a watch channel, so a change
//! (an endpoint added, removed or re-pinned) reaches the connections that use the address
//! without a lookup per request. Sources: the controller client (cluster mode) and a static
//! list from the config file (VMs). The types sent over the wire live in
//! [`picket_common::discovery`].

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

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

/// The port every owner lookup subscribes with. Any port of a pod's address resolves to the
/// pod, so one fixed port gives every lookup of an address the same key, and the source's
/// one subscription per key is shared by them all (the connection's own source port would
/// open a stream per connection).
pub const OWNER_PORT: u16 = 1;

/// Source addresses followed at once, at most; past it the least recently asked about is
/// dropped (its stream ends when no lookup holds it). Each is one long-lived stream on the
/// controller connection, which also carries the data path's subscriptions and the policy
/// stream: the bound keeps them well under the connection's concurrent-stream limit.
pub const MAX_FOLLOWED: usize = 64;

/// The owners of source addresses as a discovery source announces them, for the decision on
/// a peer's address (`telemetry::owners`): the controller resolves a pod's address to that
/// pod alone, pinned to the identity its sidecar must present. An address asked about is
/// followed (one subscription per address, key `(ip, OWNER_PORT)`, kept for the
/// [`MAX_FOLLOWED`] most recently asked about), so its answer is at hand for the next
/// connection and follows the cluster (a pod address reused by another pod is re-pinned).
#[derive(Debug)]
pub struct AnnouncedOwners {
    source: Arc<dyn Discover>,
    /// The addresses followed, least recently asked about first.
    followed: Mutex<VecDeque<(IpAddr, watch::Receiver<Resolution>)>>,
}

impl AnnouncedOwners {
    /// The owners `source` announces.
    pub fn new(source: Arc<dyn Discover>) -> Self {
        Self {
            source,
            followed: Mutex::new(VecDeque::new()),
        }
    }

    /// The subscription that follows `ip`, made when there is none.
    fn follow(&self, ip: IpAddr) -> watch::Receiver<Resolution> {
        let ip = ip.to_canonical();
        let mut followed = self
            .followed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = followed.iter().position(|(a, _)| *a == ip)
            && let Some(entry) = followed.remove(at)
        {
            let rx = entry.1.clone();
            followed.push_back(entry);
            return rx;
        }
        let rx = self.source.subscribe(SocketAddr::new(ip, OWNER_PORT));
        if followed.len() >= MAX_FOLLOWED {
            followed.pop_front();
        }
        followed.push_back((ip, rx.clone()));
        rx
    }
}

/// What `resolution` says of `ip`'s owner; `None` while it is pending.
fn owner_of(ip: IpAddr, resolution: &Resolution) -> Option<crate::telemetry::Owner> {
    use crate::telemetry::Owner;
    match resolution {
        Resolution::Pending => None,
        Resolution::Known(d) if d.service.is_none() => Some(
            d.endpoints
                .iter()
                .find(|e| e.address.ip().to_canonical() == ip.to_canonical())
                .and_then(|e| e.identity.clone())
                .map_or(Owner::NotAnnounced, Owner::Identity),
        ),
        // A Service's address, or one the source does not know.
        Resolution::Known(_) | Resolution::Unknown => Some(Owner::NotAnnounced),
    }
}

impl crate::telemetry::AddressOwners for AnnouncedOwners {
    fn answered(&self, ip: IpAddr) -> Option<crate::telemetry::Owner> {
        owner_of(ip, &self.follow(ip).borrow())
    }

    fn owner(
        &self,
        ip: IpAddr,
        wait: std::time::Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = crate::telemetry::Owner> + Send>> {
        use crate::telemetry::Owner;
        let mut rx = self.follow(ip);
        Box::pin(async move {
            let answer =
                tokio::time::timeout(wait, rx.wait_for(|r| !matches!(r, Resolution::Pending)))
                    .await;
            match answer {
                Ok(Ok(resolution)) => owner_of(ip, &resolution).unwrap_or(Owner::NoAnswer),
                _ => Owner::NoAnswer,
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::telemetry::{AddressOwners, Owner};

    /// A source that answers every address with `answer` and records every subscription,
    /// sharing one per key as the controller client does (a subscription ends when its last
    /// receiver is dropped).
    #[derive(Debug)]
    struct Always {
        answer: watch::Sender<Resolution>,
        streams: Mutex<Vec<(SocketAddr, watch::Sender<Resolution>)>>,
    }

    impl Always {
        fn new(answer: Resolution) -> Arc<Self> {
            Arc::new(Self {
                answer: watch::Sender::new(answer),
                streams: Mutex::new(Vec::new()),
            })
        }

        /// The streams opened so far, each with its key.
        fn opened(&self) -> Vec<SocketAddr> {
            self.streams
                .lock()
                .unwrap()
                .iter()
                .map(|(a, _)| *a)
                .collect()
        }
    }

    impl Discover for Always {
        fn subscribe(&self, key: SocketAddr) -> watch::Receiver<Resolution> {
            let mut streams = self.streams.lock().unwrap();
            if let Some((_, tx)) = streams.iter().find(|(k, tx)| *k == key && !tx.is_closed()) {
                return tx.subscribe();
            }
            let tx = watch::Sender::new(self.answer.borrow().clone());
            let rx = tx.subscribe();
            streams.push((key, tx));
            rx
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    fn owner(answer: Resolution) -> Owner {
        let owners = AnnouncedOwners::new(Always::new(answer));
        runtime().block_on(owners.owner(
            "10.0.0.7".parse().unwrap(),
            std::time::Duration::from_millis(50),
        ))
    }

    fn pod(ip: &str, identity: Option<&str>, service: Option<&str>) -> Resolution {
        Resolution::Known(Arc::new(Destination {
            service: service.map(Into::into),
            endpoints: vec![Endpoint {
                address: format!("{ip}:{OWNER_PORT}").parse().unwrap(),
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

    #[test]
    fn lookups_of_an_address_share_one_stream_whatever_their_source_port() {
        let id = "spiffe://cluster.local/ns/shop/sa/orders";
        let source = Always::new(pod("10.0.0.7", Some(id), None));
        let owners = AnnouncedOwners::new(Arc::clone(&source) as Arc<dyn Discover>);
        let rt = runtime();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        // Connections from many source ports, one after the other and at once.
        for _ in 0..5 {
            let answer = rt.block_on(owners.owner(ip, std::time::Duration::from_millis(50)));
            assert_eq!(answer, Owner::Identity(id.into()));
            assert_eq!(owners.answered(ip), Some(Owner::Identity(id.into())));
        }
        let at_once: Vec<_> = (0..5)
            .map(|_| owners.owner(ip, std::time::Duration::from_millis(50)))
            .collect();
        for answer in rt.block_on(futures_util::future::join_all(at_once)) {
            assert_eq!(answer, Owner::Identity(id.into()));
        }
        // An IPv4-mapped IPv6 source is the same address.
        owners.answered("::ffff:10.0.0.7".parse().unwrap());
        assert_eq!(
            source.opened(),
            [SocketAddr::new(ip, OWNER_PORT)],
            "one stream for the address"
        );
    }

    #[test]
    fn followed_addresses_are_bounded_least_recently_asked_first_out() {
        let source = Always::new(Resolution::Unknown);
        let owners = AnnouncedOwners::new(Arc::clone(&source) as Arc<dyn Discover>);
        let ip = |i: usize| IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
        for i in 0..MAX_FOLLOWED {
            owners.answered(ip(i));
        }
        // Asking about the first again keeps it; one more address drops the second.
        owners.answered(ip(0));
        owners.answered(ip(MAX_FOLLOWED));
        assert_eq!(source.opened().len(), MAX_FOLLOWED + 1);
        owners.answered(ip(0));
        assert_eq!(
            source.opened().len(),
            MAX_FOLLOWED + 1,
            "the first is still followed"
        );
        let closed: Vec<SocketAddr> = source
            .streams
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, tx)| tx.is_closed())
            .map(|(a, _)| *a)
            .collect();
        assert_eq!(closed, [SocketAddr::new(ip(1), OWNER_PORT)]);
    }
}
