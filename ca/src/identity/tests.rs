#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn parses_and_prints_round_trip() {
    let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/orders".parse().unwrap();
    assert_eq!(id.trust_domain().as_str(), "cluster.local");
    assert_eq!(id.namespace(), "shop");
    assert_eq!(id.service_account(), "orders");
    assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/orders");
}

#[test]
fn rejects_ambiguous_spellings() {
    for bad in [
        "spiffe://cluster.local/ns/shop/sa/orders/",
        "spiffe://cluster.local/ns/shop/sa/",
        "spiffe://Cluster.local/ns/shop/sa/orders",
        "spiffe://cluster.local:443/ns/shop/sa/orders",
        "spiffe://user@cluster.local/ns/shop/sa/orders",
        "spiffe://cluster.local/ns/shop/sa/orders?x=1",
        "spiffe://cluster.local/ns/shop/sa/orders#f",
        "spiffe://cluster.local/ns/sh%6fp/sa/orders",
        "spiffe://cluster.local/ns/../sa/orders",
        "spiffe://cluster.local//ns/shop/sa/orders",
        "spiffe://cluster.local/ns/Shop/sa/orders",
        "https://cluster.local/ns/shop/sa/orders",
        "spiffe://cluster.local",
        "spiffe:///ns/shop/sa/orders",
        "spiffe://cluster.local/sa/orders/ns/shop",
    ] {
        assert!(bad.parse::<SpiffeId>().is_err(), "{bad} should be rejected");
    }
}

#[test]
fn workload_name_cli_form() {
    let w: WorkloadName = "ns/shop/sa/frontend".parse().unwrap();
    assert_eq!(w.to_string(), "ns/shop/sa/frontend");
    assert!("ns/shop".parse::<WorkloadName>().is_err());
    assert!("ns/shop/sa/a/b".parse::<WorkloadName>().is_err());
    assert!("ns/-x/sa/a".parse::<WorkloadName>().is_err());
}
