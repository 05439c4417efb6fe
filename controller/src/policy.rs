//! Policies as resources: the controller watches `picket.dev/v1` `AuthorizationPolicy`
//! objects, and Istio's `security.istio.io` ones when that CRD is installed, and keeps the
//! rendered documents of every namespace ([`PolicyIndex`]) for the sidecars' policy
//! subscriptions (`GET /v1/policies`, [`crate::serve`]).
//!
//! Each group is found through API discovery (`GET /apis/<group>/<version>`, which every
//! authenticated client may read). A group that is not served (its CRD is not installed) is
//! normal: it is looked for again every `--policy-discovery-interval` ([`DISCOVERY_INTERVAL`]
//! by default), and watched from the moment it appears. A group found at start is listed before the controller serves, so a sidecar's first
//! policy set is complete. One kube-runtime reflector per group for the whole cluster, as for
//! every other resource; every change rebuilds the index once.
//!
//! The controller does not judge the policies: a sidecar loads its set with the same loader as
//! its files (all or nothing, the last good set kept), and the validating webhook refuses
//! policies that do not load before they are stored.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use picket_common::backoff::Backoff;
use picket_common::policies::{ClusterPolicies, ClusterPolicy};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::cluster::{Watching, follow};

/// How often a policy group that is not served is looked for again, by default.
pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(30);
/// The plural every policy kind has.
const PLURAL: &str = "authorizationpolicies";

/// One API group whose `AuthorizationPolicy` objects are policies, and the versions to look
/// for, preferred first (the same objects are served in each; one is watched).
#[derive(Debug, Clone, Copy)]
pub struct PolicyGroup {
    /// The API group.
    pub group: &'static str,
    /// Its versions, preferred first.
    pub versions: &'static [&'static str],
}

/// The groups watched: Picket's own, then Istio's.
pub const GROUPS: [PolicyGroup; 2] = [
    PolicyGroup {
        group: "picket.dev",
        versions: &["v1"],
    },
    PolicyGroup {
        group: "security.istio.io",
        versions: &["v1", "v1beta1"],
    },
];

/// The rendered policy documents of every namespace, ordered by name, then kind.
pub type PolicyIndex = BTreeMap<String, Vec<ClusterPolicy>>;

/// What discovery said about a group.
enum Found {
    /// Served at this version.
    Served(ApiResource),
    /// Not served (no CRD): normal.
    Absent,
}

/// Looks the group up; `Err` when the API server could not answer.
async fn discover(client: &Client, group: PolicyGroup) -> Result<Found, kube::Error> {
    for version in group.versions {
        let api_version = format!("{}/{version}", group.group);
        match client.list_api_group_resources(&api_version).await {
            Ok(list) => {
                if let Some(r) = list.resources.iter().find(|r| r.name == PLURAL) {
                    return Ok(Found::Served(ApiResource {
                        group: group.group.to_owned(),
                        version: (*version).to_owned(),
                        api_version,
                        kind: r.kind.clone(),
                        plural: PLURAL.to_owned(),
                    }));
                }
            }
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Found::Absent)
}

/// One watched group: the resource and its store.
type Watched = (ApiResource, Store<DynamicObject>);

/// The watched policy groups' stores, each with the resource it holds.
#[derive(Debug, Clone, Default)]
pub struct PolicyStores {
    stores: Arc<Mutex<Vec<Watched>>>,
}

impl PolicyStores {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Watched>> {
        // Entries are only ever pushed whole: a poisoned lock holds a consistent list.
        self.stores.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The index of every stored policy object.
    pub fn index(&self) -> PolicyIndex {
        let mut index = PolicyIndex::new();
        for (resource, store) in self.lock().iter() {
            for object in store.state() {
                let Some(namespace) = object.metadata.namespace.clone() else {
                    continue;
                };
                let mut value = match serde_json::to_value(&*object) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(error = %e, "a policy object cannot be read; left out");
                        continue;
                    }
                };
                value["apiVersion"] = serde_json::json!(resource.api_version);
                value["kind"] = serde_json::json!(resource.kind);
                match picket_k8s::policy::render(&value) {
                    Ok(rendered) => index
                        .entry(namespace)
                        .or_default()
                        .push(rendered.into_cluster_policy()),
                    Err(e) => {
                        tracing::warn!(error = %e, "a policy object cannot be rendered; left out")
                    }
                }
            }
        }
        for policies in index.values_mut() {
            policies.sort_by(|a, b| a.source.cmp(&b.source));
        }
        index
    }
}

/// Watches one served group into a new store; `changed` is woken at every event.
fn watch_group(
    client: &Client,
    resource: ApiResource,
    stores: &PolicyStores,
    changed: &Arc<Notify>,
    shutdown: &CancellationToken,
) -> Store<DynamicObject> {
    let writer = reflector::store::Writer::<DynamicObject>::new(resource.clone());
    let store = writer.as_reader();
    stores.lock().push((resource.clone(), store.clone()));
    let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    tracing::info!(api_version = %resource.api_version, "watching AuthorizationPolicy objects");
    follow(
        stream,
        Watching::PolicyGroup(resource.api_version.clone()),
        Arc::clone(changed),
        shutdown.clone(),
    );
    store
}

/// Discovery at start: retried until the API server answers, so a group is never taken for
/// absent because of a transient error.
async fn discover_at_start(
    client: &Client,
    group: PolicyGroup,
    shutdown: &CancellationToken,
) -> Option<Found> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match discover(client, group).await {
            Ok(found) => return Some(found),
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(group = group.group, error = %e, retry_in = ?wait, "API discovery failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

/// Looks for a group that was not served at start, every `interval`, and watches it once it
/// is.
async fn discover_later(
    client: Client,
    group: PolicyGroup,
    interval: Duration,
    stores: PolicyStores,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
        match discover(&client, group).await {
            Ok(Found::Served(resource)) => {
                watch_group(&client, resource, &stores, &changed, &shutdown);
                return;
            }
            Ok(Found::Absent) => {}
            Err(e) => tracing::debug!(group = group.group, error = %e, "API discovery failed"),
        }
    }
}

/// Starts the policy watchers: each group served now is listed before this returns (`None`
/// on shutdown); the others are looked for again in the background. The receiver holds the
/// current index and sees every change.
pub async fn watch(
    client: &Client,
    interval: Duration,
    shutdown: &CancellationToken,
) -> Option<watch::Receiver<Arc<PolicyIndex>>> {
    let stores = PolicyStores::default();
    let changed = Arc::new(Notify::new());
    for group in GROUPS {
        match discover_at_start(client, group, shutdown).await? {
            Found::Served(resource) => {
                let store = watch_group(client, resource, &stores, &changed, shutdown);
                tokio::select! {
                    r = store.wait_until_ready() => r.ok()?,
                    () = shutdown.cancelled() => return None,
                }
            }
            Found::Absent => {
                tracing::info!(
                    group = group.group,
                    every = ?interval,
                    "no AuthorizationPolicy objects served in this group (its CRD is not installed); looking again"
                );
                tokio::spawn(discover_later(
                    client.clone(),
                    group,
                    interval,
                    stores.clone(),
                    Arc::clone(&changed),
                    shutdown.clone(),
                ));
            }
        }
    }
    let (tx, rx) = watch::channel(Arc::new(stores.index()));
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = changed.notified() => {}
                () = shutdown.cancelled() => return,
            }
            let index = stores.index();
            tracing::debug!(namespaces = index.len(), "policy index rebuilt");
            tx.send_if_modified(|current| {
                if **current == index {
                    false
                } else {
                    *current = Arc::new(index);
                    true
                }
            });
        }
    });
    Some(rx)
}

/// The set a sidecar of `namespace` gets: its namespace's policies and the root namespace's.
pub fn set_for(index: &PolicyIndex, namespace: &str, root_namespace: &str) -> ClusterPolicies {
    let mut policies: Vec<ClusterPolicy> = index.get(namespace).cloned().unwrap_or_default();
    if root_namespace != namespace
        && let Some(root) = index.get(root_namespace)
    {
        policies.extend(root.iter().cloned());
    }
    ClusterPolicies { policies }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn policy(source: &str) -> ClusterPolicy {
        ClusterPolicy {
            source: source.to_owned(),
            text: String::new(),
        }
    }

    #[test]
    fn a_namespace_gets_its_own_and_the_root_namespaces_policies_only() {
        let index = PolicyIndex::from([
            ("shop".to_owned(), vec![policy("shop/a")]),
            ("bank".to_owned(), vec![policy("bank/b")]),
            ("picket-system".to_owned(), vec![policy("root/c")]),
        ]);
        let names = |set: ClusterPolicies| -> Vec<String> {
            set.policies.into_iter().map(|p| p.source).collect()
        };
        assert_eq!(
            names(set_for(&index, "shop", "picket-system")),
            ["shop/a", "root/c"]
        );
        assert_eq!(
            names(set_for(&index, "bank", "picket-system")),
            ["bank/b", "root/c"]
        );
        assert_eq!(
            names(set_for(&index, "picket-system", "picket-system")),
            ["root/c"]
        );
        assert_eq!(names(set_for(&index, "empty", "picket-system")), ["root/c"]);
    }
}
