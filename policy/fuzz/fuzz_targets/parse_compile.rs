//! Arbitrary text through load, print, load again, and evaluation: nothing may panic, and a
//! set that loads must print to text that loads to an equal set.

#![no_main]

use libfuzzer_sys::fuzz_target;
use picket_policy::{HttpRequest, LoadOptions, Request, Source, Workload, load};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let opts = LoadOptions {
        opaque_tcp_ports: vec![5432],
        ..LoadOptions::default()
    };
    let set = match load(
        &[Source {
            name: "fuzz.yaml",
            text,
        }],
        &opts,
    ) {
        Ok(set) => set,
        Err(errors) => {
            // Rendering errors must not panic either.
            let _ = errors.to_string();
            return;
        }
    };
    let printed = set.to_yaml();
    match load(
        &[Source {
            name: "fuzz.yaml",
            text: &printed,
        }],
        &opts,
    ) {
        Ok(again) => assert!(again == set, "print/parse changed the set:\n{printed}"),
        Err(e) => panic!("printed set does not load:\n{e}\n{printed}"),
    }
    let workload = Workload {
        namespace: set
            .policies()
            .next()
            .map(|p| p.namespace.clone())
            .unwrap_or_default(),
        labels: Default::default(),
    };
    let policies = set.for_workload(&workload);
    let headers = [("x-tenant", "acme"), ("x-tenant", "evil")];
    for http in [
        None,
        Some(HttpRequest {
            method: "GET",
            path: "/api/orders",
            host: "orders:8080",
            headers: &headers,
        }),
    ] {
        for principal in [None, Some("cluster.local/ns/shop/sa/frontend")] {
            let req = Request {
                source_principal: principal,
                source_ip: "10.1.2.3"
                    .parse()
                    .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                destination_port: 8080,
                sni: Some("orders.shop"),
                http,
                auth: None,
            };
            let decision = policies.evaluate(&req);
            let explanation = policies.explain(&req);
            assert_eq!(decision, explanation.decision);
            let _ = explanation.to_string();
        }
    }
});
