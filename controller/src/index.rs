//! The answer for every destination address, computed from the watched objects: a Service's
//! cluster IP and port, and a pod's own address. Pure (no I/O): [`Index::build`] takes the
//! stores' contents, [`Index::resolve`] answers one address.
//!
//! - A Service cluster IP and port (each IP of `spec.clusterIPs`, each `spec.ports` entry)
//!   resolves to the ready endpoints of the Service's EndpointSlices (label
//!   `kubernetes.io/service-name`, same namespace, same address family), at the slice port of
//!   the same name (the target port), each pinned to its pod's SPIFFE ID when the pod runs a
//!   Picket sidecar, without identity otherwise.
//! - A pod address and any port resolves to that pod alone (`service: None`).
//! - Anything else is unknown.
//!
//! Fail closed: an address two live pods claim, or an endpoint whose pod is unknown, is never
//! pinned to a guessed identity (the pod address becomes unknown; the endpoint is served
//! without identity only when its pod is known to be unmeshed, and left out otherwise).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use picket_ca::TrustDomain;
use picket_common::discovery::{Destination, Endpoint};
use picket_k8s::inject::{PROXY_CONTAINER, STATUS_ANNOTATION};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the controller says about one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Neither a Service's nor a pod's address.
    Unknown,
    /// The address's destination.
    Known(Arc<Destination>),
}

/// What is known about one pod for discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PodFacts {
    /// The identity its sidecar presents, or `None` when it runs no sidecar.
    Live(Option<String>),
    /// Two live pods claim this address: it is pinned to neither.
    Conflict,
}

/// Every answer, built at once from the watched objects.
#[derive(Debug, Default)]
pub struct Index {
    services: HashMap<SocketAddr, Arc<Destination>>,
    pods: HashMap<IpAddr, PodFacts>,
}

/// True when the pod runs a Picket sidecar (the injector's status annotation and its proxy
/// container, as a native sidecar or a plain container).
pub fn is_meshed(pod: &Pod) -> bool {
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(STATUS_ANNOTATION));
    let Some(spec) = &pod.spec else {
        return false;
    };
    let has_proxy = spec.containers.iter().any(|c| c.name == PROXY_CONTAINER)
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == PROXY_CONTAINER);
    annotated && has_proxy
}

/// The SPIFFE ID a meshed pod presents: `spiffe://<td>/ns/<namespace>/sa/<service account>`
/// (the service account defaults to `default`, as in Kubernetes).
pub fn pod_identity(trust_domain: &TrustDomain, pod: &Pod) -> Option<String> {
    let namespace = pod.metadata.namespace.as_deref()?;
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|a| !a.is_empty())
        .unwrap_or("default");
    let workload = picket_ca::identity::WorkloadName::new(namespace, account).ok()?;
    Some(picket_ca::SpiffeId::new(trust_domain.clone(), workload).to_uri())
}

/// A pod that has finished keeps its address in its status, but the address may already be
/// another pod's.
fn is_live(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed")) && pod.metadata.deletion_timestamp.is_none()
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    ips
}

type PodKey = (String, String);

/// The live pods by address (their identity, or a conflict when two claim one address) and by
/// namespace and name.
struct PodTables {
    by_ip: HashMap<IpAddr, PodFacts>,
    by_name: HashMap<PodKey, Option<String>>,
}

impl PodTables {
    fn build(trust_domain: &TrustDomain, pods: &[Arc<Pod>]) -> Self {
        let mut by_ip: HashMap<IpAddr, PodFacts> = HashMap::new();
        let mut by_name: HashMap<PodKey, Option<String>> = HashMap::new();
        for pod in pods.iter().filter(|p| is_live(p)) {
            let identity = if is_meshed(pod) {
                match pod_identity(trust_domain, pod) {
                    Some(id) => Some(id),
                    // A meshed pod whose identity cannot be spelled is left out entirely.
                    None => continue,
                }
            } else {
                None
            };
            if let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) {
                by_name.insert((ns.clone(), name.clone()), identity.clone());
            }
            for ip in pod_ips(pod) {
                by_ip
                    .entry(ip)
                    .and_modify(|f| *f = PodFacts::Conflict)
                    .or_insert_with(|| PodFacts::Live(identity.clone()));
            }
        }
        Self { by_ip, by_name }
    }

    /// Adds the answers of every TCP port of `service` on each of its cluster addresses.
    fn add_service(
        &self,
        service: &Service,
        slices_of: &HashMap<PodKey, Vec<&EndpointSlice>>,
        out: &mut HashMap<SocketAddr, Arc<Destination>>,
    ) {
        let (Some(ns), Some(name)) = (&service.metadata.namespace, &service.metadata.name) else {
            return;
        };
        let Some(spec) = &service.spec else {
            return;
        };
        let cluster_ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if cluster_ips.is_empty() {
            // Headless ("None") or not allocated yet: clients dial pod addresses.
            return;
        }
        let key = (ns.clone(), name.clone());
        let service_slices = slices_of.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        for port in spec.ports.iter().flatten() {
            if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
                continue;
            }
            let Ok(service_port) = u16::try_from(port.port) else {
                continue;
            };
            for ip in &cluster_ips {
                let endpoints = endpoints_for(
                    service_slices,
                    port.name.as_deref().unwrap_or(""),
                    port.target_port.as_ref(),
                    ip.is_ipv4(),
                    &self.by_name,
                    &self.by_ip,
                );
                out.insert(
                    SocketAddr::new(*ip, service_port),
                    Arc::new(Destination {
                        service: Some(format!("{ns}/{name}")),
                        endpoints,
                    }),
                );
            }
        }
    }
}

/// The EndpointSlices of each Service (by the `kubernetes.io/service-name` label).
fn slices_by_service(slices: &[Arc<EndpointSlice>]) -> HashMap<PodKey, Vec<&EndpointSlice>> {
    let mut slices_of: HashMap<PodKey, Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        let labels = slice.metadata.labels.as_ref();
        let (Some(ns), Some(service)) = (
            slice.metadata.namespace.as_ref(),
            labels.and_then(|l| l.get(SERVICE_NAME_LABEL)),
        ) else {
            continue;
        };
        slices_of
            .entry((ns.clone(), service.clone()))
            .or_default()
            .push(slice);
    }
    slices_of
}

impl Index {
    /// Builds every answer from the watched objects.
    pub fn build(
        trust_domain: &TrustDomain,
        pods: &[Arc<Pod>],
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
    ) -> Self {
        let pods = PodTables::build(trust_domain, pods);
        let slices_of = slices_by_service(slices);
        let mut out = HashMap::new();
        for service in services {
            pods.add_service(service, &slices_of, &mut out);
        }
        Self {
            services: out,
            pods: pods.by_ip,
        }
    }

    /// The answer for `addr`.
    pub fn resolve(&self, addr: SocketAddr) -> Answer {
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        if let Some(destination) = self.services.get(&addr) {
            return Answer::Known(Arc::clone(destination));
        }
        match self.pods.get(&addr.ip()) {
            Some(PodFacts::Live(identity)) => Answer::Known(Arc::new(Destination {
                service: None,
                endpoints: vec![Endpoint {
                    address: addr,
                    identity: identity.clone(),
                }],
            })),
            Some(PodFacts::Conflict) | None => Answer::Unknown,
        }
    }

    /// How many Service addresses and pod addresses are known.
    pub fn sizes(&self) -> (usize, usize) {
        (self.services.len(), self.pods.len())
    }
}

/// The ready endpoints of a Service port: each slice of the right family, at the slice port
/// with the Service port's name (or the numeric target port when the slice names none).
fn endpoints_for(
    slices: &[&EndpointSlice],
    port_name: &str,
    target_port: Option<&IntOrString>,
    ipv4: bool,
    by_name: &HashMap<PodKey, Option<String>>,
    by_ip: &HashMap<IpAddr, PodFacts>,
) -> Vec<Endpoint> {
    let mut found: BTreeMap<SocketAddr, Option<String>> = BTreeMap::new();
    for slice in slices {
        let family_ok = match slice.address_type.as_str() {
            "IPv4" => ipv4,
            "IPv6" => !ipv4,
            _ => false,
        };
        if !family_ok {
            continue;
        }
        let slice_port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port_name)
            .and_then(|p| p.port)
            .or(match target_port {
                Some(IntOrString::Int(n)) => Some(*n),
                _ => None,
            });
        let Some(port) = slice_port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            // An absent `ready` means ready (the API's rule).
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            let pod_ref = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| Some((r.namespace.clone()?, r.name.clone()?)));
            for address in &endpoint.addresses {
                let Ok(ip) = address.parse::<IpAddr>() else {
                    continue;
                };
                let identity = match &pod_ref {
                    Some(key) => match by_name.get(key) {
                        Some(identity) => identity.clone(),
                        // The pod is not (yet) known: no identity can be vouched for.
                        None => continue,
                    },
                    // An endpoint without a pod (a VM, an external address) has no sidecar
                    // the controller knows of, unless the address is a known pod's.
                    None => match by_ip.get(&ip) {
                        Some(PodFacts::Live(identity)) => identity.clone(),
                        Some(PodFacts::Conflict) => continue,
                        None => None,
                    },
                };
                found.insert(SocketAddr::new(ip, port), identity);
            }
        }
    }
    found
        .into_iter()
        .map(|(address, identity)| Endpoint { address, identity })
        .collect()
}

#[cfg(test)]
mod tests;
