//! Evaluation time per request against 10, 100, 1,000 and 10,000 policies that all select the
//! workload. Run with `cargo bench -p picket-policy`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use picket_policy::{HttpRequest, Request, Verdict};

fn evaluate(c: &mut Criterion) {
    let mut group = c.benchmark_group("evaluate");
    for n in [10usize, 100, 1_000, 10_000] {
        let set = support::set(n);
        let policies = set.for_workload(&support::workload());
        // An account in the middle of the set, calling what it is allowed to.
        let i = (n / 2) / 20 * 20 + 1;
        let principal = support::principal(i);
        let path = support::path(i, "orders/42");
        let headers = [("x-tenant", "acme"), ("accept", "application/json")];
        let allowed = Request {
            source_principal: Some(&principal),
            source_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            destination_port: support::port(i),
            sni: None,
            http: Some(HttpRequest {
                method: "GET",
                path: &path,
                host: "orders.shop",
                headers: &headers,
            }),
            auth: None,
        };
        assert_eq!(policies.evaluate(&allowed).verdict, Verdict::Allow);
        group.bench_with_input(BenchmarkId::new("allow", n), &allowed, |b, req| {
            b.iter(|| policies.evaluate(black_box(req)))
        });
        // The same account on a path nobody allows: every candidate rule is tried.
        let denied = Request {
            http: Some(HttpRequest {
                method: "PUT",
                path: "/nowhere",
                host: "orders.shop",
                headers: &headers,
            }),
            ..allowed
        };
        assert_eq!(policies.evaluate(&denied).verdict, Verdict::Deny);
        group.bench_with_input(BenchmarkId::new("deny", n), &denied, |b, req| {
            b.iter(|| policies.evaluate(black_box(req)))
        });
        let tcp = Request {
            http: None,
            ..allowed
        };
        group.bench_with_input(BenchmarkId::new("tcp", n), &tcp, |b, req| {
            b.iter(|| policies.evaluate(black_box(req)))
        });
    }
    group.finish();
}

criterion_group!(benches, evaluate);
criterion_main!(benches);
