#![allow(clippy::unwrap_used, clippy::panic)]
use serde_json::json;

use super::*;
use crate::hub::{Hub, update};
use picket_common::discovery::Update;

fn td() -> TrustDomain {
    "cluster.local".parse().unwrap()
}

fn pod(ns: &str, name: &str, sa: &str, ip: &str, meshed: bool) -> Arc<Pod> {
    let mut containers = vec![json!({"name": "app"})];
    let mut annotations = json!({});
    if meshed {
        annotations = json!({STATUS_ANNOTATION: "0.1.0"});
        containers.push(json!({"name": PROXY_CONTAINER}));
    }
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": ns, "name": name, "annotations": annotations},
            "spec": {"serviceAccountName": sa, "containers": containers},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        }))
        .unwrap(),
    )
}

fn service(ns: &str, name: &str, ips: &[&str], ports: serde_json::Value) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": ips[0], "clusterIPs": ips, "ports": ports},
        }))
        .unwrap(),
    )
}

fn slice(
    ns: &str,
    service: &str,
    family: &str,
    ports: serde_json::Value,
    endpoints: serde_json::Value,
) -> Arc<EndpointSlice> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": ns, "name": format!("{service}-{family}"),
                         "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": family, "ports": ports, "endpoints": endpoints,
        }))
        .unwrap(),
    )
}

fn ep(ip: &str, pod: &str, ready: Option<bool>) -> serde_json::Value {
    let mut v =
        json!({"addresses": [ip], "targetRef": {"kind": "Pod", "namespace": "shop", "name": pod}});
    if let Some(r) = ready {
        v["conditions"] = json!({"ready": r});
    }
    v
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn known(answer: Answer) -> Arc<Destination> {
    match answer {
        Answer::Known(d) => d,
        Answer::Unknown => panic!("unknown"),
    }
}

type Cluster = (Vec<Arc<Pod>>, Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>);

fn cluster() -> Cluster {
    let pods = vec![
        pod("shop", "orders-1", "orders", "10.1.0.1", true),
        pod("shop", "orders-2", "orders", "10.1.0.2", true),
        pod("shop", "legacy-1", "legacy", "10.1.0.3", false),
        pod("shop", "orders-3", "orders", "10.1.0.4", true),
    ];
    let services = vec![service(
        "shop",
        "orders",
        &["10.96.0.10"],
        json!([{"name": "http", "port": 80, "targetPort": "web"}, {"name": "admin", "port": 9000, "targetPort": 9001}]),
    )];
    let slices = vec![slice(
        "shop",
        "orders",
        "IPv4",
        json!([{"name": "http", "port": 8080}, {"name": "admin", "port": 9001}]),
        json!([
            ep("10.1.0.1", "orders-1", Some(true)),
            ep("10.1.0.2", "orders-2", None),
            ep("10.1.0.3", "legacy-1", Some(true)),
            ep("10.1.0.4", "orders-3", Some(false)),
            ep("10.1.0.9", "not-yet-seen", Some(true)),
        ]),
    )];
    (pods, services, slices)
}

#[test]
fn a_service_port_resolves_to_ready_endpoints_at_the_target_port_with_identities() {
    let (pods, services, slices) = cluster();
    let index = Index::build(&td(), &pods, &services, &slices);
    let d = known(index.resolve(addr("10.96.0.10:80")));
    assert_eq!(d.service.as_deref(), Some("shop/orders"));
    let orders = Some("spiffe://cluster.local/ns/shop/sa/orders".to_owned());
    assert_eq!(
        d.endpoints,
        vec![
            Endpoint {
                address: addr("10.1.0.1:8080"),
                identity: orders.clone()
            },
            Endpoint {
                address: addr("10.1.0.2:8080"),
                identity: orders
            },
            // Unmeshed: no identity. Not ready (10.1.0.4) and unknown pod (10.1.0.9): left out.
            Endpoint {
                address: addr("10.1.0.3:8080"),
                identity: None
            },
        ]
    );
    let admin = known(index.resolve(addr("10.96.0.10:9000")));
    assert_eq!(admin.endpoints[0].address, addr("10.1.0.1:9001"));
    assert_eq!(index.resolve(addr("10.96.0.10:81")), Answer::Unknown);
}

#[test]
fn a_pod_address_resolves_to_the_pod_alone_and_other_addresses_are_unknown() {
    let (pods, services, slices) = cluster();
    let index = Index::build(&td(), &pods, &services, &slices);
    let d = known(index.resolve(addr("10.1.0.1:7777")));
    assert_eq!(d.service, None);
    assert_eq!(d.endpoints.len(), 1);
    assert_eq!(d.endpoints[0].address, addr("10.1.0.1:7777"));
    assert_eq!(
        d.endpoints[0].identity.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/orders")
    );
    assert_eq!(
        known(index.resolve(addr("10.1.0.3:80"))).endpoints[0].identity,
        None
    );
    assert_eq!(index.resolve(addr("192.0.2.1:80")), Answer::Unknown);
    // An IPv4-mapped IPv6 address is the IPv4 address.
    assert!(matches!(
        index.resolve(addr("[::ffff:10.1.0.1]:80")),
        Answer::Known(_)
    ));
}

#[test]
fn an_address_two_live_pods_claim_is_pinned_to_neither() {
    let (mut pods, services, slices) = cluster();
    pods.push(pod("other", "intruder", "evil", "10.1.0.1", true));
    let index = Index::build(&td(), &pods, &services, &slices);
    assert_eq!(index.resolve(addr("10.1.0.1:80")), Answer::Unknown);
    // The Service endpoint names its pod, so it keeps that pod's identity.
    let d = known(index.resolve(addr("10.96.0.10:80")));
    assert_eq!(
        d.endpoints[0].identity.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/orders")
    );
}

#[test]
fn dual_stack_services_map_each_family_and_headless_ones_are_skipped() {
    let pods = vec![
        pod("shop", "a", "a", "10.1.0.1", true),
        pod("shop", "a6", "a", "fd00::1", true),
    ];
    let services = vec![
        service(
            "shop",
            "ds",
            &["10.96.0.20", "fd00:96::20"],
            json!([{"port": 80, "targetPort": 8080}]),
        ),
        service("shop", "headless", &["None"], json!([{"port": 80}])),
    ];
    let slices = vec![
        slice(
            "shop",
            "ds",
            "IPv4",
            json!([{"port": 8080}]),
            json!([ep("10.1.0.1", "a", None)]),
        ),
        slice(
            "shop",
            "ds",
            "IPv6",
            json!([{"port": 8080}]),
            json!([ep("fd00::1", "a6", None)]),
        ),
    ];
    let index = Index::build(&td(), &pods, &services, &slices);
    assert_eq!(
        known(index.resolve(addr("10.96.0.20:80"))).endpoints[0].address,
        addr("10.1.0.1:8080")
    );
    assert_eq!(
        known(index.resolve(addr("[fd00:96::20]:80"))).endpoints[0].address,
        addr("[fd00::1]:8080")
    );
    assert_eq!(index.sizes().0, 2);
}

#[test]
fn finished_pods_and_odd_service_accounts_are_never_pinned() {
    let mut done = (*pod("shop", "old", "orders", "10.1.0.7", true)).clone();
    done.status.as_mut().unwrap().phase = Some("Succeeded".to_owned());
    let mut bad = (*pod("shop", "bad", "Not_A_Name", "10.1.0.8", true)).clone();
    bad.metadata.name = Some("bad".to_owned());
    let index = Index::build(&td(), &[Arc::new(done), Arc::new(bad)], &[], &[]);
    assert_eq!(index.resolve(addr("10.1.0.7:80")), Answer::Unknown);
    assert_eq!(index.resolve(addr("10.1.0.8:80")), Answer::Unknown);
}

#[test]
fn subscribers_get_the_full_answer_then_deltas() {
    let (pods, services, mut slices) = cluster();
    let hub = Hub::new(Index::build(&td(), &pods, &services, &slices));
    let mut rx = hub.subscribe(addr("10.96.0.10:80"));
    let first = rx.borrow_and_update().clone();
    let Some(Update::Destination(d)) = update(None, &first) else {
        panic!("first message is not a destination");
    };
    assert_eq!(d.endpoints.len(), 3);

    // orders-2 goes away.
    slices = vec![slice(
        "shop",
        "orders",
        "IPv4",
        json!([{"name": "http", "port": 8080}]),
        json!([
            ep("10.1.0.1", "orders-1", None),
            ep("10.1.0.3", "legacy-1", None)
        ]),
    )];
    hub.publish(Index::build(&td(), &pods, &services, &slices));
    assert!(rx.has_changed().unwrap());
    let second = rx.borrow_and_update().clone();
    let Some(Update::Delta(delta)) = update(Some(&first), &second) else {
        panic!("not a delta");
    };
    assert_eq!(delta.removed, vec![addr("10.1.0.2:8080")]);
    assert!(delta.added.is_empty());

    // The same index again changes nothing.
    hub.publish(Index::build(&td(), &pods, &services, &slices));
    assert!(!rx.has_changed().unwrap());
    assert_eq!(update(Some(&second), &second), None);

    // The Service goes away: unknown.
    hub.publish(Index::build(&td(), &pods, &[], &slices));
    let third = rx.borrow_and_update().clone();
    assert_eq!(update(Some(&second), &third), Some(Update::Unknown));

    // Nobody subscribes any more: the address is forgotten at the next change.
    drop(rx);
    hub.publish(Index::build(&td(), &pods, &services, &slices));
    assert_eq!(hub.subscribed(), 0);
}
