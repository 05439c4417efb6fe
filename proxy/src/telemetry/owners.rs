//! Announced address sets for `new_source_address`: who the cluster says a source address
//! belongs to. A new address of a known identity is a replica when the discovery source
//! (the controller: a pod's address resolves to that pod, pinned to its identity) announces
//! it for that identity, and raises the low-severity alert otherwise.
//!
//! The answer is asked for once per new (identity, address), off the data path: the
//! connection goes on at once, and the alert, when there is one, follows the answer (or the
//! end of [`OWNER_WAIT`] without one).

use std::collections::HashSet;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

use super::Inner;
use super::detect::Announced;

/// How long the answer for a new source address is waited for; without one the address is
/// alerted as when nothing is announced.
pub const OWNER_WAIT: Duration = Duration::from_secs(2);

/// New addresses whose answer is awaited at once, at most; past it an address is settled
/// without asking (alerted), so a flood of new addresses cannot pile up tasks.
const MAX_IN_FLIGHT: usize = 256;

/// What the discovery source says of an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A pod whose sidecar presents this identity.
    Identity(String),
    /// A pod without a sidecar, or an address that is not a pod's (unknown, a Service's).
    NotAnnounced,
    /// No answer (yet): the source is unreachable or slow.
    NoAnswer,
}

/// A source of announced address owners (the discovery source in cluster mode).
pub trait AddressOwners: Send + Sync + 'static {
    /// The owner of `address`, waiting at most `wait` for the source's answer.
    fn owner(
        &self,
        address: SocketAddr,
        wait: Duration,
    ) -> Pin<Box<dyn Future<Output = Owner> + Send>>;
}

/// The announced sets of one sidecar, when it has a source, and the answers awaited.
#[derive(Default)]
pub(super) struct Owners {
    source: std::sync::OnceLock<Arc<dyn AddressOwners>>,
    in_flight: Mutex<HashSet<(String, IpAddr)>>,
}

impl Owners {
    /// Sets the source (once; a second call changes nothing). Returns whether it was set.
    pub(super) fn set(&self, source: Arc<dyn AddressOwners>) -> bool {
        self.source.set(source).is_ok()
    }

    /// Whether a source is set.
    pub(super) fn is_set(&self) -> bool {
        self.source.get().is_some()
    }
}

/// What `owner` means for `identity`.
fn announced(identity: &str, owner: &Owner) -> Announced {
    match owner {
        Owner::Identity(id) if id == identity => Announced::Replica,
        Owner::Identity(_) | Owner::NotAnnounced => Announced::Elsewhere,
        Owner::NoAnswer => Announced::Unknown,
    }
}

/// Settles a new source address of `identity`: at once when nothing is announced (no source,
/// no runtime, too many answers awaited), else after the source's answer, in a task.
pub(super) fn settle(inner: &Arc<Inner>, identity: &str, source: SocketAddr) {
    let asked = inner.owners.source.get().cloned().and_then(|owners| {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let key = (identity.to_owned(), source.ip());
        {
            let mut in_flight = inner.owners.in_flight.lock().ok()?;
            if in_flight.contains(&key) {
                // Already asked: that answer settles this address too.
                return Some(());
            }
            if in_flight.len() >= MAX_IN_FLIGHT {
                return None;
            }
            in_flight.insert(key.clone());
        }
        let inner = Arc::clone(inner);
        runtime.spawn(async move {
            let owner = owners.owner(source, OWNER_WAIT).await;
            let (identity, ip) = key;
            finish(&inner, &identity, source, announced(&identity, &owner));
            if let Ok(mut in_flight) = inner.owners.in_flight.lock() {
                in_flight.remove(&(identity, ip));
            }
        });
        Some(())
    });
    if asked.is_none() {
        finish(inner, identity, source, Announced::Unknown);
    }
}

/// Hands the answer to the detectors and raises what they report.
fn finish(inner: &Inner, identity: &str, source: SocketAddr, announced: Announced) {
    let Some(d) = &inner.detectors else {
        return;
    };
    let (alerts, refused) = match d.lock() {
        Ok(mut d) => (
            d.settle_source_address(identity, source, announced, OffsetDateTime::now_utc()),
            d.take_refused(),
        ),
        Err(_) => return,
    };
    inner.note_refused(&refused);
    if announced == Announced::Replica {
        inner.metrics.replica_address();
        tracing::debug!(identity, address = %source.ip(), "detectors: a new address of a known identity is announced for it (a replica)");
    }
    inner.raise(&alerts, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_is_a_replica_only_for_the_identity_it_names() {
        let id = "spiffe://cluster.local/ns/shop/sa/orders";
        assert_eq!(
            announced(id, &Owner::Identity(id.into())),
            Announced::Replica
        );
        assert_eq!(
            announced(
                id,
                &Owner::Identity("spiffe://cluster.local/ns/shop/sa/other".into())
            ),
            Announced::Elsewhere
        );
        assert_eq!(announced(id, &Owner::NotAnnounced), Announced::Elsewhere);
        assert_eq!(announced(id, &Owner::NoAnswer), Announced::Unknown);
    }
}
