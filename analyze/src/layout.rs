//! A layered (Sugiyama-style) drawing of the service graph: callers left of what they call,
//! one column per call depth, the order within each column chosen to keep edges from
//! crossing, and edges that skip columns routed through the columns between.
//!
//! 1. Cycles are broken by reversing the edges a depth-first search finds closing one (they
//!    are drawn with the arrow at their start, so they still point at what was called).
//! 2. Each node's column is its longest call path from a node nothing calls.
//! 3. An edge spanning several columns gets a virtual point in each column it crosses.
//! 4. Orders: barycentre sweeps, alternately left to right and right to left, each followed
//!    by swapping neighbours where that removes crossings, keeping the order with the fewest
//!    crossings (counted exactly between each pair of columns).
//! 5. Heights: each node moves towards the mean height of its neighbours, then the column is
//!    spread so no two boxes are closer than the gap, keeping the order.

use std::collections::VecDeque;

/// Box of a node.
pub(crate) const NODE_W: f64 = 210.0;
pub(crate) const NODE_H: f64 = 46.0;
/// Horizontal distance between the left edges of two columns.
pub(crate) const COL_GAP: f64 = 300.0;
/// Vertical space between two boxes of a column.
const ROW_SPACE: f64 = 30.0;
/// Vertical room an edge passing through a column takes.
const LANE: f64 = 14.0;
/// Empty border around the drawing.
pub(crate) const MARGIN: f64 = 40.0;
/// Sweeps of the ordering phase; above `LARGE` points (nodes and the points of edges that
/// pass columns), fewer sweeps, one first order and no swaps, to bound the time.
const SWEEPS: usize = 24;
const SWEEPS_LARGE: usize = 2;
const LARGE: usize = 2_000;

/// Where everything goes.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Top-left corner of each node's box.
    pub(crate) pos: Vec<(f64, f64)>,
    /// For each edge given (in order), the points its line passes through, from the caller's
    /// box to the called one's; empty for a self-call. `reversed` edges run the other way.
    pub(crate) routes: Vec<Route>,
    /// Size of the drawing.
    pub(crate) width: f64,
    pub(crate) height: f64,
    /// Edge crossings left between adjacent columns.
    pub(crate) crossings: usize,
}

/// The line of one edge.
#[derive(Debug, Clone, Default)]
pub(crate) struct Route {
    /// Points from the start box's right side to the end box's left side; between them, each
    /// column passed is entered and left at one height.
    pub(crate) points: Vec<(f64, f64)>,
    /// Drawn from the called node to the caller (the edge closed a cycle).
    pub(crate) reversed: bool,
}

/// Lays out `n` nodes joined by `edges` (caller, called).
pub(crate) fn layout(n: usize, edges: &[(usize, usize)]) -> Layout {
    let dag = acyclic(n, edges);
    let level = levels(n, &dag);
    let columns = level.iter().copied().max().map_or(1, |m| m + 1);
    let g = Grid::of(&level, &dag);
    let (best, best_crossings) = best_order(&g, columns, n);
    let nv = g.level.len();
    let y = heights(&best, n, &g.up, &g.down, nv);
    let x = |l: usize| MARGIN + l as f64 * COL_GAP;
    let top = y.iter().copied().fold(f64::INFINITY, f64::min);
    let shift = if top.is_finite() { MARGIN - top } else { 0.0 };
    let pos: Vec<(f64, f64)> = (0..n)
        .map(|i| (x(level[i]), y[i] + shift - NODE_H / 2.0))
        .collect();
    let bottom = (0..nv)
        .map(|i| y[i] + shift + if i < n { NODE_H / 2.0 } else { 0.0 })
        .fold(MARGIN, f64::max);
    let at = |v: usize| (x(g.level[v]), y[v] + shift);
    Layout {
        pos,
        routes: edge_routes(edges, &dag, &g.chains, at),
        width: MARGIN * 2.0 + (columns - 1) as f64 * COL_GAP + NODE_W,
        // Room above the top row for self-call loops.
        height: bottom + MARGIN,
        crossings: best_crossings,
    }
}

/// The vertices placed in columns: the nodes, then one virtual point per column an edge
/// passes, joined by links between adjacent columns.
struct Grid {
    /// Each vertex's column.
    level: Vec<usize>,
    /// Each DAG edge's vertices, from its start node to its end node.
    chains: Vec<Vec<usize>>,
    /// Links to the next column, per vertex.
    down: Vec<Vec<usize>>,
    /// Links from the previous column, per vertex.
    up: Vec<Vec<usize>>,
}

impl Grid {
    fn of(level: &[usize], dag: &[(usize, usize, usize)]) -> Self {
        let mut vlevel: Vec<usize> = level.to_vec();
        let mut chains: Vec<Vec<usize>> = Vec::with_capacity(dag.len());
        let mut links: Vec<(usize, usize)> = Vec::new();
        for &(u, v, _) in dag {
            let mut chain = vec![u];
            for l in level[u] + 1..level[v] {
                vlevel.push(l);
                chain.push(vlevel.len() - 1);
            }
            chain.push(v);
            for w in chain.windows(2) {
                links.push((w[0], w[1]));
            }
            chains.push(chain);
        }
        let nv = vlevel.len();
        let mut down: Vec<Vec<usize>> = vec![Vec::new(); nv];
        let mut up: Vec<Vec<usize>> = vec![Vec::new(); nv];
        for &(a, b) in &links {
            down[a].push(b);
            up[b].push(a);
        }
        Self {
            level: vlevel,
            chains,
            down,
            up,
        }
    }
}

/// The order of the vertices in each column with the fewest crossings found, and that count.
/// Sweeps from a few first orders (barycentre sweeps stop in local minima that depend on
/// where they start), keeping the best.
fn best_order(g: &Grid, columns: usize, n: usize) -> (Vec<Vec<usize>>, usize) {
    let nv = g.level.len();
    let sweeps = if nv > LARGE { SWEEPS_LARGE } else { SWEEPS };
    let mut best: Vec<Vec<usize>> = Vec::new();
    let mut best_crossings = usize::MAX;
    for start in 0..STARTS {
        let order = initial_order(columns, &g.level, &g.down, n, start);
        let (order, c) = minimize(order, &g.up, &g.down, nv, sweeps);
        if c < best_crossings {
            best = order;
            best_crossings = c;
        }
        if best_crossings == 0 || nv > LARGE {
            break;
        }
    }
    (best, best_crossings)
}

/// Each edge's line through its chain's vertices (`at` gives a vertex's left side and
/// centre height): out of the start box's right side, across each column passed, into the
/// end box's left side.
fn edge_routes(
    edges: &[(usize, usize)],
    dag: &[(usize, usize, usize)],
    chains: &[Vec<usize>],
    at: impl Fn(usize) -> (f64, f64),
) -> Vec<Route> {
    let mut routes = vec![Route::default(); edges.len()];
    for (chain, &(_, _, index)) in chains.iter().zip(dag) {
        let mut points = Vec::with_capacity(chain.len() * 2);
        for (k, &v) in chain.iter().enumerate() {
            let (vx, vy) = at(v);
            if k == 0 {
                points.push((vx + NODE_W, vy));
            } else if k + 1 == chain.len() {
                points.push((vx, vy));
            } else {
                points.push((vx, vy));
                points.push((vx + NODE_W, vy));
            }
        }
        routes[index] = Route {
            points,
            reversed: edges[index].0 != chain[0],
        };
    }
    routes
}

/// The edges as a DAG: `(from, to, index in edges)`, with the edges that close a cycle
/// reversed and self-calls left out.
fn acyclic(n: usize, edges: &[(usize, usize)]) -> Vec<(usize, usize, usize)> {
    let mut out_edges: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
    let mut has_caller = vec![false; n];
    for (i, &(s, d)) in edges.iter().enumerate() {
        if s != d && s < n && d < n {
            out_edges[s].push((d, i));
            has_caller[d] = true;
        }
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; n];
    let mut dag: Vec<(usize, usize, usize)> = Vec::new();
    let starts = (0..n).filter(|i| !has_caller[*i]).chain(0..n);
    for start in starts {
        if mark[start] != Mark::New {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        mark[start] = Mark::Open;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let Some(&(d, i)) = out_edges[node].get(*next) else {
                mark[node] = Mark::Done;
                stack.pop();
                continue;
            };
            *next += 1;
            let (a, b) = if mark[d] == Mark::Open {
                (d, node) // closes a cycle: reversed
            } else {
                (node, d)
            };
            dag.push((a, b, i));
            if mark[d] == Mark::New {
                mark[d] = Mark::Open;
                stack.push((d, 0));
            }
        }
    }
    dag
}

/// Longest path from the nodes nothing calls, in topological order.
fn levels(n: usize, dag: &[(usize, usize, usize)]) -> Vec<usize> {
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut indegree = vec![0usize; n];
    for &(a, b, _) in dag {
        succ[a].push(b);
        indegree[b] += 1;
    }
    let mut level = vec![0usize; n];
    let mut queue: VecDeque<usize> = (0..n).filter(|i| indegree[*i] == 0).collect();
    while let Some(i) = queue.pop_front() {
        for &d in &succ[i] {
            level[d] = level[d].max(level[i] + 1);
            indegree[d] -= 1;
            if indegree[d] == 0 {
                queue.push_back(d);
            }
        }
    }
    level
}

/// Barycentre sweeps from `order`, alternately left to right and right to left, each
/// followed by swaps of neighbours; the order with the fewest crossings and their count.
fn minimize(
    mut order: Vec<Vec<usize>>,
    up: &[Vec<usize>],
    down: &[Vec<usize>],
    nv: usize,
    sweeps: usize,
) -> (Vec<Vec<usize>>, usize) {
    let mut best = order.clone();
    let mut best_crossings = crossings(&order, down, nv);
    // Every vertex's place in its column, kept current as columns are reordered.
    let mut at = vec![0f64; nv];
    for sweep in 0..sweeps {
        if best_crossings == 0 {
            break;
        }
        for col in &order {
            for (i, &v) in col.iter().enumerate() {
                at[v] = i as f64;
            }
        }
        if sweep.is_multiple_of(2) {
            // Left to right, each column by its callers in the column before.
            for col in order.iter_mut().skip(1) {
                reorder(col, up, &mut at);
            }
        } else {
            // Right to left, each column by its callees in the column after.
            for col in order.iter_mut().rev().skip(1) {
                reorder(col, down, &mut at);
            }
        }
        if nv <= LARGE {
            transpose(&mut order, up, down, nv);
        }
        let c = crossings(&order, down, nv);
        if c < best_crossings {
            best_crossings = c;
            best.clone_from(&order);
        }
    }
    (best, best_crossings)
}

/// First orders tried.
const STARTS: usize = 4;

/// Columns filled in depth-first order from the nodes of the first column, so that what one
/// node calls starts out together. `start` varies the order in which a node's callees are
/// visited: as recorded, reversed, or by node number up or down.
fn initial_order(
    columns: usize,
    vlevel: &[usize],
    down: &[Vec<usize>],
    n: usize,
    start: usize,
) -> Vec<Vec<usize>> {
    let mut order: Vec<Vec<usize>> = vec![Vec::new(); columns];
    let mut placed = vec![false; vlevel.len()];
    let roots = (0..n).filter(|i| vlevel[*i] == 0).chain(0..vlevel.len());
    for root in roots {
        if placed[root] {
            continue;
        }
        let mut stack = vec![root];
        while let Some(v) = stack.pop() {
            if placed[v] {
                continue;
            }
            placed[v] = true;
            order[vlevel[v]].push(v);
            let mut next = down[v].clone();
            match start % 4 {
                0 => next.reverse(),
                1 => {}
                2 => next.sort_unstable_by(|a, b| b.cmp(a)),
                _ => next.sort_unstable(),
            }
            stack.extend(next);
        }
    }
    order
}

/// Sorts a column by the mean place of each vertex's neighbours in `nbrs` (in the adjacent
/// column swept from); vertices without such neighbours keep their place. Updates `at`.
fn reorder(col: &mut [usize], nbrs: &[Vec<usize>], at: &mut [f64]) {
    let mut keyed: Vec<(f64, usize, usize)> = col
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ns = &nbrs[v];
            let key = if ns.is_empty() {
                i as f64
            } else {
                ns.iter().map(|&u| at[u]).sum::<f64>() / ns.len() as f64
            };
            (key, i, v)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    for (i, (_, _, v)) in keyed.into_iter().enumerate() {
        col[i] = v;
        at[v] = i as f64;
    }
}

/// Crossings between the links of `u` and those of `v` (`u` left of `v` in one column) to
/// the neighbours in `nbrs`, whose places are `at`.
fn pair_crossings(u: usize, v: usize, nbrs: &[Vec<usize>], at: &[usize]) -> usize {
    let mut c = 0;
    for &a in &nbrs[u] {
        for &b in &nbrs[v] {
            c += usize::from(at[a] > at[b]);
        }
    }
    c
}

/// Swaps neighbours within a column wherever that removes crossings, until no swap helps (at
/// most a few rounds).
fn transpose(order: &mut [Vec<usize>], up: &[Vec<usize>], down: &[Vec<usize>], nv: usize) {
    let mut at = vec![0usize; nv];
    for col in order.iter() {
        for (i, &v) in col.iter().enumerate() {
            at[v] = i;
        }
    }
    for _ in 0..8 {
        let mut improved = false;
        for col in order.iter_mut() {
            for i in 1..col.len() {
                let (u, v) = (col[i - 1], col[i]);
                let now = pair_crossings(u, v, up, &at) + pair_crossings(u, v, down, &at);
                let swapped = pair_crossings(v, u, up, &at) + pair_crossings(v, u, down, &at);
                if swapped < now {
                    col.swap(i - 1, i);
                    at[u] = i;
                    at[v] = i - 1;
                    improved = true;
                }
            }
        }
        if !improved {
            break;
        }
    }
}

/// Crossings between every pair of adjacent columns: inversions of the lower ends when the
/// links are sorted by their upper ends, counted with a Fenwick tree.
fn crossings(order: &[Vec<usize>], down: &[Vec<usize>], nv: usize) -> usize {
    let mut at = vec![0usize; nv];
    for col in order {
        for (i, &v) in col.iter().enumerate() {
            at[v] = i;
        }
    }
    let mut total = 0;
    for l in 0..order.len().saturating_sub(1) {
        let mut pairs: Vec<(usize, usize)> = order[l]
            .iter()
            .flat_map(|&a| down[a].iter().map(move |&b| (a, b)))
            .map(|(a, b)| (at[a], at[b]))
            .collect();
        pairs.sort_unstable();
        let size = order[l + 1].len() + 1;
        let mut tree = vec![0usize; size + 1];
        for (seen, &(_, b)) in pairs.iter().enumerate() {
            // Links seen so far whose lower end is right of b cross this one.
            let mut not_right = 0;
            let mut i = b + 1;
            while i > 0 {
                not_right += tree[i];
                i &= i - 1;
            }
            total += seen - not_right;
            let mut i = b + 1;
            while i <= size {
                tree[i] += 1;
                i += i & i.wrapping_neg();
            }
        }
    }
    total
}

/// Half the vertical room a vertex takes.
fn half(v: usize, n: usize) -> f64 {
    if v < n { NODE_H / 2.0 } else { LANE / 2.0 }
}

/// The centre height of each vertex: a few rounds of moving towards the neighbours' mean,
/// each followed by spreading the column to keep the gaps and the order.
fn heights(
    order: &[Vec<usize>],
    n: usize,
    up: &[Vec<usize>],
    down: &[Vec<usize>],
    nv: usize,
) -> Vec<f64> {
    let mut y = vec![0f64; nv];
    let tallest = order
        .iter()
        .map(|c| column_height(c, n))
        .fold(0.0, f64::max);
    for col in order {
        let mut at = (tallest - column_height(col, n)) / 2.0;
        for &v in col {
            at += half(v, n);
            y[v] = at;
            at += half(v, n) + ROW_SPACE;
        }
    }
    for round in 0..8usize {
        let cols: Vec<usize> = if round.is_multiple_of(2) {
            (0..order.len()).collect()
        } else {
            (0..order.len()).rev().collect()
        };
        for l in cols {
            let col = &order[l];
            let want: Vec<f64> = col
                .iter()
                .map(|&v| {
                    let count = up[v].len() + down[v].len();
                    if count == 0 {
                        y[v]
                    } else {
                        up[v].iter().chain(&down[v]).map(|&u| y[u]).sum::<f64>() / count as f64
                    }
                })
                .collect();
            // Keep the order and the gaps, as close to the wishes as a shift allows.
            let mut placed = Vec::with_capacity(col.len());
            for (i, &v) in col.iter().enumerate() {
                let floor = match i.checked_sub(1) {
                    Some(p) => placed[p] + half(col[p], n) + ROW_SPACE + half(v, n),
                    None => f64::NEG_INFINITY,
                };
                placed.push(want[i].max(floor));
            }
            let shift =
                want.iter().zip(&placed).map(|(w, p)| w - p).sum::<f64>() / col.len().max(1) as f64;
            for (&v, p) in col.iter().zip(placed) {
                y[v] = p + shift;
            }
        }
    }
    y
}

fn column_height(col: &[usize], n: usize) -> f64 {
    col.iter()
        .map(|&v| 2.0 * half(v, n) + ROW_SPACE)
        .sum::<f64>()
        - ROW_SPACE
}

#[cfg(test)]
mod tests;
