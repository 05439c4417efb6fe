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
mod tests;
