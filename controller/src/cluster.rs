//! The one watcher per resource for the whole cluster: kube-runtime reflectors (list, then
//! watch from the list's resourceVersion with bookmarks; a watch that ends is resumed from the
//! last version seen, and an expired version (410 Gone) makes a fresh list), each feeding an
//! in-memory store. Every change wakes one rebuild task, which computes the index from the
//! stores and hands it to the [`Hub`]; changes that arrive during a rebuild are folded into
//! the next one.

use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use picket_ca::TrustDomain;
use picket_k8s::inject::STATUS_ANNOTATION;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::index::Index;

/// The stores of the watched resources.
#[derive(Debug, Clone)]
pub struct Stores {
    /// Pods (trimmed to what discovery reads).
    pub pods: Store<Pod>,
    /// Services.
    pub services: Store<Service>,
    /// EndpointSlices.
    pub slices: Store<EndpointSlice>,
    /// Namespaces.
    pub namespaces: Store<Namespace>,
}

/// Keeps only what discovery reads of a pod, so a large cluster's pods cost little memory:
/// name, namespace, the injector's status annotation, the service account, container names,
/// phase and addresses.
fn trim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.owner_references = None;
    pod.metadata.labels = None;
    if let Some(annotations) = &mut pod.metadata.annotations {
        annotations.retain(|k, _| k == STATUS_ANNOTATION);
    }
    if let Some(spec) = &mut pod.spec {
        let names = |cs: &[Container]| -> Vec<Container> {
            cs.iter()
                .map(|c| Container {
                    name: c.name.clone(),
                    ..Container::default()
                })
                .collect()
        };
        *spec = PodSpec {
            containers: names(&spec.containers),
            init_containers: spec.init_containers.as_deref().map(names),
            service_account_name: spec.service_account_name.take(),
            ..PodSpec::default()
        };
    }
    if let Some(status) = &mut pod.status {
        status.conditions = None;
        status.container_statuses = None;
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
    }
}

/// Runs the watch of one resource into `writer` until `shutdown`, waking `changed` for each
/// event. Errors are logged and retried with kube-runtime's backoff.
fn run_reflector<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    trim: fn(&mut K),
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let kind = K::kind(&()).into_owned();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).modify(trim),
    )
    .default_backoff();
    follow(stream, Watching::Kind(kind), changed, shutdown);
}

/// What a followed watch is of, as its failure log line names it.
pub(crate) enum Watching {
    /// A built-in resource, by kind (`Pod`, `Service`, ...).
    Kind(String),
    /// A policy group's `AuthorizationPolicy` objects, by API version.
    PolicyGroup(String),
}

impl Watching {
    fn failed(&self, error: &dyn std::fmt::Display) {
        match self {
            Self::Kind(kind) => {
                tracing::warn!(kind = kind.as_str(), error = %error, "watch failed; retrying");
            }
            Self::PolicyGroup(api_version) => {
                tracing::warn!(api_version = %api_version, error = %error, "policy watch failed; retrying");
            }
        }
    }
}

/// Follows a reflector's event stream in a task of its own until `shutdown` or the stream's
/// end, waking `changed` at each event. A failed event is logged and the stream goes on (the
/// reflector retries with its backoff).
pub(crate) fn follow<S, T, E>(
    stream: S,
    watched: Watching,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) where
    S: Stream<Item = Result<T, E>> + Send + 'static,
    T: Send,
    E: std::fmt::Display + Send,
{
    tokio::spawn(async move {
        tokio::pin!(stream);
        loop {
            let event = tokio::select! {
                event = stream.next() => event,
                () = shutdown.cancelled() => return,
            };
            match event {
                Some(Ok(_)) => changed.notify_one(),
                Some(Err(e)) => watched.failed(&e),
                None => return,
            }
        }
    });
}

fn keep<K>(_: &mut K) {}

/// Starts the four watchers; the stores fill as the lists arrive. Pods, Services and
/// EndpointSlices wake `changed` (the index), Namespaces wake `namespaces_changed` (the
/// ConfigMap distribution).
pub fn watch(
    client: &Client,
    changed: &Arc<Notify>,
    namespaces_changed: &Arc<Notify>,
    shutdown: &CancellationToken,
) -> Stores {
    let (pods, pods_w) = reflector::store();
    let (services, services_w) = reflector::store();
    let (slices, slices_w) = reflector::store();
    let (namespaces, namespaces_w) = reflector::store();
    run_reflector(
        Api::<Pod>::all(client.clone()),
        pods_w,
        trim_pod,
        Arc::clone(changed),
        shutdown.clone(),
    );
    run_reflector(
        Api::<Service>::all(client.clone()),
        services_w,
        keep,
        Arc::clone(changed),
        shutdown.clone(),
    );
    run_reflector(
        Api::<EndpointSlice>::all(client.clone()),
        slices_w,
        keep,
        Arc::clone(changed),
        shutdown.clone(),
    );
    run_reflector(
        Api::<Namespace>::all(client.clone()),
        namespaces_w,
        keep,
        Arc::clone(namespaces_changed),
        shutdown.clone(),
    );
    Stores {
        pods,
        services,
        slices,
        namespaces,
    }
}

impl Stores {
    /// Waits until every store holds its first complete list.
    pub async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.pods.wait_until_ready().await?;
        self.services.wait_until_ready().await?;
        self.slices.wait_until_ready().await?;
        self.namespaces.wait_until_ready().await
    }

    /// The index of the stores' current contents.
    pub fn index(&self, trust_domain: &TrustDomain) -> Index {
        Index::build(
            trust_domain,
            &self.pods.state(),
            &self.services.state(),
            &self.slices.state(),
        )
    }
}

/// Rebuilds the index after every change until `shutdown`.
pub async fn rebuild_loop(
    stores: Stores,
    trust_domain: TrustDomain,
    hub: Arc<Hub>,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = changed.notified() => {}
            () = shutdown.cancelled() => return,
        }
        let index = stores.index(&trust_domain);
        let (services, pods) = index.sizes();
        tracing::debug!(services, pods, "discovery index rebuilt");
        hub.publish(index);
    }
}
