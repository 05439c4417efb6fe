//! Trust (and file-mode policy) distribution: every namespace labelled for injection
//! (`picket.dev/inject=enabled`) gets the ConfigMaps its injected pods mount, so labelling a
//! namespace is enough and `mesh.namespaces` in the chart is no longer required.
//!
//! The controller creates a missing ConfigMap and keeps the ones it created (label
//! `app.kubernetes.io/managed-by: picket-controller`) equal to its source file, which it reads
//! again at every pass, so a root rotation reaches every namespace. A ConfigMap of that name
//! that someone else made (GitOps, `helm`) is left alone. A pass runs when a namespace changes
//! and every [`RESYNC`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use picket_k8s::inject::INJECT_ANNOTATION;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The value of the `picket.dev/inject` namespace label that opts a namespace in.
pub const NAMESPACE_ENABLED: &str = "enabled";
/// The label on the ConfigMaps the controller owns.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "picket-controller");
/// How often every namespace is checked even when nothing changed (the source files may have).
pub const RESYNC: Duration = Duration::from_secs(30);

/// One ConfigMap written into every injected namespace.
#[derive(Debug, Clone)]
pub struct Distributed {
    /// The ConfigMap's name (`picket-trust-bundle`, `picket-policy`).
    pub name: String,
    /// The data key (`bundle.pem`, `policy.yaml`).
    pub key: String,
    /// The file whose content goes there.
    pub source: PathBuf,
}

/// True when the namespace is labelled for injection and not being deleted.
pub fn is_injected(namespace: &Namespace) -> bool {
    namespace.metadata.deletion_timestamp.is_none()
        && namespace
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(INJECT_ANNOTATION))
            .is_some_and(|v| v == NAMESPACE_ENABLED)
}

/// Keeps the ConfigMaps in place until `shutdown`.
pub async fn distribute(
    client: Client,
    namespaces: Store<Namespace>,
    maps: Vec<Distributed>,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    loop {
        for namespace in namespaces.state().iter().filter(|n| is_injected(n)) {
            let Some(ns) = namespace.metadata.name.as_deref() else {
                continue;
            };
            for map in &maps {
                if let Err(e) = ensure(&client, ns, map).await {
                    tracing::warn!(namespace = ns, configmap = %map.name, error = %e, "cannot write the ConfigMap; will retry");
                }
            }
        }
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(RESYNC) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Why one ConfigMap could not be put in place.
#[derive(Debug, thiserror::Error)]
enum EnsureError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Api(#[from] kube::Error),
}

async fn ensure(client: &Client, ns: &str, map: &Distributed) -> Result<(), EnsureError> {
    let content = std::fs::read_to_string(&map.source).map_err(|source| EnsureError::Read {
        path: map.source.clone(),
        source,
    })?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let data = BTreeMap::from([(map.key.clone(), content)]);
    let labels = BTreeMap::from([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())]);
    match api.get_opt(&map.name).await? {
        None => {
            let fresh = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(map.name.clone()),
                    namespace: Some(ns.to_owned()),
                    labels: Some(labels),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                ..ConfigMap::default()
            };
            api.create(&PostParams::default(), &fresh).await?;
            tracing::info!(namespace = ns, configmap = %map.name, "ConfigMap created");
        }
        Some(mut existing) => {
            let ours = existing
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_BY.0))
                .is_some_and(|v| v == MANAGED_BY.1);
            if !ours || existing.data.as_ref() == Some(&data) {
                return Ok(());
            }
            existing.data = Some(data);
            api.replace(&map.name, &PostParams::default(), &existing)
                .await?;
            tracing::info!(namespace = ns, configmap = %map.name, "ConfigMap updated");
        }
    }
    Ok(())
}
