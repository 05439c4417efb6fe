#![allow(clippy::unwrap_used, clippy::panic)]
use picket_common::discovery::{Delta, Endpoint};

use super::*;

fn endpoint(addr: &str, id: Option<&str>) -> Endpoint {
    Endpoint {
        address: addr.parse().unwrap(),
        identity: id.map(str::to_owned),
    }
}

#[test]
fn addresses_are_host_and_port() {
    assert!(server_name("10.0.0.1:7150").is_some());
    assert!(server_name("[fd00::1]:7150").is_some());
    assert!(server_name("picket-controller.picket.svc:7150").is_some());
    for bad in ["10.0.0.1", "10.0.0.1:0", "host:port", ":7150", "a b:1"] {
        assert!(server_name(bad).is_none(), "{bad}");
    }
}

#[test]
fn messages_build_the_answer_and_a_delta_needs_a_destination() {
    let (tx, rx) = watch::channel(Resolution::Pending);
    let mut current = None;
    let e = apply(Update::Delta(Delta::default()), &mut current, &tx).unwrap_err();
    assert!(
        e.to_string().contains("delta before any destination"),
        "{e}"
    );
    assert_eq!(*rx.borrow(), Resolution::Pending);

    let first = Destination {
        service: Some("shop/orders".to_owned()),
        endpoints: vec![
            endpoint("10.1.0.1:8080", Some("spiffe://td/ns/shop/sa/orders")),
            endpoint("10.1.0.2:8080", None),
        ],
    };
    apply(Update::Destination(first.clone()), &mut current, &tx).unwrap();
    assert_eq!(*rx.borrow(), Resolution::Known(Arc::new(first)));

    let delta = Delta {
        added: vec![endpoint(
            "10.1.0.3:8080",
            Some("spiffe://td/ns/shop/sa/orders"),
        )],
        removed: vec!["10.1.0.2:8080".parse().unwrap()],
    };
    apply(Update::Delta(delta), &mut current, &tx).unwrap();
    let Resolution::Known(now) = rx.borrow().clone() else {
        panic!("not known");
    };
    let addresses: Vec<String> = now
        .endpoints
        .iter()
        .map(|e| e.address.to_string())
        .collect();
    assert_eq!(addresses, ["10.1.0.1:8080", "10.1.0.3:8080"]);

    apply(Update::Unknown, &mut current, &tx).unwrap();
    assert_eq!(*rx.borrow(), Resolution::Unknown);
    assert!(apply(Update::Delta(Delta::default()), &mut current, &tx).is_err());
}
