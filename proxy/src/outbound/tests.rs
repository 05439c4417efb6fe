#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn last_peer_is_empty_until_set_and_keeps_the_newest() {
    let cell = LastPeer::default();
    assert_eq!(cell.get(), None);
    for kx in [KxGroup::X25519Mlkem768, KxGroup::X25519, KxGroup::Other] {
        let peer = ConnPeer { kx, identity: None };
        cell.set(peer.clone());
        assert_eq!(cell.get().as_deref(), Some(&peer));
    }
}

#[test]
fn the_presented_identity_names_the_peer_and_a_differing_expectation_is_kept() {
    let orders: SpiffeId = "spiffe://cluster.local/ns/shop/sa/orders".parse().unwrap();
    let peer = ConnPeer {
        kx: KxGroup::X25519Mlkem768,
        identity: Some(orders.clone()),
    };
    let mut ends = Endpoints::default();
    let any = PeerIdentity::AnyIn(orders.trust_domain().clone());
    peer.name_in(&mut ends, &any);
    let name = orders.to_string();
    assert_eq!(ends.destination_identity.as_deref(), Some(name.as_str()));
    assert_eq!(
        ends.expected_identity.as_deref(),
        Some("spiffe://cluster.local/*")
    );
    assert_eq!(ends.kx, Some(KxGroup::X25519Mlkem768));
    peer.name_in(&mut ends, &PeerIdentity::Exact(orders.clone()));
    assert_eq!(ends.destination_identity.as_deref(), Some(name.as_str()));
    assert_eq!(
        ends.expected_identity, None,
        "no expectation when it is what was presented"
    );
}
