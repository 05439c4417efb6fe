#![allow(clippy::unwrap_used, clippy::panic)]
use super::*;

/// A gateway calling four frontends, each calling two services of its own and the first of
/// its right neighbour's; the services call three stores; the first store calls a chain of
/// three caches whose last calls the first again (a cycle); the last service and the gateway
/// call an audit service (the gateway's call skips two columns). 20 nodes in 7 columns,
/// drawable without crossings. Node numbers and the order of the edges are shuffled so that
/// the first order found is not already the answer.
fn twenty_services() -> (usize, Vec<(usize, usize)>) {
    let mut edges = Vec::new();
    for f in 0..4 {
        let front = 1 + f;
        edges.push((0, front));
        let s = 5 + 2 * f;
        edges.push((front, s));
        edges.push((front, s + 1));
        if f < 3 {
            edges.push((front, s + 2));
        }
    }
    for s in 5..13 {
        edges.push((s, 13 + (s - 5) * 3 / 8));
    }
    edges.extend([(13, 16), (16, 17), (17, 18), (18, 16), (12, 19), (0, 19)]);
    // Shuffle: renumber nodes and reorder edges deterministically.
    let perm: Vec<usize> = (0..20).map(|i| (i * 7 + 3) % 20).collect();
    let mut shuffled: Vec<(usize, usize)> =
        edges.iter().map(|&(a, b)| (perm[a], perm[b])).collect();
    shuffled.sort_by_key(|&(a, b)| (a * 31 + b * 17) % 23);
    (20, shuffled)
}

fn overlap(a: (f64, f64), b: (f64, f64)) -> bool {
    a.0 < b.0 + NODE_W && b.0 < a.0 + NODE_W && a.1 < b.1 + NODE_H && b.1 < a.1 + NODE_H
}

#[test]
fn twenty_services_are_laid_out_in_columns_without_overlaps_or_crossings() {
    let (n, edges) = twenty_services();
    let l = layout(n, &edges);
    assert_eq!(l.pos.len(), n);
    for i in 0..n {
        for j in i + 1..n {
            assert!(!overlap(l.pos[i], l.pos[j]), "{i} and {j} overlap: {l:?}");
        }
        let (x, y) = l.pos[i];
        assert!(x >= 0.0 && y >= 0.0 && x + NODE_W <= l.width && y + NODE_H <= l.height);
    }
    // Callers left of what they call, but for the one edge that closes the cycle.
    let mut backwards = 0;
    for (k, &(a, b)) in edges.iter().enumerate() {
        if l.routes[k].reversed {
            backwards += 1;
            assert!(l.pos[b].0 < l.pos[a].0);
        } else {
            assert!(l.pos[a].0 < l.pos[b].0, "{a} -> {b}");
        }
        let pts = &l.routes[k].points;
        assert!(pts.len() >= 2 && pts.len().is_multiple_of(2), "{pts:?}");
    }
    assert_eq!(backwards, 1);
    assert_eq!(l.crossings, 0, "{l:?}");
    // Seven columns of call depth: gateway, frontends, services, stores and audit, caches.
    let columns: std::collections::BTreeSet<i64> = l.pos.iter().map(|p| p.0 as i64).collect();
    assert_eq!(columns.len(), 7, "{columns:?}");
}

#[test]
fn crossings_are_counted_exactly() {
    // Two columns; a->d and b->c cross once in the order [a, b], [c, d].
    let order = vec![vec![0, 1], vec![2, 3]];
    let down = vec![vec![3], vec![2], vec![], vec![]];
    assert_eq!(crossings(&order, &down, 4), 1);
    let down = vec![vec![2, 3], vec![2, 3], vec![], vec![]];
    assert_eq!(crossings(&order, &down, 4), 1);
    let down = vec![vec![2], vec![3], vec![], vec![]];
    assert_eq!(crossings(&order, &down, 4), 0);
}

#[test]
fn a_long_call_passes_the_columns_between_and_a_self_call_has_no_route() {
    let l = layout(4, &[(0, 1), (1, 2), (0, 2), (3, 3)]);
    // 0 -> 2 skips column 1: start, in and out of column 1, end.
    assert_eq!(l.routes[2].points.len(), 4);
    assert!(l.routes[3].points.is_empty());
}

#[test]
#[ignore = "a measurement, not a check"]
#[allow(clippy::print_stdout)]
fn lay_out_large_graphs() {
    for (n, per_node) in [(200usize, 3usize), (1_000, 3), (5_000, 2)] {
        // Deterministic pseudo-random edges, mostly towards higher numbers (calls deepen).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut edges = Vec::new();
        for a in 0..n {
            for _ in 0..per_node {
                let b = (a + 1 + (next() as usize) % 40).min(n - 1);
                if a != b {
                    edges.push((a, b));
                }
            }
        }
        let start = std::time::Instant::now();
        let l = layout(n, &edges);
        println!(
            "layout: {n} nodes, {} edges in {:.3} s, {} crossings, {:.0}x{:.0}",
            edges.len(),
            start.elapsed().as_secs_f64(),
            l.crossings,
            l.width,
            l.height
        );
    }
}
