//! Evaluation allocates nothing on the allow path when no dry-run or AUDIT policy matches,
//! counted with a counting global allocator (this test binary only).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../benches/support/mod.rs"]
mod support;

use std::net::{IpAddr, Ipv4Addr};

use picket_policy::{HttpRequest, Request, Verdict};

#[test]
fn allow_path_evaluation_does_not_allocate() {
    for n in [10usize, 1_000] {
        let set = support::set(n);
        let policies = set.for_workload(&support::workload());
        let i = (n / 2) / 20 * 20 + 1;
        let principal = support::principal(i);
        let path = support::path(i, "orders/42");
        // Two lines, each allowed: an ALLOW condition needs every line to match.
        let headers = [("x-tenant", "acme"), ("x-tenant", "beta-7")];
        let http = Request {
            source_principal: Some(&principal),
            source_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            destination_port: support::port(i),
            sni: Some("orders.shop.svc"),
            http: Some(HttpRequest {
                method: "POST",
                path: &support::path(i, "orders"),
                host: "orders.shop:8080",
                headers: &headers,
            }),
            auth: None,
        };
        let get = Request {
            http: Some(HttpRequest {
                method: "GET",
                path: &path,
                host: "orders.shop",
                headers: &[],
            }),
            ..http
        };
        let public = Request {
            source_principal: Some("cluster.local/ns/shop/sa/web"),
            http: Some(HttpRequest {
                method: "GET",
                path: "/public/index.html",
                host: "orders.shop",
                headers: &[],
            }),
            ..http
        };
        for req in [&http, &get, &public] {
            let mut verdict = None;
            let info = allocation_counter::measure(|| {
                verdict = Some(policies.evaluate(req).verdict);
            });
            assert_eq!(verdict, Some(Verdict::Allow), "{}", policies.explain(req));
            assert_eq!(info.count_total, 0, "{n} policies: {info:?}");
        }
    }
}

#[test]
fn matches_of_dry_run_and_audit_policies_are_the_only_allocations() {
    let set = support::set(100);
    let policies = set.for_workload(&support::workload());
    let principal = support::principal(21);
    let req = Request {
        source_principal: Some(&principal),
        source_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        destination_port: 8443,
        sni: None,
        http: Some(HttpRequest {
            method: "GET",
            path: "/public/x",
            host: "orders.shop",
            headers: &[("x-debug", "1")],
        }),
        auth: None,
    };
    let mut decision = None;
    let info = allocation_counter::measure(|| decision = Some(policies.evaluate(&req)));
    let decision = decision.unwrap();
    assert_eq!(decision.verdict, Verdict::Allow);
    assert_eq!(decision.audit.len(), 1);
    assert_eq!(info.count_total, 1, "{info:?}");
}
