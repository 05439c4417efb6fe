//! Collapsing observed paths into the few patterns a least-privilege policy lists.

use std::collections::BTreeMap;

#[derive(Debug, Default)]
struct Node<'a> {
    /// Some observed path ends exactly here.
    end: bool,
    children: BTreeMap<&'a str, Node<'a>>,
}

/// Collapses `paths` (normalized, starting with `/`) into exact paths and `prefix/*` patterns:
/// wherever at least `k` distinct segments follow the same prefix (below the first segment),
/// they become `prefix/*`. Output is sorted and free of duplicates.
///
/// `/api/orders/1`, `/api/orders/2`, `/api/orders/3` with `k = 3` become `/api/orders/*`;
/// `/health` stays `/health`. Top-level paths are never collapsed into `/*`.
pub fn collapse<'a>(paths: impl IntoIterator<Item = &'a str>, k: usize) -> Vec<String> {
    let mut root = Node::default();
    for p in paths {
        let mut node = &mut root;
        let trimmed = p.strip_prefix('/').unwrap_or(p);
        if trimmed.is_empty() {
            node.end = true;
            continue;
        }
        for seg in trimmed.split('/') {
            node = node.children.entry(seg).or_default();
        }
        node.end = true;
    }
    let mut out = Vec::new();
    walk(&root, &mut String::new(), 0, k.max(2), &mut out);
    out.sort();
    out.dedup();
    out
}

fn walk(node: &Node<'_>, prefix: &mut String, depth: usize, k: usize, out: &mut Vec<String>) {
    if node.end {
        out.push(if prefix.is_empty() {
            "/".to_owned()
        } else {
            prefix.clone()
        });
    }
    if depth >= 1 && node.children.len() >= k {
        out.push(format!("{prefix}/*"));
        return;
    }
    for (seg, child) in &node.children {
        let len = prefix.len();
        prefix.push('/');
        prefix.push_str(seg);
        walk(child, prefix, depth + 1, k, out);
        prefix.truncate(len);
    }
}

#[cfg(test)]
mod tests {
    use super::collapse;

    #[test]
    fn collapses_many_ids_under_one_prefix() {
        let got = collapse(
            [
                "/api/orders/1",
                "/api/orders/2",
                "/api/orders/3",
                "/api/orders",
                "/health",
            ],
            3,
        );
        assert_eq!(got, ["/api/orders", "/api/orders/*", "/health"]);
    }

    #[test]
    fn keeps_few_values_exact() {
        let got = collapse(["/api/orders/1", "/api/orders/2", "/api/items"], 3);
        assert_eq!(got, ["/api/items", "/api/orders/1", "/api/orders/2"]);
    }

    #[test]
    fn deeper_variety_collapses_at_the_first_wide_level() {
        let got = collapse(
            [
                "/api/orders/1/items",
                "/api/orders/2/items",
                "/api/orders/3/lines/4",
            ],
            3,
        );
        assert_eq!(got, ["/api/orders/*"]);
    }

    #[test]
    fn never_collapses_the_root() {
        let got = collapse(["/a", "/b", "/c", "/d", "/"], 3);
        assert_eq!(got, ["/", "/a", "/b", "/c", "/d"]);
    }
}
