//! The subscriptions: one watch channel per subscribed destination address, shared by every
//! sidecar that subscribed to it. When the cluster changes, the index is rebuilt once and
//! each subscribed address gets its new answer (sent only when it differs), so the cost of a
//! change is one rebuild plus one lookup per subscribed address, whatever the number of
//! subscribers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use picket_common::discovery::{Delta, Update};
use tokio::sync::watch;

use crate::index::{Answer, Index};

/// The current index and the subscribed addresses.
#[derive(Debug, Default)]
pub struct Hub {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    index: Index,
    subscriptions: HashMap<SocketAddr, watch::Sender<Answer>>,
}

impl Hub {
    /// A hub answering from `index`.
    pub fn new(index: Index) -> Self {
        Self {
            state: Mutex::new(State {
                index,
                subscriptions: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters (every entry is a complete channel): go on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to `addr`: the receiver holds the current answer and sees every change.
    pub fn subscribe(&self, addr: SocketAddr) -> watch::Receiver<Answer> {
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        let mut state = self.lock();
        let answer = state.index.resolve(addr);
        state
            .subscriptions
            .entry(addr)
            .or_insert_with(|| watch::channel(answer).0)
            .subscribe()
    }

    /// Installs a new index: every subscribed address whose answer changed is told; addresses
    /// nobody subscribes to any more are forgotten.
    pub fn publish(&self, index: Index) {
        let mut state = self.lock();
        state.subscriptions.retain(|_, tx| tx.receiver_count() > 0);
        for (addr, tx) in &state.subscriptions {
            let answer = index.resolve(*addr);
            tx.send_if_modified(|current| {
                if *current == answer {
                    false
                } else {
                    *current = answer;
                    true
                }
            });
        }
        state.index = index;
    }

    /// How many addresses have subscribers.
    pub fn subscribed(&self) -> usize {
        self.lock().subscriptions.len()
    }
}

/// What to send a subscriber that last got `last` (nothing yet: `None`) and now should know
/// `current`: nothing when unchanged, a delta when only the endpoints of the same Service
/// changed, the full answer otherwise.
pub fn update(last: Option<&Answer>, current: &Answer) -> Option<Update> {
    match (last, current) {
        (Some(last), current) if last == current => None,
        (Some(Answer::Known(old)), Answer::Known(new)) if old.service == new.service => {
            let delta = Delta::between(old, new);
            (!delta.is_empty()).then_some(Update::Delta(delta))
        }
        (_, Answer::Unknown) => Some(Update::Unknown),
        (_, Answer::Known(d)) => Some(Update::Destination((**d).clone())),
    }
}
