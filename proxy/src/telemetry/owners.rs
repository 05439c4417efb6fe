//! Who a peer's source address belongs to, and the one decision on it after an inbound
//! handshake ([`admit`]).
//!
//! Two sources know owners: the static `address_binding` map (VMs) and, in cluster mode, the
//! discovery source (the controller: a pod's address resolves to that pod, pinned to the
//! identity its sidecar presents). Both lead to the same outcome:
//!
//! - the address belongs to another identity (outside the identity's binding, or a pod the
//!   cluster announces for another identity): a foreign address, the high-severity
//!   `foreign_address` alert, and the connection refused when `address_binding.action` is
//!   `deny`;
//! - the cluster announces the address for the identity presented: a replica, remembered;
//! - nothing known (file mode, a pod without a sidecar, an address that is not a pod's, no
//!   answer in time): `new_source_address` decides, low severity, after learning.
//!
//! The cluster's answer is asked for per source address, on one subscription per address
//! that every lookup shares (see `discover::AnnouncedOwners`). With `action: deny` a
//! connection whose address has no answer yet waits for it (at most [`OWNER_WAIT`]); with
//! `alert` it goes on at once and the alert, when there is one, follows the answer, in a
//! task.

use std::collections::HashSet;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;

use super::Inner;
use super::config::{Bound, ForeignAddressAction};
use super::detect::{Announced, PeerAddress};

/// How long the answer for a source address is waited for; without one the address is
/// treated as when nothing is announced.
pub const OWNER_WAIT: Duration = Duration::from_secs(2);

/// Answers awaited at once in tasks (`action: alert`), at most; past it an address is
/// settled without asking, so a flood of new addresses cannot pile up tasks.
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
    /// The owner of `ip` when the source has its answer at hand, without waiting (`None`:
    /// not answered yet; asking starts following the address).
    fn answered(&self, ip: IpAddr) -> Option<Owner>;

    /// The owner of `ip`, waiting at most `wait` for the source's answer.
    fn owner(&self, ip: IpAddr, wait: Duration) -> Pin<Box<dyn Future<Output = Owner> + Send>>;
}

/// The (identity, address) pairs whose answer a task awaits.
type InFlightSet = Arc<Mutex<HashSet<(String, IpAddr)>>>;

/// The announced sets of one sidecar, when it has a source, and the answers awaited.
#[derive(Default)]
pub(super) struct Owners {
    source: std::sync::OnceLock<Arc<dyn AddressOwners>>,
    in_flight: InFlightSet,
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

    /// Claims `key` for one awaited answer.
    fn claim(&self, key: (String, IpAddr)) -> Claim {
        let mut set = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if set.contains(&key) {
            return Claim::Awaited;
        }
        if set.len() >= MAX_IN_FLIGHT {
            return Claim::Full;
        }
        set.insert(key.clone());
        Claim::Claimed(InFlight {
            set: Arc::clone(&self.in_flight),
            key,
        })
    }
}

/// What [`Owners::claim`] gave.
enum Claim {
    /// The key is ours until the guard is dropped.
    Claimed(InFlight),
    /// Its answer is already awaited: that answer settles this address too.
    Awaited,
    /// Too many answers are awaited.
    Full,
}

/// A claimed key of the awaited set, given back when dropped: when its task ends, and also
/// when it panics or is cancelled (runtime shutdown), so a key never stays behind to silence
/// its address for good.
struct InFlight {
    set: InFlightSet,
    key: (String, IpAddr),
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// What `owner` means for `identity` when it is not a foreign address.
fn announced(identity: &str, owner: &Owner) -> Announced {
    match owner {
        Owner::Identity(id) if id == identity => Announced::Replica,
        Owner::Identity(_) | Owner::NotAnnounced => Announced::Elsewhere,
        Owner::NoAnswer => Announced::Unknown,
    }
}

/// A peer presented `identity` from `source` (inbound, after the handshake): the one
/// decision on its address (see the module). Returns whether the connection may go on.
pub(super) async fn admit(inner: &Arc<Inner>, identity: &str, source: SocketAddr) -> bool {
    match inner.binding.check(identity, source.ip()) {
        Bound::Foreign => return foreign(inner, identity, source, None),
        // Bound to its networks, and this is one of them: the static map is the answer.
        Bound::Own => return true,
        Bound::Unknown => {}
    }
    let Some(owners) = inner.owners.source.get() else {
        observe(inner, identity, source, Announced::Unknown);
        return true;
    };
    let owner = match owners.answered(source.ip()) {
        Some(owner) => owner,
        None if inner.binding.action == ForeignAddressAction::Deny => {
            owners.owner(source.ip(), OWNER_WAIT).await
        }
        None => {
            ask(inner, owners, identity, source);
            return true;
        }
    };
    decide(inner, identity, source, &owner)
}

/// Asks for the owner of `source` in a task that decides once it has the answer (or at once,
/// as nothing announced, when too many answers are awaited or there is no runtime).
fn ask(inner: &Arc<Inner>, owners: &Arc<dyn AddressOwners>, identity: &str, source: SocketAddr) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        decide(inner, identity, source, &Owner::NoAnswer);
        return;
    };
    let guard = match inner.owners.claim((identity.to_owned(), source.ip())) {
        Claim::Claimed(guard) => guard,
        Claim::Awaited => return,
        Claim::Full => {
            decide(inner, identity, source, &Owner::NoAnswer);
            return;
        }
    };
    let inner = Arc::clone(inner);
    let lookup = owners.owner(source.ip(), OWNER_WAIT);
    runtime.spawn(async move {
        let owner = lookup.await;
        decide(&inner, &guard.key.0, source, &owner);
        drop(guard);
    });
}

/// What the cluster's answer means: an address it announces for another identity is
/// foreign; any other answer goes to `new_source_address`.
fn decide(inner: &Inner, identity: &str, source: SocketAddr, owner: &Owner) -> bool {
    match owner {
        Owner::Identity(other) if other != identity => {
            foreign(inner, identity, source, Some(other.as_str()))
        }
        _ => {
            observe(inner, identity, source, announced(identity, owner));
            true
        }
    }
}

/// A foreign address: the high-severity alert (when the detectors run), and whether the
/// connection may go on (not with `action: deny`, whatever told the address's owner).
fn foreign(inner: &Inner, identity: &str, source: SocketAddr, owner: Option<&str>) -> bool {
    if let Some(d) = &inner.detectors {
        let alerts = match d.lock() {
            Ok(mut d) => {
                d.observe_foreign_address(identity, source, owner, OffsetDateTime::now_utc())
            }
            Err(_) => Vec::new(),
        };
        inner.raise(&alerts, None);
    }
    inner.binding.action != ForeignAddressAction::Deny
}

/// `new_source_address` for an address that is not foreign, with what the cluster announces
/// for it.
fn observe(inner: &Inner, identity: &str, source: SocketAddr, announced: Announced) {
    let Some(d) = &inner.detectors else {
        return;
    };
    let alerts = match d.lock() {
        Ok(mut d) => {
            let now = OffsetDateTime::now_utc();
            match d.observe_peer_address(identity, source.ip(), now) {
                PeerAddress::New => d.settle_source_address(identity, source, announced, now),
                PeerAddress::Quiet => return,
            }
        }
        Err(_) => return,
    };
    if announced == Announced::Replica {
        inner.metrics.replica_address();
        tracing::debug!(identity, address = %source.ip(), "detectors: a new address of a known identity is announced for it (a replica)");
    }
    inner.raise(&alerts, None);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests;
