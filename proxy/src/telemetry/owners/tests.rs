use std::time::Instant;

use prometheus_client::registry::Registry;

use super::*;
use crate::telemetry::config::AddressBinding;
use crate::telemetry::{AlertKind, DetectorConfig, Severity, Telemetry, TelemetryConfig};

const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const BILLING: &str = "spiffe://cluster.local/ns/shop/sa/billing";

#[test]
fn an_owner_is_a_replica_only_for_the_identity_it_names() {
    assert_eq!(
        announced(ORDERS, &Owner::Identity(ORDERS.into())),
        Announced::Replica
    );
    assert_eq!(
        announced(ORDERS, &Owner::NotAnnounced),
        Announced::Elsewhere
    );
    assert_eq!(announced(ORDERS, &Owner::NoAnswer), Announced::Unknown);
}

/// How the double answers a lookup.
#[derive(Clone)]
enum Lookup {
    Answer(Owner),
    Panic,
    Never,
}

/// A source of owners: `at_hand` without waiting, `lookup` when waited for.
struct Double {
    at_hand: Option<Owner>,
    lookup: Lookup,
}

impl AddressOwners for Double {
    fn answered(&self, _: IpAddr) -> Option<Owner> {
        self.at_hand.clone()
    }

    fn owner(&self, _: IpAddr, _: Duration) -> Pin<Box<dyn Future<Output = Owner> + Send>> {
        let lookup = self.lookup.clone();
        Box::pin(async move {
            match lookup {
                Lookup::Answer(owner) => owner,
                Lookup::Panic => panic!("the lookup failed"),
                Lookup::Never => std::future::pending().await,
            }
        })
    }
}

fn telemetry(action: ForeignAddressAction, source: Double) -> Telemetry {
    let cfg = TelemetryConfig {
        detectors: DetectorConfig {
            learning_window: Duration::ZERO,
            address_binding: AddressBinding {
                identities: Vec::new(),
                action,
            },
            ..DetectorConfig::default()
        },
        ..TelemetryConfig::default()
    };
    let identity = "spiffe://cluster.local/ns/shop/sa/self".parse().unwrap();
    let t = Telemetry::new(&cfg, &identity, &mut Registry::default()).unwrap();
    t.set_address_owners(Arc::new(source));
    t
}

fn in_flight(t: &Telemetry) -> usize {
    let inner = t.inner.as_ref().unwrap();
    inner.owners.in_flight.lock().unwrap().len()
}

/// Polls `check` until it holds, for at most 5 s.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, last], 41000))
}

#[tokio::test]
async fn a_lookup_task_that_panics_gives_its_key_back() {
    let t = telemetry(
        ForeignAddressAction::Alert,
        Double {
            at_hand: None,
            lookup: Lookup::Panic,
        },
    );
    assert!(t.peer_connected(ORDERS, addr(7)).await);
    eventually("the key of the panicked lookup stays", || {
        in_flight(&t) == 0
    })
    .await;
    // The address is asked about again (a key left behind would silence it for good).
    assert!(t.peer_connected(ORDERS, addr(7)).await);
    assert_eq!(in_flight(&t), 1);
}

#[test]
fn a_lookup_task_cancelled_at_shutdown_gives_its_key_back() {
    let t = telemetry(
        ForeignAddressAction::Alert,
        Double {
            at_hand: None,
            lookup: Lookup::Never,
        },
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    assert!(runtime.block_on(t.peer_connected(ORDERS, addr(7))));
    assert_eq!(in_flight(&t), 1);
    // Dropping the runtime drops (cancels) the task awaiting the answer.
    drop(runtime);
    assert_eq!(in_flight(&t), 0);
}

fn foreign_alerts(t: &Telemetry) -> Vec<crate::telemetry::Alert> {
    t.recent_alerts()
        .into_iter()
        .filter(|a| a.kind == AlertKind::ForeignAddress)
        .collect()
}

#[tokio::test]
async fn an_address_the_cluster_announces_for_another_identity_is_foreign_and_denied() {
    // Waited for on the connection when the action is deny.
    let t = telemetry(
        ForeignAddressAction::Deny,
        Double {
            at_hand: None,
            lookup: Lookup::Answer(Owner::Identity(BILLING.into())),
        },
    );
    assert!(!t.peer_connected(ORDERS, addr(7)).await);
    let alerts = foreign_alerts(&t);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a.severity, Severity::High);
    assert_eq!(a.source_identity.as_deref(), Some(ORDERS));
    assert_eq!(a.evidence.get("denied"), Some(&1));
    assert_eq!(a.evidence.get("announced_for_another"), Some(&1));
    assert!(a.summary.contains(BILLING), "{}", a.summary);
    // The identity the cluster announces there passes.
    assert!(t.peer_connected(BILLING, addr(7)).await);

    // At hand (a followed address): the same, without waiting.
    let t = telemetry(
        ForeignAddressAction::Deny,
        Double {
            at_hand: Some(Owner::Identity(BILLING.into())),
            lookup: Lookup::Never,
        },
    );
    assert!(!t.peer_connected(ORDERS, addr(7)).await);
    assert!(t.peer_connected(BILLING, addr(7)).await);
    assert_eq!(foreign_alerts(&t).len(), 1);
}

#[tokio::test]
async fn with_alert_the_connection_goes_on_and_the_foreign_alert_follows_the_answer() {
    let t = telemetry(
        ForeignAddressAction::Alert,
        Double {
            at_hand: None,
            lookup: Lookup::Answer(Owner::Identity(BILLING.into())),
        },
    );
    assert!(t.peer_connected(ORDERS, addr(7)).await);
    eventually("no foreign_address alert", || foreign_alerts(&t).len() == 1).await;
    let a = &foreign_alerts(&t)[0];
    assert_eq!(a.severity, Severity::High);
    assert_eq!(a.evidence.get("denied"), Some(&0));
}

#[tokio::test]
async fn nothing_known_or_no_answer_is_never_foreign() {
    for lookup in [Owner::NotAnnounced, Owner::NoAnswer] {
        let t = telemetry(
            ForeignAddressAction::Deny,
            Double {
                at_hand: None,
                lookup: Lookup::Answer(lookup.clone()),
            },
        );
        assert!(t.peer_connected(ORDERS, addr(7)).await, "{lookup:?}");
        assert!(t.peer_connected(ORDERS, addr(8)).await, "{lookup:?}");
        assert!(foreign_alerts(&t).is_empty(), "{lookup:?}");
    }
}
