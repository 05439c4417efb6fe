//! Realistic generated policy sets for the benchmark and the allocation test: many service
//! accounts across namespaces, each allowed a few methods and paths on a few ports, some
//! namespace-wide and port-wide rules, denies, a few catch-all rules, dry-run and AUDIT
//! policies that the measured request does not match.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use picket_policy::{LoadOptions, PolicySet, Source, Workload, load};

/// The workload every generated policy selects.
pub(crate) fn workload() -> Workload {
    Workload {
        namespace: "shop".into(),
        labels: BTreeMap::from([
            ("app".to_owned(), "orders".to_owned()),
            ("version".to_owned(), "v2".to_owned()),
        ]),
    }
}

/// The principal of service account `i`.
pub(crate) fn principal(i: usize) -> String {
    format!("cluster.local/ns/team-{}/sa/svc-{i}", i % 50)
}

/// The port service account `i` calls.
pub(crate) fn port(i: usize) -> u16 {
    [8080, 9090, 8443][i % 3]
}

/// The path prefix service account `i` may use.
pub(crate) fn path(i: usize, rest: &str) -> String {
    format!("/api/v1/svc-{i}/{rest}")
}

fn header(out: &mut String, name: &str, extra: &str) {
    let _ = write!(
        out,
        "---\napiVersion: picket.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: orders}}}}\n{extra}"
    );
}

/// `n` policies selecting the `orders` workload.
pub(crate) fn policies(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        let name = format!("p{i:05}");
        match i % 20 {
            // Most policies: one service account, its methods and paths on its port.
            0..=13 => {
                header(&mut out, &name, "  action: ALLOW\n");
                let _ = write!(
                    out,
                    "  rules:\n  - from: [{{source: {{principals: [\"{}\"]}}}}]\n    to: [{{operation: {{methods: [GET, HEAD], paths: [\"{}\", /health], ports: [\"{}\"]}}}}]\n  - from: [{{source: {{principals: [\"{}\"]}}}}]\n    to: [{{operation: {{methods: [POST], paths: [\"{}\"]}}}}]\n    when: [{{key: \"request.headers[x-tenant]\", values: [acme, \"beta-*\"]}}]\n",
                    principal(i),
                    path(i, "*"),
                    port(i),
                    principal(i),
                    path(i, "orders"),
                );
            }
            // Namespace-wide reads.
            14 | 15 => {
                header(&mut out, &name, "  action: ALLOW\n");
                let _ = write!(
                    out,
                    "  rules:\n  - from: [{{source: {{namespaces: [\"team-{}\"]}}}}]\n    to: [{{operation: {{methods: [GET], paths: [\"/api/v1/ns-{i}/*\"]}}}}]\n",
                    i % 50
                );
            }
            // Port-wide rules for monitoring.
            16 => {
                header(&mut out, &name, "  action: ALLOW\n");
                let _ = write!(
                    out,
                    "  rules:\n  - to: [{{operation: {{ports: [\"{}\"], paths: [/metrics-{i}]}}}}]\n",
                    10000 + i % 1000
                );
            }
            // Denies for individual accounts.
            17 => {
                header(&mut out, &name, "  action: DENY\n");
                let _ = write!(
                    out,
                    "  rules:\n  - from: [{{source: {{principals: [\"{}\"]}}}}]\n    to: [{{operation: {{paths: [\"/admin/*\"]}}}}]\n",
                    principal(i + 1)
                );
            }
            // Dry-run denies being tried out.
            18 => {
                header(&mut out, &name, "  action: DENY\n  mode: dry-run\n");
                let _ = write!(
                    out,
                    "  rules:\n  - from: [{{source: {{principals: [\"{}\"]}}}}]\n    to: [{{operation: {{methods: [DELETE]}}}}]\n",
                    principal(i + 2)
                );
            }
            // Audits of individual accounts.
            _ => {
                header(&mut out, &name, "  action: AUDIT\n");
                let _ = write!(
                    out,
                    "  rules:\n  - from: [{{source: {{principals: [\"{}\"]}}}}]\n    to: [{{operation: {{paths: [\"/export/*\"]}}}}]\n",
                    principal(i + 3)
                );
            }
        }
    }
    // A few catch-all rules every request meets, whatever the size.
    header(&mut out, "zz-deny-debug", "  action: DENY\n");
    out.push_str("  rules:\n  - to: [{operation: {paths: [\"/debug/*\"]}}]\n  - from: [{source: {notNamespaces: [\"team-*\", shop]}}]\n");
    header(&mut out, "zz-public", "  action: ALLOW\n");
    out.push_str("  rules:\n  - to: [{operation: {methods: [GET], paths: [\"/public/*\"]}}]\n");
    header(&mut out, "zz-dry-allow", "  mode: dry-run\n");
    out.push_str("  rules:\n  - to: [{operation: {paths: [\"/v2/*\"]}}]\n");
    header(&mut out, "zz-audit", "  action: AUDIT\n");
    out.push_str("  rules:\n  - when: [{key: \"request.headers[x-debug]\", values: [\"*\"]}]\n");
    out
}

/// The loaded set of `n` generated policies.
pub(crate) fn set(n: usize) -> PolicySet {
    let text = policies(n);
    let opts = LoadOptions {
        max_file_bytes: 256 << 20,
        ..LoadOptions::default()
    };
    match load(
        &[Source {
            name: "generated.yaml",
            text: &text,
        }],
        &opts,
    ) {
        Ok(set) => set,
        Err(e) => panic!("generated policies did not load:\n{e}"),
    }
}
