//! Observed traffic against a policy set: per-route answers and the blast radius.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};

use picket_policy::{HttpRequest, PolicySet, Request, Verdict, Workload, WorkloadPolicies};

use super::PolicyAnswer;
use super::read::{Aggregate, EdgeAgg, RouteAgg};

/// Evaluates requests against one policy set, one workload view per destination.
pub(crate) struct Checker<'p> {
    set: &'p PolicySet,
    label: &'p str,
}

/// `trust-domain/ns/x/sa/y` for a SPIFFE ID, as policies write principals.
pub(crate) fn principal(id: &str) -> Option<&str> {
    id.strip_prefix("spiffe://")
}

/// The workload a destination identity stands for: its namespace, and label `label` equal to
/// its service account.
pub(crate) fn workload(id: &str, label: &str) -> Option<Workload> {
    let s: picket_ca::SpiffeId = id.parse().ok()?;
    Some(Workload {
        namespace: s.namespace().to_owned(),
        labels: BTreeMap::from([(label.to_owned(), s.service_account().to_owned())]),
    })
}

/// A concrete request standing for one route.
struct Probe<'a> {
    method: Option<&'a str>,
    path: &'a str,
    port: u16,
}

fn probes<'a>(route: &'a str, r: &'a RouteAgg, e: &'a EdgeAgg) -> Vec<Probe<'a>> {
    let method = match route.split_once(' ') {
        Some((m, _)) => Some(m),
        None if route == "tcp" => None,
        None => Some(route),
    };
    let path = r.sample_path.as_deref().unwrap_or("/");
    let mut ports: Vec<u16> = e.route_policy_ports(r).to_vec();
    if ports.is_empty() {
        ports = e.policy_ports().keys().copied().take(1).collect();
    }
    if ports.is_empty() {
        ports.push(0);
    }
    ports
        .into_iter()
        .map(|port| Probe { method, path, port })
        .collect()
}

impl<'p> Checker<'p> {
    pub(crate) fn new(set: &'p PolicySet, label: &'p str) -> Self {
        Self { set, label }
    }

    fn policies(&self, destination: &str) -> Option<WorkloadPolicies> {
        workload(destination, self.label).map(|w| self.set.for_workload(&w))
    }

    fn evaluate(
        policies: &WorkloadPolicies,
        source: &str,
        source_ip: Option<IpAddr>,
        host: &str,
        probe: &Probe<'_>,
    ) -> picket_policy::Decision {
        let req = Request {
            source_principal: principal(source),
            source_ip: source_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            destination_port: probe.port,
            sni: None,
            http: probe.method.map(|method| HttpRequest {
                method,
                path: probe.path,
                host,
                headers: &[],
            }),
            auth: None,
        };
        policies.evaluate(&req)
    }

    /// The policy's answer for one observed route, with the decision explained.
    pub(crate) fn route(
        &self,
        source: &str,
        destination: &str,
        route: &str,
        r: &RouteAgg,
        e: &EdgeAgg,
    ) -> (Option<PolicyAnswer>, Option<String>) {
        let Some(policies) = self.policies(destination) else {
            return (None, None);
        };
        let host = e
            .sample_host
            .as_deref()
            .map_or_else(|| super::short_name(destination), str::to_owned);
        let mut allowed = 0;
        let mut denied = None;
        let all = probes(route, r, e);
        for p in &all {
            let d = Self::evaluate(&policies, source, e.sample_source_ip, &host, p);
            if d.verdict == Verdict::Allow {
                allowed += 1;
            } else if denied.is_none() {
                denied = Some(format!(
                    "{} {} on port {}: {d}",
                    p.method.unwrap_or("TCP"),
                    p.path,
                    p.port
                ));
            }
        }
        match (allowed, denied) {
            (_, None) => (Some(PolicyAnswer::Allow), None),
            (0, Some(why)) => (Some(PolicyAnswer::Deny), Some(why)),
            (_, Some(why)) => (Some(PolicyAnswer::Partial), Some(why)),
        }
    }
}

/// Most routes tried per destination when asking what a source could reach.
const PROBES_PER_DESTINATION: usize = 64;

fn closure(direct: &BTreeMap<u32, BTreeSet<u32>>, from: u32) -> BTreeSet<u32> {
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<u32> = direct.get(&from).into_iter().flatten().copied().collect();
    while let Some(n) = queue.pop_front() {
        if n == from || !seen.insert(n) {
            continue;
        }
        queue.extend(direct.get(&n).into_iter().flatten().copied());
    }
    seen
}

/// What each identity reached with admitted traffic (and transitively), and, with a policy,
/// what it could reach: a destination counts when some request observed towards it, from any
/// source, would be allowed from this identity.
pub(crate) fn blast_radius(
    agg: &Aggregate,
    checker: Option<&Checker<'_>>,
) -> Vec<super::BlastRadius> {
    let names = &agg.nodes;
    let (identities, reached) = observed_reach(agg);
    let reachable = checker.map(|ch| policy_reach(agg, ch, &identities));
    let list = |set: BTreeSet<u32>| -> Vec<String> {
        let mut v: Vec<String> = set.into_iter().map(|n| names.name(n).to_owned()).collect();
        v.sort();
        v
    };
    let mut out: Vec<super::BlastRadius> = identities
        .iter()
        .map(|&s| super::BlastRadius {
            identity: names.name(s).to_owned(),
            reached: list(reached.get(&s).cloned().unwrap_or_default()),
            reached_transitive: list(closure(&reached, s)),
            reachable: reachable
                .as_ref()
                .map(|r| list(r.get(&s).cloned().unwrap_or_default())),
            reachable_transitive: reachable.as_ref().map(|r| list(closure(r, s))),
            egress: list(
                closure(&reached, s)
                    .into_iter()
                    .filter(|n| agg.egress.contains(n))
                    .collect(),
            ),
        })
        .collect();
    out.sort_by(|a, b| a.identity.cmp(&b.identity));
    out
}

/// The identities seen (either end of an edge), and the destinations each source reached
/// with admitted traffic (calls to itself left out).
fn observed_reach(agg: &Aggregate) -> (BTreeSet<u32>, BTreeMap<u32, BTreeSet<u32>>) {
    let mut reached: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    let mut identities: BTreeSet<u32> = BTreeSet::new();
    for (&(s, d), e) in &agg.edges {
        for n in [s, d] {
            if agg.nodes.name(n).starts_with("spiffe://") {
                identities.insert(n);
            }
        }
        let c = e.counts();
        if c.requests > c.denied && s != d {
            reached.entry(s).or_default().insert(d);
        }
    }
    (identities, reached)
}

/// The destinations each identity could reach under the policy: those where some route seen
/// towards them, from anyone, would be allowed from that identity.
fn policy_reach(
    agg: &Aggregate,
    ch: &Checker<'_>,
    identities: &BTreeSet<u32>,
) -> BTreeMap<u32, BTreeSet<u32>> {
    let names = &agg.nodes;
    // Every route seen towards each destination, from anyone.
    let mut towards: HashMap<u32, Vec<(&str, &RouteAgg, &EdgeAgg)>> = HashMap::new();
    for (&(_, d), e) in &agg.edges {
        let list = towards.entry(d).or_default();
        for (route, r) in &e.routes {
            if list.len() < PROBES_PER_DESTINATION
                && !list.iter().any(|(known, _, _)| *known == route.as_ref())
            {
                list.push((route, r, e));
            }
        }
    }
    let mut out: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    for (&d, routes) in &towards {
        let dest = names.name(d);
        let Some(policies) = ch.policies(dest) else {
            continue;
        };
        let host = super::short_name(dest);
        for &s in identities {
            if s == d {
                continue;
            }
            let source = names.name(s);
            let allowed = routes.iter().any(|(route, r, e)| {
                probes(route, r, e).iter().any(|p| {
                    Checker::evaluate(&policies, source, None, &host, p).verdict == Verdict::Allow
                })
            });
            if allowed {
                out.entry(s).or_default().insert(d);
            }
        }
    }
    out
}
